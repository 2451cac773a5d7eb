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
3. joint position limits of the URDF minus a margin (``JOINT_LIMIT``): ee_delta targets a little past it are held
   just inside it (``joint_limit_policy`` clip, the TCP falls short), anything else past it is rejected;
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
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Iterable, Sequence

import numpy as np

from ..actions import ACTION_SPACE_EE_DELTA, ACTION_SPACE_JOINT_POSITION, EE_DELTA_DIM, GRIPPER_CLOSED, GRIPPER_OPEN
from ..interfaces import ActionChunkData
from .kinematics import PANDA_ARM_JOINTS, IKConfig, PandaKinematics, gripper_to_width

log = logging.getLogger(__name__)
# Largest clearance inflation a continuous-check piece sends to a mesh query: coal's distance queries with margins of
# tens of centimetres (a whole row's motion) walk most of both BVHs and took up to 33 ms each (one uninterruptible
# call, past the check budget); a bigger piece is halved instead (the result is the same, the pieces smaller).
_MAX_QUERY_INFLATION_M = 0.03
# Share of check_budget_s the checking itself may use: the rest is left for the piece of work running when the
# deadline passes, for the verdict (a hold's brake, the trajectory) and for the OS taking the core away meanwhile, so
# that the whole check ends within the budget (measured: up to 5 ms past it when the checking could use all of it;
# with 85%, 52.0 ms of a 50 ms budget at worst in a 15,000-execution fuzz campaign on 2 busy cores).
_WORK_SHARE = 0.75


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
    TIMEOUT = "TIMEOUT"                        # the check ran past its time budget: rejected
    BAD_INPUT = "BAD_INPUT"                    # an argument of the wrong type or value (robot state, clock, names)


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
    settle_points: int = 0                   # leading points that finish the setpoint's committed path (``settle``)

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

    def rotation(self) -> np.ndarray:
        """3x3 rotation of the box in the base frame: Rz(yaw) Ry(pitch) Rx(roll), as URDF / pinocchio."""
        (cr, sr), (cp, sp), (cy, sy) = ((np.cos(a), np.sin(a)) for a in self.rpy)
        return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                         [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                         [-sp, cp * sr, cp * cr]])

    @classmethod
    def from_matrix(cls, name: str, center, size, R) -> "EnvBox":
        """A box with orientation given as a rotation matrix (the inverse of :meth:`rotation`)."""
        R = np.asarray(R, dtype=np.float64).reshape(3, 3)
        rpy = (float(np.arctan2(R[2, 1], R[2, 2])), float(-np.arcsin(np.clip(R[2, 0], -1.0, 1.0))),
               float(np.arctan2(R[1, 0], R[0, 0])))
        return cls.from_dict({"name": name, "center": list(center), "size": list(size), "rpy": list(rpy)})

    @classmethod
    def from_dict(cls, d: dict) -> "EnvBox":
        try:
            box = cls(str(d["name"]), tuple(float(x) for x in d["center"]), tuple(float(x) for x in d["size"]),
                      tuple(float(x) for x in d.get("rpy", (0.0, 0.0, 0.0))))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"env box {d!r}: needs name, center [x,y,z], size [sx,sy,sz], optional rpy ({e})") from e
        if len(box.center) != 3 or len(box.size) != 3 or len(box.rpy) != 3 or min(box.size) <= 0 or \
                not np.all(np.isfinite(box.center + box.size + box.rpy)):
            raise ValueError(f"env box {box.name!r}: center/size/rpy need 3 finite values and sizes must be positive")
        return box


@dataclass
class SafetyConfig:
    """Policy of the safety filter. Defaults suit the Panda mounted at the origin of a table top (z = 0)."""

    # --- freshness / input
    max_chunk_age_s: float = 0.5          # a chunk whose row 0 is older than this (vs. the check time) is STALE
    max_future_s: float = 0.2             # ... and one stamped further than this in the future too (clock skew)
    require_stamp: bool = True            # stamp_ns == 0 counts as STALE when a check time is given
    max_horizon: int = 256                # longer chunks are WRONG_SHAPE
    # --- joint limits (the margin is never crossed)
    joint_limit_margin_rad: float = 0.01  # keep this far inside the URDF limits
    joint_limit_policy: str = "clip"      # ee_delta targets whose IK takes a joint past the margin: "clip": that joint
                                          # held just inside it (the TCP falls short of the target) | "reject"
    joint_limit_clip_max_rad: float = 0.1  # joints further past the margin than this are rejected even with "clip"
    joint_limit_clip_inset_rad: float = 0.002  # clipped joints this far inside the margin (a controller's IK that
                                          # lands near, not on, the clipped pose stays inside it)
    # --- dynamics: fraction of Franka's limits allowed, and what to do about an excess
    velocity_fraction: float = 1.0
    accel_fraction: float = 1.0
    jerk_fraction: float = 1.0
    check_jerk: bool = True               # at 20 Hz finite differences the jerk limit rarely binds
    dynamics_policy: str = "time_scale"   # "time_scale": slow the chunk down uniformly | "reject"
    control_period_s: float = 0.05        # the controller's setpoint is commanded / observed every period (20 Hz)
    max_time_scale: float = 8.0           # need to slow down more than this -> reject (execution trajectory; the row
                                          # executions limit each command's velocity / acceleration themselves)
    # --- workspace box for the TCP (base frame, metres)
    workspace_min: tuple[float, float, float] = (0.10, -0.60, 0.0)
    workspace_max: tuple[float, float, float] = (0.85, 0.60, 0.90)
    workspace_policy: str = "clip"        # "clip": project targets into the box | "reject"
    workspace_clip_max_m: float = 0.05    # targets further outside than this are rejected even with "clip"
    workspace_path_tol_m: float = 0.002   # between targets the TCP may bulge this far out of the box (path curvature)
    workspace_clip_inset_m: float = 0.008 # targets clipped this far inside the faces (an arm turning its wrist fast
                                          # lags its setpoint by up to ~1 cm at the TCP: benchmarks/safety_fuzz.py)
    # --- table plane and environment (always reject)
    table_z: float = 0.0                  # table top plane z (robot base on the table at the origin)
    gripper_table_margin_m: float = 0.006   # the gripper's lowest point (fingers / pads, any orientation) must stay this
                                          # far above the table at every TCP target (TCP floor from the true geometry;
                                          # keep it > obstacle_margin_m, or raised targets fail the collision check)
    table_policy: str = "clip"            # ee_delta targets below that floor: "clip": raised onto it | "reject"
    table_clip_max_m: float = 0.05        # targets further below than this are rejected even with "clip"
    link_table_margin_m: float = 0.0      # robot links (except the fixed base link0) must stay above table_z + this
    table_half_extent_m: float = 2.0      # the table collision box spans +-this in x and y around the base
    env_boxes: list[EnvBox] = field(default_factory=list)
    check_self_collision: bool = True     # every link pair except those joined by one joint (and the two fingers)
    gripper: str = "urdf"                 # collision model of the fingers: "urdf" (Franka Hand meshes) | "sim" (+ the
                                          # MuJoCo sim's longer finger pads, sim/scene.py SIM_FINGER_PADS)
    # --- the path between checked states (continuous guarantee)
    path_resolution_m: float = 0.006      # checked pieces of a path: no two robot parts move more than this relative to
                                          # each other within one (bound: sum_j |dq_j| * reach_j + finger travel)
    obstacle_margin_m: float = 0.003      # clearance required to table/boxes at every checked state (>= resolution / 2)
    self_margin_m: float = 0.004          # clearance required between link pairs (>= resolution / 2)
    step_path_tolerance: float = 0.05     # a controller that jumps its setpoint once per period (the sim's, row by row)
                                          # moves the arm off the joint-linear path between setpoints (the joints'
                                          # torques saturate differently): obstacle clearance of such a step grows by
                                          # this fraction of the step's displacement bound (verify_command stepped=True)
    tracking_lag_s: float = 0.015         # the arm may run past its setpoint by up to this x the setpoint's velocity,
                                          # in the direction it moves (a position-controlled arm lags, then overshoots
                                          # when the setpoint stops: the sim's, ~6 ms x speed at the end of a period):
                                          # every sent command is also checked out to those overshoot states
    # --- time
    check_budget_s: float = 0.05          # a check that takes longer is stopped and the chunk rejected (TIMEOUT)
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
        if self.joint_limit_policy not in ("clip", "reject"):
            raise ValueError(f"joint_limit_policy: 'clip' or 'reject', got {self.joint_limit_policy!r}")
        if not 0.0 <= self.joint_limit_clip_inset_rad < 0.05:
            raise ValueError(f"joint_limit_clip_inset_rad must be in [0, 0.05) rad, got {self.joint_limit_clip_inset_rad}")
        if np.any(np.asarray(self.workspace_min) >= np.asarray(self.workspace_max)):
            raise ValueError(f"workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max}")
        if self.max_time_scale < 1.0:
            raise ValueError("max_time_scale must be >= 1")
        if not 0.0 <= self.tracking_lag_s <= 0.2:
            raise ValueError(f"tracking_lag_s must be in [0, 0.2] s, got {self.tracking_lag_s}")
        if self.gripper not in ("urdf", "sim"):
            raise ValueError(f"gripper: 'urdf' or 'sim', got {self.gripper!r}")
        if not (self.path_resolution_m > 0 and self.obstacle_margin_m >= self.path_resolution_m / 2
                and self.self_margin_m >= self.path_resolution_m / 2):
            raise ValueError("path_resolution_m must be > 0 and obstacle_margin_m, self_margin_m >= path_resolution_m / 2 "
                             "(otherwise a collision can hide between checked states)")
        if not self.check_budget_s > 0:
            raise ValueError(f"check_budget_s must be > 0, got {self.check_budget_s}")


