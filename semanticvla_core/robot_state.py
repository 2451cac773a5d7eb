"""The robot-state vector the policy sees (``observation.state``), computed in one place.

15-D float32 (:data:`STATE_NAMES`): 7 arm joint positions [rad] (Franka/URDF convention), 2 finger positions
[m, 0 = closed, 0.04 = open each], TCP position [m, base frame], TCP orientation as the rotation vector of
``R_tcp @ R_DOWN.T`` [rad] (zero when the gripper points straight down with the fingers along the base y
axis, which keeps the value far from the rotation-vector discontinuity at pi).
"""
from __future__ import annotations

import numpy as np

from .actions import matrix_to_rotvec
from .safety.kinematics import PANDA_ARM_JOINTS, PANDA_FINGER_JOINTS, width_to_gripper

ARM_JOINTS = list(PANDA_ARM_JOINTS)
FINGER_JOINTS = list(PANDA_FINGER_JOINTS)
R_DOWN = np.diag([1.0, -1.0, -1.0])          # TCP pointing down, fingers along base y
STATE_NAMES = ARM_JOINTS + FINGER_JOINTS + ["tcp_x", "tcp_y", "tcp_z", "tcp_rv_x", "tcp_rv_y", "tcp_rv_z"]
STATE_DIM = len(STATE_NAMES)


def state_vector(q: np.ndarray, fingers: np.ndarray, tcp_pos: np.ndarray, tcp_rot: np.ndarray) -> np.ndarray:
    """Assemble the 15-D state from joints, fingers and the TCP pose."""
    q, fingers = np.asarray(q, dtype=np.float64), np.asarray(fingers, dtype=np.float64)
    if q.shape != (7,) or fingers.shape != (2,):
        raise ValueError(f"state: expected 7 arm joints and 2 fingers, got {q.shape} and {fingers.shape}")
    return np.concatenate([q, fingers, np.asarray(tcp_pos, dtype=np.float64),
                           matrix_to_rotvec(np.asarray(tcp_rot, dtype=np.float64) @ R_DOWN.T)]).astype(np.float32)


def state_from_joints(q: np.ndarray, fingers: np.ndarray, kinematics=None) -> np.ndarray:
    """The 15-D state from joint positions alone (TCP pose by forward kinematics of the Panda URDF)."""
    if kinematics is None:
        from .safety.kinematics import PandaKinematics
        kinematics = PandaKinematics()
    p, R = kinematics.fk(np.asarray(q, dtype=np.float64))
    return state_vector(q, fingers, p, R)


def gripper_from_fingers(fingers: np.ndarray) -> float:
    """Finger positions (2,) [m] -> gripper value in [0 (open), 1 (closed)]."""
    return float(width_to_gripper(float(np.sum(np.asarray(fingers, dtype=np.float64)))))
