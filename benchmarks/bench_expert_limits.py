"""The scripted expert against Franka's limits: does the safety filter admit its motion, at which speeds?

    MUJOCO_GL=egl .venv/bin/python benchmarks/bench_expert_limits.py [--episodes 20] [--speeds 0.01,0.02,0.03,0.05]
        [--task pick_place_plate] [--dq fd|none|qvel] [--noise 0.0] [--old]

Per expert speed (``rollout_expert(speed=)``; 0.03 is the expert's default, 0.01 the recipes'): the episodes'
success on seeds 0..N-1 and their mean length; every 8-row window of the recorded ee_delta actions, checked as one
ActionChunkData by ``BuiltinSafetyChecker`` from the joint state at the window's start, counted as admitted (as
commanded or time-scaled) or rejected, with the rejections' reasons (every rejection of an expert chunk is a false
one); and the executed motion's joint velocity / acceleration (finite differences of ``env.joint_positions()`` at
the control period) as a ratio to ``safety/limits.py``: max and 99th percentile over the steps (each step's worst
joint). ``--old``: the expert without its motion limits (``expert.LIMIT_MOTION = False``), for a before/after in
one run. The checker's time budget is raised to 5 s (this measures the expert's motion, not the checker's speed on
a shared machine).

``--dq`` (the checker's ``dq_current``): ``fd`` the joints' finite-difference velocity over the last step (the
checker's own convention for segment velocities; test_expert_limits.py uses it), ``none``, or ``qvel`` the
simulator's instantaneous joint velocities. The stiff joint servos reach each period's setpoint early and nearly
stop, so ``qvel`` at a control instant is a fraction of the period's mean velocity and the first row's acceleration
looks large: with ``qvel`` about half of the chunks get time-scaled (none rejected).
"""
from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")


def record_rollout(env, task: str, seed: int, speed: float | None, noise: float = 0.0) -> dict:
    """``rollout_expert`` (no rendering) plus, before every step, the arm's joints, joint velocities and gripper
    command; and the joints after the last step."""
    from semanticvla_core.sim.expert import rollout_expert

    q, dq, g = [], [], []
    step = env.step

    def recording_step(action, render=None):
        q.append(env.joint_positions().copy())
        dq.append(env.data.qvel[env._arm_dadr].copy())     # velocities: no joint offset between MuJoCo and Franka
        g.append(float(env.gripper_cmd))
        return step(action, render)

    env.step = recording_step
    try:
        r = rollout_expert(env, task, seed, render=False, speed=speed, action_noise=noise)
    finally:
        del env.step
    r["q"] = np.array(q + [env.joint_positions().copy()])
    r["dq"], r["gripper_cmd"] = np.array(dq), np.array(g)
    return r


def joint_ratios(q: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Per step: the worst joint's velocity / acceleration as a ratio to Franka's limits (finite differences)."""
    from semanticvla_core.safety.limits import PANDA_ACCEL_LIMITS, PANDA_VELOCITY_LIMITS

    v = np.diff(q, axis=0) / dt
    a = np.diff(v, axis=0) / dt
    return (np.abs(v) / PANDA_VELOCITY_LIMITS).max(axis=1), (np.abs(a) / PANDA_ACCEL_LIMITS).max(axis=1)


def check_windows(checker, r: dict, dt: float, window: int = 8, dq: str = "none") -> list:
    """Every ``window``-row window of the episode's actions through the checker: a list of SafetyResults."""
    from semanticvla_core.interfaces import ActionChunkData

    acts = np.asarray(r["actions"], dtype=np.float32)
    q = r["q"]
    out = []
    for t in range(len(acts) - window + 1):
        chunk = ActionChunkData(acts[t:t + window].copy(), dt=dt)
        v = {"none": None, "qvel": r["dq"][t], "fd": (q[t] - q[t - 1]) / dt if t else np.zeros(7)}[dq]
        out.append(checker.check_chunk(chunk, q[t], r["gripper_cmd"][t], dq_current=v))
    return out


def make_checker():
    from semanticvla_core.safety.checker import BuiltinSafetyChecker, SafetyConfig

    cfg = SafetyConfig()
    if hasattr(cfg, "check_budget_s"):
        cfg.check_budget_s = max(cfg.check_budget_s, 5.0)
    return BuiltinSafetyChecker(cfg)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=20, help="seeds 0..N-1 per speed")
    p.add_argument("--speeds", default="0.01,0.02,0.03,0.05",
                   help="comma-separated m/step ('default': the expert's own)")
    p.add_argument("--task", default="pick_place_plate")
    p.add_argument("--dq", choices=("fd", "none", "qvel"), default="fd",
                   help="dq_current given to the checker: the joints' finite-difference velocity over the last step "
                        "(fd), none, or the simulator's joint velocities (qvel)")
    p.add_argument("--noise", type=float, default=0.0, help="rollout_expert(action_noise=)")
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--old", action="store_true", help="the expert without its motion limits")
    a = p.parse_args(argv)
    from semanticvla_core.sim import expert as expert_mod
    from semanticvla_core.sim.env import FrankaTabletopEnv, SimConfig

    expert_mod.LIMIT_MOTION = not a.old
    env = FrankaTabletopEnv(SimConfig(render=False))
    checker = make_checker()
    print(f"task {a.task}, seeds 0..{a.episodes - 1}, window {a.window} rows at dt {env.dt} s, dq_current {a.dq}, "
          f"action_noise {a.noise}, expert {'WITHOUT' if a.old else 'with'} motion limits")
    for sp in a.speeds.split(","):
        speed = None if sp.strip() == "default" else float(sp)
        t0 = time.perf_counter()
        ok, steps, reasons = 0, [], Counter()
        n_chunks = n_ok = n_scaled = n_rej = 0
        vr, ar = [], []
        for seed in range(a.episodes):
            r = record_rollout(env, a.task, seed, speed, a.noise)
            ok += bool(r["success"])
            steps.append(r["steps"])
            v, acc = joint_ratios(r["q"], env.dt)
            vr.append(v), ar.append(acc)
            for res in check_windows(checker, r, env.dt, a.window, a.dq):
                n_chunks += 1
                if not res.ok:
                    n_rej += 1
                    reasons.update(k.value for k in set(res.rejecting_kinds))
                elif res.time_scale > 1.0:
                    n_scaled += 1
                else:
                    n_ok += 1
        vr, ar = np.concatenate(vr), np.concatenate(ar)
        label = f"{speed:g}" if speed is not None else "default (0.03)"
        print(f"speed {label}: success {ok}/{a.episodes}, mean {np.mean(steps):.1f} steps | chunks {n_chunks}: "
              f"admitted {n_ok + n_scaled} ({n_scaled} time-scaled), falsely rejected {n_rej} "
              f"({100.0 * n_rej / max(n_chunks, 1):.2f}%) {dict(reasons.most_common())} | joint accel / limit: "
              f"max {ar.max():.2f}, p99 {np.percentile(ar, 99):.2f}; joint vel / limit: max {vr.max():.2f} "
              f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
