"""LIBERO evaluation with the standard protocol (run inside .venv-libero; see scripts/setup_libero.sh).

    MUJOCO_GL=egl .venv-libero/bin/python training/libero_eval.py --suites libero_object --trials 2
    MUJOCO_GL=egl .venv-libero/bin/python training/libero_eval.py --suites libero_spatial --tasks 0,1 \
        --policy mypkg.mymod:make_policy

Protocol (as in the LIBERO / OpenVLA evaluations): for each suite and task, ``--trials`` episodes starting
from the benchmark's fixed init states (trial i uses init state i), ``--wait-steps`` no-op steps for objects
to settle, then at most the suite's step limit (libero_spatial 220, libero_object 280, libero_goal 300,
libero_10 520, libero_90 400); success = the task's BDDL goal holds. Prints per-task and per-suite success.

Policy: ``--policy scripted`` (default) is a privileged pick-and-place script that reads object poses
from the observation and the goal from the parsed BDDL problem (``in``/``on`` goals). It needs no training
and proves the harness. Any other policy: ``module:attr`` naming a factory ``make(task_language) ->
f(obs, env) -> action (7,)`` in LIBERO's OSC_POSE convention ([-1, 1] scaled deltas, gripper -1 open /
+1 closed). A model living in the main venv can be reached by wrapping an HTTP/stdin bridge in such a factory.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}


class ScriptedLiberoPolicy:
    """Privileged pick-and-place for goals ``(in|on obj dest)``: grasp above the object, carry, release."""

    def __init__(self, env, goal, pos_scale: float = 0.05):
        pred, obj, dest = goal[0][0], goal[0][1], goal[0][2]
        if pred not in ("in", "on"):
            raise ValueError(f"scripted policy handles in/on goals, got {goal}")
        self.obj = obj
        self.dest = dest.replace("_contain_region", "").replace("_top_side", "")
        self.pos_scale, self.phase, self.count = pos_scale, 0, 0
        self.grasp_z = None
        self.stall, self.last_z = 0, 1e9

    def _move(self, eef, target, grip, gain=1.0):
        d = (np.asarray(target) - eef) / self.pos_scale * gain
        a = np.zeros(7)
        a[:3] = np.clip(d, -1, 1)
        a[6] = grip
        return a, np.linalg.norm(np.asarray(target) - eef)

    def __call__(self, obs, env=None):
        eef = obs["robot0_eef_pos"]
        o = obs[f"{self.obj}_pos"]
        dkey = f"{self.dest}_pos"
        d = obs[dkey] if dkey in obs else np.asarray(env.sim.data.body_xpos[env.sim.model.body_name2id(self.dest + "_main")])
        if self.grasp_z is None:
            self.z0 = float(o[2])               # the object's resting height (lift targets stay fixed)
            self.grasp_z = self.z0 + 0.01
            self.grasp_off = np.zeros(2)
            if env is not None:                 # wide open containers (bowls): grasp the rim, not the middle
                radius, top = _object_extent(env, self.obj, np.asarray(o))
                if radius > 0.04:
                    self.grasp_off = np.array([0.0, -radius])   # on the outer wall; fingers close along y, across it
                    self.grasp_z = top - 0.015
        o = np.r_[np.asarray(o[:2]) + self.grasp_off, o[2]]
        plan = [
            (np.r_[o[:2], o[2] + 0.12], -1, 0.015, 0),
            (np.r_[o[:2], self.grasp_z], -1, 0.01, 0),
            (np.r_[o[:2], self.grasp_z], 1, 1.0, 12),
            (np.r_[eef[:2], self.z0 + 0.25], 1, 0.03, 0),
            (np.r_[d[:2] + self.grasp_off, self.z0 + 0.25], 1, 0.02, 0),
            (np.r_[d[:2] + self.grasp_off, d[2] + 0.15], 1, 0.02, 0),
            (np.r_[d[:2] + self.grasp_off, d[2] + 0.15], -1, 1.0, 8),
            (np.r_[d[:2] + self.grasp_off, d[2] + 0.3], -1, 0.02, 0),
        ]
        if self.phase >= len(plan):
            return np.r_[np.zeros(6), -1.0]
        target, grip, tol, hold = plan[self.phase]
        if self.phase == 1:   # descend only while centred over the object (OSC drifts sideways when moving fast)
            xy_err = np.linalg.norm(np.asarray(o[:2]) - eef[:2])
            target = np.r_[o[:2], max(self.grasp_z, eef[2] - (0.03 if xy_err < 0.006 else 0.0))]
            a, _ = self._move(eef, target, grip, gain=2.0)
            err = np.linalg.norm(np.r_[o[:2], self.grasp_z] - eef)
            # stalled: no new lowest height for 8 steps (the fingers rest on a shoulder or cap)
            if eef[2] < self.last_z - 0.002:
                self.last_z, self.stall = float(eef[2]), 0
            else:
                self.stall += 1
            if err < tol or self.stall > 8:   # reached, or cannot get lower: grasp here
                self.phase, self.count = self.phase + 1, 0
            return a
        a, err = self._move(eef, target, grip)
        if err < tol or hold:
            self.count += 1
            if self.count > hold:
                self.phase, self.count = self.phase + 1, 0
        return a


def _object_extent(env, name: str, center: np.ndarray) -> tuple[float, float]:
    """(horizontal radius of the object's collision geoms around ``center``, height of their top) in metres."""
    sim = env.sim
    m = sim.model
    bodies = {i for i in range(m.nbody) if (m.body_id2name(i) or "").startswith(name)}
    radius, top = 0.0, float(center[2])
    for g in range(m.ngeom):
        if m.geom_bodyid[g] in bodies and m.geom_contype[g]:
            p = sim.data.geom_xpos[g]
            half = m.geom_size[g]
            radius = max(radius, float(np.linalg.norm(p[:2] - center[:2])))
            top = max(top, float(p[2] + (half[2] if m.geom_type[g] == 6 else half[0])))
    return radius, top


def _make_env(task, size: int):
    from libero.libero import get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    return OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=size, camera_widths=size)


