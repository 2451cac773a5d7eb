"""Trace annotation: add the TraceX columns (``trace.x``, ``trace.y``, ``trace.present``) to a dataset.

Two methods give a per-frame end-effector track (T, 2) in normalized image coordinates; dense per-frame
windows then come from ``traces.trace_windows`` (``tracex.track_to_columns``):

* ``projection``: calibrated projection of end-effector positions (a state column, world frame) through the
  camera (``PinholeCamera`` from the dataset's calibration - ``cameras.py`` - or a given JSON). Exact in
  simulation.
* ``track``: keyframes (gripper open/close events + velocity minima) with the end-effector located on the
  keyframes (a JSON of points a person or a pointing model produced, or projection *at keyframes only*),
  and a ``PointTracker`` (LK or CoTracker) between them.

Resumable: each finished episode's track is saved under ``<root>/meta/annotation/tracks/`` and listed in
``<root>/meta/annotation/progress.json`` (with the config it was made with); a rerun with ``resume=True``
continues after the last finished episode. The columns are written into the dataset (atomically per file,
``lerobot_v3.add_columns``) once every episode is done. Overlays (PNG contact sheet + MP4 per sampled
episode) go to ``<root>/meta/annotation/overlays/`` unless ``overlay_dir`` is given.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from semanticvla_core.camera import PinholeCamera, normalized_to_pixels, pixels_to_normalized
from semanticvla_core.data.cameras import DEFAULT_IMAGE_KEY, check_camera_key
from semanticvla_core.data.lerobot_v3 import LeRobotV3Dataset, add_columns
from semanticvla_core.data.trackers import detect_keyframes, make_tracker, track_between_keyframes
from semanticvla_core.data.tracex import TRACE_PRESENT, TRACE_X, TRACE_Y, track_to_columns, tracex_features
from semanticvla_core.data.viz import contact_sheet, overlay_frames, write_mp4, write_png
from semanticvla_core.traces import DEFAULT_WINDOW


@dataclass
class AnnotateConfig:
    """Options of ``annotate_dataset`` (CLI: ``training/annotate_traces.py``)."""

    method: str = "projection"                  # "projection" | "track"
    camera: str = DEFAULT_IMAGE_KEY             # video key whose image plane the trace lives in (--image-key)
    camera_json: str | None = None              # PinholeCamera.to_dict() JSON; default: the dataset's calibration
    window: int = DEFAULT_WINDOW                # W anchors per frame
    ee_key: str = "observation.ee_pos"          # column holding the end-effector position (world frame)
    ee_slice: tuple[int, int] = (0, 3)          # xyz = column[..., a:b]
    gripper_key: str = "action"                 # column with the gripper command (0 open, 1 closed)
    gripper_index: int = 6
    tracker: str = "lk"                         # "lk" | "cotracker" | "identity"
    cotracker_checkpoint: str | None = None
    cotracker_repo: str | None = None
    keyframe_points: str | None = None          # JSON {"<episode>": {"<frame>": [u, v]}}; default: projection
    keyframe_every: int | None = None           # also a keyframe every N frames (bounds tracker drift)
    overlay_episodes: int = 2                   # overlays for this many evenly spaced episodes
    overlay_dir: str | None = None
    resume: bool = True
    max_episodes: int | None = None             # stop after annotating this many episodes in this run
    show_progress: bool = True

    def fingerprint(self) -> dict:
        """The settings that change the labels (a resume with different ones starts over)."""
        d = asdict(self)
        for k in ("overlay_episodes", "overlay_dir", "resume", "max_episodes", "show_progress"):
            d.pop(k)
        d["ee_slice"] = list(d["ee_slice"])
        return d


@dataclass
class AnnotateReport:
    annotated: list[int] = field(default_factory=list)   # episodes annotated in this run
    resumed_from: int = 0                                 # episodes already done before this run
    complete: bool = False                                # columns written into the dataset
    overlays: list[str] = field(default_factory=list)
    visible_fraction: float = 0.0


def _work_dir(root: Path) -> Path:
    return root / "meta" / "annotation"


def _load_camera(ds: LeRobotV3Dataset, cfg: AnnotateConfig) -> PinholeCamera:
    if cfg.camera_json:
        p = Path(cfg.camera_json)
        if not p.is_file():
            raise ValueError(f"{p}: camera JSON not found")
        d = json.loads(p.read_text())
        return PinholeCamera.from_dict(d.get(cfg.camera, d) if "fx" not in d else d)
    return ds.camera(cfg.camera)


def _ee_positions(ds: LeRobotV3Dataset, e: int, cfg: AnnotateConfig) -> np.ndarray:
    if cfg.ee_key not in ds.features:
        raise ValueError(f"{ds.root}: no column {cfg.ee_key!r} with end-effector positions "
                         f"(columns: {list(ds.data_keys)}); set ee_key/ee_slice")
    col = np.asarray(ds.get_columns(e, [cfg.ee_key])[cfg.ee_key], np.float64)
    col = col.reshape(len(col), -1)
    a, b = cfg.ee_slice
    if b > col.shape[1] or b - a != 3:
        raise ValueError(f"{cfg.ee_key}: slice {a}:{b} does not select xyz from {col.shape[1]} values")
    return col[:, a:b]


def project_episode(ds: LeRobotV3Dataset, e: int, cam: PinholeCamera, cfg: AnnotateConfig
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Method (a): (T, 2) normalized uv of the end-effector and (T,) visible (in front, inside the image)."""
    uv, vis = cam.project_normalized(_ee_positions(ds, e, cfg))
    return uv.astype(np.float32), vis


