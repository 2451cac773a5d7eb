"""Collect scripted demonstrations in the simulated Franka tabletop into a LeRobot v3 dataset.

    python training/collect_demos.py --task pick_place_plate --episodes 100 --workers 2 \
        --out data/sim_pick_place_plate --image-size 128 --wrist-size 96 --seed 0

Every episode: both cameras (``observation.images.agentview`` / ``.wrist``), ``observation.state`` (15-D,
see ``semanticvla_core.sim.env.STATE_NAMES``), ``observation.ee_pos``, 7-D ee_delta ``action``, exact traces
(``trace.x``, ``trace.y`` float32[12], ``trace.present``: the TCP projected through the agent-view camera),
the instruction as the task string, and the cameras' calibration (in each camera feature's ``info`` in
``meta/info.json``, where lerobot's dataset tools keep it, mirrored to ``meta/cameras.json``; the trace
features record their [0, 1] convention there too; both written by ``LeRobotV3Writer``). Instructions are
drawn from the *train* split, cycling through the instruction kinds. Only successful expert episodes are written; episode seeds
are ``seed, seed+1, ...`` (skipped failures consume a seed). Worker processes simulate and render; the
main process writes (one writer, atomic finalize).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

_ENV = None


def _features(image_size: int, wrist_size: int, window: int) -> dict:
    from semanticvla_core.sim.env import STATE_NAMES
    return {
        "observation.images.agentview": {"dtype": "video", "shape": [image_size, image_size, 3], "names": None},
        "observation.images.wrist": {"dtype": "video", "shape": [wrist_size, wrist_size, 3], "names": None},
        "observation.state": {"dtype": "float32", "shape": [len(STATE_NAMES)], "names": list(STATE_NAMES)},
        "observation.ee_pos": {"dtype": "float32", "shape": [3], "names": ["x", "y", "z"]},
        "action": {"dtype": "float32", "shape": [7], "names": ["dx", "dy", "dz", "rx", "ry", "rz", "gripper"]},
        "trace.x": {"dtype": "float32", "shape": [window], "names": None},
        "trace.y": {"dtype": "float32", "shape": [window], "names": None},
        "trace.present": {"dtype": "bool", "shape": [1], "names": None},
    }


def _init_worker(image_size: int, wrist_size: int) -> None:
    global _ENV
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from semanticvla_core.sim.env import FrankaTabletopEnv, SimConfig
    _ENV = FrankaTabletopEnv(SimConfig(image_size=image_size, wrist_image_size=wrist_size, render=True))


def _run_episode(job: tuple) -> dict:
    task, seed, kind, speed, noise = job
    from semanticvla_core.sim.expert import rollout_expert
    ep = rollout_expert(_ENV, task, seed, instruction_kind=kind, split="train", render=True, speed=speed,
                        action_noise=noise)
    ep["seed"], ep["kind"], ep["task"] = seed, kind, task
    # the wrist camera moves with the hand: no fixed world pose. Its rigid mount T_tcp_cam places it at any frame
    # from that frame's TCP pose (observation.state); it is stored as its pose too (in the TCP frame), rounded, so
    # that every dataset of this robot records the same calibration (it travels in the camera features of
    # meta/info.json, and lerobot merges only datasets whose features are equal)
    mount = np.round(_ENV.wrist_mount(), 10).tolist()
    ep["cameras"] = {"observation.images.agentview": _ENV.camera("agentview").to_dict(),
                     "observation.images.wrist": {**_ENV.camera("wrist").to_dict(), "T_world_cam": mount,
                                                  "T_tcp_cam": mount}}
    del ep["camera"]
    if not ep["success"]:
        ep.pop("images", None)
    return ep


def write_episode(writer, ep: dict) -> None:
    """Append one rollout (from ``rollout_expert`` with rendering) to a LeRobotV3Writer."""
    T = ep["steps"]
    for t in range(T):
        writer.add_frame({
            "observation.images.agentview": ep["images"]["agentview"][t],
            "observation.images.wrist": ep["images"]["wrist"][t],
            "observation.state": ep["states"][t].astype(np.float32),
            "observation.ee_pos": ep["tcp"][t].astype(np.float32),
            "action": ep["actions"][t].astype(np.float32),
            "trace.x": ep["trace"][t, :, 0].astype(np.float32),
            "trace.y": ep["trace"][t, :, 1].astype(np.float32),
            "trace.present": np.array([bool(ep["trace_present"][t])]),
        })
    writer.save_episode(task=ep["instruction"])


def collect(task: str, episodes: int, out: str | Path, workers: int = 1, image_size: int = 128,
            wrist_size: int = 96, seed: int = 0, kinds: tuple = ("direct", "rephrased", "reasoning"),
            window: int = 12, overwrite: bool = False, max_tries_factor: float = 1.5,
            progress: bool = True, expert_speed: float | None = None, action_noise: float = 0.0) -> dict:
    """Collect ``episodes`` successful expert demonstrations; returns a summary dict.
    ``expert_speed``: the expert's travel per step [m] (``rollout_expert(speed=)``; None: its default).
    ``action_noise``: per-step std [m] of the bursts of pushes on the executed motion (``rollout_expert(
    action_noise=)``; the recorded actions stay the expert's)."""
    from tqdm import tqdm

    from semanticvla_core.data.lerobot_v3 import LeRobotV3Writer
    from semanticvla_core.sim.tasks import get_task

    get_task(task)   # validates the name
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if not action_noise >= 0:     # before any worker starts
        raise ValueError(f"--action-noise must be >= 0, got {action_noise}")
    max_jobs = int(np.ceil(episodes * max_tries_factor)) + 2
    jobs = [(task, seed + i, kinds[i % len(kinds)], expert_speed, action_noise) for i in range(max_jobs)]
    t0 = time.time()
    written, failed, frames, recovered = 0, 0, 0, 0
    writer = None
    if workers > 1:
        ctx = mp.get_context("spawn")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(image_size, wrist_size))
        results = pool.imap(_run_episode, jobs)
    else:
        pool = None
        _init_worker(image_size, wrist_size)
        results = map(_run_episode, jobs)
    bar = tqdm(total=episodes, desc=f"collect {task}", unit="ep", disable=not progress)
    try:
        for ep in results:
            if not ep["success"]:
                failed += 1
                continue
            if writer is None:
                writer = LeRobotV3Writer(out, fps=20, features=_features(image_size, wrist_size, window),
                                         robot_type="panda", cameras=ep["cameras"], overwrite=overwrite)
            write_episode(writer, ep)
            written += 1
            frames += ep["steps"]
            recovered += int(ep.get("recoveries", 0) > 0)
            bar.update(1)
            if written >= episodes:
                break
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    if writer is None or written < episodes:
        if writer is not None:
            writer.abort()
        raise RuntimeError(f"only {written}/{episodes} successful episodes after {written + failed} tries")
    writer.finalize()
    dt = time.time() - t0
    return {"task": task, "episodes": written, "failed": failed, "frames": frames, "seconds": dt,
            "episodes_with_recovery": recovered,
            "expert_speed": expert_speed, "action_noise": action_noise,
            "demos_per_min": 60.0 * written / dt, "out": str(out)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="task family (semanticvla_core.sim.tasks.TASK_FAMILIES)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--workers", type=int, default=1, help="simulation/render processes")
    p.add_argument("--out", required=True, help="dataset root directory")
    p.add_argument("--image-size", type=int, default=128, help="agent-view image side (px)")
    p.add_argument("--wrist-size", type=int, default=96, help="wrist image side (px)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    p.add_argument("--kinds", default="direct,rephrased,reasoning", help="instruction kinds to cycle through")
    p.add_argument("--expert-speed", type=float, default=None, metavar="M_PER_STEP",
                   help="cap of the expert's TCP travel per 50 ms step, > 0 (default 0.03 free / 0.02 carrying; the demo "
                        "recipe uses 0.01: ~95-step episodes instead of ~50)")
    p.add_argument("--action-noise", type=float, default=0.0, metavar="M",
                   help="per-step std [m] of bursts of pushes on the executed motion while the gripper is open; the "
                        "recorded actions stay the expert's corrections (DART-style; 0 = clean demonstrations)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    s = collect(a.task, a.episodes, a.out, a.workers, a.image_size, a.wrist_size, a.seed,
                tuple(k.strip() for k in a.kinds.split(",") if k.strip()), overwrite=a.overwrite,
                expert_speed=a.expert_speed, action_noise=a.action_noise)
    print(f"wrote {s['episodes']} episodes ({s['frames']} frames, {s['failed']} expert failures skipped, "
          f"{s['episodes_with_recovery']} with a re-grasp) to {s['out']} in {s['seconds']:.1f} s "
          f"({s['demos_per_min']:.1f} demos/min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
