"""Trace columns of LeRobot v3 datasets (the TraceX schema and the other layouts it is published in) and the
one place where their coordinates are converted to the normalized [0, 1] windows the pipelines and models use.

Layouts (``find_trace_layout``):

* ``window`` (the project's TraceX schema; the authors' DATASETS.md): ``trace.x`` / ``trace.y`` float32[W] per
  frame t = the end-effector's image positions at frames t..t+W-1 (W = 12 in the released data), the last
  position repeated past the episode end (``traces.trace_windows``), and ``trace.present`` bool[1].
* ``point`` (the authors' v3 release repacker ``convert_v21_to_v30_tracex.py``): ``trace.x`` / ``trace.y`` ONE
  float per frame (shape [1]). The window of frame t is built here from frames t..t+W-1 of the same episode
  (``traces.trace_windows``, W = ``DEFAULT_WINDOW``; the last point repeated at the episode end).
* ``pair`` (the authors' ``add_trace_column.py``): ``observation.trace.xy`` float32[2] per frame; windows as
  for ``point``.

Presence: a ``trace.present`` column gives it per frame (a point-layout window needs its first point present
and at least half of its points, ``traces.trace_windows``); without one it is per episode: an episode has a
trace when all its values are finite (null / NaN marks an episode without one).

Conventions (``TRACE_CONVENTIONS``; their names in metadata: ``COORDINATE_SPACES``):

* ``unit``: normalized image coordinates in [0, 1] (``camera.py``: u = (x_px + 0.5) / width), what the
  project writes (``coordinate_space: normalized_image_xy_0_1``).
* ``percent``: a 0-100 scale (``normalized_image_xy_0_100``, the authors' release). The authors map it to
  pixels as value / 100 * (size - 1); so does ``normalize_trace``, then pixels -> [0, 1] as ``pixel``.
* ``pixel``: pixel coordinates of the trace's camera image (OpenCV: centre of the top-left pixel = (0, 0)),
  to [0, 1] with ``camera.pixels_to_normalized``.

Where the convention comes from (``resolve_convention``): the trace column's own ``info.coordinate_space`` in
``meta/info.json`` (the authors' ``add_trace_column.py`` writes it there, the project's writer too; lerobot keeps
per-feature info through its dataset edits), else a top-level ``coordinate_space`` in info.json, else the
caller's ``trace_convention`` (CLI ``--trace-convention``). The project's own ``window`` layout with a presence
column and no statement is read as ``unit`` (datasets written before the convention was recorded), as long as
its values lie in [0, 1]. A missing convention, one that contradicts the metadata, or values outside the
convention's range raise ``ValueError`` naming the column and the option - only when traces are read
(``TraceColumns``); ``LeRobotV3Dataset`` reads every other column (state, action, task, images) regardless.

Image size (``percent`` and ``pixel``): of the camera named in the trace column's ``info.camera``, else of the
given ``camera`` (the pipelines' agent view, CLI ``--image-key``), else of the dataset's only camera size, from
the video/image feature in ``info.json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from semanticvla_core.camera import pixels_to_normalized
from semanticvla_core.data.cameras import camera_keys, image_shape
from semanticvla_core.traces import DEFAULT_WINDOW, trace_windows

TRACE_X = "trace.x"
TRACE_Y = "trace.y"
TRACE_PRESENT = "trace.present"
TRACE_XY = "observation.trace.xy"
TRACE_KEYS = (TRACE_X, TRACE_Y, TRACE_PRESENT)
TRACE_CONVENTIONS = ("unit", "percent", "pixel")
UNIT_SPACE = "normalized_image_xy_0_1"
COORDINATE_SPACES = {UNIT_SPACE: "unit", "normalized_image_xy_0_100": "percent", "image_xy_pixels": "pixel",
                     "unit": "unit", "percent": "percent", "pixel": "pixel"}
OPTION = "trace_convention= (CLI: --trace-convention {unit,percent,pixel})"
_TOL = 1e-4   # of the convention's scale: values this far outside its range still count as inside


# ---------------------------------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class TraceLayout:
    kind: str                      # "window" | "point" | "pair"
    columns: tuple[str, ...]       # (trace.x, trace.y) or (observation.trace.xy,)
    present: str | None            # per-frame presence column, or None (presence per episode)
    window: int | None = None      # anchors stored per frame ("window" only)

    @property
    def name(self) -> str:
        return " / ".join(self.columns)


def _size(ft: dict) -> int:
    return int(np.prod([int(s) for s in ft.get("shape", [1])]))


def find_trace_layout(features: dict) -> TraceLayout | None:
    """The dataset's trace layout (module docstring), or None when it has no trace columns."""
    present = TRACE_PRESENT if TRACE_PRESENT in features else None
    if TRACE_X in features and TRACE_Y in features:
        wx, wy = _size(features[TRACE_X]), _size(features[TRACE_Y])
        if wx != wy:
            raise ValueError(f"trace.x has {wx} values per frame but trace.y has {wy}")
        if wx == 1:
            return TraceLayout("point", (TRACE_X, TRACE_Y), present)
        return TraceLayout("window", (TRACE_X, TRACE_Y), present, wx)
    if TRACE_XY in features:
        if _size(features[TRACE_XY]) != 2:
            raise ValueError(f"{TRACE_XY} has {_size(features[TRACE_XY])} values per frame, expected 2 (x, y)")
        return TraceLayout("pair", (TRACE_XY,), present)
    return None


