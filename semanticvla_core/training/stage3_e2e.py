"""Stage 3: end-to-end fine-tuning. LoRA on the causal LM (peft), the ``<ACT_k>`` embedding rows
trainable (peft ``trainable_token_indices``), the flow-matching decoder trained from scratch; vision
towers, projector, the rest of the LM and the latent tokenizer frozen.

    L = lambda_vlm * L_VLM + L_flow        (lambda_vlm small: weak regularisation of the VLM)

e_tau comes from the ground-truth anchors through the frozen trace encoder (anchors resampled to W
points: the same path ``plan`` uses on predicted anchors), E_a from the teacher-forced VLM pass (action
gradients reach the LM through LoRA), E_v from the frozen visual tokens.

``train_e2e(cfg, dataset, eval_dataset, norm_stats)`` starts from a stage-2 policy (``init_from``) or a
fresh one, runs ``common.train_loop`` as phase ``<output_dir>/e2e`` (resumable: the resumable
checkpoint holds the LoRA-injected weights; progress bar, loss.png, TensorBoard, torchrun DDP), then
MERGES LoRA into the base weights and saves the final policy to ``<output_dir>/policy`` in the
``SemanticVLAPolicy.save_pretrained`` format (config.json records ``"lora": "merged"``), with
``norm_stats.json`` (given, or the dataset's ``stats`` attribute) and ``stage3_report.json``.

The four comparison variants (``SemanticVLAConfig`` switches), all trained here with the same schedule:
(1) full and (2) ``use_trace=False`` start from their own stage-2 policy; (3) ``use_latent=False``
starts from the FULL policy's stage-2 checkpoint with ``init_overrides={"use_latent": False}`` (its
VLM then writes the trace only; its L_VLM is the trace loss); (4) both off (conventional VLA) has no
stage 2: a fresh model whose L_VLM is 0, trained through the flow loss alone with LoRA on the LM AND
the vision towers, the projector and the decoder (``train_vision`` auto-on for it).

Samples: the stage-3 keys of shared_formats (VLM keys + ``actions`` (H,D) normalized, ``actions_pad``
(H,), optional ``state`` (S,) normalized).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.pipelines import load_plans
from ..model.config import SemanticVLAConfig, get_config
from ..model.flow_decoder import FlowMatchingDecoder
from ..model.visual_stem import VisualStem
from ..policy import DECODER_SIDE_SWITCHES, SemanticVLAPolicy
from .common import TrainConfig, barrier, seed_everything, setup_distributed, train_loop
from .stage2_vlm import build_policy

REPORT_NAME = "stage3_report.json"
PLANS_NAME = "own_plans.safetensors"
FEATURES_NAME = "own_plans_features.safetensors"   # with the frozen VLM's outputs (freeze_vlm)
POLICY_DIR = "policy"


@dataclass
class Stage3Config:
    """Stage 3 settings.

    init_from: a stage-2 policy directory (None: build ``model`` fresh, with ``latent_tokenizer_dir``).
    lambda_vlm: weight of L_VLM; lora_*: peft LoRA on the LM's attention and MLP projections;
    train_act_tokens: also train the <ACT_k> embedding rows; state_dim: proprio size fed to the decoder
    (None = from the dataset's first sample, 0 = no state); eval_*: held-out evaluation.
    anchor_noise: std of noise on the ground-truth anchors behind the decoder's e_tau in training
    (``SemanticVLAPolicy.forward``); about the VLM's held-out anchor error is a sensible value.
    own_plans: condition the decoder on the VLM's own greedy plans (``precompute_plans``, cached as
    ``<output_dir>/own_plans.safetensors``) instead of the ground-truth trace and latent tokens; the dataset
    must be an ``ActionDataset`` (or a Subset of one). No effect on the conventional variant.
    init_overrides: decoder-side switches changed on the ``init_from`` policy
    (``policy.DECODER_SIDE_SWITCHES``: ``use_latent``, ``trace_to_decoder``), e.g. ``{"use_latent": False}``.
    train_vision: LoRA on the vision towers + trainable projector too (None = only for the conventional
    variant, both switches off, which has no stage 2 to train its vision side).
    lambda_keypoints: weight of the trace keypoint loss (``SemanticVLAPolicy._add_keypoint_loss``; 0 = off):
    the stem's first two language-queried agent-view keypoints learn where each demonstration grasps and
    places (``ActionDataset.keypoint_targets``, merged into the cached plans). Needs ``stem.lang_keypoints >= 2``.
    freeze_vlm: keep the stage-2 VLM frozen (no LoRA, no L_VLM) and train only the decoder (and its visual
    stem). The VLM's generation outputs per frame (plan, E_a, visual tokens, prompt state) are then computed
    once and cached (``precompute_plans(features=True)``), which makes a step several times cheaper on a CPU;
    the decoder trains on exactly what it gets at run time. Implies ``own_plans``.
    keep_decoder: continue training the ``init_from`` policy's own flow decoder (a stage-3 checkpoint: more
    steps, or fine-tuning on new data) instead of building a fresh one; the stem is always kept.
    """

    init_from: str | None = None
    init_overrides: dict = field(default_factory=dict)
    train_vision: bool | None = None
    model: SemanticVLAConfig = field(default_factory=lambda: get_config("tiny"))
    latent_tokenizer_dir: str | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/stage3"))
    lambda_vlm: float = 0.1
    anchor_noise: float = 0.0
    lambda_keypoints: float = 0.0
    own_plans: bool = False
    freeze_vlm: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    train_act_tokens: bool = True
    state_dim: int | None = None
    eval_batch_size: int = 32
    eval_samples: int = 256
    keep_decoder: bool = False

    def __post_init__(self) -> None:
        if self.keep_decoder and not self.init_from:
            raise ValueError("Stage3Config.keep_decoder: only with init_from (a stage-3 policy whose decoder continues)")
        if self.freeze_vlm:
            self.own_plans = True
        if self.anchor_noise < 0:
            raise ValueError(f"Stage3Config.anchor_noise must be >= 0, got {self.anchor_noise}")
        if self.lambda_keypoints < 0:
            raise ValueError(f"Stage3Config.lambda_keypoints must be >= 0, got {self.lambda_keypoints}")
        if self.lambda_vlm < 0:
            raise ValueError(f"Stage3Config.lambda_vlm must be >= 0, got {self.lambda_vlm}")
        if self.lora_r < 1:
            raise ValueError(f"Stage3Config.lora_r must be >= 1, got {self.lora_r}")
        if self.init_overrides:
            if not self.init_from:
                raise ValueError("Stage3Config.init_overrides: only with init_from (a fresh model takes them in model)")
            bad = sorted(set(self.init_overrides) - set(DECODER_SIDE_SWITCHES))
            if bad:
                raise ValueError(f"Stage3Config.init_overrides: {bad} cannot change on a stage-2 checkpoint; "
                                 f"allowed: {list(DECODER_SIDE_SWITCHES)}")


def stage3_config(name: str = "tiny", output_dir: str = "runs/stage3", init_from: str | None = None,
                  **model_overrides) -> Stage3Config:
    """Presets: ``tiny`` (CPU minutes), ``base`` / ``paper`` (GPU)."""
    model = get_config(name, **model_overrides)
    if name == "tiny" or name.startswith("tiny-"):
        train = TrainConfig(output_dir=output_dir, steps=600, batch_size=16, lr=1e-3, warmup_steps=30, log_every=10,
                            save_every=200, num_workers=0)
        return Stage3Config(init_from=init_from, model=model, train=train, lora_r=8, lora_alpha=16)
    train = TrainConfig(output_dir=output_dir, steps=30000, batch_size=16, lr=1e-4, warmup_steps=500,
                        save_every=1000, amp="bf16")
    return Stage3Config(init_from=init_from, model=model, train=train)


def prepare_stage3(policy: SemanticVLAPolicy, cfg: Stage3Config, state_dim: int) -> list[torch.nn.Parameter]:
    """Rebuild the decoder and its visual stem from scratch (with ``state_dim``; with ``cfg.keep_decoder`` the
    loaded ones stay and the decoder must already take ``state_dim``), apply LoRA, set requires_grad. A fresh
    stem also when ``init_from`` is a stage-3 policy: every stage-3 run trains the same parts from the same
    start, whatever checkpoint its frozen VLM comes from.
    Returns the trainable parameters: LoRA A/B, the <ACT_k> token rows (only when the VLM writes them),
    the whole flow decoder, and with ``train_vision`` (auto: the conventional variant) vision-tower
    LoRA + the projector."""
    if cfg.keep_decoder:
        if int(policy.config.decoder.state_dim) != int(state_dim):
            raise ValueError(f"stage 3 keep_decoder: the loaded decoder takes a state of size "
                             f"{policy.config.decoder.state_dim}, the data has {state_dim}")
    else:
        policy.config.state_dim = int(state_dim)
        policy.config.decoder.state_dim = int(state_dim)
        policy.decoder = FlowMatchingDecoder(policy.config.decoder_config(policy.vlm.hidden_size)).to(policy.device)
        if policy.stem is not None:
            policy.stem = VisualStem(policy.config.stem, policy.vlm.hidden_size).to(policy.device)
    if cfg.freeze_vlm:
        policy.requires_grad_(False)
    else:
        vision = policy.config.decoder_uses_prompt_states if cfg.train_vision is None else cfg.train_vision
        policy.apply_lora(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                          train_act_tokens=cfg.train_act_tokens and policy.config.use_latent, vision=vision)
    policy.decoder.requires_grad_(True)
    if policy.stem is not None:
        policy.stem.requires_grad_(True)        # the decoder's keypoint CNN trains with it
    return [p for p in policy.parameters() if p.requires_grad]


def trainable_parameter_report(policy: SemanticVLAPolicy) -> dict[str, int]:
    """Trainable parameter counts by kind: lora (LM), vision_lora, act_tokens, decoder, projector (the
    projector and image position embedding, with train_vision), other (must be 0 in stage 3)."""
    out = {"lora": 0, "vision_lora": 0, "act_tokens": 0, "decoder": 0, "stem": 0, "projector": 0, "other": 0}
    bb = policy.vlm.backbone   # vision towers / projector by module (the transformers VLMs name them their own way)
    tower_ids = {id(x) for t in getattr(bb, "towers", []) for x in t.parameters()}
    projector_ids = {id(x) for x in bb.projector.parameters()} if hasattr(bb, "projector") else set()
    for n, p in policy.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_" in n:
            out["vision_lora" if id(p) in tower_ids else "lora"] += p.numel()
        elif id(p) in projector_ids or n == "vlm.backbone.image_pos":
            out["projector"] += p.numel()
        elif "trainable_tokens" in n:
            out["act_tokens"] += p.numel()
        elif n.startswith("decoder."):
            out["decoder"] += p.numel()
        elif n.startswith("stem."):
            out["stem"] += p.numel()
        else:
            out["other"] += p.numel()
    return out


@torch.no_grad()
def evaluate_policy(policy: SemanticVLAPolicy, dataset: Dataset, batch_size: int = 32, max_samples: int = 256,
                    num_flow_steps: int | None = None) -> dict[str, float]:
    """Held-out closed-form metrics of ``plan``: ``action_mse`` (normalized units, padded steps excluded),
    ``anchor_err``, ``parse_rate``, ``latent_acc``."""
    was = policy.training
    policy.eval()
    se, cnt, errs, oks, lacc = 0.0, 0.0, [], [], []
    sub = torch.utils.data.Subset(dataset, list(range(min(len(dataset), max_samples))))
    for b in DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=0):
        state = b.get("state")
        if state is not None and policy.norm_stats is not None and policy.norm_stats.state is not None:
            state = policy.norm_stats.state.unnormalize(state.numpy())    # plan() takes robot units
        images = b["stem_image"] if policy.stem is not None else b["image"]   # full resolution for the stem
        plan = policy.plan(images, list(b["instruction"]), state=None if state is None else np.asarray(state),
                           num_flow_steps=num_flow_steps, wrist=b.get("stem_wrist"))
        valid = ~b["actions_pad"].numpy()
        err = ((plan.actions_normalized - b["actions"].numpy()) ** 2).mean(-1)
        se += float((err * valid).sum())
        cnt += float(valid.sum())
        if policy.config.use_trace:
            errs.append(np.linalg.norm(plan.anchors - b["anchors"].numpy(), axis=-1).mean(-1))
        if policy.config.use_latent:
            lacc.append((plan.latent_ids == b["latent_ids"].numpy()).mean(-1))
        oks += plan.parse_ok
    policy.train(was)
    res = {"action_mse": se / max(cnt, 1.0), "parse_rate": float(np.mean(oks))}
    if errs:
        res["anchor_err"] = float(np.concatenate(errs).mean())
    if lacc:
        res["latent_acc"] = float(np.concatenate(lacc).mean())
    return res


@torch.no_grad()
def precompute_plans(policy: SemanticVLAPolicy, dataset: Dataset, batch_size: int = 64,
                     progress: bool = True, features: bool = False) -> dict[str, np.ndarray]:
    """The VLM's own greedy plans for every sample of ``dataset`` (an ``ActionDataset`` or a Subset of one):
    ``{"index": (F,) global frame, "anchors": (F, N, 2) (use_trace), "latent_ids": (F, K) (use_latent)}``;
    with ``features`` also what the decoder takes from the VLM at run time (for a frozen VLM,
    ``Stage3Config.freeze_vlm``): ``latent_hidden`` (F, K, hidden) = E_a, ``visual_tokens`` (F, V, hidden),
    ``prompt_context`` (F, hidden). Works for every variant (the conventional one only has features).
    Stage 3 conditions the decoder on these (``SemanticVLAPolicy.forward``): the plans it gets at run time,
    not the ground truth the VLM was taught with. Made once from the stage-2 VLM; stage 3's LoRA moves the
    VLM only a little (small lambda_vlm), so they stay close to the final VLM's plans."""
    from tqdm import tqdm

    was = policy.training
    policy.eval()
    c = policy.config
    idx, cols = [], {k: [] for k in ("anchors", "latent_ids", "latent_hidden", "visual_tokens", "prompt_context")}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    # a plan per sample's own frame: a dataset that shows older images (image_delay_max) would plan those frames
    # instead, at random, and leave sample frames without a plan
    base = _unwrap(dataset)
    delay = getattr(base, "image_delay_max", 0)
    try:
        if delay:
            base.image_delay_max = 0
        for b in tqdm(loader, desc="own plans", unit="batch", disable=not progress):
            gen = policy.vlm.generate(b["image"].to(policy.device, policy.vlm_dtype), list(b["instruction"]))
            idx.append(b["index"].numpy())
            if c.use_trace:
                cols["anchors"].append(np.asarray(gen.anchors, np.float32))
            if c.use_latent:
                cols["latent_ids"].append(np.asarray(gen.latent_ids, np.int64))
            if features:
                for k in ("latent_hidden", "visual_tokens", "prompt_context"):
                    cols[k].append(getattr(gen, k).float().cpu().numpy())
    finally:
        if delay:
            base.image_delay_max = delay
    policy.train(was)
    out = {"index": np.concatenate(idx).astype(np.int64)}
    out.update({k: np.ascontiguousarray(np.concatenate(v)) for k, v in cols.items() if v})
    return out


