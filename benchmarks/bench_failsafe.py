"""Fail-safe benchmark: how fast a dead (or hung) planner turns into a hold on the wire and a status naming it.

    .venv/bin/python benchmarks/bench_failsafe.py [--n 5] [--checkpoint checkpoints/demo] [--launcher bringup|launch]
                                                  [--hang N]

Starts the graph once (sim:=true respawn:=true; ``--launcher launch`` uses ``ros2 launch semanticvla_ros
franka.launch.py``, which needs the ros2-launch-kit installed into the venv and the package installed), then N
times: waits until the arm moves, ``kill -9``s the planner and measures, from the kill,
  * supervisor saw it: the exit report's stamp (the supervisor's wait() returned; includes the kernel tearing
    the process down, tens of ms for a process with torch loaded);
  * hold on the wire: receive time (here, another process) of the safety filter's hold trajectory published in its
    node-exit callback (the JointTrajectory with the status's stamp);
  * status naming the cause: receive time of the first /semanticvla/safety/status saying "planner exited";
then waits for the respawned planner to move the arm again. ``--hang N`` adds N SIGSTOP cycles (a hung planner):
how long after its trace_timeout_s ran out the watchdog noticed ("no Trace from the planner for 1.032 s": 32 ms),
and how long its hold and status took to arrive.
Prints every measurement, median / max, and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
S = 1_000_000_000
from machine import cpu_model  # noqa: E402


def machine() -> str:
    cpu = cpu_model()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, {os.environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp (default)')}, "
            f"load average {load}")


class Output:
    """The launcher's output, read continuously (its pipe never fills)."""

    def __init__(self, proc):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in iter(stream.readline, ""):
            self.lines.append(line)

    def pids(self, name: str) -> list[int]:
        """Every pid the launcher started for node ``name`` (respawns included), oldest first."""
        pats = [rf"\[bringup\] started {name} \(pid (\d+)\)",                # bring-up
                rf"\[{name}_node-\d+\]: process started with pid \[(\d+)\]"]  # ros2 launch
        return [int(m.group(1)) for line in list(self.lines) for p in pats for m in [re.search(p, line)] if m]


