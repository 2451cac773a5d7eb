"""Safety filter logic (ROS-free): Panda kinematics, whole-chunk checks, backends and the watchdog.

The safety node calls::

    checker = make_checker(backend="auto", config=SafetyConfig(...))
    result = checker.check_chunk(chunk, q_current, gripper_current, now_ns=now, dq_current=dq)
    # result.positions / velocities / times_from_start -> JointTrajectory, result.gripper -> gripper command
    # result.summary() -> log / diagnostics; result.is_hold -> the arm holds at q_current
"""
from .checker import (BuiltinSafetyChecker, EnvBox, SafetyChecker, SafetyConfig, SafetyResult, SafetyStatus, Violation,
                      ViolationKind, Watchdog, WatchdogConfig, WatchdogStatus, make_checker, violations_text,
                      watchdog_check)
from .kinematics import (GRIPPER_MAX_WIDTH_M, PANDA_ACCEL_LIMITS, PANDA_ARM_JOINTS, PANDA_FINGER_JOINTS, PANDA_JERK_LIMITS,
                         PANDA_REST_Q, PANDA_VELOCITY_LIMITS, READY_Q, TCP_OFFSET_M, ChunkIK, IKConfig, IKResult,
                         PandaKinematics,
                         find_panda_description, gripper_to_width, width_to_gripper)

__all__ = [
    "BuiltinSafetyChecker", "EnvBox", "SafetyChecker", "SafetyConfig", "SafetyResult", "SafetyStatus", "Violation",
    "ViolationKind", "Watchdog", "WatchdogConfig", "WatchdogStatus", "make_checker", "violations_text", "watchdog_check",
    "GRIPPER_MAX_WIDTH_M", "PANDA_ACCEL_LIMITS", "PANDA_ARM_JOINTS", "PANDA_FINGER_JOINTS", "PANDA_JERK_LIMITS",
    "PANDA_REST_Q", "PANDA_VELOCITY_LIMITS", "READY_Q", "TCP_OFFSET_M", "ChunkIK", "IKConfig", "IKResult", "PandaKinematics",
    "find_panda_description", "gripper_to_width", "width_to_gripper",
]
