"""Start the runtime graph as separate processes where launch_ros is not installable.

    python -m semanticvla_ros.bringup [sim:=true] [checkpoint:=DIR] [instruction:="..."] [use_moveit:=false]
                                      [rviz:=false] [config:=FILE] [--duration SECONDS]

Same nodes, same parameter file and same arguments as ``ros2 launch semanticvla_ros franka.launch.py``
(both read ``semanticvla_ros.graph``). Output of every node is forwarded with its name as prefix.
SIGINT/SIGTERM (or ``--duration``) shut every node down: SIGINT, then SIGTERM, then SIGKILL, so nothing is
left running. If a node exits on its own, the others are stopped too and the exit code is non-zero.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

from semanticvla_core.scheduling import normal_scheduling

from .graph import graph, resolve_arguments


def stop_bringup(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    """Stop a bring-up started with ``start_new_session=True``: SIGINT to its process group (it then stops its
    nodes in order), SIGKILL after ``timeout``. Returns what it printed, if its output was a pipe."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            out, _ = proc.communicate(timeout=timeout)
            return out or ""
        except subprocess.TimeoutExpired:
            continue
    out, _ = proc.communicate()
    return out or ""


def parse_launch_args(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        if ":=" not in it:
            raise SystemExit(f"bring-up: expected name:=value, got {it!r}")
        k, v = it.split(":=", 1)
        out[k] = v
    return out


def _ros_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        # quote so that rcl's YAML parser keeps it a string ("" and "123" included)
        return "'" + v.replace("'", "''") + "'"
    return str(v)


def node_command(spec, config: str) -> list[str]:
    cmd = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}", "--params-file", config]
    for k, v in spec.parameters.items():
        cmd += ["-p", f"{k}:={_ros_value(v)}"]
    for a, b in spec.remappings:
        cmd += ["-r", f"{a}:={b}"]
    return cmd


def _forward(name: str, stream) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(f"[{name}] {line}")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("launch_args", nargs="*", help="name:=value launch arguments")
    ap.add_argument("--duration", type=float, default=0.0, help="stop everything after this many seconds (0 = run until signalled)")
    ap.add_argument("--grace", type=float, default=5.0, help="seconds each shutdown step waits before escalating")
    ns = ap.parse_args(argv)
    args = resolve_arguments(parse_launch_args(ns.launch_args))
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("MUJOCO_GL", "egl")
    env["PYTHONUNBUFFERED"] = "1"

    procs: list[tuple[str, subprocess.Popen]] = []
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for spec in graph(args):
        if spec.module is None:
            print(f"[bringup] skipping {spec.name}: {spec.package}/{spec.executable} needs a ROS distribution "
                  f"(use ros2 launch semanticvla_ros franka.launch.py there)", flush=True)
            continue
        p = subprocess.Popen(node_command(spec, args["config"]), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             preexec_fn=normal_scheduling)   # never inherit a real-time policy
        threading.Thread(target=_forward, args=(spec.name, p.stdout), daemon=True).start()
        procs.append((spec.name, p))
        print(f"[bringup] started {spec.name} (pid {p.pid})", flush=True)

    t0, failed = time.monotonic(), None
    while not stop.is_set():
        if ns.duration and time.monotonic() - t0 >= ns.duration:
            break
        dead = [(n, p.returncode) for n, p in procs if p.poll() is not None]
        if dead:
            failed = dead
            print(f"[bringup] node(s) exited: {', '.join(f'{n} (code {c})' for n, c in dead)}; stopping the rest", flush=True)
            break
        time.sleep(0.1)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        alive = [(n, p) for n, p in procs if p.poll() is None]
        if not alive:
            break
        for _, p in alive:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + ns.grace
        while time.monotonic() < deadline and any(p.poll() is None for _, p in alive):
            time.sleep(0.05)
    for _, p in procs:
        p.wait()
    print("[bringup] all nodes stopped", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
