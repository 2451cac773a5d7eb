"""ROS-free data carried between the planner, controller and safety filter.

These are what the ROS messages ``Trace`` / ``ActionChunk`` hold (``semanticvla_ros.messages`` is the
only converter between the two). ``validate()`` checks every shape and value and raises ``ValueError``
with a message that names the field, so a node can log the reason and hold the arm still.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .actions import ACTION_SPACE_EE_DELTA


def _finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or inf")


def _as_2d_float(name: str, a, allow_empty: bool = True) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name}: must not be empty")
    _finite(name, arr)
    return arr


@dataclass
class TracePlan:
    """One plan of the VLM planner (System 2)."""

    anchors: np.ndarray                       # (N, 2) float32 normalized (u, v) in [0, 1]
    latent_ids: np.ndarray                    # (K,) int32 indices k of <ACT_k>
    latent_hidden: np.ndarray                 # (K, d_a) float32: E_a, VLM last-layer states at latent positions
    visual_features: np.ndarray               # (M, d_v) float32: pooled E_v
    image_width: int = 0                      # size of the image the anchors refer to
    image_height: int = 0
    instruction: str = ""
    raw_text: str = ""
    parse_ok: bool = True
    plan_id: int = 0
    planning_latency_s: float = 0.0
    stamp_ns: int = 0                         # time of the observation the plan was computed from
    frame_id: str = ""                        # camera optical frame

    def validate(self) -> "TracePlan":
        self.anchors = _as_2d_float("anchors", self.anchors, allow_empty=False)
        if self.anchors.shape[1] != 2:
            raise ValueError(f"anchors: expected shape (N, 2), got {self.anchors.shape}")
        if np.any((self.anchors < 0) | (self.anchors > 1)):
            raise ValueError("anchors: normalized coordinates outside [0, 1]")
        ids = np.asarray(self.latent_ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"latent_ids: expected a 1-D integer array, got {ids.dtype} {ids.shape}")
        if ids.size and ids.min() < 0:
            raise ValueError("latent_ids: negative id")
        self.latent_ids = ids.astype(np.int32)
        self.latent_hidden = _as_2d_float("latent_hidden", self.latent_hidden)
        self.visual_features = _as_2d_float("visual_features", self.visual_features)
        if self.latent_hidden.shape[0] not in (0, self.latent_ids.shape[0]):
            raise ValueError(f"latent_hidden: {self.latent_hidden.shape[0]} rows for {self.latent_ids.shape[0]} latent ids")
        if self.image_width < 0 or self.image_height < 0:
            raise ValueError("image size must be non-negative")
        if not np.isfinite(self.planning_latency_s) or self.planning_latency_s < 0:
            raise ValueError(f"planning_latency_s: invalid value {self.planning_latency_s}")
        return self


@dataclass
class ActionChunkData:
    """A chunk of H actions of dimension D, to be executed one row every ``dt`` seconds."""

    actions: np.ndarray                       # (H, D) float32
    dt: float = 0.05
    action_space: str = ACTION_SPACE_EE_DELTA
    plan_id: int = 0
    joint_names: list[str] = field(default_factory=list)
    stamp_ns: int = 0                         # time at which row 0 applies
    frame_id: str = ""

    def validate(self) -> "ActionChunkData":
        self.actions = _as_2d_float("actions", self.actions, allow_empty=False)
        if not (np.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f"dt: must be a positive finite number of seconds, got {self.dt}")
        if not self.action_space:
            raise ValueError("action_space: empty")
        if self.joint_names and len(self.joint_names) != self.actions.shape[1]:
            raise ValueError(f"joint_names: {len(self.joint_names)} names for action dimension {self.actions.shape[1]}")
        return self

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])