def run_suite(suite: str, tasks: list[int] | None, trials: int, policy: str, size: int, wait_steps: int,
              max_steps: int | None = None, seed: int = 0, verbose: bool = True) -> dict:
    from libero.libero import benchmark

    bench = benchmark.get_benchmark_dict()[suite]()
    limit = max_steps or MAX_STEPS.get(suite, 400)
    ids = list(range(bench.n_tasks)) if tasks is None else tasks
    per_task, steps_total, t0, step_s = {}, 0, time.time(), 0.0
    for tid in ids:
        task = bench.get_task(tid)
        init_states = bench.get_task_init_states(tid)
        env = _make_env(task, size)
        env.seed(seed)
        succ = []
        for trial in range(trials):
            env.reset()
            obs = env.set_init_state(init_states[trial % len(init_states)])
            for _ in range(wait_steps):
                obs, _, _, _ = env.step(np.r_[np.zeros(6), -1.0])
            if policy == "scripted":
                pi = ScriptedLiberoPolicy(env, env.env.parsed_problem["goal_state"])
            else:
                mod, attr = policy.split(":", 1)
                pi = getattr(importlib.import_module(mod), attr)(task.language)
            done = False
            ts = time.perf_counter()
            for _ in range(limit):
                obs, _, done, _ = env.step(pi(obs, env))
                steps_total += 1
                if done:
                    break
            step_s += time.perf_counter() - ts
            succ.append(bool(done))
        env.close()
        per_task[task.name] = float(np.mean(succ))
        if verbose:
            print(f"[{suite}] task {tid} ({task.language}): {sum(succ)}/{trials}", flush=True)
    dt = time.time() - t0
    return {"suite": suite, "success": float(np.mean(list(per_task.values()))), "per_task": per_task,
            "trials_per_task": trials, "steps": steps_total, "seconds": dt,
            "steps_per_s": steps_total / max(step_s, 1e-9),            # policy + physics + rendering only
            "steps_per_s_with_setup": steps_total / max(dt, 1e-9)}     # including env creation and resets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", default="libero_object", help="comma-separated suite names")
    p.add_argument("--tasks", default=None, help="comma-separated task ids (default: all)")
    p.add_argument("--trials", type=int, default=1, help="episodes per task (init states 0..trials-1)")
    p.add_argument("--policy", default="scripted", help="scripted | module:attr factory")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--wait-steps", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=None, help="override the suite's step limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON report path")
    a = p.parse_args(argv)
    tasks = [int(t) for t in a.tasks.split(",")] if a.tasks else None
    reports = []
    for s in a.suites.split(","):
        r = run_suite(s.strip(), tasks, a.trials, a.policy, a.image_size, a.wait_steps, a.max_steps, a.seed)
        reports.append(r)
        print(f"== {r['suite']}: success {r['success']:.3f} over {len(r['per_task'])} tasks x {a.trials} trials "
              f"({r['steps_per_s']:.1f} steps/s stepping, {r['steps_per_s_with_setup']:.1f} with env setup; "
              f"{r['seconds']:.0f} s)", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(reports, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
