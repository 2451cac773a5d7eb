"""Scripted experts from privileged simulator state, and exact end-effector traces.

The expert is a small state machine over waypoints (TCP pose + gripper command). Each step it emits the
7-D ee_delta action from the *measured* TCP pose toward the current waypoint, through
:func:`semanticvla_core.actions.ee_delta_between` (the inverse of what the simulator applies), at most
``max_step`` metres / ``max_rot`` radians and within Franka's limits (:mod:`semanticvla_core.safety.limits`):
a trapezoidal speed profile that speeds up from rest and brakes toward each waypoint with bounded joint
velocities and accelerations (``VEL_FRACTION``, ``ACCEL_FRACTION`` of the limits), so that a safety filter
checking the demonstrations' action chunks admits them at every speed. Traces: the TCP projected through the
agent-view :class:`PinholeCamera` every frame, cut into windows by :func:`semanticvla_core.traces.trace_windows`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..actions import ee_delta_between, matrix_to_rotvec, rotvec_to_matrix
from ..safety.limits import (CARTESIAN_ACCEL_LIMIT_M_S2, CARTESIAN_ROT_ACCEL_LIMIT_RAD_S2,
                             CARTESIAN_ROT_VELOCITY_LIMIT_RAD_S, CARTESIAN_VELOCITY_LIMIT_M_S, PANDA_ACCEL_LIMITS,
                             PANDA_VELOCITY_LIMITS)
from ..traces import DEFAULT_WINDOW, trace_windows
from .env import R_DOWN
from .scene import BOWL_WALL_H, CUBE_HALF, PLATE_HALF_H, REGION_HALF

GRASP_Z = CUBE_HALF + 0.027       # TCP height when grasping a cube on the table (finger pads reach 4.9 cm below)
HOVER_Z = 0.16
CARRY_Z = 0.18
PUSH_YAW_OFFSET = 0.0         # hand y (finger axis) along the push: the outer face of one finger pushes
PUSH_Z = CUBE_HALF + 0.027     # TCP height when pushing: pad bottoms ~1 cm above the table, below the cube top
NOISE_BURST_P = 0.06          # action noise comes in bursts: each open-gripper step starts one with this probability,
NOISE_BURST_STEPS = (3, 8)    # lasting this many steps (inclusive), one random offset added to every step of it
NOISE_ROT_PER_M = 4.0         # rotation noise std [rad] per metre of translation noise std
MISS_P = 0.25                 # with action noise: chance per episode of one missed grasp (_GraspBlunder)
MISS_OFFSET = (0.025, 0.04)   # how far [m] the missed grasp lands beside the cube, across the finger axis
MISS_LIFT_STEPS = (3, 8)      # how many 1 cm steps the empty hand rises after closing
REPLAN_DRIFT = 0.01           # the target cube moved this far [m] from where the grasp was planned: plan it again
HELD_XY = 0.03                # the cube counts as held while its centre is within this of the TCP in xy [m] ...
HELD_DZ = 0.05                # ... and at most this far below it (grasping: GRASP_Z - CUBE_HALF = 2.7 cm)
GRASP_PHASE = 2               # index of the closing waypoint in _pick_place_plan (lift, carry, lower follow)
MAX_RECOVERIES = 3            # re-grasps per episode before the expert gives up recovering
# Motion limits of the expert's commands, as fractions of Franka's (safety/limits.py), on finite differences at the
# control period (as the safety checker measures them). The joint setpoints a command will produce are predicted with
# the simulator's own IK (accelerations) and its damped Jacobian pseudo-inverse (velocities, braking distances); the
# rest of the limit is margin for what the prediction misses (the IK's null-space drift, servo tracking, another
# IK's redundancy resolution in a checker). Measured (benchmarks/bench_expert_limits.py, seeds 0-19, speeds
# 0.01-0.05): executed joint accelerations up to ~0.7-0.85 of the limits, velocities up to ~0.8.
LIMIT_MOTION = True           # False: the expert before these limits (full speed from rest, proportional stops)
VEL_FRACTION = 0.7            # joint (and Cartesian) velocities of the commanded motion: at most this fraction
ACCEL_FRACTION = 0.6          # joint (and Cartesian) accelerations: at most this fraction
BRAKE_SHARE = 0.7             # braking toward a waypoint is planned with this share of the acceleration budget


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ R_DOWN


def cube_yaw(R: np.ndarray) -> float:
    """Yaw of a cube's body frame, folded to [-pi/4, pi/4) (cubes look the same every 90 degrees)."""
    yaw = np.arctan2(R[1, 0], R[0, 0])
    return float((yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


@dataclass
class Waypoint:
    pos: np.ndarray
    yaw: float
    gripper: float
    tol: float = 0.008
    hold: int = 0        # extra steps to stay once reached (gripper motions)
    compensate: bool = False   # shift the target by the held cube's offset in the hand (privileged)


class ScriptedExpert:
    """Solves every task family of ``tasks.py`` from privileged state. Call :meth:`act` once per step."""

    def __init__(self, env, max_step: float = 0.03, max_rot: float = 0.2, gain: float = 1.0,
                 carry_step: float = 0.02, recover: bool = True):
        """``recover``: pick-and-place recovers like an operator would: when the target cube was pushed before
        the grasp closed, the grasp is planned again from where the cube lies now; when the hand lifts
        without the cube (a missed or lost grasp), it opens, rises and grasps again (at most
        ``MAX_RECOVERIES`` times). Demonstrations then show how to get back from a miss, which a learned
        policy needs and clean demonstrations never contain.

        ``max_step`` / ``carry_step`` [m] and ``max_rot`` [rad] cap one step's motion; the motion limits
        (``limit_motion``, ``VEL_FRACTION``, ``ACCEL_FRACTION``) may keep it slower."""
        self.env, self.max_step, self.max_rot, self.gain = env, max_step, max_rot, gain
        self.carry_step, self.recover = carry_step, recover
        self.limit_motion = LIMIT_MOTION
        self.push_step = 0.012       # m per step while in contact (0.24 m/s): the cube slides, never flies
        self.reset()

    def reset(self) -> None:
        self.phase, self.held, self.plan, self.done = 0, 0, None, False
        self.push_state = "approach"
        self.recoveries, self._planned_xy, self._pending = 0, None, False
        self._last = np.zeros(6)     # the previous action's translation and rotation (commanded velocity * dt)
        self._last_dq = np.zeros(7)  # the joint setpoint change [rad] predicted for that action

    def _target_cube(self) -> tuple[np.ndarray, np.ndarray]:
        """(position, rotation) of the episode's target cube."""
        ep = self.env.episode
        return self.env.body_pose(ep.cubes[ep.target].body)

    # ------------------------------------------------------------------ waypoint plans
    def _pick_place_plan(self) -> list:
        env, ep = self.env, self.env.episode
        cp, cR = self._target_cube()
        yaw = cube_yaw(cR)
        if ep.family == "stack":
            bp, bR = env.body_pose(ep.cubes[ep.dest].body)
            dest_xy, place_z, place_yaw = bp[:2], bp[2] + 2 * CUBE_HALF + GRASP_Z - CUBE_HALF + 0.006, yaw
        elif ep.family == "pick_place_bowl":
            dest_xy, place_z, place_yaw = ep.dests[ep.dest].pos[:2], BOWL_WALL_H + GRASP_Z + 0.01, yaw
        else:
            dest_xy, place_z, place_yaw = ep.dests[ep.dest].pos[:2], 2 * PLATE_HALF_H + GRASP_Z + 0.006, yaw
        cxy = cp[:2]
        self._planned_xy = cxy.copy()
        return [
            Waypoint(np.r_[cxy, HOVER_Z], yaw, 0.0, tol=0.005),
            Waypoint(np.r_[cxy, GRASP_Z], yaw, 0.0, tol=0.006),
            Waypoint(np.r_[cxy, GRASP_Z], yaw, 1.0, tol=0.01, hold=4),
            Waypoint(np.r_[cxy, CARRY_Z], yaw, 1.0, tol=0.02),
            Waypoint(np.r_[dest_xy, CARRY_Z], place_yaw, 1.0, tol=0.012, compensate=True),
            Waypoint(np.r_[dest_xy, place_z], place_yaw, 1.0, tol=0.006, compensate=True),
            Waypoint(np.r_[dest_xy, place_z], place_yaw, 0.0, tol=0.02, hold=3),
            Waypoint(np.r_[dest_xy, CARRY_Z], place_yaw, 0.0, tol=0.02),
        ]

    def _toward(self, pos: np.ndarray, yaw: float, gripper: float, max_step: float | None = None) -> np.ndarray:
        p, R = self.env.tcp_pose()
        a = ee_delta_between(p, R, pos, yaw_matrix(yaw), gripper)
        a[:3] *= self.gain
        a[:6] = self._limited_step(a[:6], max_step or self.max_step)
        return a

    def _jacobian_pinv(self) -> np.ndarray:
        """(7, 6): arm joint motion per TCP motion [translation; rotation, world axes] at the measured joints (the
        damped pseudo-inverse of the TCP Jacobian, the simulator's IK's)."""
        env = self.env
        m, d = env.model, env.data
        jacp, jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        env.mj.mj_jacSite(m, d, jacp, jacr, env._tcp_site)
        J = np.vstack([jacp[:, env._arm_dadr], jacr[:, env._arm_dadr]])
        lam = float(getattr(env.cfg, "ik_damping", 0.05))
        return J.T @ np.linalg.inv(J @ J.T + lam * lam * np.eye(6))

    def _limited_step(self, err: np.ndarray, vmax: float) -> np.ndarray:
        """The next step [translation (3) m; rotation vector (3) rad] toward a goal ``err`` away.

        Translation and rotation each move toward the goal at most ``vmax`` / ``max_rot`` per step, at most the
        remaining distance, and at most the speed from which braking still stops at the goal (braking by ``dv`` per
        step from ``s = k dv`` covers ``s + (s - dv) + ... + dv = s^2 / (2 dv) + s / 2``; ``dv``: a share,
        ``BRAKE_SHARE``, of what the acceleration budget allows along the way, by the Jacobian). Together they are
        slowed down to the velocity budget (``VEL_FRACTION`` of the joint velocity limits, by the Jacobian, and of the
        Cartesian ones). The step then moves from the previous one toward that wanted step as far as the
        acceleration budget allows (``ACCEL_FRACTION`` of the Cartesian limits, and of the joint limits for the
        joint setpoints the simulator's IK will command: speeding up, braking, turning, and the joint acceleration a
        straight line needs as the arm's Jacobian changes along it). The previous step is the expert's own command
        (its recorded action), not the executed motion: pushes of ``rollout_expert(action_noise=)`` and a
        ``_GraspBlunder`` move the hand, the expert's actions stay smooth and steer back."""
        err = np.asarray(err, dtype=np.float64)
        if not self.limit_motion:   # saturated proportional steps
            step = err.copy()
            for sl, cap in ((slice(0, 3), vmax), (slice(3, 6), self.max_rot)):
                n = np.linalg.norm(step[sl])
                if n > cap:
                    step[sl] *= cap / n
            self._last = step
            return step.copy()
        env, dt = self.env, self.env.dt
        Jp = self._jacobian_pinv()
        v_budget = PANDA_VELOCITY_LIMITS * dt * VEL_FRACTION          # joint motion per step [rad]
        a_budget = PANDA_ACCEL_LIMITS * dt * dt * ACCEL_FRACTION      # change of that per step [rad]
        parts = ((slice(0, 3), vmax, CARTESIAN_VELOCITY_LIMIT_M_S, CARTESIAN_ACCEL_LIMIT_M_S2),
                 (slice(3, 6), self.max_rot, CARTESIAN_ROT_VELOCITY_LIMIT_RAD_S, CARTESIAN_ROT_ACCEL_LIMIT_RAD_S2))

        def usage(d6: np.ndarray, budget: np.ndarray) -> float:
            """How many times ``budget`` the joint motion of the TCP motion ``d6`` takes (its worst joint)."""
            return float(np.max(np.abs(Jp @ d6) / budget))

        want = np.zeros(6)
        for sl, cap, v_cart, a_cart in parts:
            r = float(np.linalg.norm(err[sl]))
            if r < 1e-12:
                continue
            u = np.zeros(6)
            u[sl] = err[sl] / r
            dv = BRAKE_SHARE * min(a_cart * dt * dt * ACCEL_FRACTION, 1.0 / max(usage(u, a_budget), 1e-12))
            s = min(cap, v_cart * dt * VEL_FRACTION, r, dv * (np.sqrt(0.25 + 2.0 * r / dv) - 0.5))
            want[sl] = u[sl] * s
        over = usage(want, v_budget)
        if over > 1.0:
            want /= over
        change = want - self._last
        over = 0.0
        for sl, _, _, a_cart in parts:
            over = max(over, float(np.linalg.norm(change[sl])) / (a_cart * dt * dt * ACCEL_FRACTION))
        lam_max = 1.0 / over if over > 1.0 else 1.0
        # joint setpoint changes of the next step [rad], from the controller's own IK: continuing the last step
        # (lam = 0) or taking the wanted one (lam = 1), in between linearly
        p, R = env.tcp_pose()
        q = env.joint_positions()
        dq0 = env.solve_ik(p + self._last[:3], rotvec_to_matrix(self._last[3:]) @ R) - q
        dq1 = env.solve_ik(p + want[:3], rotvec_to_matrix(want[3:]) @ R) - q
        lams = np.linspace(0.0, 1.0, 21) * lam_max
        acc = np.abs(dq0[None] + lams[:, None] * (dq1 - dq0)[None] - self._last_dq[None]) / a_budget
        worst = acc.max(axis=1)
        ok = np.flatnonzero(worst <= 1.0)
        k = int(ok[-1]) if ok.size else int(np.argmin(worst))
        self._last = self._last + lams[k] * change
        self._last_dq = dq0 + lams[k] * (dq1 - dq0)
        return self._last.copy()

    def _reached(self, wp: Waypoint) -> bool:
        p, R = self.env.tcp_pose()
        rot_err = np.linalg.norm(matrix_to_rotvec(yaw_matrix(wp.yaw) @ R.T))
        return bool(np.linalg.norm(p - wp.pos) < wp.tol and rot_err < 0.08)

    def _replan(self, open_first: bool) -> None:
        """Grasp again: (open in place,) rise to hover height, then plan the grasp from wherever the cube has
        come to rest by then (the plan is made when the rise is done, so a cube still sliding counts once)."""
        p, R = self.env.tcp_pose()
        yaw = cube_yaw(R)
        pre = [Waypoint(p.copy(), yaw, 0.0, tol=0.02, hold=3)] if open_first else []
        if p[2] < HOVER_Z - 0.03:
            pre.append(Waypoint(np.r_[p[:2], HOVER_Z], yaw, 0.0, tol=0.02))
        self.recoveries += 1
        self.phase, self.held = 0, 0
        self.plan, self._pending = (pre, True) if pre else (self._pick_place_plan(), False)

    def _check_recovery(self) -> None:
        if (not self.recover or self._pending or self.recoveries >= MAX_RECOVERIES
                or self.env.episode.family == "push_region"):
            return
        cube, tcp = self._target_cube()[0], self.env.tcp_pose()[0]
        if self.phase < GRASP_PHASE:
            # approaching with the gripper open: the cube was pushed away from the planned grasp
            if np.linalg.norm(cube[:2] - self._planned_xy) > REPLAN_DRIFT:
                self._replan(open_first=False)
        elif GRASP_PHASE < self.phase <= GRASP_PHASE + 3:
            # lifting / carrying / lowering with the gripper closed: is the cube in the hand?
            held = np.linalg.norm(cube[:2] - tcp[:2]) < HELD_XY and tcp[2] - cube[2] < HELD_DZ
            if not held:
                self._replan(open_first=True)

    def _act_waypoints(self) -> np.ndarray:
        if self.plan is None or (self._pending and self.phase >= len(self.plan)):
            self.plan, self.phase, self.held, self._pending = self._pick_place_plan(), 0, 0, False
        self._check_recovery()
        if self.phase >= len(self.plan):
            self.done = True
            wp = self.plan[-1]
            return self._toward(wp.pos, wp.yaw, wp.gripper)
        wp = self.plan[self.phase]
        if wp.compensate:
            cube = self._target_cube()[0]
            tcp = self.env.tcp_pose()[0]
            off = np.clip(tcp[:2] - cube[:2], -0.04, 0.04)
            wp = Waypoint(np.r_[wp.pos[:2] + off, wp.pos[2]], wp.yaw, wp.gripper, wp.tol, wp.hold)
        if self._reached(wp):
            fingers_moving = abs(self.env.data.qvel[self.env._finger_dadr]).max() > 0.005
            if self.held >= wp.hold and not (wp.hold and fingers_moving):
                self.phase, self.held = self.phase + 1, 0
                return self._act_waypoints()
            self.held += 1
        # slower while carrying (gripper closed): less swing of the cube in the grasp
        return self._toward(wp.pos, wp.yaw, wp.gripper, self.carry_step if wp.gripper > 0.5 else None)

    # ------------------------------------------------------------------ pushing (closed loop)
    def _act_push(self) -> np.ndarray:
        env, ep = self.env, self.env.episode
        cube = self._target_cube()[0][:2]
        goal = ep.dests[ep.dest].pos[:2]
        to_goal = goal - cube
        dist = np.linalg.norm(to_goal)
        p, _ = env.tcp_pose()
        if np.all(np.abs(to_goal) < 0.5 * REGION_HALF) or self.push_state == "retreat":
            self.push_state = "retreat"
            self.done = p[2] > 0.12
            return self._toward(np.r_[p[:2], 0.16], self._push_yaw if hasattr(self, "_push_yaw") else 0.0, 1.0)
        d = to_goal / dist
        yaw = float(np.arctan2(d[1], d[0]))
        yaw = (yaw + PUSH_YAW_OFFSET + np.pi / 2) % np.pi - np.pi / 2
        self._push_yaw = yaw
        behind = cube - d * (CUBE_HALF + 0.035)
        # where is the TCP relative to the push line?
        rel = p[:2] - cube
        along = float(rel @ d)
        lateral = float(abs(rel @ np.array([-d[1], d[0]])))
        if self.push_state == "approach":
            if np.linalg.norm(p[:2] - behind) > 0.012:
                return self._toward(np.r_[behind, 0.12], yaw, 1.0)
            self.push_state = "lower"
        if self.push_state == "lower":
            tgt = np.r_[behind, PUSH_Z]
            if np.linalg.norm(p - tgt) > 0.008:
                return self._toward(tgt, yaw, 1.0)
            self.push_state = "push"
        # push: stay on the line behind the cube and advance
        if lateral > 0.02 or along > -CUBE_HALF:
            self.push_state = "approach"
            return self._toward(np.r_[p[:2], 0.12], yaw, 1.0)
        tgt = cube - d * (CUBE_HALF + 0.012) + d * min(0.02, dist)
        return self._toward(np.r_[tgt, PUSH_Z], yaw, 1.0, self.push_step)

    def act(self, obs: dict | None = None) -> np.ndarray:
        """The next 7-D ee_delta action (``obs`` unused: the expert reads the simulator state)."""
        if self.env.episode is None:
            raise ValueError("ScriptedExpert.act() before env.reset()")
        if self.env.episode.family == "push_region":
            return self._act_push()
        return self._act_waypoints()


class _GraspBlunder:
    """One missed grasp executed in place of the expert's motion (its recorded actions stay the expert's):
    just above the grasp height the hand slides 2.5-4 cm beside the cube across the finger axis, closes on
    nothing and rises a few cm. The recorded actions at those states say what the expert would do there:
    open and go back down to the cube, i.e. the recovery a learned policy needs after its own misses."""

    def __init__(self, rng: np.random.Generator):
        self.offset = float(rng.uniform(*MISS_OFFSET)) * (1.0 if rng.random() < 0.5 else -1.0)
        self.lift = int(rng.integers(MISS_LIFT_STEPS[0], MISS_LIFT_STEPS[1] + 1))
        self.script: list | None = None

    def executed(self, expert: "ScriptedExpert", a: np.ndarray) -> np.ndarray:
        if self.script is None:
            p, R = expert.env.tcp_pose()
            if expert.phase != GRASP_PHASE - 1 or expert._pending or p[2] > GRASP_Z + 0.02:   # descending
                return a
            d = R[:2, 0] / max(np.linalg.norm(R[:2, 0]), 1e-9) * self.offset   # across the finger axis (hand y)
            n = int(np.ceil(abs(self.offset) / 0.01))
            step = np.r_[d / n, 0.0, 0.0, 0.0, 0.0, 0.0]
            self.script = ([step] * n + [np.r_[np.zeros(6), 1.0]] * 2
                           + [np.r_[0.0, 0.0, 0.01, 0.0, 0.0, 0.0, 1.0]] * self.lift)
        if not self.script:
            return a
        return self.script.pop(0).astype(a.dtype)


def tcp_track(points_world: np.ndarray, camera) -> tuple[np.ndarray, np.ndarray]:
    """Project per-frame TCP positions (T, 3) through a PinholeCamera: (T, 2) normalized uv, (T,) visible."""
    uv, vis = camera.project_normalized(np.asarray(points_world, dtype=np.float64))
    return np.clip(uv, 0.0, 1.0).astype(np.float32), vis


def rollout_expert(env, task, seed: int, instruction_kind: str = "direct", split: str = "train",
                   render: bool | None = None, max_steps: int | None = None, extra_steps: int = 3,
                   window: int = DEFAULT_WINDOW, speed: float | None = None, action_noise: float = 0.0) -> dict:
    """Run the expert for one episode; returns frames, actions, states, TCP positions, traces and success.

    ``speed``: cap of the TCP's travel per step [m] for free motion and carrying (default: the expert's own,
    0.03 / 0.02 m, i.e. 0.6 / 0.4 m/s at 20 Hz). A slower expert gives longer episodes: more frames per
    demonstration and smaller motions per action chunk, which a learned closed-loop policy can follow. Franka's
    joint limits keep the expert slower than the cap where they bind (speeding up and braking at bounded
    acceleration, see ``VEL_FRACTION``), so above ~0.02 m the cap changes little.

    ``action_noise``: per-step std [m] of random pushes added to the *executed* translation while the gripper
    is commanded open (rotation: ``NOISE_ROT_PER_M`` times as much, in rad), in bursts of 3-8 steps
    (``NOISE_BURST_*``; the recipe's 0.01 displaces the hand by a few cm), seeded by ``seed``. The recorded action stays
    the expert's own, computed from the measured pose (DART-style demonstrations: the data then show how to
    get back on course from states a learned policy drifts into, e.g. a hand a few cm short of the cube,
    which clean demonstrations never visit). With probability ``MISS_P`` per episode the executed motion also
    makes one grasp miss (``_GraspBlunder``), labelled with the expert's recovery (open, go back to the cube).

    The expert recovers from pushed cubes and missed grasps (``ScriptedExpert(recover=True)``); ``recoveries``
    counts its re-plans.

    Keys: ``instruction``, ``actions`` (T, 7), ``states`` (T, 15), ``tcp`` (T, 3), ``images`` {cam: (T,H,W,3)}
    when rendering, ``trace`` (T, W, 2), ``trace_present`` (T,), ``success``, ``steps``. Frame t holds the
    observation *before* action t.
    """
    obs = env.reset(task, seed, instruction_kind, split, render=render)
    expert = ScriptedExpert(env)
    if speed is not None:
        if not speed > 0:
            raise ValueError(f"rollout_expert: speed must be > 0 m/step, got {speed}")
        expert.max_step, expert.carry_step = float(speed), min(expert.carry_step, float(speed))
    if not action_noise >= 0:
        raise ValueError(f"rollout_expert: action_noise must be >= 0 m, got {action_noise}")
    rng = np.random.default_rng([int(seed), 0xDA27]) if action_noise > 0 else None
    sd = np.r_[np.full(3, action_noise), np.full(3, action_noise * NOISE_ROT_PER_M)]
    push, push_left = np.zeros(6), 0
    grasps = env.episode.family != "push_region"
    blunder = _GraspBlunder(rng) if rng is not None and grasps and rng.random() < MISS_P else None
    limit = max_steps or env.episode.max_steps
    acts, states, tcps, imgs = [], [], [], {"agentview": [], "wrist": []}
    success, after, streak = False, 0, 0
    for _ in range(limit):
        a = expert.act(obs)
        states.append(obs["state"])
        tcps.append(obs["tcp_pos"])
        for k in imgs:
            if k in obs:
                imgs[k].append(obs[k])
        acts.append(a.astype(np.float32))
        if rng is not None and a[6] < 0.5:
            if push_left == 0 and rng.random() < NOISE_BURST_P:
                push_left = int(rng.integers(NOISE_BURST_STEPS[0], NOISE_BURST_STEPS[1] + 1))
                push = rng.normal(0.0, 1.0, 6) * sd
            if push_left > 0:
                a, push_left = np.r_[a[:6] + push, a[6:]], push_left - 1
        else:
            push_left = 0
        if blunder is not None:
            a = blunder.executed(expert, a)
        obs = env.step(a, render=render)
        ok = env.success()
        success |= ok
        streak = streak + 1 if ok else 0
        if success and expert.done:
            after += 1
        if after >= extra_steps or streak >= 20:
            break
    cam = env.camera("agentview")
    uv, vis = tcp_track(np.array(tcps), cam)
    win, present = trace_windows(uv, vis, window)
    out = {"instruction": env.instruction, "actions": np.array(acts), "states": np.array(states),
           "tcp": np.array(tcps), "trace": win, "trace_present": present, "success": success,
           "steps": len(acts), "camera": cam, "recoveries": expert.recoveries}
    if imgs["agentview"]:
        out["images"] = {k: np.array(v) for k, v in imgs.items() if v}
    return out
