"""The scripted expert moves within Franka's limits (safety/limits.py) at every speed the project uses, so the safety
filter admits its demonstrations: the recipes' 0.01 m/step, the expert's default (0.03 / 0.02 carrying, 0.012
pushing) and the fastest exposed speed (0.05).

(a) every 8-row window of an episode's recorded ee_delta actions, checked as one ActionChunkData by
    BuiltinSafetyChecker from the joint state at the window's start, is admitted (MAX_REJECTED), and nearly every
    one as commanded, not slowed down by the checker's time scaling (MAX_SLOWED);
    ``dq_current`` is the joints' finite-difference velocity over the previous step (the checker's own convention,
    so the acceleration into the window's first row is checked too);
(b) the executed motion's joint velocities and accelerations (finite differences of ``env.joint_positions()`` at
    the control period, as the checker measures them) stay within the limits, with TOL for the servo's tracking.

The expert without its motion limits (``expert.LIMIT_MOTION = False``: full speed from rest in one step, stops
from full speed in one step) fails both; the last test checks that these checks still see that.
Physics only (no rendering); ~10-15 s of CPU on one core.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("mujoco")
pytest.importorskip("pinocchio")
pytest.importorskip("coal")

from semanticvla_core.interfaces import ActionChunkData  # noqa: E402
from semanticvla_core.safety.checker import BuiltinSafetyChecker, SafetyConfig  # noqa: E402
from semanticvla_core.safety.limits import PANDA_ACCEL_LIMITS, PANDA_VELOCITY_LIMITS  # noqa: E402
from semanticvla_core.sim import expert as expert_mod  # noqa: E402
from semanticvla_core.sim.env import FrankaTabletopEnv, SimConfig  # noqa: E402

WINDOW = 8                     # rows per checked chunk (the policy's chunk length)
MAX_REJECTED = 0.005           # at most this fraction of the windows may be rejected ...
MAX_SLOWED = 0.05              # ... and at most this fraction time-scaled (slowed down: a limit exceeded, < 2x)
TOL = 0.05                     # measured joints: finite differences may exceed the limits by this fraction (servo)
SPEEDS = (0.01, None, 0.05)    # rollout_expert(speed=): the recipes', the expert's default, the fastest exposed
EPISODES = (("pick_place_plate", 0), ("pick_place_plate", 1), ("pick_place_plate", 2), ("pick_place_bowl", 0),
            ("stack", 0), ("push_region", 0))


@pytest.fixture(scope="module")
def env():
    e = FrankaTabletopEnv(SimConfig(render=False))
    yield e
    e.close()


@pytest.fixture(scope="module")
def checker():
    cfg = SafetyConfig()
    if hasattr(cfg, "check_budget_s"):   # this measures the expert's motion, not the checker's speed on a busy machine
        cfg.check_budget_s = max(cfg.check_budget_s, 5.0)
    return BuiltinSafetyChecker(cfg)


def _rollout(env, task: str, seed: int, speed) -> dict:
    """rollout_expert plus the arm's joints before every step (and after the last) and the gripper command."""
    q, g = [], []
    step = env.step

    def recording_step(action, render=None):
        q.append(env.joint_positions().copy())
        g.append(float(env.gripper_cmd))
        return step(action, render)

    env.step = recording_step
    try:
        r = expert_mod.rollout_expert(env, task, seed, render=False, speed=speed)
    finally:
        del env.step
    r["q"], r["gripper_cmd"] = np.array(q + [env.joint_positions().copy()]), np.array(g)
    return r


_CACHE: dict = {}


def _episodes(env, speed) -> list:
    if speed not in _CACHE:
        _CACHE[speed] = [_rollout(env, task, seed, speed) for task, seed in EPISODES]
    return _CACHE[speed]


def _check_windows(checker, r: dict, dt: float) -> tuple[int, int, int, list]:
    """(windows, rejected, time-scaled, reasons of the rejected) over every WINDOW-row window of the episode's
    actions."""
    acts, q = np.asarray(r["actions"], dtype=np.float32), r["q"]
    n, bad, slowed, why = 0, 0, 0, []
    for t in range(len(acts) - WINDOW + 1):
        dq = (q[t] - q[t - 1]) / dt if t else np.zeros(7)
        res = checker.check_chunk(ActionChunkData(acts[t:t + WINDOW].copy(), dt=dt), q[t], r["gripper_cmd"][t],
                                  dq_current=dq)
        n += 1
        if not res.ok:
            bad += 1
            why.append((t, res.summary()))
        elif res.time_scale > 1.0:
            slowed += 1
    return n, bad, slowed, why


def _joint_ratios(q: np.ndarray, dt: float) -> tuple[float, float]:
    """Largest joint velocity and acceleration over the episode, as a ratio to Franka's limits."""
    v = np.diff(q, axis=0) / dt
    a = np.diff(v, axis=0) / dt
    return float((np.abs(v) / PANDA_VELOCITY_LIMITS).max()), float((np.abs(a) / PANDA_ACCEL_LIMITS).max())


def _label(speed) -> str:
    return "default" if speed is None else f"{speed}"


@pytest.mark.parametrize("speed", SPEEDS, ids=_label)
def test_safety_filter_admits_every_expert_chunk(env, checker, speed):
    episodes = _episodes(env, speed)
    assert all(r["success"] for r in episodes), [r["success"] for r in episodes]
    n = bad = slowed = 0
    why = []
    for (task, seed), r in zip(EPISODES, episodes):
        ni, bi, si, wi = _check_windows(checker, r, env.dt)
        n, bad, slowed = n + ni, bad + bi, slowed + si
        why += [(task, seed, *w) for w in wi]
    assert n > 300
    assert bad <= MAX_REJECTED * n, f"speed {_label(speed)}: {bad} of {n} expert chunks rejected, e.g. {why[:3]}"
    assert slowed <= MAX_SLOWED * n, f"speed {_label(speed)}: {slowed} of {n} expert chunks time-scaled"


@pytest.mark.parametrize("speed", SPEEDS, ids=_label)
def test_executed_joint_motion_within_franka_limits(env, speed):
    for (task, seed), r in zip(EPISODES, _episodes(env, speed)):
        v, a = _joint_ratios(r["q"], env.dt)
        assert v <= 1.0 + TOL, f"{task} seed {seed} speed {_label(speed)}: joint velocity {v:.2f}x the limit"
        assert a <= 1.0 + TOL, f"{task} seed {seed} speed {_label(speed)}: joint acceleration {a:.2f}x the limit"


def test_the_checks_catch_an_expert_without_motion_limits(env, checker, monkeypatch):
    """The expert as it was before its motion limits (full speed from rest, proportional stops) fails both checks
    at its default speed: the checks above still measure what they claim."""
    monkeypatch.setattr(expert_mod, "LIMIT_MOTION", False)
    r = _rollout(env, "pick_place_plate", 1, None)
    n, bad, _, _ = _check_windows(checker, r, env.dt)
    assert bad > MAX_REJECTED * n
    assert _joint_ratios(r["q"], env.dt)[1] > 1.0 + TOL
