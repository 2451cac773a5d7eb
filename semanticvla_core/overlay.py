"""What the trace_overlay node draws and publishes, ROS-free.

* :func:`draw_plan_overlay`: the plan on the camera image: the trace polyline and dots (drawn by
  :func:`semanticvla_core.data.viz.draw_trace`, the project's one trace drawer), the anchors numbered in
  order 1..N, the latent action ids and the instruction as text bands.
* :func:`lift_trace`: the trace lifted to 3-D in the base/world frame through the camera model
  (:class:`semanticvla_core.camera.PinholeCamera`): onto the table plane, or with a depth image.
* :func:`trace_marker_arrays`: plain arrays (points, colours, labels) from which the node builds a
  ``visualization_msgs/MarkerArray`` (a LINE_STRIP, SPHERE_LIST and TEXT markers).

Images are RGB uint8 (H, W, 3); traces are normalized (u, v) in [0, 1] (``camera.py`` convention).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .camera import PinholeCamera, normalized_to_pixels
from .data.viz import draw_trace


@dataclass
class OverlayStyle:
    """Colours are RGB. Sizes are in pixels of the drawn image."""

    line_color: tuple[int, int, int] = (255, 40, 40)
    start_color: tuple[int, int, int] = (40, 255, 40)
    label_color: tuple[int, int, int] = (255, 255, 0)
    text_color: tuple[int, int, int] = (255, 255, 255)
    band_color: tuple[int, int, int] = (0, 0, 0)
    thickness: int = 2
    radius: int = 3
    font_scale: float = 0.4
    max_instruction_chars: int = 80


def _put_band(img: np.ndarray, text: str, top: bool, style: OverlayStyle) -> None:
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, style.font_scale, 1)
    band = th + base + 4
    h = img.shape[0]
    y0, y1 = (0, band) if top else (h - band, h)
    img[y0:y1] = (0.35 * img[y0:y1] + 0.65 * np.array(style.band_color)).astype(np.uint8)
    cv2.putText(img, text, (2, y0 + th + 2), font, style.font_scale, style.text_color, 1, cv2.LINE_AA)


def draw_plan_overlay(image: np.ndarray, anchors: np.ndarray, latent_ids: np.ndarray | None = None,
                      instruction: str = "", style: OverlayStyle | None = None, copy: bool = True) -> np.ndarray:
    """Draw one plan on an RGB uint8 image; returns the annotated image (a copy unless ``copy=False``).

    anchors: (N, 2) normalized trace anchors in execution order; non-finite anchors are skipped (never raises
    on a bad plan: the overlay must keep running). latent_ids: (K,) ints shown as ``ACT: k1 k2 ...``.
    """
    import cv2

    st = style or OverlayStyle()
    img = np.ascontiguousarray(image.copy() if copy else image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image: expected uint8 (H, W, 3), got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    uv = np.asarray(anchors, dtype=np.float64).reshape(-1, 2) if anchors is not None else np.zeros((0, 2))
    ok = np.all(np.isfinite(uv), axis=1)
    pts = uv[ok]
    if len(pts):
        draw_trace(img, pts, color=st.line_color, thickness=st.thickness, radius=st.radius,
                   start_color=st.start_color, copy=False)
        px = normalized_to_pixels(pts, w, h)
        order = np.flatnonzero(ok) + 1          # anchor numbers keep their position in the plan
        for (x, y), n in zip(px, order):
            org = (int(round(x)) + st.radius + 2, int(round(y)) - st.radius - 2)
            cv2.putText(img, str(int(n)), org, cv2.FONT_HERSHEY_SIMPLEX, st.font_scale, st.label_color, 1, cv2.LINE_AA)
    if instruction:
        text = instruction if len(instruction) <= st.max_instruction_chars else instruction[:st.max_instruction_chars - 3] + "..."
        _put_band(img, text, top=True, style=st)
    if latent_ids is not None and np.asarray(latent_ids).size:
        _put_band(img, "ACT: " + " ".join(str(int(i)) for i in np.asarray(latent_ids).reshape(-1)), top=False, style=st)
    return img


def lift_trace(camera: PinholeCamera, uv: np.ndarray, plane_z: float = 0.0, depth_m: np.ndarray | None = None,
               fallback_to_plane: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Normalized trace (N, 2) -> (world points (N, 3), valid (N,)).

    Without ``depth_m``: rays through the anchors intersected with the plane z = ``plane_z`` (the table top).
    With ``depth_m`` ((H, W) metres along the optical axis, NaN = no reading, same size as the camera):
    each anchor is lifted with the depth of its nearest pixel; anchors without a reading fall back to
    the plane when ``fallback_to_plane`` (else they are marked invalid).
    """
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    finite = np.all(np.isfinite(uv), axis=1)
    uv_safe = np.where(finite[:, None], uv, 0.5)
    P, valid = camera.lift_to_plane(uv_safe, plane_z)
    valid = valid & finite
    if depth_m is None:
        return P, valid
    d = np.asarray(depth_m, dtype=np.float64)
    if d.shape != (camera.height, camera.width):
        raise ValueError(f"depth_m: shape {d.shape} does not match the camera ({camera.height}, {camera.width})")
    px = np.rint(normalized_to_pixels(uv_safe, camera.width, camera.height)).astype(np.int64)
    px[:, 0] = np.clip(px[:, 0], 0, camera.width - 1)
    px[:, 1] = np.clip(px[:, 1], 0, camera.height - 1)
    z = d[px[:, 1], px[:, 0]]
    has = finite & np.isfinite(z) & (z > 0)
    Pd = camera.lift_with_depth(uv_safe, np.where(has, z, 1.0))
    out = np.where(has[:, None], Pd, P)
    ok = has | (valid & fallback_to_plane)
    return out, ok


def trace_marker_arrays(points: np.ndarray, valid: np.ndarray, start_rgba=(0.2, 1.0, 0.2, 1.0),
                        end_rgba=(1.0, 0.2, 0.2, 1.0)) -> dict[str, np.ndarray | list[str]]:
    """Arrays for RViz markers from lifted points: ``points`` (M, 3) of the valid anchors in order,
    ``colors`` (M, 4) RGBA fading from start to end, ``labels`` the anchor numbers (1-based, original order)."""
    P = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    v = np.asarray(valid, dtype=bool).reshape(-1)
    if v.shape[0] != P.shape[0]:
        raise ValueError(f"valid: {v.shape[0]} flags for {P.shape[0]} points")
    idx = np.flatnonzero(v)
    t = np.linspace(0.0, 1.0, len(idx)) if len(idx) > 1 else np.zeros(len(idx))
    colors = (1 - t)[:, None] * np.asarray(start_rgba) + t[:, None] * np.asarray(end_rgba)
    return {"points": P[idx], "colors": colors, "labels": [str(int(i) + 1) for i in idx]}
