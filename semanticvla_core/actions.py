"""The action spaces and the one conversion from an end-effector delta action to a target pose.

Everything that turns a 7-D action into motion (the simulator, the safety filter's IK, the scripted
expert that produces the labels) calls :func:`apply_ee_delta` / :func:`ee_delta_between`, so training
labels and execution can never disagree about units or frames.

``ee_delta`` action (7-D, float): ``[dx, dy, dz, rx, ry, rz, gripper]``
  * dx, dy, dz: translation of the end-effector (TCP) in metres, in the robot base frame.
  * rx, ry, rz: rotation vector (axis * angle, radians) in the base frame, applied on the left:
    ``R_target = Exp([rx, ry, rz]) @ R_current``.
  * gripper: 0.0 = fully open, 1.0 = fully closed (commands in between are a width fraction).
"""
from __future__ import annotations

import numpy as np

ACTION_SPACE_EE_DELTA = "ee_delta_xyz_rotvec_gripper"
ACTION_SPACE_JOINT_POSITION = "joint_position"
EE_DELTA_DIM = 7
GRIPPER_OPEN = 0.0
GRIPPER_CLOSED = 1.0


def _skew(w: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


def rotvec_to_matrix(rv: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vector (3,) -> 3x3 rotation matrix."""
    rv = np.asarray(rv, dtype=np.float64)
    th = float(np.linalg.norm(rv))
    if th < 1e-12:
        return np.eye(3) + _skew(rv)
    k = _skew(rv / th)
    return np.eye(3) + np.sin(th) * k + (1.0 - np.cos(th)) * (k @ k)


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> rotation vector (3,), angle in [0, pi]."""
    R = np.asarray(R, dtype=np.float64)
    c = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    th = float(np.arccos(c))
    if th < 1e-9:
        return np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / 2.0
    if np.pi - th < 1e-6:  # near pi: axis from the symmetric part
        M = (R + np.eye(3)) / 2.0
        i = int(np.argmax(np.diag(M)))
        axis = M[:, i] / np.sqrt(max(M[i, i], 1e-12))
        return axis / np.linalg.norm(axis) * th
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2.0 * np.sin(th))
    return w * th


def normalize_rotvec(rv: np.ndarray) -> np.ndarray:
    """The same rotation as ``rv`` with its angle in [0, pi]: a rotation vector of magnitude 2*pi - 0.05 is a
    0.05 rad turn the other way, and every clipping or rate limit must see it as that (not as a 6.2 rad turn)."""
    rv = np.asarray(rv, dtype=np.float64).reshape(3)
    th = float(np.linalg.norm(rv))
    if th <= np.pi:
        return rv.copy()
    wrapped = (th + np.pi) % (2.0 * np.pi) - np.pi          # in [-pi, pi)
    return rv / th * wrapped


def clip_ee_delta(action: np.ndarray, max_pos: float, max_rot: float) -> np.ndarray:
    """One ee_delta row as a Cartesian controller executes it: rotation vector normalized (:func:`normalize_rotvec`),
    then translation and rotation magnitudes clipped to ``max_pos`` [m] / ``max_rot`` [rad] (direction kept), the
    gripper clipped to [0, 1]. The sim's controller and the safety filter's model of it both call this."""
    a = np.asarray(action, dtype=np.float64).reshape(-1).copy()
    if a.shape != (EE_DELTA_DIM,):
        raise ValueError(f"ee_delta action must have shape ({EE_DELTA_DIM},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("ee_delta action contains NaN or inf")
    a[3:6] = normalize_rotvec(a[3:6])
    n = np.linalg.norm(a[:3])
    if n > max_pos:
        a[:3] *= max_pos / n
    n = np.linalg.norm(a[3:6])
    if n > max_rot:
        a[3:6] *= max_rot / n
    a[6] = float(np.clip(a[6], GRIPPER_OPEN, GRIPPER_CLOSED))
    return a


def apply_ee_delta(pos: np.ndarray, rot: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Current TCP pose (pos (3,), rot 3x3) + one ee_delta action (7,) -> (target pos, target rot, gripper)."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (EE_DELTA_DIM,):
        raise ValueError(f"ee_delta action must have shape ({EE_DELTA_DIM},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("ee_delta action contains NaN or inf")
    return (np.asarray(pos, dtype=np.float64) + a[:3], rotvec_to_matrix(a[3:6]) @ np.asarray(rot, dtype=np.float64),
            float(np.clip(a[6], GRIPPER_OPEN, GRIPPER_CLOSED)))


def ee_delta_between(pos0: np.ndarray, rot0: np.ndarray, pos1: np.ndarray, rot1: np.ndarray,
                     gripper: float) -> np.ndarray:
    """The ee_delta action that takes pose 0 to pose 1 (the inverse of :func:`apply_ee_delta`)."""
    a = np.zeros(EE_DELTA_DIM)
    a[:3] = np.asarray(pos1, dtype=np.float64) - np.asarray(pos0, dtype=np.float64)
    a[3:6] = matrix_to_rotvec(np.asarray(rot1, dtype=np.float64) @ np.asarray(rot0, dtype=np.float64).T)
    a[6] = gripper
    return a


def integrate_chunk(pos: np.ndarray, rot: np.ndarray, actions: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Roll a chunk (H, 7) of ee_delta actions forward from a pose: (H, 3) positions, (H, 3, 3) rotations, (H,) gripper."""
    acts = np.asarray(actions, dtype=np.float64)
    if acts.ndim != 2 or acts.shape[1] != EE_DELTA_DIM:
        raise ValueError(f"chunk must have shape (H, {EE_DELTA_DIM}), got {acts.shape}")
    P, R, G = [], [], []
    p, r = np.asarray(pos, dtype=np.float64), np.asarray(rot, dtype=np.float64)
    for a in acts:
        p, r, g = apply_ee_delta(p, r, a)
        P.append(p), R.append(r), G.append(g)
    return np.array(P), np.array(R), np.array(G)
