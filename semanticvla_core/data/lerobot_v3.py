"""LeRobot v3.0 datasets on disk: a writer and a random-access reader (pyarrow + PyAV, no ``lerobot``).

Layout (as the official library writes it; see ``shared/notes/lerobot-v3-format.md``)::

    <root>/meta/info.json                              codebase_version "v3.0", features, fps, chunking
    <root>/meta/stats.json                             {feature: {stat: nested lists}}
    <root>/meta/tasks.parquet                          task_index + task string (column ``task`` or
                                                       ``__index_level_0__`` in lerobot 0.4.4)
    <root>/meta/episodes/chunk-XXX/file-YYY.parquet    one row per episode (+ ``stats/<feature>/<stat>``)
    <root>/data/chunk-XXX/file-YYY.parquet             frames of many episodes, one row group per episode
    <root>/videos/<key>/chunk-XXX/file-YYY.mp4         per camera, episodes back to back
    <root>/meta/cameras.json                           (ours, optional) {camera_key: PinholeCamera.to_dict()}:
                                                       a mirror of the calibration kept in each camera feature's
                                                       ``info`` (``cameras.py``), read for older datasets

Writer: frames are buffered per episode, ``save_episode`` appends the episode's rows to the current data
file (one row group) and encodes its video frames into the current mp4 of every camera, starting the
episode on a forced keyframe. Files roll over (``file-001``..., then ``chunk-001``) once they exceed the
size limits, which are parameters. Everything is written into a hidden sibling directory
``.<name>.incomplete`` and renamed to ``<root>`` by ``finalize()``: an interrupted writer never leaves a
directory that looks like a dataset.

Reader: ``LeRobotV3Dataset(root)[i]`` -> dict of one frame: non-video features as numpy arrays (shape-[1]
features as 0-d arrays, like lerobot), video features decoded as uint8 HxWx3 (AV1 or H.264), plus
``task`` (str). Random access seeks to the keyframe before the wanted time and decodes forward; a small
per-file decoder cache makes sequential reads cheap.

Bad input raises ``ValueError`` naming the file, episode and frame (corrupt/truncated Parquet, missing video
file, mismatched episode lengths). Trace columns are returned as stored, in whatever layout and coordinate
convention the dataset has: ``tracex.TraceColumns`` reads them as [0, 1] windows and checks them (the writer
refuses traces outside [0, 1]), so a dataset with pixel traces still reads its other columns. Camera
calibration (``cameras.py``) travels in the camera features' ``info`` in ``meta/info.json``, where lerobot's
dataset tools keep it. Non-finite actions follow ``nan_policy``:
``"error"`` raises, ``"skip"`` drops those frames (writer) or leaves them out of the sample index (reader)
and warns with a count.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..scheduling import normal_scheduling
from .cameras import add_calibration, calibration_dict, image_shape, load_calibration
import pyarrow as pa
import pyarrow.parquet as pq

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNKS_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_MB = 100
DEFAULT_VIDEO_FILE_SIZE_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
STAT_NAMES = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")
_QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
TRACE_FEATURES = ("trace.x", "trace.y")
UNIT_COORDINATES = "normalized_image_xy_0_1"   # tracex.UNIT_SPACE: what the writer stores in trace features
NAN_POLICIES = ("error", "skip")
_VIDEO_CODECS = {"h264": "libx264", "av1": "libsvtav1"}
_NUMERIC = {"float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
            "uint64", "bool"}


# ---------------------------------------------------------------------------------------------------- helpers
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(Path(path), json.dumps(obj, indent=4).encode("utf-8"))


def _arrow_type(ft: dict) -> pa.DataType:
    dtype, shape = ft["dtype"], list(ft["shape"])
    base = pa.string() if dtype == "string" else pa.from_numpy_dtype(np.dtype(dtype))
    if shape == [1]:
        return base
    t = base
    for n in reversed(shape):
        t = pa.list_(t, int(n))
    return t


def _hf_feature(ft: dict) -> dict:
    dtype, shape = ft["dtype"], list(ft["shape"])
    value = {"dtype": dtype, "_type": "Value"}
    if shape == [1]:
        return value
    if len(shape) == 1:
        return {"feature": value, "length": int(shape[0]), "_type": "Sequence"}
    return {"shape": shape, "dtype": dtype, "_type": f"Array{len(shape)}D"}


def is_video_feature(ft: dict) -> bool:
    return ft.get("dtype") in ("video", "image")


def _chunk_file_next(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    file += 1
    if file >= chunks_size:
        return chunk + 1, 0
    return chunk, file


def _frame_stats(x: np.ndarray) -> dict:
    """Stats over axis 0 of (n, ...) values -> {stat: list}. Bool/int are treated as float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0),
           "count": np.array([x.shape[0]])}
    qs = np.quantile(x, list(_QUANTILES.values()), axis=0)
    for k, q in zip(_QUANTILES, qs):
        out[k] = q
    return {k: v.tolist() for k, v in out.items()}


def _image_stats(frames: list[np.ndarray]) -> dict:
    """Per-channel stats in [0, 1] of (H, W, 3) uint8 frames, shaped (3, 1, 1) like lerobot."""
    px = np.concatenate([f[::4, ::4].reshape(-1, f.shape[-1]) for f in frames]).astype(np.float64) / 255.0
    s = _frame_stats(px)
    out = {}
    for k, v in s.items():
        if k == "count":
            out[k] = [len(frames)]
        else:
            out[k] = [[[float(c)]] for c in v]
    return out


def aggregate_stats(per_episode: list[dict]) -> dict:
    """Combine per-episode ``{feature: {stat: list}}`` into dataset stats (quantiles: count-weighted mean of
    the per-episode quantiles, the same approximation lerobot uses)."""
    feats: dict[str, list[dict]] = {}
    for ep in per_episode:
        for k, v in ep.items():
            feats.setdefault(k, []).append(v)
    out = {}
    for k, lst in feats.items():
        n = np.array([float(np.asarray(s["count"]).reshape(-1)[0]) for s in lst])
        w = (n / n.sum()).reshape((-1,) + (1,) * np.asarray(lst[0]["mean"]).ndim)
        means = np.stack([np.asarray(s["mean"], dtype=np.float64) for s in lst])
        stds = np.stack([np.asarray(s["std"], dtype=np.float64) for s in lst])
        mean = (w * means).sum(0)
        var = (w * (stds ** 2 + (means - mean) ** 2)).sum(0)
        agg = {"min": np.min(np.stack([np.asarray(s["min"], dtype=np.float64) for s in lst]), 0),
               "max": np.max(np.stack([np.asarray(s["max"], dtype=np.float64) for s in lst]), 0),
               "mean": mean, "std": np.sqrt(np.maximum(var, 0.0)), "count": np.array([int(n.sum())])}
        for q in _QUANTILES:
            if all(q in s for s in lst):
                agg[q] = (w * np.stack([np.asarray(s[q], dtype=np.float64) for s in lst])).sum(0)
        out[k] = {s: v.tolist() for s, v in agg.items()}
    return out


