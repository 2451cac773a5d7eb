"""The README's main job: bring up the whole graph on the simulated Franka with a checkpoint, run one
instruction, and write what a user wants to look at.

    python -m semanticvla_ros.demo [--checkpoint DIR] [--instruction "..."] [--seed 0] [--timeout 60]
                                   [--out outputs/demo] [--task pick_place_plate]

Starts ``semanticvla_ros.bringup`` (sim + perception + planner + controller + safety filter + trace overlay,
the same graph as franka.launch.py) as a child, watches its topics from a recorder node until the sim
reports success or the timeout passes, shuts everything down cleanly, and writes into --out:
  overlay.mp4          the camera with the predicted trace, anchors, latent ids and instruction drawn
  rviz_final.png       RViz-equivalent view at the end: overlay image + 3-D robot, trace on the table, camera
  rviz_first_plan.png  the same at the first plan
  result.json          success, steps, plan latency, control rate, safety-filter interventions, paths
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml


def _percentiles(x, qs=(0.5, 0.99)) -> dict:
    x = np.asarray(x, dtype=float)
    return {f"p{int(q * 100)}": (float(np.quantile(x, q)) if x.size else None) for q in qs}


def main(argv=None) -> int:
    from .graph import default_checkpoint, share_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="", help="policy checkpoint ('' = the shipped demo checkpoint)")
    ap.add_argument("--instruction", default="", help="instruction ('' = the episode's own, from the sim)")
    ap.add_argument("--task", default="pick_place_plate")
    ap.add_argument("--seed", type=int, default=0, help="episode seed of the simulated scene")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds of robot time before giving up")
    ap.add_argument("--out", default="outputs/demo")
    a = ap.parse_args(argv)

    ckpt = a.checkpoint or default_checkpoint()
    if not ckpt or not Path(ckpt, "config.json").is_file():
        print(f"[demo] error: no policy checkpoint found ({ckpt or 'none shipped'}); pass --checkpoint DIR", file=sys.stderr)
        return 2
    try:  # fail fast with the real reason instead of a graph that holds the arm forever
        from semanticvla_core.policy import SemanticVLAPolicy
        SemanticVLAPolicy.from_pretrained(ckpt)
    except Exception as e:  # noqa: BLE001
        print(f"[demo] error: checkpoint {ckpt} does not load: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("MUJOCO_GL", "egl")

    # the package's parameter file with this run's scene
    cfg = yaml.safe_load((share_dir() / "config" / "franka.yaml").read_text())
    cfg["sim"]["ros__parameters"].update({"task": a.task, "seed": a.seed})
    cfg_path = Path(tempfile.mkdtemp(prefix="semanticvla_demo_")) / "franka.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo, Image, JointState
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from semanticvla_core.data.viz import write_mp4, write_png
    from semanticvla_core.overlay import lift_trace
    from semanticvla_core.safety.kinematics import PandaKinematics
    from semanticvla_core.scene_plot import render_scene

    from .bringup import stop_bringup
    from .messages import stamp_to_ns, trace_from_msg
    from .msg import ActionChunk, Trace
    from .ros_conversions import camera_from_info, pose_to_matrix

    rclpy.init()
    node = rclpy.create_node("semanticvla_demo_recorder")
    rec = {"frames": [], "traces": [], "chunks": [], "diag": None, "js": None, "info": None, "pose": None,
           "instruction": "", "first_plan": None, "tcp": [], "plans_rx": {}, "rows": [], "chunk_stamps": [],
           "status_changes": []}
    node.create_subscription(Image, "/semanticvla/trace_overlay/image", lambda m: rec["frames"].append(
        np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.width, 3).copy()), 10)
    node.create_subscription(Trace, "/semanticvla/trace", lambda m: rec["traces"].append((time.monotonic(), m)), 10)
    def on_chunk(m):
        rec["chunks"].append(time.monotonic())
        rec["chunk_stamps"].append(stamp_to_ns(m.header.stamp) * 1e-9)   # its tick
        rec["plans_rx"].setdefault(int(m.plan_id), time.time_ns())     # when each plan's first chunk arrived
    node.create_subscription(ActionChunk, "/semanticvla/action_chunk", on_chunk, 50)
    # what the arm is commanded: one ee_delta row per period (sim:=true, execution cartesian), holds as trajectories
    # (by their stamps, the filter's tick on the wall clock, mapped to this process's monotonic clock: a receive time
    # would add this recorder's own scheduling, e.g. while it waits for the success service, as gaps)
    wall_to_mono = time.time() - time.monotonic()
    node.create_subscription(ActionChunk, "/panda_cartesian_controller/ee_delta", lambda m: rec["rows"].append(
        m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 - wall_to_mono), 50)
    def on_diag(m):
        rec["diag"] = m
        msg = m.status[0].message if m.status else ""
        if not rec["status_changes"] or rec["status_changes"][-1][1] != msg:     # what the filter said, when
            rec["status_changes"].append((time.monotonic(), msg))
    node.create_subscription(DiagnosticArray, "/semanticvla/safety/status", on_diag, 10)
    node.create_subscription(JointState, "/joint_states", lambda m: rec.__setitem__("js", m), 10)
    node.create_subscription(CameraInfo, "/camera/agentview/camera_info", lambda m: rec.__setitem__("info", m), 2)
    node.create_subscription(PoseStamped, "/camera/agentview/pose", lambda m: rec.__setitem__("pose", m), 2)
    node.create_subscription(String, "/semanticvla/instruction", lambda m: rec.__setitem__("instruction", m.data), 2)
    success_cli = node.create_client(Trigger, "/sim/success")

    args = [sys.executable, "-m", "semanticvla_ros.bringup", "sim:=true", f"checkpoint:={ckpt}", f"config:={cfg_path}"]
    if a.instruction:
        args.append(f"instruction:={a.instruction}")
    log_path = out / "bringup.log"
    log = open(log_path, "w")
    from semanticvla_core.scheduling import normal_scheduling
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), preexec_fn=normal_scheduling)
    print(f"[demo] bring-up started (log: {log_path}); checkpoint {ckpt}", flush=True)
    kin = PandaKinematics()

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.02)

    def snapshot(path, trace_msg, title):
        if rec["js"] is None:
            return None
        q = np.array(rec["js"].position[:7])
        img = rec["frames"][-1] if rec["frames"] else None
        pts, T = None, None
        if rec["info"] is not None and rec["pose"] is not None:
            T = pose_to_matrix(rec["pose"].pose.position, rec["pose"].pose.orientation)
            if trace_msg is not None:
                P, valid = lift_trace(camera_from_info(rec["info"], T), trace_from_msg(trace_msg).anchors)
                pts = P[valid]
        return render_scene(path, q, pts, img, T, title, kin, np.array(rec["tcp"]) if rec["tcp"] else None)

    success, t_start, steps_first = False, None, None
    status = "timeout"
    try:
        # wait for the graph: first chunk means sim, perception, planner and controller all run
        deadline = time.monotonic() + 240
        while not rec["chunks"] and time.monotonic() < deadline:
            if proc.poll() is not None:
                status = f"bring-up exited with code {proc.returncode}"
                break
            spin(0.2)
        if not rec["chunks"] and status == "timeout":
            status = "the graph did not produce an action chunk within 240 s (see bringup.log)"
        t_start = time.monotonic()
        last_check = 0.0
        while rec["chunks"] and time.monotonic() - t_start < a.timeout and proc.poll() is None:
            spin(0.1)
            if rec["js"] is not None:
                rec["tcp"].append(kin.fk(np.array(rec["js"].position[:7]))[0])
            if rec["first_plan"] is None and rec["traces"] and rec["frames"]:
                rec["first_plan"] = snapshot(out / "rviz_first_plan.png", rec["traces"][0][1],
                                             f"first plan: {rec['instruction']}")
            if time.monotonic() - last_check > 1.0 and success_cli.service_is_ready():
                last_check = time.monotonic()
                fut = success_cli.call_async(Trigger.Request())
                end = time.monotonic() + 5
                while not fut.done() and time.monotonic() < end:
                    rclpy.spin_once(node, timeout_sec=0.02)
                if fut.done() and fut.result().success:
                    success, status = True, "success"
                    spin(1.0)
                    break
    finally:
        t_stop = time.monotonic()                  # the episode ends here (success seen, timeout or failure)
        final_trace = rec["traces"][-1][1] if rec["traces"] else None
        final_png = snapshot(out / "rviz_final.png", final_trace, f"{'SUCCESS' if success else status}: {rec['instruction']}")
        stop_bringup(proc)
        log.close()
        node.destroy_node()
        rclpy.try_shutdown()

    video = write_mp4(out / "overlay.mp4", rec["frames"], fps=10) if rec["frames"] else None
    if rec["frames"]:
        write_png(out / "overlay_last.png", rec["frames"][-1])
    # the controller's loop, from the stamps of what it published (each stamped at its tick; a receive time would
    # add this recorder's own scheduling)
    chunk_dt = np.diff(rec["chunk_stamps"]) if len(rec["chunk_stamps"]) > 1 else np.zeros(0)
    # the arm's own commands: periods with no row sent (the first row counts from the start of the episode)
    P = 0.05
    rows = np.sort([t for t in rec["rows"] if t_start is not None and t >= t_start])
    still_s, still_gaps = None, []
    if t_start is not None:
        edges = np.r_[t_start - P, rows, t_stop]       # (from the start, and until the episode ended)
        gaps = np.diff(edges)
        still_s = round(float(np.sum(np.maximum(gaps[gaps > 1.5 * P] - P, 0.0))), 2)
        # the longest of them: [seconds into the episode, seconds still], to tell a slow start from holds later on
        long = np.argsort(-gaps)[:10]
        still_gaps = [[round(float(edges[i] + P - t_start), 2), round(float(gaps[i] - P), 2)]
                      for i in sorted(long) if gaps[i] > 1.5 * P]
    # the planning delay as the graph has it: from a Trace's observation stamp to its plan's first chunk, in periods
    stamps = {int(m.plan_id): stamp_to_ns(m.header.stamp) for _, m in rec["traces"]}
    delays = [(rx - stamps[pid]) / (P * 1e9) for pid, rx in rec["plans_rx"].items() if pid in stamps]
    period = float(np.median(chunk_dt)) if chunk_dt.size else None
    diag = {kv.key: kv.value for kv in rec["diag"].status[0].values} if rec["diag"] else {}
    result = {
        "success": success, "status": status, "instruction": rec["instruction"], "task": a.task, "seed": a.seed,
        "checkpoint": str(ckpt), "seconds": None if t_start is None else round(t_stop - t_start, 2),
        "plans": len(rec["traces"]),
        "plan_latency_s": _percentiles([m.planning_latency for _, m in rec["traces"]]),
        # the loop's rate while it has actions to send (median period), and the time it sent none (waiting for a
        # plan whose rows are still ahead, or holding on a stale input): gaps longer than 1.5 median periods
        "control_rate_hz": float(1.0 / period) if period else None,
        "control_period_s": _percentiles(chunk_dt),
        "control_gaps_s": round(float(chunk_dt[chunk_dt > 1.5 * period].sum()), 2) if period else None,
        # periods in which the arm got no row (holding or waiting), counted on the safety filter's output
        "commanded_still_s": still_s,
        "commanded_still_longest": still_gaps,
        "rows_sent": int(rows.size),
        # the safety filter's status line whenever it changed, [seconds into the episode, message] (the first 30)
        "safety_status_changes": [[round(t - t_start, 2), m] for t, m in rec["status_changes"]
                                  if t_start is not None and t >= t_start - 1.0][:30],
        "plan_delay_periods": {**_percentiles(delays, (0.5, 0.9)), "max": float(max(delays)) if delays else None,
                               "n": len(delays)},
        "safety_filter": {k: (int(v) if v.isdigit() else v) for k, v in diag.items()},
        "safety_interventions": sum(int(diag.get(k, 0)) for k in ("clipped", "rejected", "malformed", "watchdog_holds")),
        "outputs": {"video": str(video) if video else None, "rviz_final": str(final_png) if final_png else None,
                    "rviz_first_plan": str(rec["first_plan"]) if rec["first_plan"] else None,
                    "bringup_log": str(log_path)},
        "bringup_exit_code": proc.returncode,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("success", "status", "instruction", "plans", "control_rate_hz",
                                             "safety_interventions")}, indent=2))
    print(f"[demo] outputs in {out}:")
    for k, v in result["outputs"].items():
        print(f"  {k:16s} {v}")
    print(f"  {'result':16s} {out / 'result.json'}")
    return 0 if status in ("success", "timeout") else 1


if __name__ == "__main__":
    sys.exit(main())
