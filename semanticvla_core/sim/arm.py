"""The simulated arm's controllers behind the safety filter, one implementation for the ROS sim node, the evaluation
harness and the safety fuzz campaign: a joint trajectory follower (position-only points, linear interpolation, as
ros2_control's joint trajectory controller does with them) and the Cartesian ee_delta controller (``env.step``:
:mod:`semanticvla_core.cartesian`). The newest command of either kind wins; without one the arm holds its setpoint.
"""
from __future__ import annotations

import numpy as np

from ..robot_state import ARM_JOINTS
from ..trajectory import TrajectoryFollower
from .env import FrankaTabletopEnv


class SimArm:
    def __init__(self, env: FrankaTabletopEnv):
        self.env = env
        self.follower = TrajectoryFollower()
        self.delta: np.ndarray | None = None      # pending Cartesian row (runs at the next tick)
        self.gripper = 0.0
        self.period_ns = int(round(1e9 / env.cfg.control_hz))

    def reset(self) -> None:
        """After env.reset: hold where the arm is."""
        self.follower.hold(self.env.joint_targets())
        self.delta, self.gripper = None, self.env.gripper_cmd

    def set_trajectory(self, joint_names, positions, times_from_start, stamp_ns: int) -> None:
        """A JointTrajectory (ValueError on a malformed one; the previous one keeps running)."""
        self.follower.set_trajectory(list(joint_names), [list(p) for p in positions], list(times_from_start),
                                     int(stamp_ns), list(ARM_JOINTS))
        self.delta = None

    def set_delta(self, row) -> None:
        """One Cartesian ee_delta row (clipped as the controller does; ValueError on NaN / wrong shape)."""
        self.delta = self.env.clip_action(row)

    def set_gripper(self, g: float) -> None:
        if not np.isfinite(g):
            raise ValueError(f"gripper command {g} is not finite; ignored")
        self.gripper = float(np.clip(g, 0.0, 1.0))

    def command(self, cmd) -> None:
        """An :class:`~semanticvla_core.safety.execution.ArmCommand` as the safety node would publish it."""
        if cmd.kind == "ee_delta":
            self.set_delta(cmd.ee_delta)
        else:
            self.set_trajectory(ARM_JOINTS, cmd.positions, cmd.times, cmd.stamp_ns)
        self.set_gripper(cmd.gripper)

    def tick(self, now_ns: int, render: bool = False) -> dict:
        """One control period of physics from ``now_ns``."""
        env = self.env
        if self.delta is not None:     # a Cartesian row: the demonstrations' controller, then hold its setpoint
            env.step(self.delta, render=False)
            self.gripper, self.delta = env.gripper_cmd, None
            self.follower.hold(env.joint_targets())
        else:
            env.step_joint_targets(self.follower.target(int(now_ns) + self.period_ns), self.gripper)
        return env.observe(render)
