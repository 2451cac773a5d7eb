"""Fuzz campaign of the safety filter, judged by an independent judge (benchmarks/safety_judge.py).

    MUJOCO_GL=egl .venv/bin/python benchmarks/safety_fuzz.py --chunks 600 --modes stepwise,cartesian,trajectory \
        --seed 0 --workers 2 --out /tmp/safety_fuzz.json

Every generated chunk (``--chunks`` per mode, split over the categories by ``CATEGORY_WEIGHTS``) starts from a
realistic simulator state restored exactly (MuJoCo's integration state + the env's own attributes), goes through
the system under test (:func:`system_under_test`: the one adapter to the safety filter's executor and the sim's
arm) in each execution mode, and the judge watches every physics sub-step of the execution: the admitted chunk's
rows plus ``HOLD_TICKS`` more periods, or, for a rejected chunk, the hold it commands.

Categories (each a seeded generator): ``table_dive``, ``self_collision``, ``workspace``, ``fast``, ``random``,
``expert`` (exact expert action windows at speeds 0.01/0.02/0.03: the false-rejection denominator), ``malformed``
(bad Python inputs: any exception escaping the system under test is a failure), ``timing`` (256-row unreachable
chunks: check time). One case is reproduced with ``--only CATEGORY:INDEX`` (same ``--seed``), which prints its
chunk, the filter's verdict and the judge's details.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
_HERE = Path(__file__).resolve().parent
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from machine import cpu_model  # noqa: E402
from safety_judge import (FRANKA_DQ_MAX, FRANKA_Q_MAX, FRANKA_Q_MIN, REPORTED_CRITERIA, UNSAFE_CRITERIA,  # noqa: E402
                          JudgeConfig, SafetyJudge, attach, contacts_of, detach, workspace_from_config)

MODES = ("stepwise", "cartesian", "trajectory")
CATEGORIES = ("table_dive", "self_collision", "workspace", "fast", "random", "expert", "malformed", "timing")
CATEGORY_WEIGHTS = {"table_dive": 0.19, "self_collision": 0.12, "workspace": 0.12, "fast": 0.14, "random": 0.13,
                    "expert": 0.18, "malformed": 0.08, "timing": 0.04}
EE = "ee_delta_xyz_rotvec_gripper"
JOINT = "joint_position"
PERIOD_S = 0.05
HOLD_TICKS = 3               # periods judged after the last row (and the length of a judged hold)
MAX_WATCH_PERIODS = 600      # an admitted chunk is watched for at most this many periods (30 s)
WARMUP_ROWS = 8              # an expert start state is reached through the system under test over this many rows
CLOCK0_NS = 10**12
EXPERT_SPEEDS = (0.01, 0.02, 0.03)
PAD_BELOW_TCP = 0.043        # the sim's finger pads reach this far below the TCP (hand pointing down; measured)
EXPERT_TASKS = ("pick_place_plate", "pick_place_bowl", "stack", "push_region")
ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
_MEASURED = object()         # "use the measured value" (None is itself a malformed input)


# ================================================================================================ state snapshots
_ENV_SKIP = {"model", "data", "_ik_data", "_renderers", "mj", "substep_hook", "cfg", "task", "_cam_ids", "_light0"}


@dataclass
class Snapshot:
    """An exactly restorable simulator state: MuJoCo's integration state (qpos, qvel, act, ctrl, time, warm start,
    mocap...), the env's own attributes (t, gripper_cmd, setpoint velocity...), the arm ctrl one period earlier."""

    state: np.ndarray
    attrs: dict
    ctrl_prev: np.ndarray
    tcp: np.ndarray
    key: str = ""
    info: dict = field(default_factory=dict)


def take_snapshot(env, ctrl_prev=None, key: str = "", **info) -> Snapshot:
    import mujoco
    m, d = env.model, env.data
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    st = np.empty(mujoco.mj_stateSize(m, spec))
    mujoco.mj_getState(m, d, st, spec)
    attrs = {}
    for k, v in vars(env).items():
        if k in _ENV_SKIP or callable(v):
            continue
        try:
            attrs[k] = copy.deepcopy(v)
        except Exception:  # noqa: BLE001 - an attribute that cannot be copied is not state we can restore
            pass
    cp = np.asarray(d.ctrl[:7] if ctrl_prev is None else ctrl_prev, dtype=np.float64).copy()
    return Snapshot(st, attrs, cp, d.site_xpos[env._tcp_site].copy(), key, info)


def restore(env, snap: Snapshot) -> None:
    import mujoco
    m, d = env.model, env.data
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    mujoco.mj_setState(m, d, snap.state, spec)
    mujoco.mj_forward(m, d)                      # positions, contacts, sites of this state
    mujoco.mj_setState(m, d, snap.state, spec)   # ... and the warm start exactly as it was
    for k, v in snap.attrs.items():
        setattr(env, k, copy.deepcopy(v))


# ================================================================================================ system under test
def _node_params() -> dict:
    import yaml
    return yaml.safe_load((_HERE.parent / "config" / "franka.yaml").read_text())["safety_filter"]["ros__parameters"]


CHECK_BUDGET_S: float | None = None     # --check-budget: override the node's check_budget_s (None: config/franka.yaml)
SCENE = True     # the checker knows the scene's fixed objects (what the sim node publishes to the safety node); --no-scene


def _checker_config():
    """The safety node's configuration (config/franka.yaml safety_filter) as semanticvla_ros/safety_node.py builds it,
    with the sim's gripper model where the checker has one (the launch's sim:=true). Fields the checker of the day
    does not have are left out (the config is being reworked)."""
    import dataclasses
    from dataclasses import replace

    from semanticvla_core.safety.checker import SafetyConfig
    from semanticvla_core.safety.kinematics import IKConfig
    p = _node_params()
    have = {f.name for f in dataclasses.fields(SafetyConfig)}
    kw = dict(max_chunk_age_s=p["max_chunk_age_s"], workspace_min=tuple(p["workspace_min"]),
              workspace_max=tuple(p["workspace_max"]), table_z=p["table_z"], table_policy=p["table_policy"],
              table_clip_max_m=p["table_clip_max_m"], env_boxes=json.loads(p["env_boxes_json"]),
              ik=replace(IKConfig(), rest_posture=tuple(p["ik_rest_posture"]), nullspace_gain=p["ik_nullspace_gain"]))
    for name in ("gripper_table_margin_m", "tcp_table_margin_m"):
        if name in have:
            kw[name] = p["table_margin"]
            break
    if "gripper" in have:
        kw["gripper"] = "sim"
    for name in ("joint_limit_policy", "joint_limit_clip_max_rad"):
        if name in p:
            kw[name] = p[name]
    if "check_budget_s" in have and "check_budget_s" in p:
        kw["check_budget_s"] = p["check_budget_s"]
    if "check_budget_s" in have and CHECK_BUDGET_S is not None:
        kw["check_budget_s"] = float(CHECK_BUDGET_S)
    return SafetyConfig(**{k: v for k, v in kw.items() if k in have})


class _SUTBase:
    """What the campaign needs of the system under test: ``reset()`` at a restored state, ``admit(chunk, now)`` ->
    SafetyResult, ``tick(now)`` -> (command kind, seconds in the filter) running one control period of physics,
    ``holding`` (the arm is on a hold command). Exceptions of the filter's code propagate (the campaign counts
    them); ``harness`` errors (this adapter's own) are wrapped in HarnessError."""

    def __init__(self, env, mode: str, checker):
        self.env, self.mode, self.checker = env, mode, checker
        self.holding = False
        self.before_physics = lambda: None      # called once per tick, after the command, before the physics
        self._dadr = np.array([env.model.jnt_dofadr[env.model.joint(n).id] for n in ARM_JOINTS])

    def measured(self):
        """What the safety node reads from /joint_states: arm joints, gripper (from the fingers), joint velocities."""
        from semanticvla_core.robot_state import gripper_from_fingers
        env = self.env
        return (env.joint_positions(), gripper_from_fingers(env.finger_positions()),
                np.asarray(env.data.qvel[self._dadr], dtype=np.float64).copy())

    def _inputs(self, q, g, dq):
        mq, mg, mdq = self.measured()
        return (mq if q is _MEASURED else q), (mg if g is _MEASURED else g), (mdq if dq is _MEASURED else dq)


class HarnessError(RuntimeError):
    pass