def has_traces(features: dict) -> bool:
    """Whether a dataset's ``features`` (``info.json``) hold trace columns in one of the layouts."""
    try:
        return find_trace_layout(features) is not None
    except ValueError:
        return False


def tracex_features(window: int = DEFAULT_WINDOW, camera: str | None = None) -> dict:
    """LeRobot feature specs of the three TraceX columns as the project writes them: [0, 1] coordinates
    (``info.coordinate_space``) in the image of ``camera`` (``info.camera``, when given)."""
    info = {"coordinate_space": UNIT_SPACE, **({"camera": camera} if camera else {})}
    return {TRACE_X: {"dtype": "float32", "shape": [int(window)], "names": None, "info": dict(info)},
            TRACE_Y: {"dtype": "float32", "shape": [int(window)], "names": None, "info": dict(info)},
            TRACE_PRESENT: {"dtype": "bool", "shape": [1], "names": None}}


def trace_window_size(features: dict) -> int:
    """Points per window the dataset's traces come in (stored anchors, or ``DEFAULT_WINDOW`` frames)."""
    layout = find_trace_layout(features)
    if layout is None:
        raise ValueError(f"dataset has no trace columns ({TRACE_X} / {TRACE_Y}, or {TRACE_XY})")
    return layout.window or DEFAULT_WINDOW


# ---------------------------------------------------------------------------------------------------- conventions
def _stated(features: dict, info: dict, layout: TraceLayout) -> tuple[str | None, str]:
    """(coordinate_space value, where it is written) from the metadata, or (None, "")."""
    for col in layout.columns:
        val = (features[col].get("info") or {}).get("coordinate_space")
        if val is not None:
            return str(val), f"meta/info.json features[{col!r}].info.coordinate_space = {val!r}"
    if info.get("coordinate_space") is not None:
        return str(info["coordinate_space"]), f"meta/info.json coordinate_space = {info['coordinate_space']!r}"
    return None, ""


def resolve_convention(info: dict, layout: TraceLayout, trace_convention: str | None = None,
                       root=None) -> tuple[str, str]:
    """(convention, how it was decided - for messages) of the trace columns (module docstring)."""
    where = f"{root}: " if root is not None else ""
    if trace_convention is not None and trace_convention not in TRACE_CONVENTIONS:
        raise ValueError(f"trace_convention must be one of {list(TRACE_CONVENTIONS)}, got {trace_convention!r}")
    val, src = _stated(info["features"], info, layout)
    if val is not None and val in COORDINATE_SPACES:
        conv = COORDINATE_SPACES[val]
        if trace_convention is not None and trace_convention != conv:
            raise ValueError(f"{where}{layout.name}: the dataset states its convention ({src}: {conv}) but "
                             f"trace_convention={trace_convention!r} was given (--trace-convention); leave the "
                             "option out for this dataset")
        return conv, src
    if trace_convention is not None:
        return trace_convention, f"trace_convention={trace_convention!r} (--trace-convention)"
    if val is not None:
        raise ValueError(f"{where}{layout.name}: unknown coordinate convention ({src}; known: "
                         f"{sorted(COORDINATE_SPACES)}): pass {OPTION}")
    if layout.kind == "window" and layout.present is not None:
        return "unit", "assumed: the dataset states no convention"
    raise ValueError(f"{where}{layout.name} ({_describe(layout)}): meta/info.json states no coordinate convention "
                     f"(features[{layout.columns[0]!r}].info.coordinate_space): pass {OPTION}")


