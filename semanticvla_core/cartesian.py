"""The Cartesian (ee_delta) controller, in one place: the sim's ``env.step`` runs it on MuJoCo's kinematics and the
safety filter runs the very same functions on its Pinocchio model of the same arm, so the joint setpoint the filter
checks is the one the controller commands.

One control period: ``clip_ee_delta`` (rotation vector normalized, then the per-period clipping) -> the target pose
from the *measured* TCP (:func:`~semanticvla_core.actions.apply_ee_delta`) -> :func:`cartesian_ik` (damped least
squares from the measured joints, a null-space pull toward the rest posture, joint range clipping: the IK that
recorded the demonstrations) -> :func:`limit_joint_step` (the new setpoint moves at most at Franka's joint velocity
limits and changes its velocity at most at the acceleration limits, per joint; limits from
``semanticvla_core.safety.limits``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .actions import matrix_to_rotvec
from .safety.limits import (EE_DELTA_MAX_POS_M, EE_DELTA_MAX_ROT_RAD, PANDA_ACCEL_LIMITS, PANDA_POSITION_LOWER,
                            PANDA_POSITION_UPPER, PANDA_VELOCITY_LIMITS)

# fk_jac(q (7,)) -> (TCP position (3,), TCP rotation (3, 3), Jacobian (6, 7) [linear; angular] in world axes at the TCP)
FkJac = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class CartesianControllerConfig:
    """The controller's settings (defaults: the ones that recorded the demonstrations)."""

    max_delta_pos: float = EE_DELTA_MAX_POS_M    # one row moves the TCP target at most this far (m) ...
    max_delta_rot: float = EE_DELTA_MAX_ROT_RAD  # ... and turns it at most this much (rad)
    ik_damping: float = 0.05                     # DLS damping lambda
    ik_iters: int = 8                            # IK iterations per control period
    ik_max_step: float = 0.5                     # largest joint change of one iteration (rad)
    nullspace_gain: float = 0.05                 # pull toward the rest posture in the Jacobian null space
    limit_rate: bool = True                      # setpoints within Franka's joint velocity / acceleration limits


def cartesian_ik(fk_jac: FkJac, q0: np.ndarray, pos: np.ndarray, rot: np.ndarray, rest: np.ndarray,
                 lower: np.ndarray = PANDA_POSITION_LOWER, upper: np.ndarray = PANDA_POSITION_UPPER,
                 cfg: CartesianControllerConfig | None = None, iters: int | None = None) -> np.ndarray:
    """Joint setpoint (7,) putting the TCP at (pos, rot), from joints ``q0`` (Franka/URDF convention)."""
    cfg = cfg or CartesianControllerConfig()
    q = np.asarray(q0, dtype=np.float64).copy()
    rest = np.asarray(rest, dtype=np.float64)
    lam2 = cfg.ik_damping ** 2
    for _ in range(iters or cfg.ik_iters):
        p, R, J = fk_jac(q)
        err = np.concatenate([pos - p, matrix_to_rotvec(rot @ R.T)])
        if np.linalg.norm(err[:3]) < 1e-5 and np.linalg.norm(err[3:]) < 1e-4:
            break
        JJt = J @ J.T + lam2 * np.eye(6)
        dq = J.T @ np.linalg.solve(JJt, err)
        Jpinv = J.T @ np.linalg.inv(JJt)
        dq += (np.eye(7) - Jpinv @ J) @ (cfg.nullspace_gain * (rest - q))
        dq = np.clip(dq, -cfg.ik_max_step, cfg.ik_max_step)
        q = np.clip(q + dq, lower, upper)
    return q


def limit_joint_step(q_prev: np.ndarray, v_prev: np.ndarray, q_target: np.ndarray, period: float,
                     vmax: np.ndarray = PANDA_VELOCITY_LIMITS, amax: np.ndarray = PANDA_ACCEL_LIMITS
                     ) -> np.ndarray:
    """The next setpoint toward ``q_target`` from setpoint ``q_prev`` moving at ``v_prev`` (rad/s): the desired
    velocity is first scaled down uniformly to the velocity limits (direction kept), then each joint's velocity
    change is clipped to ``amax * period`` (a setpoint that was moving brakes over several periods)."""
    q_prev, v_prev = np.asarray(q_prev, dtype=np.float64), np.asarray(v_prev, dtype=np.float64)
    v_des = (np.asarray(q_target, dtype=np.float64) - q_prev) / period
    over = float(np.max(np.abs(v_des) / vmax))
    if over > 1.0:
        v_des = v_des / over
    v_new = v_prev + np.clip(v_des - v_prev, -amax * period, amax * period)
    v_new = np.clip(v_new, -vmax, vmax)
    return q_prev + v_new * period