class LegacySUT(_SUTBase):
    """The code before the one executor (commit a017eb2 and earlier; run it from a checkout of that commit with
    ``--sut legacy``): ``StepwiseExecutor`` (stepwise / cartesian) or the whole-chunk check (trajectory), and the sim
    node's arm as semanticvla_ros/sim_node.py ran it (TrajectoryFollower + env.step for Cartesian commands). The
    safety node's publishing is reproduced: one-point trajectories for rows, hold trajectories for refusals."""

    def __init__(self, env, mode, checker):
        super().__init__(env, mode, checker)
        from semanticvla_core.safety.stepwise import StepwiseExecutor
        from semanticvla_core.trajectory import TrajectoryFollower
        self.ex = StepwiseExecutor(checker) if mode != "trajectory" else None
        self.follower = TrajectoryFollower()
        self.period_ns = int(round(PERIOD_S * 1e9))

    def reset(self) -> None:
        if self.ex is not None:
            self.ex.reset()
        self.follower.hold(self.env.joint_targets())
        self.delta, self.grip, self.holding, self.hold_q = None, float(self.env.gripper_cmd), False, None

    def _hold(self, now_ns: int) -> None:
        q = self.env.joint_positions()
        if self.hold_q is None or np.abs(self.hold_q - q).max() > 0.02:   # the node's hold_recapture_rad
            self.hold_q = q
        self.follower.set_trajectory(list(ARM_JOINTS), [self.hold_q.tolist()], [self.checker.config.hold_time_s],
                                     now_ns, list(ARM_JOINTS))
        self.delta, self.holding = None, True

    def _traj(self, res, now_ns: int) -> None:
        self.follower.set_trajectory(list(ARM_JOINTS), np.asarray(res.positions).tolist(),
                                     np.asarray(res.times_from_start).tolist(), now_ns, list(ARM_JOINTS))
        self.grip, self.holding, self.hold_q = float(res.gripper[0]), False, None

    def admit(self, chunk, now_ns, q=_MEASURED, g=_MEASURED, dq=_MEASURED):
        q, g, dq = self._inputs(q, g, dq)
        if self.ex is not None:
            res = self.ex.admit(chunk, q, g, now_ns, dq)
        else:
            res = self.checker.check_chunk(chunk, q, g, now_ns=now_ns, dq_current=dq)
        try:
            if res.is_hold:
                self._hold(now_ns)
            elif self.ex is None:
                self._traj(res, now_ns)
        except Exception as e:  # noqa: BLE001
            raise HarnessError(f"{type(e).__name__}: {e}") from e
        return res

    def tick(self, now_ns, q=_MEASURED, g=_MEASURED, dq=_MEASURED):
        kind, t_f = "none", 0.0
        if self.ex is not None:
            q, g, dq = self._inputs(q, g, dq)
            t0 = time.perf_counter()
            row = self.ex.step(q, g, now_ns, dq)
            cmd = None
            cart = self.mode == "cartesian" and self.ex.chunk is not None and self.ex.chunk.action_space == EE
            if row is not None and not row.result.is_hold and cart:
                cmd = self.ex.cartesian_command(row, q)
            t_f = time.perf_counter() - t0
            try:
                if row is not None:
                    if row.result.is_hold:
                        self._hold(now_ns)
                        kind = "hold"
                    elif cmd is not None:
                        self.delta, self.grip, self.holding, kind = cmd, float(cmd[6]), False, "ee_delta"
                    else:
                        self._traj(row.result, now_ns)
                        kind = "joint_points"
            except Exception as e:  # noqa: BLE001
                raise HarnessError(f"{type(e).__name__}: {e}") from e
        self.before_physics()
        try:
            if self.delta is not None:
                self.env.step(self.delta, render=False)
                self.follower.hold(self.env.joint_targets())
                self.delta = None
            else:
                self.env.step_joint_targets(self.follower.target(now_ns + self.period_ns), self.grip)
        except Exception as e:  # noqa: BLE001
            raise HarnessError(f"{type(e).__name__}: {e}") from e
        return ("hold" if self.holding and kind == "none" else kind), t_f


class ExecutorSUT(_SUTBase):
    """The one executor (semanticvla_core/safety/execution.py) and the sim node's arm (semanticvla_core/sim/arm.py
    SimArm), wired as semanticvla_ros/safety_node.py wires them: a rejected chunk or a refused row -> the executor's
    brake command is sent (``_hold``), every other command as it comes."""

    def __init__(self, env, mode, checker):
        super().__init__(env, mode, checker)
        from semanticvla_core.safety import execution
        from semanticvla_core.sim.arm import SimArm
        Executor = getattr(execution, "ChunkExecutor", None) or getattr(execution, "SafetyExecutor")
        p = _node_params()
        try:
            self.ex = Executor(checker, mode, period_s=PERIOD_S, rest_posture=tuple(p["ik_rest_posture"]),
                               recapture_rad=p["hold_recapture_rad"])
        except TypeError:
            self.ex = Executor(checker, mode, period_s=PERIOD_S)
        self.arm = SimArm(env)

    def reset(self) -> None:
        self.ex.reset()
        self.arm.reset()
        self.holding = False

    def _send(self, cmd) -> str:
        if cmd is None:                # (the node's _send: nothing to publish, the last verified command finishes)
            return "none"
        try:
            self.arm.command(cmd)      # a ValueError here: the filter sent a command the arm cannot take (counted)
        except Exception as e:  # noqa: BLE001
            e._fuzz_where = "arm.command"
            raise
        self.holding = cmd.kind == "hold"
        return cmd.kind

    def admit(self, chunk, now_ns, q=_MEASURED, g=_MEASURED, dq=_MEASURED):
        q, g, dq = self._inputs(q, g, dq)
        res = self.ex.admit(chunk, q, g, now_ns, dq)
        keeps = getattr(self.ex, "keeps_running", None)
        if res.is_hold and not (keeps and keeps(res)):     # the node's _hold: clear, brake, send (out of time: the
                                                           # running chunk goes on, as the node does)
            self.ex.clear()
            try:
                cmd = self.ex.brake(q, g, now_ns, res.reasons)
            except Exception as e:  # noqa: BLE001
                e._fuzz_where = "admit->brake"
                raise
            self._send(cmd)
        return res

    def tick(self, now_ns, q=_MEASURED, g=_MEASURED, dq=_MEASURED):
        q, g, dq = self._inputs(q, g, dq)
        t0 = time.perf_counter()
        cmd = self.ex.tick(q, g, now_ns, dq)
        late = getattr(self.ex, "row_late", None)
        if cmd is not None and cmd.kind == "hold" and not (late and late(cmd)):
            self.ex.clear()            # (the node's on_step: a row only late, not refused, keeps its chunk)
        t_f = time.perf_counter() - t0
        kind = "none" if cmd is None else self._send(cmd)
        self.before_physics()
        self.arm.tick(now_ns)
        return ("hold" if self.holding and kind == "none" else kind), t_f


def executor_available() -> bool:
    root = _HERE.parent / "semanticvla_core"
    return (root / "safety" / "execution.py").exists() and (root / "sim" / "arm.py").exists()


def _resolve(which: str) -> str:
    if which == "auto":
        return "executor" if executor_available() else "legacy"
    return which


def system_under_test(env, mode: str, checker, which: str = "auto"):
    """THE adapter to the system under test (one place to switch): ``executor`` = ChunkExecutor + SimArm,
    ``legacy`` = StepwiseExecutor / check_chunk + the sim node's follower, ``auto`` = executor when it exists."""
    return (ExecutorSUT if _resolve(which) == "executor" else LegacySUT)(env, mode, checker)


def make_checker():
    from semanticvla_core.safety.checker import BuiltinSafetyChecker
    return BuiltinSafetyChecker(_checker_config())


# ================================================================================================ start states
def _drive(env, target_p, target_R=None, steps: int = 80, tol: float = 0.004, max_step: float = 0.03):
    """Move the TCP to a pose with plain env.step (the sim's own controller, no filter); True when reached."""
    from semanticvla_core.actions import ee_delta_between
    ctrl_prev = env.data.ctrl[:7].copy()
    for _ in range(steps):
        p, R = env.tcp_pose()
        Rt = R if target_R is None else target_R
        a = ee_delta_between(p, R, target_p, Rt, env.gripper_cmd)
        n = np.linalg.norm(a[:3])
        if n > max_step:
            a[:3] *= max_step / n
        n = np.linalg.norm(a[3:6])
        if n > 0.2:
            a[3:6] *= 0.2 / n
        if np.linalg.norm(p - target_p) < tol and np.linalg.norm(a[3:6]) < 0.02:
            break
        ctrl_prev = env.data.ctrl[:7].copy()
        env.step(a, render=False)
    p, _ = env.tcp_pose()
    return bool(np.linalg.norm(p - target_p) < 2 * tol), ctrl_prev


