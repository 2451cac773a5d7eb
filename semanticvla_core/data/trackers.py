"""Point trackers behind one interface, and keyframe detection for trace annotation.

``PointTracker.track(frames, queries)`` follows the CoTracker convention:

* ``frames``: (T, H, W, 3) uint8 RGB video,
* ``queries``: (Q, 3) float rows ``(t, x, y)``: start frame and OpenCV *pixel* position of each point,
* returns ``tracks`` (T, Q, 2) float32 pixel positions in every frame and ``visible`` (T, Q) bool.

Implementations: ``LKTracker`` (pyramidal Lucas-Kanade, ``cv2.calcOpticalFlowPyrLK``, forward and backward
from each query frame, with a forward-backward consistency check), ``CoTrackerTracker`` (a CoTracker model
from a *local* repository directory via ``torch.hub.load(..., source="local")`` plus a local weights file,
or a TorchScript file; nothing is downloaded), ``IdentityTracker`` (a deliberately useless baseline that
keeps every point where it started: tests assert it fails where LK passes).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import cv2
import numpy as np


class PointTracker(ABC):
    name = "base"

    @abstractmethod
    def track(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, H, W, 3) uint8 frames, (Q, 3) (t, x, y) queries -> ((T, Q, 2) pixels, (T, Q) visible)."""

    @staticmethod
    def _check(frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = np.asarray(frames)
        q = np.asarray(queries, np.float64).reshape(-1, 3)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
        if np.any(q[:, 0] < 0) or np.any(q[:, 0] > frames.shape[0] - 1):
            raise ValueError(f"query frames must lie in 0..{frames.shape[0] - 1}, got {q[:, 0].tolist()}")
        return frames, q


class IdentityTracker(PointTracker):
    """Every point stays at its query position (a broken tracker, for tests and as a lower bound)."""

    name = "identity"

    def track(self, frames, queries):
        frames, q = self._check(frames, queries)
        T = frames.shape[0]
        return np.repeat(q[None, :, 1:3], T, axis=0).astype(np.float32), np.ones((T, len(q)), bool)


class LKTracker(PointTracker):
    """Pyramidal Lucas-Kanade (OpenCV) with a local support cloud.

    Each step tracks the point itself plus up to ``max_support`` corners (``cv2.goodFeaturesToTrack``) within
    ``support_radius`` px of it (default: 6 % of the shorter image side; 0 = the point alone) and moves the
    point by the median displacement of those that pass the forward-backward check (error < ``fb_threshold``
    px). The support is re-detected every frame, so a point on a weakly textured spot (the TCP between
    the fingers) moves with the textured structure around it. A step where nothing passes the check keeps
    the last position and is marked not visible; tracking continues from there.
    """

    name = "lk"

    def __init__(self, win_size: int = 21, max_level: int = 3, iterations: int = 30, eps: float = 0.01,
                 fb_threshold: float = 1.0, support_radius: float | None = None, max_support: int = 24):
        self.win_size, self.max_level = int(win_size), int(max_level)
        self.criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, int(iterations), float(eps))
        self.fb_threshold = float(fb_threshold)
        self.support_radius, self.max_support = support_radius, int(max_support)

    def _flow(self, a: np.ndarray, b: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kw = dict(winSize=(self.win_size, self.win_size), maxLevel=self.max_level, criteria=self.criteria)
        p0 = p.reshape(-1, 1, 2).astype(np.float32)
        p1, st, _ = cv2.calcOpticalFlowPyrLK(a, b, p0, None, **kw)
        p0r, st2, _ = cv2.calcOpticalFlowPyrLK(b, a, p1, None, **kw)
        fb = np.linalg.norm((p0r - p0).reshape(-1, 2), axis=1)
        ok = (st.reshape(-1) == 1) & (st2.reshape(-1) == 1) & (fb < self.fb_threshold)
        return p1.reshape(-1, 2), ok

    def _step(self, a: np.ndarray, b: np.ndarray, p: np.ndarray, radius: float) -> tuple[np.ndarray, bool]:
        pts = p[None].astype(np.float32)
        if radius > 0 and self.max_support > 0:
            mask = np.zeros(a.shape, np.uint8)
            cv2.circle(mask, (int(round(float(p[0]))), int(round(float(p[1])))), int(round(radius)), 255, -1)
            f = cv2.goodFeaturesToTrack(a, maxCorners=self.max_support, qualityLevel=0.01, minDistance=2,
                                        mask=mask)
            if f is not None:
                pts = np.concatenate([pts, f.reshape(-1, 2).astype(np.float32)])
        nxt, ok = self._flow(a, b, pts)
        if not ok.any():
            return p, False
        return p + np.median(nxt[ok] - pts[ok], axis=0), True

    def track(self, frames, queries):
        frames, q = self._check(frames, queries)
        T, H, W = frames.shape[:3]
        radius = 0.06 * min(H, W) if self.support_radius is None else float(self.support_radius)
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        tracks = np.zeros((T, len(q), 2), np.float32)
        visible = np.zeros((T, len(q)), bool)
        for n, (t0f, x, y) in enumerate(q):
            t0 = int(round(t0f))
            tracks[t0, n], visible[t0, n] = (x, y), True
            for step in (1, -1):
                p = np.array([x, y], np.float64)
                t = t0
                while 0 <= t + step < T:
                    p, ok = self._step(gray[t], gray[t + step], p, radius)
                    inside = -0.5 <= p[0] <= W - 0.5 and -0.5 <= p[1] <= H - 0.5
                    p = np.clip(p, -0.5, [W - 0.5, H - 0.5])
                    t += step
                    tracks[t, n], visible[t, n] = p, ok and inside
        return tracks, visible


class CoTrackerTracker(PointTracker):
    """A CoTracker(-style) model loaded from local files only.

    * ``checkpoint`` = a TorchScript file (``torch.jit.load``) whose ``forward(video, queries)`` takes
      video (1, T, 3, H, W) float 0..255 and queries (1, Q, 3) and returns (tracks (1, T, Q, 2),
      visibility (1, T, Q)); or
    * ``repo_dir`` = a local clone of the CoTracker repository (``hubconf.py``) + ``checkpoint`` = its weights
      (``.pth`` state dict, read with ``weights_only=True``, or ``.safetensors``); the model is built with
      ``torch.hub.load(repo_dir, entrypoint, source="local", pretrained=False)``.
    A missing path raises a ``ValueError`` saying what to provide; nothing is ever downloaded.
    """

    name = "cotracker"

    def __init__(self, checkpoint: str | Path, repo_dir: str | Path | None = None,
                 entrypoint: str = "cotracker3_offline", device: str = "cpu"):
        import torch
        self.device = device
        ckpt = Path(checkpoint) if checkpoint else None
        if ckpt is None or not ckpt.is_file():
            raise ValueError(f"CoTracker checkpoint {checkpoint!r} not found: pass a local TorchScript file, or a "
                             "local CoTracker repo (--cotracker-repo) plus its weights file; nothing is downloaded")
        if repo_dir is None:
            try:
                self.model = torch.jit.load(str(ckpt), map_location=device)
            except Exception as e:
                raise ValueError(f"{ckpt}: not a TorchScript module ({e}); for a plain weights file also pass "
                                 "the local CoTracker repository directory") from e
        else:
            repo = Path(repo_dir)
            if not (repo / "hubconf.py").is_file():
                raise ValueError(f"{repo}: not a local CoTracker repository (no hubconf.py)")
            self.model = torch.hub.load(str(repo), entrypoint, source="local", pretrained=False)
            if ckpt.suffix == ".safetensors":
                from safetensors.torch import load_file
                state = load_file(str(ckpt))
            else:
                state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
            target = getattr(self.model, "model", self.model)
            target.load_state_dict(state)
            self.model.to(device)
        self.model.eval()

    def track(self, frames, queries):
        import torch
        frames, q = self._check(frames, queries)
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None].float().to(self.device)
        qt = torch.from_numpy(q.astype(np.float32))[None].to(self.device)
        with torch.no_grad():
            out = self.model(video, qt)
        tracks, vis = out[0], out[1]
        tracks = tracks[0].detach().cpu().numpy().astype(np.float32)
        vis = vis[0].detach().cpu().numpy()
        if vis.dtype != np.bool_:
            vis = vis > 0.5
        T, Q = frames.shape[0], len(q)
        if tracks.shape != (T, Q, 2) or vis.shape != (T, Q):
            raise ValueError(f"CoTracker returned tracks {tracks.shape}, visibility {vis.shape}; expected "
                             f"({T}, {Q}, 2) and ({T}, {Q})")
        return tracks, vis