def _describe(layout: TraceLayout) -> str:
    return {"window": f"{layout.window} points per frame", "point": "one point per frame",
            "pair": "one (x, y) pair per frame"}[layout.kind]


def trace_image_size(features: dict, layout: TraceLayout, camera: str | None = None, root=None
                     ) -> tuple[int, int]:
    """(width, height) of the image the traces are drawn in (module docstring)."""
    where = f"{root}: " if root is not None else ""
    cams = camera_keys(features)
    named = next(((features[c].get("info") or {}).get("camera") for c in layout.columns
                  if (features[c].get("info") or {}).get("camera")), None)
    for key, how in ((named, f"features[{layout.columns[0]!r}].info.camera"), (camera, "--image-key")):
        if key is not None:
            if key not in cams:
                raise ValueError(f"{where}{layout.name}: the traces' camera {key!r} ({how}) is not in the dataset "
                                 f"(camera keys: {cams})")
            h, w, _ = image_shape(features[key])
            return w, h
    sizes = {image_shape(features[k])[:2] for k in cams}
    if len(sizes) == 1:
        h, w = sizes.pop()
        return w, h
    raise ValueError(f"{where}{layout.name}: percent/pixel coordinates need the size of the traces' camera image; "
                     f"the dataset has cameras {cams} of different sizes: name the camera (--image-key)")


def convention_range(convention: str, image_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) (x, y) of valid raw values of a convention."""
    if convention == "unit":
        return np.zeros(2), np.ones(2)
    if convention == "percent":
        return np.zeros(2), np.full(2, 100.0)
    w, h = image_size
    return np.full(2, -0.5), np.array([w - 0.5, h - 0.5])


def normalize_trace(xy: np.ndarray, convention: str, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Raw (..., 2) trace coordinates in ``convention`` -> normalized (..., 2) float32 in the project's [0, 1]
    convention (``camera.py``). ``image_size`` = (width, height) for ``percent`` and ``pixel``. The one
    conversion of trace coordinates in the project."""
    xy = np.asarray(xy, np.float64)
    if convention == "unit":
        return xy.astype(np.float32)
    if convention not in TRACE_CONVENTIONS:
        raise ValueError(f"trace convention must be one of {list(TRACE_CONVENTIONS)}, got {convention!r}")
    if image_size is None:
        raise ValueError(f"{convention} trace coordinates need the image size")
    w, h = (int(s) for s in image_size)
    if convention == "percent":                       # the authors' mapping to pixels: value / 100 * (size - 1)
        xy = xy / 100.0 * np.array([w - 1, h - 1], np.float64)
    return pixels_to_normalized(xy, w, h).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- reading
