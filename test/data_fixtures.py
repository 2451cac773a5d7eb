"""Shared helpers for the data tests: small synthetic LeRobot v3 datasets with known content."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from semanticvla_core.camera import PinholeCamera, look_at
from semanticvla_core.data.cameras import DEFAULT_IMAGE_KEY as AGENT, DEFAULT_WRIST_KEY as WRIST  # noqa: F401
from semanticvla_core.data.lerobot_v3 import LeRobotV3Writer


def frame_image(e: int, i: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth, codec-friendly image that differs per (episode, frame): gradient + moving bright square."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([60 + 120 * xx / w, 60 + 120 * yy / h, np.full_like(xx, 40.0 + 30 * ((e + seed) % 4))], -1)
    cx, cy = (5 + 3 * i + 7 * e) % (w - 12), (4 + 2 * i) % (h - 12)
    img[cy:cy + 10, cx:cx + 10] = [230, 230, 60]
    return img.astype(np.uint8)


def default_features(h: int = 48, w: int = 64, wrist: tuple[int, int] | None = (32, 32), traces: bool = True,
                     state_dim: int = 9) -> dict:
    f = {AGENT: {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"]}}
    if wrist is not None:
        f[WRIST] = {"dtype": "video", "shape": [wrist[0], wrist[1], 3], "names": ["height", "width", "channels"]}
    f["observation.state"] = {"dtype": "float32", "shape": [state_dim], "names": None}
    f["action"] = {"dtype": "float32", "shape": [7], "names": None}
    if traces:
        f["trace.x"] = {"dtype": "float32", "shape": [12], "names": None}
        f["trace.y"] = {"dtype": "float32", "shape": [12], "names": None}
        f["trace.present"] = {"dtype": "bool", "shape": [1], "names": None}
    return f


def make_dataset(root: Path, lengths=(10, 13, 16), codec: str = "h264", h: int = 48, w: int = 64,
                 wrist: tuple[int, int] | None = (32, 32), traces: bool = True, seed: int = 0,
                 cameras: dict | None = None, state_fn=None, **writer_kwargs) -> dict:
    """Write a dataset; returns the ground truth {"frames": [(e, i, frame_dict)], "tasks": [...]}."""
    rng = np.random.default_rng(seed)
    feats = default_features(h, w, wrist, traces, state_dim=len(state_fn(0, 0)) if state_fn else 9)
    writer = LeRobotV3Writer(root, fps=20, features=feats, video_codec=codec, cameras=cameras, **writer_kwargs)
    truth, tasks = [], []
    for e, n in enumerate(lengths):
        for i in range(n):
            fr = {AGENT: frame_image(e, i, h, w, seed)}
            if wrist is not None:
                fr[WRIST] = frame_image(e + 1, i, *wrist, seed=seed + 1)
            fr["observation.state"] = (state_fn(e, i) if state_fn else rng.normal(size=9)).astype(np.float32)
            fr["action"] = rng.normal(size=7).astype(np.float32)
            if traces:
                fr["trace.x"] = rng.uniform(size=12).astype(np.float32)
                fr["trace.y"] = rng.uniform(size=12).astype(np.float32)
                fr["trace.present"] = bool(rng.uniform() > 0.2)
            writer.add_frame(fr)
            truth.append((e, i, fr))
        task = f"pick up the {'red' if e % 2 == 0 else 'blue'} block"
        tasks.append(task)
        writer.save_episode(task=task)
    writer.finalize()
    return {"frames": truth, "tasks": tasks, "features": feats}


def synthetic_camera(width: int = 64, height: int = 48) -> PinholeCamera:
    """A camera 1 m in front of / above the table origin looking at it."""
    T = look_at(np.array([0.9, 0.0, 0.7]), np.array([0.4, 0.0, 0.05]))
    return PinholeCamera.from_fovy(width, height, 60.0, T)
