"""End-effector traces: dense windows, anchors, resampling and the text codec the VLM writes.

A *trace* is a sequence of normalized image coordinates (u, v) in [0, 1]^2 (see ``camera.py`` for the
convention). The dataset stores, for every frame t, the dense window of the next ``window`` positions
(the TraceX schema: ``trace.x``, ``trace.y``, ``trace.present``); the VLM writes ``num_anchors`` anchors
resampled from that window as text ``[[x, y], ...]`` with integers 0..1000.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

DEFAULT_WINDOW = 12       # W: trace window in frames (authors' release)
DEFAULT_NUM_ANCHORS = 4   # N: anchors written by the VLM
COORD_SCALE = 1000        # text coordinates are integers 0..COORD_SCALE


def trace_windows(points: np.ndarray, present: np.ndarray | None = None, window: int = DEFAULT_WINDOW
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame future windows from a per-frame track.

    points: (T, 2) normalized positions of the end-effector in every frame of an episode.
    present: (T,) bool, whether the point is valid (visible) in that frame; default all True.
    Returns (T, window, 2) float32 windows (frame t holds positions t..t+window-1, the last position
    repeated past the episode end) and (T,) bool: the window's first point is present and at least
    half of its points are.
    """
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (T, 2), got {points.shape}")
    T = points.shape[0]
    present = np.ones(T, dtype=bool) if present is None else np.asarray(present, dtype=bool)
    if present.shape != (T,):
        raise ValueError(f"present must have shape ({T},), got {present.shape}")
    idx = np.minimum(np.arange(T)[:, None] + np.arange(window)[None, :], T - 1)
    win = points[idx]
    pres = present[idx]
    ok = pres[:, 0] & (pres.mean(axis=1) >= 0.5)
    return win.astype(np.float32), ok


