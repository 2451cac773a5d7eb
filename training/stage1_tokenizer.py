#!/usr/bin/env python3
"""Stage 1 CLI: train the semantic latent action tokenizer.

    python training/stage1_tokenizer.py --dataset data/panda_demos --config tiny --out runs/stage1
    python training/stage1_tokenizer.py --synthetic 4000 --config tiny --out runs/stage1_toy
    python training/stage1_tokenizer.py --dataset data/libero_tracex --image-key observation.images.image \
        --trace-convention percent --config tiny --out runs/stage1
    torchrun --nproc_per_node 2 training/stage1_tokenizer.py --dataset ... --config base --out ...

The library function is ``semanticvla_core.training.stage1_tokenizer.train_tokenizer``; this file only
parses arguments and builds the dataset. Re-running with the same ``--out`` resumes.
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.data import Subset


def split_by_episode(full, eval_fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Held-out split by whole episodes (a seeded random ``eval_fraction`` of them, at least one when
    there are two or more), so evaluation measures new episodes rather than neighbouring frames.
    Falls back to a random sample split if the dataset does not expose ``samples`` (episode, t)."""
    g = torch.Generator().manual_seed(seed)
    episodes = getattr(full, "samples", None)
    if episodes is not None and len(episodes):
        ep = torch.as_tensor(episodes)[:, 0]
        uniq = ep.unique()
        n_eval = int(len(uniq) * eval_fraction) if len(uniq) < 2 else max(1, int(len(uniq) * eval_fraction))
        held = set(uniq[torch.randperm(len(uniq), generator=g)[:n_eval]].tolist())
        is_eval = torch.tensor([int(e) in held for e in ep])
        return (Subset(full, torch.nonzero(~is_eval).flatten().tolist()),
                Subset(full, torch.nonzero(is_eval).flatten().tolist()))
    perm = torch.randperm(len(full), generator=g).tolist()
    n_eval = int(len(full) * eval_fraction)
    return Subset(full, perm[n_eval:]), Subset(full, perm[:n_eval])


def build_parser() -> argparse.ArgumentParser:
    from semanticvla_core.training.common import add_dataset_arguments, add_train_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="LeRobot v3 dataset root (built by the data pipeline)")
    src.add_argument("--synthetic", type=int, metavar="N", help="use N generated toy samples instead")
    p.add_argument("--config", default="tiny", choices=["tiny", "base", "paper"], help="model / schedule preset")
    p.add_argument("--out", required=True, help="output directory (phases, checkpoints, final tokenizer/)")
    p.add_argument("--vision-path", default=None, help="local pretrained DINOv2 directory (frozen)")
    p.add_argument("--schedule", choices=["sequential", "joint"], default=None)
    p.add_argument("--steps-a", type=int, default=None, help="stage A (trace VQ-VAE) steps")
    p.add_argument("--steps-b", type=int, default=None, help="stage B (latent VQ-VAE) steps")
    add_train_arguments(p)
    add_dataset_arguments(p, wrist=False)
    p.add_argument("--eval-fraction", type=float, default=0.05, help="held-out share of the episodes")
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--label-latents", action="store_true",
                   help="afterwards write <out>/tokenizer/latent_ids.safetensors for every frame (stage 2 labels)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from semanticvla_core.training.stage1_tokenizer import SyntheticTokenizerDataset, stage1_config, train_tokenizer

    overrides = {"vision_pretrained_path": args.vision_path} if args.vision_path else {}
    cfg = stage1_config(args.config, output_dir=args.out, **overrides)
    t = cfg.train
    for attr, val in (("batch_size", args.batch_size), ("lr", args.lr), ("num_workers", args.num_workers),
                      ("save_every", args.save_every), ("seed", args.seed), ("device", args.device),
                      ("amp", args.amp)):
        if val is not None:
            setattr(t, attr, val)
    t.resume = not args.no_resume
    t.progress = not args.no_progress
    if args.steps_a is not None:
        cfg.stage_a_steps = args.steps_a
    if args.steps_b is not None:
        cfg.stage_b_steps = args.steps_b
    if args.schedule:
        cfg.schedule = args.schedule
    m = cfg.model

    if args.synthetic is not None:
        n_eval = max(1, int(args.synthetic * args.eval_fraction))
        train_ds = SyntheticTokenizerDataset(args.synthetic, m.image_size, m.window, m.frame_horizon, seed=t.seed)
        eval_ds = SyntheticTokenizerDataset(n_eval, m.image_size, m.window, m.frame_horizon, seed=t.seed + 1)
    else:
        try:   # written by the data engineer; imported lazily so --synthetic works without it
            from semanticvla_core.data.pipelines import TokenizerDataset
        except ImportError as e:
            print(f"error: semanticvla_core.data.pipelines.TokenizerDataset is not available ({e})", file=sys.stderr)
            return 2
        from semanticvla_core.training.common import dataset_kwargs
        try:
            full = TokenizerDataset(args.dataset, image_size=m.image_size, window=m.window, horizon=m.frame_horizon,
                                    **dataset_kwargs(args))
        except ValueError as e:      # a camera key or the trace convention (the message names the option)
            print(f"error: {e}", file=sys.stderr)
            return 2
        train_ds, eval_ds = split_by_episode(full, args.eval_fraction, t.seed)

    path = train_tokenizer(cfg, train_ds, eval_ds)
    from semanticvla_core.training.common import cleanup_distributed, setup_distributed
    if args.label_latents and args.dataset and setup_distributed(t.device).is_main:
        from semanticvla_core.model.latent_tokenizer import LatentTokenizer
        from semanticvla_core.training.stage2_vlm import compute_latent_ids, save_latent_ids
        tok = LatentTokenizer.from_pretrained(path, with_decoders=False)
        ids = compute_latent_ids(tok, full, full.ds.num_frames, cfg.eval_batch_size, progress=not args.no_progress)
        out = save_latent_ids(path / "latent_ids.safetensors", ids, tok.codebook_version)
        print(f"latent ids of {(ids[:, 0] >= 0).sum()} / {len(ids)} frames written to {out}")
    cleanup_distributed()
    print(f"tokenizer saved to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
