"""Robust per-dimension normalization statistics for actions and states.

The one place where raw action/state values and the model's normalized values meet:

* ``NormStats.compute(x)`` takes the ``q_low``/``q_high`` quantiles (default 1 % / 99 %) of every dimension,
  ignoring non-finite rows, so a few outliers do not squash the useful range.
* ``normalize`` maps ``[low, high]`` affinely onto ``[-1, 1]``: ``y = (x - center) / half_range``.
* Guard against tiny ranges (a known failure in peer projects, where a near-constant gripper or rotation
  dimension turned a 1e-6 wiggle into a value of 1e3):

  - a dimension whose quantile range is below ``min_range`` (but not ~0) is *widened* to ``min_range``
    around its centre, so its scale is at most ``2 / min_range``;
  - a dimension whose range is ~0 (below ``ZERO_RANGE``, e.g. a constant) passes through *centred*:
    ``y = x - center`` (scale 1), so an unseen value at run time stays as large as it really is.

  ``unnormalize`` is the exact inverse in both cases.
* JSON round trip: ``to_dict`` / ``from_dict`` / ``save`` / ``load``. ``DatasetStats`` bundles the action and
  state statistics; checkpoints store it as ``norm_stats.json``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ZERO_RANGE = 1e-8  # quantile ranges below this count as constant dimensions (pass through centred)
# min_range of robot-state statistics (``data.pipelines.compute_dataset_stats``): a state dimension is scaled
# by at most 2 / 0.05 = 40. A dimension the demonstrations barely move (the gripper held straight down: tilt
# quantile range ~0.005 rad) otherwise turns the ~0.02 rad tilts a learned policy makes at run time into
# decoder inputs of 5-9 (measured on the demo policy of 2026-11-23, commit 3411ed2), far outside anything it was
# trained on.
STATE_MIN_RANGE = 0.05


def _arr(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"NormStats.{name}: non-finite values {a.tolist()}")
    return a


@dataclass
class NormStats:
    """Per-dimension statistics; ``low``/``high`` are the ``q_low``/``q_high`` quantiles, shape (D,)."""

    low: np.ndarray
    high: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min_range: float = 1e-3
    q_low: float = 0.01
    q_high: float = 0.99
    count: int = 0

    def __post_init__(self):
        self.low = _arr(self.low, "low")
        self.high = _arr(self.high, "high")
        self.mean = _arr(self.mean, "mean")
        self.std = _arr(self.std, "std")
        d = self.low.shape[0]
        for name in ("high", "mean", "std"):
            if getattr(self, name).shape[0] != d:
                raise ValueError(f"NormStats.{name} has {getattr(self, name).shape[0]} dims, low has {d}")
        if np.any(self.high < self.low):
            raise ValueError(f"NormStats: high < low in dims {np.nonzero(self.high < self.low)[0].tolist()}")
        if not (self.min_range > 0):
            raise ValueError(f"NormStats.min_range must be > 0, got {self.min_range}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def compute(cls, array, q_low: float = 0.01, q_high: float = 0.99, min_range: float = 1e-3) -> "NormStats":
        """Statistics of ``array`` (N, D) (or (N,) for one dimension). Rows with NaN/inf are ignored."""
        x = np.asarray(array, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"NormStats.compute expects an (N, D) array, got shape {x.shape}")
        if not (0.0 <= q_low < q_high <= 1.0):
            raise ValueError(f"NormStats.compute: need 0 <= q_low < q_high <= 1, got {q_low}, {q_high}")
        x = x[np.all(np.isfinite(x), axis=1)]
        if x.shape[0] == 0:
            raise ValueError("NormStats.compute: no finite rows to compute statistics from")
        low, high = np.quantile(x, [q_low, q_high], axis=0)
        return cls(low=low, high=high, mean=x.mean(axis=0), std=x.std(axis=0), min_range=float(min_range),
                   q_low=float(q_low), q_high=float(q_high), count=int(x.shape[0]))

    # ------------------------------------------------------------------ the mapping
    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    @property
    def center(self) -> np.ndarray:
        return (self.low + self.high) / 2.0

    @property
    def half_range(self) -> np.ndarray:
        """Divisor per dimension: widened to ``min_range / 2``; 1.0 for (near-)constant dimensions."""
        rng = self.high - self.low
        half = np.maximum(rng, self.min_range) / 2.0
        return np.where(rng < ZERO_RANGE, 1.0, half)

    def _check(self, x: np.ndarray) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(f"NormStats: last dimension {x.shape[-1]} != {self.dim}")

    def normalize(self, x, clip: float | None = None):
        """(..., D) raw -> normalized (same type family: numpy in/out, torch in/out)."""
        if _is_torch(x):
            import torch
            self._check(x)
            c = torch.as_tensor(self.center, dtype=x.dtype, device=x.device)
            h = torch.as_tensor(self.half_range, dtype=x.dtype, device=x.device)
            y = (x - c) / h
            return y.clamp(-clip, clip) if clip is not None else y
        a = np.asarray(x)
        self._check(a)
        y = (a - self.center) / self.half_range
        if clip is not None:
            y = np.clip(y, -clip, clip)
        return y.astype(a.dtype if np.issubdtype(a.dtype, np.floating) else np.float32)

    def unnormalize(self, y):
        """(..., D) normalized -> raw; exact inverse of ``normalize`` (without clipping)."""
        if _is_torch(y):
            import torch
            self._check(y)
            c = torch.as_tensor(self.center, dtype=y.dtype, device=y.device)
            h = torch.as_tensor(self.half_range, dtype=y.dtype, device=y.device)
            return y * h + c
        a = np.asarray(y)
        self._check(a)
        x = a * self.half_range + self.center
        return x.astype(a.dtype if np.issubdtype(a.dtype, np.floating) else np.float32)

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict:
        return {"low": self.low.tolist(), "high": self.high.tolist(), "mean": self.mean.tolist(),
                "std": self.std.tolist(), "min_range": float(self.min_range), "q_low": float(self.q_low),
                "q_high": float(self.q_high), "count": int(self.count)}

    @classmethod
    def from_dict(cls, d: dict) -> "NormStats":
        missing = [k for k in ("low", "high", "mean", "std") if k not in d]
        if missing:
            raise ValueError(f"NormStats.from_dict: missing keys {missing}")
        return cls(low=d["low"], high=d["high"], mean=d["mean"], std=d["std"],
                   min_range=float(d.get("min_range", 1e-3)), q_low=float(d.get("q_low", 0.01)),
                   q_high=float(d.get("q_high", 0.99)), count=int(d.get("count", 0)))

    def save(self, path) -> None:
        _atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "NormStats":
        return cls.from_dict(_read_json(path))


@dataclass
class DatasetStats:
    """Statistics a policy needs: ``action`` and ``state`` (either may be None if the data lacks it)."""

    action: NormStats | None = None
    state: NormStats | None = None
    extra: dict = field(default_factory=dict)  # free-form JSON-able provenance (dataset path, columns, ...)

    def to_dict(self) -> dict:
        return {"action": None if self.action is None else self.action.to_dict(),
                "state": None if self.state is None else self.state.to_dict(),
                "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetStats":
        if not isinstance(d, dict) or ("action" not in d and "state" not in d):
            raise ValueError("DatasetStats.from_dict: expected a dict with 'action' and/or 'state'")
        return cls(action=None if d.get("action") is None else NormStats.from_dict(d["action"]),
                   state=None if d.get("state") is None else NormStats.from_dict(d["state"]),
                   extra=dict(d.get("extra") or {}))

    def save(self, path) -> None:
        _atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "DatasetStats":
        return cls.from_dict(_read_json(path))


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _read_json(path) -> dict:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _atomic_write_json(path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
