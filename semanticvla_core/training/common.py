"""What every training stage uses: config, distributed setup, data loading, the loop, checkpoints, logging.

API (stages 1-3 call these; nothing here knows about a particular model):

    cfg = TrainConfig(output_dir="runs/x", steps=1000, batch_size=16, lr=3e-4)   # per-process batch
    info = setup_distributed()            # reads torchrun's env:// variables; single process otherwise
    seed_everything(cfg.seed)             # before building the model (same init on every rank)
    result = train_loop(model, dataset, step_fn, cfg, name="stage1_a", info=info,
                        params=None, collate_fn=None, eval_fn=None)
        # step_fn(net, batch) -> {"loss": tensor, other scalars...}; ``net`` is the DDP wrapper when
        # world_size > 1 (call ``net(...)`` so gradients are synchronised), else the model itself.
        # params: what to optimise (default: parameters with requires_grad), or groups
        # [{"params": [...], "lr_scale": 0.1}, ...]. DDP registers exactly the parameters with
        # requires_grad, so freeze by requires_grad before the call to train part of a model, and make
        # sure every trainable parameter gets a gradient each step (else DDP raises).
        # -> TrainResult(model, step, out_dir, history, last_metrics)
    cleanup_distributed()

Layout of ``<output_dir>/<name>/``: ``checkpoint/`` (latest resumable state: ``model.safetensors``,
``optimizer.safetensors``, ``trainer_state.json``), ``metrics.jsonl``, ``loss.png``, ``tb/``
(TensorBoard scalars), ``done.json`` (written when the phase finished; a resumed run skips a finished
phase and reloads its weights). With ``cfg.resume`` a run restarts from ``checkpoint/`` (model, optimizer,
step, loss history; data order and RNG are re-seeded from the step, not restored bit-exactly).
Nothing is pickled: tensors go to safetensors, everything else to JSON.

Distributed: launch any stage CLI with ``torchrun --nproc_per_node N`` (or ``python -m
torch.distributed.run``); ``setup_distributed`` initialises the process group from env:// with gloo on
CPU and nccl on CUDA; data is sharded by ``DistributedSampler``; rank 0 writes files.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import load_file, load_model, save_file, save_model
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

CHECKPOINT_DIR = "checkpoint"
DONE_FILE = "done.json"


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings shared by every stage."""

    output_dir: str = "runs/train"   # phases write to <output_dir>/<name>/
    steps: int = 1000                # optimizer steps of a phase
    batch_size: int = 16             # per process (global batch = batch_size * world_size)
    lr: float = 3e-4                 # peak learning rate (AdamW)
    weight_decay: float = 0.01       # applied to matrices only (not biases, norms, embeddings vectors)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 50           # linear warmup, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0           # max global grad norm; 0 disables
    seed: int = 0
    log_every: int = 10              # steps between metric logs (tqdm, jsonl, TensorBoard)
    save_every: int = 500            # steps between resumable checkpoints (0: only at the end)
    eval_every: int = 0              # steps between eval_fn calls (0: only at the end, if given)
    num_workers: int = 1             # DataLoader workers: 1 overlaps decoding with compute on 2 cores
    mp_context: str = "forkserver"   # worker start method: fork after FFmpeg use can deadlock
    resume: bool = True              # continue from <output_dir>/<name>/checkpoint if present
    device: str = "auto"             # "auto" (cuda:<local_rank> if available else cpu), "cpu", "cuda"
    amp: str = "none"                # "none" | "bf16" (autocast; CUDA)
    progress: bool = True            # tqdm bar on rank 0
    checkpoint_trainable_only: bool = False  # resumable checkpoints hold only requires_grad params + buffers
    ema_decay: float = 0.0           # >0: exponential moving average of the trained parameters (e.g. 0.999),
                                     # warmed up as min(decay, (1+step)/(10+step)); the final weights are the EMA

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"TrainConfig: steps must be >= 0 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"TrainConfig.amp must be 'none' or 'bf16', got {self.amp!r}")
        self.betas = tuple(self.betas)