def make_tracker(name: str, checkpoint: str | None = None, repo_dir: str | None = None, **kw) -> PointTracker:
    """``"lk"`` | ``"cotracker"`` | ``"identity"`` -> a PointTracker."""
    if name == "lk":
        return LKTracker(**kw)
    if name == "cotracker":
        return CoTrackerTracker(checkpoint, repo_dir, **kw)
    if name == "identity":
        return IdentityTracker()
    raise ValueError(f"unknown tracker {name!r} (lk | cotracker | identity)")


# ---------------------------------------------------------------------------------------------------- keyframes
def detect_keyframes(gripper: np.ndarray | None = None, positions: np.ndarray | None = None,
                     length: int | None = None, gripper_threshold: float = 0.5, min_gap: int = 3,
                     speed_fraction: float = 0.2) -> np.ndarray:
    """Keyframes of an episode: first and last frame, gripper open/close events (``gripper`` (T,) crosses
    ``gripper_threshold``; 0 = open, 1 = closed), and local minima of end-effector speed (``positions``
    (T, D)) below ``speed_fraction`` x the median speed. Keyframes closer than ``min_gap`` frames are merged
    (events win over velocity minima). Returns sorted int64 indices."""
    T = length if length is not None else (len(gripper) if gripper is not None else len(positions))
    if T is None or T < 1:
        raise ValueError("detect_keyframes: empty episode")
    events = {0, T - 1}
    if gripper is not None:
        g = np.asarray(gripper, np.float64).reshape(-1) >= gripper_threshold
        events |= set((np.nonzero(g[1:] != g[:-1])[0] + 1).tolist())
    minima: set[int] = set()
    if positions is not None and T >= 3:
        p = np.asarray(positions, np.float64).reshape(T, -1)
        v = np.linalg.norm(np.diff(p, axis=0), axis=1)  # speed between t and t+1
        v = np.convolve(np.pad(v, 1, mode="edge"), np.ones(3) / 3, mode="valid")  # light smoothing
        thr = speed_fraction * max(np.median(v), 1e-12)
        for t in range(1, len(v) - 1):
            if v[t] <= v[t - 1] and v[t] < v[t + 1] and v[t] < thr:
                minima.add(t + 1)
    keep = sorted(events)
    for m in sorted(minima):
        if all(abs(m - k) >= min_gap for k in keep):
            keep.append(m)
            keep.sort()
    return np.array(keep, np.int64)


