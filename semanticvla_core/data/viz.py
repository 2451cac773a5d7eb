"""Drawing traces on images (OpenCV) and writing small overlay videos for a human to check.

Images are RGB uint8 (H, W, 3); traces are normalized (u, v) in [0, 1] (``camera.py`` convention).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..scheduling import normal_scheduling

from semanticvla_core.camera import normalized_to_pixels

_SHIFT = 4  # sub-pixel drawing precision (1/16 px)


def draw_trace(image: np.ndarray, uv: np.ndarray, color: tuple[int, int, int] = (255, 40, 40),
               thickness: int = 1, radius: int = 2, present: bool = True, start_color=(40, 255, 40),
               copy: bool = True) -> np.ndarray:
    """Draw a trace (N, 2) normalized onto an RGB uint8 image: a polyline, a dot per point, the first point
    in ``start_color`` and slightly larger. A trace that is not ``present`` is drawn dashed-grey.
    Returns the drawn image (a copy unless ``copy=False``)."""
    img = np.ascontiguousarray(image.copy() if copy else image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"draw_trace: expected uint8 (H, W, 3), got {img.dtype} {img.shape}")
    pts = np.asarray(uv, np.float64).reshape(-1, 2)
    if pts.size == 0 or not np.all(np.isfinite(pts)):
        return img
    h, w = img.shape[:2]
    px = np.rint(normalized_to_pixels(pts, w, h) * (1 << _SHIFT)).astype(np.int32)
    col = tuple(int(c) for c in (color if present else (160, 160, 160)))
    if len(px) > 1:
        if present:
            cv2.polylines(img, [px.reshape(-1, 1, 2)], False, col, thickness, cv2.LINE_AA, _SHIFT)
        else:
            for a, b in list(zip(px[:-1], px[1:]))[::2]:
                cv2.line(img, tuple(int(v) for v in a), tuple(int(v) for v in b), col, thickness, cv2.LINE_AA, _SHIFT)
    for p in px[1:]:
        cv2.circle(img, (int(p[0]), int(p[1])), radius << _SHIFT, col, -1, cv2.LINE_AA, _SHIFT)
    cv2.circle(img, (int(px[0][0]), int(px[0][1])), (radius + 1) << _SHIFT,
               tuple(int(c) for c in start_color), -1, cv2.LINE_AA, _SHIFT)
    return img


def upscale(image: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Nearest-neighbour enlarge small images so overlays are readable (draw *after* upscaling)."""
    h, w = image.shape[:2]
    s = max(1, int(np.ceil(min_side / min(h, w))))
    return image if s == 1 else cv2.resize(image, (w * s, h * s), interpolation=cv2.INTER_NEAREST)


def overlay_frames(frames: Sequence[np.ndarray], windows: np.ndarray, present: np.ndarray,
                   min_side: int = 256) -> list[np.ndarray]:
    """Per-frame overlays: frame t with its window (W, 2) drawn."""
    return [draw_trace(upscale(f, min_side), windows[t], present=bool(present[t]), thickness=2, radius=3)
            for t, f in enumerate(frames)]


def write_png(path, image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"{path}: could not write PNG")
    return path


def write_mp4(path, frames: Sequence[np.ndarray], fps: int = 20) -> Path:
    """RGB uint8 frames -> H.264 (or AV1 if libx264 is missing) MP4 via PyAV."""
    import av
    from fractions import Fraction
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    h2, w2 = h - h % 2, w - w % 2
    with av.open(str(path), "w") as c:
        try:
            s = c.add_stream("libx264", rate=fps)
        except Exception:
            s = c.add_stream("libsvtav1", rate=fps)
        s.width, s.height, s.pix_fmt = w2, h2, "yuv420p"
        s.time_base = Fraction(1, fps)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h2, :w2]), format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    normal_scheduling()   # the AV1 fallback raises its caller to SCHED_FIFO (see semanticvla_core.scheduling)
    return path


def contact_sheet(images: Sequence[np.ndarray], cols: int = 4) -> np.ndarray:
    """Tile same-size images into one (rows x cols) image (for the per-episode PNG)."""
    h, w = images[0].shape[:2]
    rows = int(np.ceil(len(images) / cols))
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return sheet