def _settle(env, n: int = 6):
    """Hold still a few periods (the setpoint at rest: the start state's velocity going in is zero)."""
    for _ in range(n):
        env.step_joint_targets(env.joint_targets(), env.gripper_cmd)
    return env.data.ctrl[:7].copy()


def _clean(env) -> bool:
    import mujoco
    m = env.model
    d = mujoco.MjData(m)
    mujoco.mj_copyData(d, m, env.data)
    mujoco.mj_forward(m, d)
    if contacts_of(m, d):
        return False
    p = d.site_xpos[env._tcp_site]
    lo, hi = workspace_from_config()
    return bool(np.all(p >= np.asarray(lo) + 0.002) and np.all(p <= np.asarray(hi) - 0.002))


def _rot_tilt(rng, max_tilt: float) -> np.ndarray:
    from semanticvla_core.actions import rotvec_to_matrix
    from semanticvla_core.robot_state import R_DOWN
    ax = rng.normal(size=3)
    ax[2] *= 0.3
    ax /= np.linalg.norm(ax)
    yaw = rng.uniform(-0.8, 0.8)
    Rz = rotvec_to_matrix(np.array([0.0, 0.0, yaw]))
    return rotvec_to_matrix(ax * rng.uniform(0, max_tilt)) @ Rz @ R_DOWN


class StatePool:
    """Realistic start states, built deterministically from a seed: ``home`` (after env.reset on tasks/seeds),
    ``expert`` (every state along scripted-expert episodes at speeds 0.01/0.02/0.03, with the actions taken there;
    only states with the TCP inside the workspace box and no robot contact, there and over the warm-up window before
    them, are picked),
    ``low`` (finger pads 0.4-5 cm above the table, hand tilted up to 0.45 rad), ``edge`` (TCP 1-4 cm inside a
    workspace face)."""

    def __init__(self, env, seed: int, n_home: int = 6, n_low: int = 14, n_edge: int = 14, expert_stride: int = 1,
                 expert_tasks=EXPERT_TASKS, speeds=EXPERT_SPEEDS, log=None):
        from semanticvla_core.sim.expert import ScriptedExpert
        rng = np.random.default_rng([seed, 7001])
        self.home, self.low, self.edge = [], [], []
        self.expert: list[dict] = []     # {"speed", "task", "snaps": [Snapshot], "actions": (T, 7)}
        tasks = list(expert_tasks)
        t0 = time.perf_counter()
        for i in range(n_home):
            task = tasks[i % len(tasks)]
            env.reset(task, int(rng.integers(10**6)), render=False)
            self.home.append(take_snapshot(env, key=f"home{i}", task=task))
        lo, hi = (np.asarray(x) for x in workspace_from_config())
        tries = 0
        while len(self.low) < n_low and tries < 4 * n_low:
            tries += 1
            env.reset(tasks[tries % len(tasks)], int(rng.integers(10**6)), render=False)
            target = np.array([rng.uniform(0.35, 0.65), rng.uniform(-0.25, 0.25), 0.12])
            R = _rot_tilt(rng, 0.45)
            ok, _ = _drive(env, target, R)
            target[2] = PAD_BELOW_TCP + rng.uniform(0.004, 0.05)     # finger pads 4-50 mm above the table
            ok, _ = _drive(env, target, R, max_step=0.01)
            cp = _settle(env)
            if ok and _clean(env):
                self.low.append(take_snapshot(env, cp, key=f"low{len(self.low)}"))
        tries = 0
        while len(self.edge) < n_edge and tries < 4 * n_edge:
            tries += 1
            env.reset(tasks[tries % len(tasks)], int(rng.integers(10**6)), render=False)
            face = int(rng.integers(5))           # x-, x+, y-, y+, z+ (z- is the table: table_dive)
            p = np.array([rng.uniform(0.3, 0.65), rng.uniform(-0.35, 0.35), rng.uniform(0.1, 0.5)])
            m = rng.uniform(0.01, 0.04)
            ax, side = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1)][face]
            p[ax] = (lo[ax] + m) if side == 0 else (hi[ax] - m)
            R = _rot_tilt(rng, 0.3)
            ok, _ = _drive(env, p, R, steps=120)
            cp = _settle(env)
            if ok and _clean(env):
                self.edge.append(take_snapshot(env, cp, key=f"edge{len(self.edge)}", face=face))
        for si, speed in enumerate(speeds):
            for ti, task in enumerate(tasks):
                env.reset(task, int(rng.integers(10**6)), render=False)
                ex = ScriptedExpert(env)
                ex.max_step, ex.carry_step = float(speed), min(ex.carry_step, float(speed))
                obs = env.observe(render=False)
                snaps, acts = [], []
                ctrl_prev = env.data.ctrl[:7].copy()
                for t in range(env.episode.max_steps):
                    a = ex.act(obs)
                    if t % expert_stride == 0:
                        tcp = env.data.site_xpos[env._tcp_site]
                        clean = bool(np.all(tcp >= lo + 0.002) and np.all(tcp <= hi - 0.002)
                                     and not contacts_of(env.model, env.data))
                        snaps.append((t, take_snapshot(env, ctrl_prev, key=f"expert{speed}:{task}:{t}", clean=clean)))
                    acts.append(np.asarray(a, dtype=np.float64))
                    ctrl_prev = env.data.ctrl[:7].copy()
                    obs = env.step(a, render=False)
                    if ex.done and env.success():
                        break
                # a start state must be clean, and so must the states of the warm-up window before it
                clean = [sn.info["clean"] for _, sn in snaps]
                for k, (t, sn) in enumerate(snaps):
                    sn.info["start_ok"] = all(clean[max(0, k - WARMUP_ROWS):k + 1])
                self.expert.append({"speed": speed, "task": task, "snaps": snaps, "actions": np.array(acts)})
        self.expert_at = {s.key: (r, t) for r, e in enumerate(self.expert) for t, s in e["snaps"]}
        self._by_key = {s.key: s for s in self.home + self.low + self.edge + self.expert_states()}
        self.build_s = time.perf_counter() - t0
        if log:
            log(f"state pool: {len(self.home)} home, {len(self.low)} low, {len(self.edge)} edge, "
                f"{sum(len(e['snaps']) for e in self.expert)} expert states ({len(self.expert)} episodes) "
                f"in {self.build_s:.1f} s")

    def expert_states(self):
        return [s for e in self.expert for _, s in e["snaps"]]

    def pick(self, rng, kinds) -> Snapshot:
        pools = {"home": self.home, "low": self.low, "edge": self.edge}
        k = kinds[int(rng.integers(len(kinds)))]
        if k == "expert":
            e = self.expert[int(rng.integers(len(self.expert)))]
            ok = [s for _, s in e["snaps"] if s.info.get("start_ok", True)]
            return ok[int(rng.integers(len(ok)))]
        p = pools[k] or self.home
        return p[int(rng.integers(len(p)))]

    def by_key(self, key: str) -> Snapshot:
        return self._by_key[key]


# ================================================================================================ generators
@dataclass
class Case:
    """One generated input: the chunk's fields (or raw malformed values) and where it starts."""

    category: str
    index: int
    sub: str
    start: str                              # Snapshot key
    actions: object = None
    dt: object = PERIOD_S
    action_space: object = EE
    joint_names: object = field(default_factory=list)
    stamp: object = _MEASURED               # _MEASURED: stamped "now"
    now: object = _MEASURED
    q: object = _MEASURED
    g: object = _MEASURED
    dq: object = _MEASURED
    direct_chunk: object = None             # a non-ActionChunkData "chunk"
    expert: dict | None = None              # expert windows: {"speed", "task", "t"}

    def describe(self) -> dict:
        def short(v):
            if v is _MEASURED:
                return "measured"
            if isinstance(v, np.ndarray):
                return {"ndarray": list(v.shape), "dtype": str(v.dtype)}
            if isinstance(v, float) and not math.isfinite(v):
                return repr(v)
            try:
                json.dumps(v)
                return v
            except TypeError:
                return repr(v)[:80]
        a = self.actions
        shape = list(np.shape(a)) if isinstance(a, (np.ndarray, list)) else type(a).__name__
        return {"category": self.category, "index": self.index, "sub": self.sub, "start": self.start,
                "actions_shape": shape, "dt": short(self.dt), "action_space": short(self.action_space),
                "stamp": short(self.stamp), "now": short(self.now), "q": short(self.q), "g": short(self.g),
                "dq": short(self.dq), "expert": self.expert}


