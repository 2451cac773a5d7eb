"""Franka Emika Panda kinematics on the robot's own URDF (Pinocchio): FK of the TCP, Jacobians,
damped-least-squares IK from ee_delta chunks, and the robot's limits as documented constants.

Frames (``shared_formats.md``): ``panda_link0`` is the world frame; the TCP is the ``panda_hand`` frame
translated 0.1034 m along its +z axis (Franka's ``panda_hand_tcp``, between the fingertips). ee_delta
actions follow :mod:`semanticvla_core.actions` (the one convention): a chunk is rolled forward from the
current TCP pose with :func:`~semanticvla_core.actions.integrate_chunk` and every target pose is solved
for joint positions, warm-started from the previous step.

The IK deliberately does **not** clamp to joint limits: a target that needs a joint past its limit
comes back as a joint configuration past the limit, so the safety checker can say ``JOINT_LIMIT``
(the honest reason) instead of a vague ``IK_FAILED``.
"""
from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..actions import GRIPPER_CLOSED, GRIPPER_OPEN, integrate_chunk
from .limits import PANDA_ACCEL_LIMITS, PANDA_JERK_LIMITS, PANDA_VELOCITY_LIMITS  # noqa: F401 (re-exported)

# ---------------------------------------------------------------------------------------------- constants
PANDA_ARM_JOINTS: tuple[str, ...] = tuple(f"panda_joint{i}" for i in range(1, 8))
PANDA_FINGER_JOINTS: tuple[str, ...] = ("panda_finger_joint1", "panda_finger_joint2")
TCP_OFFSET_M = 0.1034          # panda_hand -> panda_hand_tcp along +z (franka_description, shared_formats.md)
GRIPPER_MAX_WIDTH_M = 0.08     # Franka Hand stroke; each finger joint moves 0..0.04 m
READY_Q = np.array([0.0, -np.pi / 4, 0.0, -3 * np.pi / 4, 0.0, np.pi / 2, np.pi / 4])  # franka "ready" pose
# Rest posture of the IK's redundancy resolution: the simulator's home posture (sim/env.py refines its HOME_Q by IK;
# this is that result in URDF convention, checked by a test), the posture every demonstration's IK was pulled
# toward. On a real arm, set it (safety_filter ``ik_rest_posture``) to the posture your demonstrations keep.
PANDA_REST_Q = (0.0861, -0.2599, -0.0830, -2.4322, -0.0255, 2.1740, 0.8065)

# Franka's published joint-space limits (velocity, acceleration, jerk): one place, limits.py (source named there).

DESCRIPTION_ENV = "SEMANTICVLA_PANDA_DESCRIPTION"  # override: folder holding urdf/panda.urdf and srdf/panda.srdf


def gripper_to_width(g: float | np.ndarray) -> float | np.ndarray:
    """Gripper command (0 = open, 1 = closed, per ``actions.py``) -> finger opening in metres."""
    g = np.clip(g, GRIPPER_OPEN, GRIPPER_CLOSED)
    return (1.0 - g) * GRIPPER_MAX_WIDTH_M


def width_to_gripper(width: float | np.ndarray) -> float | np.ndarray:
    """Finger opening in metres -> gripper command in [0, 1] (the inverse of :func:`gripper_to_width`)."""
    return np.clip(1.0 - np.asarray(width, dtype=np.float64) / GRIPPER_MAX_WIDTH_M, GRIPPER_OPEN, GRIPPER_CLOSED)


# ---------------------------------------------------------------------------------------------- description
@dataclass(frozen=True)
class PandaDescription:
    """Where the Panda URDF/SRDF live. ``package_dir`` resolves the ``package://example-robot-data/...`` meshes."""

    urdf: Path
    srdf: Path
    package_dir: Path


def find_panda_description(folder: str | os.PathLike | None = None) -> PandaDescription:
    """Locate the Panda description of ``example-robot-data`` (pip package, cmeel layout).

    ``folder`` (or the ``SEMANTICVLA_PANDA_DESCRIPTION`` environment variable) may name a
    ``panda_description`` folder; otherwise ``<site-packages>/cmeel.prefix/share/example-robot-data/...``
    is searched on ``sys.path``.
    """
    folder = folder or os.environ.get(DESCRIPTION_ENV)
    candidates: list[Path] = []
    if folder:
        candidates.append(Path(folder))
    roots = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path]
    for r in roots:
        if r:
            candidates.append(Path(r) / "cmeel.prefix" / "share" / "example-robot-data" / "robots" / "panda_description")
    for c in candidates:
        urdf, srdf = c / "urdf" / "panda.urdf", c / "srdf" / "panda.srdf"
        if urdf.is_file() and srdf.is_file():
            # package:// URIs are relative to the folder that holds "example-robot-data"
            return PandaDescription(urdf, srdf, c.parent.parent.parent)
    raise FileNotFoundError(
        "Panda description not found: install `example-robot-data` (pip) or set "
        f"{DESCRIPTION_ENV} to a folder with urdf/panda.urdf and srdf/panda.srdf; searched {[str(c) for c in candidates[:4]]}")


