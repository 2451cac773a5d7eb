"""Evaluate a policy in the simulated Franka tabletop: success per task and instruction kind.

    python training/evaluate.py --policy expert --episodes 5 --out runs/eval_expert.json
    python training/evaluate.py --checkpoint runs/stage3/ckpt --episodes 20 --videos runs/eval_videos \
        --custom-instructions my_phrasings.yaml

``--policy``: ``expert`` (privileged scripted expert, an upper bound), ``random`` (the floor), or
``module:attr`` naming a callable ``f(obs, instruction) -> (H,7)|(7,)`` or a factory returning an object
with ``plan()``. ``--checkpoint DIR`` loads ``SemanticVLAPolicy.from_pretrained(DIR)``.
Prints the summary and writes the JSON report (every episode: seed, instruction, success, steps).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")


def build_policy(name: str | None, checkpoint: str | None, seed: int, noise_scale: float | None = None):
    from semanticvla_core.sim.evaluation import ExpertPolicy, RandomPolicy

    if checkpoint:
        from semanticvla_core.policy import SemanticVLAPolicy
        pol = SemanticVLAPolicy.from_pretrained(checkpoint)
        if noise_scale is not None:
            if not noise_scale >= 0:
                raise SystemExit(f"--noise-scale must be >= 0, got {noise_scale}")
            pol.config.noise_scale = float(noise_scale)
        return pol
    if noise_scale is not None:
        raise SystemExit("--noise-scale applies to --checkpoint policies only")
    if name == "expert":
        return ExpertPolicy   # a class with needs_env: built on the evaluation's env
    if name == "random":
        return RandomPolicy(seed)
    if name and ":" in name:
        mod, attr = name.split(":", 1)
        obj = getattr(importlib.import_module(mod), attr)
        return obj() if isinstance(obj, type) else obj
    raise ValueError(f"--policy must be expert, random or module:attr (got {name!r}), or pass --checkpoint")


def main(argv=None) -> int:
    from semanticvla_core.sim.evaluation import EvalConfig, evaluate, load_custom_instructions
    from semanticvla_core.sim.instructions import KINDS
    from semanticvla_core.sim.tasks import TASK_FAMILIES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default=None, help="expert | random | module:attr")
    p.add_argument("--checkpoint", default=None, help="SemanticVLAPolicy checkpoint directory")
    p.add_argument("--tasks", default=",".join(TASK_FAMILIES))
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--episodes", type=int, default=10, help="per task and instruction kind")
    p.add_argument("--episodes-per-kind", default="", metavar="KIND=N,...",
                   help="per-kind overrides of --episodes, e.g. direct=100 (the same seeds, so kinds stay paired)")
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--split", default="eval", choices=["train", "eval"])
    p.add_argument("--execute-steps", type=int, default=None, help="chunk rows executed before replanning")
    p.add_argument("--safety", default="none", choices=["none", "cartesian", "stepwise", "trajectory"],
                   help="run every chunk through the safety filter's checks in one of its execution modes, as the ROS "
                        "graph does (none: env.step, the demonstrations' own execution)")
    p.add_argument("--loop", default="synchronous", choices=["synchronous", "naive", "rtc"],
                   help="run-time loop: synchronous (hold still while planning), naive (asynchronous, switch to the new "
                        "chunk at the row for its time), rtc (asynchronous, real-time chunking)")
    p.add_argument("--delay", type=int, default=0,
                   help="planning delay in control steps (50 ms each): the observation is this much older than the "
                        "first row that can run from it")
    p.add_argument("--image-delay", type=int, default=0,
                   help="control steps by which the images of a plan are older than the joint state it is decoded "
                        "with (the ROS graph: the planning time)")
    p.add_argument("--rtc-method", default=None, choices=["guidance", "replace"],
                   help="--loop rtc: inpainting by replacement (the default, semanticvla_core.policy.RTC_METHOD) or guided inpainting (Black et al. 2025)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--wrist-size", type=int, default=96)
    p.add_argument("--videos", default=None, help="directory for MP4s with the predicted trace drawn")
    p.add_argument("--videos-per-task", type=int, default=2)
    p.add_argument("--custom-instructions", default=None, help="JSON/YAML {task: [template, ...]}")
    p.add_argument("--noise-scale", type=float, default=None,
                   help="flow sampling noise of a --checkpoint policy (default: its config's noise_scale; 0 = deterministic)")
    p.add_argument("--out", default="runs/eval_report.json")
    a = p.parse_args(argv)
    per_kind = {}
    for item in (x for x in a.episodes_per_kind.split(",") if x.strip()):
        k, _, n = item.partition("=")
        if not n.strip().isdigit():
            raise SystemExit(f"--episodes-per-kind: expected KIND=N, got {item!r}")
        per_kind[k.strip()] = int(n)
    cfg = EvalConfig(tasks=tuple(t for t in a.tasks.split(",") if t), kinds=tuple(k for k in a.kinds.split(",") if k),
                     episodes=a.episodes, episodes_per_kind=per_kind, seed=a.seed, split=a.split, execute_steps=a.execute_steps,
                     max_steps=a.max_steps, image_size=a.image_size, wrist_size=a.wrist_size, video_dir=a.videos,
                     videos_per_task=a.videos_per_task, safety=a.safety, loop=a.loop, delay=a.delay, image_delay=a.image_delay,
                     custom_instructions=load_custom_instructions(a.custom_instructions) if a.custom_instructions else {})
    policy = build_policy(a.policy, a.checkpoint, a.seed, a.noise_scale)
    if a.rtc_method:
        if not hasattr(policy, "rtc_method"):
            raise SystemExit("--rtc-method applies to --checkpoint policies")
        policy.rtc_method = a.rtc_method
    rep = evaluate(policy, cfg)
    if a.checkpoint:   # record how the checkpoint was sampled
        rep["noise_scale"] = float(policy.config.noise_scale)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=2))
    summary = {k: rep[k] for k in ("success_overall", "success_per_kind", "success_per_task", "relative_drop",
                                   "num_episodes", "motion", "safety") if k in rep}
    print(json.dumps(summary, indent=2))
    print(f"report: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