def _ee_rows(H, dpos, drot=None, grip=0.0):
    A = np.zeros((H, 7))
    A[:, :3] = dpos
    if drot is not None:
        A[:, 3:6] = drot
    A[:, 6] = grip
    return A


def gen_table_dive(rng, pool: StatePool, i: int) -> Case:
    """Toward / into the table: the chunk ends with the finger pads between 3 cm below and 3 cm above the table top
    (hand pointing down), straight down, tilting, skimming sideways; dt up to 0.2 s."""
    snap = pool.pick(rng, ["low", "low", "low", "expert", "home"])
    H = int(rng.choice([4, 8, 8, 16]))
    dt = float(rng.choice([0.05, 0.05, 0.1, 0.15, 0.2]))
    sub = ["dive", "dive_tilt", "skim", "dive_long"][int(rng.integers(4))]
    z = snap.tcp[2]
    grip = float(rng.choice([0.0, 1.0]))
    final = PAD_BELOW_TCP + rng.uniform(-0.03, 0.03)       # TCP height at the end of the chunk
    dz = (final - z) / H
    if sub in ("dive", "dive_long"):
        A = _ee_rows(H, [rng.normal(0, 0.004), rng.normal(0, 0.004), dz], None, grip)
        if sub == "dive_long":
            dt = 0.2
    elif sub == "dive_tilt":
        rot = rng.normal(0, 1, 3) * np.r_[1, 1, 0.3]
        rot = rot / np.linalg.norm(rot) * rng.uniform(0.03, 0.15)
        A = _ee_rows(H, [rng.normal(0, 0.005), rng.normal(0, 0.005), dz], rot, grip)
    else:                                             # skim: sideways at table height, tilted
        d = rng.normal(0, 1, 2)
        d = d / np.linalg.norm(d) * rng.uniform(0.005, 0.03)
        rot = rng.normal(0, 0.06, 3)
        A = _ee_rows(H, [d[0], d[1], dz], rot, grip)
    return Case("table_dive", i, sub, snap.key, A, dt)


_SELF_POSTURES: dict = {}


def _self_colliding_target(env, q0: np.ndarray, rng, pool_cache: dict) -> np.ndarray | None:
    """From joints q0, march along a random direction in the wrist joints (4..7, sometimes 2) until MuJoCo reports a
    self-contact (static check): that posture (Franka convention) or None."""
    import mujoco

    from semanticvla_core.sim.env import MJ_JOINT_OFFSET
    m = env.model
    d = pool_cache.get("scratch")
    if d is None:
        d = pool_cache["scratch"] = mujoco.MjData(m)
    qadr = np.array([m.jnt_qposadr[m.joint(n).id] for n in ARM_JOINTS])
    direction = np.zeros(7)
    direction[3:7] = rng.normal(0, 1, 4) * np.r_[0.5, 1.0, 1.5, 0.5]
    if rng.random() < 0.3:
        direction[1] = rng.normal(0, 0.5)
    direction /= np.linalg.norm(direction)
    mujoco.mj_copyData(d, m, env.data)
    for s in np.arange(0.05, 3.0, 0.05):
        q = np.clip(q0 + s * direction, FRANKA_Q_MIN + 0.02, FRANKA_Q_MAX - 0.02)
        d.qpos[qadr] = q + MJ_JOINT_OFFSET
        mujoco.mj_forward(m, d)
        c = contacts_of(m, d)
        if any(x.startswith("self") for x in c):
            return q
        if c:          # a table contact first: not this direction
            return None
    return None


def gen_self_collision(rng, pool: StatePool, i: int, env=None, cache=None) -> Case:
    """Folding the wrist: large rotations (bend joint 6, bring the hand toward link 5) as ee_delta rows, or joint
    chunks toward a posture where MuJoCo reports a self-contact (85-120 % of the way, within the velocity limits)."""
    snap = pool.pick(rng, ["home", "expert", "edge"])
    sub = ["wrist_fold", "wrist_roll_fold", "joint_toward"][int(rng.integers(3))]
    if sub == "joint_toward" and env is not None:
        restore(env, snap)
        q0 = env.joint_positions()
        for _ in range(8):
            qc = _self_colliding_target(env, q0, rng, cache)
            if qc is not None:
                break
        if qc is not None:
            frac = rng.uniform(0.85, 1.2)
            target = q0 + frac * (qc - q0)
            speed = rng.uniform(0.3, 0.9) * FRANKA_DQ_MAX          # within the velocity limits
            dur = float(np.max(np.abs(target - q0) / speed))
            H = int(np.clip(math.ceil(dur / PERIOD_S), 2, 64))
            fr = np.arange(1, H + 1)[:, None] / H
            s = 0.5 - 0.5 * np.cos(np.pi * fr)                      # smooth start and stop
            Q = q0 + s * (target - q0)
            return Case("self_collision", i, sub, snap.key, Q, PERIOD_S, JOINT, list(ARM_JOINTS))
        sub = "wrist_fold"
    H = int(rng.choice([8, 12, 16]))
    ax = rng.normal(0, 1, 3)
    if sub == "wrist_fold":
        ax[2] *= 0.2                                 # tilting the hand: bends joint 6
    ax /= np.linalg.norm(ax)
    rot = ax * rng.uniform(0.15, 0.3)
    A = _ee_rows(H, rng.normal(0, 0.01, 3), rot, float(rng.choice([0.0, 1.0])))
    if sub == "wrist_roll_fold":
        A[:, 3:6] += np.array([0, 0, rng.choice([-1, 1]) * 0.2])
    return Case("self_collision", i, sub, snap.key, A, PERIOD_S)


def gen_workspace(rng, pool: StatePool, i: int) -> Case:
    snap = pool.pick(rng, ["edge", "edge", "edge", "home"])
    lo, hi = (np.asarray(x) for x in workspace_from_config())
    p = snap.tcp
    # toward the nearest face, past it by 0..8 cm
    gaps = np.r_[p - lo, hi - p]
    gaps[2] = np.inf                                 # the table is table_dive's
    f = int(np.argmin(gaps + rng.uniform(0, 0.05, 6)))
    ax, sgn = f % 3, (-1.0 if f < 3 else 1.0)
    over = rng.uniform(0.0, 0.08)
    H = int(rng.choice([4, 8, 8, 16]))
    step = np.zeros(3)
    step[ax] = sgn * (gaps[f] + over) / H
    step += rng.normal(0, 0.003, 3)
    sub = ["push_out", "push_out_rot"][int(rng.integers(2))]
    rot = rng.normal(0, 0.05, 3) if sub == "push_out_rot" else None
    return Case("workspace", i, sub, snap.key, _ee_rows(H, step, rot), float(rng.choice([0.05, 0.05, 0.1])))