def _unwrap(dataset):
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return dataset


def _base_dataset(dataset):
    base = _unwrap(dataset)
    if not hasattr(base, "set_plans"):
        raise ValueError("stage 3: own plans / keypoint targets need an ActionDataset (or a Subset of one)")
    return base


def _with_keypoint_targets(plans: dict | None, base, weight: float) -> dict | None:
    """``plans`` plus the per-frame trace keypoint targets (``ActionDataset.keypoint_targets``) when
    ``lambda_keypoints`` > 0; with no plans (None) the targets alone, with their own all-frame index."""
    if weight <= 0:
        return plans
    kp = base.keypoint_targets()
    if plans is None:
        return kp
    rows = np.asarray(plans["index"], np.int64)
    return dict(plans, **{k: v[rows] for k, v in kp.items() if k != "index"})


def _e2e_step(lambda_vlm: float, anchor_noise: float = 0.0, lambda_keypoints: float = 0.0):
    def step(net, batch):
        return net(batch, lambda_vlm=lambda_vlm, anchor_noise=anchor_noise, lambda_keypoints=lambda_keypoints)
    return step


def train_e2e(cfg: Stage3Config, dataset: Dataset, eval_dataset: Dataset | None = None, norm_stats=None,
              policy: SemanticVLAPolicy | None = None) -> Path:
    """Run stage 3 (module docstring); returns ``<output_dir>/policy``. Works unchanged under torchrun."""
    info = setup_distributed(cfg.train.device)
    seed_everything(cfg.train.seed)
    if policy is None:
        policy = SemanticVLAPolicy.from_pretrained(cfg.init_from, config_overrides=cfg.init_overrides or None) \
            if cfg.init_from else build_policy(cfg.model, cfg.latent_tokenizer_dir)
    stats = norm_stats if norm_stats is not None else getattr(dataset, "stats", None)
    if stats is not None:
        policy.norm_stats = stats
    state_dim = cfg.state_dim
    if state_dim is None:
        first = dataset[0]
        state_dim = int(first["state"].shape[-1]) if "state" in first else 0
    if cfg.own_plans and (policy.config.vlm_generates or cfg.freeze_vlm):
        base = _base_dataset(dataset)
        path = Path(cfg.train.output_dir) / (FEATURES_NAME if cfg.freeze_vlm else PLANS_NAME)
        if info.is_main and not path.is_file():
            from safetensors.numpy import save_file
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(precompute_plans(policy, base, progress=cfg.train.progress, features=cfg.freeze_vlm),
                      str(path))
        barrier()
        base.set_plans(_with_keypoint_targets(load_plans(path), base, cfg.lambda_keypoints))
    elif cfg.lambda_keypoints > 0:
        base = _base_dataset(dataset)
        base.set_plans(_with_keypoint_targets(None, base, cfg.lambda_keypoints))
    seed_everything(cfg.train.seed + 1)               # same decoder init on every rank
    params = prepare_stage3(policy, cfg, state_dim)
    counts = trainable_parameter_report(policy)
    if counts["other"]:
        raise ValueError(f"stage 3: unexpected trainable parameters outside LoRA/ACT rows/decoder/projector: {counts}")
    res = train_loop(policy, dataset, _e2e_step(cfg.lambda_vlm, cfg.anchor_noise, cfg.lambda_keypoints), cfg.train, name="e2e", info=info, params=params)
    policy.merge_lora()
    policy.requires_grad_(False)
    policy.eval()
    out = Path(cfg.train.output_dir) / POLICY_DIR
    if info.is_main:
        policy.save_pretrained(out)
        report = {"train_last_metrics": res.last_metrics, "steps": res.step, "trainable_parameters": counts,
                  "lora": "merged", "config": dataclasses.asdict(cfg)}
        if eval_dataset is not None and len(eval_dataset):
            report["eval"] = evaluate_policy(policy, eval_dataset, cfg.eval_batch_size, cfg.eval_samples)
            print("stage 3 held-out:", json.dumps(report["eval"]))
        (out / REPORT_NAME).write_text(json.dumps(report, indent=1, default=str))
    barrier()
    return out