class Observer:
    """An rclpy node in this process (its own thread) recording what the graph sends, with receive times."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory

        from semanticvla_ros.graph import NODE_EXIT_TOPIC
        from semanticvla_ros.msg import ActionChunk
        from semanticvla_ros.node_utils import node_exit_qos

        rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node(f"failsafe_bench_{os.getpid()}")
        self.lock = threading.Lock()
        self.rec: dict[str, list] = {}
        for key, typ, topic, qos in (("traj", JointTrajectory, "/panda_arm_controller/joint_trajectory", 50),
                                     ("cart", ActionChunk, "/panda_cartesian_controller/ee_delta", 50),
                                     ("diag", DiagnosticArray, "/semanticvla/safety/status", 50),
                                     ("js", JointState, "/joint_states", 50),
                                     ("exit", String, NODE_EXIT_TOPIC, node_exit_qos())):
            self.rec[key] = []
            self.node.create_subscription(typ, topic, self._cb(key), qos)
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        self.running = True
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _cb(self, key):
        def cb(msg):
            t = time.monotonic()
            with self.lock:
                self.rec[key].append((t, msg))
        return cb

    def _spin(self):
        while self.running:
            self.ex.spin_once(timeout_sec=0.05)

    def get(self, key: str, after: float = 0.0) -> list:
        with self.lock:
            return [(t, m) for t, m in self.rec[key] if t > after]

    def wait(self, pred, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(0.01)
        return pred()

    def moving_since(self, t0: float, n_cmds: int = 5) -> bool:
        js = self.get("js", t0)
        return len(self.get("cart", t0)) >= n_cmds and len(js) > 2 and np.abs(
            np.array(js[-1][1].position[:7]) - np.array(js[0][1].position[:7])).max() > 1e-3

    def close(self):
        self.running = False
        self.thread.join(timeout=5)
        self.ex.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def _stamp(m) -> int:
    return m.header.stamp.sec * S + m.header.stamp.nanosec


def _status(m) -> str:
    return " | ".join(s.message for s in m.status)


def kill_cycle(obs: Observer, out: Output, i: int) -> dict:
    pid = out.pids("planner")[-1]
    t_kill, wall_kill = time.monotonic(), time.time_ns()
    os.kill(pid, signal.SIGKILL)
    named = lambda m: "planner exited" in _status(m)          # noqa: E731
    if not obs.wait(lambda: any(named(m) for _, m in obs.get("diag", t_kill)), 10):
        raise RuntimeError(f"cycle {i}: no status naming the planner within 10 s")
    t_status, st = next((t, m) for t, m in obs.get("diag", t_kill) if named(m))
    rep = next((m for _, m in obs.get("exit", t_kill) if json.loads(m.data)["node"] == "planner"), None)
    seen = (json.loads(rep.data)["stamp_ns"] - wall_kill) * 1e-9 if rep is not None else float("nan")
    holds = [t for t, m in obs.get("traj", t_kill) if _stamp(m) == _stamp(st)]
    t_hold = holds[0] if holds else next(t for t, _ in obs.get("traj", t_kill))
    # the arm holds until the planner is back, then moves again
    if not obs.wait(lambda: len(out.pids("planner")) > i + 1, 15):
        raise RuntimeError(f"cycle {i}: the planner was not respawned")
    t_resp = time.monotonic()
    moved_while_down = len(obs.get("cart", t_hold + 0.02)) - len(obs.get("cart", t_resp))
    if not obs.wait(lambda: obs.moving_since(t_resp), 90):
        raise RuntimeError(f"cycle {i}: the arm did not move again after the respawn")
    return {"seen": seen, "hold": t_hold - t_kill, "status": t_status - t_kill, "back": time.monotonic() - t_kill,
            "react": t_hold - t_kill - seen,
            "cmds_while_down": moved_while_down, "message": _status(st)}


def hang_cycle(obs: Observer, out: Output, timeout_s: float) -> dict:
    pid = out.pids("planner")[-1]
    t_stop = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        silent = lambda m: "no Trace from the planner" in _status(m)     # noqa: E731
        ok = obs.wait(lambda: any(silent(m) for _, m in obs.get("diag", t_stop)), timeout_s + 10)
        t_status, st = next(((t, m) for t, m in obs.get("diag", t_stop) if silent(m)), (float("nan"), None))
        holds = [t for t, m in obs.get("traj", t_stop) if st is not None and _stamp(m) == _stamp(st)]
        wall = time.time() - time.monotonic()
    finally:
        os.kill(pid, signal.SIGCONT)
    if not ok:
        raise RuntimeError("no status naming the silent planner")
    t_cont = time.monotonic()
    if not obs.wait(lambda: obs.moving_since(t_cont), 90):
        raise RuntimeError("the arm did not move again after SIGCONT")
    # how long after the timeout ran out the watchdog noticed ("no Trace from the planner for 1.032 s"), and how long
    # its hold and status then took to arrive here (from their stamp, the watchdog tick)
    age = float(re.search(r"no Trace from the planner for ([\d.]+) s", _status(st)).group(1))
    return {"late": age - timeout_s, "hold": (holds[0] + wall - _stamp(st) * 1e-9) if holds else float("nan"),
            "status": t_status + wall - _stamp(st) * 1e-9, "message": _status(st)}


def summary(name: str, xs: list[float]) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return f"{name}: no data"
    return f"{name}: median {statistics.median(xs) * 1e3:.1f} ms, max {max(xs) * 1e3:.1f} ms (n={len(xs)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5, help="kill -9 cycles")
    ap.add_argument("--hang", type=int, default=0, help="SIGSTOP cycles (a hung planner) after the kills")
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "demo"))
    ap.add_argument("--launcher", choices=("bringup", "launch"), default="bringup")
    ap.add_argument("--instruction", default="put the red cube on the green plate")
    ns = ap.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ["PYTHONUNBUFFERED"] = "1"
    tmp = tempfile.mkdtemp(prefix="bench_failsafe_")
    env = dict(os.environ, TMPDIR=tmp, ROS_LOG_DIR=tmp)
    trace_timeout = yaml.safe_load((ROOT / "config" / "franka.yaml").read_text())["safety_filter"][
        "ros__parameters"]["trace_timeout_s"]
    largs = ["sim:=true", "respawn:=true", f"checkpoint:={Path(ns.checkpoint).resolve()}",
             f"instruction:={ns.instruction}"]
    if ns.launcher == "launch":
        cmd = [str(Path(sys.executable).parent / "ros2"), "launch", "semanticvla_ros", "franka.launch.py", *largs]
    else:
        cmd = [sys.executable, "-m", "semanticvla_ros.bringup", *largs]
    print(f"machine: {machine()}\nlauncher: {' '.join(cmd)}", flush=True)
    obs = Observer()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out = Output(proc)
    kills, hangs, rc = [], [], 1
    try:
        t0 = time.monotonic()
        if not obs.wait(lambda: obs.moving_since(t0), 180):
            raise RuntimeError("the graph did not start moving the arm within 180 s")
        print(f"graph up and moving after {time.monotonic() - t0:.1f} s", flush=True)
        for i in range(ns.n):
            r = kill_cycle(obs, out, i)
            kills.append(r)
            print(f"kill {i + 1}: supervisor saw it {r['seen'] * 1e3:.1f} ms, "
                  f"hold on the wire {r['hold'] * 1e3:.1f} ms "
                  f"({r['react'] * 1e3:.1f} ms after the supervisor saw it), "
                  f"status {r['status'] * 1e3:.1f} ms, commands while down {r['cmds_while_down']}, moving again "
                  f"after {r['back']:.1f} s | {r['message'][:90]}", flush=True)
        for i in range(ns.hang):
            r = hang_cycle(obs, out, trace_timeout)
            hangs.append(r)
            print(f"hang {i + 1}: noticed {r['late'] * 1e3:.1f} ms after trace_timeout_s ({trace_timeout} s) ran out; "
                  f"then hold on the wire {r['hold'] * 1e3:.1f} ms, status {r['status'] * 1e3:.1f} ms | "
                  f"{r['message'][:150]}", flush=True)
        rc = 0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        obs.close()
        if rc:
            print("".join(out.lines[-60:]))
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n== kill -9 planner, {len(kills)} cycles ({ns.launcher}, {Path(ns.checkpoint).name}):")
    for key, name in (("seen", "kill -> supervisor saw the exit"), ("hold", "kill -> hold on the wire"),
                      ("status", "kill -> status naming the planner"),
                      ("react", "supervisor saw the exit -> hold on the wire")):
        print("  " + summary(name, [k[key] for k in kills]))
    if hangs:
        print(f"== SIGSTOP planner (hung), {len(hangs)} cycles (trace_timeout_s = {trace_timeout} s):")
        for key, name in (("late", "timeout ran out -> watchdog noticed"),
                          ("hold", "watchdog tick -> hold on the wire"),
                          ("status", "watchdog tick -> status naming the silent planner")):
            print("  " + summary(name, [k[key] for k in hangs]))
    print(f"machine: {machine()}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