def gen_fast(rng, pool: StatePool, i: int, env=None) -> Case:
    snap = pool.pick(rng, ["home", "expert", "expert", "low"])
    subs = ["big_translation", "rotvec_near_2pi", "rotvec_over_pi", "zigzag", "tiny_dt", "joint_jump", "joint_fast",
            "rotvec_2pi_multi"]
    sub = subs[int(rng.integers(len(subs)))]
    H = int(rng.choice([4, 8]))
    if sub == "big_translation":
        d = rng.normal(0, 1, 3)
        d = d / np.linalg.norm(d) * rng.uniform(0.05, 0.3)
        return Case("fast", i, sub, snap.key, _ee_rows(H, d), PERIOD_S)
    if sub in ("rotvec_near_2pi", "rotvec_over_pi", "rotvec_2pi_multi"):
        ax = rng.normal(0, 1, 3)
        ax /= np.linalg.norm(ax)
        mag = {"rotvec_near_2pi": 2 * np.pi - rng.uniform(0.01, 0.3), "rotvec_over_pi": np.pi + rng.uniform(0.01, 2.5),
               "rotvec_2pi_multi": 2 * np.pi * int(rng.integers(1, 4)) + rng.uniform(-0.3, 0.3)}[sub]
        A = _ee_rows(H, rng.normal(0, 0.005, 3), ax * mag)
        return Case("fast", i, sub, snap.key, A, PERIOD_S)
    if sub == "zigzag":
        d = rng.normal(0, 1, 3)
        d = d / np.linalg.norm(d) * rng.uniform(0.01, 0.05)
        A = _ee_rows(H, d)
        A[1::2, :3] *= -1
        return Case("fast", i, sub, snap.key, A, PERIOD_S)
    if sub == "tiny_dt":
        d = rng.normal(0, 1, 3)
        d = d / np.linalg.norm(d) * rng.uniform(0.002, 0.02)
        return Case("fast", i, sub, snap.key, _ee_rows(H, d), float(rng.choice([0.001, 0.005, 0.01, 0.02])))
    # joint-space: q0 from the state
    q0 = None
    if env is not None:
        restore(env, snap)
        q0 = env.joint_positions()
    if q0 is None:
        q0 = np.array([0.0861, -0.2599, -0.083, -2.4322, -0.0255, 2.174, 0.8065])
    if sub == "joint_jump":
        Q = np.tile(q0, (H, 1))
        j = int(rng.integers(7))
        Q[:, j] += rng.choice([-1, 1]) * rng.uniform(0.1, 0.6)
    else:
        v = rng.normal(0, 1, 7)
        v = v / np.max(np.abs(v) / FRANKA_DQ_MAX) * rng.uniform(0.8, 3.0)      # 0.8..3x the velocity limit
        Q = q0 + np.arange(1, H + 1)[:, None] * PERIOD_S * v
    Q = np.clip(Q, FRANKA_Q_MIN + 0.02, FRANKA_Q_MAX - 0.02)
    return Case("fast", i, sub, snap.key, Q, PERIOD_S, JOINT, list(ARM_JOINTS))


def gen_random(rng, pool: StatePool, i: int) -> Case:
    snap = pool.pick(rng, ["home", "expert", "expert", "low", "edge"])
    H = int(rng.choice([8, 8, 8, 16]))
    scale = rng.uniform(0.003, 0.03)
    v = rng.normal(0, 1, 3) * scale
    rows = []
    w = rng.normal(0, 0.03, 3)
    g = float(rng.choice([0.0, 1.0]))
    for _ in range(H):
        v = 0.8 * v + 0.2 * rng.normal(0, 1, 3) * scale
        w = 0.8 * w + 0.2 * rng.normal(0, 0.05, 3)
        if rng.random() < 0.08:
            g = 1.0 - g
        rows.append(np.r_[v, w, g + rng.normal(0, 0.05)])
    return Case("random", i, "policy_like", snap.key, np.array(rows), PERIOD_S)


def gen_expert(rng, pool: StatePool, i: int) -> Case:
    e = pool.expert[i % len(pool.expert)]        # speeds and tasks in turn
    H = 8
    n = len(e["actions"])
    ok = [(k, t) for k, (t, s) in enumerate(e["snaps"]) if t + H <= n and s.info.get("start_ok", True)]
    k, t = ok[int(rng.integers(len(ok)))]
    snap = e["snaps"][k][1]
    return Case("expert", i, f"speed{e['speed']}", snap.key, e["actions"][t:t + H].copy(), PERIOD_S,
                expert={"speed": e["speed"], "task": e["task"], "t": int(t)})


MALFORMED = (
    "stamp_none", "stamp_nan", "stamp_str", "stamp_float", "stamp_huge", "stamp_negative", "now_nan", "now_str",
    "now_none", "q_str", "q_none", "q_short", "q_nan", "dq_str", "dq_short", "dq_nan", "g_nan", "g_none", "g_str",
    "action_space_array", "action_space_none", "joint_names_int", "joint_names_none", "joint_names_wrong",
    "actions_nan", "actions_inf", "actions_empty", "actions_1d", "actions_3d", "actions_6col", "actions_str",
    "actions_object", "actions_list", "actions_complex", "actions_bool", "horizon_256", "horizon_257",
    "unreachable", "dt_zero", "dt_negative", "dt_nan", "dt_inf", "dt_str", "dt_none", "dt_huge", "chunk_dict",
    "chunk_none", "plan_id_str", "joint_8col_nan_gripper", "joint_wrong_names_order")


def gen_malformed(rng, pool: StatePool, i: int) -> Case:
    snap = pool.pick(rng, ["home", "expert"])
    kind = MALFORMED[i % len(MALFORMED)]
    A = _ee_rows(8, rng.normal(0, 0.01, 3))
    c = Case("malformed", i, kind, snap.key, A, PERIOD_S)
    q7 = np.array([0.0861, -0.2599, -0.083, -2.4322, -0.0255, 2.174, 0.8065])
    setters = {
        "stamp_none": dict(stamp=None), "stamp_nan": dict(stamp=float("nan")), "stamp_str": dict(stamp="12"),
        "stamp_float": dict(stamp=float(CLOCK0_NS) + 0.5), "stamp_huge": dict(stamp=2**70),
        "stamp_negative": dict(stamp=-5), "now_nan": dict(now=float("nan")), "now_str": dict(now="now"),
        "now_none": dict(now=None), "q_str": dict(q="abcdefg"), "q_none": dict(q=None), "q_short": dict(q=q7[:6]),
        "q_nan": dict(q=np.r_[q7[:6], np.nan]), "dq_str": dict(dq="fast"), "dq_short": dict(dq=np.zeros(3)),
        "dq_nan": dict(dq=np.full(7, np.nan)), "g_nan": dict(g=float("nan")), "g_none": dict(g=None),
        "g_str": dict(g="open"), "action_space_array": dict(action_space=np.array([1.0, 2.0])),
        "action_space_none": dict(action_space=None), "joint_names_int": dict(joint_names=5),
        "joint_names_none": dict(joint_names=None), "joint_names_wrong": dict(joint_names=["a", "b"]),
        "actions_nan": dict(actions=np.where(np.arange(56).reshape(8, 7) == 17, np.nan, A)),
        "actions_inf": dict(actions=np.where(np.arange(56).reshape(8, 7) == 30, -np.inf, A)),
        "actions_empty": dict(actions=np.zeros((0, 7))), "actions_1d": dict(actions=np.zeros(7)),
        "actions_3d": dict(actions=np.zeros((2, 8, 7))), "actions_6col": dict(actions=np.zeros((8, 6))),
        "actions_str": dict(actions="up"), "actions_object": dict(actions=np.array([[object()] * 7] * 2)),
        "actions_list": dict(actions=A.tolist()), "actions_complex": dict(actions=A.astype(complex) + 1j),
        "actions_bool": dict(actions=np.ones((4, 7), dtype=bool)),
        "horizon_256": dict(actions=_ee_rows(256, rng.normal(0, 0.0005, 3))),
        "horizon_257": dict(actions=_ee_rows(257, np.zeros(3))),
        "unreachable": dict(actions=_ee_rows(8, [0.3, 0.3, 0.3])),
        "dt_zero": dict(dt=0.0), "dt_negative": dict(dt=-0.05), "dt_nan": dict(dt=float("nan")),
        "dt_inf": dict(dt=float("inf")), "dt_str": dict(dt="0.05"), "dt_none": dict(dt=None), "dt_huge": dict(dt=1e9),
        "chunk_dict": dict(direct_chunk={"actions": A, "dt": 0.05}), "chunk_none": dict(direct_chunk="NONE"),
        "plan_id_str": dict(), "joint_8col_nan_gripper": dict(actions=np.c_[np.tile(q7, (4, 1)), np.full(4, np.nan)],
                                                             action_space=JOINT, joint_names=list(ARM_JOINTS) + ["g"]),
        "joint_wrong_names_order": dict(actions=np.tile(q7, (4, 1)), action_space=JOINT,
                                        joint_names=list(reversed(ARM_JOINTS))),
    }
    for k, v in setters[kind].items():
        setattr(c, k, v)
    if kind == "plan_id_str":
        c.sub = "plan_id_str"
    return c