# ---------------------------------------------------------------------------------------------------- writer
class _VideoFileWriter:
    """One mp4 of one camera; episodes are appended, each starting on a forced keyframe."""

    def __init__(self, path: Path, fps: int, width: int, height: int, codec: str, crf: int | None, gop: int):
        import av
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner to stderr otherwise
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        enc = _VIDEO_CODECS[codec]
        self.stream = self.container.add_stream(enc, rate=fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.time_base = Fraction(1, fps)
        opts = {"g": str(gop), "crf": str(crf if crf is not None else (23 if codec == "h264" else 30))}
        if codec == "h264":
            opts.update({"preset": "veryfast", "forced-idr": "1", "bf": "0"})
            self.stream.codec_context.max_b_frames = 0
        else:
            opts.update({"preset": "10"})
        self.stream.codec_context.options = opts
        self.frames = 0
        self.bytes = 0

    def add_episode(self, frames: list[np.ndarray]) -> None:
        import av
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts = self.frames
            if i == 0:
                f.pict_type = av.video.frame.PictureType.I
            for p in self.stream.encode(f):
                self.bytes += p.size
                self.container.mux(p)
            self.frames += 1
        normal_scheduling()   # SVT-AV1 raises its caller to SCHED_FIFO 99 (see semanticvla_core.scheduling)

    def close(self) -> None:
        for p in self.stream.encode(None):
            self.bytes += p.size
            self.container.mux(p)
        self.container.close()
        normal_scheduling()


class LeRobotV3Writer:
    """Write a LeRobot v3.0 dataset.

    ``features``: ``{name: {"dtype": "float32"|"int64"|"bool"|...|"video", "shape": [...], "names": [...]|None}}``
    in the order the columns should appear. Video features take uint8 (H, W, 3) frames (H, W even).
    The automatic ``timestamp``/``frame_index``/``episode_index``/``index``/``task_index`` are added.
    ``nan_policy`` applies to the float features named in ``nan_keys`` (default ``("action",)``):
    ``"error"`` raises on a non-finite value, ``"skip"`` drops the frame and counts it (warning at
    ``save_episode``; total in ``skipped_frames``). Traces (``trace.x``/``trace.y``) outside [0, 1] in a frame
    whose ``trace.present`` is true raise; their features record that convention (``info.coordinate_space``
    = ``normalized_image_xy_0_1``). A non-video feature may carry an ``info`` dict (kept in ``info.json``).
    ``cameras`` ({camera_key: PinholeCamera or its dict}) is written into each camera feature's ``info``
    (``cameras.CALIBRATION_KEY``) and mirrored to ``meta/cameras.json``. The size limits (MB) and
    ``chunks_size`` control file roll-over.
    """

    def __init__(self, root, fps: int = 20, features: dict | None = None, robot_type: str = "panda",
                 video_codec: str = "h264", *, chunks_size: int = DEFAULT_CHUNKS_SIZE,
                 data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_MB,
                 video_files_size_in_mb: float = DEFAULT_VIDEO_FILE_SIZE_MB, nan_policy: str = "error",
                 nan_keys: Iterable[str] = ("action",), crf: int | None = None, gop: int = 2,
                 cameras: dict | None = None, overwrite: bool = False):
        self.root = Path(root)
        if not features:
            raise ValueError("LeRobotV3Writer: features must be a non-empty dict")
        if video_codec not in _VIDEO_CODECS:
            raise ValueError(f"video_codec must be one of {list(_VIDEO_CODECS)}, got {video_codec!r}")
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        if self.root.exists() and not overwrite:
            raise ValueError(f"{self.root} already exists (pass overwrite=True to replace it at finalize)")
        self.fps, self.robot_type, self.video_codec = int(fps), robot_type, video_codec
        self.chunks_size = int(chunks_size)
        self.data_limit = float(data_files_size_in_mb) * 1024 * 1024
        self.video_limit = float(video_files_size_in_mb) * 1024 * 1024
        self.nan_policy, self.nan_keys = nan_policy, tuple(nan_keys)
        self.crf, self.gop, self.overwrite = crf, int(gop), overwrite
        self.features: dict[str, dict] = {}
        for name, ft in features.items():
            self.features[name] = self._check_feature(name, ft)
        for name in DEFAULT_FEATURES:
            if name in self.features:
                raise ValueError(f"feature {name!r} is added automatically; do not declare it")
        self.video_keys = [k for k, ft in self.features.items() if is_video_feature(ft)]
        self.data_keys = [k for k, ft in self.features.items() if not is_video_feature(ft)]
        self.cameras = {k: calibration_dict(v) for k, v in (cameras or {}).items()}

        self.tmp = self.root.parent / f".{self.root.name}.incomplete"
        if self.tmp.exists():  # left by an interrupted writer of the same dataset
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)

        self.tasks: dict[str, int] = {}
        self.episodes: list[dict] = []
        self.episode_stats: list[dict] = []
        self.total_frames = 0
        self.skipped_frames = 0
        self._buf: dict[str, list] = {}
        self._ep_skipped = 0
        self._data_pos = (0, 0)
        self._data_writer: pq.ParquetWriter | None = None
        self._data_bytes = 0
        self._data_first_episode = True
        self._video_pos = {k: (0, 0) for k in self.video_keys}
        self._video_writers: dict[str, _VideoFileWriter] = {}
        self._finalized = False
        self._reset_buffer()

    # ---------------------------------------------------------------- validation
    @staticmethod
    def _check_feature(name: str, ft: dict) -> dict:
        if "/" in name:
            raise ValueError(f"feature name {name!r} may not contain '/'")
        if not isinstance(ft, dict) or "dtype" not in ft or "shape" not in ft:
            raise ValueError(f"feature {name!r}: expected a dict with 'dtype' and 'shape', got {ft!r}")
        info = ft.get("info")
        if info is not None and not isinstance(info, dict):
            raise ValueError(f"feature {name!r}: 'info' must be a dict, got {info!r}")
        ft = {"dtype": ft["dtype"], "shape": [int(s) for s in ft["shape"]], "names": ft.get("names"),
              **({"info": dict(info)} if info else {})}
        if name in TRACE_FEATURES:
            space = ft.setdefault("info", {}).setdefault("coordinate_space", UNIT_COORDINATES)
            if space != UNIT_COORDINATES:
                raise ValueError(f"feature {name!r}: the writer stores traces in [0, 1] (coordinate_space "
                                 f"{UNIT_COORDINATES!r}), got coordinate_space {space!r}; convert them first "
                                 "(tracex.normalize_trace)")
        if ft["dtype"] == "video":
            if len(ft["shape"]) != 3 or ft["shape"][2] != 3:
                raise ValueError(f"feature {name!r}: video shape must be [H, W, 3], got {ft['shape']}")
            h, w = ft["shape"][:2]
            if h % 2 or w % 2 or h < 16 or w < 16:
                raise ValueError(f"feature {name!r}: video height/width must be even and >= 16, got {h}x{w}")
            if ft["names"] is None:
                ft["names"] = ["height", "width", "channels"]
        elif ft["dtype"] == "string":
            if ft["shape"] != [1]:
                raise ValueError(f"feature {name!r}: string features must have shape [1]")
        elif ft["dtype"] not in _NUMERIC:
            raise ValueError(f"feature {name!r}: unsupported dtype {ft['dtype']!r}")
        elif len(ft["shape"]) == 0:
            raise ValueError(f"feature {name!r}: shape [] is not allowed; use [1] for scalars (bool included)")
        return ft

    def _reset_buffer(self) -> None:
        self._buf = {k: [] for k in self.features}
        self._ep_skipped = 0

    @property
    def episode_index(self) -> int:
        return len(self.episodes)

    @property
    def buffered_frames(self) -> int:
        return len(self._buf[next(iter(self.features))])

    def add_frame(self, frame: dict) -> bool:
        """Validate and buffer one frame of the current episode. Returns False if it was skipped (NaN policy)."""
        if self._finalized:
            raise ValueError("add_frame after finalize()")
        ep, fi = self.episode_index, self.buffered_frames
        where = f"{self.root}: episode {ep}, frame {fi}"
        missing = [k for k in self.features if k not in frame]
        extra = [k for k in frame if k not in self.features and k != "task"]
        if missing or extra:
            raise ValueError(f"{where}: missing features {missing}, unknown features {extra}")
        values = {}
        for k, ft in self.features.items():
            v = frame[k]
            if is_video_feature(ft):
                a = np.asarray(v)
                if a.dtype != np.uint8:
                    if np.issubdtype(a.dtype, np.floating):
                        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
                    else:
                        raise ValueError(f"{where}: {k} must be uint8 (H, W, 3), got dtype {a.dtype}")
                if a.shape != tuple(ft["shape"]):
                    raise ValueError(f"{where}: {k} has shape {a.shape}, declared {tuple(ft['shape'])}")
                values[k] = a
            elif ft["dtype"] == "string":
                values[k] = str(v)
            else:
                a = np.asarray(v)
                try:
                    a = a.astype(ft["dtype"], casting="same_kind" if ft["dtype"] != "bool" else "unsafe")
                except TypeError as e:
                    raise ValueError(f"{where}: {k} has dtype {a.dtype}, declared {ft['dtype']}") from e
                if a.size != int(np.prod(ft["shape"])):
                    raise ValueError(f"{where}: {k} has {a.size} values, declared shape {ft['shape']}")
                values[k] = a.reshape(ft["shape"])
        for k in self.nan_keys:
            if k in values and np.issubdtype(values[k].dtype, np.floating) and not np.all(np.isfinite(values[k])):
                if self.nan_policy == "error":
                    raise ValueError(f"{where}: non-finite {k} {values[k].tolist()} (nan_policy='error')")
                self._ep_skipped += 1
                self.skipped_frames += 1
                return False
        present = bool(np.asarray(values.get("trace.present", True)).reshape(-1)[0])
        if present:
            for k in TRACE_FEATURES:
                if k in values:
                    a = values[k]
                    if not np.all(np.isfinite(a)) or np.any((a < 0) | (a > 1)):
                        raise ValueError(f"{where}: {k} values outside [0, 1]: {a.tolist()}")
        for k, v in values.items():
            self._buf[k].append(v)
        return True

    def discard_episode(self) -> None:
        """Drop the frames buffered for the current episode (e.g. a failed demo)."""
        self._reset_buffer()

    # ---------------------------------------------------------------- episodes
    def _task_index(self, task: str) -> int:
        if task not in self.tasks:
            self.tasks[task] = len(self.tasks)
        return self.tasks[task]

    def _next_data_file(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_pos = _chunk_file_next(*self._data_pos, self.chunks_size)
        path = self.tmp / DATA_PATH.format(chunk_index=self._data_pos[0], file_index=self._data_pos[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = self._schema()
        self._data_writer = pq.ParquetWriter(str(path), schema)
        self._data_bytes = 0

    def _all_features(self) -> dict:
        return {**self.features, **DEFAULT_FEATURES}

    def _schema(self) -> pa.Schema:
        fields = [pa.field(k, _arrow_type(ft)) for k, ft in self._all_features().items() if not is_video_feature(ft)]
        hf = {"info": {"features": {k: _hf_feature(ft) for k, ft in self._all_features().items()
                                    if not is_video_feature(ft)}}}
        return pa.schema(fields, metadata={b"huggingface": json.dumps(hf).encode()})

    def save_episode(self, task: str) -> int:
        """Write the buffered frames as one episode with instruction ``task``; returns its episode index."""
        if self._finalized:
            raise ValueError("save_episode after finalize()")
        n = self.buffered_frames
        ep = self.episode_index
        if n == 0:
            raise ValueError(f"{self.root}: episode {ep} has no frames to save"
                             + (f" ({self._ep_skipped} skipped as non-finite)" if self._ep_skipped else ""))
        if not isinstance(task, str) or not task:
            raise ValueError(f"{self.root}: episode {ep}: task must be a non-empty string")
        if self._ep_skipped:
            warnings.warn(f"{self.root}: episode {ep}: skipped {self._ep_skipped} frame(s) with non-finite "
                          f"{'/'.join(self.nan_keys)} (nan_policy='skip')", stacklevel=2)
        ti = self._task_index(task)
        start = self.total_frames
        frame_index = np.arange(n, dtype=np.int64)
        cols: dict[str, Any] = {}
        stats: dict[str, dict] = {}
        for k in self.data_keys:
            ft = self.features[k]
            if ft["dtype"] == "string":
                cols[k] = pa.array(self._buf[k], pa.string())
                continue
            arr = np.stack(self._buf[k])
            stats[k] = _frame_stats(arr.reshape(n, -1))
            if ft["shape"] == [1]:
                cols[k] = pa.array(arr.reshape(n), type=_arrow_type(ft))
            else:
                flat = pa.array(arr.reshape(-1), type=pa.from_numpy_dtype(arr.dtype))
                for size in reversed(ft["shape"]):
                    flat = pa.FixedSizeListArray.from_arrays(flat, int(size))
                cols[k] = flat
        auto = {"timestamp": (frame_index / self.fps).astype(np.float32), "frame_index": frame_index,
                "episode_index": np.full(n, ep, np.int64), "index": start + frame_index,
                "task_index": np.full(n, ti, np.int64)}
        for k, v in auto.items():
            cols[k] = pa.array(v)
            stats[k] = _frame_stats(v)
        table = pa.Table.from_arrays([cols[f.name] for f in self._schema()], schema=self._schema())

        if self._data_writer is None or self._data_bytes >= self.data_limit:
            self._next_data_file()
        self._data_writer.write_table(table, row_group_size=n)
        self._data_bytes += table.nbytes
        rec: dict[str, Any] = {"episode_index": ep, "tasks": [task], "length": n,
                               "data/chunk_index": self._data_pos[0], "data/file_index": self._data_pos[1],
                               "dataset_from_index": start, "dataset_to_index": start + n}
        for k in self.video_keys:
            w = self._video_writers.get(k)
            if w is None or w.bytes >= self.video_limit:
                if w is not None:
                    w.close()
                    self._video_pos[k] = _chunk_file_next(*self._video_pos[k], self.chunks_size)
                h, wd = self.features[k]["shape"][:2]
                path = self.tmp / VIDEO_PATH.format(video_key=k, chunk_index=self._video_pos[k][0],
                                                    file_index=self._video_pos[k][1])
                w = self._video_writers[k] = _VideoFileWriter(path, self.fps, wd, h, self.video_codec, self.crf,
                                                              self.gop)
            t0 = w.frames / self.fps
            w.add_episode(self._buf[k])
            rec[f"videos/{k}/chunk_index"] = self._video_pos[k][0]
            rec[f"videos/{k}/file_index"] = self._video_pos[k][1]
            rec[f"videos/{k}/from_timestamp"] = float(t0)
            rec[f"videos/{k}/to_timestamp"] = float(t0 + n / self.fps)
            stats[k] = _image_stats(self._buf[k])
        rec["meta/episodes/chunk_index"] = 0
        rec["meta/episodes/file_index"] = 0
        self.episodes.append(rec)
        self.episode_stats.append(stats)
        self.total_frames += n
        self._reset_buffer()
        return ep

    # ---------------------------------------------------------------- finalize
    def _info(self) -> dict:
        feats = {}
        for k, ft in self._all_features().items():
            ft = dict(ft)
            if ft["dtype"] == "video":
                h, w, c = ft["shape"]
                ft["info"] = {**(ft.get("info") or {}), "video.height": h, "video.width": w,
                              "video.codec": self.video_codec,
                              "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": self.fps,
                              "video.channels": c, "video.g": self.gop,
                              "video.crf": self.crf if self.crf is not None else (23 if self.video_codec == "h264" else 30),
                              "has_audio": False, "is_depth_map": False}
            feats[k] = ft
        feats = add_calibration(feats, self.cameras)
        n_eps = len(self.episodes)
        return {"codebase_version": CODEBASE_VERSION, "fps": self.fps, "features": feats,
                "total_episodes": n_eps, "total_frames": self.total_frames, "total_tasks": len(self.tasks),
                "chunks_size": self.chunks_size,
                "data_files_size_in_mb": self.data_limit / (1024 * 1024),
                "video_files_size_in_mb": self.video_limit / (1024 * 1024), "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if self.video_keys else None, "robot_type": self.robot_type,
                "splits": {"train": f"0:{n_eps}"}}

    def finalize(self) -> Path:
        """Close all files, write the metadata and atomically move the dataset to ``root``."""
        if self._finalized:
            return self.root
        if self.buffered_frames:
            raise ValueError(f"{self.root}: {self.buffered_frames} buffered frames not saved; call save_episode "
                             "or discard_episode before finalize")
        if not self.episodes:
            raise ValueError(f"{self.root}: no episodes saved")
        if self._data_writer is not None:
            self._data_writer.close()
        for w in self._video_writers.values():
            w.close()
        write_episodes_parquet(self.tmp, self.episodes, self.episode_stats, self.data_limit, self.chunks_size)
        write_tasks_parquet(self.tmp / "meta/tasks.parquet", self.tasks)
        _atomic_write_json(self.tmp / "meta/stats.json", aggregate_stats(self.episode_stats))
        if self.cameras:
            _atomic_write_json(self.tmp / "meta/cameras.json", self.cameras)
        _atomic_write_json(self.tmp / "meta/info.json", self._info())  # last: the dataset is complete
        if self.root.exists():
            old = self.root.parent / f".{self.root.name}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(self.root, old)
            os.replace(self.tmp, self.root)
            shutil.rmtree(old)
        else:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp, self.root)
        self._finalized = True
        return self.root

    def abort(self) -> None:
        """Close and delete everything written so far (``root`` is untouched)."""
        try:
            if self._data_writer is not None:
                self._data_writer.close()
            for w in self._video_writers.values():
                try:
                    w.close()
                except Exception:
                    pass
        finally:
            self._finalized = True
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        elif not self._finalized:
            self.finalize()
        return False


def write_tasks_parquet(path: Path, tasks: dict[str, int]) -> None:
    """``meta/tasks.parquet`` as lerobot 0.6.1 writes it: columns ``task_index`` and ``task`` (the pandas
    index, so ``pandas.read_parquet`` restores it as the index)."""
    items = sorted(tasks.items(), key=lambda kv: kv[1])
    pandas_meta = {"index_columns": ["task"], "column_indexes": [
        {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
         "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    table = pa.table({"task_index": pa.array([i for _, i in items], pa.int64()),
                      "task": pa.array([t for t, _ in items], pa.string())})
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, str(tmp))
    os.replace(tmp, path)


def write_episodes_parquet(root: Path, episodes: list[dict], episode_stats: list[dict],
                           file_size_limit: float = DEFAULT_DATA_FILE_SIZE_MB * 1024 * 1024,
                           chunks_size: int = DEFAULT_CHUNKS_SIZE) -> None:
    """``meta/episodes/chunk-XXX/file-YYY.parquet``: one row per episode + ``stats/<feature>/<stat>`` columns;
    a new file is started once a file's rows exceed ``file_size_limit`` bytes."""
    rows = []
    for rec, st in zip(episodes, episode_stats):
        row = dict(rec)
        for feat, s in st.items():
            for name in STAT_NAMES:
                if name in s:
                    row[f"stats/{feat}/{name}"] = s[name]
        rows.append(row)
    cols = list(rows[0].keys())
    for r in rows[1:]:
        for c in r:
            if c not in cols:
                cols.append(c)

    def table(part: list[dict]) -> pa.Table:
        arrays = {}
        for c in cols:
            vals = [r.get(c) for r in part]
            if c == "tasks":
                arrays[c] = pa.array(vals, pa.list_(pa.string()))
            elif c.endswith("_timestamp"):
                arrays[c] = pa.array(vals, pa.float64())
            elif c.startswith("stats/"):
                arrays[c] = pa.array(vals)
            else:
                arrays[c] = pa.array(vals, pa.int64())
        return pa.table(arrays)

    row_bytes = max(1, table(rows[:1]).nbytes)
    per_file = max(1, int(file_size_limit // row_bytes))
    pos = (0, 0)
    for start in range(0, len(rows), per_file):
        part = rows[start:start + per_file]
        for r in part:
            r["meta/episodes/chunk_index"], r["meta/episodes/file_index"] = pos
        path = root / EPISODES_PATH.format(chunk_index=pos[0], file_index=pos[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table(part), str(tmp))
        os.replace(tmp, path)
        pos = _chunk_file_next(*pos, chunks_size)


def _is_int_list(t: pa.DataType) -> bool:
    while pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    return pa.types.is_integer(t)


# ---------------------------------------------------------------------------------------------------- reader
@dataclass
class DatasetMeta:
    """Parsed metadata: ``info`` (dict), ``tasks`` (list indexed by task_index), ``episodes`` (list of dicts
    indexed by episode_index, without the stats columns), ``stats`` (dict), ``cameras`` (calibration per camera
    key: from the camera features' ``info``, else ``meta/cameras.json``; ``cameras.load_calibration``)."""

    root: Path
    info: dict
    tasks: list[str]
    episodes: list[dict]
    stats: dict
    cameras: dict = field(default_factory=dict)

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def features(self) -> dict:
        return self.info["features"]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft.get("dtype") == "video"]

    def video_shape(self, key: str) -> tuple[int, int, int]:
        return image_shape(self.features[key])


def _read_parquet(path: Path, what: str, columns: list[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise ValueError(f"{path}: missing {what}")
    try:
        return pq.read_table(str(path), columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: corrupt or truncated Parquet ({what}): {e}") from e


def load_meta(root) -> DatasetMeta:
    """Read ``meta/`` (info, tasks, episodes, stats, camera calibration) of a v3.0 dataset."""
    root = Path(root)
    info_path = root / "meta/info.json"
    if not info_path.is_file():
        raise ValueError(f"{root}: not a finished LeRobot dataset (no meta/info.json)")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{info_path}: invalid JSON ({e})") from e
    ver = str(info.get("codebase_version", ""))
    if not ver.startswith("v3"):
        raise ValueError(f"{info_path}: codebase_version {ver!r} is not v3.x")
    for k in ("fps", "features"):
        if k not in info:
            raise ValueError(f"{info_path}: missing key {k!r}")
    # tasks
    tpath = root / "meta/tasks.parquet"
    tt = _read_parquet(tpath, "tasks")
    names = tt.column_names
    scol = next((c for c in ("task", "__index_level_0__") if c in names), None)
    if scol is None:
        scol = next((c for c in names if pa.types.is_string(tt.schema.field(c).type)
                     or pa.types.is_large_string(tt.schema.field(c).type)), None)
    if scol is None or "task_index" not in names:
        raise ValueError(f"{tpath}: expected columns 'task_index' and 'task' (or '__index_level_0__'), got {names}")
    t_idx = tt.column("task_index").to_pylist()
    t_str = tt.column(scol).to_pylist()
    tasks = [""] * (max(t_idx) + 1 if t_idx else 0)
    for i, s in zip(t_idx, t_str):
        tasks[int(i)] = s
    # episodes
    ep_files = sorted((root / "meta/episodes").glob("chunk-*/file-*.parquet"))
    if not ep_files:
        raise ValueError(f"{root}/meta/episodes: no episode metadata files")
    episodes: dict[int, dict] = {}
    for p in ep_files:
        schema_names = _read_parquet(p, "episode metadata").column_names
        cols = [c for c in schema_names if not c.startswith("stats/")]
        t = _read_parquet(p, "episode metadata", columns=cols)
        for row in t.to_pylist():
            episodes[int(row["episode_index"])] = row
    n = len(episodes)
    if sorted(episodes) != list(range(n)):
        raise ValueError(f"{root}/meta/episodes: episode indices are not 0..{n - 1}")
    eps = [episodes[i] for i in range(n)]
    for e, row in enumerate(eps):
        need = ("length", "dataset_from_index", "dataset_to_index", "data/chunk_index", "data/file_index")
        miss = [k for k in need if row.get(k) is None]
        if miss:
            raise ValueError(f"{root}/meta/episodes: episode {e} lacks {miss}")
        if row["dataset_to_index"] - row["dataset_from_index"] != row["length"]:
            raise ValueError(f"{root}/meta/episodes: episode {e}: length {row['length']} != dataset_to_index - "
                             f"dataset_from_index = {row['dataset_to_index'] - row['dataset_from_index']}")
    spath = root / "meta/stats.json"
    stats = json.loads(spath.read_text()) if spath.is_file() else {}
    cameras = load_calibration(root, info)
    return DatasetMeta(root=root, info=info, tasks=tasks, episodes=eps, stats=stats, cameras=cameras)


class _VideoReader:
    """An open mp4 with its decoder; decodes forward for sequential reads, seeks otherwise."""

    def __init__(self, path: Path):
        import av
        self.path = path
        try:
            self.container = av.open(str(path))
            self.stream = self.container.streams.video[0]
        except Exception as e:
            raise ValueError(f"{path}: cannot open video ({e})") from e
        self.tb = float(self.stream.time_base)
        self._it = None
        self._last_t = None
        self._last_img = None
        self._last_key: float | None = None
        self.gop_s: float | None = None  # smallest keyframe interval seen so far (learned while decoding)

    def _seek(self, t: float) -> None:
        self.container.seek(max(0, int(math.floor(t / self.tb))), stream=self.stream, backward=True,
                            any_frame=False)
        self._it = self.container.decode(self.stream)
        self._last_t, self._last_img, self._last_key = None, None, None

    def frame_at(self, t: float, tol: float) -> np.ndarray:
        if self._last_t is not None and abs(self._last_t - t) <= tol:
            return self._last_img
        # Decode forward only while no keyframe can lie between here and the target; otherwise seeking to
        # the keyframe before the target decodes less (GOP 2 in lerobot's default encoding).
        ahead = 1.0 if self.gop_s is None else self.gop_s
        if self._it is None or self._last_t is None or t < self._last_t or t - self._last_t > ahead + tol:
            self._seek(t)
        import av
        while True:
            try:
                f = next(self._it)
            except StopIteration:
                self._it = None
                raise ValueError(f"{self.path}: no frame at t={t:.4f}s (video ends at "
                                 f"{self._last_t if self._last_t is not None else 'start'})") from None
            except av.FFmpegError as e:
                self._it, self._last_t = None, None
                raise ValueError(f"{self.path}: corrupt video, decoding failed near t={t:.4f}s ({e})") from e
            ft = float(f.pts * self.tb) if f.pts is not None else float(f.time)
            if f.key_frame:
                if self._last_key is not None and ft > self._last_key:
                    gap = ft - self._last_key
                    self.gop_s = gap if self.gop_s is None else min(self.gop_s, gap)
                self._last_key = ft
            elif self._last_key is not None and self._last_t is not None and ft < self._last_t:
                self._last_key = None
            self._last_t = ft
            if ft >= t - tol:
                self._last_img = f.to_ndarray(format="rgb24")
                break
        if abs(ft - t) > tol:
            raise ValueError(f"{self.path}: nearest decoded frame at t={ft:.4f}s, wanted {t:.4f}s (tolerance {tol})")
        return self._last_img

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:
            pass


_LIVE_READERS: "weakref.WeakSet[LeRobotV3Dataset]" = weakref.WeakSet()
_FORK_ORPHANS: list = []


def _orphan_decoders_after_fork() -> None:
    """In a forked child (e.g. a DataLoader worker) the parent's open decoders must neither be used (shared
    file offsets) nor freed (FFmpeg's thread pools do not exist in the child: freeing them deadlocks). They
    are parked here, never touched again, and each reader opens fresh ones."""
    for ds in list(_LIVE_READERS):
        if ds._decoders:
            _FORK_ORPHANS.append(ds._decoders)
            ds._decoders = OrderedDict()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_orphan_decoders_after_fork)


class LeRobotV3Dataset:
    """Random-access reader of a LeRobot v3.0 dataset.

    ``len(ds)`` = number of usable frames (all frames, minus non-finite ``nan_keys`` frames when
    ``nan_policy="skip"``); ``ds[i]`` returns the i-th usable frame; ``ds.frame(episode, index)`` any frame.
    A frame is a dict: each non-video feature as a numpy array (shape-[1] features as 0-d arrays), each video
    feature as uint8 (H, W, 3), and ``task`` (str); trace columns as stored (``tracex.TraceColumns`` normalizes
    and checks them). ``check=True`` validates all data files up front (episode lengths, frame order,
    non-finite actions, video files present and their from/to timestamps matching the episode lengths);
    ``nan_policy="skip"`` needs it to know which frames to
    leave out. With ``check=False`` files are validated lazily, when first read.
    """

    def __init__(self, root, *, nan_policy: str = "error", nan_keys: Iterable[str] = ("action",),
                 check: bool = True, decoder_cache_size: int = 4, tolerance_s: float = 1e-4,
                 data_cache_size: int = 8):
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        self.root = Path(root)
        self.meta = load_meta(self.root)
        self.nan_policy, self.nan_keys = nan_policy, tuple(k for k in nan_keys if k in self.meta.features)
        self.tolerance_s = float(tolerance_s)
        self.decoder_cache_size, self.data_cache_size = int(decoder_cache_size), int(data_cache_size)
        self._decoders: OrderedDict = OrderedDict()
        self._data: OrderedDict = OrderedDict()
        _LIVE_READERS.add(self)
        self.video_keys = self.meta.video_keys
        self.data_keys = [k for k, ft in self.meta.features.items() if ft.get("dtype") not in ("video", "image")]
        eps = self.meta.episodes
        self._ep_from = np.array([e["dataset_from_index"] for e in eps], np.int64)
        self._ep_len = np.array([e["length"] for e in eps], np.int64)
        self._files: dict[tuple[int, int], list[int]] = {}
        for i, e in enumerate(eps):
            self._files.setdefault((int(e["data/chunk_index"]), int(e["data/file_index"])), []).append(i)
        self.num_frames = int(self._ep_len.sum())
        self.skipped = np.zeros(0, np.int64)
        if check:
            self._check_videos()
            bad = []
            for key in self._files:
                bad.append(self._load_data_file(key)["_bad"])
            self.skipped = np.concatenate(bad) if bad else self.skipped
            if len(self.skipped):
                warnings.warn(f"{self.root}: {len(self.skipped)} frame(s) with non-finite "
                              f"{'/'.join(self.nan_keys)} left out (nan_policy='skip')", stacklevel=2)
        keep = np.ones(self.num_frames, bool)
        # global index -> position: datasets are contiguous 0..N-1 in episode order
        keep[self._global_to_pos(self.skipped)] = False
        self._order = np.concatenate([np.arange(f, f + n) for f, n in zip(self._ep_from, self._ep_len)]) \
            if len(eps) else np.zeros(0, np.int64)
        self.indices = self._order[keep]

    # ---------------------------------------------------------------- structure
    def _global_to_pos(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, np.int64)
        if idx.size == 0:
            return idx
        ep = np.searchsorted(self._ep_from, idx, side="right") - 1
        starts = np.concatenate([[0], np.cumsum(self._ep_len)[:-1]])
        return starts[ep] + (idx - self._ep_from[ep])

    @property
    def fps(self) -> int:
        return self.meta.fps

    @property
    def features(self) -> dict:
        return self.meta.features

    @property
    def num_episodes(self) -> int:
        return len(self.meta.episodes)

    def __len__(self) -> int:
        return int(len(self.indices))

    def episode(self, e: int) -> range:
        """Global frame indices of episode ``e``."""
        self._check_episode(e)
        return range(int(self._ep_from[e]), int(self._ep_from[e] + self._ep_len[e]))

    def episode_length(self, e: int) -> int:
        self._check_episode(e)
        return int(self._ep_len[e])

    def episode_of(self, global_index: int) -> tuple[int, int]:
        """Global frame index -> (episode, frame index within the episode)."""
        e = int(np.searchsorted(self._ep_from, global_index, side="right") - 1)
        if e < 0 or global_index >= self._ep_from[e] + self._ep_len[e]:
            raise IndexError(f"frame index {global_index} out of range")
        return e, int(global_index - self._ep_from[e])

    def task(self, e: int) -> str:
        tasks = self.meta.episodes[e].get("tasks") or []
        return tasks[0] if tasks else ""

    def _check_episode(self, e: int) -> None:
        if not 0 <= e < self.num_episodes:
            raise IndexError(f"episode {e} out of range (0..{self.num_episodes - 1})")

    def camera(self, key: str):
        """PinholeCamera of ``key`` (calibration from its feature's ``info``, or ``meta/cameras.json``;
        ValueError if absent)."""
        from semanticvla_core.camera import PinholeCamera
        if key not in self.meta.cameras:
            raise ValueError(f"{self.root}: no calibration for camera {key!r} (neither in meta/info.json "
                             f"features[{key!r}].info.camera_calibration nor in meta/cameras.json; calibrated: "
                             f"{list(self.meta.cameras)})")
        return PinholeCamera.from_dict(self.meta.cameras[key])

    # ---------------------------------------------------------------- files
    def data_path(self, chunk: int, file: int) -> Path:
        return self.root / self.meta.info.get("data_path", DATA_PATH).format(chunk_index=chunk, file_index=file)

    def video_path(self, key: str, e: int) -> Path:
        ep = self.meta.episodes[e]
        return self.root / (self.meta.info.get("video_path") or VIDEO_PATH).format(
            video_key=key, chunk_index=int(ep[f"videos/{key}/chunk_index"]),
            file_index=int(ep[f"videos/{key}/file_index"]))

    def _check_videos(self) -> None:
        seen = set()
        for key in self.video_keys:
            for e in range(self.num_episodes):
                if f"videos/{key}/chunk_index" not in self.meta.episodes[e]:
                    raise ValueError(f"{self.root}/meta/episodes: episode {e} has no video entry for {key}")
                p = self.video_path(key, e)
                ep = self.meta.episodes[e]
                span = (float(ep[f"videos/{key}/to_timestamp"]) - float(ep[f"videos/{key}/from_timestamp"])) * self.fps
                if abs(span - self._ep_len[e]) > 0.5:
                    raise ValueError(f"{p}: episode {e} spans {span:.1f} video frames ({key} from/to_timestamp) but "
                                     f"has length {int(self._ep_len[e])} (mismatched episode length)")
                if p not in seen:
                    if not p.is_file():
                        raise ValueError(f"{p}: missing video file ({key}, episode {e}, frame 0)")
                    seen.add(p)

    def _load_data_file(self, key: tuple[int, int]) -> dict:
        if key in self._data:
            self._data.move_to_end(key)
            return self._data[key]
        path = self.data_path(*key)
        eps = self._files[key]
        what = f"frames of episodes {eps[0]}..{eps[-1]}"
        table = _read_parquet(path, what)
        missing = [k for k in self.data_keys if k not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} ({what})")
        cols: dict[str, np.ndarray] = {}
        for k in self.data_keys:
            cols[k] = _column_to_numpy(table.column(k), self.meta.features[k], path)
        idx = cols["index"].reshape(-1)
        epi = cols["episode_index"].reshape(-1)
        fri = cols["frame_index"].reshape(-1)
        pos = {}
        uniq, first, counts = np.unique(epi, return_index=True, return_counts=True)
        block = {int(u): (int(f), int(c)) for u, f, c in zip(uniq, first, counts)}
        for e in eps:
            f0, c = block.get(e, (0, 0))
            rows = np.arange(f0, f0 + c)
            n = int(self._ep_len[e])
            if c and not np.all(epi[f0:f0 + c] == e):
                r = int(np.nonzero(epi[f0:f0 + c] != e)[0][0]) + f0
                raise ValueError(f"{path}: episode {e}, frame {r - f0}: rows of the episode are not contiguous "
                                 f"(row {r} belongs to episode {int(epi[r])})")
            if len(rows) != n:
                raise ValueError(f"{path}: episode {e} has {len(rows)} rows but meta/episodes says length {n} "
                                 f"(mismatched episode length; first missing frame {len(rows)})")
            if not np.array_equal(fri[rows], np.arange(n)):
                f = int(np.nonzero(fri[rows] != np.arange(n))[0][0])
                raise ValueError(f"{path}: episode {e}, frame {f}: frame_index {int(fri[rows][f])} out of order")
            if not np.array_equal(idx[rows], np.arange(self._ep_from[e], self._ep_from[e] + n)):
                raise ValueError(f"{path}: episode {e}: 'index' column does not match dataset_from_index "
                                 f"{int(self._ep_from[e])}")
            pos[e] = int(rows[0])
        bad = []
        for k in self.nan_keys:
            a = cols[k].reshape(len(idx), -1)
            if np.issubdtype(a.dtype, np.floating):
                rows = np.nonzero(~np.all(np.isfinite(a), axis=1))[0]
                if len(rows) and self.nan_policy == "error":
                    r = int(rows[0])
                    raise ValueError(f"{path}: episode {int(epi[r])}, frame {int(fri[r])}: non-finite {k} "
                                     f"{a[r].tolist()} ({len(rows)} such frame(s); nan_policy='error')")
                bad.append(idx[rows])
        cols["_bad"] = np.unique(np.concatenate(bad)) if bad else np.zeros(0, np.int64)
        cols["_pos"] = pos
        self._data[key] = cols
        while len(self._data) > self.data_cache_size:
            self._data.popitem(last=False)
        return cols

    def _decoder(self, path: Path) -> _VideoReader:
        d = self._decoders.get(path)
        if d is None:
            if not path.is_file():
                raise ValueError(f"{path}: missing video file")
            d = self._decoders[path] = _VideoReader(path)
            while len(self._decoders) > self.decoder_cache_size:
                _, old = self._decoders.popitem(last=False)
                old.close()
        else:
            self._decoders.move_to_end(path)
        return d

    # ---------------------------------------------------------------- access
    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range ({len(self)})")
        e, f = self.episode_of(int(self.indices[i]))
        return self.frame(e, f)

    def get_video_frame(self, key: str, e: int, index: int) -> np.ndarray:
        """Decoded uint8 (H, W, 3) frame ``index`` of episode ``e`` from camera ``key``."""
        self._check_episode(e)
        if not 0 <= index < self._ep_len[e]:
            raise IndexError(f"episode {e}: frame {index} out of range ({int(self._ep_len[e])} frames)")
        path = self.video_path(key, e)
        t = float(self.meta.episodes[e][f"videos/{key}/from_timestamp"]) + index / self.fps
        try:
            return self._decoder(path).frame_at(t, self.tolerance_s)
        except ValueError as err:
            raise ValueError(f"{err} ({key}, episode {e}, frame {index})") from err

    def get_columns(self, e: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Whole-episode non-video columns: {key: (T, *shape)} (shape-[1] features as (T,))."""
        self._check_episode(e)
        ep = self.meta.episodes[e]
        cols = self._load_data_file((int(ep["data/chunk_index"]), int(ep["data/file_index"])))
        p, n = cols["_pos"][e], int(self._ep_len[e])
        return {k: cols[k][p:p + n] for k in (keys if keys is not None else self.data_keys)}

    def frame(self, e: int, index: int, video: bool = True) -> dict:
        """Frame ``index`` of episode ``e`` (non-video features, ``task``, and decoded video if ``video``)."""
        self._check_episode(e)
        if not 0 <= index < self._ep_len[e]:
            raise IndexError(f"episode {e}: frame {index} out of range ({int(self._ep_len[e])} frames)")
        ep = self.meta.episodes[e]
        cols = self._load_data_file((int(ep["data/chunk_index"]), int(ep["data/file_index"])))
        r = cols["_pos"][e] + index
        out: dict[str, Any] = {k: (cols[k][r] if cols[k].ndim > 1 else np.asarray(cols[k][r])) for k in self.data_keys}
        ti = int(out["task_index"])
        out["task"] = self.meta.tasks[ti] if 0 <= ti < len(self.meta.tasks) else self.task(e)
        if video:
            for k in self.video_keys:
                out[k] = self.get_video_frame(k, e, index)
        return out

    # ---------------------------------------------------------------- pickling (DataLoader workers)
    def __getstate__(self):
        s = dict(self.__dict__)
        s["_decoders"] = OrderedDict()
        s["_data"] = OrderedDict()
        return s

    def __setstate__(self, s):
        self.__dict__.update(s)
        _LIVE_READERS.add(self)

    def close(self) -> None:
        for d in self._decoders.values():
            d.close()
        self._decoders.clear()
        self._data.clear()


def _column_to_numpy(col: pa.ChunkedArray, ft: dict, path: Path) -> np.ndarray:
    """Arrow column -> (N, *shape) numpy (shape-[1] features -> (N,))."""
    col = col.combine_chunks()
    shape = [int(s) for s in ft.get("shape", [1])]
    dtype = ft.get("dtype")
    if dtype == "string":
        return np.array(col.to_pylist(), dtype=object)
    t = col.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        flat = col
        while pa.types.is_fixed_size_list(flat.type) or pa.types.is_list(flat.type) or pa.types.is_large_list(flat.type):
            flat = flat.flatten()
        arr = flat.to_numpy(zero_copy_only=False)
        n = len(col)
        try:
            arr = arr.reshape((n, *shape)) if shape != [1] else arr.reshape(n)
        except ValueError as e:
            raise ValueError(f"{path}: column has {arr.size} values for {n} rows, feature shape {shape}") from e
    else:
        arr = col.to_numpy(zero_copy_only=False)
        if shape != [1]:
            arr = arr.reshape((len(col), *shape))
    if dtype in _NUMERIC and arr.dtype != np.dtype(dtype):
        arr = arr.astype(dtype)
    return arr


# ---------------------------------------------------------------------------------------------------- columns
def add_columns(root, features: dict[str, dict], values: dict[str, np.ndarray]) -> None:
    """Add (or replace) per-frame columns of a finished dataset.

    ``features``: {name: {"dtype", "shape", "names"}}; ``values``: {name: array (total_frames, *shape)} indexed
    by the global frame ``index``. Each data file is rewritten to a temporary file and renamed over the old
    one (one row group per episode kept); per-episode and dataset stats are updated, ``meta/info.json`` last.
    Re-running after an interruption is safe (existing columns of the same name are replaced).
    """
    root = Path(root)
    meta = load_meta(root)
    total = sum(int(e["length"]) for e in meta.episodes)
    fts = {k: LeRobotV3Writer._check_feature(k, ft) for k, ft in features.items()}
    vals = {}
    for k, ft in fts.items():
        if k in DEFAULT_FEATURES or is_video_feature(ft):
            raise ValueError(f"add_columns: cannot add {k!r} ({ft['dtype']})")
        if k not in values:
            raise ValueError(f"add_columns: no values for {k!r}")
        a = np.asarray(values[k]).astype(ft["dtype"])
        if a.shape[0] != total or a[0].size != int(np.prod(ft["shape"])):
            raise ValueError(f"add_columns: {k} has shape {a.shape}, need ({total}, *{ft['shape']})")
        vals[k] = a.reshape(total, -1)
    files: dict[tuple[int, int], list[int]] = {}
    for i, e in enumerate(meta.episodes):
        files.setdefault((int(e["data/chunk_index"]), int(e["data/file_index"])), []).append(i)
    new_feats: dict[str, dict] = {}
    for k, ft in meta.features.items():
        if k == "timestamp":
            new_feats.update(fts)
        if k not in fts:
            new_feats[k] = ft
    for k in fts:
        new_feats.setdefault(k, fts[k])
    data_tpl = meta.info.get("data_path", DATA_PATH)
    for (c, f), eps in files.items():
        path = root / data_tpl.format(chunk_index=c, file_index=f)
        table = _read_parquet(path, f"frames of episodes {eps[0]}..{eps[-1]}")
        idx = table.column("index").to_numpy()
        arrays, fields = [], []
        for k, ft in new_feats.items():
            if is_video_feature(ft):
                continue
            if k in fts:
                a = vals[k][idx]
                if ft["shape"] == [1]:
                    arr = pa.array(a.reshape(-1), type=_arrow_type(ft))
                else:
                    arr = pa.array(a.reshape(-1), type=pa.from_numpy_dtype(a.dtype))
                    for size in reversed(ft["shape"]):
                        arr = pa.FixedSizeListArray.from_arrays(arr, int(size))
            elif k in table.column_names:
                arr = table.column(k).combine_chunks()
            else:
                raise ValueError(f"{path}: missing column {k!r}")
            arrays.append(arr)
            fields.append(pa.field(k, arr.type))
        hf = {"info": {"features": {k: _hf_feature(ft) for k, ft in new_feats.items() if not is_video_feature(ft)}}}
        schema = pa.schema(fields, metadata={b"huggingface": json.dumps(hf).encode()})
        out = pa.Table.from_arrays(arrays, schema=schema)
        epi = table.column("episode_index").to_numpy()
        tmp = path.with_name(path.name + ".tmp")
        with pq.ParquetWriter(str(tmp), schema) as w:
            bounds = np.concatenate([[0], np.nonzero(np.diff(epi))[0] + 1, [len(epi)]])
            for a, b in zip(bounds[:-1], bounds[1:]):
                w.write_table(out.slice(int(a), int(b - a)), row_group_size=int(b - a))
        os.replace(tmp, path)
    # stats: per-episode columns + dataset stats
    ep_files = sorted((root / "meta/episodes").glob("chunk-*/file-*.parquet"))
    per_ep_new: dict[int, dict] = {}
    for e, rec in enumerate(meta.episodes):
        a, n = int(rec["dataset_from_index"]), int(rec["length"])
        per_ep_new[e] = {k: _frame_stats(vals[k][a:a + n]) for k in fts}
    for p in ep_files:
        t = _read_parquet(p, "episode metadata")
        eidx = t.column("episode_index").to_pylist()
        for k in fts:
            for s in STAT_NAMES:
                name = f"stats/{k}/{s}"
                arr = pa.array([per_ep_new[int(e)][k][s] for e in eidx])
                if name in t.column_names:
                    t = t.set_column(t.column_names.index(name), name, arr)
                else:
                    t = t.append_column(name, arr)
        tmp = p.with_name(p.name + ".tmp")
        pq.write_table(t, str(tmp))
        os.replace(tmp, p)
    stats = dict(meta.stats)
    stats.update(aggregate_stats([per_ep_new[e] for e in range(len(meta.episodes))]))
    _atomic_write_json(root / "meta/stats.json", stats)
    info = dict(meta.info)
    info["features"] = new_feats
    _atomic_write_json(root / "meta/info.json", info)
