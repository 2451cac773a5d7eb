#!/usr/bin/env python3
"""Stage 3 CLI: end-to-end fine-tuning (LoRA on the LM + <ACT_k> rows, flow decoder from scratch).

    python training/stage3_e2e.py --synthetic 4000 --init-from runs/stage2_toy/policy --out runs/stage3_toy
    python training/stage3_e2e.py --dataset data/panda_demos --init-from runs/stage2/policy --out runs/stage3
    python training/stage3_e2e.py --dataset data/libero_tracex --image-key observation.images.image \
        --wrist-key observation.images.wrist_image --trace-convention percent --init-from ... --out ...
    torchrun --nproc_per_node 2 training/stage3_e2e.py --dataset ... --init-from ... --out ...

The paper's comparison variants (same stage-3 schedule for all):
    (1) full:             stage 2 (default)  -> stage 3 --init-from <full stage2>/policy
    (2) use_trace=False:  stage 2 --no-trace -> stage 3 --init-from <no-trace stage2>/policy
    (3) use_latent=False: (the full stage 2) -> stage 3 --init-from <full stage2>/policy --set use_latent=false
    (4) both off:         (no stage 2)       -> stage 3 --set use_trace=false --set use_latent=false
``--set`` on a fresh model takes any SemanticVLAConfig field; with ``--init-from`` only the decoder-side
switches use_latent and trace_to_decoder.

The library function is ``semanticvla_core.training.stage3_e2e.train_e2e``. Re-running with the same
``--out`` resumes. Output: ``<out>/policy`` (LoRA merged) with norm_stats.json from the dataset.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import Subset

from semanticvla_core.model.config import PRESETS


def build_parser() -> argparse.ArgumentParser:
    from semanticvla_core.training.common import add_dataset_arguments, add_train_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="LeRobot v3 dataset root (built by the data pipeline)")
    src.add_argument("--synthetic", type=int, metavar="N", help="use N generated toy samples instead")
    p.add_argument("--init-from", default=None, help="stage-2 policy directory (default: a fresh --config model)")
    p.add_argument("--config", default="tiny", choices=sorted(PRESETS), help="preset (schedule; model "
                   "too when --init-from is not given)")
    p.add_argument("--backbone-path", default=None, help="a fresh pretrained-VLM --config model (qwen25vl-3b, ...): the "
                   "local model directory (else $SEMANTICVLA_BACKBONE_PATH); with --init-from the checkpoint has it")
    p.add_argument("--out", required=True, help="output directory (phase e2e/, final policy/)")
    p.add_argument("--latent-tokenizer", default=None, help="stage-1 tokenizer (only without --init-from)")
    p.add_argument("--latent-ids", default=None, help="(frames, K) latent ids of --dataset (.safetensors/.npy), "
                   "e.g. <stage2 out>/latent_ids.safetensors; a missing .safetensors file is computed once with the "
                   "stage-1 tokenizer (--latent-tokenizer, else the --init-from policy's latent_tokenizer/), e.g. "
                   "to train stage 3 on other demonstrations than stage 2")
    p.add_argument("--lambda-vlm", type=float, default=None, help="weight of L_VLM (default 0.1)")
    p.add_argument("--anchor-noise", type=float, default=None,
                   help="std of noise on the ground-truth anchors behind e_tau in training (default 0; the demo "
                        "recipe uses about the VLM's held-out anchor error)")
    p.add_argument("--lambda-keypoints", type=float, default=None,
                   help="weight of the trace keypoint loss (default 0 = off): the stem's first two language-queried "
                        "keypoints learn where the demonstration grasps and places (needs --set "
                        "'stem={..., \"lang_keypoints\": 2}'); the demo recipe uses 1")
    p.add_argument("--own-plans", action="store_true",
                   help="condition the decoder on the VLM's own greedy plans (generated once before training) "
                        "instead of the ground-truth trace / latent tokens: the conditions it gets at run time")
    p.add_argument("--freeze-vlm", action="store_true",
                   help="keep the stage-2 VLM frozen (no LoRA) and train only the decoder and its stem, on the VLM's "
                        "own plans and features computed once before training (implies --own-plans; several "
                        "times cheaper per step on a CPU)")
    p.add_argument("--keep-decoder", action="store_true",
                   help="with --init-from a stage-3 policy: continue training its flow decoder (more steps, or "
                        "fine-tuning on new data) instead of building a fresh one")
    p.add_argument("--image-delay-max", type=int, default=0, metavar="FRAMES",
                   help="train for the run-time loop that decodes a plan with the fresh state: each sample's images "
                        "(and plan) come from 0..FRAMES frames before its state and actions (uniform)")
    p.add_argument("--image-delay-p0", type=float, default=None, metavar="P",
                   help="with --image-delay-max: the share of samples without delay (the rest uniform over "
                        "1..FRAMES; default: uniform over 0..FRAMES); high keeps the synchronous loop's success")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="keep an exponential moving average of the trained weights and save it (e.g. 0.999; "
                        "default off)")
    p.add_argument("--lora-r", type=int, default=None)
    p.add_argument("--lora-alpha", type=int, default=None)
    p.add_argument("--state-dim", type=int, default=None, help="proprio size (default: from the data)")
    p.add_argument("--no-frame-cache", action="store_true",
                   help="decode video frames per sample instead of caching decoded episodes in memory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override (JSON values), e.g. --set use_trace=false --set use_latent=false for "
                        "a fresh model; with --init-from only use_latent / trace_to_decoder")
    p.add_argument("--steps", type=int, default=None)
    add_train_arguments(p)
    add_dataset_arguments(p)
    p.add_argument("--eval-fraction", type=float, default=0.05)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from semanticvla_core.model.config import SemanticVLAConfig
    from semanticvla_core.policy import DECODER_SIDE_SWITCHES
    from semanticvla_core.training.stage2_vlm import synthetic_dataset_for
    from semanticvla_core.training.stage3_e2e import stage3_config, train_e2e

    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    init_overrides = {}
    if overrides and args.init_from:
        bad = sorted(set(overrides) - set(DECODER_SIDE_SWITCHES))
        if bad:
            print(f"error: --set {', '.join(bad)} with --init-from: a stage-2 checkpoint fixes its VLM; only the "
                  f"decoder-side switches {', '.join(DECODER_SIDE_SWITCHES)} can change", file=sys.stderr)
            return 2
        init_overrides, overrides = overrides, {}
    if args.backbone_path and not args.init_from:
        overrides["pretrained_path"] = args.backbone_path
    cfg = stage3_config(args.config, output_dir=args.out, init_from=args.init_from, **overrides)
    cfg.init_overrides = init_overrides
    cfg.latent_tokenizer_dir = args.latent_tokenizer
    for attr, val in (("lambda_vlm", args.lambda_vlm), ("anchor_noise", args.anchor_noise),
                      ("lambda_keypoints", args.lambda_keypoints), ("lora_r", args.lora_r), ("lora_alpha", args.lora_alpha),
                      ("state_dim", args.state_dim)):
        if val is not None:
            setattr(cfg, attr, val)
    t = cfg.train
    for attr, val in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                      ("num_workers", args.num_workers), ("save_every", args.save_every), ("seed", args.seed),
                      ("device", args.device), ("amp", args.amp)):
        if val is not None:
            setattr(t, attr, val)
    cfg.freeze_vlm = bool(args.freeze_vlm)
    try:   # Stage3Config checks the combination (keep_decoder needs init_from)
        cfg = dataclasses.replace(cfg, keep_decoder=bool(args.keep_decoder))
    except ValueError as e:
        print(f"error: --keep-decoder: {e}", file=sys.stderr)
        return 2
    cfg.own_plans = bool(args.own_plans) or cfg.freeze_vlm
    if args.ema is not None:
        t.ema_decay = args.ema
    t.resume = not args.no_resume
    t.progress = not args.no_progress
    m = cfg.model
    if args.init_from:
        m = SemanticVLAConfig.from_dict({**json.loads((Path(args.init_from) / "config.json").read_text())["config"],
                                         **init_overrides})
    stats = None
    if args.synthetic is not None:
        n_eval = max(1, int(args.synthetic * args.eval_fraction))
        train_ds = synthetic_dataset_for(m, args.synthetic, seed=t.seed)
        eval_ds = synthetic_dataset_for(m, n_eval, seed=t.seed + 1)
    else:
        from semanticvla_core.data.pipelines import ActionDataset
        from semanticvla_core.training.common import dataset_kwargs
        data_kw = dataset_kwargs(args)
        if not args.latent_ids and m.use_latent:
            print("error: --latent-ids is required with --dataset (stage 2 writes <stage2 out>/latent_ids.safetensors)",
                  file=sys.stderr)
            return 2
        if args.latent_ids and not Path(args.latent_ids).is_file():
            if not args.latent_ids.endswith(".safetensors"):
                print(f"error: --latent-ids {args.latent_ids} does not exist", file=sys.stderr)
                return 2
            from semanticvla_core.training.stage2_vlm import ensure_latent_ids
            from semanticvla_core.policy import LATENT_TOKENIZER_DIR
            tok = args.latent_tokenizer or (Path(args.init_from) / LATENT_TOKENIZER_DIR if args.init_from else None)
            if tok is None or not Path(tok).is_dir():
                print(f"error: --latent-ids {args.latent_ids} does not exist and no stage-1 tokenizer to compute it "
                      f"(--latent-tokenizer)", file=sys.stderr)
                return 2
        try:     # a camera key or the trace convention (the message names the option)
            if args.latent_ids and not Path(args.latent_ids).is_file():
                ensure_latent_ids(args.latent_ids, args.dataset, tok, progress=t.progress, camera=data_kw["camera"],
                                  trace_convention=data_kw["trace_convention"])
            full = ActionDataset(args.dataset, image_size=m.image_size, window=m.window, num_anchors=m.num_anchors,
                                 latent_ids=args.latent_ids, horizon=m.horizon, stem_image_size=m.stem.image_size,
                                 stem_wrist_size=m.stem.wrist_size, cache_frames=not args.no_frame_cache,
                                 action_frame=m.action_frame, image_delay_max=args.image_delay_max,
                                 image_delay_p0=args.image_delay_p0, **data_kw)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        stats = getattr(full, "stats", None)
        g = torch.Generator().manual_seed(t.seed)
        perm = torch.randperm(len(full), generator=g).tolist()
        n_eval = int(len(full) * args.eval_fraction)
        train_ds, eval_ds = Subset(full, perm[n_eval:]), Subset(full, perm[:n_eval])
    path = train_e2e(cfg, train_ds, eval_ds, norm_stats=stats)
    from semanticvla_core.training.common import cleanup_distributed
    cleanup_distributed()
    print(f"policy (stage 3, LoRA merged) saved to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