# ------------------------------------------------------------------------------------------------
# distributed
# ------------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1



def add_train_arguments(p) -> None:
    """The training-loop options every stage CLI shares (each overrides a TrainConfig field when given)."""
    p.add_argument("--batch-size", type=int, default=None, help="per-process batch size")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--amp", choices=["none", "bf16"], default=None)


def add_dataset_arguments(p, wrist: bool = True) -> None:
    """The dataset-reading options every stage CLI shares: which cameras to read (``--image-key``, and with
    ``wrist`` ``--wrist-key``) and the trace coordinate convention for datasets that do not state it
    (``--trace-convention``). ``dataset_kwargs(args)`` turns them into the pipelines' keyword arguments."""
    from ..data.cameras import DEFAULT_IMAGE_KEY, DEFAULT_WRIST_KEY, NO_CAMERA
    from ..data.tracex import TRACE_CONVENTIONS

    g = p.add_argument_group("dataset cameras and traces")
    g.add_argument("--image-key", default=DEFAULT_IMAGE_KEY,
                   help="agent-view camera (video feature) of --dataset, the image the traces are drawn in "
                        "(default %(default)s)")
    if wrist:
        g.add_argument("--wrist-key", default=None,
                       help=f"wrist camera of --dataset; '{NO_CAMERA}' = none (default: {DEFAULT_WRIST_KEY} when "
                            "the dataset has it)")
    g.add_argument("--trace-convention", choices=TRACE_CONVENTIONS, default=None,
                   help="coordinates of the dataset's trace columns when its meta/info.json does not state them: "
                        "unit = [0, 1], percent = 0-100, pixel = pixels of the --image-key image")


def dataset_kwargs(args) -> dict:
    """Keyword arguments of the stage datasets (``data.pipelines``) from ``add_dataset_arguments`` options."""
    from ..data.cameras import wrist_key_option

    kw = {"camera": args.image_key, "trace_convention": args.trace_convention}
    if hasattr(args, "wrist_key"):
        kw["wrist_camera"] = wrist_key_option(args.wrist_key)
    return kw


def setup_distributed(device: str = "auto") -> DistInfo:
    """Initialise ``torch.distributed`` from torchrun's environment (env://) if WORLD_SIZE > 1.

    Backend: nccl when the device is CUDA, gloo otherwise. Safe to call twice.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# optimisation
# ------------------------------------------------------------------------------------------------
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps`` then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(params: Iterable[nn.Parameter] | Iterable[dict], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D tensors only.

    ``params``: parameters, or groups ``{"params": [...], "lr_scale": 0.1}`` (e.g. LoRA vs. a decoder
    trained from scratch); each group's lr follows the schedule times its ``lr_scale`` (default 1).
    Parameters without requires_grad are dropped.
    """
    params = list(params)
    groups_in = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = []
    for g in groups_in:
        ps = [p for p in g["params"] if p.requires_grad]
        scale = float(g.get("lr_scale", 1.0))
        for sub, wd in (([p for p in ps if p.ndim >= 2], cfg.weight_decay), ([p for p in ps if p.ndim < 2], 0.0)):
            if sub:
                groups.append({"params": sub, "weight_decay": wd, "lr_scale": scale, "lr": cfg.lr * scale})
    if not groups:
        raise ValueError("make_optimizer: no trainable parameters")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def make_loader(dataset: Dataset, cfg: TrainConfig, info: DistInfo, collate_fn: Callable | None = None,
                shuffle: bool = True, drop_last: bool = True) -> DataLoader:
    """DataLoader with a ``DistributedSampler`` (also in single-process runs, for one code path)."""
    sampler = None
    if not isinstance(dataset, IterableDataset):
        if len(dataset) < cfg.batch_size * info.world_size and drop_last:
            raise ValueError(f"dataset has {len(dataset)} samples, fewer than one global batch "
                             f"({cfg.batch_size} x {info.world_size} processes)")
        sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle,
                                     seed=cfg.seed, drop_last=drop_last)
    workers = dict(persistent_workers=True, worker_init_fn=_worker_init,
                   multiprocessing_context=cfg.mp_context) if cfg.num_workers > 0 else {}
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      collate_fn=collate_fn, drop_last=drop_last, pin_memory=info.device.type == "cuda", **workers)


