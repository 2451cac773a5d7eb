"""The safety filter's logic: check a *whole* action chunk before any of it executes.

Pipeline of :meth:`SafetyChecker.check_chunk` (every step of the chunk is checked, then the chunk is
executed in full, time-scaled, or not at all):

1. input sanity: the robot state (7 finite joints), the chunk's shape, NaN/inf, ``dt``, action space,
   and its age (``STALE``) -> anything wrong: reject, hold position;
2. ee_delta chunks: TCP targets from :func:`semanticvla_core.actions.integrate_chunk` (the one
   convention) starting at FK(q_current); a TCP target below the table plane + margin -> raised onto
   it when the excess is small (``TABLE_COLLISION``, clipped) or rejected; outside the workspace box ->
   clipped into it when the excess is small (``WORKSPACE``, clipped) or rejected; then damped-least-squares
   IK per step, redundancy pulled toward a rest posture (``IK_FAILED``);
   ``joint_position`` chunks are taken as joint targets directly;
3. joint position limits of the URDF minus a margin (``JOINT_LIMIT``, always reject);
4. collisions of every step: self-collision on the SRDF's pairs, the table plane and configured
   environment boxes (``SELF_COLLISION``, ``TABLE_COLLISION``, ``ENV_COLLISION``, always reject);
   backend-specific (:class:`BuiltinSafetyChecker`: Pinocchio + coal on the Panda URDF;
   ``moveit_backend.MoveItSafetyChecker``: the MoveIt planning scene);
5. joint velocity / acceleration / jerk against Franka's limits (finite differences at the chunk's
   ``dt``): an excess is fixed by slowing the chunk down uniformly (time scaling keeps the checked
   path, so the collision checks stay valid) up to ``max_time_scale``; beyond that, reject.

A rejected chunk yields a *hold* result: one trajectory point at ``q_current`` (the arm stops
where it is), plus every reason with the index of the first offending step.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Sequence

import numpy as np

from ..actions import ACTION_SPACE_EE_DELTA, ACTION_SPACE_JOINT_POSITION, EE_DELTA_DIM, GRIPPER_CLOSED, GRIPPER_OPEN
from ..interfaces import ActionChunkData
from .kinematics import PANDA_ARM_JOINTS, IKConfig, PandaKinematics

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- results
class ViolationKind(str, Enum):
    """Why a chunk was clipped or rejected (the value is what goes into logs and diagnostics)."""

    JOINT_LIMIT = "JOINT_LIMIT"
    VELOCITY_LIMIT = "VELOCITY_LIMIT"
    ACCEL_LIMIT = "ACCEL_LIMIT"
    JERK_LIMIT = "JERK_LIMIT"
    WORKSPACE = "WORKSPACE"
    TABLE_COLLISION = "TABLE_COLLISION"
    SELF_COLLISION = "SELF_COLLISION"
    ENV_COLLISION = "ENV_COLLISION"
    NAN = "NAN"
    WRONG_SHAPE = "WRONG_SHAPE"
    BAD_TIMING = "BAD_TIMING"                  # dt not a positive finite number
    UNSUPPORTED_ACTION_SPACE = "UNSUPPORTED_ACTION_SPACE"
    IK_FAILED = "IK_FAILED"
    STALE = "STALE"


@dataclass(frozen=True)
class Violation:
    kind: ViolationKind
    message: str
    step: int | None = None        # index of the first offending chunk row (None: the chunk as a whole)
    rejecting: bool = True         # False: the problem was fixed (clipped / time-scaled) and the chunk runs

    def __str__(self) -> str:
        where = "" if self.step is None else f" (step {self.step})"
        return f"{self.kind.value}{where}: {self.message}"


class SafetyStatus(str, Enum):
    OK = "ok"              # executed as commanded
    CLIPPED = "clipped"    # executed after clipping / time scaling (reasons say what changed)
    REJECTED = "rejected"  # not executed: hold position


@dataclass
class SafetyResult:
    """Outcome of a check: what to send to the joint trajectory controller and the gripper, and why.

    ``positions``/``velocities``/``times_from_start``/``gripper`` are the trajectory to publish
    (``trajectory_msgs/JointTrajectory`` points, ``time_from_start`` relative to the time of the check).
    For a rejected chunk they are the hold trajectory: one point at ``q_current``.
    """

    status: SafetyStatus
    reasons: list[Violation]
    positions: np.ndarray                    # (M, 7) joint positions
    velocities: np.ndarray                   # (M, 7) rad/s
    times_from_start: np.ndarray             # (M,) seconds
    gripper: np.ndarray                      # (M,) gripper command in [0, 1] (0 open, 1 closed)
    joint_names: list[str] = field(default_factory=lambda: list(PANDA_ARM_JOINTS))
    first_bad_step: int | None = None
    time_scale: float = 1.0                  # >1: the chunk was slowed down by this factor
    checked_positions: np.ndarray | None = None   # (H, 7) IK solution that was checked (also when rejected)
    tcp_targets: np.ndarray | None = None         # (H, 3) TCP targets (after workspace clipping)
    backend: str = ""

    @property
    def ok(self) -> bool:
        """True when the trajectory executes the chunk (OK or CLIPPED)."""
        return self.status is not SafetyStatus.REJECTED

    @property
    def is_hold(self) -> bool:
        return self.status is SafetyStatus.REJECTED

    @property
    def kinds(self) -> list[ViolationKind]:
        return [v.kind for v in self.reasons]

    @property
    def rejecting_kinds(self) -> list[ViolationKind]:
        return [v.kind for v in self.reasons if v.rejecting]

    def summary(self) -> str:
        if not self.reasons:
            return f"{self.status.value}"
        return f"{self.status.value}: " + "; ".join(str(r) for r in self.reasons)


# ---------------------------------------------------------------------------------------------- config
@dataclass
class EnvBox:
    """An obstacle box in the base frame: centre (m), full size (m), orientation roll/pitch/yaw (rad)."""

    name: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def from_dict(cls, d: dict) -> "EnvBox":
        try:
            box = cls(str(d["name"]), tuple(float(x) for x in d["center"]), tuple(float(x) for x in d["size"]),
                      tuple(float(x) for x in d.get("rpy", (0.0, 0.0, 0.0))))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"env box {d!r}: needs name, center [x,y,z], size [sx,sy,sz], optional rpy ({e})") from e
        if len(box.center) != 3 or len(box.size) != 3 or len(box.rpy) != 3 or min(box.size) <= 0:
            raise ValueError(f"env box {box.name!r}: center/size/rpy need 3 values and sizes must be positive")
        return box


@dataclass
class SafetyConfig:
    """Policy of the safety filter. Defaults suit the Panda mounted at the origin of a table top (z = 0)."""

    # --- freshness / input
    max_chunk_age_s: float = 0.5          # a chunk whose row 0 is older than this (vs. the check time) is STALE
    max_future_s: float = 0.2             # ... and one stamped further than this in the future too (clock skew)
    require_stamp: bool = True            # stamp_ns == 0 counts as STALE when a check time is given
    max_horizon: int = 256                # longer chunks are WRONG_SHAPE
    # --- joint limits (always reject)
    joint_limit_margin_rad: float = 0.01  # keep this far inside the URDF limits
    # --- dynamics: fraction of Franka's limits allowed, and what to do about an excess
    velocity_fraction: float = 1.0
    accel_fraction: float = 1.0
    jerk_fraction: float = 1.0
    check_jerk: bool = True               # at 20 Hz finite differences the jerk limit rarely binds
    dynamics_policy: str = "time_scale"   # "time_scale": slow the chunk down uniformly | "reject"
    max_time_scale: float = 2.0           # need to slow down more than this -> reject
    # --- workspace box for the TCP (base frame, metres)
    workspace_min: tuple[float, float, float] = (0.10, -0.60, 0.0)
    workspace_max: tuple[float, float, float] = (0.85, 0.60, 0.90)
    workspace_policy: str = "clip"        # "clip": project targets into the box | "reject"
    workspace_clip_max_m: float = 0.05    # targets further outside than this are rejected even with "clip"
    # --- table plane and environment (always reject)
    table_z: float = 0.0                  # table top plane z (robot base on the table at the origin)
    tcp_table_margin_m: float = 0.01      # TCP targets must stay this far above the table (fingertips reach ~1 cm below the TCP)
    table_policy: str = "clip"            # ee_delta targets below table + margin: "clip": raised onto it | "reject"
    table_clip_max_m: float = 0.02        # targets further below than this are rejected even with "clip"
    link_table_margin_m: float = 0.0      # robot links (except the fixed base link0) must stay above table_z + this
    table_half_extent_m: float = 2.0      # the table collision box spans +-this in x and y around the base
    env_boxes: list[EnvBox] = field(default_factory=list)
    check_self_collision: bool = True     # SRDF-filtered link pairs
    collision_substeps: int = 0           # extra joint-interpolated states checked inside each step (0: waypoints only)
    # --- IK and output
    ik: IKConfig = field(default_factory=IKConfig)
    hold_time_s: float = 0.1              # time_from_start of the single hold point

    def __post_init__(self):
        self.env_boxes = [b if isinstance(b, EnvBox) else EnvBox.from_dict(b) for b in self.env_boxes]
        if self.dynamics_policy not in ("time_scale", "reject"):
            raise ValueError(f"dynamics_policy: 'time_scale' or 'reject', got {self.dynamics_policy!r}")
        if self.workspace_policy not in ("clip", "reject"):
            raise ValueError(f"workspace_policy: 'clip' or 'reject', got {self.workspace_policy!r}")
        if self.table_policy not in ("clip", "reject"):
            raise ValueError(f"table_policy: 'clip' or 'reject', got {self.table_policy!r}")
        if np.any(np.asarray(self.workspace_min) >= np.asarray(self.workspace_max)):
            raise ValueError(f"workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max}")
        if self.max_time_scale < 1.0:
            raise ValueError("max_time_scale must be >= 1")


# ---------------------------------------------------------------------------------------------- checker
def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


class SafetyChecker(abc.ABC):
    """Whole-chunk checker. Subclasses provide the collision check of joint configurations."""

    backend_name = "base"

    def __init__(self, config: SafetyConfig | None = None, kinematics: PandaKinematics | None = None):
        self.config = config or SafetyConfig()
        self.kin = kinematics or PandaKinematics()
        self.fallback_reason: str = ""   # set by make_checker when another backend was asked for

    # ------------------------------------------------------------------ backend hook
    @abc.abstractmethod
    def collisions(self, q: np.ndarray, gripper: np.ndarray) -> list[Violation]:
        """Collision violations of configurations q (H, 7) with gripper commands (H,): one per kind, first step."""

    # ------------------------------------------------------------------ public API
    def hold(self, q_current: np.ndarray | None, gripper_current: float = GRIPPER_OPEN,
             reasons: Sequence[Violation] = (), **extra) -> SafetyResult:
        """Hold position: one point at ``q_current`` (empty when q_current itself is unusable)."""
        q = None if q_current is None else np.asarray(q_current, dtype=np.float64).reshape(-1)
        g = float(gripper_current) if np.isfinite(gripper_current) else GRIPPER_OPEN
        if q is None or q.shape != (7,) or not np.all(np.isfinite(q)):
            P, V, T, G = np.zeros((0, 7)), np.zeros((0, 7)), np.zeros(0), np.zeros(0)
        else:
            P, V, T, G = q[None].copy(), np.zeros((1, 7)), np.array([self.config.hold_time_s]), np.array([g])
        reasons = list(reasons)
        steps = [r.step for r in reasons if r.rejecting and r.step is not None]
        return SafetyResult(SafetyStatus.REJECTED, reasons, P, V, T, G, first_bad_step=min(steps) if steps else None,
                            backend=self.backend_name, **extra)

    def check_state(self, q: np.ndarray, gripper: float = GRIPPER_OPEN) -> list[Violation]:
        """Joint-limit and collision violations of one configuration (e.g. the current state)."""
        q = np.asarray(q, dtype=np.float64).reshape(1, 7)
        out = self._joint_limits(q)
        out += self.collisions(q, np.array([gripper], dtype=np.float64))
        return out

    def check_chunk(self, chunk: ActionChunkData, q_current: np.ndarray, gripper_current: float,
                    now_ns: int | None = None, dq_current: np.ndarray | None = None) -> SafetyResult:
        """Check every step of ``chunk`` from the robot state; never raises on bad input (-> hold with a reason).

        now_ns: time of the check (the node's clock); enables the STALE check. The returned trajectory's
          ``times_from_start`` are relative to this time (q_current is the state now).
        dq_current: current joint velocities (7,), optional; when given, the acceleration of the
          first step is checked against it, otherwise only accelerations inside the chunk are.
        """
        cfg = self.config
        # ---- robot state
        q_cur = np.asarray(q_current, dtype=np.float64).reshape(-1) if q_current is not None else np.zeros(0)
        if q_cur.shape != (7,):
            return self.hold(None, gripper_current, [Violation(ViolationKind.WRONG_SHAPE,
                                                               f"q_current: expected 7 joint positions, got shape {q_cur.shape}")])
        if not np.all(np.isfinite(q_cur)):
            return self.hold(None, gripper_current, [Violation(ViolationKind.NAN, "q_current contains NaN or inf")])
        try:
            g_cur = float(gripper_current)
        except (TypeError, ValueError):
            g_cur = float("nan")
        if not np.isfinite(g_cur):
            return self.hold(q_cur, GRIPPER_OPEN, [Violation(ViolationKind.NAN, f"gripper_current is not finite: {gripper_current!r}")])
        dq = None
        if dq_current is not None:
            dq = np.asarray(dq_current, dtype=np.float64).reshape(-1)
            if dq.shape != (7,) or not np.all(np.isfinite(dq)):
                dq = None   # unusable velocity: fall back to checking accelerations inside the chunk only

        # ---- chunk sanity
        bad = self._check_input(chunk, now_ns)
        if bad:
            return self.hold(q_cur, g_cur, bad)
        actions = np.asarray(chunk.actions, dtype=np.float64)
        dt = float(chunk.dt)
        H = actions.shape[0]
        reasons: list[Violation] = []

        # ---- targets and IK
        if chunk.action_space == ACTION_SPACE_EE_DELTA:
            P, R, G = self.kin.chunk_targets(q_cur, actions)
            P, tb = self._table_tcp(P, clip=True)
            reasons += tb
            P, ws = self._workspace(P)
            reasons += ws
            ik = self.kin.ik_targets(q_cur, P, R, G, cfg.ik)
            Q = ik.q
            s = _first(~ik.success)
            if s is not None:
                reasons.append(Violation(ViolationKind.IK_FAILED,
                                         f"no joint solution within {cfg.ik.fail_pos_m * 1000:.1f} mm / {cfg.ik.fail_rot_rad:.3f} rad "
                                         f"(residual {ik.pos_err[s] * 1000:.1f} mm, {ik.rot_err[s]:.3f} rad)", s))
        else:  # joint_position: rows are absolute joint targets, an optional 8th column the gripper
            Q = actions[:, :7].copy()
            G = np.clip(actions[:, 7], GRIPPER_OPEN, GRIPPER_CLOSED) if actions.shape[1] == 8 else np.full(H, g_cur)
            P = np.array([self.kin.fk(q)[0] for q in Q])
            reasons += self._table_tcp(P, clip=False)[1]
            lo, hi = np.asarray(cfg.workspace_min), np.asarray(cfg.workspace_max)
            s = _first(np.any((P < lo) | (P > hi), axis=1))
            if s is not None:
                reasons.append(Violation(ViolationKind.WORKSPACE, f"TCP {np.round(P[s], 3).tolist()} outside the workspace box "
                                                                  "(joint targets cannot be clipped)", s))

        # ---- limits and collisions
        reasons += self._joint_limits(Q)
        reasons += self._collisions_along(q_cur, g_cur, Q, G)
        scale, dyn = self._dynamics(q_cur, Q, dt, dq)
        reasons += dyn

        rejecting = [r for r in reasons if r.rejecting]
        if rejecting:
            return self.hold(q_cur, g_cur, reasons, time_scale=scale, checked_positions=Q, tcp_targets=P)
        T = (np.arange(1, H + 1)) * dt * scale
        V = self._waypoint_velocities(q_cur, Q, dt * scale)
        steps = [r.step for r in reasons if r.step is not None]
        return SafetyResult(SafetyStatus.CLIPPED if reasons else SafetyStatus.OK, reasons, Q.copy(), V, T, G.copy(),
                            first_bad_step=min(steps) if steps else None, time_scale=scale, checked_positions=Q,
                            tcp_targets=P, backend=self.backend_name)

    # ------------------------------------------------------------------ pieces
    def _check_input(self, chunk, now_ns: int | None) -> list[Violation]:
        cfg = self.config
        if not isinstance(chunk, ActionChunkData):
            return [Violation(ViolationKind.WRONG_SHAPE, f"expected ActionChunkData, got {type(chunk).__name__}")]
        try:
            a = np.asarray(chunk.actions, dtype=np.float64)
        except (TypeError, ValueError) as e:
            return [Violation(ViolationKind.WRONG_SHAPE, f"actions are not a numeric array: {e}")]
        if a.ndim != 2 or a.shape[0] == 0:
            return [Violation(ViolationKind.WRONG_SHAPE, f"actions: expected a non-empty (H, D) array, got shape {a.shape}")]
        if a.shape[0] > cfg.max_horizon:
            return [Violation(ViolationKind.WRONG_SHAPE, f"actions: horizon {a.shape[0]} exceeds max_horizon {cfg.max_horizon}")]
        if chunk.action_space == ACTION_SPACE_EE_DELTA:
            if a.shape[1] != EE_DELTA_DIM:
                return [Violation(ViolationKind.WRONG_SHAPE, f"actions: ee_delta chunks need {EE_DELTA_DIM} columns, got {a.shape[1]}")]
        elif chunk.action_space == ACTION_SPACE_JOINT_POSITION:
            if a.shape[1] not in (7, 8):
                return [Violation(ViolationKind.WRONG_SHAPE, f"actions: joint_position chunks need 7 or 8 columns, got {a.shape[1]}")]
            if chunk.joint_names and list(chunk.joint_names)[:7] != list(PANDA_ARM_JOINTS):
                return [Violation(ViolationKind.WRONG_SHAPE, f"joint_names {list(chunk.joint_names)} do not start with {list(PANDA_ARM_JOINTS)}")]
        else:
            return [Violation(ViolationKind.UNSUPPORTED_ACTION_SPACE, f"action_space {chunk.action_space!r} is not "
                                                                      f"{ACTION_SPACE_EE_DELTA!r} or {ACTION_SPACE_JOINT_POSITION!r}")]
        finite = np.all(np.isfinite(a), axis=1)
        if not finite.all():
            s = _first(~finite)
            return [Violation(ViolationKind.NAN, f"actions contain NaN or inf (row {s})", s)]
        try:
            dt = float(chunk.dt)
        except (TypeError, ValueError):
            dt = float("nan")
        if not (np.isfinite(dt) and dt > 0):
            return [Violation(ViolationKind.BAD_TIMING, f"dt must be a positive finite number of seconds, got {chunk.dt!r}")]
        if now_ns is not None:
            stamp = int(chunk.stamp_ns)
            if stamp == 0 and cfg.require_stamp:
                return [Violation(ViolationKind.STALE, "chunk has no stamp (stamp_ns == 0)")]
            if stamp != 0:
                age = (int(now_ns) - stamp) * 1e-9
                if age > cfg.max_chunk_age_s:
                    return [Violation(ViolationKind.STALE, f"chunk is {age:.3f} s old (max {cfg.max_chunk_age_s} s)")]
                if -age > cfg.max_future_s:
                    return [Violation(ViolationKind.STALE, f"chunk is stamped {-age:.3f} s in the future (max {cfg.max_future_s} s)")]
        return []

    def _collisions_along(self, q_cur: np.ndarray, g_cur: float, Q: np.ndarray, G: np.ndarray) -> list[Violation]:
        """Collisions at the waypoints and, with ``collision_substeps`` > 0, at joint-space interpolations
        inside each step (step i = the motion from waypoint i-1, or q_current, to waypoint i)."""
        n = max(int(self.config.collision_substeps), 0)
        if n == 0:
            return self.collisions(Q, G)
        prev_q = np.vstack([q_cur[None], Q[:-1]])
        prev_g = np.concatenate([[g_cur], G[:-1]])
        fr = np.arange(1, n + 2) / (n + 1)                    # (n + 1) states per step, the last = the waypoint
        dense_q = (prev_q[:, None] + fr[None, :, None] * (Q - prev_q)[:, None]).reshape(-1, 7)
        dense_g = (prev_g[:, None] + fr[None, :] * (G - prev_g)[:, None]).reshape(-1)
        out = []
        for v in self.collisions(dense_q, dense_g):
            step = None if v.step is None else v.step // (n + 1)
            out.append(Violation(v.kind, v.message, step, v.rejecting))
        return out

    def _table_tcp(self, P: np.ndarray, clip: bool) -> tuple[np.ndarray, list[Violation]]:
        """TCP targets below the table plane + margin: raised onto it when ``clip`` and table_policy allow and
        the excess is at most table_clip_max_m (a clipped, non-rejecting reason), otherwise a rejecting one."""
        cfg = self.config
        lim = cfg.table_z + cfg.tcp_table_margin_m
        s = _first(P[:, 2] < lim)
        if s is None:
            return P, []
        worst = float(lim - P[:, 2].min())
        if clip and cfg.table_policy == "clip" and worst <= cfg.table_clip_max_m:
            P = P.copy()
            P[:, 2] = np.maximum(P[:, 2], lim)
            return P, [Violation(ViolationKind.TABLE_COLLISION, f"TCP targets raised onto the table plane + margin "
                                                                f"({lim:.4f} m) by up to {worst * 1000:.1f} mm", s, rejecting=False)]
        return P, [Violation(ViolationKind.TABLE_COLLISION, f"TCP target z = {P[s, 2]:.4f} m is below the table plane + margin "
                                                            f"({lim:.4f} m)", s)]

    def _workspace(self, P: np.ndarray) -> tuple[np.ndarray, list[Violation]]:
        cfg = self.config
        lo, hi = np.asarray(cfg.workspace_min, dtype=np.float64), np.asarray(cfg.workspace_max, dtype=np.float64)
        Pc = np.clip(P, lo, hi)
        dist = np.linalg.norm(P - Pc, axis=1)
        s = _first(dist > 0)
        if s is None:
            return P, []
        worst = int(np.argmax(dist))
        if cfg.workspace_policy == "clip" and dist[worst] <= cfg.workspace_clip_max_m:
            return Pc, [Violation(ViolationKind.WORKSPACE, f"TCP targets clipped into the workspace box by up to "
                                                           f"{dist[worst] * 1000:.1f} mm", s, rejecting=False)]
        return P, [Violation(ViolationKind.WORKSPACE, f"TCP target {np.round(P[worst], 3).tolist()} is {dist[worst] * 1000:.1f} mm "
                                                      f"outside the workspace box {lo.tolist()}..{hi.tolist()}", s)]

    def _joint_limits(self, Q: np.ndarray) -> list[Violation]:
        m = self.config.joint_limit_margin_rad
        inside = self.kin.within_limits(Q, m)
        s = _first(~np.all(inside, axis=1))
        if s is None:
            return []
        j = int(np.flatnonzero(~inside[s])[0])
        return [Violation(ViolationKind.JOINT_LIMIT, f"{PANDA_ARM_JOINTS[j]} = {Q[s, j]:.4f} rad outside "
                                                     f"[{self.kin.lower[j] + m:.4f}, {self.kin.upper[j] - m:.4f}]", s)]

    def _dynamics(self, q_cur: np.ndarray, Q: np.ndarray, dt: float, dq_cur: np.ndarray | None
                  ) -> tuple[float, list[Violation]]:
        """Velocity/acceleration/jerk check; returns (time scale, violations)."""
        cfg = self.config
        vmax = self.kin.velocity_limits * cfg.velocity_fraction
        amax = self.kin.accel_limits * cfg.accel_fraction
        jmax = self.kin.jerk_limits * cfg.jerk_fraction
        qs = np.vstack([q_cur[None], Q])

        def derivs(step: float):
            v = np.diff(qs, axis=0) / step                          # (H, 7): segment velocities
            vf = v if dq_cur is None else np.vstack([dq_cur[None], v])
            a = np.diff(vf, axis=0) / step                          # accelerations between segments
            j = np.diff(a, axis=0) / step
            return v, a, j

        def ratios(step: float):
            v, a, j = derivs(step)
            rv = np.abs(v) / vmax
            ra = np.abs(a) / amax if a.size else np.zeros((0, 7))
            rj = (np.abs(j) / jmax if j.size else np.zeros((0, 7))) if cfg.check_jerk else np.zeros((0, 7))
            return rv, ra, rj

        def need(step: float) -> float:
            rv, ra, rj = ratios(step)
            return max(1.0, float(rv.max(initial=0.0)), float(np.sqrt(ra.max(initial=0.0))), float(np.cbrt(rj.max(initial=0.0))))

        rv, ra, rj = ratios(dt)
        off = dq_cur is not None   # acceleration row k involves segment k (first row: q_current -> Q[0])
        found = []
        for kind, r, shift, unit, lim_name in ((ViolationKind.VELOCITY_LIMIT, rv, 0, "rad/s", "velocity"),
                                               (ViolationKind.ACCEL_LIMIT, ra, 0 if off else 1, "rad/s^2", "acceleration"),
                                               (ViolationKind.JERK_LIMIT, rj, 0 if off else 2, "rad/s^3", "jerk")):
            bad_rows = np.any(r > 1.0, axis=1) if r.size else np.zeros(0, dtype=bool)
            s = _first(bad_rows)
            if s is not None:
                j = int(np.argmax(r[s]))
                found.append((kind, s + shift, f"{PANDA_ARM_JOINTS[j]} {lim_name} at {r[s, j]:.2f}x the limit "
                                                f"(max over chunk {r.max():.2f}x)"))
        if not found:
            return 1.0, []
        scale = 1.0
        for _ in range(30):   # uniform slow-down until every limit holds (accounts for a fixed dq_current)
            n = need(dt * scale)
            if n <= 1.0 + 1e-9:
                break
            scale *= n * (1.0 + 1e-6)
        fixable = cfg.dynamics_policy == "time_scale" and scale <= cfg.max_time_scale and need(dt * scale) <= 1.0 + 1e-9
        if fixable:
            return scale, [Violation(k, f"{msg}; chunk slowed down {scale:.2f}x", s, rejecting=False) for k, s, msg in found]
        why = (f"needs {scale:.2f}x slow-down (max {cfg.max_time_scale}x)" if cfg.dynamics_policy == "time_scale"
               else "dynamics_policy is 'reject'")
        return scale, [Violation(k, f"{msg}; {why}", s) for k, s, msg in found]

    @staticmethod
    def _waypoint_velocities(q_cur: np.ndarray, Q: np.ndarray, step: float) -> np.ndarray:
        """Velocity at each waypoint: mean of the adjacent segment velocities; zero at the last point."""
        seg = np.diff(np.vstack([q_cur[None], Q]), axis=0) / step      # seg[i]: into waypoint i
        V = np.zeros_like(Q)
        if len(Q) > 1:
            V[:-1] = 0.5 * (seg[:-1] + seg[1:])
        return V


# ---------------------------------------------------------------------------------------------- builtin backend
class BuiltinSafetyChecker(SafetyChecker):
    """Collision checking with Pinocchio + coal on the Panda URDF: the SRDF's self-collision pairs,
    a table box whose top face is the plane ``table_z + link_table_margin_m``, and ``env_boxes``."""

    backend_name = "builtin"

    def __init__(self, config: SafetyConfig | None = None, kinematics: PandaKinematics | None = None):
        super().__init__(config, kinematics)
        import coal
        import pinocchio as pin

        self._pin = pin
        kin, cfg = self.kin, self.config
        if kin.collision_model is None:
            raise ValueError("BuiltinSafetyChecker needs PandaKinematics(load_geometry=True)")
        gm = kin.collision_model
        # self-collision pairs: all pairs minus the SRDF's disabled ones (as MoveIt's ACM would)
        gm.removeAllCollisionPairs()
        robot_geoms = list(range(gm.ngeoms))
        if cfg.check_self_collision:
            gm.addAllCollisionPairs()
            pin.removeCollisionPairs(kin.model, gm, str(kin.description.srdf))
        self._pair_kind: list[ViolationKind] = [ViolationKind.SELF_COLLISION] * len(gm.collisionPairs)
        base_joint = kin.model.getJointId("panda_joint1")   # geometries of link0 hang on the universe joint (0)
        moving = [i for i in robot_geoms if gm.geometryObjects[i].parentJoint >= base_joint]
        # table: a thick box whose top is the table plane (+ margin)
        th = 0.1
        top = cfg.table_z + cfg.link_table_margin_m
        e = 2 * cfg.table_half_extent_m
        table = pin.GeometryObject("table", 0, 0, pin.SE3(np.eye(3), np.array([0.0, 0.0, top - th / 2])),
                                   coal.Box(e, e, th))
        tid = gm.addGeometryObject(table)
        for i in moving:
            gm.addCollisionPair(pin.CollisionPair(i, tid))
            self._pair_kind.append(ViolationKind.TABLE_COLLISION)
        for box in cfg.env_boxes:
            R = pin.rpy.rpyToMatrix(*box.rpy)
            go = pin.GeometryObject(f"env_{box.name}", 0, 0, pin.SE3(R, np.asarray(box.center, dtype=np.float64)),
                                    coal.Box(*box.size))
            bid = gm.addGeometryObject(go)
            for i in moving:
                gm.addCollisionPair(pin.CollisionPair(i, bid))
                self._pair_kind.append(ViolationKind.ENV_COLLISION)
        self.geom_model = gm
        self.geom_data = pin.GeometryData(gm)
        self.num_self_pairs = self._pair_kind.count(ViolationKind.SELF_COLLISION)

    def colliding_pairs(self, q_arm: np.ndarray, gripper: float = GRIPPER_OPEN) -> list[tuple[ViolationKind, str, str]]:
        """All colliding pairs of one configuration: (kind, geometry name 1, geometry name 2)."""
        pin, gm, gd = self._pin, self.geom_model, self.geom_data
        pin.computeCollisions(self.kin.model, self.kin.data, gm, gd, self.kin.full_q(q_arm, gripper), False)
        out = []
        for k, pair in enumerate(gm.collisionPairs):
            if gd.collisionResults[k].isCollision():
                out.append((self._pair_kind[k], gm.geometryObjects[pair.first].name, gm.geometryObjects[pair.second].name))
        return out

    def collisions(self, q: np.ndarray, gripper: np.ndarray) -> list[Violation]:
        seen: dict[ViolationKind, Violation] = {}
        for i, (qi, gi) in enumerate(zip(q, gripper)):
            if not np.all(np.isfinite(qi)):
                continue
            for kind, a, b in self.colliding_pairs(qi, float(gi)):
                if kind not in seen:
                    seen[kind] = Violation(kind, f"{a} collides with {b}", i)
        return list(seen.values())


# ---------------------------------------------------------------------------------------------- factory
def make_checker(backend: str = "auto", config: SafetyConfig | None = None, logger: logging.Logger | None = None,
                 **moveit_kwargs) -> SafetyChecker:
    """Build the safety checker: ``"builtin"`` (Pinocchio), ``"moveit"`` (moveit_py planning scene) or
    ``"auto"`` (MoveIt when importable). When MoveIt is asked for but cannot be used, the builtin checker
    is returned, the reason logged and kept in ``checker.fallback_reason``."""
    lg = logger or log
    if backend not in ("auto", "builtin", "moveit"):
        raise ValueError(f"backend: 'auto', 'builtin' or 'moveit', got {backend!r}")
    if backend == "builtin":
        return BuiltinSafetyChecker(config)
    from . import moveit_backend

    reason = moveit_backend.moveit_unavailable_reason()
    if reason is None:
        try:
            return moveit_backend.MoveItSafetyChecker(config, **moveit_kwargs)
        except Exception as e:  # noqa: BLE001 - any failure to start MoveIt means: use the builtin checker
            reason = f"MoveIt backend failed to start: {type(e).__name__}: {e}"
    checker = BuiltinSafetyChecker(config)
    checker.fallback_reason = reason
    (lg.warning if backend == "moveit" else lg.info)("safety backend %r -> builtin (Pinocchio): %s", backend, reason)
    return checker


def violations_text(reasons: Iterable[Violation]) -> str:
    """One line for logs / diagnostics."""
    return "; ".join(str(r) for r in reasons) or "ok"


from .watchdog import Watchdog, WatchdogConfig, WatchdogStatus, watchdog_check  # noqa: E402,F401 (re-exported)
