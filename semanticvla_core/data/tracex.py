"""The TraceX schema (as the authors publish TraceX-240K in LeRobot v3) and accessors.

Per frame t of an episode:

* ``trace.x`` float32[W], ``trace.y`` float32[W]: the end-effector's normalized image coordinates
  (``camera.py`` convention, [0, 1]) at frames t..t+W-1 (W = 12 in the released data), the last position
  repeated past the episode end (``traces.trace_windows``).
* ``trace.present`` bool[1] (a plain bool column in Parquet): whether the window is usable.

Accessors turn rows into (W, 2) windows + present flag, the form the pipelines and models use.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from semanticvla_core.traces import DEFAULT_WINDOW, trace_windows

TRACE_X = "trace.x"
TRACE_Y = "trace.y"
TRACE_PRESENT = "trace.present"
TRACE_KEYS = (TRACE_X, TRACE_Y, TRACE_PRESENT)


def tracex_features(window: int = DEFAULT_WINDOW) -> dict:
    """LeRobot feature specs of the three TraceX columns."""
    return {TRACE_X: {"dtype": "float32", "shape": [int(window)], "names": None},
            TRACE_Y: {"dtype": "float32", "shape": [int(window)], "names": None},
            TRACE_PRESENT: {"dtype": "bool", "shape": [1], "names": None}}


def has_traces(features: dict) -> bool:
    """Whether a dataset's ``features`` (``info.json``) contain the TraceX columns."""
    return all(k in features for k in TRACE_KEYS)


def trace_window_size(features: dict) -> int:
    if not has_traces(features):
        raise ValueError(f"dataset has no TraceX columns {list(TRACE_KEYS)}")
    wx, wy = int(features[TRACE_X]["shape"][0]), int(features[TRACE_Y]["shape"][0])
    if wx != wy:
        raise ValueError(f"trace.x has {wx} anchors but trace.y has {wy}")
    return wx


def frame_trace(frame: dict) -> tuple[np.ndarray, bool]:
    """One frame dict (from ``LeRobotV3Dataset``) -> ((W, 2) float32 window, present)."""
    try:
        x, y, p = frame[TRACE_X], frame[TRACE_Y], frame[TRACE_PRESENT]
    except KeyError as e:
        raise ValueError(f"frame has no TraceX column {e}") from None
    win = np.stack([np.asarray(x, np.float32).reshape(-1), np.asarray(y, np.float32).reshape(-1)], axis=-1)
    return win, bool(np.asarray(p).reshape(-1)[0])


def episode_traces(ds, episode: int) -> tuple[np.ndarray, np.ndarray]:
    """All windows of one episode of a ``LeRobotV3Dataset``: ((T, W, 2) float32, (T,) bool)."""
    cols = ds.get_columns(episode, TRACE_KEYS)
    win = np.stack([cols[TRACE_X], cols[TRACE_Y]], axis=-1).astype(np.float32)
    return win, np.asarray(cols[TRACE_PRESENT]).reshape(-1).astype(bool)


def iter_traces(ds) -> Iterator[tuple[int, int, np.ndarray, bool]]:
    """Yield (episode, frame index, (W, 2) window, present) over the whole dataset (no video decoding)."""
    for e in range(ds.num_episodes):
        win, pres = episode_traces(ds, e)
        for i in range(len(win)):
            yield e, i, win[i], bool(pres[i])


def track_to_columns(points: np.ndarray, visible: np.ndarray | None = None, window: int = DEFAULT_WINDOW
                     ) -> dict[str, np.ndarray]:
    """A per-frame track (T, 2) (+ visibility (T,)) -> TraceX columns {trace.x (T, W), trace.y (T, W),
    trace.present (T,)} via ``traces.trace_windows``. Coordinates are clipped to [0, 1]; a frame whose
    window leaves the image is marked not present."""
    pts = np.asarray(points, np.float32)
    vis = np.ones(len(pts), bool) if visible is None else np.asarray(visible, bool).copy()
    inside = np.all(np.isfinite(pts), axis=1) & np.all((pts >= 0) & (pts <= 1), axis=1)
    vis &= inside
    pts = np.clip(np.nan_to_num(pts, nan=0.5), 0.0, 1.0)
    win, ok = trace_windows(pts, vis, window)
    return {TRACE_X: win[..., 0].copy(), TRACE_Y: win[..., 1].copy(), TRACE_PRESENT: ok}