def object_keypoints(gripper: np.ndarray, points: np.ndarray, present: np.ndarray | None = None,
                     threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame image positions of the manipulated object and of its destination, read off a pick-and-place
    demonstration's end-effector track: the grasp point (where the gripper first closes) and the place
    point (where it next opens).

    gripper: (T,) gripper command per frame (> threshold = closed); points: (T, 2) normalized end-effector
    positions (the trace's first point per frame), or any (T, D) end-effector positions (e.g. 3-D TCP positions);
    present: (T,) visibility.
    Returns (T, 2, D) float32 [object, destination] and (T, 2) bool validity. The object sits at the grasp
    point until the grasp, moves with the hand while held and rests at the place point afterwards; the
    destination is the place point throughout. Both are invalid when the episode never grasps / releases
    or when the defining point is not visible.
    """
    g = np.asarray(gripper, dtype=np.float64).reshape(-1) > threshold
    pts = np.asarray(points, dtype=np.float32)
    T = g.shape[0]
    if pts.ndim != 2 or pts.shape[0] != T:
        raise ValueError(f"points must have shape ({T}, D), got {pts.shape}")
    vis = np.ones(T, bool) if present is None else np.asarray(present, bool).reshape(-1)
    out, ok = np.zeros((T, 2, pts.shape[1]), np.float32), np.zeros((T, 2), bool)
    closed = np.flatnonzero(g)
    if closed.size == 0:
        return out, ok
    tg = int(closed[0])
    opened = np.flatnonzero(~g[tg:])
    if opened.size == 0:
        return out, ok
    tr = tg + int(opened[0])
    t = np.arange(T)
    src = np.where(t <= tg, tg, np.where(t < tr, t, tr))       # the frame whose hand position is the object's
    out[:, 0], ok[:, 0] = pts[src], vis[src]
    out[:, 1], ok[:, 1] = pts[tr], vis[tr]
    return out, ok


def resample_trace(points: np.ndarray, n: int, mode: str = "time") -> np.ndarray:
    """Resample (..., L, 2) -> (..., n, 2) by linear interpolation.

    mode="time": uniform in time (keeps speed: slow segments get close anchors; the default, since the
    anchors then say *when* as well as *where*). mode="arclength": uniform along the path.
    The first and last points are kept exactly.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim < 2 or pts.shape[-1] != 2 or pts.shape[-2] < 1:
        raise ValueError(f"points must have shape (..., L, 2) with L >= 1, got {pts.shape}")
    if n < 1:
        raise ValueError("n must be >= 1")
    L = pts.shape[-2]
    flat = pts.reshape(-1, L, 2)
    out = np.empty((flat.shape[0], n, 2))
    for b, p in enumerate(flat):
        if L == 1:
            out[b] = p[0]
            continue
        if mode == "time":
            s = np.arange(L, dtype=np.float64)
        elif mode == "arclength":
            seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
            s = np.concatenate([[0.0], np.cumsum(seg)])
            if s[-1] <= 1e-12:
                out[b] = p[0]
                continue
        else:
            raise ValueError(f"unknown mode {mode!r}")
        q = np.linspace(s[0], s[-1], n)
        out[b, :, 0] = np.interp(q, s, p[:, 0])
        out[b, :, 1] = np.interp(q, s, p[:, 1])
    return out.reshape(pts.shape[:-2] + (n, 2)).astype(np.float32)


def quantize_coords(points: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> integers 0..COORD_SCALE (clipped)."""
    return np.clip(np.rint(np.asarray(points, dtype=np.float64) * COORD_SCALE), 0, COORD_SCALE).astype(np.int64)


def encode_trace_text(points: np.ndarray) -> str:
    """(N, 2) normalized anchors -> ``"[[x, y], [x, y], ...]"`` with integers 0..1000."""
    q = quantize_coords(points)
    if q.ndim != 2 or q.shape[1] != 2:
        raise ValueError(f"anchors must have shape (N, 2), got {q.shape}")
    return "[" + ", ".join(f"[{x}, {y}]" for x, y in q) + "]"


@dataclass
class ParsedTrace:
    """Result of parsing VLM text. ``ok`` is True only for a clean, complete, in-range trace."""

    points: np.ndarray                      # (n, 2) float32 in [0, 1]; n may differ from expected if not ok
    ok: bool
    problems: list[str] = field(default_factory=list)


_PAIR = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def parse_trace_text(text: str, expected_n: int | None = None) -> ParsedTrace:
    """Parse ``[[x, y], ...]``; never raises. Recovers what it can and lists what was wrong.

    Recovery: pairs found anywhere in the text are used; if none are, loose numbers are paired up;
    out-of-range values are clipped; with ``expected_n`` a short trace is padded by repeating its last
    point and a long one truncated. An empty result is a single point at the image centre.
    """
    problems: list[str] = []
    if not isinstance(text, str):
        return ParsedTrace(np.full((expected_n or 1, 2), 0.5, np.float32), False, [f"not a string: {type(text)!r}"])
    body = text.strip()
    pairs = [(float(a), float(b)) for a, b in _PAIR.findall(body)]
    canonical = re.fullmatch(r"\[\s*(\[\s*\d+\s*,\s*\d+\s*\]\s*(,\s*)?)*\]", body) is not None
    if not canonical:
        problems.append("text is not a clean [[x, y], ...] list")
    if not pairs:
        nums = [float(x) for x in _NUM.findall(body)]
        if len(nums) >= 2:
            problems.append("no [x, y] pairs; paired up loose numbers")
            pairs = list(zip(nums[0::2], nums[1::2]))
        else:
            problems.append("no coordinates found")
    arr = np.array(pairs, dtype=np.float64).reshape(-1, 2)
    if arr.size and (np.any(arr < 0) or np.any(arr > COORD_SCALE)):
        problems.append(f"coordinates outside 0..{COORD_SCALE} clipped")
    arr = np.clip(arr, 0, COORD_SCALE) / COORD_SCALE
    if expected_n is not None:
        if arr.shape[0] == 0:
            arr = np.full((expected_n, 2), 0.5)
        elif arr.shape[0] < expected_n:
            problems.append(f"{arr.shape[0]} points, expected {expected_n}; padded with the last point")
            arr = np.concatenate([arr, np.repeat(arr[-1:], expected_n - arr.shape[0], axis=0)])
        elif arr.shape[0] > expected_n:
            problems.append(f"{arr.shape[0]} points, expected {expected_n}; truncated")
            arr = arr[:expected_n]
    elif arr.shape[0] == 0:
        arr = np.full((1, 2), 0.5)
    return ParsedTrace(arr.astype(np.float32), not problems, problems)


def validate_trace(points: np.ndarray, name: str = "trace") -> np.ndarray:
    """Check (..., 2) finite coordinates in [0, 1]; returns float32 or raises ValueError naming the problem."""
    p = np.asarray(points, dtype=np.float32)
    if p.ndim < 1 or p.shape[-1] != 2:
        raise ValueError(f"{name}: expected (..., 2) coordinates, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name}: non-finite coordinates")
    bad = np.argwhere(np.any((p < 0) | (p > 1), axis=-1))
    if bad.size:
        raise ValueError(f"{name}: coordinates outside [0, 1] at index {tuple(bad[0])}: {p[tuple(bad[0])].tolist()}")
    return p
