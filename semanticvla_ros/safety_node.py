"""safety_filter: checks every ActionChunk as a whole before any of it executes, then commands the arm.

The commands come from semanticvla_core/safety/execution.py (SafetyExecutor, the same executor the evaluation
harness and the fuzz campaign run), every one re-checked exactly as it is sent (the whole path the controller's
setpoint sweeps, dense enough that nothing hides between checked states; velocity / acceleration limits with no
slow-down left). execution stepwise (default): an admitted chunk runs one row per period, each relative to the TCP
measured then, as a one-point trajectory; execution cartesian: the row goes to <cartesian_topic> (ActionChunk, one
ee_delta row) for the arm's Cartesian controller, whose setpoint the filter predicts with the controller's own code;
execution trajectory: the whole checked chunk goes out as one JointTrajectory of position-only points.

Subscribes  /semanticvla/action_chunk (ActionChunk), /joint_states (sensor_msgs/JointState)
Publishes   <trajectory_topic> (trajectory_msgs/JointTrajectory for a joint trajectory controller; holds in every mode),
            <cartesian_topic> (ActionChunk, execution cartesian),
            <gripper_topic> (std_msgs/Float64, 0 open .. 1 closed),
            /semanticvla/safety/status (diagnostic_msgs/DiagnosticArray: verdict, reasons, counters)
A rejected chunk, a malformed message, NaN, a stale plan or a silent upstream node (watchdog) -> a hold (the
setpoint braked to rest within the acceleration limits, the braking path checked), and the reason in the log and
the diagnostics.

Upstream failures (semanticvla_core/safety/watchdog.py). Silence: the watchdog (``watchdog_rate_hz``, one control
period) also watches the planner's /semanticvla/trace (``trace_timeout_s``) and perception's
/semanticvla/observation/joint_states (``observation_timeout_s``), each once seen, and names the silent one ("no Trace
from the planner for 1.204 s"). Death: the supervisor (bring-up or launch file) reports every node exit on
/semanticvla/supervisor/node_exit (std_msgs/String, JSON; reliable, transient_local); an exit of one of
``upstream_nodes`` holds right in that callback and latches ("planner exited (signal 9 SIGKILL): holding until it
publishes again") until the node publishes a message made after its exit (a respawn), or for good. While a latched
exit or a silent planner / perception / arm holds, no chunk is admitted, no row runs, and only holds are sent and
reported.

Threads (a 3-thread MultiThreadedExecutor): chunk admission runs in its own callback group, the rows in another, the
watchdog, node exits, liveness and joint states in the default group. The executor is guarded by ``_exec_lock``; an
admission takes it only to read where the setpoint is and to install its verdict: the whole-chunk check itself (up
to ``check_budget_s``) runs outside it with a checker of its own (``admission_checker``; checkers are not
thread-safe), so the rows go on every period while a new chunk is checked (with the ``moveit`` backend the check
runs under the lock). Once a check has run 20 ms that checker sleeps 0.5 ms after every 2 ms of work
(``SafetyChecker.share_the_gil``): the check is pure Python and would keep the GIL from the rows' threads (rows
0.2-0.45 s apart during a long check). (Pausing the check whenever a row was being verified was tried: the main
command then solved 3 of 10 runs against 5 of 5 without it, in the same clone; why is not established.) A row whose
own check runs out of time is not sent, the arm brakes that period and the chunk goes on. Every row is verified as
it is sent, from where the setpoint is then. A hold
never waits: one that finds the executor busy (a row being verified) stops at the setpoint at once (one point) and
the group that had it brakes properly as soon as it is done. ``_lock`` guards the watchdog state and every publication and is
never held across a check.

Subscribes  (also) /semanticvla/trace (Trace), /semanticvla/observation/joint_states, /semanticvla/supervisor/node_exit
"""
from __future__ import annotations

import json
import threading
from dataclasses import replace

import numpy as np

from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import MarkerArray

from semanticvla_core.robot_state import ARM_JOINTS, FINGER_JOINTS, gripper_from_fingers
from semanticvla_core.safety import SafetyConfig, Watchdog, WatchdogConfig, make_checker
from semanticvla_core.safety.checker import Violation, ViolationKind, violations_text
from semanticvla_core.safety.kinematics import IKConfig
from semanticvla_core.safety.execution import EXECUTION_MODES, SafetyExecutor
from semanticvla_core.safety.watchdog import parse_node_exit