def _worker_init(worker_id: int) -> None:
    """Loader worker: one torch thread, its own numpy seed, fresh video readers (``reset_readers``)."""
    import numpy as np
    torch.set_num_threads(1)
    wi = torch.utils.data.get_worker_info()
    np.random.seed((wi.seed if wi else worker_id) % (2 ** 32))
    ds = wi.dataset if wi else None
    while ds is not None and not hasattr(ds, "reset_readers") and hasattr(ds, "dataset"):
        ds = ds.dataset                                   # Subset and other wrappers
    if ds is not None and hasattr(ds, "reset_readers"):
        ds.reset_readers()


def infinite_batches(loader: DataLoader, start_epoch: int = 0) -> Iterator[Any]:
    epoch = start_epoch
    while True:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the data loader yielded no batch (dataset smaller than a batch?)")
        epoch += 1


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors in (nested) dicts / lists / tuples to ``device``; other values unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# ------------------------------------------------------------------------------------------------
# checkpoints (safetensors + JSON, never pickle)
# ------------------------------------------------------------------------------------------------
def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x.item()
    raise ValueError(f"cannot store {type(x).__name__} in JSON")


def optimizer_state_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``state/<param_idx>/<key>``) and JSON metadata."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state/{idx}/{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = _jsonable(val)
    return tensors, {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}