def gen_timing(rng, pool: StatePool, i: int) -> Case:
    snap = pool.pick(rng, ["home", "expert"])
    sub = ["far_corner", "spin", "dive", "joint_out_of_range", "wander"][i % 5]
    H = 256
    lo, hi = (np.asarray(x) for x in workspace_from_config())
    if sub == "far_corner":        # inside the workspace box, beyond the arm's reach
        corner = np.array([hi[0] - 0.01, rng.choice([lo[1] + 0.01, hi[1] - 0.01]), hi[2] - 0.01])
        steps = np.linspace(snap.tcp, corner, H + 1)
        A = _ee_rows(H, 0.0)
        A[:, :3] = np.diff(steps, axis=0)
        return Case("timing", i, sub, snap.key, A, PERIOD_S)
    if sub == "spin":
        return Case("timing", i, sub, snap.key, _ee_rows(H, 0.0, [0.0, 0.25, 0.0]), PERIOD_S)
    if sub == "dive":
        return Case("timing", i, sub, snap.key, _ee_rows(H, [0.0, 0.0, -0.01]), PERIOD_S)
    if sub == "wander":
        A = _ee_rows(H, 0.0)
        A[:, :3] = rng.normal(0, 0.03, (H, 3))
        A[:, 3:6] = rng.normal(0, 0.2, (H, 3))
        return Case("timing", i, sub, snap.key, A, PERIOD_S)
    Q = np.tile(np.array([0.0861, -0.2599, -0.083, -2.4322, -0.0255, 2.174, 0.8065]), (H, 1))
    Q[:, 0] = np.linspace(0.1, 4.0, H)
    return Case("timing", i, sub, snap.key, Q, PERIOD_S, JOINT, list(ARM_JOINTS))


def generate(category: str, index: int, seed: int, pool: StatePool, env=None, cache=None) -> Case:
    rng = np.random.default_rng([int(seed), CATEGORIES.index(category), int(index)])
    if category == "table_dive":
        return gen_table_dive(rng, pool, index)
    if category == "self_collision":
        return gen_self_collision(rng, pool, index, env, cache if cache is not None else {})
    if category == "workspace":
        return gen_workspace(rng, pool, index)
    if category == "fast":
        return gen_fast(rng, pool, index, env)
    if category == "random":
        return gen_random(rng, pool, index)
    if category == "expert":
        return gen_expert(rng, pool, index)
    if category == "malformed":
        return gen_malformed(rng, pool, index)
    if category == "timing":
        return gen_timing(rng, pool, index)
    raise ValueError(f"unknown category {category!r}")


# ================================================================================================ running one case
def _exc(e: BaseException, where: str) -> dict:
    tb = traceback.extract_tb(e.__traceback__)
    last = tb[-1] if tb else None
    loc = f"{Path(last.filename).name}:{last.lineno} {last.name}" if last else ""
    return {"where": getattr(e, "_fuzz_where", where), "type": type(e).__name__, "message": str(e)[:200], "at": loc}


def build_chunk(case: Case, now_ns: int):
    from semanticvla_core.interfaces import ActionChunkData
    if case.direct_chunk is not None:
        return None if isinstance(case.direct_chunk, str) else case.direct_chunk
    stamp = now_ns if case.stamp is _MEASURED else case.stamp
    plan_id = "plan-x" if case.sub == "plan_id_str" else case.index
    return ActionChunkData(actions=case.actions, dt=case.dt, action_space=case.action_space, plan_id=plan_id,
                           joint_names=case.joint_names, stamp_ns=stamp, frame_id="panda_link0")


class Runner:
    """One worker: env, checker, judge, state pool; runs cases in modes."""

    def __init__(self, seed: int, which: str = "auto", mesh: bool = True, pool_kw: dict | None = None, log=None):
        from semanticvla_core.sim.env import FrankaTabletopEnv, SimConfig
        self.env = FrankaTabletopEnv(SimConfig(render=False))
        if abs(self.env.dt - PERIOD_S) > 1e-9:
            raise ValueError(f"the sim's control period {self.env.dt} is not {PERIOD_S}")
        self.pool = StatePool(self.env, seed, log=log, **(pool_kw or {}))
        self.checker = make_checker()
        self.judge = SafetyJudge(self.env, JudgeConfig(mesh=mesh))
        self.which = _resolve(which)
        self.suts = {m: system_under_test(self.env, m, self.checker, self.which) for m in MODES}
        self.seed = seed
        self.cache: dict = {}
        self._scene_checkers: dict = {}

    def case(self, category: str, index: int) -> Case:
        return generate(category, index, self.seed, self.pool, self.env, self.cache)

    def warm_start(self, case: Case, mode: str, rec: dict) -> tuple[np.ndarray, int]:
        """Restore the case's start state with the system under test in step with it: an expert state at step t is
        reached by running the expert's previous window (t-8..t-1) through the system under test from the state at
        t-8 (so its executor's setpoint model and the arm's controllers are what they would be mid-motion); a rest
        state gets a motionless two-row chunk and four periods (the executor's model of the setpoint is then the arm
        controller's, as in a running system). Deterministic. Returns (arm ctrl one period before, clock now)."""
        env, sut = self.env, self.suts[mode]
        from semanticvla_core.interfaces import ActionChunkData
        snap = self.pool.by_key(case.start)
        where = self.pool.expert_at.get(case.start)
        now = CLOCK0_NS
        if where is not None and where[1] > 0:
            e, t = self.pool.expert[where[0]], where[1]
            t0 = max(0, t - WARMUP_ROWS)
            s0 = dict(e["snaps"])[t0]
            rows, ticks = e["actions"][t0:t].copy(), t - t0
        else:                           # at rest: two motionless rows, then the executor is in step with the arm
            s0 = snap
            rows, ticks = None, 4
        restore(env, s0)
        self.use_scene(sut)
        sut.reset()
        if rows is None:
            rows = np.zeros((2, 7))
            rows[:, 6] = env.gripper_cmd
        ctrl_prev = s0.ctrl_prev
        try:
            res = sut.admit(ActionChunkData(rows, PERIOD_S, stamp_ns=now), now)
            rec["warmup_admitted"] = not res.is_hold
            for _ in range(ticks):
                ctrl_prev = env.data.ctrl[:7].copy()
                sut.tick(now)
                now += int(PERIOD_S * 1e9)
        except Exception as ex:  # noqa: BLE001
            rec["exceptions"].append(_exc(ex, "warmup"))
        return ctrl_prev, now

    def use_scene(self, sut) -> None:
        """The system under test with the checker the safety node has in this scene: the node's configuration plus
        the fixed obstacle boxes the sim node publishes for it (``env.static_obstacles()``, one checker per scene)."""
        if not SCENE:
            return
        from dataclasses import replace

        from semanticvla_core.safety.checker import BuiltinSafetyChecker
        boxes = self.env.static_obstacles()
        key = tuple((b.name, tuple(np.round(b.center, 5)), tuple(np.round(b.rpy, 5))) for b in boxes)
        chk = self._scene_checkers.get(key)
        if chk is None:
            cfg = _checker_config()
            chk = BuiltinSafetyChecker(replace(cfg, env_boxes=list(cfg.env_boxes) + boxes))
            if len(self._scene_checkers) > 64:
                self._scene_checkers.clear()
            self._scene_checkers[key] = chk
        sut.checker = chk
        if getattr(sut, "ex", None) is not None:
            sut.ex.checker = chk

    def run(self, case: Case, mode: str) -> dict:
        env, judge, sut = self.env, self.judge, self.suts[mode]
        rec = {"category": case.category, "index": case.index, "sub": case.sub, "mode": mode, "start": case.start,
               "admitted": None, "exceptions": [], "tick_ms": [], "admit_ms": None}
        ctrl_prev, now = self.warm_start(case, mode, rec)
        start = take_snapshot(env, ctrl_prev) if case.category == "expert" else None
        now_arg = now if case.now is _MEASURED else case.now
        chunk = build_chunk(case, now)
        # --- the checker itself on the raw inputs (malformed: exceptions escaping check_chunk)
        if case.category == "malformed":
            q, g, dq = sut._inputs(case.q, case.g, case.dq)
            try:
                r = self.checker.check_chunk(chunk, q, g, now_ns=now_arg, dq_current=dq)
                rec["check_chunk_hold"] = bool(r.is_hold)
            except Exception as e:  # noqa: BLE001
                rec["exceptions"].append(_exc(e, "check_chunk"))
        attach(env, judge)
        try:
            t0 = time.perf_counter()
            try:
                res = sut.admit(chunk, now_arg, case.q, case.g, case.dq)
            except HarnessError as e:
                rec["harness_error"] = str(e)
                return rec
            except Exception as e:  # noqa: BLE001
                rec["admit_ms"] = (time.perf_counter() - t0) * 1e3
                rec["exceptions"].append(_exc(e, "admit"))
                res = None
            else:
                rec["admit_ms"] = (time.perf_counter() - t0) * 1e3
            admitted = res is not None and not res.is_hold
            rec["admitted"] = bool(admitted)
            if res is not None:
                rec["verdict"] = res.summary()[:300]
                rec["reject_kinds"] = [getattr(k, "value", str(k)) for k in res.rejecting_kinds] if res.is_hold else []
                rec["time_scale"] = float(getattr(res, "time_scale", 1.0) or 1.0)
            # --- how long to watch
            if admitted:
                H = int(np.shape(np.asarray(chunk.actions, dtype=np.float64))[0])
                dt = float(chunk.dt)
                T_last = float(np.max(res.times_from_start)) if np.size(res.times_from_start) else 0.0
                span = max(H * dt * rec["time_scale"], T_last)
                n_exec = int(math.ceil(span / PERIOD_S - 1e-9))
                if n_exec > MAX_WATCH_PERIODS:       # e.g. dt = 1e9 s admitted: watch the first 30 s
                    rec["watch_truncated"] = n_exec
                    n_exec = MAX_WATCH_PERIODS
                judge.begin(ctrl_prev, rows=n_exec)
            else:
                n_exec = 0
                judge.begin(ctrl_prev, rows=0, hold=res is not None)
            refused = 0
            sut.before_physics = lambda: judge.start_period(hold=sut.holding)
            for k in range(n_exec + HOLD_TICKS):
                was_holding = sut.holding if k > 0 else False
                try:
                    kind, t_f = sut.tick(now + k * int(PERIOD_S * 1e9), case.q, case.g, case.dq)
                except HarnessError as e:
                    rec["harness_error"] = str(e)
                    break
                except Exception as e:  # noqa: BLE001
                    rec["exceptions"].append(_exc(e, "tick"))
                    break
                if sut.holding and not was_holding and admitted and k < n_exec:
                    refused += 1                     # a row refused: the executor stopped the chunk and brakes
                judge.end_period()
                rec["tick_ms"].append(t_f * 1e3)
            rec["rows_refused"] = refused
            rep = judge.finish()
            rec["judge"] = rep
            rec["unsafe"] = rep["unsafe"]
            if case.category == "expert":
                rec["expert_rejected"] = (not admitted) or refused > 0
                if rec["expert_rejected"]:
                    detach(env)
                    rec["reference"] = self.reference(case, start)
                    rec["false_rejection"] = not rec["reference"]["unsafe"]
        finally:
            detach(env)
            sut.before_physics = lambda: None
            judge.active = False
        return rec

    def reference(self, case: Case, snap: Snapshot) -> dict:
        """The expert window executed without the filter (env.step, the controller that recorded it), judged."""
        env, judge = self.env, self.judge
        restore(env, snap)
        attach(env, judge)
        try:
            A = np.asarray(case.actions, dtype=np.float64)
            judge.begin(snap.ctrl_prev, rows=len(A))
            for a in A:
                judge.start_period()
                env.step(a, render=False)
                judge.end_period()
            for _ in range(HOLD_TICKS):
                judge.start_period()
                env.step_joint_targets(env.joint_targets(), env.gripper_cmd)
                judge.end_period()
            return judge.finish()
        finally:
            detach(env)


