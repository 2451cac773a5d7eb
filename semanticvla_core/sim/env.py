"""The simulated Franka tabletop: MuJoCo physics, ee_delta control through IK, two cameras.

Control (one call of :meth:`FrankaTabletopEnv.step` = one control period, 20 Hz by default):
``action (7,)`` -> :func:`semanticvla_core.actions.apply_ee_delta` on the *measured* TCP pose -> target
TCP pose -> damped-least-squares IK on MuJoCo's site Jacobian (from the measured joints) -> joint targets
for the position actuators -> ``substeps`` physics steps. Gripper command 0 = open, 1 = closed.

``observation.state`` (15-D float32, :data:`STATE_NAMES`): 7 arm joint positions (rad), 2 finger
positions (m, 0 = closed, 0.04 = open each), TCP position (m, world = ``panda_link0``), TCP orientation
as the rotation vector of ``R_tcp @ R_DOWN.T`` (rad; zero when the gripper points straight down with the
fingers along world y, so the value stays far from the rotation-vector discontinuity at pi).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..actions import apply_ee_delta, clip_ee_delta
from ..cartesian import CartesianControllerConfig, cartesian_ik, limit_joint_step
from ..safety.limits import (EE_DELTA_MAX_POS_M, EE_DELTA_MAX_ROT_RAD, PANDA_ACCEL_LIMITS, PANDA_POSITION_LOWER,
                             PANDA_POSITION_UPPER, PANDA_VELOCITY_LIMITS)
from ..camera import PinholeCamera, pose_matrix
from ..robot_state import R_DOWN, STATE_NAMES, state_vector
from .scene import ARM_JOINTS, FINGER_JOINTS, PARK_X, SceneConfig, build_scene_xml

HOME_Q = np.array([0.0, -0.35, 0.0, -2.3, 0.0, 1.95, 0.785])   # refined by IK at construction
HOME_TCP = np.array([0.45, 0.0, 0.30])
FINGER_OPEN = 0.04
STATE_DIM = len(STATE_NAMES)
CAMERA_NAMES = ("agentview", "wrist")
# The gymnasium-robotics Panda MJCF zeroes joints 6 and 7 differently from Franka's URDF (and the real robot's
# joint_states): q_mujoco = q_franka + MJ_JOINT_OFFSET. Everything this class exposes or accepts is in the
# Franka convention, so the safety filter's Pinocchio model (URDF) and the simulator agree on every pose
# (test_sim_kinematics_match_urdf).
MJ_JOINT_OFFSET = np.array([0.0, 0.0, 0.0, 0.0, 0.0, -np.pi / 2, -np.pi / 4])
# MuJoCo cameras look along -z with y up; camera.py's optical frame looks along +z with y down.
_MJ_TO_OPTICAL = np.diag([1.0, -1.0, -1.0])


def _ensure_gl() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")


@dataclass
class SimConfig:
    """Simulator settings (documented defaults)."""

    control_hz: float = 20.0              # control rate of step(): dt = 1 / control_hz
    image_size: int = 128                 # agent-view image side (px); 128 px ~ 0.6 cm/px on the workspace
    wrist_image_size: int = 96            # wrist image side (px)
    render: bool = True                   # False: no renderer (physics/expert only, much faster)
    max_delta_pos: float = EE_DELTA_MAX_POS_M    # |dx,dy,dz| per step is clipped to this (m)
    max_delta_rot: float = EE_DELTA_MAX_ROT_RAD  # |rotvec| per step is clipped to this (rad), after normalizing it
    limit_rate: bool = True               # Cartesian control: joint setpoints within Franka's velocity/acceleration limits
    ik_damping: float = 0.05              # DLS damping lambda
    ik_iters: int = 8                     # IK iterations per control step
    nullspace_gain: float = 0.05          # pull toward HOME_Q in the Jacobian null space
    randomize_light: bool = True          # domain randomization of the key light
    # Joint servo gains. The wheel's gains (kp 870 / damping 100) track a 20 Hz target only ~35% per
    # period; these follow a step within about one period (measured), so an ee_delta action means
    # roughly what it says one step later.
    arm_kp: tuple = (6000.0, 6000.0, 6000.0, 6000.0, 1500.0, 1500.0, 1500.0)
    arm_damping: tuple = (100.0, 100.0, 100.0, 100.0, 15.0, 15.0, 15.0)
    finger_kp: float = 1000.0             # finger servo gain (wheel: 500); grip force ~ kp * 0.025 m per finger
    finger_damping: float = 80.0          # finger joint damping: closes in ~0.15 s without slamming into the cube
    finger_armature: float = 0.05         # kg (wheel: 5, which with any stiff servo makes the fingers ring)
    finger_friction: float = 2.0          # sliding friction of the finger pads (wheel: 1.0)
    arm_force_limit: float = 300.0        # N m; above the real 87/12 N m so damping does not cap speed at 0.9 rad/s
    interpolate_setpoint: bool = False    # joint trajectory path (step_joint_targets: the ROS JointTrajectory
                                          # controller): True moves the setpoint linearly to each period's target over
                                          # the period's physics steps, as a 1 kHz trajectory controller interpolates;
                                          # False (default, as the demonstrations ran) jumps once per period, and the
                                          # safety filter allows for the path the saturated joints then take
                                          # (SafetyConfig.step_path_tolerance). The Cartesian path (step) always jumps:
                                          # its controller starts from the measured pose and would oscillate with an
                                          # arm that lags an interpolated setpoint
    scene: SceneConfig = field(default_factory=SceneConfig)


class FrankaTabletopEnv:
    """A Panda on a table with cubes, plates, bowls and regions. Tasks (``tasks.py``) place objects.

    Use :meth:`reset` with a task and a seed; :meth:`step` with a 7-D ee_delta action. Deterministic:
    the same task, seed and actions give the same states and images.
    """

    def __init__(self, config: SimConfig | None = None):
        import mujoco

        _ensure_gl()
        self.mj = mujoco
        self.cfg = config or SimConfig()
        if self.cfg.control_hz <= 0:
            raise ValueError(f"control_hz must be positive, got {self.cfg.control_hz}")
        self.model = mujoco.MjModel.from_xml_string(build_scene_xml(self.cfg.scene))
        self.data = mujoco.MjData(self.model)
        self._ik_data = mujoco.MjData(self.model)
        m = self.model
        self.dt = 1.0 / self.cfg.control_hz
        self.substeps = max(1, int(round(self.dt / m.opt.timestep)))
        jid = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n) for n in ARM_JOINTS + FINGER_JOINTS]
        self._arm_qadr = np.array([m.jnt_qposadr[j] for j in jid[:7]])
        self._arm_dadr = np.array([m.jnt_dofadr[j] for j in jid[:7]])
        self._finger_qadr = np.array([m.jnt_qposadr[j] for j in jid[7:]])
        self._finger_dadr = np.array([m.jnt_dofadr[j] for j in jid[7:]])
        # the real Panda's joint limits (safety/limits.py), not the MJCF's: its joints 4, 6 and 7 range differently
        # (joint 7 stopped at -2.11 rad Franka, the real arm at -2.90), so a command the filter admitted could be
        # clamped in the sim into a sudden stop. Joint range and position-actuator control range, MuJoCo convention:
        for i in range(7):
            lo, hi = PANDA_POSITION_LOWER[i] + MJ_JOINT_OFFSET[i], PANDA_POSITION_UPPER[i] + MJ_JOINT_OFFSET[i]
            m.jnt_range[jid[i]] = (lo, hi)
            m.actuator_ctrlrange[i] = (lo, hi)
        self._jnt_range = np.array([m.jnt_range[j] for j in jid[:7]])
        self._tcp_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "tcp")
        self._marker_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "tcp_marker")
        ee = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "end_effector")
        if ee >= 0:
            m.site_rgba[ee, 3] = 0.0   # the wheel's own end-effector site would show in the wrist view
        self._cam_ids = {n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, n) for n in CAMERA_NAMES}
        for i in range(7):
            m.actuator_gainprm[i, 0] = self.cfg.arm_kp[i]
            m.actuator_biasprm[i, 1] = -self.cfg.arm_kp[i]
            m.dof_damping[self._arm_dadr[i]] = self.cfg.arm_damping[i]
            m.actuator_forcerange[i] = (-self.cfg.arm_force_limit, self.cfg.arm_force_limit)
        for i in (7, 8):
            m.actuator_gainprm[i, 0] = self.cfg.finger_kp
            m.actuator_biasprm[i, 1] = -self.cfg.finger_kp
        m.dof_damping[self._finger_dadr] = self.cfg.finger_damping
        m.dof_armature[self._finger_dadr] = self.cfg.finger_armature
        finger_bodies = {self.body_id("panda_leftfinger"), self.body_id("panda_rightfinger")}
        for g in range(m.ngeom):   # stiffer, grippier pads: the wheel's soft pads let cubes creep and pivot
            if m.geom_bodyid[g] in finger_bodies and m.geom_type[g] == mujoco.mjtGeom.mjGEOM_CAPSULE:
                # the wheel's crossed capsules are slanted: an off-centre cube gets pushed further off
                # along the pad (a ratchet); the flat pads added by scene.py take over their contacts
                m.geom_contype[g] = m.geom_conaffinity[g] = 0
            if m.geom_bodyid[g] in finger_bodies and m.geom_contype[g]:
                m.geom_friction[g, 0] = self.cfg.finger_friction
                m.geom_solimp[g, :3] = (0.95, 0.99, 0.001)
                m.geom_solref[g] = (0.01, 1.0)
        self._light0 = (m.light_pos[0].copy(), m.light_diffuse[0].copy())
        self._renderers: dict = {}
        self.task = None
        self.episode = None
        self.instruction = ""
        self.t = 0
        self.gripper_cmd = 0.0
        self.substep_hook = None          # callable(env) after every physics sub-step (the safety judge watches)
        self._setpoint_v = np.zeros(7)    # velocity of the arm setpoint over the last control period (rad/s)
        self._ctrl_cfg = CartesianControllerConfig(max_delta_pos=self.cfg.max_delta_pos, max_delta_rot=self.cfg.max_delta_rot,
                                                   ik_damping=self.cfg.ik_damping, ik_iters=self.cfg.ik_iters,
                                                   nullspace_gain=self.cfg.nullspace_gain, limit_rate=self.cfg.limit_rate)
        self.home_q = self._solve_home()
        self._reset_robot()

    # ------------------------------------------------------------------ the static scene
    def static_obstacles(self, min_top_m: float = 0.02, rest_allowance_m: float = 0.005) -> list:
        """The episode's fixed scene objects as obstacle boxes in the base frame (``EnvBox``): every colliding box
        geom of the placed plates and bowls, which the arm cannot push away (mocap bodies). What a planning scene
        would hold on a real robot; the sim node publishes it for the safety filter. Flat fixtures (top below
        ``min_top_m``: the 1 cm plates, the bowls' floors) are placed on: placing a cube brings the fingers' pads down
        to their surface, so their boxes stop ``rest_allowance_m`` below it (a pad may rest on a plate, not strike
        its edge: a pad kept only clear of the table was pushed down the edge of a plate into the table; with the
        whole plate as an obstacle the filter refused the placing motion and the demo's arm stood still). A flat
        box left lower than that above the table (a bowl's floor) is dropped: the table's clearance covers it. The
        cubes (movable, grasped) are not obstacles."""
        from ..safety.checker import EnvBox
        m, d = self.model, self.data
        out = []
        for g in range(m.ngeom):
            body = int(m.geom_bodyid[g])
            if m.body_mocapid[body] < 0 or m.geom_type[g] != self.mj.mjtGeom.mjGEOM_BOX:
                continue
            if not (m.geom_contype[g] or m.geom_conaffinity[g]) or d.xpos[body][0] < PARK_X + 1.0:
                continue                                              # visual only, or parked out of the scene
            R, c, size = d.geom_xmat[g].reshape(3, 3), d.geom_xpos[g].copy(), 2 * m.geom_size[g].copy()
            if c[2] + np.abs(R[2]) @ m.geom_size[g] < min_top_m:       # flat: placed on
                if abs(R[2, 2]) < 0.999:
                    continue                                          # (a tilted flat box: not cut, left out)
                size[2] -= rest_allowance_m
                c[2] -= rest_allowance_m / 2
                if c[2] + size[2] / 2 < rest_allowance_m - 1e-9:
                    continue                                          # (as low as that, the table's clearance holds)
            out.append(EnvBox.from_matrix(self.mj.mj_id2name(m, self.mj.mjtObj.mjOBJ_GEOM, g) or f"geom{g}",
                                          c, size, R))
        return out

    # ------------------------------------------------------------------ robot state
    def joint_positions(self) -> np.ndarray:
        """Arm joint positions (7,) in rad, Franka/URDF convention (see MJ_JOINT_OFFSET)."""
        return self.data.qpos[self._arm_qadr] - MJ_JOINT_OFFSET

    def joint_targets(self) -> np.ndarray:
        """The arm servos' current joint targets (7,), Franka/URDF convention (what the last step commanded)."""
        return self.data.ctrl[:7] - MJ_JOINT_OFFSET

    def finger_positions(self) -> np.ndarray:
        return self.data.qpos[self._finger_qadr].copy()

    def tcp_pose(self, data=None) -> tuple[np.ndarray, np.ndarray]:
        """(position (3,), rotation 3x3) of the TCP (``panda_hand`` + 0.1034 m along +z) in the world frame."""
        d = self.data if data is None else data
        return d.site_xpos[self._tcp_site].copy(), d.site_xmat[self._tcp_site].reshape(3, 3).copy()

    def state(self) -> np.ndarray:
        """The 15-D ``observation.state`` (``semanticvla_core.robot_state``: one definition for sim and robot)."""
        p, R = self.tcp_pose()
        return state_vector(self.joint_positions(), self.finger_positions(), p, R)

    # ------------------------------------------------------------------ cameras
    def camera(self, name: str) -> PinholeCamera:
        """The :class:`PinholeCamera` of ``agentview`` or ``wrist`` (current pose, optical-frame convention)."""
        if name not in self._cam_ids:
            raise ValueError(f"unknown camera {name!r}; expected one of {CAMERA_NAMES}")
        cid = self._cam_ids[name]
        size = self.cfg.image_size if name == "agentview" else self.cfg.wrist_image_size
        T = pose_matrix(self.data.cam_xmat[cid].reshape(3, 3) @ _MJ_TO_OPTICAL, self.data.cam_xpos[cid])
        return PinholeCamera.from_fovy(size, size, float(self.model.cam_fovy[cid]), T)

    def wrist_mount(self) -> np.ndarray:
        """T_tcp_cam (4x4): the wrist camera's optical frame in the TCP frame (rigid: the camera rides on the hand)."""
        p, R = self.tcp_pose()
        return np.linalg.inv(pose_matrix(R, p)) @ self.camera("wrist").T_world_cam

    def cameras(self) -> dict[str, PinholeCamera]:
        return {n: self.camera(n) for n in CAMERA_NAMES}

    def _renderer(self, size: int):
        if size not in self._renderers:
            r = self.mj.Renderer(self.model, size, size)
            r.scene.flags[self.mj.mjtRndFlag.mjRND_SHADOW] = 0
            r.scene.flags[self.mj.mjtRndFlag.mjRND_REFLECTION] = 0
            r.scene.flags[self.mj.mjtRndFlag.mjRND_SKYBOX] = 0
            self._renderers[size] = r
        return self._renderers[size]

    def render(self, name: str = "agentview", size: int | None = None) -> np.ndarray:
        """Render one camera: uint8 (size, size, 3), row 0 at the top (OpenCV convention)."""
        if name not in self._cam_ids:
            raise ValueError(f"unknown camera {name!r}; expected one of {CAMERA_NAMES}")
        size = size or (self.cfg.image_size if name == "agentview" else self.cfg.wrist_image_size)
        r = self._renderer(size)
        r.update_scene(self.data, camera=self._cam_ids[name])
        return r.render().copy()

    def set_marker_visible(self, visible: bool) -> None:
        """Show a bright magenta sphere at the TCP (camera-model checks)."""
        self.model.site_rgba[self._marker_site] = (1, 0, 1, 1) if visible else (1, 0, 1, 0)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers = {}

    # ------------------------------------------------------------------ IK
    def solve_ik(self, pos: np.ndarray, rot: np.ndarray, q0: np.ndarray | None = None,
                 iters: int | None = None) -> np.ndarray:
        """Joint targets (7,), Franka/URDF convention, putting the TCP at (pos, rot); q0 likewise."""
        q0_mj = None if q0 is None else np.asarray(q0, dtype=np.float64) + MJ_JOINT_OFFSET
        return self._solve_ik_mj(pos, rot, q0_mj, iters) - MJ_JOINT_OFFSET

    def _fk_jac(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """TCP pose and Jacobian (6, 7) at arm joints q (Franka/URDF convention) on MuJoCo's kinematics."""
        mj, m, d = self.mj, self.model, self._ik_data
        d.qpos[self._arm_qadr] = np.asarray(q, dtype=np.float64) + MJ_JOINT_OFFSET
        mj.mj_kinematics(m, d)
        mj.mj_comPos(m, d)
        jacp, jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        mj.mj_jacSite(m, d, jacp, jacr, self._tcp_site)
        p, R = self.tcp_pose(d)
        return p, R, np.vstack([jacp[:, self._arm_dadr], jacr[:, self._arm_dadr]])

    def _solve_ik_mj(self, pos: np.ndarray, rot: np.ndarray, q0: np.ndarray | None = None,
                     iters: int | None = None) -> np.ndarray:
        """The Cartesian controller's IK (:func:`semanticvla_core.cartesian.cartesian_ik`, the one the safety filter
        models) on MuJoCo's kinematics; joints in MuJoCo's convention in and out, within the joint ranges."""
        self._ik_data.qpos[:] = self.data.qpos
        q0_mj = self.data.qpos[self._arm_qadr] if q0 is None else np.asarray(q0, dtype=np.float64)
        q = cartesian_ik(self._fk_jac, q0_mj - MJ_JOINT_OFFSET, pos, rot, self.home_q - MJ_JOINT_OFFSET,
                         self._jnt_range[:, 0] - MJ_JOINT_OFFSET, self._jnt_range[:, 1] - MJ_JOINT_OFFSET,
                         self._ctrl_cfg, iters=iters)
        return q + MJ_JOINT_OFFSET

    def _solve_home(self) -> np.ndarray:
        self.home_q = HOME_Q.copy()
        self.data.qpos[self._arm_qadr] = HOME_Q
        return self._solve_ik_mj(HOME_TCP, R_DOWN, q0=HOME_Q, iters=200)

    # ------------------------------------------------------------------ stepping
    def _apply_ctrl(self, q_target: np.ndarray, gripper: float) -> None:
        self.data.ctrl[:7] = q_target
        self.data.ctrl[7:9] = FINGER_OPEN * (1.0 - float(np.clip(gripper, 0.0, 1.0)))
        self.gripper_cmd = float(np.clip(gripper, 0.0, 1.0))

    def step_joint_targets(self, q_target: np.ndarray, gripper: float) -> None:
        """Advance one control period toward joint targets (7,) in the Franka/URDF convention (the ROS sim
        node's JointTrajectory path)."""
        q = np.asarray(q_target, dtype=np.float64)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            raise ValueError(f"q_target must be 7 finite joint positions, got shape {q.shape}")
        self._step_internal(q + MJ_JOINT_OFFSET, gripper, self.cfg.interpolate_setpoint)

    def _step_internal(self, q_mj: np.ndarray, gripper: float, interpolate: bool = False) -> None:
        """One control period toward joint targets in MuJoCo's own joint convention."""
        before = self.data.ctrl[:7].copy()
        self._apply_ctrl(np.clip(q_mj, self._jnt_range[:, 0], self._jnt_range[:, 1]), gripper)
        target = self.data.ctrl[:7].copy()
        self._setpoint_v = (target - before) / self.dt
        if self.substep_hook is None and not interpolate:
            self.mj.mj_step(self.model, self.data, nstep=self.substeps)
        else:
            n = self.substeps
            for i in range(n):
                if interpolate:
                    self.data.ctrl[:7] = before + (i + 1) / n * (target - before)
                self.mj.mj_step(self.model, self.data)
                if self.substep_hook is not None:
                    self.substep_hook(self)
        self.t += 1

    def clip_action(self, action: np.ndarray) -> np.ndarray:
        """The controller's per-step clipping (:func:`~semanticvla_core.actions.clip_ee_delta`: rotation vector
        normalized first, then translation and rotation magnitudes clipped)."""
        return clip_ee_delta(action, self.cfg.max_delta_pos, self.cfg.max_delta_rot)

    def joint_velocities(self) -> np.ndarray:
        """Measured arm joint velocities (7,) in rad/s (what /joint_states reports)."""
        return self.data.qvel[self._arm_dadr].copy()

    def finger_velocities(self) -> np.ndarray:
        """Measured finger joint velocities (2,) in m/s."""
        return self.data.qvel[self._finger_dadr].copy()

    def setpoint_velocity(self) -> np.ndarray:
        """Velocity (7,) of the arm's joint setpoint over the last control period (rad/s)."""
        return self._setpoint_v.copy()

    def step(self, action: np.ndarray, render: bool | None = None) -> dict:
        """Apply one 7-D ee_delta action; returns the next observation (see :meth:`observe`)."""
        a = self.clip_action(action)
        p, R = self.tcp_pose()
        p_t, R_t, g = apply_ee_delta(p, R, a)
        p_t[2] = max(p_t[2], 0.0)   # never ask the IK to go below the table top
        q_t = self._solve_ik_mj(p_t, R_t)
        if self.cfg.limit_rate:     # the setpoint moves within Franka's joint velocity / acceleration limits
            q_t = limit_joint_step(self.data.ctrl[:7], self._setpoint_v, q_t, self.dt)
        self._step_internal(q_t, g)
        return self.observe(render)

    def observe(self, render: bool | None = None) -> dict:
        """Observation dict: ``state`` (15,), ``tcp_pos``, ``tcp_rot``, ``gripper``, and the images when rendering."""
        p, R = self.tcp_pose()
        obs = {"state": self.state(), "tcp_pos": p, "tcp_rot": R, "joint_positions": self.joint_positions(),
               "gripper": self.gripper_cmd, "instruction": self.instruction, "t": self.t}
        if self.cfg.render if render is None else render:
            obs["agentview"] = self.render("agentview")
            obs["wrist"] = self.render("wrist")
        return obs

    # ------------------------------------------------------------------ reset / objects
    def _reset_robot(self) -> None:
        mj = self.mj
        mj.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm_qadr] = self.home_q
        self.data.qpos[self._finger_qadr] = FINGER_OPEN
        self._apply_ctrl(self.home_q, 0.0)
        self._setpoint_v = np.zeros(7)
        self.t = 0
        mj.mj_forward(self.model, self.data)

    def body_id(self, name: str) -> int:
        i = self.mj.mj_name2id(self.model, self.mj.mjtObj.mjOBJ_BODY, name)
        if i < 0:
            raise ValueError(f"no body named {name!r} in the scene")
        return i

    def geom_id(self, name: str) -> int:
        i = self.mj.mj_name2id(self.model, self.mj.mjtObj.mjOBJ_GEOM, name)
        if i < 0:
            raise ValueError(f"no geom named {name!r} in the scene")
        return i

    def set_free_body(self, name: str, pos: np.ndarray, yaw: float = 0.0) -> None:
        j = self.model.body_jntadr[self.body_id(name)]
        a = self.model.jnt_qposadr[j]
        self.data.qpos[a:a + 3] = pos
        self.data.qpos[a + 3:a + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        self.data.qvel[self.model.jnt_dofadr[j]:self.model.jnt_dofadr[j] + 6] = 0.0

    def set_mocap_body(self, name: str, pos: np.ndarray, yaw: float = 0.0) -> None:
        mid = self.model.body_mocapid[self.body_id(name)]
        self.data.mocap_pos[mid] = pos
        self.data.mocap_quat[mid] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        b = self.body_id(name)
        return self.data.xpos[b].copy(), self.data.xmat[b].reshape(3, 3).copy()

    def set_light(self, rng: np.random.Generator | None) -> None:
        pos0, dif0 = self._light0
        if rng is None or not self.cfg.randomize_light:
            self.model.light_pos[0], self.model.light_diffuse[0] = pos0, dif0
            return
        self.model.light_pos[0] = pos0 + rng.uniform(-0.3, 0.3, 3)
        self.model.light_diffuse[0] = dif0 * rng.uniform(0.8, 1.2)

    def reset(self, task, seed: int, instruction_kind: str = "direct", split: str = "train",
              instruction: str | None = None, render: bool | None = None) -> dict:
        """Reset to an episode of ``task`` (a :class:`~semanticvla_core.sim.tasks.Task` or its name).

        The seed fixes object layout, colours, labels, light and the instruction drawn from the
        ``(instruction_kind, split)`` set; ``instruction`` overrides the text (custom phrasings).
        """
        from .tasks import get_task

        self.task = get_task(task) if isinstance(task, str) else task
        rng = np.random.default_rng(seed)
        self._reset_robot()
        self.episode = self.task.sample(rng)
        self.task.apply(self, self.episode, rng)
        self.set_light(rng)
        self.mj.mj_forward(self.model, self.data)
        # let objects settle
        for _ in range(4):
            self._step_internal(self.home_q, 0.0)
        self.t = 0
        self.instruction = instruction if instruction is not None else self.task.instruction(
            self.episode, instruction_kind, split, rng)
        return self.observe(render)

    def success(self) -> bool:
        """The task's success predicate evaluated on the simulator state."""
        if self.task is None:
            raise ValueError("success() called before reset()")
        return bool(self.task.success(self, self.episode))
