"""Stage 2: VLM synergistic training (no action labels): the VLM learns to write the trace text and
then the latent action tokens. L_VLM = L_trace + L_latent (cross-entropy on target tokens only).

``train_vlm(cfg, dataset, eval_dataset)`` builds a ``SemanticVLAPolicy`` (VLM + frozen latent tokenizer
from stage 1 + an untrained flow decoder), trains the VLM with ``common.train_loop`` (resumable,
progress bar, loss.png + TensorBoard, torchrun DDP) as phase ``<output_dir>/vlm``, and saves the
policy checkpoint to ``<output_dir>/policy`` (the format of ``SemanticVLAPolicy.save_pretrained``; its
decoder is untrained until stage 3) with ``stage2_report.json`` (held-out generation metrics).

What trains: the projector and the LM always; the vision towers too unless ``freeze_vision`` (default:
frozen iff they were loaded from pretrained paths, as Prismatic does). The flow decoder and the latent
tokenizer are frozen.

The conventional-VLA variant (``use_trace=False`` and ``use_latent=False``) has no stage 2: its VLM
writes nothing, so L_VLM does not exist; ``Stage2Config`` / ``train_vlm`` refuse it (train it with
stage 3 from a fresh model).

Samples (shared_formats, VLM keys): ``image`` (3,S,S) float in [0,1], ``instruction`` str, ``anchors``
(N,2), ``latent_ids`` (K,) int64 (precomputed by the stage-1 tokenizer), ``trace`` (W,2).
``SyntheticVLADataset`` generates such samples (plus the stage-3 action keys) for tests and smoke runs.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..model.config import SemanticVLAConfig, get_config
from ..model.latent_tokenizer import LatentTokenizer
from ..policy import SemanticVLAPolicy
from ..traces import resample_trace
from .common import TrainConfig, barrier, seed_everything, setup_distributed, train_loop

REPORT_NAME = "stage2_report.json"
POLICY_DIR = "policy"


@dataclass
class Stage2Config:
    """Stage 2 settings.

    model: the policy architecture (``get_config``); latent_tokenizer_dir: the stage-1 tokenizer
    (``<stage1 out>/tokenizer``; None = an untrained one, for smoke tests whose latent ids are synthetic);
    freeze_vision: None = frozen iff the towers come from pretrained paths; eval_batch_size: held-out
    generation batch; eval_samples: at most this many held-out samples are generated.
    """

    model: SemanticVLAConfig = field(default_factory=lambda: get_config("tiny"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/stage2"))
    latent_tokenizer_dir: str | None = None
    freeze_vision: bool | None = None
    eval_batch_size: int = 32
    eval_samples: int = 256

    def __post_init__(self) -> None:
        check_stage2_model(self.model)


NO_STAGE2_MESSAGE = ("use_trace=False and use_latent=False (the conventional-VLA variant): the VLM writes nothing, so "
                     "there is no L_VLM and no stage 2. Train this variant with stage 3 from a fresh model, e.g. "
                     "training/stage3_e2e.py --set use_trace=false --set use_latent=false ...")


def check_stage2_model(model: SemanticVLAConfig) -> None:
    """ValueError when ``model`` has nothing for stage 2 to train (both switches off)."""
    if not model.vlm_generates:
        raise ValueError(f"stage 2: {NO_STAGE2_MESSAGE}")


def stage2_config(name: str = "tiny", output_dir: str = "runs/stage2", latent_tokenizer_dir: str | None = None,
                  **model_overrides) -> Stage2Config:
    """Presets: ``tiny`` (CPU minutes), ``base`` / ``paper`` (GPU)."""
    model = get_config(name, **model_overrides)
    if name == "tiny" or name.startswith("tiny-"):     # (tiny-*: the tiny pretrained-VLM test presets)
        train = TrainConfig(output_dir=output_dir, steps=600, batch_size=16, lr=1e-3, warmup_steps=30, log_every=10,
                            save_every=200, num_workers=0)
    else:
        train = TrainConfig(output_dir=output_dir, steps=20000, batch_size=16, lr=2e-5, warmup_steps=500,
                            save_every=1000, amp="bf16")
    return Stage2Config(model=model, train=train, latent_tokenizer_dir=latent_tokenizer_dir)


# ------------------------------------------------------------------------------------------------
# synthetic data: a coloured dot and a directional instruction
# ------------------------------------------------------------------------------------------------
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.1), "blue": (0.1, 0.2, 0.95)}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
GRID = (0.3125, 0.4375, 0.5625, 0.6875)   # centres of 1/8 cells (patch-aligned for the tiny 8x8 grid)


class SyntheticVLADataset(Dataset):
    """Deterministic toy VLA samples (sample i from ``seed`` and i), every key of stages 2 and 3.

    The image shows a dot of a random colour at a random grid position (u, v in ``grid``) and a
    distractor dot of another colour (``distractor=False``: no distractor); the instruction is "move the {colour} dot {direction}". The
    trace starts at the named dot (a cell centre of ``grid``; a disc of ``radius``) and moves ``move`` (normalized) in the direction over W points, so the
    anchors can only be written by reading the image (where) and the instruction (which dot, which
    way). latent_ids encode (direction, colour, grid cell) - a function of the sample, so they are
    learnable; actions are the trace's image-plane displacement per step as ee_delta xy, a constant z,
    zero rotation and the gripper closed for "down" - a toy conditional mapping for the flow decoder.
    """

    def __init__(self, n: int, image_size: int = 64, num_anchors: int = 4, num_latent_tokens: int = 4,
                 codebook_size: int = 32, window: int = 12, horizon: int = 8, action_dim: int = 7, state_dim: int = 0,
                 seed: int = 0, distractor: bool = True, grid: tuple[float, ...] = GRID, move: float = 0.2,
                 radius: float = 0.1):
        if action_dim < 7:
            raise ValueError(f"action_dim must be >= 7 (ee_delta), got {action_dim}")
        self.n, self.S, self.N, self.K, self.C = n, image_size, num_anchors, num_latent_tokens, codebook_size
        self.W, self.H, self.D, self.state_dim, self.seed = window, horizon, action_dim, state_dim, seed
        self.distractor, self.grid, self.move, self.radius = distractor, tuple(grid), float(move), float(radius)
        if min(self.grid) - self.move < 0 or max(self.grid) + self.move > 1:
            raise ValueError(f"grid {self.grid} with move {self.move} leaves the image")

    def __len__(self) -> int:
        return self.n

    def _dot(self, img: np.ndarray, u: float, v: float, colour) -> None:
        c = (np.arange(self.S) + 0.5) / self.S
        uu, vv = np.meshgrid(c, c)
        img[:, (uu - u) ** 2 + (vv - v) ** 2 <= self.radius ** 2] = np.asarray(colour, np.float32)[:, None]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        names = list(COLOURS)
        ci = int(rng.integers(len(names)))
        di = int(rng.integers(len(DIRECTIONS)))
        gx, gy = (int(x) for x in rng.integers(len(self.grid), size=2))
        u, v = self.grid[gx], self.grid[gy]
        img = np.full((3, self.S, self.S), 0.45, np.float32) + rng.normal(0, 0.02, (3, self.S, self.S)).astype(np.float32)
        # distractor of another colour at another cell
        cj = (ci + 1 + int(rng.integers(len(names) - 1))) % len(names)
        while True:
            hx, hy = (int(x) for x in rng.integers(len(self.grid), size=2))
            if (hx, hy) != (gx, gy):
                break
        if self.distractor:
            self._dot(img, self.grid[hx], self.grid[hy], COLOURS[names[cj]])
        self._dot(img, u, v, COLOURS[names[ci]])
        direction = np.array(list(DIRECTIONS.values())[di], np.float32)
        s = np.linspace(0, 1, self.W, dtype=np.float32)[:, None]
        trace = np.array([u, v], np.float32) + self.move * s * direction
        anchors = resample_trace(trace, self.N)
        cell = gx * len(self.grid) + gy
        lat = np.array([(di * 3 + ci) % self.C, cell % self.C, (di * 7 + cell) % self.C, (ci * 5 + gy) % self.C] *
                       ((self.K + 3) // 4), np.int64)[:self.K]
        actions = np.zeros((self.H, self.D), np.float32)
        actions[:, 0] = direction[0] * 0.8
        actions[:, 1] = direction[1] * 0.8
        actions[:, 2] = 0.5 * (u - 0.5)
        actions[:, 6] = 1.0 if di == 3 else -1.0
        actions[:, :3] += rng.normal(0, 0.02, (self.H, 3)).astype(np.float32)
        pad = np.zeros(self.H, bool)
        out = {"image": torch.from_numpy(np.clip(img, 0, 1)),
               "instruction": f"move the {names[ci]} dot {list(DIRECTIONS)[di]}",
               "anchors": torch.from_numpy(anchors.astype(np.float32)), "latent_ids": torch.from_numpy(lat),
               "trace": torch.from_numpy(trace.astype(np.float32)),
               "actions": torch.from_numpy(actions), "actions_pad": torch.from_numpy(pad)}
        if self.state_dim:
            st = np.zeros(self.state_dim, np.float32)
            st[: min(2, self.state_dim)] = np.array([u, v], np.float32)[: min(2, self.state_dim)] * 2 - 1
            out["state"] = torch.from_numpy(st)
        return out


def synthetic_dataset_for(config: SemanticVLAConfig, n: int, seed: int = 0, **kwargs) -> SyntheticVLADataset:
    """A ``SyntheticVLADataset`` shaped for ``config`` (kwargs: distractor, grid, move, radius)."""
    return SyntheticVLADataset(n, config.image_size, config.num_anchors, config.num_latent_tokens, config.codebook_size,
                               config.window, config.horizon, config.action_dim, config.state_dim, seed, **kwargs)


# ------------------------------------------------------------------------------------------------
# latent-id labels from a stage-1 tokenizer
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def compute_latent_ids(tokenizer: LatentTokenizer, dataset: Dataset, num_frames: int, batch_size: int = 64,
                       device: str | torch.device = "cpu", progress: bool = True) -> np.ndarray:
    """Label every frame with the tokenizer's latent ids: (num_frames, K) int64, -1 where the dataset has
    no sample (e.g. o_{t+H} past the episode end). ``dataset`` yields stage-1 samples with a global frame
    ``index`` (``data.pipelines.TokenizerDataset``)."""
    from tqdm import tqdm

    tokenizer = tokenizer.to(device).eval()
    out = np.full((num_frames, tokenizer.config.num_latent_tokens), -1, np.int64)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for b in tqdm(loader, desc="latent ids", disable=not progress):
        enc = tokenizer.encode(b["trace"].to(device), b["image_t"].to(device), b["image_tH"].to(device))
        out[b["index"].numpy()] = enc.latent_ids.cpu().numpy()
    return out


def save_latent_ids(path: str | Path, latent_ids: np.ndarray, codebook_version: str) -> Path:
    """Write ``{"latent_ids": (F, K) int64}`` as safetensors with the codebook version in the metadata."""
    from safetensors.numpy import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({"latent_ids": np.ascontiguousarray(latent_ids.astype(np.int64))}, str(p),
              metadata={"codebook_version": codebook_version})
    return p


def ensure_latent_ids(path: str | Path, dataset_root: str | Path, tokenizer_dir: str | Path,
                      device: str | torch.device = "cpu", progress: bool = True, camera: str | None = None,
                      trace_convention: str | None = None) -> Path:
    """The latent-id labels of every frame of the LeRobot dataset at ``dataset_root``: read from ``path`` when
    it exists, else computed once with the stage-1 tokenizer at ``tokenizer_dir`` (a stage-1 output or a
    policy's ``latent_tokenizer/``) and written there. ``camera`` (agent view; default the pipelines' default)
    and ``trace_convention`` as in ``data.pipelines.TokenizerDataset``."""
    p = Path(path)
    if p.is_file():
        return p
    from ..data.pipelines import TokenizerDataset

    tok = LatentTokenizer.from_pretrained(tokenizer_dir, with_decoders=False)
    lc = tok.config
    kw = {"camera": camera} if camera else {}
    tds = TokenizerDataset(dataset_root, image_size=lc.image_size, window=lc.window, horizon=lc.frame_horizon,
                           trace_convention=trace_convention, **kw)
    ids = compute_latent_ids(tok, tds, tds.ds.num_frames, device=device, progress=progress)
    return save_latent_ids(p, ids, tok.codebook_version)


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_vlm(policy: SemanticVLAPolicy, dataset: Dataset, batch_size: int = 32, max_samples: int = 256
                 ) -> dict[str, float]:
    """Held-out constrained generation: ``anchor_err`` (mean Euclidean anchor error, normalized image
    units), ``parse_rate``, ``latent_acc`` (fraction of latent ids equal to the label), and the
    teacher-forced ``loss_trace`` / ``loss_latent``."""
    was = policy.training
    policy.eval()
    dev = policy.device
    errs, oks, lacc, lt, ll, n = [], [], [], 0.0, 0.0, 0
    idx = list(range(min(len(dataset), max_samples)))
    sub = torch.utils.data.Subset(dataset, idx)
    for b in DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=0):
        imgs = b["image"].to(dev, policy.vlm_dtype)
        instr = list(b["instruction"])
        gen = policy.vlm.generate(imgs, instr)
        if policy.config.use_trace:
            errs.append(np.linalg.norm(gen.anchors - b["anchors"].numpy(), axis=-1).mean(-1))
        oks += gen.parse_ok
        if policy.config.use_latent:
            lacc.append((gen.latent_ids == b["latent_ids"].numpy()).mean(-1))
        out = policy.vlm(imgs, instr, b.get("anchors"), b.get("latent_ids"))
        lt += float(out.loss_trace) * len(instr)
        ll += float(out.loss_latent) * len(instr)
        n += len(instr)
    policy.train(was)
    res = {"parse_rate": float(np.mean(oks)), "loss_trace": lt / max(n, 1), "loss_latent": ll / max(n, 1),
           "num_samples": n}
    if errs:
        res["anchor_err"] = float(np.concatenate(errs).mean())
    if lacc:
        res["latent_acc"] = float(np.concatenate(lacc).mean())
    return res


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def build_policy(model_cfg: SemanticVLAConfig, latent_tokenizer_dir: str | None = None, norm_stats=None
                 ) -> SemanticVLAPolicy:
    """A fresh policy; the latent tokenizer comes from ``latent_tokenizer_dir`` (stage 1) if given, and
    then its config (K, codebook size, trace encoder) replaces the one in ``model_cfg``."""
    lt = LatentTokenizer.from_pretrained(latent_tokenizer_dir, with_decoders=False) if latent_tokenizer_dir else None
    if lt is not None:   # the trained tokenizer defines K, the codebook and the trace encoder: adopt its config
        d = model_cfg.to_dict()
        d["latent_tokenizer"] = dataclasses.asdict(lt.config)
        d["num_latent_tokens"] = lt.config.num_latent_tokens
        model_cfg = SemanticVLAConfig.from_dict(d)
    return SemanticVLAPolicy(model_cfg, latent_tokenizer=lt, norm_stats=norm_stats)


def set_stage2_trainable(policy: SemanticVLAPolicy, freeze_vision: bool | None = None) -> list[torch.nn.Parameter]:
    """requires_grad on the VLM (towers unless frozen); decoder and latent tokenizer frozen. Returns the
    trainable parameters."""
    policy.requires_grad_(False)
    policy.vlm.requires_grad_(True)
    pretrained = any(v.pretrained_path for v in policy.config.vlm.vision) or bool(policy.config.vlm.pretrained_path)
    freeze = pretrained if freeze_vision is None else freeze_vision
    bb = policy.vlm.backbone
    towers = list(bb.towers) if hasattr(bb, "towers") else [bb.llava.model.vision_tower]
    for t in towers:
        if freeze:
            t.requires_grad_(False)
        for name, p in t.named_parameters():
            if name.endswith("mask_token"):          # DINOv2's masked-image-modeling token: unused here
                p.requires_grad_(False)
    return [p for p in policy.parameters() if p.requires_grad]


def _vlm_step(net, batch):
    out = net(batch["image"], list(batch["instruction"]), batch.get("anchors"), batch.get("latent_ids"))
    return {"loss": out.loss, "loss_trace": out.loss_trace.detach(), "loss_latent": out.loss_latent.detach(),
            "trace_token_acc": out.trace_token_acc.detach(), "latent_token_acc": out.latent_token_acc.detach()}


def train_vlm(cfg: Stage2Config, dataset: Dataset, eval_dataset: Dataset | None = None,
              policy: SemanticVLAPolicy | None = None) -> Path:
    """Run stage 2 (module docstring); returns ``<output_dir>/policy``. Works unchanged under torchrun."""
    check_stage2_model(cfg.model if policy is None else policy.config)
    info = setup_distributed(cfg.train.device)
    if policy is None:
        seed_everything(cfg.train.seed)
        policy = build_policy(cfg.model, cfg.latent_tokenizer_dir)
    params = set_stage2_trainable(policy, cfg.freeze_vision)
    res = train_loop(policy.vlm, dataset, _vlm_step, cfg.train, name="vlm", info=info, params=params)
    policy.requires_grad_(False)
    policy.eval()
    out = Path(cfg.train.output_dir) / POLICY_DIR
    if info.is_main:
        policy.save_pretrained(out)
        report = {"train_last_metrics": res.last_metrics, "steps": res.step, "codebook_version": policy.codebook_version,
                  "config": dataclasses.asdict(cfg)}
        if eval_dataset is not None and len(eval_dataset):
            report["eval"] = evaluate_vlm(policy, eval_dataset, cfg.eval_batch_size, cfg.eval_samples)
            print("stage 2 held-out:", json.dumps(report["eval"]))
        (out / REPORT_NAME).write_text(json.dumps(report, indent=1, default=str))
    barrier()
    return out