# ================================================================================================ campaign
def plan_cases(n: int, categories=CATEGORIES) -> list[tuple[str, int]]:
    w = np.array([CATEGORY_WEIGHTS[c] for c in categories], dtype=np.float64)
    w /= w.sum()
    counts = np.floor(w * n).astype(int)
    for k in np.argsort(-(w * n - counts))[: n - counts.sum()]:
        counts[k] += 1
    return [(c, i) for c, k in zip(categories, counts) for i in range(int(k))]


_W: Runner | None = None


def _init_worker(seed, which, mesh, pool_kw, log=None, budget=None):
    global _W, CHECK_BUDGET_S
    CHECK_BUDGET_S = budget
    _W = Runner(seed, which, mesh, pool_kw, log=log)


def _run_batch(args):
    batch, modes = args
    out = []
    for cat, i in batch:
        case = _W.case(cat, i)
        for m in modes:
            rec = _W.run(case, m)
            rec["case"] = case.describe()
            out.append(rec)
    return out


def run_campaign(n: int, modes=MODES, seed: int = 0, workers: int = 1, categories=CATEGORIES, which: str = "auto",
                 mesh: bool = True, pool_kw: dict | None = None, log=print) -> dict:
    cases = plan_cases(n, categories)
    t0 = time.perf_counter()
    if workers <= 1:
        _init_worker(seed, which, mesh, pool_kw, log, CHECK_BUDGET_S)
        recs = _run_batch((cases, modes))
        which_used = _W.which
    else:
        import multiprocessing as mp
        ctx = mp.get_context("fork")
        batches = [cases[k::workers * 4] for k in range(workers * 4)]
        with ctx.Pool(workers, initializer=_init_worker,
                         initargs=(seed, which, mesh, pool_kw, None, CHECK_BUDGET_S)) as p:
            recs = [r for part in p.map(_run_batch, [(b, modes) for b in batches], chunksize=1) for r in part]
        which_used = _resolve(which)
    wall = time.perf_counter() - t0
    recs.sort(key=lambda r: (MODES.index(r["mode"]), CATEGORIES.index(r["category"]), r["index"]))
    return {"records": recs, "table": summarize(recs, modes, categories), "wall_s": wall,
            "system_under_test": which_used, "n_cases": len(cases)}


def _count(xs) -> dict:
    out: dict = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _stats(xs) -> dict:
    return {"p50": _pct(xs, 50), "p99": _pct(xs, 99), "max": max(xs, default=float("nan"))}


def _pct(xs, q):
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def summarize(recs: list[dict], modes=MODES, categories=CATEGORIES) -> list[dict]:
    rows = []
    for m in modes:
        for c in categories:
            rs = [r for r in recs if r["mode"] == m and r["category"] == c]
            if not rs:
                continue
            adm = [r for r in rs if r.get("admitted")]
            uns = [r for r in adm if r.get("unsafe")]
            by = {k: sum(1 for r in uns if k in r["judge"]["criteria"]) for k in UNSAFE_CRITERIA}
            hold_uns = [r for r in rs if r.get("admitted") is False and r.get("unsafe")]
            adm_ms = [r["admit_ms"] for r in rs if r.get("admit_ms") is not None]
            tick_ms = [t for r in rs for t in r.get("tick_ms", [])]
            rep = {k: sum(1 for r in rs if k in r.get("judge", {}).get("reported", [])) for k in REPORTED_CRITERIA
                   if k not in UNSAFE_CRITERIA}
            rows.append({
                "mode": m, "category": c, "generated": len(rs), "admitted": len(adm), "unsafe_admitted": len(uns),
                "unsafe_by": by, "unsafe_holds": len(hold_uns),
                "expert_rejected": sum(1 for r in rs if r.get("expert_rejected")),
                "false_rejections": sum(1 for r in rs if r.get("false_rejection")),
                "exceptions": sum(len(r["exceptions"]) for r in rs),
                "exception_types": sorted({f"{e['where']}:{e['type']}" for r in rs for e in r["exceptions"]}),
                "harness_errors": sum(1 for r in rs if r.get("harness_error")),
                "timeouts": sum(1 for r in rs if "TIMEOUT" in r.get("reject_kinds", [])),
                "admit_ms": _stats(adm_ms), "tick_ms": _stats(tick_ms),
                "reported_only": rep,
                "reject_kinds": _count([k for r in rs if not r.get("admitted") for k in r.get("reject_kinds", [])[:1]]),
            })
    return rows


