"""Stage 1: train the semantic latent action tokenizer (no language, no actions).

Schedule ``"sequential"`` (default, as in the paper): phase ``stage_a`` trains the trace VQ-VAE
(trace encoder, trace codebook, trace decoder) for ``stage_a_steps``; phase ``stage_b`` freezes it and
trains the visual-grounding half (vision tower if trainable, fusion, latent codebook, latent trace
decoder, visual decoder) for ``stage_b_steps``. Schedule ``"joint"`` trains everything at once for
``stage_a_steps + stage_b_steps`` with L_LAT = L_A + L_B.

Each phase is a ``common.train_loop`` phase under ``<output_dir>/`` (resumable, loss.png, TensorBoard).
At the end the held-out set (if given) is evaluated - trace reconstruction error of both decoders,
perplexity and codes in use of both codebooks - written to ``<output_dir>/tokenizer/stage1_report.json``,
and the tokenizer is saved with ``save_pretrained`` to ``<output_dir>/tokenizer`` (with decoders, so it
can be fine-tuned further; the encoder is all later stages use).

Samples are dicts as agreed for stage 1: ``image_t``, ``image_tH`` float32 (3,S,S) in [0,1],
``trace`` float32 (W,2), ``trace_present`` bool. ``SyntheticTokenizerDataset`` generates such samples
(curve families + a rendered moving marker) for tests and smoke runs.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..model.latent_tokenizer import LatentTokenizer, LatentTokenizerConfig, tokenizer_config
from ..model.vq import codebook_usage
from .common import TrainConfig, barrier, seed_everything, setup_distributed, train_loop

REPORT_NAME = "stage1_report.json"


@dataclass
class Stage1Config:
    """Stage 1 settings: the tokenizer architecture, the optimisation and the A/B schedule."""

    model: LatentTokenizerConfig = field(default_factory=LatentTokenizerConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/stage1"))
    schedule: str = "sequential"        # "sequential" (A then B) | "joint"
    stage_a_steps: int = 5000
    stage_b_steps: int = 5000
    stage_b_lr: float | None = None     # default: train.lr
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.schedule not in ("sequential", "joint"):
            raise ValueError(f"Stage1Config.schedule must be 'sequential' or 'joint', got {self.schedule!r}")


def stage1_config(name: str, output_dir: str = "runs/stage1", **model_overrides) -> Stage1Config:
    """Presets matching ``tokenizer_config(name)``: ``tiny`` trains in a few CPU minutes."""
    if name == "tiny":
        train = TrainConfig(output_dir=output_dir, batch_size=32, lr=1e-3, warmup_steps=20, log_every=10,
                            save_every=200)
        return Stage1Config(tokenizer_config("tiny", **model_overrides), train, stage_a_steps=1000, stage_b_steps=1500)
    if name in ("base", "paper"):
        train = TrainConfig(output_dir=output_dir, batch_size=64, lr=3e-4, warmup_steps=500, save_every=1000)
        return Stage1Config(tokenizer_config(name, **model_overrides), train, stage_a_steps=20000, stage_b_steps=20000)
    raise ValueError(f"unknown stage 1 preset {name!r}; choose from ['base', 'paper', 'tiny']")


# ------------------------------------------------------------------------------------------------
# synthetic data
# ------------------------------------------------------------------------------------------------
TRACE_FAMILIES = ("line", "arc", "wave", "hook", "loop")


def synthetic_trace(rng: np.random.Generator, window: int, family: str | None = None) -> np.ndarray:
    """One (window, 2) trace in [0.05, 0.95]^2 from a family of curves with random pose, size and speed."""
    family = family or TRACE_FAMILIES[rng.integers(len(TRACE_FAMILIES))]
    s = np.linspace(0, 1, window)
    s = s ** rng.uniform(0.7, 1.4)                                   # speed profile
    length = rng.uniform(0.15, 0.45)
    if family == "line":
        local = np.stack([s, np.zeros_like(s)], 1)
    elif family == "arc":
        bend = rng.choice([-1, 1]) * rng.uniform(0.6, 1.6)
        local = np.stack([np.sin(bend * s) / bend, (1 - np.cos(bend * s)) / bend], 1)
    elif family == "wave":
        local = np.stack([s, 0.15 * np.sin(2 * math.pi * s * rng.uniform(0.8, 1.5))], 1)
    elif family == "hook":
        k = rng.uniform(0.5, 0.75)
        local = np.where(s[:, None] < k, np.stack([s, 0 * s], 1),
                         np.stack([k + 0 * s, rng.choice([-1, 1]) * (s - k)], 1))
    elif family == "loop":
        local = 0.3 * np.stack([np.sin(2 * math.pi * s), 1 - np.cos(2 * math.pi * s)], 1)
    else:
        raise ValueError(f"unknown trace family {family!r}; choose from {TRACE_FAMILIES}")
    ang = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    pts = (local * length) @ rot.T
    pts -= pts.mean(0)
    span = np.maximum(pts.max(0) - pts.min(0), 1e-6)
    centre = rng.uniform(0.1 + span / 2, 0.9 - span / 2) if np.all(span < 0.8) else np.full(2, 0.5)
    return np.clip(pts + centre, 0.05, 0.95).astype(np.float32)


def render_marker(point: np.ndarray, size: int, colour: np.ndarray, background: np.ndarray,
                  radius: float = 0.08) -> np.ndarray:
    """(3, size, size) image: ``background`` with a disc of ``colour`` at normalized ``point``."""
    c = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(c, c)                                          # u right, v down (camera.py)
    disc = ((u - point[0]) ** 2 + (v - point[1]) ** 2) <= radius ** 2
    img = background.copy()
    img[:, disc] = colour[:, None]
    return img


class SyntheticTokenizerDataset(Dataset):
    """Deterministic toy stage-1 data: sample i is generated from ``seed`` and i.

    Trace: one of ``TRACE_FAMILIES``. Images: a textured background with a coloured marker (the
    "end-effector") at trace[0] in ``image_t`` and at trace[horizon] in ``image_tH``, plus a static
    distractor square, so the image pair carries the motion the trace describes.
    """

    def __init__(self, n: int, image_size: int = 64, window: int = 12, horizon: int | None = None, seed: int = 0):
        self.n, self.image_size, self.window, self.seed = n, image_size, window, seed
        self.horizon = window - 1 if horizon is None else horizon
        if not 0 <= self.horizon < window:
            raise ValueError(f"horizon must be in [0, window), got {self.horizon} for window {window}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        trace = synthetic_trace(rng, self.window)
        S = self.image_size
        bg = np.broadcast_to(rng.uniform(0.2, 0.5, (3, 1, 1)), (3, S, S)).astype(np.float32).copy()
        bg += rng.normal(0, 0.02, (3, S, S)).astype(np.float32)
        x0, y0 = rng.integers(0, S - S // 6, 2)
        bg[:, y0:y0 + S // 6, x0:x0 + S // 6] = rng.uniform(0, 1, (3, 1, 1))
        colour = np.array([0.95, 0.9, 0.1], np.float32)
        img_t = render_marker(trace[0], S, colour, bg)
        img_tH = render_marker(trace[self.horizon], S, colour, bg)
        return {"image_t": torch.from_numpy(np.clip(img_t, 0, 1)), "image_tH": torch.from_numpy(np.clip(img_tH, 0, 1)),
                "trace": torch.from_numpy(trace), "trace_present": torch.tensor(True)}


# ------------------------------------------------------------------------------------------------
# evaluation and training
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_tokenizer(model: LatentTokenizer, dataset: Dataset, batch_size: int = 64,
                       device: torch.device | str | None = None) -> dict[str, float]:
    """Held-out metrics (no codebook updates, no collectives): mean Euclidean point error of the stage-A
    trace reconstruction (``trace_err``) and of the trace decoded from the K latent codes
    (``latent_trace_err``), visual reconstruction MSE with the sample's own latent codes and with
    another sample's (the gap shows how much the visual decoder relies on the latents), and
    perplexity / codes in use of both codebooks."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    errs, lerrs, vis, vis_shuf, tids, lids = [], [], [], [], [], []
    for b in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        present = b["trace_present"].reshape(-1).bool()
        tr, it, ih = (b[k].to(device) for k in ("trace", "image_t", "image_tH"))
        out = model(tr, it, ih, b["trace_present"].to(device), stage="joint")
        enc = model.encode(tr, it, ih)
        rec = model.trace_decoder(enc.trace_code)
        lrec = model.latent_trace_decoder(enc.latent_code)
        errs.append((rec - tr).norm(dim=-1).mean(1).cpu()[present])
        lerrs.append((lrec - tr).norm(dim=-1).mean(1).cpu()[present])
        vis.append(float(out["visual_recon_loss"]) * tr.shape[0])
        if tr.shape[0] > 1:   # the same prediction with another sample's latent codes
            pred = model.predict_visual(it, model.patch_features(it), enc.latent_code.roll(1, 0))
            target = model.visual_target(ih, model.patch_features(ih))
            vis_shuf.append(float(F.mse_loss(pred, target)) * tr.shape[0])
        tids.append(enc.trace_ids.cpu())
        lids.append(enc.latent_ids.cpu())
    model.train(was_training)
    c = model.config
    n = sum(len(x) for x in tids)
    t_ppl, t_used = codebook_usage(torch.cat(tids), c.trace_codebook_size)
    l_ppl, l_used = codebook_usage(torch.cat(lids), c.latent_codebook_size)
    return {"trace_err": float(torch.cat(errs).mean()), "latent_trace_err": float(torch.cat(lerrs).mean()),
            "visual_recon_mse": sum(vis) / max(1, n), "visual_recon_mse_shuffled_latents": sum(vis_shuf) / max(1, n),
            "trace_perplexity": t_ppl, "trace_codes_used": t_used,
            "latent_perplexity": l_ppl, "latent_codes_used": l_used, "num_samples": n}


