#!/usr/bin/env python3
"""Data-loading benchmark: decoded frames/s (AV1, H.264; sequential and random access) and samples/s of the
three stage pipelines, on this machine. Prints a report and writes it as the ``## Data loading`` section of
BENCHMARKS.md (other sections are left alone).

  python benchmarks/bench_data.py                      # synthetic datasets, 224x224 cameras
  python benchmarks/bench_data.py --dataset PATH       # also an existing dataset (its own codec)
  python benchmarks/bench_data.py --no-write           # print only

Numbers are medians over ``--runs`` runs. The machine is shared; the load average is printed with them.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from semanticvla_core.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Data loading"
# Training consumption of the `tiny` model (samples/s = optimizer steps/s x batch), read off the metrics.jsonl
# of tiny-preset training runs on this 2-core machine (synthetic in-memory data, 1 process, 2026-11-22):
# stage 1 phase A (trace VQ-VAE) ~48 steps/s x 32; phase B (images) ~6.5 steps/s x 32; stage 2 ~5.9 steps/s
# x 16; stage 3 ~6.7 steps/s x 16. Override with --consumption. The brief's placeholder (8 samples per step at
# ~0.5 s per step = 16 samples/s) is far below these.
TINY_CONSUMPTION = {"tokenizer_traces": 48 * 32, "tokenizer": 6.5 * 32, "vlm": 5.9 * 16, "action": 6.7 * 16}


def scene(e: int, i: int, h: int, w: int) -> np.ndarray:
    """A textured, moving synthetic scene (harder to compress than flat colours)."""
    rng = np.random.default_rng(1000 + e)
    base = rng.integers(0, 256, (h // 8 + 4, w // 8 + 4, 3)).astype(np.uint8)
    import cv2
    tex = cv2.resize(base, (w + 32, h + 32), interpolation=cv2.INTER_CUBIC)
    dx, dy = (i * 2) % 32, (i // 2) % 32
    img = tex[dy:dy + h, dx:dx + w].copy()
    cx, cy = int(w / 2 + w / 4 * np.cos(i / 10)), int(h / 2 + h / 4 * np.sin(i / 13))
    img[max(cy - 12, 0):cy + 12, max(cx - 12, 0):cx + 12] = (220, 60, 40)
    return img


def build(root: Path, codec: str, episodes: int, length: int, h: int, w: int, wrist: int) -> Path:
    from semanticvla_core.data.lerobot_v3 import LeRobotV3Writer
    from semanticvla_core.data.tracex import tracex_features
    feats = {"observation.images.agentview": {"dtype": "video", "shape": [h, w, 3]},
             "observation.images.wrist": {"dtype": "video", "shape": [wrist, wrist, 3]},
             "observation.state": {"dtype": "float32", "shape": [15]},
             "action": {"dtype": "float32", "shape": [7]}, **tracex_features(12)}
    rng = np.random.default_rng(0)
    with LeRobotV3Writer(root, 20, feats, video_codec=codec) as wr:
        for e in range(episodes):
            for i in range(length):
                wr.add_frame({"observation.images.agentview": scene(e, i, h, w),
                              "observation.images.wrist": scene(e + 50, i, wrist, wrist),
                              "observation.state": rng.normal(size=15).astype(np.float32),
                              "action": rng.normal(size=7).astype(np.float32),
                              "trace.x": rng.uniform(size=12).astype(np.float32),
                              "trace.y": rng.uniform(size=12).astype(np.float32), "trace.present": True})
            wr.save_episode("pick up the red block")
    return root


def median_rate(fn, n_items: int, runs: int) -> float:
    rates = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        rates.append(n_items / (time.perf_counter() - t))
    return statistics.median(rates)


def bench_decode(root: Path, runs: int, n: int) -> dict:
    from semanticvla_core.data.lerobot_v3 import LeRobotV3Dataset
    ds = LeRobotV3Dataset(root)
    key = "observation.images.agentview"
    e_len = ds.episode_length(0)
    n_seq = min(n, e_len * ds.num_episodes)
    order = [(e, i) for e in range(ds.num_episodes) for i in range(ds.episode_length(e))][:n_seq]
    rng = np.random.default_rng(0)
    rnd = [order[k] for k in rng.integers(0, len(order), n)]

    def seq():
        ds.close()
        for e, i in order:
            ds.get_video_frame(key, e, i)

    def rand():
        for e, i in rnd:
            ds.get_video_frame(key, e, i)
    h, w, _ = ds.meta.video_shape(key)
    return {"codec": ds.features[key]["info"]["video.codec"], "res": f"{w}x{h}",
            "seq": median_rate(seq, len(order), runs), "rand": median_rate(rand, len(rnd), runs)}


def bench_stages(root: Path, image_size: int, runs: int, n: int, workers: int) -> dict:
    import torch
    from semanticvla_core.data.lerobot_v3 import LeRobotV3Dataset
    from semanticvla_core.data.pipelines import ActionDataset, TokenizerDataset, VLMDataset, make_loader
    torch.set_num_threads(1)
    total = LeRobotV3Dataset(root).num_frames
    ids = np.random.default_rng(0).integers(0, 32, (total, 4))
    stages = {"tokenizer_traces": TokenizerDataset(root, image_size=image_size, horizon=8, with_images=False),
              "tokenizer": TokenizerDataset(root, image_size=image_size, horizon=8),
              "vlm": VLMDataset(root, image_size=image_size, latent_ids=ids),
              "action": ActionDataset(root, image_size=image_size, latent_ids=ids, horizon=8)}
    out = {}
    for name, ds in stages.items():
        rng = np.random.default_rng(1)
        idx = rng.integers(0, len(ds), n)
        r0 = median_rate(lambda: [ds[int(i)] for i in idx], n, runs)
        r1 = None
        if workers > 0:
            bs = 8
            loader = make_loader(ds, batch_size=bs, num_workers=workers, shuffle=True)
            it = iter(loader)
            next(it)  # start-up excluded
            nb = max(2, n // bs)

            def run():
                nonlocal it
                for _ in range(nb):
                    try:
                        next(it)
                    except StopIteration:
                        it = iter(loader)
                        next(it)
            r1 = median_rate(run, nb * bs, runs)
            del it, loader
        out[name] = (r0, r1)
    return out


def render(dec: list[dict], stage_tables: list[dict], args, workers: int, build_s: dict, consumption: dict) -> str:
    load = os.getloadavg()
    data = []
    if not args.no_synthetic:
        data.append(f"synthetic, {args.episodes} episodes x {args.length} frames, agent view {args.width}x{args.height} "
                    f"+ wrist {args.wrist}x{args.wrist} (the simulator's sizes)")
    data += [f"dataset `{d}`" for d in (args.dataset or [])]
    lines = [SECTION, "",
             f"Command: `python benchmarks/bench_data.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
             f"Machine: {cpu_model()}, {os.cpu_count()} cores (shared with other jobs; load average "
             f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}), Python {platform.python_version()}, "
             f"PyAV {__import__('av').__version__}, pyarrow {__import__('pyarrow').__version__}.",
             "Data: " + "; ".join(data) + f". Medians of {args.runs} runs.", "",
             "### Decoding (agent view, `LeRobotV3Dataset.get_video_frame`, uint8 HxWx3 out)", "",
             "| data | codec | resolution | sequential frames/s | random-access frames/s | write frames/s (2 cameras) |",
             "|---|---|---|---|---|---|"]
    for d in dec:
        ws = build_s.get(d["label"])
        lines.append(f"| {d['label']} | {d['codec']} | {d['res']} | {d['seq']:.0f} | {d['rand']:.0f} | "
                     f"{'-' if ws is None else f'{ws:.0f}'} |")
    names = {"tokenizer_traces": "tokenizer, traces only (stage 1 phase A)",
             "tokenizer": "tokenizer o_t, o_t+H, trace (phase B)", "vlm": "VLM (stage 2)", "action": "action (stage 3)"}
    for tab in stage_tables:
        lines += ["", f"### Stage pipelines vs. training consumption: {tab['label']} ({tab['codec']}; samples/s, "
                  f"image_size {args.image_size} = `tiny`)", "",
                  f"| stage sample | main process | `make_loader` ({workers} worker{'s' if workers != 1 else ''}, "
                  "batch 8) | `tiny` training consumes | loader / consumption |", "|---|---|---|---|---|"]
        for name, (r0, r1) in tab["rates"].items():
            best = r1 if r1 is not None else r0
            c = consumption.get(name)
            ratio = "-" if not c else f"{best / c:.1f}x{'' if best >= c else ' (BOTTLENECK)'}"
            lines.append(f"| {names.get(name, name)} | {r0:.0f} | {'-' if r1 is None else f'{r1:.0f}'} | "
                         f"{'-' if not c else f'~{c:.0f}'} | {ratio} |")
    lines += ["", "Consumption = optimizer steps/s x batch size of `tiny`-preset training runs on this machine "
              "(synthetic in-memory data, one process, read off their metrics.jsonl; see TINY_CONSUMPTION in the "
              "script); a training process and the loader worker share the 2 cores, so neither rate is reached "
              "in full when both run. Other jobs share this machine: repeated runs differ by up to 2-3x (the load average "
              "above is the best hint), so read the ratios, not the digits.",
              "Stage samples decode 1 frame (VLM, action; +1 wrist frame) or 2 frames (tokenizer: o_t and o_t+H) "
              "at random positions, so they are bounded by random-access decoding. The synthetic scenes (smooth "
              "texture + moving square, GOP 2, AV1 crf 30 / H.264 crf 23) stand in for camera images; compare with "
              "the rows of a real dataset (--dataset).", ""]
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    old = path.read_text() if path.is_file() else "# Benchmarks\n\n"
    pat = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pat.sub(lambda _: text + "\n", old) if pat.search(old) else old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", default=None,
                   help="also benchmark this dataset (repeatable); needs observation.images.agentview + TraceX")
    p.add_argument("--no-synthetic", action="store_true", help="skip the synthetic datasets")
    p.add_argument("--episodes", type=int, default=6)
    p.add_argument("--length", type=int, default=60)
    p.add_argument("--height", type=int, default=128, help="agent-view height (simulator default 128)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--wrist", type=int, default=96, help="wrist camera size (simulator default 96)")
    p.add_argument("--image-size", type=int, default=64, help="pipeline output size S (tiny preset: 64)")
    p.add_argument("--consumption", default=None,
                   help="override training consumption, e.g. 'tokenizer=208,vlm=94,action=107' (samples/s)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--samples", type=int, default=48, help="items per run")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: make_loader's)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    a = p.parse_args(argv)
    from semanticvla_core.data.pipelines import default_num_workers
    workers = default_num_workers() if a.workers is None else a.workers
    with tempfile.TemporaryDirectory() as tmp:
        roots, build_s = {}, {}
        if not a.no_synthetic:
            for codec in ("av1", "h264"):
                t = time.perf_counter()
                label = f"synthetic {codec}"
                roots[label] = build(Path(tmp) / codec, codec, a.episodes, a.length, a.height, a.width, a.wrist)
                build_s[label] = 2 * a.episodes * a.length / (time.perf_counter() - t)  # frames of 2 cameras
                print(f"built {codec} dataset in {time.perf_counter() - t:.1f}s", flush=True)
        for d in a.dataset or []:
            roots[Path(d).name] = Path(d)
        if not roots:
            p.error("nothing to benchmark (--no-synthetic without --dataset)")
        from semanticvla_core.data.lerobot_v3 import load_meta
        dec = []
        for label, root in roots.items():
            dec.append({"label": label, **bench_decode(root, a.runs, a.samples * 2)})
            print(f"decode {dec[-1]}", flush=True)
        stage_tables = []
        for label, root in roots.items():
            if label == "synthetic h264":
                continue  # one synthetic stage table (AV1, lerobot's default codec) is enough
            rates = bench_stages(root, a.image_size, a.runs, a.samples, workers)
            codec = load_meta(root).features["observation.images.agentview"]["info"]["video.codec"]
            stage_tables.append({"label": label, "codec": codec, "rates": rates})
            print(f"stages {label} {rates}", flush=True)
        consumption = dict(TINY_CONSUMPTION)
        if a.consumption:
            for kv in a.consumption.split(","):
                k, v = kv.split("=")
                consumption[k.strip()] = float(v)
        text = render(dec, stage_tables, a, workers, build_s, consumption)
    print(text)
    if not a.no_write:
        write_section(text, Path(a.out))
        print(f"wrote section '{SECTION}' of {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
