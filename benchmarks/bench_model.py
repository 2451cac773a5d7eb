#!/usr/bin/env python3
"""Model speed benchmark: prints median timings (never asserted anywhere).

    python benchmarks/bench_model.py                 # tiny preset on CPU (float32)
    python benchmarks/bench_model.py --gpu           # base and paper shapes, random weights, bf16 on CUDA
    python benchmarks/bench_model.py --gpu --presets base --repeats 20

Reports: the machine; text-tokenizer encode throughput; the planner breakdown of
``SemanticVLAPolicy.plan`` (vision, prefill, per-token constrained decode, the extra step that yields
the latent hidden states, flow-matching steps) and the end-to-end plan latency. In GPU mode also the
LM weight bytes, the measured device-to-device copy bandwidth and the ratio (for eager decoding and
for the opt-in CUDA-graph decode step, ``SemanticVLM.cuda_graph``)
    measured decode time per token / (LM weight bytes / bandwidth)
i.e. how far batch-1 decoding is from the memory-bandwidth bound (1.0 = at the bound).
Random weights: generation length is fixed by the grammar (N anchors, K latents), so timings do not
depend on what the weights say, except for the digit count per coordinate (1-4).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from semanticvla_core.machine import cpu_model  # noqa: E402


def machine_description() -> str:
    cpu = cpu_model()
    lines = [f"machine: {platform.platform()}", f"cpu: {cpu}, {os.cpu_count()} logical cores, "
             f"torch threads {torch.get_num_threads()}", f"python {platform.python_version()}, torch {torch.__version__}"]
    try:
        import transformers
        lines[-1] += f", transformers {transformers.__version__}"
    except ImportError:
        pass
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(f"gpu: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs")
    return "\n".join(lines)


def med(xs) -> float:
    return float(statistics.median(xs))


def bench_tokenizer(tok, n: int = 2000) -> None:
    from semanticvla_core.model.prompts import format_prompt
    from semanticvla_core.model.text_tokenizer import generate_corpus
    from semanticvla_core.traces import encode_trace_text

    rng = np.random.default_rng(0)
    lines = [format_prompt(s) for s in generate_corpus(n, seed=123)]
    lines = [s + " " + encode_trace_text(rng.random((4, 2))) for s in lines]
    t0 = time.perf_counter()
    total = sum(len(tok.encode(s, add_special_tokens=False)) for s in lines)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok(lines, add_special_tokens=False)
    batched = time.perf_counter() - t0
    print(f"tokenizer encode: {n / one:,.0f} lines/s, {total / one:,.0f} tokens/s one by one; "
          f"{n / batched:,.0f} lines/s batched ({total / n:.1f} tokens/line, vocab {len(tok)})")


def bench_plan(policy, device, batch: int, repeats: int, warmup: int = 2) -> dict[str, float]:
    S = policy.config.image_size
    g = torch.Generator().manual_seed(0)
    images = torch.rand((batch, 3, S, S), generator=g).to(device)
    instr = ["pick up the red block and put it in the bowl"] * batch
    state = np.zeros(policy.config.state_dim, np.float32) if policy.config.state_dim else None
    rows, walls = [], []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        plan = policy.plan(images, instr, state=state)
        walls.append(time.perf_counter() - t0)
        rows.append(plan.timings)
    rows, walls = rows[warmup:], walls[warmup:]
    res = {k: med([r[k] for r in rows]) for k in rows[0]}
    res["wall"] = med(walls)
    res["flow_per_step"] = res["flow"] / policy.decoder.config.num_steps
    res["new_tokens"] = float(len(plan.texts[0]))  # characters, informational
    return res


def print_breakdown(name: str, r: dict, batch: int) -> None:
    ms = lambda s: f"{1e3 * s:8.2f} ms"  # noqa: E731
    print(f"  [{name}, batch {batch}] median of the repeats")
    print(f"    vision (towers + projector)   {ms(r['vision'])}")
    print(f"    prefill (image + prompt)      {ms(r['prefill'])}")
    print(f"    decode per token (KV cache)   {ms(r['decode_per_token'])}   (decode total {ms(r['decode'])})")
    print(f"    latent hidden states (E_a)    {ms(r['latent_hidden'])}")
    print(f"    flow decoder per Euler step   {ms(r['flow_per_step'])}   (flow total {ms(r['flow'])})")
    print(f"    end-to-end plan               {ms(r['total'])}   (wall {ms(r['wall'])})")


def cpu_mode(args) -> None:
    from semanticvla_core.model.config import get_config
    from semanticvla_core.policy import SemanticVLAPolicy

    torch.manual_seed(0)
    policy = SemanticVLAPolicy(get_config("tiny")).eval()
    nparams = sum(p.numel() for p in policy.vlm.parameters())
    print(f"\npreset tiny on CPU float32: VLM {nparams / 1e6:.2f} M params, decoder "
          f"{sum(p.numel() for p in policy.decoder.parameters()) / 1e6:.2f} M, "
          f"{policy.decoder.config.num_steps} flow steps")
    bench_tokenizer(policy.text_tokenizer)
    for b in args.batches:
        print_breakdown("tiny", bench_plan(policy, torch.device("cpu"), b, args.repeats), b)


def copy_bandwidth(device) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + written)."""
    x = torch.empty(2 ** 30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 20
    for _ in range(n):
        y.copy_(x)
    torch.cuda.synchronize()
    bw = 2 * x.numel() * n / (time.perf_counter() - t0)
    del x, y
    torch.cuda.empty_cache()
    return bw


def gpu_mode(args) -> None:
    if not torch.cuda.is_available():
        print("--gpu: no CUDA device available", file=sys.stderr)
        sys.exit(2)
    from semanticvla_core.model.config import get_config
    from semanticvla_core.policy import SemanticVLAPolicy

    dev = torch.device("cuda")
    bw = copy_bandwidth(dev)
    print(f"measured device-to-device copy bandwidth: {bw / 1e12:.2f} TB/s (read + write)")
    for name in args.presets:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        with torch.device(dev):
            policy = SemanticVLAPolicy(get_config(name))
        policy = policy.to_runtime(dev, torch.bfloat16).eval()
        torch.cuda.synchronize()
        build = time.perf_counter() - t0
        lm = policy._causal_lm()
        lm_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())
        vlm_params = sum(p.numel() for p in policy.vlm.parameters())
        print(f"\npreset {name} on {torch.cuda.get_device_name(0)} bf16 (random weights, built in {build:.0f} s): "
              f"VLM {vlm_params / 1e9:.3f} B params, LM weights {lm_bytes / 2**30:.2f} GiB")
        if name == args.presets[0]:
            bench_tokenizer(policy.text_tokenizer)
        bound = lm_bytes / bw
        for b in args.batches:
            for graph in (False, True):
                policy.vlm.cuda_graph = graph
                r = bench_plan(policy, dev, b, args.repeats)
                print_breakdown(f"{name}, {'CUDA graph' if graph else 'eager'} decode", r, b)
                print(f"    weight-read bound per token    {1e3 * bound:8.2f} ms   -> measured decode / bound = "
                      f"{r['decode_per_token'] / bound:.2f}")
            # the graph path must produce what the eager path produces. Prompts of different lengths (left
            # padding) make both paths use the same masked attention kernel; with identical unpadded prompts the
            # eager path takes the mask-free causal kernel and bf16 rounding differs (random weights have flat
            # logits, so one flipped argmax then changes the text).
            S = policy.config.image_size
            imgs = torch.rand((b, 3, S, S), generator=torch.Generator().manual_seed(1)).to(dev)
            instr = [["put the green cup on the plate", "open the drawer", "wipe the table with the sponge"][i % 3]
                     for i in range(b)]
            if b == 1:
                instr = ["put the green cup on the plate"]
            outs = []
            for graph in (False, True):
                policy.vlm.cuda_graph = graph
                outs.append(policy.plan(imgs, instr))
            same = outs[0].texts == outs[1].texts
            diff = float(np.abs(outs[0].latent_hidden - outs[1].latent_hidden).max())
            tf = policy.vlm(imgs.to(policy.vlm_dtype), instr, torch.from_numpy(outs[1].anchors),
                            torch.from_numpy(outs[1].latent_ids)).latent_hidden.float().cpu().numpy()
            print(f"    eager vs CUDA graph: same text {same}, max |E_a difference| {diff:.3g}; graph E_a vs "
                  f"teacher-forced pass {float(np.abs(tf - outs[1].latent_hidden).max()):.3g} "
                  f"(E_a magnitude {float(np.abs(tf).max()):.3g})")
        policy.vlm.cuda_graph = False
        print(f"    peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        del policy, lm
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="base and paper shapes on CUDA in bf16")
    p.add_argument("--presets", default="base,paper", help="GPU mode: comma-separated presets")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    args.presets = [s for s in args.presets.split(",") if s]
    args.batches = [int(s) for s in args.batches.split(",") if s]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_description())
    with torch.no_grad():
        gpu_mode(args) if args.gpu else cpu_mode(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
