#!/usr/bin/env python3
"""Plan latency per transformers-VLM backbone (Qwen2.5-VL, Qwen3-VL, SmolVLM, PaliGemma): medians, never asserted.

    python benchmarks/bench_backbones.py                     # tiny random configs of the real classes, CPU float32
    python benchmarks/bench_backbones.py --gpu               # the same on CUDA, bf16 VLM
    python benchmarks/bench_backbones.py --gpu --path qwen25vl-3b=/models/Qwen2.5-VL-3B-Instruct \\
        --path smolvlm2-500m=/models/SmolVLM2-500M-Video-Instruct      # real local weights (model presets)

Each row: ``SemanticVLAPolicy.plan`` on one 4-anchor / 4-latent target (vision, prefill, constrained decode
with KV cache, the E_a step, flow decoder), batch 1 (``--batches``), median of ``--repeats`` after warm-up.
Untrained weights write a trace of random digits: the token count varies a little with the digits per
coordinate (1-4), so compare ``decode per token`` rather than totals across backbones.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import bench_plan, machine_description, print_breakdown  # noqa: E402


def _policy(preset: str, path: str | None, device: torch.device):
    from semanticvla_core.model.config import get_config
    from semanticvla_core.policy import SemanticVLAPolicy

    torch.manual_seed(0)
    cfg = get_config(preset, **({"pretrained_path": path} if path else {}))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return SemanticVLAPolicy(cfg).eval().to_runtime(device, dtype)


def main(argv=None) -> int:
    from semanticvla_core.model.config import HF_PRESETS, TINY_HF_PRESETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="run on CUDA with a bf16 VLM")
    p.add_argument("--path", action="append", default=[], metavar="PRESET=DIR",
                   help=f"also a real local model: PRESET one of {sorted(HF_PRESETS)}")
    p.add_argument("--no-tiny", action="store_true", help="skip the tiny random configurations")
    p.add_argument("--batches", type=int, nargs="+", default=[1])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu and not torch.cuda.is_available():
        print("error: --gpu but CUDA is not available", file=sys.stderr)
        return 2
    runs = [] if args.no_tiny else [(name, None) for name in TINY_HF_PRESETS]
    for item in args.path:
        name, sep, path = item.partition("=")
        if not sep or name not in HF_PRESETS:
            print(f"error: --path {item!r}: expected PRESET=DIR, PRESET one of {sorted(HF_PRESETS)}", file=sys.stderr)
            return 2
        runs.append((name, path))
    device = torch.device("cuda" if args.gpu else "cpu")
    print(machine_description())
    print(f"device {device}, VLM dtype {'bfloat16' if args.gpu else 'float32'}; median of {args.repeats} runs")
    summary = []
    for name, path in runs:
        policy = _policy(name, path, device)
        n = sum(x.numel() for x in policy.vlm.parameters())
        print(f"\n{name} ({policy.config.vlm.backbone}{', ' + path if path else ', random init'}): VLM {n / 1e6:.2f} M "
              f"params, {policy.vlm.backbone.num_image_tokens} image tokens at {policy.config.image_size} px")
        for b in args.batches:
            r = bench_plan(policy, device, b, args.repeats)
            print_breakdown(name, r, b)
            summary.append((name, b, r))
        del policy
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\nsummary (median ms): backbone, batch, plan, decode/token")
    for name, b, r in summary:
        print(f"  {name:18s} {b:3d} {1e3 * r['total']:9.2f} {1e3 * r['decode_per_token']:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