def _step_fn(stage: str):
    def step(net, batch):
        return net(batch["trace"], batch.get("image_t"), batch.get("image_tH"), batch.get("trace_present"),
                   stage=stage)
    return step


def train_tokenizer(cfg: Stage1Config, dataset: Dataset, eval_dataset: Dataset | None = None,
                    model: LatentTokenizer | None = None) -> Path:
    """Run stage 1 (see module docstring); returns ``<output_dir>/tokenizer`` (the save_pretrained dir).

    Works unchanged under torchrun (every rank calls it; rank 0 writes files).
    """
    info = setup_distributed(cfg.train.device)
    if model is None:
        seed_everything(cfg.train.seed)
        model = LatentTokenizer(cfg.model)
    phases = [("stage_a", "A", cfg.stage_a_steps, cfg.train.lr), ("stage_b", "B", cfg.stage_b_steps,
              cfg.stage_b_lr or cfg.train.lr)]
    if cfg.schedule == "joint":
        phases = [("joint", "joint", cfg.stage_a_steps + cfg.stage_b_steps, cfg.train.lr)]
    last: dict = {}
    for name, stage, steps, lr in phases:
        if steps <= 0:
            continue
        model.set_stage(stage)
        tcfg = dataclasses.replace(cfg.train, steps=steps, lr=lr, warmup_steps=min(cfg.train.warmup_steps, steps // 4))
        res = train_loop(model, dataset, _step_fn(stage), tcfg, name=name, info=info)
        last[name] = res.last_metrics
    model.requires_grad_(False)
    out = Path(cfg.train.output_dir) / "tokenizer"
    if info.is_main:
        model.save_pretrained(out)
        report = {"train_last_metrics": last, "codebook_version": model.codebook_version,
                  "config": dataclasses.asdict(cfg)}
        if eval_dataset is not None and len(eval_dataset):
            report["eval"] = evaluate_tokenizer(model, eval_dataset, cfg.eval_batch_size, info.device)
            print("stage 1 held-out:", json.dumps(report["eval"]))
        (out / REPORT_NAME).write_text(json.dumps(report, indent=1, default=str))
    barrier()
    return out