# ---------------------------------------------------------------------------------------------- checker
class CheckTimeout(Exception):
    """A check ran past ``SafetyConfig.check_budget_s``."""


def _describe(x) -> str:
    return f"{type(x).__name__} {str(x)[:40]!r}"


def _as_vector(x, n: int) -> np.ndarray | None:
    """x as a float64 vector of length n, or None when it is not one (strings, wrong shapes, objects)."""
    if x is None or isinstance(x, (str, bytes)):
        return None
    try:
        v = np.asarray(x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return v if v.shape == (n,) else None


def _as_float(x) -> float | None:
    if isinstance(x, (str, bytes)) or x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _as_int_ns(x) -> int | None:
    """An integer nanosecond time (int / numpy integer / integral finite float), else None."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, np.integer)):
        return int(x)
    f = _as_float(x)
    return int(f) if f is not None and float(f).is_integer() else None


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
        self._deadline = float("inf")
        # a checker that shares its process with a control loop (the safety node's admission) gives up the GIL for
        # ``yield_s`` after every ``yield_every_s`` of work once a check_chunk has run ``yield_after_s`` (a short
        # check is not slowed down), so that the loop's threads run while it checks; yield_s 0: never (a sleep(0) is
        # not enough: the waiting thread loses the race to take the GIL back)
        self.yield_after_s, self.yield_every_s, self.yield_s = 0.0, 0.0, 0.0
        self._yielded = 0.0
        self._radii = self.reach_radii()
        self._tcp_radii = self.tcp_reach_radii()
        self._gripper_pts = self.gripper_points_tcp()
        self._tops = self._obstacle_tops()

    # ------------------------------------------------------------------ backend hook
    @abc.abstractmethod
    def collisions(self, q: np.ndarray, gripper: np.ndarray) -> list[Violation]:
        """Collision violations of configurations q (H, 7) with gripper commands (H,): one per kind, first step."""

    # ------------------------------------------------------------------ public API
    def hold(self, q_current: np.ndarray | None, gripper_current: float = GRIPPER_OPEN,
             reasons: Sequence[Violation] = (), **extra) -> SafetyResult:
        """Hold position: one point at ``q_current`` (empty when q_current itself is unusable)."""
        q = _as_vector(q_current, 7)
        try:
            g = float(gripper_current)
        except (TypeError, ValueError):
            g = float("nan")
        g = g if np.isfinite(g) else GRIPPER_OPEN
        if q is None or not np.all(np.isfinite(q)):
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
        self._deadline = float("inf")
        out = self._joint_limits(q)
        out += self.collisions(q, np.array([gripper], dtype=np.float64))
        return out

    def check_chunk(self, chunk: ActionChunkData, q_current: np.ndarray, gripper_current: float,
                    now_ns: int | None = None, dq_current: np.ndarray | None = None,
                    start_q: np.ndarray | None = None, start_v: np.ndarray | None = None,
                    dynamics: bool = True, end_at_rest: bool = False, settle=None, path: bool = True) -> SafetyResult:
        """Check every step of ``chunk`` and the path between them from the robot state; never raises (any bad
        argument -> a hold with a reason) and never runs longer than ``config.check_budget_s`` (-> TIMEOUT).

        now_ns: time of the check (the node's clock); enables the STALE check. The returned trajectory's
          ``times_from_start`` are relative to this time (q_current is the state now).
        dq_current: current joint velocities (7,), optional (the acceleration of the first step is checked against
          ``start_v``, else against it, else only accelerations inside the chunk are checked).
        start_q, start_v: where the controller's setpoint is now and how fast it moves (the executor's model of
          the controller; default: the measured state). The checked path runs from start_q through every step, and
          also from q_current to step 0 (the arm catching up with its setpoint).
        dynamics: False skips the velocity/acceleration/jerk check (the executor limits each row itself and checks
          the command it sends with :meth:`verify_command`).
        path: False skips the dense path check between the steps (for a caller that sends not these steps but a
          command derived from them, and checks that command's own path with :meth:`verify_command`: the executor's
          rows).
        end_at_rest: the chunk is sent whole and the controller stops at its last point (execution trajectory): the
          stop counts as an acceleration and the points are checked as the controller samples them. False: the
          chunk is a window of a longer motion.
        settle: (positions (K, 7), times (K,) s from now) of the path the setpoint is committed to, ending at rest
          (a trajectory controller finishing its last trajectory). When the chunk cannot start from start_q moving at
          start_v within the limits (a setpoint still braking in another direction), it starts from rest where that
          path ends: the returned trajectory is the rest of that path and one period at its end (``settle_points``
          points), then the chunk.
        """
        self._deadline = time.perf_counter() + _WORK_SHARE * self.config.check_budget_s
        self._yielded = time.perf_counter() + self.yield_after_s
        try:
            return self._check_chunk(chunk, q_current, gripper_current, now_ns, dq_current, start_q, start_v, dynamics,
                                     end_at_rest, settle, path)
        except CheckTimeout as e:
            return self.hold(q_current, gripper_current, [Violation(ViolationKind.TIMEOUT, str(e))])
        except Exception as e:  # noqa: BLE001 - bad input of any kind must end in a hold with a reason, never a raise
            log.debug("check_chunk: %s", e, exc_info=True)
            return self.hold(q_current, gripper_current,
                             [Violation(ViolationKind.BAD_INPUT, f"could not check the chunk: {type(e).__name__}: {e}")])

    def share_the_gil(self, after_s: float = 0.02, every_s: float = 0.002, sleep_s: float = 0.0005) -> None:
        """For a checker that shares its process with a control loop (the safety node's admission): once a check has
        run ``after_s``, sleep ``sleep_s`` after every ``every_s`` of work so that the loop's threads run."""
        self.yield_after_s, self.yield_every_s, self.yield_s = float(after_s), float(every_s), float(sleep_s)

    def _tick(self, what: str) -> None:
        """Raise CheckTimeout when the running check has used up its budget; give up the GIL (``yield_s``)."""
        now = time.perf_counter()
        if self.yield_s > 0 and now - self._yielded > self.yield_every_s:
            time.sleep(self.yield_s)
            self._yielded = now = time.perf_counter()
        if now > self._deadline:
            raise CheckTimeout(f"check stopped after {self.config.check_budget_s * 1000:.0f} ms budget ({what}); "
                               "chunk rejected")

    def _check_chunk(self, chunk, q_current, gripper_current, now_ns, dq_current, start_q, start_v,
                     dynamics, end_at_rest=False, settle=None, path=True) -> SafetyResult:
        cfg = self.config
        # ---- robot state
        q_cur = _as_vector(q_current, 7)
        if q_cur is None:
            return self.hold(None, gripper_current, [Violation(ViolationKind.WRONG_SHAPE,
                                                               f"q_current: expected 7 joint positions, got {_describe(q_current)}")])
        if not np.all(np.isfinite(q_cur)):
            return self.hold(None, gripper_current, [Violation(ViolationKind.NAN, "q_current contains NaN or inf")])
        try:
            g_cur = float(gripper_current)
        except (TypeError, ValueError):
            g_cur = float("nan")
        if not np.isfinite(g_cur):
            return self.hold(q_cur, GRIPPER_OPEN, [Violation(ViolationKind.NAN, f"gripper_current is not finite: {gripper_current!r}")])
        dq = None if dq_current is None else _as_vector(dq_current, 7)
        if dq is not None and not np.all(np.isfinite(dq)):
            dq = None   # unusable velocity: fall back to checking accelerations inside the chunk only
        q0 = q_cur if start_q is None else _as_vector(start_q, 7)
        v0 = dq if start_v is None else _as_vector(start_v, 7)
        if q0 is None or not np.all(np.isfinite(q0)) or (v0 is not None and not np.all(np.isfinite(v0))):
            return self.hold(q_cur, g_cur, [Violation(ViolationKind.BAD_INPUT, "start_q / start_v: expected 7 finite values")])

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
            P, tb = self._table_tcp(P, R, clip=True)
            reasons += tb
            P, ws = self._workspace(P)
            reasons += ws
            ik = self.kin.ik_targets(q_cur, P, R, G, cfg.ik, tick=lambda: self._tick("IK"))
            Q = ik.q
            s = _first(~ik.success)
            if s is not None:
                reasons.append(Violation(ViolationKind.IK_FAILED,
                                         f"no joint solution within {cfg.ik.fail_pos_m * 1000:.1f} mm / {cfg.ik.fail_rot_rad:.3f} rad "
                                         f"(residual {ik.pos_err[s] * 1000:.1f} mm, {ik.rot_err[s]:.3f} rad)", s))
            else:
                Q, P, G, jl = self._clip_joint_limits(Q, P, G)
                reasons += jl
        else:  # joint_position: rows are absolute joint targets, an optional 8th column the gripper
            Q = actions[:, :7].copy()
            G = np.clip(actions[:, 7], GRIPPER_OPEN, GRIPPER_CLOSED) if actions.shape[1] == 8 else np.full(H, g_cur)
            P = self._tcp_positions(Q)
            reasons += self._workspace_strict(P)
        return self._finish(q_cur, g_cur, q0, v0, Q, G, P, dt, reasons, dynamics, end_at_rest,
                            self._settle_path(settle) if dynamics else None, path=path)

    @staticmethod
    def _settle_path(settle) -> tuple[np.ndarray, np.ndarray] | None:
        """(positions (K, 7), times (K,)) of a usable ``settle`` argument (see check_chunk), else None."""
        if settle is None:
            return None
        SP = np.asarray(settle[0], dtype=np.float64).reshape(-1, 7)
        ST = np.asarray(settle[1], dtype=np.float64).reshape(-1)
        if len(SP) == 0 or len(ST) != len(SP) or not (np.all(np.isfinite(SP)) and np.all(np.isfinite(ST))) \
                or np.any(np.diff(np.r_[0.0, ST]) <= 0):
            return None
        return SP, ST

    def _finish(self, q_cur, g_cur, q0, v0, Q, G, P, dt, reasons, dynamics, end_at_rest=False,
                settle=None, path=True) -> SafetyResult:
        """Limits, dynamics and the dense path check of joint waypoints Q; the verdict."""
        H = len(Q)
        reasons = reasons + self._joint_limits(Q)
        scale, t0, pre = 1.0, 0.0, None
        if dynamics:   # (before the path: it decides where the chunk starts)
            scale, dyn = self._dynamics(q0, Q, dt, v0, end_at_rest)
            if settle is not None and any(r.rejecting for r in dyn):
                # not from the moving setpoint: from where its committed path comes to rest, one control period
                # after it arrives (that path's stop is the one checked with it; the chunk starts from rest)
                SP, ST = settle
                Pp = self.config.control_period_s
                SP, ST = np.vstack([SP, SP[-1:]]), np.r_[ST, ST[-1] + Pp]
                s2, dyn2 = self._dynamics(SP[-1], Q, dt, np.zeros(7), end_at_rest)
                if not any(r.rejecting for r in dyn2):
                    scale, dyn, q0, t0, pre = s2, dyn2, SP[-1].copy(), float(ST[-1]), (SP, ST)
                    dyn = dyn + [Violation(ViolationKind.ACCEL_LIMIT, f"starts once the arm's current motion has come "
                                                                      f"to rest ({t0 * 1000:.0f} ms)", rejecting=False)]
            reasons += dyn
        if path and not any(r.rejecting for r in reasons):   # the expensive part: only while it can matter
            reasons += self._path_violations(q_cur, g_cur, q0, Q, G)
        rejecting = [r for r in reasons if r.rejecting]
        if rejecting:
            return self.hold(q_cur, g_cur, reasons, time_scale=scale, checked_positions=Q, tcp_targets=P)
        T = t0 + (np.arange(1, H + 1)) * dt * scale
        V = self._waypoint_velocities(q0, Q, dt * scale)
        steps = [r.step for r in reasons if r.step is not None]
        out = SafetyResult(SafetyStatus.CLIPPED if reasons else SafetyStatus.OK, reasons, Q.copy(), V, T, G.copy(),
                           first_bad_step=min(steps) if steps else None, time_scale=scale, checked_positions=Q,
                           tcp_targets=P, backend=self.backend_name)
        if pre is not None:      # the committed path first (checked when it was sent; the executor re-checks it all)
            SP, ST = pre
            out.positions = np.vstack([SP, out.positions])
            out.velocities = np.vstack([np.zeros_like(SP), out.velocities])
            out.times_from_start = np.r_[ST, out.times_from_start]
            out.gripper = np.r_[np.full(len(SP), G[0]), out.gripper]
            out.settle_points = len(SP)
        return out

    def verify_command(self, q_current, gripper_current: float, start_q, start_v, positions, times,
                       gripper, period: float | None = None, end_at_rest: bool = False,
                       stepped: bool = False) -> list[Violation]:
        """Re-check a joint command exactly as it will be sent (after any slow-down or clipping): the controller's
        setpoint moves linearly from ``start_q`` (moving at ``start_v``) through ``positions`` (M, 7) reached at
        ``times`` (M,) seconds from now. Joint limits, the dense path (also from q_current to the first point),
        the TCP workspace along it, and velocity / acceleration / jerk with no slow-down allowed. ``stepped``: the
        controller jumps to the first point at once (``step_path_tolerance``). [] = safe to send; never raises (a
        bad argument is a BAD_INPUT violation)."""
        self._deadline = time.perf_counter() + _WORK_SHARE * self.config.check_budget_s
        try:
            q_cur, q0 = _as_vector(q_current, 7), _as_vector(start_q, 7)
            v0 = None if start_v is None else _as_vector(start_v, 7)
            Q = np.asarray(positions, dtype=np.float64).reshape(-1, 7)
            T = np.asarray(times, dtype=np.float64).reshape(-1)
            G = np.broadcast_to(np.asarray(gripper, dtype=np.float64), (len(Q),)).copy()
            g_cur = float(gripper_current)
            if q_cur is None or q0 is None or len(T) != len(Q) or len(Q) == 0:
                return [Violation(ViolationKind.BAD_INPUT, "verify_command: expected 7 joints and one time per point")]
            arrays = [q_cur, q0, Q, T, G, [g_cur]] + ([] if v0 is None else [v0])
            if not all(np.all(np.isfinite(a)) for a in arrays) or np.any(np.diff(np.r_[0.0, T]) <= 0):
                return [Violation(ViolationKind.BAD_INPUT, "verify_command: non-finite values or times not increasing")]
            out = self._joint_limits(Q)
            out += self._workspace_strict(self._tcp_positions(Q))
            dts = np.diff(np.r_[0.0, T])
            out += self._path_violations(q_cur, g_cur, q0, Q, G, self._overshoot_segments(q0, Q, G, dts),
                                         step_tol=self.config.step_path_tolerance if stepped else 0.0)
            out += self._dynamics_at(q0, Q, dts, v0, period, end_at_rest)
            return [replace(v, rejecting=True) for v in out]
        except CheckTimeout as e:
            return [Violation(ViolationKind.TIMEOUT, str(e))]
        except Exception as e:  # noqa: BLE001
            return [Violation(ViolationKind.BAD_INPUT, f"verify_command: {type(e).__name__}: {e}")]

    # ------------------------------------------------------------------ pieces
    def _check_input(self, chunk, now_ns) -> list[Violation]:
        cfg = self.config
        if not isinstance(chunk, ActionChunkData):
            return [Violation(ViolationKind.WRONG_SHAPE, f"expected ActionChunkData, got {type(chunk).__name__}")]
        if not isinstance(chunk.action_space, str):
            return [Violation(ViolationKind.UNSUPPORTED_ACTION_SPACE, f"action_space must be a string, got {_describe(chunk.action_space)}")]
        try:
            raw = np.asarray(chunk.actions)
            if raw.dtype.kind not in "biuf":           # complex, object, strings: not real numbers
                raise TypeError(f"dtype {raw.dtype} is not real numbers")
            a = raw.astype(np.float64)
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
            names = chunk.joint_names
            if names is not None and not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
                return [Violation(ViolationKind.BAD_INPUT, f"joint_names must be a list of strings, got {_describe(names)}")]
            if names and list(names)[:7] != list(PANDA_ARM_JOINTS):
                return [Violation(ViolationKind.WRONG_SHAPE, f"joint_names {list(names)} do not start with {list(PANDA_ARM_JOINTS)}")]
        else:
            return [Violation(ViolationKind.UNSUPPORTED_ACTION_SPACE, f"action_space {chunk.action_space!r} is not "
                                                                      f"{ACTION_SPACE_EE_DELTA!r} or {ACTION_SPACE_JOINT_POSITION!r}")]
        finite = np.all(np.isfinite(a), axis=1)
        if not finite.all():
            s = _first(~finite)
            return [Violation(ViolationKind.NAN, f"actions contain NaN or inf (row {s})", s)]
        dt = _as_float(chunk.dt)
        if dt is None or not dt > 0 or isinstance(chunk.dt, bool):
            return [Violation(ViolationKind.BAD_TIMING, f"dt must be a positive finite number of seconds, got {chunk.dt!r}")]
        if now_ns is not None:
            now = _as_int_ns(now_ns)
            if now is None:
                return [Violation(ViolationKind.BAD_INPUT, f"now_ns must be an integer time in ns, got {now_ns!r}")]
            stamp = _as_int_ns(chunk.stamp_ns)
            if stamp is None:
                return [Violation(ViolationKind.STALE, f"chunk stamp_ns is not an integer time in ns: {chunk.stamp_ns!r}")]
            if stamp == 0 and cfg.require_stamp:
                return [Violation(ViolationKind.STALE, "chunk has no stamp (stamp_ns == 0)")]
            if stamp != 0:
                age = (now - stamp) * 1e-9
                if age > cfg.max_chunk_age_s:
                    return [Violation(ViolationKind.STALE, f"chunk is {age:.3f} s old (max {cfg.max_chunk_age_s} s)")]
                if -age > cfg.max_future_s:
                    return [Violation(ViolationKind.STALE, f"chunk is stamped {-age:.3f} s in the future (max {cfg.max_future_s} s)")]
        return []

    # ------------------------------------------------------------------ the path between checked states
    def reach_radii(self) -> np.ndarray:
        """(7,) upper bound of the distance of any robot point from each arm joint's axis (m): a joint change dq_j
        moves no point of the robot further than |dq_j| * reach_j. Backends with a geometry model compute it; this
        default (the Panda's reach plus the hand) is conservative."""
        return np.full(7, 1.3)

    def tcp_reach_radii(self) -> np.ndarray:
        """(7,) upper bound of the TCP's distance from each arm joint's axis (m), from the kinematic chain."""
        model = self.kin.model
        arm = [model.getJointId(n) for n in PANDA_ARM_JOINTS]
        tcp = float(np.linalg.norm(model.frames[self.kin.tcp_frame_id].placement.translation))
        out, chain = np.zeros(7), tcp
        for idx in range(6, -1, -1):
            out[idx] = chain
            chain += float(np.linalg.norm(model.jointPlacements[arm[idx]].translation))
        return out * 1.001 + 1e-4

    def path_samples(self, qa: np.ndarray, qb: np.ndarray, ga: float, gb: float) -> np.ndarray:
        """Fractions in (0, 1] at which the segment qa -> qb (joint-linear) is checked: consecutive states are at most
        ``path_resolution_m`` apart for every point of the robot (bound: sum_j |dq_j| reach_j + finger travel)."""
        bound = float(np.abs(np.asarray(qb) - np.asarray(qa)) @ self._radii) + abs(float(gripper_to_width(gb)) - float(gripper_to_width(ga))) / 2
        n = max(1, int(np.ceil(bound / self.config.path_resolution_m)))
        return np.arange(1, n + 1) / n

    def _overshoot_segments(self, q0, Q, G, dts) -> list:
        """Segments from every setpoint Q[k] to where the arm may overshoot it, Q[k] + tracking_lag_s * v_k (v_k: the
        setpoint velocity arriving there), for the collision check (``tracking_lag_s`` in SafetyConfig)."""
        lag = self.config.tracking_lag_s
        if lag <= 0:
            return []
        prev = np.vstack([np.asarray(q0, dtype=np.float64)[None], Q[:-1]])
        V = (Q - prev) / np.asarray(dts, dtype=np.float64)[:, None]
        return [(Q[k], Q[k] + lag * V[k], G[k], G[k], k) for k in range(len(Q)) if np.any(np.abs(V[k]) > 1e-9)]

    def _path_violations(self, q_cur, g_cur, q0, Q, G, extra_segs=(), step_tol: float = 0.0) -> list[Violation]:
        """Collisions (with margins) and the TCP workspace at states dense enough that nothing hides between them,
        along q0 -> Q[0] -> ... -> Q[-1] and, when the arm is not at its setpoint, q_cur -> Q[0], and ``extra_segs``
        (e.g. overshoot segments)."""
        starts = [(np.asarray(q0, dtype=np.float64), float(g_cur), 0)]
        if np.max(np.abs(np.asarray(q0) - q_cur)) > 1e-9:
            starts.append((q_cur, float(g_cur), 0))
        segs = [(qa, Q[0], ga, G[0], st) for qa, ga, st in starts] + [(Q[i - 1], Q[i], G[i - 1], G[i], i) for i in range(1, len(Q))]
        out = self.path_collisions(segs + list(extra_segs), starts=[(qa, ga) for qa, ga, _ in starts],
                                   step_tol=step_tol)
        # the TCP in the workspace box, by bisection: over a piece with TCP travel bound D (|dq| . tcp reach), every TCP
        # position is within D / 2 of the piece's midpoint, so a midpoint deeper inside the box than D / 2 clears it
        # (the setpoint's path only: the box is a virtual limit on where the arm is sent, not an obstacle)
        # The path must stay workspace_clip_inset_m inside the faces (an arm lags its setpoint at speed), minus the
        # curvature tolerance; a path that starts closer than that may move but not closer to a face than it is.
        lo, hi = np.asarray(self.config.workspace_min), np.asarray(self.config.workspace_max)
        tol = self.config.workspace_path_tol_m
        p0 = self._tcp_positions(np.asarray(q0, dtype=np.float64)[None])[0]
        need = min(self.config.workspace_clip_inset_m, float(min(np.min(p0 - lo), np.min(hi - p0)))) - tol
        # (the overshoot segments too: the arm passes a setpoint that stops; and a stepped controller's path bends off
        # the segment by step_tol of its TCP travel bound, as for the obstacle clearances)
        ws_segs = [(sg, step_tol) for n, sg in enumerate(segs) if not (len(starts) > 1 and n == 1)]
        for (qa, qb, ga, gb, st), bend in ws_segs + [(sg, 0.0) for sg in extra_segs]:
            D_full = float(np.abs(np.asarray(qb) - qa) @ self._tcp_radii)
            need_seg = need + bend * D_full
            stack = [(0.0, 1.0)]
            while stack:
                f0, f1 = stack.pop()
                fm = 0.5 * (f0 + f1)
                p = self._tcp_positions((qa + fm * (np.asarray(qb) - qa))[None])[0]
                inside = float(min(np.min(p - lo), np.min(hi - p)))
                half = 0.5 * (f1 - f0) * D_full
                if inside - need_seg >= half:
                    continue
                if inside < need_seg:
                    out.append(Violation(ViolationKind.WORKSPACE, f"TCP {np.round(p, 3).tolist()} comes within "
                                                                  f"{max(need_seg, 0) * 1000:.0f} mm of a workspace face on the path",
                                         int(st)))
                    return out
                if half > 0.001:
                    stack += [(fm, f1), (f0, fm)]
        return out

    def path_collisions(self, segs, starts=None, step_tol: float = 0.0) -> list[Violation]:
        """Collisions along joint-linear segments (q_a, q_b, g_a, g_b, step): states :meth:`path_samples` apart.
        Backends may skip what provably cannot collide (:class:`BuiltinSafetyChecker` does). ``starts``: the states
        the motion starts from, [(q, g)] (default: the first states of the step-0 segments)."""
        dq, dg, step = [], [], []
        for qa, qb, ga, gb, st in segs:
            fr = self.path_samples(qa, qb, ga, gb)
            dq.append(qa[None] + fr[:, None] * (qb - qa)[None])
            dg.append(ga + fr * (gb - ga))
            step.append(np.full(len(fr), st))
        steps = np.concatenate(step)
        return [Violation(v.kind, v.message + " (on the path)", None if v.step is None else int(steps[v.step]), v.rejecting)
                for v in self.collisions(np.vstack(dq), np.concatenate(dg))]

    def _tcp_positions(self, Q: np.ndarray) -> np.ndarray:
        out = np.zeros((len(Q), 3))
        for i, q in enumerate(Q):
            if i % 32 == 0:
                self._tick("forward kinematics")
            out[i] = self.kin.fk(q)[0]
        return out

    def _workspace_strict(self, P: np.ndarray) -> list[Violation]:
        cfg = self.config
        lo, hi = np.asarray(cfg.workspace_min), np.asarray(cfg.workspace_max)
        s = _first(np.any((P < lo) | (P > hi), axis=1))
        if s is None:
            return []
        return [Violation(ViolationKind.WORKSPACE, f"TCP {np.round(P[s], 3).tolist()} outside the workspace box "
                                                   "(joint targets cannot be clipped)", s)]

    def gripper_points_tcp(self) -> np.ndarray:
        """(N, 3) points in the TCP frame that bound the gripper from below (fingers, pads): the lowest of them under
        a target orientation is the gripper's lowest point. Default: the URDF fingertips, 1 cm beyond the TCP."""
        return np.array([[0.0, 0.0, 0.01]])

    def tcp_floor(self, R: np.ndarray) -> np.ndarray:
        """Lowest allowed TCP height for TCP orientations R (..., 3, 3): the gripper's lowest point then stays
        ``gripper_table_margin_m`` above the table."""
        cfg = self.config
        floor = cfg.table_z + cfg.link_table_margin_m + cfg.gripper_table_margin_m
        R = np.asarray(R, dtype=np.float64)
        return floor - np.min(np.einsum("...ij,nj->...ni", R, self._gripper_pts)[..., 2], axis=-1)

    def _obstacle_tops(self) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]]:
        """The upright ``env_boxes`` (top face horizontal) as (name, rotation, centre, half footprint grown by
        ``gripper_table_margin_m``, top z): surfaces the gripper may be raised onto like the table's."""
        cfg, out = self.config, []
        for b in cfg.env_boxes:
            Rb = b.rotation()
            if abs(Rb[2, 2]) < 0.999:
                continue                       # (a tilted box: no flat top; the collision check alone refuses contact)
            local_half = 0.5 * np.asarray(b.size[:2], dtype=np.float64) + cfg.gripper_table_margin_m
            out.append((b.name, Rb, np.asarray(b.center, dtype=np.float64), local_half, b.center[2] + 0.5 * b.size[2]))
        return out

    def _obstacle_floor_need(self, P: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(H,) how far each TCP target must rise so that every gripper point above an upright obstacle's footprint
        (grown by the margin) stays ``gripper_table_margin_m`` above its top (<= 0: clear), and the obstacles that
        set it. Raising does not move a point in x, y, so one raise is enough."""
        need = np.full(len(P), -np.inf)
        names = []
        if not self._tops:
            return need, names
        W = P[:, None, :] + np.einsum("hij,nj->hni", R, self._gripper_pts)        # (H, N, 3) gripper points
        for name, Rb, c, local_half, top in self._tops:
            loc = (W - c) @ Rb                                                      # in the box frame
            over = np.all(np.abs(loc[..., :2]) <= local_half, axis=-1)               # (H, N) above the footprint
            if not over.any():
                continue
            n = np.max(np.where(over, top + self.config.gripper_table_margin_m - W[..., 2], -np.inf), axis=1)
            if np.any(n > 0):
                names.append(name)
            need = np.maximum(need, n)
        return need, names

    def _table_tcp(self, P: np.ndarray, R: np.ndarray, clip: bool) -> tuple[np.ndarray, list[Violation]]:
        """TCP targets whose gripper (true geometry, target orientation) would come closer than
        ``gripper_table_margin_m`` to the table, or to the top of an upright obstacle box it is above (a plate a
        cube lies against: the pads come down over its edge): raised just enough when ``clip`` and table_policy
        allow and the excess is at most table_clip_max_m (a clipped, non-rejecting reason), otherwise a rejecting
        one. (The collision checks that follow judge the raised targets and the paths between them.)"""
        cfg = self.config
        floor = cfg.table_z + cfg.link_table_margin_m + cfg.gripper_table_margin_m
        need_table = self.tcp_floor(R) - P[:, 2]
        need_top, tops = self._obstacle_floor_need(P, R)
        need = np.maximum(need_table, need_top)
        s = _first(need > 0)
        if s is None:
            return P, []
        worst = float(need.max())
        on_top = bool(np.any(need_top > np.maximum(need_table, 0.0)))
        kind = ViolationKind.ENV_COLLISION if on_top else ViolationKind.TABLE_COLLISION
        what = f"the table and the tops of {', '.join(tops)}" if on_top else "the table"
        if clip and cfg.table_policy == "clip" and worst <= cfg.table_clip_max_m:
            P = P.copy()
            P[:, 2] += np.maximum(need, 0.0)
            return P, [Violation(kind, f"TCP targets raised by up to {worst * 1000:.1f} mm to keep the gripper "
                                       f"{cfg.gripper_table_margin_m * 1000:.1f} mm above {what}", s, rejecting=False)]
        if on_top and need_top[s] > need_table[s]:
            return P, [Violation(kind, f"TCP target z = {P[s, 2]:.4f} m puts the gripper {need[s] * 1000:.1f} mm too "
                                       f"low over {', '.join(tops)} (its top + margin)", s)]
        return P, [Violation(ViolationKind.TABLE_COLLISION, f"TCP target z = {P[s, 2]:.4f} m puts the gripper "
                                                            f"{need[s] * 1000:.1f} mm too low (table + margin {floor:.4f} m)", s)]

    def _workspace(self, P: np.ndarray) -> tuple[np.ndarray, list[Violation]]:
        cfg = self.config
        lo, hi = np.asarray(cfg.workspace_min, dtype=np.float64), np.asarray(cfg.workspace_max, dtype=np.float64)
        inset = cfg.workspace_clip_inset_m             # clipped targets inside the faces, not on them
        Pc = np.clip(P, lo + inset, hi - inset)
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

    def clip_joints(self, q: np.ndarray) -> tuple[np.ndarray | None, float]:
        """(joint positions ``q`` (..., 7) with every joint past the margin held joint_limit_clip_inset_rad inside it,
        the largest excess past the margin in rad). The clipped positions are None when nothing is to be clipped:
        nothing past the margin, joint_limit_policy reject, or an excess over joint_limit_clip_max_rad (left to the
        rejecting JOINT_LIMIT check). The one place that decides a joint clip, for whole chunks and single rows."""
        cfg = self.config
        m = cfg.joint_limit_margin_rad
        lo, hi = self.kin.lower + m, self.kin.upper - m
        q = np.asarray(q, dtype=np.float64)
        excess = float(np.max(self._past_margin(q), initial=0.0))
        if excess <= 0.0 or cfg.joint_limit_policy != "clip" or excess > cfg.joint_limit_clip_max_rad:
            return None, excess
        inset = cfg.joint_limit_clip_inset_rad
        return np.clip(q, lo + inset, hi - inset), excess

    def _past_margin(self, q: np.ndarray) -> np.ndarray:
        """How far (rad, >= 0) each joint of ``q`` (..., 7) is past its limit margin."""
        m = self.config.joint_limit_margin_rad
        return np.maximum(self.kin.lower + m - q, 0.0) + np.maximum(q - (self.kin.upper - m), 0.0)

    def _clip_joint_limits(self, Q: np.ndarray, P: np.ndarray, G: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Violation]]:
        """ee_delta joint targets a little past the margin (clip_joints): those joints held just inside it and the TCP
        targets moved to where that leaves the TCP (a clipped, non-rejecting reason; a policy that keeps pushing
        toward the limit then slides along it instead of holding the arm for good). Rows from the first one further
        past than joint_limit_clip_max_rad are cut off (the chunk ends before it: the arm is not held for good by a
        policy that asks for a little more than the limit allows with every chunk); that row being the first, the
        chunk is left to the rejecting check."""
        cfg = self.config
        cut: list[Violation] = []
        if cfg.joint_limit_policy == "clip" and len(Q) > 1:
            past = self._past_margin(Q)
            far = _first(past.max(axis=1) > cfg.joint_limit_clip_max_rad)
            if far is not None and far > 0:
                j = int(np.argmax(past[far]))
                cut = [Violation(ViolationKind.JOINT_LIMIT, f"the chunk ends before this step: {PANDA_ARM_JOINTS[j]} would "
                                                            f"pass its margin by {past[far, j]:.3f} rad (more than "
                                                            f"{cfg.joint_limit_clip_max_rad:.3f})", far, rejecting=False)]
                Q, P, G = Q[:far], P[:far], G[:far]
        Qc, excess = self.clip_joints(Q)
        if Qc is None:
            return Q, P, G, cut
        rows = np.flatnonzero(np.any(Qc != Q, axis=1))
        s = int(rows[0])
        j = int(np.flatnonzero(Qc[s] != Q[s])[0])
        P = P.copy()
        P[rows] = self._tcp_positions(Qc[rows])          # (checks the deadline as it goes)
        return Qc, P, G, cut + [Violation(ViolationKind.JOINT_LIMIT, f"joint targets held {cfg.joint_limit_clip_inset_rad:.3f} rad "
                                                            f"inside the {cfg.joint_limit_margin_rad:.3f} rad margin (up to "
                                                            f"{excess:.4f} rad past it; first {PANDA_ARM_JOINTS[j]})", s,
                                 rejecting=False)]

    def _joint_limits(self, Q: np.ndarray) -> list[Violation]:
        m = self.config.joint_limit_margin_rad
        inside = self.kin.within_limits(Q, m)
        s = _first(~np.all(inside, axis=1))
        if s is None:
            return []
        j = int(np.flatnonzero(~inside[s])[0])
        return [Violation(ViolationKind.JOINT_LIMIT, f"{PANDA_ARM_JOINTS[j]} = {Q[s, j]:.4f} rad outside "
                                                     f"[{self.kin.lower[j] + m:.4f}, {self.kin.upper[j] - m:.4f}]", s)]

    def _dynamics(self, q_cur: np.ndarray, Q: np.ndarray, dt: float, dq_cur: np.ndarray | None,
                  end_at_rest: bool = False) -> tuple[float, list[Violation]]:
        """Velocity/acceleration/jerk check; returns (time scale, violations)."""
        cfg = self.config
        vmax = self.kin.velocity_limits * cfg.velocity_fraction
        amax = self.kin.accel_limits * cfg.accel_fraction
        jmax = self.kin.jerk_limits * cfg.jerk_fraction
        qs = np.vstack([q_cur[None], Q])

        P = cfg.control_period_s

        def derivs(step: float):
            # the controller interpolates the points linearly: the velocity jumps at each point, which the setpoint
            # sampled every control period P shows as a change of velocity within one period (so a slow-down by s
            # lowers accelerations by s, not s^2)
            v = np.diff(qs, axis=0) / step                          # (H, 7): segment velocities
            vf = v if dq_cur is None else np.vstack([dq_cur[None], v])
            if end_at_rest:                                         # ... and it stops at the last one
                vf = np.vstack([vf, np.zeros((1, 7))])
            a = np.diff(vf, axis=0) / P                             # accelerations at the points
            j = np.diff(a, axis=0) / P
            return v, a, j

        def ratios(step: float):
            v, a, j = derivs(step)
            rv = np.abs(v) / vmax
            ra = np.abs(a) / amax if a.size else np.zeros((0, 7))
            rj = (np.abs(j) / jmax if j.size else np.zeros((0, 7))) if cfg.check_jerk else np.zeros((0, 7))
            return rv, ra, rj

        def need(step: float) -> float:
            rv, ra, rj = ratios(step)
            return max(1.0, float(rv.max(initial=0.0)), float(ra.max(initial=0.0)), float(rj.max(initial=0.0)))

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
        for _ in range(60):   # uniform slow-down until every limit holds (accounts for a fixed dq_current), also as
            n = need(dt * scale)      # the controller samples the points every period (points between its samples)
            if n <= 1.0 + 1e-9 and end_at_rest:
                n = self._sampled_ratio(q_cur, dq_cur, Q, dt * scale * np.arange(1, len(Q) + 1), P)
                n = 1.0 if n <= 1.0 + 1e-9 else 1.0 + 0.5 * (n - 1.0) + 0.02
            if n <= 1.0 + 1e-9:
                break
            scale *= n * (1.0 + 1e-6)
        fixable = (cfg.dynamics_policy == "time_scale" and scale <= cfg.max_time_scale and need(dt * scale) <= 1.0 + 1e-9
                   and (not end_at_rest or self._sampled_ratio(q_cur, dq_cur, Q, dt * scale * np.arange(1, len(Q) + 1), P)
                        <= 1.0 + 1e-9))
        if fixable:
            return scale, [Violation(k, f"{msg}; chunk slowed down {scale:.2f}x", s, rejecting=False) for k, s, msg in found]
        why = (f"needs {scale:.2f}x slow-down (max {cfg.max_time_scale}x)" if cfg.dynamics_policy == "time_scale"
               else "dynamics_policy is 'reject'")
        return scale, [Violation(k, f"{msg}; {why}", s) for k, s, msg in found]

    def _dynamics_at(self, q0: np.ndarray, Q: np.ndarray, durations: np.ndarray, v0: np.ndarray | None,
                     period: float | None = None, end_at_rest: bool = False) -> list[Violation]:
        """Velocity / acceleration / jerk of the polyline q0 -> Q with segment ``durations`` (s), against the limits
        with no slow-down (a command about to be sent). Accelerations: the velocity changes at the points over one
        control period ``period`` (the setpoint is interpolated linearly); ``end_at_rest``: it stops at the last point."""
        cfg = self.config
        vmax = self.kin.velocity_limits * cfg.velocity_fraction
        amax = self.kin.accel_limits * cfg.accel_fraction
        jmax = self.kin.jerk_limits * cfg.jerk_fraction
        d = np.asarray(durations, dtype=np.float64)
        v = np.diff(np.vstack([q0[None], Q]), axis=0) / d[:, None]
        vf = v if v0 is None else np.vstack([v0[None], v])
        if end_at_rest:
            vf = np.vstack([vf, np.zeros((1, 7))])
        P = float(period or cfg.control_period_s)                    # (see _dynamics: velocity jumps at the points)
        a = np.diff(vf, axis=0) / P if len(vf) > 1 else np.zeros((0, 7))
        j = np.diff(a, axis=0) / P if len(a) > 1 else np.zeros((0, 7))
        out = []
        if end_at_rest and len(Q) > 1:
            r = self._sampled_ratio(q0, v0, Q, np.cumsum(d), P)
            if r > 1.0 + 1e-6:
                out.append(Violation(ViolationKind.ACCEL_LIMIT, f"the command sampled every {P * 1000:.0f} ms reaches "
                                                                f"{r:.2f}x a velocity / acceleration limit"))
        for kind, x, lim, name, shift in ((ViolationKind.VELOCITY_LIMIT, v, vmax, "velocity", 0),
                                          (ViolationKind.ACCEL_LIMIT, a, amax, "acceleration", 0 if v0 is not None else 1),
                                          (ViolationKind.JERK_LIMIT, j if cfg.check_jerk else np.zeros((0, 7)), jmax, "jerk", 1)):
            if not x.size:
                continue
            r = np.abs(x) / lim
            s = _first(np.any(r > 1.0 + 1e-6, axis=1))
            if s is not None:
                jj = int(np.argmax(r[s]))
                out.append(Violation(kind, f"{PANDA_ARM_JOINTS[jj]} {name} at {r[s, jj]:.2f}x the limit in the command", s + shift))
        return out

    def _sampled_ratio(self, q0: np.ndarray, v0: np.ndarray | None, Q: np.ndarray, T: np.ndarray, P: float) -> float:
        """The largest velocity / acceleration ratio to the limits of the polyline q0 -> Q (reached at times T, then at
        rest) as a controller samples it every period P from now on (its setpoint moving at v0 before now)."""
        cfg = self.config
        vmax = self.kin.velocity_limits * cfg.velocity_fraction
        amax = self.kin.accel_limits * cfg.accel_fraction
        tk = np.arange(0.0, float(T[-1]) + 2.5 * P, P)
        knots_t = np.r_[0.0, np.asarray(T, dtype=np.float64)]
        knots_q = np.vstack([q0[None], Q])
        S = np.stack([np.interp(tk, knots_t, knots_q[:, j]) for j in range(7)], axis=1)
        if v0 is not None:
            S = np.vstack([(q0 - v0 * P)[None], S])
        v = np.diff(S, axis=0) / P
        a = np.diff(v, axis=0) / P
        return max(float(np.max(np.abs(v) / vmax, initial=0.0)), float(np.max(np.abs(a) / amax, initial=0.0)))

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
    """Collision checking with Pinocchio + coal on the Panda URDF: every pair of robot geometries except those whose
    links are joined by one joint (the joint's own limits keep them apart) and the two fingers (they close onto each
    other by design), the table (a box whose top face is ``table_z + link_table_margin_m``) and ``env_boxes``, with
    the clearances of :class:`SafetyConfig` at every checked state. ``gripper="sim"`` adds the MuJoCo sim's finger
    pads. The SRDF's disabled pairs are *not* trusted: it disables e.g. link5-link7 and hand-link5, which do collide
    when the wrist folds (:meth:`disabled_pairs` lists what stays disabled and why)."""

    backend_name = "builtin"

    def __init__(self, config: SafetyConfig | None = None, kinematics: PandaKinematics | None = None):
        import coal
        import pinocchio as pin

        self._pin = pin
        cfg = config or SafetyConfig()
        kin = kinematics or PandaKinematics()
        if kin.collision_model is None:
            raise ValueError("BuiltinSafetyChecker needs PandaKinematics(load_geometry=True)")
        gm = kin.collision_model
        model = kin.model
        if cfg.gripper == "sim":
            from ..sim.scene import SIM_FINGER_PADS
            for link, center, half in SIM_FINGER_PADS:
                f = model.frames[model.getFrameId(link)]
                place = f.placement * pin.SE3(np.eye(3), np.asarray(center, dtype=np.float64))
                gm.addGeometryObject(pin.GeometryObject(f"{link}_sim_pad", f.parentJoint, model.getFrameId(link), place,
                                                        coal.Box(*(2 * np.asarray(half, dtype=np.float64)))))
        gm.removeAllCollisionPairs()
        robot_geoms = list(range(gm.ngeoms))
        self._kept_disabled: list[tuple[str, str, str]] = []
        pairs: list[tuple[int, int]] = []
        for a in robot_geoms:
            for b in robot_geoms:
                if b <= a:
                    continue
                why = self._pair_exemption(model, gm.geometryObjects[a], gm.geometryObjects[b])
                if why:
                    self._kept_disabled.append((gm.geometryObjects[a].name, gm.geometryObjects[b].name, why))
                elif cfg.check_self_collision:
                    pairs.append((a, b))
        for a, b in pairs:
            gm.addCollisionPair(pin.CollisionPair(a, b))
        self._pair_kind: list[ViolationKind] = [ViolationKind.SELF_COLLISION] * len(pairs)
        base_joint = model.getJointId("panda_joint1")   # geometries of link0 hang on the universe joint (0)
        moving = [i for i in robot_geoms if gm.geometryObjects[i].parentJoint >= base_joint]
        th = 0.1
        top = cfg.table_z + cfg.link_table_margin_m
        e = 2 * cfg.table_half_extent_m
        table = pin.GeometryObject("table", 0, 0, pin.SE3(np.eye(3), np.array([0.0, 0.0, top - th / 2])), coal.Box(e, e, th))
        tid = gm.addGeometryObject(table)
        for i in moving:
            gm.addCollisionPair(pin.CollisionPair(i, tid))
            self._pair_kind.append(ViolationKind.TABLE_COLLISION)
        for box in cfg.env_boxes:
            go = pin.GeometryObject(f"env_{box.name}", 0, 0, pin.SE3(box.rotation(), np.asarray(box.center, dtype=np.float64)),
                                    coal.Box(*box.size))
            bid = gm.addGeometryObject(go)
            for i in moving:
                gm.addCollisionPair(pin.CollisionPair(i, bid))
                self._pair_kind.append(ViolationKind.ENV_COLLISION)
        self.geom_model = gm
        self.geom_data = pin.GeometryData(gm)
        for k, kind in enumerate(self._pair_kind):
            self.geom_data.collisionRequests[k].security_margin = (cfg.self_margin_m if kind is ViolationKind.SELF_COLLISION
                                                                   else cfg.obstacle_margin_m)
        self.num_self_pairs = self._pair_kind.count(ViolationKind.SELF_COLLISION)
        self._robot_geoms = robot_geoms
        self._pair_margin = [cfg.self_margin_m if k is ViolationKind.SELF_COLLISION else cfg.obstacle_margin_m
                             for k in self._pair_kind]
        self.kin = kin
        self._geom_reach, self._geom_finger = self._geometry_reach()
        self._pair_C, self._pair_F = self._pair_coefficients()
        # broad phase: a bounding sphere per robot geometry (its AABB's), the table as a plane; exact (coal) checks
        # only for pairs the spheres cannot clear
        centers, radii = [], []
        for gi in robot_geoms:
            g = gm.geometryObjects[gi]
            g.geometry.computeLocalAABB()
            lo, hi = np.asarray(g.geometry.aabb_local.min_), np.asarray(g.geometry.aabb_local.max_)
            centers.append(0.5 * (lo + hi))
            radii.append(0.5 * float(np.linalg.norm(hi - lo)))
        self._sph_c, self._sph_r = np.array(centers), np.array(radii)
        self._pair_a = np.array([p.first for p in gm.collisionPairs])
        self._pair_b = np.array([p.second for p in gm.collisionPairs])
        self._pair_sphere = np.array([k in (ViolationKind.SELF_COLLISION, ViolationKind.TABLE_COLLISION)
                                      for k in self._pair_kind])
        self._pair_table = np.array([k is ViolationKind.TABLE_COLLISION for k in self._pair_kind])
        self._table_top = top
        super().__init__(cfg, kin)

    @staticmethod
    def _pair_exemption(model, ga, gb) -> str:
        """Why a pair of robot geometries is not checked ('' = it is checked)."""
        ja, jb = ga.parentJoint, gb.parentJoint
        if ja == jb:
            return "same link (rigidly attached)"
        if model.parents[ja] == jb or model.parents[jb] == ja:
            return "joined by one joint (its limits keep them apart)"
        finger = {model.getJointId("panda_finger_joint1"), model.getJointId("panda_finger_joint2")}
        if {ja, jb} == finger:
            return "the two fingers (they close onto each other by design)"
        return ""

    def disabled_pairs(self) -> list[tuple[str, str, str]]:
        """Robot geometry pairs that are not checked: (name 1, name 2, why)."""
        return list(self._kept_disabled)

    def _geom_in_joint7(self, gi: int, finger_open: float) -> np.ndarray:
        """AABB corners (8, 3) of geometry gi in the joint-7 frame, fingers at ``finger_open`` (m each)."""
        pin, model, g = self._pin, self.kin.model, self.geom_model.geometryObjects[gi]
        g.geometry.computeLocalAABB()
        lo, hi = np.asarray(g.geometry.aabb_local.min_), np.asarray(g.geometry.aabb_local.max_)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        M = g.placement
        j = g.parentJoint
        j7 = model.getJointId("panda_joint7")
        if j != j7:   # a finger: its joint's placement in joint 7 and the prismatic travel along the joint axis
            axis = np.asarray(model.joints[j].extract().axis if hasattr(model.joints[j].extract(), "axis") else [0, 1, 0])
            M = model.jointPlacements[j] * pin.SE3(np.eye(3), axis * finger_open) * M
        return (np.asarray(M.rotation) @ corners.T).T + np.asarray(M.translation)

    def gripper_points_tcp(self) -> np.ndarray:
        model = self.kin.model
        j7 = model.getJointId("panda_joint7")
        fingers = {model.getJointId("panda_finger_joint1"), model.getJointId("panda_finger_joint2")}
        tcp = model.frames[self.kin.tcp_frame_id].placement          # TCP in the joint-7 frame
        pts = []
        for gi in self._robot_geoms:
            if self.geom_model.geometryObjects[gi].parentJoint in fingers | {j7}:
                for w in (0.0, 0.04):
                    pts.append(self._geom_in_joint7(gi, w))
        P = np.vstack(pts)
        return (np.asarray(tcp.rotation).T @ (P - np.asarray(tcp.translation)).T).T

    def _geometry_reach(self) -> tuple[np.ndarray, np.ndarray]:
        """(ngeoms, 7) reach of every robot geometry from each arm joint's origin (0 where the joint does not move it)
        and (ngeoms,) 1 for finger geometries (they also move with the gripper's travel)."""
        model = self.kin.model
        arm = [model.getJointId(n) for n in PANDA_ARM_JOINTS]
        reach, finger = np.zeros((self.geom_model.ngeoms, 7)), np.zeros(self.geom_model.ngeoms)
        for gi in self._robot_geoms:
            g = self.geom_model.geometryObjects[gi]
            g.geometry.computeLocalAABB()
            lo, hi = np.asarray(g.geometry.aabb_local.min_), np.asarray(g.geometry.aabb_local.max_)
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            r_g = float(np.max(np.linalg.norm((np.asarray(g.placement.rotation) @ corners.T).T
                                              + np.asarray(g.placement.translation), axis=1)))
            j = g.parentJoint
            if j not in arm and j != 0:
                r_g += 0.04            # a finger: up to 4 cm of travel from its joint's origin
                finger[gi] = 1.0
            chain, k = 0.0, j
            while k > 0:               # walk up to the base: distance from each ancestor joint's origin
                if k in arm:
                    reach[gi, arm.index(k)] = chain + r_g
                chain += float(np.linalg.norm(model.jointPlacements[k].translation))
                k = model.parents[k]
        return reach * 1.001 + 1e-4 * (reach > 0), finger

    def reach_radii(self) -> np.ndarray:
        return self._geom_reach.max(axis=0)

    def _pair_coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """Per collision pair: (npairs, 7) coefficients c and (npairs,) finger flags f such that the pair's relative
        displacement over a joint-linear motion is at most |dq| . c + f |d finger opening| (only the joints between
        the two links count for a self pair; every joint up to the link for an obstacle)."""
        model, gm = self.kin.model, self.geom_model
        C, F = np.zeros((len(gm.collisionPairs), 7)), np.zeros(len(gm.collisionPairs))
        for k, pair in enumerate(gm.collisionPairs):
            a, b = pair.first, pair.second
            ra = self._geom_reach[a] if a < len(self._geom_reach) else np.zeros(7)
            rb = self._geom_reach[b] if b < len(self._geom_reach) else np.zeros(7)
            fa = self._geom_finger[a] if a < len(self._geom_finger) else 0.0
            fb = self._geom_finger[b] if b < len(self._geom_finger) else 0.0
            if self._pair_kind[k] is ViolationKind.SELF_COLLISION:
                # the deeper link moves relative to the shallower one only through the joints in between
                deep, shallow = (b, a) if np.count_nonzero(rb) >= np.count_nonzero(ra) else (a, b)
                rd, rs = self._geom_reach[deep], self._geom_reach[shallow]
                C[k] = np.where(rs > 0, 0.0, rd)
                F[k] = self._geom_finger[deep] + self._geom_finger[shallow]
            else:
                C[k], F[k] = ra + rb, fa + fb
        return C, F

    def path_collisions(self, segs, starts=None, step_tol: float = 0.0) -> list[Violation]:
        """Continuous check of joint-linear segments (q_a, q_b, g_a, g_b, step) by bisection. Over a piece of a
        segment, each pair's relative displacement is at most D_k = |dq| . c_k (+ finger travel)
        (:meth:`_pair_coefficients`), so every configuration of the piece is within D_k / 2 of its midpoint: a pair
        farther apart there than its clearance + D_k / 2 is clear on the whole piece and dropped; for the others
        the piece is halved, down to D_k <= ``path_resolution_m``, where the normal clearance (>= resolution / 2)
        suffices. No robot point can touch anything between checked states. ``step_tol``: obstacle clearances grow
        by this fraction of the segment's own bound D_k (a stepped controller's path bends off the segment)."""
        pin, gm, gd, model, data = self._pin, self.geom_model, self.geom_data, self.kin.model, self.kin.data
        cfg = self.config
        reqs = gd.collisionRequests
        base = np.asarray(self._pair_margin, dtype=np.float64)
        obstacle = np.array([k is not ViolationKind.SELF_COLLISION for k in self._pair_kind])
        bounds = []
        for qa, qb, ga, gb, st in segs:
            qa, qb = np.asarray(qa, dtype=np.float64), np.asarray(qb, dtype=np.float64)
            bounds.append((qa, qb, ga, gb, st, self._pair_C @ np.abs(qb - qa)
                           + self._pair_F * abs(float(gripper_to_width(gb)) - float(gripper_to_width(ga))) / 2))
        # each segment's obstacle clearances grow by step_tol of its own bound (a stepped controller bends the path)
        allow = [step_tol * Dk * obstacle if step_tol > 0 else np.zeros(len(base)) for *_, Dk in bounds]
        # A pair closer where the motion starts than the clearance it would need (the arm sagged or was pushed there,
        # e.g. a finger pad pressed to the table while grasping) may move but never come closer than it is: its
        # clearance is capped just below its starting distance (90% of it; within 0.5 mm of contact or in contact,
        # 0.1 mm closer, pieces 0.2 mm), else every move, also away, would be refused from there and the arm stuck.
        cap = np.full(len(base), np.inf)
        seen: dict[ViolationKind, Violation] = {}
        try:
            if starts is None:
                starts = [(qa, ga) for qa, _, ga, _, st in segs if st == 0]
            reach = base + np.minimum(np.max(allow, axis=0) if allow else 0.0, _MAX_QUERY_INFLATION_M)
            for k in range(len(reqs)):
                reqs[k].security_margin = float(reach[k])
            for q_s, g_s in {(tuple(np.round(np.asarray(qa, dtype=np.float64), 12)), float(ga)) for qa, ga in starts}:
                self._tick("collision checks")
                pin.computeCollisions(model, data, gm, gd, self.kin.full_q(np.array(q_s), g_s), False)
                for k in range(len(reqs)):
                    if gd.collisionResults[k].isCollision():
                        pin.computeDistance(gm, gd, k)
                        d0 = float(gd.distanceResults[k].min_distance)
                        cap[k] = min(cap[k], max(base[k], 0.9 * d0) if d0 >= base[k] else
                                     0.9 * d0 if d0 > 0.0005 else d0 - 0.0001)
            for k in range(len(reqs)):
                reqs[k].security_margin = float(base[k])
            low = np.minimum(base, cap)
            leaf_at = np.where(low >= 0.0001, np.minimum(cfg.path_resolution_m, 2 * low), 0.0002)
            for (qa, qb, ga, gb, st, Dk), al in zip(bounds, allow):
                margin = list(np.minimum(base + al, cap))
                stack = [(0.0, 1.0, [k for k in range(len(reqs)) if self._pair_kind[k] not in seen])]
                while stack:
                    self._tick("collision checks")
                    f0, f1, cand = stack.pop()
                    fm = 0.5 * (f0 + f1)
                    w = f1 - f0
                    pin.updateGeometryPlacements(model, data, gm, gd, self.kin.full_q(qa + fm * (qb - qa), ga + fm * (gb - ga)))
                    cand = self._sphere_prune(cand, w * Dk, margin, leaf_at)
                    near = []
                    for k in cand:
                        if self._pair_kind[k] in seen:
                            continue
                        self._tick("collision checks")      # (per pair: one mesh query can take milliseconds)
                        d = w * Dk[k]
                        leaf = d <= leaf_at[k]
                        if 0.5 * d > _MAX_QUERY_INFLATION_M:   # a mesh query with a huge margin costs up to tens of
                            near.append(k)                     # milliseconds and would not clear the pair: halve first
                            continue
                        reqs[k].security_margin = margin[k] + (0.0 if leaf else 0.5 * d)
                        hit = pin.computeCollision(gm, gd, k)
                        reqs[k].security_margin = margin[k]
                        if hit and leaf:
                            pair = gm.collisionPairs[k]
                            seen[self._pair_kind[k]] = Violation(
                                self._pair_kind[k], f"{gm.geometryObjects[pair.first].name} within the clearance of "
                                                    f"{gm.geometryObjects[pair.second].name} (on the path)", int(st))
                        elif hit:
                            near.append(k)
                    if near:
                        stack.append((fm, f1, near))
                        stack.append((f0, fm, near))     # the earlier half first
        finally:
            for k in range(len(reqs)):
                reqs[k].security_margin = float(base[k])
        return list(seen.values())

    def _sphere_prune(self, cand: list, d: np.ndarray, margin: list, leaf_at: list) -> list:
        """Candidates (pair indices) the bounding spheres cannot clear at the current placements, with each pair's
        clearance inflated as in :meth:`path_collisions` (pieces of bound d)."""
        gd = self.geom_data
        idx = np.asarray(cand, dtype=int)
        if idx.size == 0:
            return []
        infl = np.asarray(margin)[idx] + np.where(d[idx] <= np.asarray(leaf_at)[idx], 0.0, 0.5 * d[idx])
        a, b = self._pair_a[idx], self._pair_b[idx]
        sep = np.full(idx.size, -np.inf)
        tab = self._pair_table[idx]
        slf = self._pair_sphere[idx] & ~tab
        # sphere centres of the geometries these pairs use only (near the table a few of them: this was most of a
        # check's time when every geometry's centre was placed at every piece)
        C = np.empty((len(self._sph_r), 3))
        for i in set(a[tab].tolist()) | set(a[slf].tolist()) | set(b[slf].tolist()):
            M = gd.oMg[i]
            C[i] = M.rotation @ self._sph_c[i] + M.translation
        sep[tab] = C[a[tab], 2] - self._sph_r[a[tab]] - self._table_top
        sep[slf] = np.linalg.norm(C[a[slf]] - C[b[slf]], axis=1) - self._sph_r[a[slf]] - self._sph_r[b[slf]]
        return idx[sep <= infl].tolist()

    def colliding_pairs(self, q_arm: np.ndarray, gripper: float = GRIPPER_OPEN) -> list[tuple[ViolationKind, str, str]]:
        """All pairs closer than their clearance in one configuration: (kind, geometry name 1, geometry name 2)."""
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
            if i % 16 == 0:
                self._tick("collision checks")
            if not np.all(np.isfinite(qi)):
                continue
            for kind, a, b in self.colliding_pairs(qi, float(gi)):
                if kind not in seen:
                    seen[kind] = Violation(kind, f"{a} within the clearance of {b}", i)
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