def optimizer_state_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of ``optimizer_state_to_flat``: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = t
    for idx, vals in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(vals)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict entries of parameters with requires_grad, plus every buffer."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items() if k not in frozen}


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    step: int, extra: dict | None = None, trainable_only: bool = False,
                    ema: list[torch.Tensor] | None = None) -> Path:
    """Atomically write ``model.safetensors``, ``optimizer.safetensors``, ``trainer_state.json`` (and
    ``ema.safetensors``: the moving average of the optimizer's parameters, in their order, when given).

    trainable_only: store only parameters with requires_grad (+ buffers), e.g. LoRA and a new decoder
    on a frozen 7B backbone; loading then expects the frozen weights to be in the model already.
    """
    d = Path(directory)
    tmp = d.with_name(d.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if trainable_only:
        save_file(_trainable_state(model), str(tmp / "model.safetensors"))
    else:
        save_model(model, str(tmp / "model.safetensors"))
    state = {"step": int(step), "extra": _jsonable(extra or {}), "trainable_only": bool(trainable_only)}
    if optimizer is not None:
        tensors, meta = optimizer_state_to_flat(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state["optimizer"] = meta
    if ema is not None:
        save_file({f"p{i}": t.detach().contiguous() for i, t in enumerate(ema)}, str(tmp / EMA_FILE))
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    old = d.with_name(d.name + ".old")
    if d.exists():
        if old.exists():
            shutil.rmtree(old)
        d.rename(old)
    tmp.rename(d)
    if old.exists():
        shutil.rmtree(old)
    return d


EMA_FILE = "ema.safetensors"


def load_ema(directory: str | os.PathLike, ema: list[torch.Tensor]) -> bool:
    """Fill ``ema`` in place from ``<directory>/ema.safetensors``; False when the checkpoint has none."""
    f = Path(directory) / EMA_FILE
    if not f.is_file():
        return False
    sd = load_file(str(f))
    if len(sd) != len(ema) or any(sd[f"p{i}"].shape != t.shape for i, t in enumerate(ema)):
        raise ValueError(f"{f}: does not match the trained parameters")
    for i, t in enumerate(ema):
        t.copy_(sd[f"p{i}"])
    return True


def load_checkpoint(directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    device: torch.device | str = "cpu") -> tuple[int, dict]:
    """Load what ``save_checkpoint`` wrote into ``model`` (and ``optimizer``); returns (step, extra)."""
    d = Path(directory)
    if not (d / "trainer_state.json").is_file():
        raise ValueError(f"{d}: no trainer_state.json, not a training checkpoint")
    state = json.loads((d / "trainer_state.json").read_text())
    if state.get("trainable_only"):
        sd = load_file(str(d / "model.safetensors"), device=str(device))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        missing = [k for k in missing if k not in frozen]       # frozen weights are not in the file
    else:
        missing, unexpected = load_model(model, str(d / "model.safetensors"), strict=False, device=str(device))
    if missing or unexpected:
        raise ValueError(f"{d}/model.safetensors does not match the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    if optimizer is not None:
        if "optimizer" not in state:
            raise ValueError(f"{d}: checkpoint has no optimizer state")
        tensors = load_file(str(d / "optimizer.safetensors"), device=str(device))
        optimizer.load_state_dict(optimizer_state_from_flat(tensors, state["optimizer"]))
    return int(state["step"]), state.get("extra", {})


# ------------------------------------------------------------------------------------------------
# logging
# ------------------------------------------------------------------------------------------------
class MetricsLogger:
    """Rank-0 metrics sink: ``metrics.jsonl`` (resumable history), TensorBoard scalars, ``loss.png``."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0):
        self.out_dir, self.enabled = out_dir, enabled
        self.history: list[dict] = []
        self.writer = None
        if not enabled:
            return
        path = out_dir / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self.history = [r for r in rows if r["step"] <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(out_dir / "tb"))
        except ImportError:  # tensorboard is an optional extra ("train")
            self.writer = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, float(v), step)

    def plot(self, title: str = "") -> Path | None:
        """Write ``loss.png``: every metric whose name contains 'loss' or 'err' (log scale) and lr."""
        if not self.enabled or not self.history:
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        keys = sorted({k for r in self.history for k in r if ("loss" in k or "err" in k)})
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for k in keys:
            pts = [(r["step"], r[k]) for r in self.history if k in r and r[k] > 0]
            if pts:
                axes[0].plot(*zip(*pts), label=k)
        axes[0].set_yscale("log")
        axes[0].set_xlabel("step")
        axes[0].legend(fontsize=7)
        axes[0].set_title(title or "losses")
        lr = [(r["step"], r["lr"]) for r in self.history if "lr" in r]
        if lr:
            axes[1].plot(*zip(*lr))
        axes[1].set_title("learning rate")
        axes[1].set_xlabel("step")
        fig.tight_layout()
        path = self.out_dir / "loss.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: nn.Module                  # the trained (unwrapped) model
    step: int                         # steps done
    out_dir: Path                     # <output_dir>/<name>
    history: list[dict]               # logged metrics (rank 0; empty elsewhere)
    last_metrics: dict[str, float]    # last logged (rank-averaged) metrics


StepFn = Callable[[nn.Module, Any], dict]


def train_loop(model: nn.Module, dataset: Dataset, step_fn: StepFn, cfg: TrainConfig, *, name: str,
               info: DistInfo | None = None, params: Iterable[nn.Parameter] | Iterable[dict] | None = None,
               collate_fn: Callable | None = None,
               eval_fn: Callable[[nn.Module, int], dict[str, float]] | None = None) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` optimizer steps (see the module docstring).

    eval_fn(model, step) -> metrics is called on every rank (it may use collectives) every
    ``cfg.eval_every`` steps and at the end, with the unwrapped model in eval mode.
    """
    info = info or setup_distributed(cfg.device)
    out_dir = Path(cfg.output_dir) / name
    ckpt_dir = out_dir / CHECKPOINT_DIR
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    model.to(info.device)
    optimizer = make_optimizer(model.parameters() if params is None else params, cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    done = out_dir / DONE_FILE
    if cfg.resume and done.is_file() and ckpt_dir.is_dir():
        summary = json.loads(done.read_text())
        if summary.get("step", 0) >= cfg.steps:           # finished phase: reload it, train nothing
            step, _ = load_checkpoint(ckpt_dir, model, None, info.device)
            model.eval()
            return TrainResult(model, step, out_dir, [], summary.get("last_metrics", {}))

    start = 0
    if cfg.resume and ckpt_dir.is_dir():
        start, _ = load_checkpoint(ckpt_dir, model, optimizer, info.device)
    ema = [p.detach().clone() for p in params] if cfg.ema_decay > 0 else None
    ema_loaded = False
    if ema is not None and start:
        ema_loaded = load_ema(ckpt_dir, ema)
        if not ema_loaded:
            warnings.warn(f"{ckpt_dir}: no EMA state in the checkpoint; the average restarts from step {start}")
    logger = MetricsLogger(out_dir, info.is_main, resume_step=start)
    torch.manual_seed(cfg.seed + 100_003 * info.rank + start)

    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    loader = make_loader(dataset, cfg, info, collate_fn)
    steps_per_epoch = 1 if isinstance(dataset, IterableDataset) else max(1, len(loader))
    batches = infinite_batches(loader, start_epoch=start // steps_per_epoch)
    autocast = torch.autocast(device_type=info.device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")

    pbar = None
    if info.is_main and cfg.progress and cfg.steps > start:
        from tqdm import tqdm
        pbar = tqdm(total=cfg.steps, initial=start, desc=name, dynamic_ncols=True)
    acc: dict[str, float] = {}
    n_acc, last, t0 = 0, {}, time.time()
    step = start
    model.train()

    def _save(s):
        if info.is_main:
            save_checkpoint(ckpt_dir, model, optimizer, s, {"name": name, "config": asdict(cfg)},
                            trainable_only=cfg.checkpoint_trainable_only, ema=ema)
            logger.plot(name)
        barrier()

    def _eval(s):
        if eval_fn is None:
            return {}
        model.eval()
        res = eval_fn(model, s)
        model.train()
        logger.log(s, {f"eval/{k}": v for k, v in res.items()})
        return res

    while step < cfg.steps:
        batch = to_device(next(batches), info.device)
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        with autocast:
            out = step_fn(net, batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise ValueError(f"{name}: non-finite loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            out = {**out, "grad_norm": gnorm}
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                d = min(cfg.ema_decay, (1 + step) / (10 + step))
                torch._foreach_mul_(ema, d)
                torch._foreach_add_(ema, [p.detach() for p in params], alpha=1 - d)
        step += 1
        for k, v in out.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1 or isinstance(v, (int, float)):
                acc[k] = acc.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v)
        n_acc += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            last = _reduce_mean({k: v / n_acc for k, v in acc.items()}, info)
            last["lr"] = lr
            last["steps_per_s"] = n_acc / max(1e-9, time.time() - t0)
            logger.log(step, last)
            if pbar is not None:
                pbar.set_postfix(loss=f"{last['loss']:.4g}")
            acc, n_acc, t0 = {}, 0, time.time()
        if pbar is not None:
            pbar.update(1)
        if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
            _eval(step)
        if cfg.save_every and step % cfg.save_every == 0 and step != cfg.steps:
            _save(step)
    if pbar is not None:
        pbar.close()
    if ema is not None and (step > start or ema_loaded):
        # the final weights are the average (what is evaluated and saved), also when a resumed run had no steps left
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    if eval_fn is not None:
        last = {**last, **{f"eval/{k}": v for k, v in _eval(step).items()}}
    model.eval()
    _save(step)
    if info.is_main:
        done.write_text(json.dumps({"step": step, "last_metrics": last}, indent=1))
    logger.close()
    barrier()
    return TrainResult(model, step, out_dir, logger.history, last)
