"""Simulator speed: control steps/s without and with cameras, expert demos per minute, LIBERO steps/s.

    MUJOCO_GL=egl .venv/bin/python benchmarks/bench_sim.py [--steps 300] [--demos 4] [--libero]
Prints the machine and the numbers (copy them into BENCHMARKS.md, section "Simulation").
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--demos", type=int, default=4)
    p.add_argument("--libero", action="store_true", help="also time LIBERO in .venv-libero (slow)")
    a = p.parse_args(argv)
    import mujoco

    from semanticvla_core.sim.env import FrankaTabletopEnv, SimConfig
    from semanticvla_core.sim.expert import rollout_expert

    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}, mujoco {mujoco.__version__}, MUJOCO_GL={os.environ['MUJOCO_GL']}")
    rng = np.random.default_rng(0)
    for render, label in ((False, "no cameras"), (True, "agentview 128 + wrist 96")):
        env = FrankaTabletopEnv(SimConfig(render=render))
        env.reset("pick_place_plate", 0)
        t = time.perf_counter()
        for _ in range(a.steps):
            env.step(rng.uniform(-0.01, 0.01, 7))
        dt = time.perf_counter() - t
        print(f"control steps/s ({label}): {a.steps / dt:.1f}  ({a.steps / dt / 20:.1f}x real time at 20 Hz)")
        env.close()
    env = FrankaTabletopEnv(SimConfig(render=True))
    t, n, frames = time.perf_counter(), 0, 0
    for s in range(a.demos):
        r = rollout_expert(env, "pick_place_plate", s, render=True)
        n += r["success"]
        frames += r["steps"]
    dt = time.perf_counter() - t
    print(f"expert demos/min (pick_place_plate, both cameras, one process): {60 * a.demos / dt:.1f} "
          f"({n}/{a.demos} successful, {frames / dt:.1f} frames/s)")
    if a.libero:
        py = Path(__file__).resolve().parents[1] / ".venv-libero" / "bin" / "python"
        if not py.exists():
            print("LIBERO: .venv-libero missing (bash scripts/setup_libero.sh)")
        else:
            out = subprocess.run([str(py), str(Path(__file__).resolve().parents[1] / "training" / "libero_eval.py"),
                                  "--suites", "libero_object", "--tasks", "0", "--trials", "1", "--max-steps", "100"],
                                 capture_output=True, text=True)
            print("LIBERO:", [l for l in out.stdout.splitlines() if l.startswith("==")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
