"""Following a joint trajectory the way a joint trajectory controller does (used by the sim node; ROS-free).

A new trajectory replaces the old one from its stamp on; before its first point the target moves linearly
from where the previous target was, after its last point it holds the last point. Invalid trajectories are
refused with a ValueError (the previous one keeps running, which ends in a hold).
"""
from __future__ import annotations

import numpy as np


class TrajectoryFollower:
    def __init__(self, dof: int = 7):
        self.dof = dof
        self._start_q: np.ndarray | None = None
        self._Q: np.ndarray | None = None       # (M, dof)
        self._T: np.ndarray | None = None       # (M,) seconds from stamp
        self._stamp_ns = 0

    def hold(self, q: np.ndarray) -> None:
        q = np.asarray(q, dtype=np.float64).reshape(self.dof)
        self._start_q, self._Q, self._T, self._stamp_ns = q.copy(), q[None].copy(), np.zeros(1), 0

    def set_trajectory(self, joint_names: list[str], positions: list[list[float]], times_from_start: list[float],
                       stamp_ns: int, expected_names: list[str]) -> None:
        if list(joint_names) != list(expected_names):
            if sorted(joint_names) != sorted(expected_names):
                raise ValueError(f"trajectory joints {list(joint_names)} do not match {list(expected_names)}")
            perm = [list(joint_names).index(n) for n in expected_names]
        else:
            perm = list(range(self.dof))
        if not positions:
            raise ValueError("trajectory has no points")
        try:
            Q = np.asarray(positions, dtype=np.float64)
        except ValueError as e:
            raise ValueError(f"trajectory points have different lengths: {e}") from e
        if Q.ndim != 2 or Q.shape[1] != self.dof:
            raise ValueError(f"trajectory points must have {self.dof} positions each, got shape {Q.shape}")
        T = np.asarray(times_from_start, dtype=np.float64)
        if T.shape != (Q.shape[0],):
            raise ValueError(f"{len(T)} times for {Q.shape[0]} points")
        if not (np.all(np.isfinite(Q)) and np.all(np.isfinite(T))):
            raise ValueError("trajectory contains NaN or inf")
        if np.any(T < 0) or np.any(np.diff(T) <= 0):
            raise ValueError(f"time_from_start must be non-negative and increasing, got {T.tolist()}")
        self._start_q = self.target(int(stamp_ns))
        self._Q, self._T, self._stamp_ns = Q[:, perm], T, int(stamp_ns)

    def target(self, t_ns: int) -> np.ndarray:
        if self._Q is None:
            raise ValueError("no target yet: call hold(q) first")
        s = (int(t_ns) - self._stamp_ns) * 1e-9
        T, Q = self._T, self._Q
        if s >= T[-1]:
            return Q[-1].copy()
        if s <= T[0]:
            if T[0] <= 0:
                return Q[0].copy()
            a = max(s, 0.0) / T[0]
            return (1 - a) * self._start_q + a * Q[0]
        i = int(np.searchsorted(T, s, side="right"))
        a = (s - T[i - 1]) / (T[i] - T[i - 1])
        return (1 - a) * Q[i - 1] + a * Q[i]
