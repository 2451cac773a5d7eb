"""ROS runtime benchmark: camera-to-trajectory latency, control-loop rate and jitter, with the planner busy.

    .venv/bin/python benchmarks/bench_ros.py [--checkpoint DIR] [--seconds 40] [--runs 3]

Starts the full graph with the bring-up (sim + perception + planner + controller + safety + overlay), the
planner replanning as fast as it can (max_rate_hz 50 via a parameter file copy), observes the topics from a
separate process and prints median / p99 numbers (pooled over runs) and the machine. Without --checkpoint a
tiny random-weight checkpoint is built (the numbers then measure the plumbing, not a trained policy).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test"))
from machine import cpu_model  # noqa: E402


def machine() -> str:
    cpu = cpu_model()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def one_run(ckpt: Path, cfg: Path, seconds: float) -> dict:
    from ros_testing import Harness, wait_for_output
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from semanticvla_ros.bringup import stop_bringup
    from semanticvla_ros.messages import stamp_to_ns
    from semanticvla_ros.msg import ActionChunk, Trace

    h = Harness("bench_observer")
    traces = h.record(Trace, "/semanticvla/trace", 50)
    chunks = h.record(ActionChunk, "/semanticvla/action_chunk", 100)
    trajs = h.record(JointTrajectory, "/panda_arm_controller/joint_trajectory", 100)
    h.record(JointState, "/joint_states", 100)
    proc = subprocess.Popen([sys.executable, "-m", "semanticvla_ros.bringup", f"checkpoint:={ckpt}", f"config:={cfg}"],
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_output(proc, "[bringup] started sim", 60)
        h.spin_until(lambda: len(trajs) > 20 and len(traces) > 3, 180)
        for lst in (traces, chunks, trajs):
            lst.clear()
        h.spin_for(seconds)
    finally:
        stop_bringup(proc)
        h.close()
    # receive times are time.monotonic(); convert message stamps (ROS clock = wall clock) via the offset
    off = time.monotonic() - time.time()
    plan_cam = {m.plan_id: stamp_to_ns(m.header.stamp) * 1e-9 + off for _, m in traces}
    first_chunk = {}
    for t, m in chunks:
        first_chunk.setdefault(m.plan_id, t)
    traj_times = np.array([t for t, _ in trajs])
    lat = []
    for pid, t_cam in plan_cam.items():
        if pid in first_chunk:
            after = traj_times[traj_times >= first_chunk[pid]]
            if after.size:
                lat.append(after[0] - t_cam)
    ct = np.diff([t for t, _ in chunks])
    tt = np.diff(traj_times)
    plan_lat = [m.planning_latency for _, m in traces]
    return {"cam_to_traj": lat, "chunk_dt": ct.tolist(), "traj_dt": tt.tolist(), "plan_latency": plan_lat,
            "plans": len(traces), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(60 + os.getpid() % 30))
    tmp = Path(tempfile.mkdtemp(prefix="bench_ros_"))
    if a.checkpoint:
        ckpt = Path(a.checkpoint)
    else:
        from ros_testing import tiny_checkpoint
        ckpt = tiny_checkpoint(tmp)
    cfg = yaml.safe_load((ROOT / "config" / "franka.yaml").read_text())
    cfg["planner"]["ros__parameters"]["max_rate_hz"] = 50.0        # keep the planner busy all the time
    cfg_path = tmp / "bench.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    runs = [one_run(ckpt, cfg_path, a.seconds) for _ in range(a.runs)]
    pool = {k: np.concatenate([np.asarray(r[k], float) for r in runs]) for k in ("cam_to_traj", "chunk_dt", "traj_dt", "plan_latency")}
    ms = lambda x, q: 1000 * float(np.quantile(x, q)) if len(x) else float("nan")  # noqa: E731
    print(f"machine: {machine()}")
    print(f"checkpoint: {ckpt} ; {a.runs} runs x {a.seconds:.0f} s, planner at max rate")
    print(f"plans/s: {np.mean([r['plans'] / r['seconds'] for r in runs]):.2f}")
    print(f"planning latency (obs received -> Trace published): median {ms(pool['plan_latency'], .5):.1f} ms, p99 {ms(pool['plan_latency'], .99):.1f} ms")
    print(f"camera-to-trajectory latency (camera stamp -> first JointTrajectory from that plan): "
          f"median {ms(pool['cam_to_traj'], .5):.1f} ms, p99 {ms(pool['cam_to_traj'], .99):.1f} ms (n={len(pool['cam_to_traj'])})")
    for name, key in (("controller ActionChunk", "chunk_dt"), ("safety JointTrajectory", "traj_dt")):
        d = pool[key]
        print(f"{name}: rate {1.0 / np.mean(d):.2f} Hz, period median {ms(d, .5):.1f} ms, p99 {ms(d, .99):.1f} ms, "
              f"jitter (p99 - median) {ms(d, .99) - ms(d, .5):.1f} ms")


if __name__ == "__main__":
    main()