def panda_description_xml(description: PandaDescription | None = None) -> tuple[str, str]:
    """(URDF, SRDF) text of the description the safety checker loads (:func:`find_panda_description`), for ROS
    consumers: ``/robot_description`` (robot_state_publisher, RViz) and MoveIt's ``robot_description`` /
    ``robot_description_semantic``. Mesh URIs ``package://example-robot-data/...`` become ``file://`` URIs of the same
    files, so they resolve whether or not example-robot-data is a ROS package on the machine (on the same machine
    only: RViz on another computer needs the same path)."""
    d = description or find_panda_description()
    urdf = d.urdf.read_text().replace("package://", f"file://{d.package_dir.resolve()}/")
    return urdf, d.srdf.read_text()


# ---------------------------------------------------------------------------------------------- IK
@dataclass
class IKConfig:
    """Damped-least-squares IK parameters (defaults: sub-millimetre tracking of 20 Hz ee_delta steps)."""

    max_iters: int = 60              # Gauss-Newton iterations per target
    pos_tol_m: float = 1e-4          # converged when the position error is below this ...
    rot_tol_rad: float = 1e-3        # ... and the orientation error below this
    damping: float = 1e-3            # lambda of dq = J^T (J J^T + lambda^2 I)^-1 e
    max_step_rad: float = 0.2        # largest joint change of one iteration (keeps the linearisation valid)
    rot_weight: float = 0.5          # metres per radian: weight of orientation error against position error
    fail_pos_m: float = 2e-3         # a solution further than this from its target is an IK failure
    fail_rot_rad: float = 2e-2       # likewise for orientation
    # Redundancy resolution: the Panda has 7 joints for a 6-D pose, so a chunk after chunk of minimum-norm steps
    # lets the elbow wander (into joint limits, and into postures no demonstration had: the policy reads the
    # joints). Each iteration also removes this fraction of the distance to ``rest_posture`` in the Jacobian's
    # null space (the TCP pose is unaffected to first order). 0 or rest_posture None: plain damped least squares.
    rest_posture: tuple | None = PANDA_REST_Q
    nullspace_gain: float = 0.05


@dataclass
class IKResult:
    q: np.ndarray            # (7,) joint positions
    pos_err: float           # metres, |p_target - p(q)|
    rot_err: float           # radians, angle of R_target R(q)^T
    iters: int
    success: bool            # errors within IKConfig.fail_* tolerances


@dataclass
class ChunkIK:
    """IK of a whole ee_delta chunk (H steps)."""

    q: np.ndarray            # (H, 7) joint positions, step i reached at the end of action i
    target_pos: np.ndarray   # (H, 3) TCP targets from integrate_chunk (after any workspace clipping)
    target_rot: np.ndarray   # (H, 3, 3)
    gripper: np.ndarray      # (H,) gripper commands in [0, 1]
    pos_err: np.ndarray      # (H,) metres
    rot_err: np.ndarray      # (H,) radians
    success: np.ndarray      # (H,) bool


def _log3(R: np.ndarray) -> np.ndarray:
    import pinocchio as pin
    return np.asarray(pin.log3(np.asarray(R, dtype=np.float64)))


