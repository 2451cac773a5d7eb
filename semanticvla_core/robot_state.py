"""The robot-state vector the policy sees (``observation.state``), computed in one place.

15-D float32 (:data:`STATE_NAMES`): 7 arm joint positions [rad] (Franka/URDF convention), 2 finger positions
[m, 0 = closed, 0.04 = open each], TCP position [m, base frame], TCP orientation as the rotation vector of
``R_tcp @ R_DOWN.T`` [rad] (zero when the gripper points straight down with the fingers along the base y
axis, which keeps the value far from the rotation-vector discontinuity at pi).
"""
from __future__ import annotations

import numpy as np

from .actions import EE_DELTA_DIM, ee_delta_between, integrate_chunk, matrix_to_rotvec, rotvec_to_matrix
from .safety.kinematics import PANDA_ARM_JOINTS, PANDA_FINGER_JOINTS, width_to_gripper

ARM_JOINTS = list(PANDA_ARM_JOINTS)
FINGER_JOINTS = list(PANDA_FINGER_JOINTS)
R_DOWN = np.diag([1.0, -1.0, -1.0])          # TCP pointing down, fingers along base y
STATE_NAMES = ARM_JOINTS + FINGER_JOINTS + ["tcp_x", "tcp_y", "tcp_z", "tcp_rv_x", "tcp_rv_y", "tcp_rv_z"]
STATE_DIM = len(STATE_NAMES)
TCP_POS = slice(9, 12)                         # where the TCP pose sits in the state vector
TCP_RV = slice(12, 15)
# What the decoder's rows mean (``SemanticVLAConfig.action_frame``): "delta" = the 7-D ee_delta action itself;
# "tcp_pose" = the TCP pose each row should reach, in the state's own representation (base-frame position +
# rotation vector of R @ R_DOWN.T) + gripper, i.e. the chunk integrated from the state it was planned at
# (:func:`deltas_to_tcp_targets`; :func:`tcp_targets_to_deltas` is the exact inverse).
ACTION_FRAMES = ("delta", "tcp_pose")


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


def tcp_pose_from_state(state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The TCP pose stored in a 15-D state: (position (3,), rotation 3x3)."""
    s = np.asarray(state, dtype=np.float64).reshape(-1)
    if s.shape != (STATE_DIM,):
        raise ValueError(f"state: expected ({STATE_DIM},), got {s.shape}")
    return s[TCP_POS].copy(), rotvec_to_matrix(s[TCP_RV]) @ R_DOWN


def deltas_to_tcp_targets(state: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """An ee_delta chunk (H, 7) planned at ``state`` -> the TCP targets it steps through (H, 7): position,
    rotation vector of ``R_k @ R_DOWN.T`` (as in the state), gripper."""
    P, R, G = integrate_chunk(*tcp_pose_from_state(state), deltas)
    rv = np.array([matrix_to_rotvec(r @ R_DOWN.T) for r in R]).reshape(len(P), 3)
    return np.concatenate([P, rv, G[:, None]], axis=1)


def tcp_targets_to_deltas(state: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Inverse of :func:`deltas_to_tcp_targets`: TCP targets (H, 7) -> the ee_delta chunk (H, 7) that steps
    from ``state``'s TCP pose through them (row k: from target k-1, row 0: from the state)."""
    t = np.asarray(targets, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != EE_DELTA_DIM:
        raise ValueError(f"TCP targets must have shape (H, {EE_DELTA_DIM}), got {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("TCP targets contain NaN or inf")
    p, r = tcp_pose_from_state(state)
    out = np.empty_like(t)
    for k, row in enumerate(t):
        r1 = rotvec_to_matrix(row[3:6]) @ R_DOWN
        out[k] = ee_delta_between(p, r, row[:3], r1, float(np.clip(row[6], 0.0, 1.0)))
        p, r = row[:3], r1
    return out