def _fill(points: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Points where ``ok`` is False take the nearest earlier usable point (else the next one, else the centre)."""
    if ok.all():
        return points
    out = points.copy()
    idx = np.nonzero(ok)[0]
    if idx.size == 0:
        out[:] = 0.5
        return out
    prev = np.maximum.accumulate(np.where(ok, np.arange(len(ok)), -1))
    src = np.where(prev >= 0, prev, idx[0])
    return out[src]


class TraceColumns:
    """The traces of a ``LeRobotV3Dataset`` as normalized windows, per episode (cached).

    ``episode(e)`` -> ((T, W, 2) float32 in [0, 1], (T,) bool present); W = the stored anchors (``window``
    layout) or ``window`` frames (``point`` / ``pair``). Construction resolves layout, convention and image
    size (``ValueError`` naming the column and the option when that fails); values are checked against the
    convention's range per episode, when it is first read.
    """

    def __init__(self, ds, trace_convention: str | None = None, camera: str | None = None,
                 window: int = DEFAULT_WINDOW):
        self.ds = ds
        info = ds.meta.info
        self.layout = find_trace_layout(ds.features)
        if self.layout is None:
            raise ValueError(f"{ds.root}: no trace columns ({TRACE_X} / {TRACE_Y}, or {TRACE_XY}); run "
                             "training/annotate_traces.py first")
        self.convention, self.source = resolve_convention(info, self.layout, trace_convention, ds.root)
        self.image_size = None if self.convention == "unit" else \
            trace_image_size(ds.features, self.layout, camera, ds.root)
        self.window = int(self.layout.window or window)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _raw(self, e: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(T, K, 2) float64 raw coordinates (K = stored anchors or 1) and the (T,) presence column (or None)."""
        lay = self.layout
        keys = list(lay.columns) + ([lay.present] if lay.present else [])
        cols = self.ds.get_columns(e, keys)
        T = self.ds.episode_length(e)
        if lay.kind == "pair":
            xy = np.asarray(cols[TRACE_XY], np.float64).reshape(T, 1, 2)
        else:
            xy = np.stack([np.asarray(cols[TRACE_X], np.float64).reshape(T, -1),
                           np.asarray(cols[TRACE_Y], np.float64).reshape(T, -1)], -1)
        pres = np.asarray(cols[lay.present]).reshape(T, -1)[:, 0].astype(bool) if lay.present else None
        return xy, pres

    def _check(self, e: int, xy: np.ndarray, rows: np.ndarray) -> None:
        """``ValueError`` naming file, episode, frame, column and the option when a value of a ``rows`` frame is
        non-finite or outside the convention's range."""
        lo, hi = convention_range(self.convention, self.image_size)
        tol = _TOL * (hi - lo)
        bad = ~np.all(np.isfinite(xy) & (xy >= lo - tol) & (xy <= hi + tol), axis=1) & rows[:, None]   # (T, 2)
        if not bad.any():
            return
        f, k = (int(v) for v in np.argwhere(bad)[0])
        col = self.layout.columns[k] if self.layout.kind != "pair" else TRACE_XY
        vals = xy[f, :, k] if self.layout.kind != "pair" else xy[f, 0]
        ep = self.ds.meta.episodes[e]
        path = self.ds.data_path(int(ep["data/chunk_index"]), int(ep["data/file_index"]))
        if self.source.startswith("assumed"):
            fix = (f"the dataset states no coordinate convention and [0, 1] was assumed: pass {OPTION} "
                   "(percent: 0-100, pixel: pixels of the camera image)")
        else:
            fix = f"wrong convention? ({self.source}); {OPTION} names it for datasets that do not state it"
        raise ValueError(f"{path}: episode {e}, frame {f}: {col} values outside [{lo[k]:g}, {hi[k]:g}] "
                         f"({self.convention}): {np.round(vals, 4).tolist()} ({int(bad.any(1).sum())} such "
                         f"frame(s)); {fix}")

    def episode(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        hit = self._cache.get(e)
        if hit is not None:
            return hit
        xy, pres = self._raw(e)
        T = len(xy)
        finite = np.all(np.isfinite(xy), axis=(1, 2))
        if pres is None:                                  # presence per episode
            pres = np.full(T, bool(finite.all()))
        self._check(e, xy, pres)
        uv = normalize_trace(np.where(np.isfinite(xy), xy, 0.0), self.convention, self.image_size)
        uv = np.clip(uv, 0.0, 1.0)
        if self.layout.kind == "window":
            win = np.where(pres[:, None, None], uv, np.where(finite[:, None, None], uv, 0.5)).astype(np.float32)
            ok = pres
        else:
            pts = _fill(uv[:, 0], pres)
            win, ok = trace_windows(pts, pres, self.window)
        out = (np.ascontiguousarray(win, np.float32), np.asarray(ok, bool))
        self._cache[e] = out
        return out


# ---------------------------------------------------------------------------------------------------- accessors
def frame_trace(frame: dict) -> tuple[np.ndarray, bool]:
    """One frame dict (from ``LeRobotV3Dataset``) of the project's ``window`` layout in [0, 1] -> ((W, 2) float32
    window, present). Raw stored values: other layouts and conventions go through ``TraceColumns``."""
    try:
        x, y, p = frame[TRACE_X], frame[TRACE_Y], frame[TRACE_PRESENT]
    except KeyError as e:
        raise ValueError(f"frame has no TraceX column {e}") from None
    win = np.stack([np.asarray(x, np.float32).reshape(-1), np.asarray(y, np.float32).reshape(-1)], axis=-1)
    return win, bool(np.asarray(p).reshape(-1)[0])


def episode_traces(ds, episode: int, trace_convention: str | None = None, camera: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """All windows of one episode of a ``LeRobotV3Dataset``, normalized: ((T, W, 2) float32, (T,) bool)."""
    return TraceColumns(ds, trace_convention, camera).episode(episode)


def iter_traces(ds, trace_convention: str | None = None, camera: str | None = None
                ) -> Iterator[tuple[int, int, np.ndarray, bool]]:
    """Yield (episode, frame index, (W, 2) window, present) over the whole dataset (no video decoding)."""
    tc = TraceColumns(ds, trace_convention, camera)
    for e in range(ds.num_episodes):
        win, pres = tc.episode(e)
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