def format_table(rows: list[dict]) -> str:
    short = {"table": "tab", "self": "self", "velocity": "vel", "accel": "acc", "accel_stop": "stop",
             "joint_limit": "jlim", "workspace": "ws", "hold_motion": "hmov"}
    crit = "(" + " ".join(short.values()) + ")"
    head = (f"{'mode':<10} {'category':<14} {'gen':>4} {'adm':>4} {'UNSAFE':>6} {crit:<35} "
            f"{'hold!':>5} {'FR':>3} {'exc':>4} {'TO':>3} {'admit ms p50/p99/max':>22} {'tick ms p50/p99/max':>20} "
            f"{'mesh_t mesh_s':>13}")
    out = [head, "-" * len(head)]
    for r in rows:
        by = " ".join(str(r["unsafe_by"][k]) for k in short)
        a, t = r["admit_ms"], r["tick_ms"]
        fr = f"{r['false_rejections']}" if r["category"] == "expert" else "-"
        ro = r["reported_only"]
        out.append(f"{r['mode']:<10} {r['category']:<14} {r['generated']:>4} {r['admitted']:>4} "
                   f"{r['unsafe_admitted']:>6} "
                   f"{'(' + by + ')':<35} {r['unsafe_holds']:>5} {fr:>3} {r['exceptions']:>4} {r['timeouts']:>3} "
                   f"{a['p50']:>6.1f}/{a['p99']:>6.1f}/{a['max']:>7.1f} "
                   f"{t['p50']:>5.2f}/{t['p99']:>5.1f}/{t['max']:>6.1f} "
                   f"{ro.get('mesh_table', 0):>6} {ro.get('mesh_self', 0):>6}")
    return "\n".join(out)


def machine() -> dict:
    cpu = cpu_model()
    import mujoco
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "mujoco": mujoco.__version__, "node": platform.node()}


def code_version() -> dict:
    """The code under test: git HEAD and the files that differ from it (the filter is being worked on)."""
    import subprocess
    root = _HERE.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--short", "--", "semanticvla_core", "config"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        return {"head": head, "modified": [d.strip() for d in dirty if d.strip()]}
    except Exception:  # noqa: BLE001 - not a git checkout
        return {"head": "", "modified": []}


def reproducer(rec: dict, seed: int) -> str:
    return (f"MUJOCO_GL=egl .venv/bin/python benchmarks/safety_fuzz.py --only {rec['category']}:{rec['index']} "
            f"--seed {seed} --modes {rec['mode']}")


def _worst(recs: list[dict]) -> list[str]:
    """Per mode and criterion: how many executions fired it and the worst one (value, case)."""
    out: dict = {}
    for r in recs:
        for c, det in (r.get("judge") or {}).get("details", {}).items():
            key = (r["mode"], c, "admitted" if r.get("admitted") else "hold")
            o = out.setdefault(key, [0, -1.0, None])
            o[0] += 1
            if det["worst"] > o[1]:
                o[1], o[2] = det["worst"], r
    lines = []
    for (m, c, a), (n, w, r) in sorted(out.items()):
        lines.append(f"  {m:<10} {c:<12} {a:<8} n={n:<4} worst {r['judge']['details'][c]['what']} "
                     f"[{r['category']}:{r['index']} {r['sub']}]")
    return lines


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    return o


def _totals(rows):
    tot = {k: sum(r[k] for r in rows) for k in ("generated", "admitted", "unsafe_admitted", "unsafe_holds",
                                                "false_rejections", "exceptions", "harness_errors")}
    tot["expert_chunks"] = sum(r["generated"] for r in rows if r["category"] == "expert")
    return tot


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=300, help="chunks generated (each runs in every mode)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--categories", default=",".join(CATEGORIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON report")
    p.add_argument("--sut", default="auto", choices=("auto", "executor", "legacy"))
    p.add_argument("--no-mesh", action="store_true", help="skip the URDF-mesh second opinion")
    p.add_argument("--only", default=None, help="CATEGORY:INDEX: reproduce one case verbosely")
    p.add_argument("--check-budget", type=float, default=None,
                   help="seconds a chunk check may take before TIMEOUT (default: config/franka.yaml check_budget_s)")
    p.add_argument("--all-records", action="store_true", help="JSON: every record (default: failures only)")
    p.add_argument("--no-scene", action="store_true", help="the checker without the scene's fixed objects (plates, "
                   "bowls), as a safety node that gets no /semanticvla/scene/obstacles")
    a = p.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    cats = [c for c in a.categories.split(",") if c]
    for m in modes:
        if m not in MODES:
            p.error(f"unknown mode {m}")
    for c in cats:
        if c not in CATEGORIES:
            p.error(f"unknown category {c}")
    global CHECK_BUDGET_S, SCENE
    CHECK_BUDGET_S, SCENE = a.check_budget, not a.no_scene
    mach = machine()
    cmd = " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else "safety_fuzz " + " ".join(argv)
    print(f"machine: {mach['cpu']}, {mach['cores']} cores, python {mach['python']}, mujoco {mach['mujoco']}")
    print(f"command: {cmd}")
    if a.only:
        cat, idx = a.only.split(":")
        r = Runner(a.seed, a.sut, not a.no_mesh, log=print)
        case = r.case(cat, int(idx))
        print("case:", json.dumps(_jsonable(case.describe())))
        if isinstance(case.actions, np.ndarray):
            np.set_printoptions(precision=4, suppress=True, linewidth=140)
            print("actions:\n", case.actions)
        for m in modes:
            rec = r.run(case, m)
            print(f"--- {m}: admitted={rec['admitted']} unsafe={rec.get('unsafe')} verdict={rec.get('verdict')}")
            print(json.dumps(_jsonable({k: rec[k] for k in ("judge", "exceptions", "rows_refused", "reference",
                                                             "false_rejection") if k in rec}), indent=1))
        return 0
    res = run_campaign(a.chunks, modes, a.seed, a.workers, cats, a.sut, not a.no_mesh)
    print(f"system under test: {res['system_under_test']}; {res['n_cases']} chunks x {len(modes)} modes in "
          f"{res['wall_s']:.1f} s ({a.workers} workers)")
    print(format_table(res["table"]))
    print("gen: chunks generated, adm: admitted, UNSAFE: admitted chunks the judge flags (per criterion: table "
          "contact, "
          "self contact, velocity, acceleration, acceleration of the stop after the last row, joint limit, workspace, "
          "a hold that does not brake), hold!: rejected chunks whose hold the judge flags, FR: false rejections of "
          "expert chunks, exc: exceptions, TO: rejections for TIMEOUT; mesh_t / mesh_s: the URDF-mesh opinion "
          "(table / self), not counted")
    tot = _totals(res["table"])
    print(f"totals: {json.dumps(tot)}")
    print("worst per mode and criterion (unsafe ones and the mesh opinion):")
    print("\n".join(_worst(res["records"])))
    ver = code_version()
    print(f"code under test: HEAD {ver['head']}, modified: {' '.join(ver['modified']) or 'none'}")
    fails = [r for r in res["records"] if r.get("unsafe") or r["exceptions"] or r.get("false_rejection")
             or r.get("harness_error")]
    for r in fails:
        r["reproduce"] = reproducer(r, a.seed)
    print("failures (first 40; reproduce one with --only CATEGORY:INDEX --seed S --modes MODE):")
    for r in fails[:40]:
        what = ("; ".join(f"{k}: {r['judge']['details'][k]['what']}" for k in r["judge"]["criteria"])
                if r.get("judge") else "")
        exc = "; ".join(f"{e['where']} {e['type']} at {e['at']}" for e in r["exceptions"])
        print(f"  {r['mode']:<10} {r['category']}:{r['index']} ({r['sub']}, admitted={r['admitted']}) {what} {exc}"
              f"{' FALSE REJECTION: ' + r.get('verdict', '') if r.get('false_rejection') else ''}")
    if len(fails) > 40:
        print(f"  ... {len(fails) - 40} more in the JSON")
    if a.out:
        keep = res["records"] if a.all_records else fails
        for r in keep:
            r["tick_ms"] = [round(x, 3) for x in r.get("tick_ms", [])]
        doc = {"command": cmd, "machine": mach, "code": ver, "seed": a.seed, "chunks": a.chunks, "modes": modes,
               "categories": cats, "workers": a.workers, "check_budget_s": a.check_budget, "scene_obstacles": SCENE,
               "system_under_test": res["system_under_test"], "wall_s": res["wall_s"],
               "judge": {"contact_tol_m": JudgeConfig().contact_tol, "limit_tol": JudgeConfig().limit_tol,
                         "workspace_tol_m": JudgeConfig().workspace_tol, "unsafe_criteria": list(UNSAFE_CRITERIA)},
               "table": res["table"], "totals": tot, "records": keep,
               "records_kept": "all" if a.all_records else "failures"}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(_jsonable(doc), indent=1))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
