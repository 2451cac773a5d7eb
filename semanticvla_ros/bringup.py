"""Start the runtime graph as separate processes where launch_ros is not installable.

    python -m semanticvla_ros.bringup [sim:=true] [checkpoint:=DIR] [instruction:="..."] [use_moveit:=false]
                                      [rviz:=false] [respawn:=false] [config:=FILE] [--duration SECONDS]

Same nodes, same parameter file and same arguments as ``ros2 launch semanticvla_ros franka.launch.py``
(both read ``semanticvla_ros.graph``). Output of every node is forwarded with its name as prefix. Nodes of other
ROS packages (robot_state_publisher where the ROS environment has it, rviz2 with ``rviz:=true``) are started from
their package's ``lib/`` directory. ``rviz:=true`` / ``use_moveit:=true`` on a machine without rviz2 / moveit_py:
one ``[bringup] error:`` line naming what is missing, nothing started, exit code 1.

Fail safe, not fail stop: one thread per node waits on its process, and another reads every node's kernel flags
(``/proc/PID/stat``) every ``EXIT_POLL_S``: a process killed with ``SIGKILL`` is flagged as exiting (PF_EXITING) at once,
while ``wait()`` returns only after the kernel has torn its memory down (35-100 ms for a node with torch loaded). The
moment a node is exiting or has exited the supervisor's own rclpy node reports it on ``/semanticvla/supervisor/node_exit`` (std_msgs/String, JSON ``{"node", "returncode",
"stamp_ns"}``, reliable + transient_local). The safety filter holds the arm right in that callback and names the
node in its status until the node publishes again. Then:

* perception, planner, controller, trace_overlay: the rest of the graph keeps running (the safety filter holds and
  reports); with ``respawn:=true`` a perception, planner or controller is restarted after 1 s (the
  "[bringup] started NAME (pid N) again" line);
* safety_filter or sim: nothing could hold the arm any more, so every node is stopped and the exit code is 1.

SIGINT/SIGTERM (or ``--duration``) shut every node down: SIGINT, then SIGTERM, then SIGKILL, so nothing is
left running; the exit code is then 0 (node exits during the run are listed in the last line).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

from semanticvla_core.scheduling import EXIT_POLL_S, normal_scheduling, process_exiting

from .graph import (NODE_EXIT_TOPIC, MissingOptionalPackage, check_arguments, find_executable, graph, node_exit_message,
                    resolve_arguments)


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
        # quote so that rcl's YAML parser keeps it a string ("" and "123" included); a multi-line one (a URDF)
        # double-quoted with escapes, as a single-quoted YAML scalar would fold its lines
        if any(c < " " for c in v):
            return json.dumps(v)
        return "'" + v.replace("'", "''") + "'"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_ros_value(x) for x in v) + "]"
    return str(v)


def node_command(spec, config: str) -> list[str]:
    """The command line of one node: ``python -m <module>`` for the project's nodes (with the parameter file), the
    installed executable of its ROS package for an external one (robot_state_publisher, rviz2)."""
    if spec.module is not None:
        cmd = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}", "--params-file", config]
    else:
        exe = find_executable(spec.package, spec.executable)
        if exe is None:
            raise MissingOptionalPackage(f"{spec.name}: ROS package {spec.package!r} (executable "
                                         f"{spec.executable!r}) not found on AMENT_PREFIX_PATH")
        cmd = [str(exe), *spec.arguments, "--ros-args", "-r", f"__node:={spec.name}"]
    for k, v in spec.flat_parameters().items():
        cmd += ["-p", f"{k}:={_ros_value(v)}"]
    for a, b in spec.remappings:
        cmd += ["-r", f"{a}:={b}"]
    return cmd


def _forward(name: str, stream) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(f"[{name}] {line}")
        sys.stdout.flush()


def describe_exit(name: str, returncode: int | None) -> str:
    """"planner exited (signal 9 SIGKILL)", "sim exited (code 1)" (the safety filter's status says the same)."""
    from semanticvla_core.safety.watchdog import NodeExit
    return NodeExit(name, returncode, 0).describe()


class ExitReporter:
    """The supervisor's rclpy node: publishes every node exit on NODE_EXIT_TOPIC (thread-safe, no spinning needed:
    the middleware serves late joiners of the transient_local history itself)."""

    def __init__(self):
        import rclpy
        from rclpy.signals import SignalHandlerOptions
        from std_msgs.msg import String

        from .node_utils import node_exit_qos

        self._rclpy, self._String = rclpy, String
        self._ctx = rclpy.Context()
        # the bring-up handles SIGINT/SIGTERM itself (it stops the nodes in order)
        rclpy.init(args=[], context=self._ctx, signal_handler_options=SignalHandlerOptions.NO)
        self._node = rclpy.create_node("bringup_supervisor", context=self._ctx)
        self._pub = self._node.create_publisher(String, NODE_EXIT_TOPIC, node_exit_qos())
        self._lock = threading.Lock()

    def report(self, name: str, returncode: int | None, stamp_ns: int) -> None:
        with self._lock:
            if self._pub is not None:
                self._pub.publish(self._String(data=node_exit_message(name, returncode, stamp_ns)))

    def close(self) -> None:
        with self._lock:
            self._pub = None
            try:
                self._node.destroy_node()
            finally:
                self._rclpy.try_shutdown(context=self._ctx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("launch_args", nargs="*", help="name:=value launch arguments")
    ap.add_argument("--duration", type=float, default=0.0, help="stop everything after this many seconds (0 = run until signalled)")
    ap.add_argument("--grace", type=float, default=5.0, help="seconds each shutdown step waits before escalating")
    ns = ap.parse_args(argv)
    args = resolve_arguments(parse_launch_args(ns.launch_args))
    try:
        check_arguments(args)       # optional packages (rviz2, moveit_py): before anything starts
    except MissingOptionalPackage as e:
        print(f"[bringup] error: {e}", flush=True)
        return 1
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("MUJOCO_GL", "egl")
    env["PYTHONUNBUFFERED"] = "1"

    try:
        reporter = ExitReporter()
    except Exception as e:  # noqa: BLE001 - still run the graph, but say that exits go unreported
        reporter = None
        print(f"[bringup] cannot report node exits on {NODE_EXIT_TOPIC} ({type(e).__name__}: {e}); the safety "
              f"filter then only notices a dead node by its silence", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    exits: queue.Queue = queue.Queue()        # (name, Popen, returncode) from the waiter threads
    current: dict[str, subprocess.Popen] = {}   # node name -> its running process
    started: list[subprocess.Popen] = []        # every process ever started (respawns included)
    waiters: list[threading.Thread] = []
    specs = {}

    def wait_for(name: str, p: subprocess.Popen) -> None:
        rc = p.wait()                       # returns the moment the process is gone (no polling)
        if reporter is not None:
            try:
                reporter.report(name, rc, time.time_ns())     # first: the safety filter holds at once
            except Exception as e:  # noqa: BLE001
                print(f"[bringup] could not report the exit of {name}: {e}", flush=True)
        exits.put((name, p, rc))

    def watch_exiting() -> None:
        """Report a node the kernel is ending before its exit status exists (returncode null): the safety filter
        holds within a few ms of a SIGKILL instead of after the process's teardown."""
        seen: set[int] = set()
        while not stop.is_set():
            for name, p in list(current.items()):
                if p.pid not in seen and p.returncode is None and process_exiting(p.pid):
                    seen.add(p.pid)
                    if reporter is not None:
                        try:
                            reporter.report(name, None, time.time_ns())
                        except Exception as e:  # noqa: BLE001
                            print(f"[bringup] could not report that {name} is exiting: {e}", flush=True)
            stop.wait(EXIT_POLL_S)

    def start(spec, again: str = "") -> None:
        p = subprocess.Popen(node_command(spec, args["config"]), env={**env, **spec.environment()},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             preexec_fn=normal_scheduling)   # never inherit a real-time policy
        threading.Thread(target=_forward, args=(spec.name, p.stdout), daemon=True).start()
        w = threading.Thread(target=wait_for, args=(spec.name, p), daemon=True)
        w.start()
        waiters.append(w)
        current[spec.name] = p
        started.append(p)
        print(f"[bringup] started {spec.name} (pid {p.pid}){again}", flush=True)

    for spec in graph(args):
        specs[spec.name] = spec
        start(spec)

    threading.Thread(target=watch_exiting, name="exit-watch", daemon=True).start()
    t0, failed = time.monotonic(), None
    crashed: Counter = Counter()
    respawn_at: dict[str, tuple[float, int]] = {}     # node -> (monotonic time to restart it, its exit code)
    while not stop.is_set() and failed is None:
        now = time.monotonic()
        if ns.duration and now - t0 >= ns.duration:
            break
        for name, (due, rc) in list(respawn_at.items()):
            if now >= due:
                del respawn_at[name]
                start(specs[name], again=f" again (respawn {crashed[name]} after: {describe_exit(name, rc)})")
        wake = min([0.1] + [max(0.0, due - now) for due, _ in respawn_at.values()])
        try:
            name, p, rc = exits.get(timeout=wake)
        except queue.Empty:
            continue
        if stop.is_set() or current.get(name) is not p:
            continue
        del current[name]
        crashed[name] += 1
        spec, what = specs[name], describe_exit(name, rc)
        if spec.critical:
            failed = what
            print(f"[bringup] {what}: nothing can hold the arm without it; stopping every node", flush=True)
        elif spec.respawn:
            respawn_at[name] = (time.monotonic() + spec.respawn_delay, rc)
            print(f"[bringup] {what}; the safety filter holds the arm; restarting it in {spec.respawn_delay:g} s",
                  flush=True)
        else:
            print(f"[bringup] {what}; the rest keeps running and the safety filter holds the arm "
                  f"(respawn:=true restarts perception, planner and controller)", flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in started if p.poll() is None]
        if not alive:
            break
        for p in alive:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + ns.grace
        while time.monotonic() < deadline and any(p.poll() is None for p in alive):
            time.sleep(0.05)
    for p in started:
        p.wait()
    for w in waiters:
        w.join(timeout=5.0)
    if reporter is not None:
        reporter.close()
    during = ", ".join(f"{n} x{c}" for n, c in crashed.items())
    print("[bringup] all nodes stopped" + (f" (node exits during the run: {during})" if during else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