def _episode_frames(ds: LeRobotV3Dataset, e: int, key: str) -> np.ndarray:
    return np.stack([ds.get_video_frame(key, e, i) for i in range(ds.episode_length(e))])


def track_episode(ds: LeRobotV3Dataset, e: int, cfg: AnnotateConfig, tracker, cam: PinholeCamera | None,
                  points: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """Method (b): keyframes + point tracking. Returns (T, 2) normalized uv and (T,) visible."""
    frames = _episode_frames(ds, e, cfg.camera)
    T, H, W = frames.shape[:3]
    grip = None
    if cfg.gripper_key in ds.features:
        g = np.asarray(ds.get_columns(e, [cfg.gripper_key])[cfg.gripper_key], np.float64).reshape(T, -1)
        grip = g[:, cfg.gripper_index] if g.shape[1] > cfg.gripper_index else None
    pos = _ee_positions(ds, e, cfg) if cfg.ee_key in ds.features else None
    keys = detect_keyframes(grip, pos, length=T)
    if cfg.keyframe_every:
        keys = np.unique(np.concatenate([keys, np.arange(0, T, int(cfg.keyframe_every))]))
    if points is not None:
        ep_pts = points.get(str(e), {})
        known = {int(k): normalized_to_pixels(np.asarray(v, np.float64), W, H) for k, v in ep_pts.items()}
        if not known:
            raise ValueError(f"{cfg.keyframe_points}: no keyframe points for episode {e}")
        keys = np.unique(np.concatenate([keys, np.array(sorted(known), np.int64)]))
    else:
        if cam is None or pos is None:
            raise ValueError("method 'track' needs keyframe points: a --keyframe-points JSON, or a camera and "
                             f"the {cfg.ee_key!r} column to locate the end-effector on keyframes")
        uv, vis = cam.project_normalized(pos[keys])
        known = {int(k): normalized_to_pixels(uv[j], W, H) for j, k in enumerate(keys) if vis[j]}
        if not known:
            return np.full((T, 2), 0.5, np.float32), np.zeros(T, bool)
    px, visible = track_between_keyframes(tracker, frames, keys, known)
    return pixels_to_normalized(px, W, H).astype(np.float32), visible


def annotate_dataset(root, cfg: AnnotateConfig | None = None) -> AnnotateReport:
    """Annotate every episode of the dataset at ``root`` with TraceX columns (see the module docstring)."""
    cfg = cfg or AnnotateConfig()
    if cfg.method not in ("projection", "track"):
        raise ValueError(f"method must be 'projection' or 'track', got {cfg.method!r}")
    root = Path(root)
    ds = LeRobotV3Dataset(root, nan_policy="skip", check=False)
    if cfg.method == "track":
        check_camera_key(ds.features, cfg.camera, "--image-key", root)
    work = _work_dir(root)
    tracks_dir = work / "tracks"
    prog_path = work / "progress.json"
    progress = json.loads(prog_path.read_text()) if prog_path.is_file() else None
    if not cfg.resume or progress is None or progress.get("config") != cfg.fingerprint():
        shutil.rmtree(tracks_dir, ignore_errors=True)
        progress = {"config": cfg.fingerprint(), "done": [], "complete": False}
    tracks_dir.mkdir(parents=True, exist_ok=True)
    done = set(int(e) for e in progress["done"] if (tracks_dir / f"episode_{int(e):06d}.npz").is_file())
    report = AnnotateReport(resumed_from=len(done))

    cam = None
    if cfg.method == "projection" or cfg.keyframe_points is None:
        cam = _load_camera(ds, cfg)
    tracker = make_tracker(cfg.tracker, cfg.cotracker_checkpoint, cfg.cotracker_repo) if cfg.method == "track" else None
    points = None
    if cfg.keyframe_points:
        p = Path(cfg.keyframe_points)
        if not p.is_file():
            raise ValueError(f"{p}: keyframe points JSON not found")
        points = json.loads(p.read_text())

    todo = [e for e in range(ds.num_episodes) if e not in done]
    if cfg.max_episodes is not None:
        todo = todo[:cfg.max_episodes]
    for e in tqdm(todo, desc=f"annotate ({cfg.method})", disable=not cfg.show_progress, unit="ep"):
        if cfg.method == "projection":
            uv, vis = project_episode(ds, e, cam, cfg)
        else:
            uv, vis = track_episode(ds, e, cfg, tracker, cam, points)
        tmp = tracks_dir / f".episode_{e:06d}.tmp.npz"
        np.savez(tmp, uv=uv, visible=vis)
        os.replace(tmp, tracks_dir / f"episode_{e:06d}.npz")
        done.add(e)
        progress["done"] = sorted(done)
        _write_json(prog_path, progress)
        report.annotated.append(e)

    if len(done) < ds.num_episodes:
        return report  # stopped early (max_episodes); a rerun with resume continues
    total = ds.num_frames
    cols = {TRACE_X: np.zeros((total, cfg.window), np.float32), TRACE_Y: np.zeros((total, cfg.window), np.float32),
            TRACE_PRESENT: np.zeros(total, bool)}
    vis_count = 0
    per_ep = {}
    for e in range(ds.num_episodes):
        with np.load(tracks_dir / f"episode_{e:06d}.npz", allow_pickle=False) as z:
            uv, vis = z["uv"], z["visible"]
        c = track_to_columns(uv, vis, cfg.window)
        r = ds.episode(e)
        for k in cols:
            cols[k][r.start:r.stop] = c[k]
        vis_count += int(c[TRACE_PRESENT].sum())
        per_ep[e] = c
    add_columns(root, tracex_features(cfg.window, cfg.camera), cols)
    progress["complete"] = True
    _write_json(prog_path, progress)
    report.complete = True
    report.visible_fraction = vis_count / max(total, 1)
    if cfg.overlay_episodes > 0 and cfg.camera in ds.video_keys:
        out_dir = Path(cfg.overlay_dir) if cfg.overlay_dir else work / "overlays"
        sel = np.unique(np.linspace(0, ds.num_episodes - 1, min(cfg.overlay_episodes, ds.num_episodes)).astype(int))
        for e in sel:
            report.overlays += [str(p) for p in write_episode_overlay(ds, int(e), per_ep[int(e)], cfg.camera, out_dir)]
    return report


def write_episode_overlay(ds: LeRobotV3Dataset, e: int, columns: dict, camera: str, out_dir: Path,
                          sheet_frames: int = 8) -> list[Path]:
    """Overlay the episode's trace windows on its frames: ``episode_XXXXXX.mp4`` and a PNG contact sheet."""
    frames = _episode_frames(ds, e, camera)
    win = np.stack([columns[TRACE_X], columns[TRACE_Y]], -1)
    over = overlay_frames(frames, win, columns[TRACE_PRESENT])
    mp4 = write_mp4(Path(out_dir) / f"episode_{e:06d}.mp4", over, fps=ds.fps)
    pick = np.unique(np.linspace(0, len(over) - 1, min(sheet_frames, len(over))).astype(int))
    png = write_png(Path(out_dir) / f"episode_{e:06d}.png", contact_sheet([over[i] for i in pick]))
    return [png, mp4]


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
