"""safety_filter: checks every ActionChunk as a whole before any of it executes, then commands the arm.

execution stepwise (default): an admitted chunk runs one row per period, each relative to the TCP measured then
and re-checked before it is sent as a one-point trajectory (semanticvla_core/safety/stepwise.py says why);
execution cartesian: the same checked row goes to <cartesian_topic> (ActionChunk, one ee_delta row) for the arm's
Cartesian controller; execution trajectory: the whole checked chunk goes out as one JointTrajectory.

Subscribes  /semanticvla/action_chunk (ActionChunk), /joint_states (sensor_msgs/JointState)
Publishes   <trajectory_topic> (trajectory_msgs/JointTrajectory for a joint trajectory controller; holds in every mode),
            <cartesian_topic> (ActionChunk, execution cartesian),
            <gripper_topic> (std_msgs/Float64, 0 open .. 1 closed),
            /semanticvla/safety/status (diagnostic_msgs/DiagnosticArray: verdict, reasons, counters)
A rejected chunk, a malformed message, NaN, a stale plan or a silent upstream node (watchdog) -> a hold
trajectory at the position where holding began, and the reason in the log and the diagnostics.
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from semanticvla_core.robot_state import ARM_JOINTS, FINGER_JOINTS, gripper_from_fingers
from semanticvla_core.safety import SafetyConfig, Watchdog, WatchdogConfig, make_checker
from semanticvla_core.safety.checker import Violation, ViolationKind, violations_text
from semanticvla_core.safety.kinematics import IKConfig
from semanticvla_core.safety.stepwise import EXECUTION_MODES, StepwiseExecutor

from semanticvla_core.actions import ACTION_SPACE_EE_DELTA
from semanticvla_core.interfaces import ActionChunkData

from .messages import chunk_from_msg, chunk_to_msg, ns_to_stamp
from .msg import ActionChunk
from .node_utils import guarded, now_ns, run_node
from .params import declare
from .ros_conversions import joint_state_arrays


def _duration(seconds: float) -> Duration:
    ns = int(round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


class SafetyNode(Node):
    def __init__(self):
        super().__init__("safety_filter")
        self.p = declare(self, "safety_filter")
        cfg = SafetyConfig(max_chunk_age_s=self.p.max_chunk_age_s, workspace_min=tuple(self.p.workspace_min),
                           workspace_max=tuple(self.p.workspace_max), table_z=self.p.table_z,
                           tcp_table_margin_m=self.p.table_margin, table_policy=self.p.table_policy,
                           table_clip_max_m=self.p.table_clip_max_m, env_boxes=json.loads(self.p.env_boxes_json),
                           ik=replace(IKConfig(), rest_posture=tuple(self.p.ik_rest_posture),
                                      nullspace_gain=self.p.ik_nullspace_gain))
        if self.p.execution not in EXECUTION_MODES:
            raise ValueError(f"safety_filter: execution must be one of {EXECUTION_MODES}, got {self.p.execution!r}")
        self.checker = make_checker(self.p.backend, cfg)
        self.stepwise = StepwiseExecutor(self.checker) if self.p.execution != "trajectory" else None
        if getattr(self.checker, "fallback_reason", ""):
            self.get_logger().warning(f"safety backend: {self.checker.fallback_reason}")
        self.watchdog = Watchdog(WatchdogConfig(chunk_timeout_s=self.p.chunk_timeout_s,
                                                joint_states_timeout_s=self.p.state_timeout_s,
                                                require=("chunk", "joint_states")))
        self.q = self.dq = None
        self.gripper = 0.0
        self.hold_q = None            # position held since the last hold began (None: not holding)
        self.counts = {"chunks": 0, "ok": 0, "clipped": 0, "rejected": 0, "malformed": 0, "watchdog_holds": 0,
                       "rows": 0, "rows_refused": 0, "rows_skipped": 0}
        self.last_verdict, self.last_reasons = "waiting", ""
        self.pub_traj = self.create_publisher(JointTrajectory, self.p.trajectory_topic, 5)
        self.pub_grip = self.create_publisher(Float64, self.p.gripper_topic, 5)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/semanticvla/safety/status", 5)
        self.pub_cart = (self.create_publisher(ActionChunk, self.p.cartesian_topic, 5)
                         if self.p.execution == "cartesian" else None)
        self.create_subscription(ActionChunk, "/semanticvla/action_chunk", self.on_chunk, 1)  # newest only
        self.create_subscription(JointState, self.p.joint_states_topic, self.on_joint_state, 20)
        self.create_timer(1.0 / self.p.watchdog_rate_hz, self.on_watchdog)
        if self.stepwise is not None:
            self.create_timer(1.0 / self.p.step_rate_hz, self.on_step)
        self.get_logger().info(f"safety filter: backend {self.checker.backend_name}, execution {self.p.execution}")

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
        if self.stepwise is not None:
            res = self.stepwise.admit(chunk, self.q, self.gripper, t, self.dq)
        else:
            res = self.checker.check_chunk(chunk, self.q, self.gripper, now_ns=t, dq_current=self.dq)
        if res.is_hold:
            self.counts["rejected"] += 1
            return self._hold(res.reasons, t)
        self.counts["clipped" if res.reasons else "ok"] += 1
        self.watchdog.feed("chunk", t)
        if self.stepwise is None:
            self._command(res, t)
        self._diag(res.status.value, violations_text(res.reasons), t)

    @guarded()
    def on_step(self) -> None:
        """execution stepwise / cartesian: run the row for now of the admitted chunk (checked again from the measured
        joints) as a one-point trajectory / a Cartesian ee_delta command."""
        if self.q is None:
            return
        t = now_ns(self)
        row = self.stepwise.step(self.q, self.gripper, t, self.dq)
        if row is None:
            return
        self.counts["rows"] += 1
        self.counts["rows_skipped"] += row.skipped
        if row.result.is_hold:                                  # (the executor stopped the chunk)
            self.counts["rows_refused"] += 1
            return self._hold(row.result.reasons, t)
        c = self.stepwise.chunk
        if self.pub_cart is not None and c.action_space == ACTION_SPACE_EE_DELTA:
            cmd = self.stepwise.cartesian_command(row, self.q)     # checked from these joints
            self.hold_q = None
            self.pub_cart.publish(chunk_to_msg(ActionChunkData(cmd[None].astype(np.float32), c.dt, c.action_space,
                                                               c.plan_id, stamp_ns=t, frame_id="panda_link0")))
            self.pub_grip.publish(Float64(data=float(cmd[6])))
            return
        self._command(row.result, t)

    def _command(self, res, t: int) -> None:
        self.hold_q = None
        self._publish_trajectory(res.positions, res.velocities, res.times_from_start, t)
        self.pub_grip.publish(Float64(data=float(res.gripper[0])))

    @guarded()
    def on_watchdog(self) -> None:
        t = now_ns(self)
        st = self.watchdog.check(t)
        if st.hold and self.stepwise is not None:
            self.stepwise.clear()     # a chunk that arrives after the silence starts afresh
        if st.hold and self.q is not None:
            self.counts["watchdog_holds"] += 1
            self._hold(st.reasons, t, log=self.hold_q is None)
        elif st.hold:
            self._diag("hold", st.summary(), t)

    # ------------------------------------------------------------------ outputs
    def _hold(self, reasons: list[Violation], t: int, log: bool = True) -> None:
        text = violations_text(reasons)
        if log:
            self.get_logger().warning(f"hold: {text}")
        if self.q is not None:
            # hold where holding began; but never command a jump back to it if the arm is elsewhere now
            if self.hold_q is None or max(abs(a - b) for a, b in zip(self.hold_q, self.q)) > self.p.hold_recapture_rad:
                self.hold_q = list(self.q)
            self._publish_trajectory([self.hold_q], [[0.0] * 7], [self.checker.config.hold_time_s], t)
        self._diag("hold", text, t)

    def _publish_trajectory(self, positions, velocities, times, t: int) -> None:
        traj = JointTrajectory()
        traj.header.stamp = ns_to_stamp(t)
        traj.joint_names = list(ARM_JOINTS)
        for q, v, ts in zip(positions, velocities, times):
            traj.points.append(JointTrajectoryPoint(positions=[float(x) for x in q], velocities=[float(x) for x in v],
                                                    time_from_start=_duration(float(ts))))
        self.pub_traj.publish(traj)

    def _diag(self, verdict: str, reasons: str, t: int) -> None:
        self.last_verdict, self.last_reasons = verdict, reasons
        level = {"ok": DiagnosticStatus.OK, "clipped": DiagnosticStatus.WARN}.get(verdict, DiagnosticStatus.ERROR)
        st = DiagnosticStatus(level=level, name="semanticvla/safety_filter", message=f"{verdict}: {reasons}"[:500],
                              hardware_id="panda")
        st.values = [KeyValue(key=k, value=str(v)) for k, v in self.counts.items()]
        st.values.append(KeyValue(key="backend", value=self.checker.backend_name))
        arr = DiagnosticArray()
        arr.header.stamp = ns_to_stamp(t)
        arr.status = [st]
        self.pub_diag.publish(arr)


def main(args=None):
    run_node(SafetyNode, args)


if __name__ == "__main__":
    main()