def track_between_keyframes(tracker: PointTracker, frames: np.ndarray, keyframes: np.ndarray,
                            key_points: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Track one point (the end-effector) through an episode from pixel positions known at keyframes.

    For each pair of consecutive keyframes with known points (k0, k1), the point is tracked from k0 to k1;
    the accumulated drift at k1 (tracked vs. known) is removed linearly over the segment. Frames before the
    first / after the last known keyframe are tracked from the nearest one. Returns ((T, 2) pixels, (T,) visible).
    """
    T = frames.shape[0]
    ks = [int(k) for k in keyframes if int(k) in key_points and key_points[int(k)] is not None]
    if not ks:
        raise ValueError("track_between_keyframes: no keyframe has a known point")
    out = np.full((T, 2), np.nan, np.float32)
    vis = np.zeros(T, bool)
    for k0, k1 in zip(ks[:-1], ks[1:]):
        seg = frames[k0:k1 + 1]
        tr, v = tracker.track(seg, np.array([[0.0, *key_points[k0]]]))
        tr, v = tr[:, 0].astype(np.float64), v[:, 0]
        drift = np.asarray(key_points[k1], np.float64) - tr[-1]
        alpha = np.linspace(0.0, 1.0, len(tr))[:, None]
        out[k0:k1 + 1] = tr + alpha * drift
        vis[k0:k1 + 1] = v
        vis[k1] = True
    for k, lo, hi in ((ks[0], 0, ks[0] + 1), (ks[-1], ks[-1], T)):
        if hi - lo > 1:
            seg = frames[lo:hi]
            tr, v = tracker.track(seg, np.array([[float(k - lo), *key_points[k]]]))
            out[lo:hi], vis[lo:hi] = tr[:, 0], v[:, 0]
        out[k], vis[k] = key_points[k], True
    return out, vis