# ---------------------------------------------------------------------------------------------- model
class PandaKinematics:
    """The Panda (7 arm joints + 2 fingers) loaded from its URDF with Pinocchio.

    Joint vectors given to and returned by the public methods are the 7 arm joints
    ``panda_joint1..7`` in order; finger positions come from a gripper command when needed.
    """

    def __init__(self, description: PandaDescription | None = None, load_geometry: bool = True):
        import pinocchio as pin

        self.description = description or find_panda_description()
        d = self.description
        if load_geometry:
            self.model, self.collision_model = pin.buildModelsFromUrdf(
                str(d.urdf), package_dirs=[str(d.package_dir)], geometry_types=pin.GeometryType.COLLISION)
        else:
            self.model, self.collision_model = pin.buildModelFromUrdf(str(d.urdf)), None
        self.data = self.model.createData()
        names = [self.model.names[i] for i in range(self.model.njoints)]
        missing = [j for j in PANDA_ARM_JOINTS + PANDA_FINGER_JOINTS if j not in names]
        if missing:
            raise ValueError(f"{d.urdf}: joints {missing} missing from the URDF")
        self.arm_q_idx = np.array([self.model.joints[self.model.getJointId(j)].idx_q for j in PANDA_ARM_JOINTS])
        self.finger_q_idx = np.array([self.model.joints[self.model.getJointId(j)].idx_q for j in PANDA_FINGER_JOINTS])
        self.arm_v_idx = np.array([self.model.joints[self.model.getJointId(j)].idx_v for j in PANDA_ARM_JOINTS])
        # limits from the URDF
        self.lower = np.asarray(self.model.lowerPositionLimit)[self.arm_q_idx].copy()
        self.upper = np.asarray(self.model.upperPositionLimit)[self.arm_q_idx].copy()
        self.velocity_limits = np.asarray(self.model.velocityLimit)[self.arm_v_idx].copy()
        self.accel_limits = PANDA_ACCEL_LIMITS.copy()
        self.jerk_limits = PANDA_JERK_LIMITS.copy()
        # the TCP: our own frame on panda_hand, so it never depends on the URDF carrying panda_hand_tcp
        if not self.model.existFrame("panda_hand"):
            raise ValueError(f"{d.urdf}: frame panda_hand missing")
        hand_id = self.model.getFrameId("panda_hand")
        hand = self.model.frames[hand_id]
        offset = pin.SE3(np.eye(3), np.array([0.0, 0.0, TCP_OFFSET_M]))
        self.tcp_frame_id = self.model.addFrame(
            pin.Frame("semanticvla_tcp", hand.parentJoint, hand_id, hand.placement * offset, pin.FrameType.OP_FRAME))
        self.hand_frame_id = hand_id
        self.data = self.model.createData()
        self._pin = pin
        self._neutral = pin.neutral(self.model)

    # ------------------------------------------------------------------ configuration helpers
    def full_q(self, q_arm: np.ndarray, gripper: float = GRIPPER_OPEN) -> np.ndarray:
        """(7,) arm joints + a gripper command -> the model's full configuration vector (nq,)."""
        q_arm = np.asarray(q_arm, dtype=np.float64)
        if q_arm.shape != (7,):
            raise ValueError(f"q_arm: expected shape (7,), got {q_arm.shape}")
        q = self._neutral.copy()          # (hot path of the collision checks: no numpy scalar clipping here)
        q[self.arm_q_idx] = q_arm
        g = float(gripper)
        g = GRIPPER_OPEN if not g > GRIPPER_OPEN else (GRIPPER_CLOSED if g > GRIPPER_CLOSED else g)
        q[self.finger_q_idx] = (1.0 - g) * GRIPPER_MAX_WIDTH_M / 2.0
        return q

    def within_limits(self, q_arm: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Bool mask (..., 7): joint inside [lower + margin, upper - margin]."""
        q = np.asarray(q_arm, dtype=np.float64)
        return (q >= self.lower + margin) & (q <= self.upper - margin)

    # ------------------------------------------------------------------ forward kinematics
    def _update(self, q_arm: np.ndarray, gripper: float = GRIPPER_OPEN) -> None:
        q = self.full_q(q_arm, gripper)
        self._pin.forwardKinematics(self.model, self.data, q)
        self._pin.updateFramePlacements(self.model, self.data)

    def fk(self, q_arm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP pose in the base (world) frame: (position (3,), rotation 3x3)."""
        self._update(q_arm)
        M = self.data.oMf[self.tcp_frame_id]
        return np.array(M.translation), np.array(M.rotation)

    def frame_pose(self, q_arm: np.ndarray, frame: str) -> tuple[np.ndarray, np.ndarray]:
        """Pose of any URDF frame (e.g. ``panda_hand``, ``panda_link4``) in the base frame."""
        if not self.model.existFrame(frame):
            raise ValueError(f"frame {frame!r} not in the Panda model")
        self._update(q_arm)
        M = self.data.oMf[self.model.getFrameId(frame)]
        return np.array(M.translation), np.array(M.rotation)

    def jacobian(self, q_arm: np.ndarray) -> np.ndarray:
        """TCP Jacobian (6, 7): rows [linear velocity; angular velocity] in base-frame axes."""
        q = self.full_q(q_arm)
        J = self._pin.computeFrameJacobian(self.model, self.data, q, self.tcp_frame_id,
                                           self._pin.ReferenceFrame.LOCAL_WORLD_ALIGNED)
        return np.asarray(J)[:, self.arm_v_idx]

    # ------------------------------------------------------------------ inverse kinematics
    def ik(self, target_pos: np.ndarray, target_rot: np.ndarray, q_init: np.ndarray,
           config: IKConfig | None = None) -> IKResult:
        """Damped least squares from ``q_init`` to the TCP pose (target_pos, target_rot). No joint-limit clamping."""
        cfg = config or IKConfig()
        tp = np.asarray(target_pos, dtype=np.float64)
        tR = np.asarray(target_rot, dtype=np.float64)
        q = np.asarray(q_init, dtype=np.float64).copy()
        w = np.array([1.0, 1.0, 1.0, cfg.rot_weight, cfg.rot_weight, cfg.rot_weight])
        lam2 = cfg.damping ** 2
        rest = None
        if cfg.rest_posture is not None and cfg.nullspace_gain > 0:
            rest = np.asarray(cfg.rest_posture, dtype=np.float64).reshape(-1)
            if rest.shape != (7,) or not np.all(np.isfinite(rest)):
                raise ValueError(f"IKConfig.rest_posture: expected 7 finite joint positions, got {cfg.rest_posture!r}")
        it = 0
        for it in range(cfg.max_iters + 1):
            p, R = self.fk(q)
            e_p = tp - p
            e_r = _log3(tR @ R.T)
            pe, re = float(np.linalg.norm(e_p)), float(np.linalg.norm(e_r))
            if (pe < cfg.pos_tol_m and re < cfg.rot_tol_rad) or it == cfg.max_iters:
                break
            J = self.jacobian(q) * w[:, None]
            e = np.concatenate([e_p, e_r]) * w
            Jpinv = J.T @ np.linalg.inv(J @ J.T + lam2 * np.eye(6))
            dq = Jpinv @ e
            if rest is not None:
                dq += (np.eye(7) - Jpinv @ J) @ (cfg.nullspace_gain * (rest - q))
            m = float(np.max(np.abs(dq)))
            if m > cfg.max_step_rad:
                dq *= cfg.max_step_rad / m
            q = q + dq
        ok = bool(np.all(np.isfinite(q)) and pe <= cfg.fail_pos_m and re <= cfg.fail_rot_rad)
        return IKResult(q, pe, re, it, ok)

    def chunk_targets(self, q_current: np.ndarray, actions: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """TCP targets of an ee_delta chunk (H, 7) from the current joints: (H,3), (H,3,3), (H,) gripper."""
        p0, R0 = self.fk(q_current)
        return integrate_chunk(p0, R0, actions)

    def ik_targets(self, q_current: np.ndarray, target_pos: np.ndarray, target_rot: np.ndarray,
                   gripper: np.ndarray, config: IKConfig | None = None, tick=None) -> ChunkIK:
        """Solve a sequence of TCP targets, each warm-started from the previous solution. ``tick()`` is called
        before each target (a caller's time budget raises from it)."""
        H = int(np.asarray(target_pos).shape[0])
        Q = np.zeros((H, 7))
        pe, re, ok = np.zeros(H), np.zeros(H), np.zeros(H, dtype=bool)
        q = np.asarray(q_current, dtype=np.float64)
        for i in range(H):
            if tick is not None:
                tick()
            r = self.ik(target_pos[i], target_rot[i], q, config)
            Q[i], pe[i], re[i], ok[i] = r.q, r.pos_err, r.rot_err, r.success
            q = r.q if np.all(np.isfinite(r.q)) else q
        return ChunkIK(Q, np.asarray(target_pos, dtype=np.float64), np.asarray(target_rot, dtype=np.float64),
                       np.asarray(gripper, dtype=np.float64), pe, re, ok)

    def ik_chunk(self, q_current: np.ndarray, actions: np.ndarray, config: IKConfig | None = None) -> ChunkIK:
        """ee_delta chunk (H, 7) from joints ``q_current`` -> joint targets (H, 7) (via ``integrate_chunk``)."""
        P, R, G = self.chunk_targets(q_current, actions)
        return self.ik_targets(q_current, P, R, G, config)