from semanticvla_core.actions import ACTION_SPACE_EE_DELTA
from semanticvla_core.interfaces import ActionChunkData

from .graph import NODE_EXIT_TOPIC
from .messages import chunk_from_msg, chunk_to_msg, ns_to_stamp, stamp_to_ns
from .msg import ActionChunk, Trace
from .node_utils import guarded, latched_qos, node_exit_qos, now_ns, run_node
from .params import declare
from .ros_conversions import boxes_from_markers, joint_state_arrays


def _duration(seconds: float) -> Duration:
    ns = int(round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


class _GatedPublisher:
    """A command publisher: publishes under the node's ``_lock``; while a hold no chunk can lift is in force
    (:meth:`SafetyNode._blocked`), only what a hold sends goes out (a command computed just before the hold began
    is dropped)."""

    def __init__(self, node: "SafetyNode", pub):
        self.node, self.pub = node, pub

    def publish(self, msg) -> None:
        n = self.node
        with n._lock:
            if not getattr(n._in_hold, "on", False) and n._blocked(now_ns(n)):
                n.counts["blocked"] += 1
                return
            self.pub.publish(msg)


class SafetyNode(Node):
    def __init__(self):
        super().__init__("safety_filter")
        self.p = declare(self, "safety_filter")
        cfg = SafetyConfig(max_chunk_age_s=self.p.max_chunk_age_s, workspace_min=tuple(self.p.workspace_min),
                           workspace_max=tuple(self.p.workspace_max), table_z=self.p.table_z,
                           gripper_table_margin_m=self.p.table_margin, table_policy=self.p.table_policy,
                           gripper=self.p.gripper_model, check_budget_s=self.p.check_budget_s,
                           table_clip_max_m=self.p.table_clip_max_m, env_boxes=json.loads(self.p.env_boxes_json),
                           joint_limit_policy=self.p.joint_limit_policy,
                           joint_limit_clip_max_rad=self.p.joint_limit_clip_max_rad,
                           ik=replace(IKConfig(), rest_posture=tuple(self.p.ik_rest_posture),
                                      nullspace_gain=self.p.ik_nullspace_gain))
        if self.p.execution not in EXECUTION_MODES:
            raise ValueError(f"safety_filter: execution must be one of {EXECUTION_MODES}, got {self.p.execution!r}")
        self._cfg = cfg                          # (env_boxes: the static ones; a scene message adds its boxes)
        self.checker = make_checker(self.p.backend, cfg, **self._moveit_kwargs())
        self.admission_checker = self._second_checker(cfg)
        self.commander = SafetyExecutor(self.checker, self.p.execution, period_s=1.0 / self.p.step_rate_hz,
                                       rest_posture=tuple(self.p.ik_rest_posture), recapture_rad=self.p.hold_recapture_rad)
        if getattr(self.checker, "fallback_reason", ""):
            self.get_logger().warning(f"safety backend: {self.checker.fallback_reason}")
        self.watchdog = Watchdog(WatchdogConfig(chunk_timeout_s=self.p.chunk_timeout_s,
                                                joint_states_timeout_s=self.p.state_timeout_s,
                                                trace_timeout_s=self.p.trace_timeout_s,
                                                observation_timeout_s=self.p.observation_timeout_s,
                                                require=("chunk", "joint_states"), watch=("trace", "observation"),
                                                upstream=tuple(self.p.upstream_nodes)))
        # threads (module text)
        self._lock = threading.RLock()           # watchdog state + every publication; never held across a check
        self._exec_lock = threading.RLock()      # the executor + checker: chunk group, or a hold that finds it free
        self._in_hold = threading.local()        # .on: this thread is sending a hold (never gated)
        self._hold_pending = False               # a hold found the executor busy: the chunk group brakes after it
        self._cb_chunk = MutuallyExclusiveCallbackGroup()
        self._cb_step = MutuallyExclusiveCallbackGroup()
        self.q = self.dq = None
        self.gripper = 0.0
        self.holding = False          # the last command was a hold (log a hold reason once, not every tick)
        self.counts = {"chunks": 0, "ok": 0, "clipped": 0, "rejected": 0, "malformed": 0, "watchdog_holds": 0,
                       "rows": 0, "rows_refused": 0, "rows_skipped": 0, "node_exits": 0, "blocked": 0}
        self.last_verdict, self.last_reasons = "waiting", ""
        self.pub_traj = _GatedPublisher(self, self.create_publisher(JointTrajectory, self.p.trajectory_topic, 5))
        self.pub_grip = _GatedPublisher(self, self.create_publisher(Float64, self.p.gripper_topic, 5))
        self.pub_diag = self.create_publisher(DiagnosticArray, "/semanticvla/safety/status", 5)
        self.pub_cart = (_GatedPublisher(self, self.create_publisher(ActionChunk, self.p.cartesian_topic, 5))
                         if self.p.execution == "cartesian" else None)
        self.create_subscription(ActionChunk, "/semanticvla/action_chunk", self._chunk_group_on_chunk, 1,  # newest only
                                 callback_group=self._cb_chunk)
        self.create_subscription(JointState, self.p.joint_states_topic, self.on_joint_state, 20)
        self.create_subscription(Trace, "/semanticvla/trace", self.on_trace, 1)
        self.create_subscription(JointState, "/semanticvla/observation/joint_states", self.on_observation, 5)
        self.create_subscription(String, NODE_EXIT_TOPIC, self.on_node_exit, node_exit_qos())
        self.scene_boxes = 0
        if self.p.scene_obstacles_topic:
            self.create_subscription(MarkerArray, self.p.scene_obstacles_topic, self.on_scene, latched_qos(),
                                     callback_group=self._cb_chunk)
        self.create_timer(1.0 / self.p.watchdog_rate_hz, self.on_watchdog)
        self.create_timer(1.0 / self.p.step_rate_hz, self._step_group_on_step, callback_group=self._cb_step)
        self.get_logger().info(f"safety filter: backend {self.checker.backend_name}, execution {self.p.execution}")

    def _second_checker(self, cfg: SafetyConfig):
        """The admission's own checker (module text: Threads), the same as ``self.checker``; None (admission under
        the lock with ``self.checker``) for a backend that is not built here (moveit)."""
        if self.checker.backend_name != "builtin":
            return None
        checker = make_checker("builtin", cfg)
        checker.share_the_gil()          # a long check lets the rows' threads run (module text: Threads)
        return checker

    def _moveit_kwargs(self) -> dict:
        """backend moveit: MoveIt's own parameters (robot_description, robot_description_semantic,
        robot_description_kinematics.*, planning_scene_monitor_options.*, planning_pipelines.*, ompl.*), declared
        with the defaults of semanticvla_core/safety/moveit_backend.py:moveit_parameters (the description the
        builtin checker uses), set by the launch file / bring-up, and handed to MoveItPy as its config_dict."""
        if self.p.backend not in ("moveit", "auto"):
            return {}
        from rcl_interfaces.msg import ParameterDescriptor

        from semanticvla_core.safety.moveit_backend import flatten_parameters, moveit_parameters, nest_parameters

        flat = {}
        for name, default in flatten_parameters(moveit_parameters(joint_states_topic=self.p.joint_states_topic)).items():
            self.declare_parameter(name, default, ParameterDescriptor(description="MoveIt (backend moveit)"))
            flat[name] = self.get_parameter(name).value
        cfg = nest_parameters(flat)
        if not cfg["robot_description"].strip() or not cfg["robot_description_semantic"].strip():
            raise ValueError("safety_filter: backend moveit needs a non-empty robot_description and "
                             "robot_description_semantic")
        return {"config_dict": cfg}

    # ------------------------------------------------------------------ inputs
    @guarded()
    def on_joint_state(self, msg: JointState) -> None:
        self.q = joint_state_arrays(msg, ARM_JOINTS)
        try:
            self.gripper = gripper_from_fingers(joint_state_arrays(msg, FINGER_JOINTS))
        except ValueError:
            pass  # an arm without finger joints in its JointState: keep the last gripper value
        self.dq = None
        if len(msg.velocity) == len(msg.name):
            idx = {n: i for i, n in enumerate(msg.name)}
            self.dq = [msg.velocity[idx[n]] for n in ARM_JOINTS]
        self.watchdog.feed("joint_states", now_ns(self))

    def on_chunk(self, msg: ActionChunk) -> None:
        t = now_ns(self)
        self.counts["chunks"] += 1
        try:
            chunk = chunk_from_msg(msg)
        except ValueError as e:
            self.counts["malformed"] += 1
            kind = ViolationKind.NAN if "NaN" in str(e) else ViolationKind.WRONG_SHAPE
            return self._hold([Violation(kind, f"malformed ActionChunk: {e}")], t)
        except Exception as e:  # noqa: BLE001 - never die on a message
            self.counts["malformed"] += 1
            return self._hold([Violation(ViolationKind.WRONG_SHAPE, f"malformed ActionChunk: {e}")], t)
        if self.q is None:
            return self._hold([Violation(ViolationKind.STALE, "no joint state yet")], t)
        q, g, dq = self.q, self.gripper, self.dq
        with self._exec_lock:
            start = self.commander.admission_start(t, q, dq)
        if self.admission_checker is not None:      # the rows go on meanwhile (module text: Threads)
            res = self.commander.check_admission(chunk, q, g, t, dq, start, checker=self.admission_checker)
        with self._exec_lock:
            if self.admission_checker is None:
                res = self.commander.check_admission(chunk, q, g, t, dq, start)
            self.commander.accept(chunk, res, t)
            if res.is_hold:
                self.counts["rejected"] += 1
                why = [v for v in res.reasons if v.rejecting] or res.reasons
                self.watchdog.refused("chunk", t, violations_text(why))   # (a timeout then names the refusals)
                if self.commander.keeps_running(res):     # out of time, nothing found: the last admitted plan goes on
                    text = violations_text(res.reasons)
                    self.get_logger().warning(f"chunk not admitted ({text}): the running chunk goes on")
                    self._diag("rejected", text + "; the running chunk goes on", t)
                    return None
                return self._hold(res.reasons, t)
            self.counts["clipped" if res.reasons else "ok"] += 1
            self.watchdog.feed("chunk", t)
            self._diag(res.status.value, violations_text(res.reasons), t)
            if self.p.execution == "trajectory":       # a whole chunk goes out now, not at the next period
                t = now_ns(self)
                cmd = self.commander.tick(self.q, self.gripper, t, self.dq)
                if cmd is not None:
                    self._hold(cmd.reasons, t, cmd=cmd) if cmd.is_hold else self._send(cmd)

    @guarded()
    def on_step(self) -> None:
        """Every control period: the executor's command for now (semanticvla_core/safety/execution.py: the row for
        now, or the admitted whole chunk, re-checked exactly as it is sent; braking when refused)."""
        if self.q is None:
            return
        t = now_ns(self)
        cmd = self.commander.tick(self.q, self.gripper, t, self.dq)
        if cmd is None:
            return
        if cmd.row is not None:
            self.counts["rows"] += 1
            self.counts["rows_skipped"] += cmd.skipped
        if cmd.is_hold:
            self.counts["rows_refused"] += cmd.row is not None
            if self.commander.row_late(cmd):      # its check ran out of time, nothing found: brake, the chunk goes on
                text = f"row {cmd.row} not sent: {violations_text(cmd.reasons)}"
                self.get_logger().warning(f"{text}: braking this period, the chunk goes on")
                self._send(cmd)
                self._diag("rejected", text + "; braking this period, the chunk goes on", t)
                return None
            return self._hold(cmd.reasons, t, cmd=cmd)
        self._send(cmd)

    def _send(self, cmd) -> None:
        """Publish an ArmCommand: a Cartesian ee_delta row or a JointTrajectory (position-only points); None: nothing
        to send (the last verified command finishes by itself)."""
        if cmd is None:
            return
        self.holding = cmd.is_hold
        if cmd.kind == "ee_delta" and self.pub_cart is not None:
            self.pub_cart.publish(chunk_to_msg(ActionChunkData(cmd.ee_delta[None].astype(np.float32), float(cmd.times[0]),
                                                               ACTION_SPACE_EE_DELTA, stamp_ns=cmd.stamp_ns,
                                                               frame_id="panda_link0")))
        else:
            self._publish_trajectory(cmd.positions, cmd.times, cmd.stamp_ns)
        self.pub_grip.publish(Float64(data=float(cmd.gripper)))

    @guarded()
    def on_watchdog(self) -> None:
        t = now_ns(self)
        st = self._check(t)       # (_hold clears the executor: a chunk that arrives after the silence starts afresh)
        if st.hold and self.q is not None:
            self.counts["watchdog_holds"] += 1
            self._hold(st.reasons, t, log=not self.holding)
        elif st.hold:
            self._diag("hold", st.summary(), t)

    # ------------------------------------------------------------------ the scene (chunk group)
    @guarded()
    def on_scene(self, msg: MarkerArray) -> None:
        """New fixed obstacles: a checker with them (10 ms to build) replaces the running one between two checks; a
        malformed message is refused whole (the previous scene stays, the reason is logged)."""
        boxes = boxes_from_markers(msg)           # ValueError (logged by guarded) on a malformed box
        if self.checker.backend_name == "moveit":
            self.get_logger().info("scene obstacles: ignored, backend moveit checks MoveIt's own planning scene")
            return
        cfg = replace(self._cfg, env_boxes=list(self._cfg.env_boxes) + boxes)
        checker, second = make_checker("builtin", cfg), self._second_checker(cfg)
        with self._exec_lock:
            self.checker = self.commander.checker = checker
            self.admission_checker = second       # (this is the chunk group: no admission runs now)
        self.scene_boxes = len(boxes)
        self.get_logger().info(f"scene: {len(boxes)} obstacle boxes from {self.p.scene_obstacles_topic} "
                               f"({', '.join(b.name for b in boxes[:6])}{' ...' if len(boxes) > 6 else ''})")

    # ------------------------------------------------------------------ upstream exits and liveness (default group)
    @guarded()
    def on_node_exit(self, msg: String) -> None:
        """The supervisor saw a node's process exit. An upstream node: hold right here and keep holding (latched,
        named in the status) until it publishes again."""
        t = now_ns(self)
        ex = parse_node_exit(msg.data, t)       # ValueError (logged by guarded) on a malformed report
        with self._lock:
            why = self.watchdog.node_exited(ex)
            if why is not None:
                self.counts["node_exits"] += 1
        if why is None:
            self.get_logger().info(f"supervisor: {ex.describe()} (not an upstream node, or back since)")
            return
        self._hold([why], t)

    @guarded()
    def on_trace(self, msg: Trace) -> None:
        """Planner liveness (the controller decodes the Traces; here only their arrival and stamp count)."""
        self._seen("trace", "planner", msg.header.stamp)

    @guarded()
    def on_observation(self, msg: JointState) -> None:
        """Perception liveness: it publishes the joint state of every observation it emits."""
        self._seen("observation", "perception", msg.header.stamp)

    def _seen(self, source: str, node: str, stamp) -> None:
        t = now_ns(self)
        with self._lock:
            if source != "chunk":
                self.watchdog.feed(source, t)
            back = self.watchdog.alive(node, stamp_to_ns(stamp), t)
        if back is not None:
            self.get_logger().info(f"{node} is back (after: {back.describe()}): its hold is lifted")

    def _check(self, t: int, ignore: tuple[str, ...] = ()):
        with self._lock:
            return self.watchdog.check(t, ignore)

    def _blocked(self, t: int) -> list[Violation]:
        """Why nothing may move now, whatever a chunk says: an upstream node exited, or the planner, perception or
        the joint states went silent (a mere gap in the chunks is not: the next chunk ends it)."""
        return self._check(t, ignore=("chunk",)).reasons

    # ------------------------------------------------------------------ chunk and step groups
    @guarded()
    def _chunk_group_on_chunk(self, msg: ActionChunk) -> None:
        """on_chunk (the executor to itself except during the check); refused while blocked; a hold that began
        during the check wins."""
        try:
            t = now_ns(self)
            self._seen("chunk", "controller", msg.header.stamp)
            blocked = self._blocked(t)
            if blocked:
                self.counts["blocked"] += 1
                with self._exec_lock:
                    return self._hold(blocked, t, log=False)
            self.on_chunk(msg)
            t = now_ns(self)
            blocked = self._blocked(t)
            if blocked:
                with self._exec_lock:
                    self._hold(blocked, t, log=False)
        finally:
            with self._exec_lock:
                self._catch_up_hold()

    @guarded()
    def _step_group_on_step(self) -> None:
        """on_step with the executor to itself; no row runs while blocked (the watchdog holds every period)."""
        with self._exec_lock:
            try:
                if not self._blocked(now_ns(self)):
                    self.on_step()
            finally:
                self._catch_up_hold()

    def _stop_now(self, t: int) -> None:
        """A hold while the chunk group is checking (executor busy): stop at the setpoint at once, one point (the
        executor's own fallback when braking is not safe); the chunk group brakes properly once its check is done."""
        q = np.asarray(self.q, dtype=np.float64)
        try:
            sq = self.commander.setpoint(t, q)[0]       # read only; if it races a commit, the measured joints
        except Exception:  # noqa: BLE001
            sq = q
        with self._lock:
            self._hold_pending, self.holding = True, True
            self._in_hold.on = True
            try:
                self._publish_trajectory([sq], [max(self.checker.config.hold_time_s, self.commander.period)], t)
                self.pub_grip.publish(Float64(data=float(self.gripper)))
            finally:
                self._in_hold.on = False

    def _catch_up_hold(self) -> None:
        """Chunk group, after its work: brake properly for a hold that found the executor busy (if still due)."""
        if not self._hold_pending:
            return
        self._hold_pending = False
        t = now_ns(self)
        st = self._check(t)
        if st.hold and self.q is not None:
            self._hold(st.reasons, t, log=False)

    # ------------------------------------------------------------------ outputs
    def _hold(self, reasons: list[Violation], t: int, log: bool = True, cmd=None) -> None:
        """Hold: the executor brings the arm's setpoint to rest within the acceleration limits (its braking path
        checked; an immediate stop at the setpoint when that path is not safe) and the reason goes to the status."""
        text = violations_text(reasons)
        if log:
            self.get_logger().warning(f"hold: {text}")
        if self.q is not None:
            if self._exec_lock.acquire(blocking=False):     # free, or this thread is the chunk group (re-entrant)
                try:
                    self._in_hold.on = True
                    self.commander.clear()
                    self._send(cmd if cmd is not None else self.commander.brake(self.q, self.gripper, t, reasons))
                finally:
                    self._in_hold.on = False
                    self._exec_lock.release()
            else:
                self._stop_now(t)     # never wait for a chunk check in progress
        self._diag("hold", text, t)

    def _publish_trajectory(self, positions, times, t: int) -> None:
        """Position-only points: a joint trajectory controller interpolates them linearly (what was checked)."""
        traj = JointTrajectory()
        traj.header.stamp = ns_to_stamp(t)
        traj.joint_names = list(ARM_JOINTS)
        for q, ts in zip(positions, times):
            traj.points.append(JointTrajectoryPoint(positions=[float(x) for x in q], time_from_start=_duration(float(ts))))
        self.pub_traj.publish(traj)

    def _diag(self, verdict: str, reasons: str, t: int) -> None:
        with self._lock:
            if verdict != "hold" and self._blocked(t):
                return                # while upstream is down or silent only the hold (and its cause) is reported
            self._publish_diag(verdict, reasons, t)

    def _publish_diag(self, verdict: str, reasons: str, t: int) -> None:
        self.last_verdict, self.last_reasons = verdict, reasons
        level = {"ok": DiagnosticStatus.OK, "clipped": DiagnosticStatus.WARN}.get(verdict, DiagnosticStatus.ERROR)
        st = DiagnosticStatus(level=level, name="semanticvla/safety_filter", message=f"{verdict}: {reasons}"[:500],
                              hardware_id="panda")
        st.values = [KeyValue(key=k, value=str(v)) for k, v in self.counts.items()]
        st.values.append(KeyValue(key="backend", value=self.checker.backend_name))
        st.values.append(KeyValue(key="scene_boxes", value=str(self.scene_boxes)))
        arr = DiagnosticArray()
        arr.header.stamp = ns_to_stamp(t)
        arr.status = [st]
        self.pub_diag.publish(arr)


def main(args=None):
    run_node(SafetyNode, args, num_threads=3)    # rows and holds never wait for a chunk check (module text)


if __name__ == "__main__":
    main()
