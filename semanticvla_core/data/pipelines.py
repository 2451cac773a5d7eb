"""Training samples for the three stages, from a LeRobot v3 dataset with trace columns.

Cameras: ``camera`` is the agent view (default ``cameras.DEFAULT_IMAGE_KEY``), ``wrist_camera`` the optional
wrist view (the default key is used when the dataset has it, None goes without, any other key must exist);
a missing key is a ``ValueError`` listing the dataset's camera keys. Traces come through
``tracex.TraceColumns`` in any of its layouts and conventions (``trace_convention`` for datasets whose
metadata does not state it), as normalized windows.

Every dataset below is a ``torch.utils.data.Dataset`` of dicts (see ``shared formats``); S = ``image_size``,
W = ``window`` (trace points per frame), N = ``num_anchors``, K = latent tokens per step, H = ``horizon``,
D = action dim, S_dim = state dim.

* ``TokenizerDataset`` (stage 1: semantic latent action tokenizer)
    ``image_t`` float32 (3, S, S) in [0, 1], ``image_tH`` float32 (3, S, S) (frame t+H of the same episode),
    ``trace`` float32 (W, 2) in [0, 1], ``trace_present`` bool 0-d tensor, ``index`` int64 0-d (global frame).
    Samples: every frame t with t + H inside its episode. ``with_images=False`` leaves out the two images
    (the trace VQ-VAE of stage A needs none, and skipping the decoding is an order of magnitude faster).
* ``VLMDataset`` (stage 2: VLM synergistic training)
    ``image`` float32 (3, S, S), optional ``wrist_image`` float32 (3, S, S), ``instruction`` str,
    ``anchors`` float32 (N, 2) (= ``resample_trace(trace, N)``), ``trace`` float32 (W, 2),
    ``latent_ids`` int64 (K,) (only if latent ids are given), ``index`` int64 0-d.
    Samples: frames whose trace is present (``only_present``) and whose latent ids are all >= 0.
* ``ActionDataset`` (stage 3: end-to-end) = the VLM keys +
    ``actions`` float32 (H, D) NORMALIZED (``NormStats``), ``actions_pad`` bool (H,) (True where the chunk ran
    past the episode end, or hit a non-finite action, and was padded by repeating the last valid action),
    ``state`` float32 (S_dim,) NORMALIZED, and ``image_tH`` float32 (3, S, S) if ``with_image_tH``; with a
    decoder visual stem also ``stem_image`` (3, Ss, Ss) and ``stem_wrist`` (3, Sw, Sw) (``stem_image_size``,
    ``stem_wrist_size``).

Images are resized (``cv2.INTER_AREA``, aspect ratio not kept) to S x S; models do their own mean/std
normalization. Normalization statistics are computed once (robust quantiles, ``normalize.NormStats``), saved
as ``<root>/meta/semanticvla_stats.json`` and reused; pass ``stats=`` (e.g. from a checkpoint) to override.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from semanticvla_core.camera import pose_matrix
from semanticvla_core.image_convert import resize_rgb

from semanticvla_core.data.cameras import DEFAULT_IMAGE_KEY, DEFAULT_WRIST_KEY, check_camera_key, resolve_wrist_key
from semanticvla_core.data.lerobot_v3 import LeRobotV3Dataset
from semanticvla_core.data.tracex import TraceColumns
from semanticvla_core.normalize import STATE_MIN_RANGE, DatasetStats, NormStats
from semanticvla_core.robot_state import ACTION_FRAMES, STATE_DIM, TCP_POS, deltas_to_tcp_targets, tcp_pose_from_state
from semanticvla_core.traces import DEFAULT_NUM_ANCHORS, DEFAULT_WINDOW, object_keypoints, resample_trace

AGENT_CAMERA = DEFAULT_IMAGE_KEY      # names kept for existing callers; the defaults live in cameras.py
WRIST_CAMERA = DEFAULT_WRIST_KEY
STATS_FILE = "meta/semanticvla_stats.json"
DEFAULT_IMAGE_SIZE = 224
DEFAULT_HORIZON = 8


def default_num_workers() -> int:
    """Loader workers: one core stays with the training process (1 worker on a 2-core machine), at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def to_chw_float(img: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, size, size) in [0, 1]."""
    if img.shape[0] != size or img.shape[1] != size:
        img = resize_rgb(img, size)       # the one resize, also used by the policy at run time
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


def load_latent_ids(latent_ids, num_frames: int) -> np.ndarray:
    """(num_frames, K) int64 per global frame index (-1 = none) from an array, ``.npy`` or ``.safetensors``
    (tensor ``latent_ids``)."""
    if isinstance(latent_ids, (str, Path)):
        p = Path(latent_ids)
        if not p.is_file():
            raise ValueError(f"{p}: latent ids file not found")
        if p.suffix == ".safetensors":
            from safetensors.numpy import load_file
            d = load_file(str(p))
            if "latent_ids" not in d:
                raise ValueError(f"{p}: no tensor 'latent_ids' (have {list(d)})")
            arr = d["latent_ids"]
        elif p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            raise ValueError(f"{p}: latent ids must be .npy or .safetensors")
    else:
        arr = np.asarray(latent_ids)
    if arr.ndim != 2 or arr.shape[0] != num_frames or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"latent ids must be an integer array ({num_frames}, K), got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def compute_dataset_stats(ds: LeRobotV3Dataset, action_key: str = "action", state_key: str | None = "observation.state",
                          q_low: float = 0.01, q_high: float = 0.99, min_range: float = 1e-3,
                          state_min_range: float = STATE_MIN_RANGE) -> DatasetStats:
    """Robust per-dimension action/state statistics over all frames (non-finite rows ignored); state dimensions
    are widened to at least ``state_min_range`` (``normalize.STATE_MIN_RANGE``)."""
    keys = [k for k in (action_key, state_key) if k and k in ds.features]
    cols = {k: [] for k in keys}
    for e in range(ds.num_episodes):
        c = ds.get_columns(e, keys)
        for k in keys:
            cols[k].append(np.asarray(c[k], np.float64).reshape(len(c[k]), -1))
    get = lambda k, r: NormStats.compute(np.concatenate(cols[k]), q_low, q_high, r) if k in cols else None  # noqa: E731
    return DatasetStats(action=get(action_key, min_range), state=get(state_key, state_min_range) if state_key else None,
                        extra={"dataset": str(ds.root), "action_key": action_key, "state_key": state_key,
                               "num_frames": int(ds.num_frames), "state_min_range": float(state_min_range)})


def tcp_target_stats(ds: LeRobotV3Dataset, horizon: int, action_key: str = "action",
                     state_key: str = "observation.state", q_low: float = 0.01, q_high: float = 0.99,
                     min_range: float = 1e-3) -> NormStats:
    """Statistics of the decoder's rows in the ``tcp_pose`` action frame: every frame's next ``horizon`` actions
    as TCP targets from that frame's state (``robot_state.deltas_to_tcp_targets``); rows past the episode end or
    after a non-finite action are left out, as the training loss leaves them out."""
    rows = []
    for e in range(ds.num_episodes):
        c = ds.get_columns(e, [action_key, state_key])
        L = len(c[action_key])
        acts = np.asarray(c[action_key], np.float64).reshape(L, -1)
        states = np.asarray(c[state_key], np.float64).reshape(L, -1)
        if states.shape[1] != STATE_DIM:
            raise ValueError(f"{ds.root}: action_frame='tcp_pose' needs the {STATE_DIM}-D robot state "
                             f"(robot_state.STATE_NAMES); {state_key!r} has {states.shape[1]} dims")
        finite = np.all(np.isfinite(acts), axis=1)
        for t in range(L):
            n = min(horizon, L - t)
            bad = ~finite[t:t + n]
            n = int(np.argmax(bad)) if bad.any() else n
            if n and np.all(np.isfinite(states[t])):
                rows.append(deltas_to_tcp_targets(states[t], acts[t:t + n]))
    if not rows:
        raise ValueError(f"{ds.root}: no finite action chunk to compute tcp_pose statistics from")
    return NormStats.compute(np.concatenate(rows), q_low, q_high, min_range)


def load_or_compute_stats(ds: LeRobotV3Dataset, action_key: str = "action",
                          state_key: str | None = "observation.state", recompute: bool = False,
                          action_frame: str = "delta", horizon: int = DEFAULT_HORIZON) -> DatasetStats:
    """``<root>/meta/semanticvla_stats.json`` (``action_frame="tcp_pose"``: ``semanticvla_stats_tcp_pose_h<H>.json``,
    action statistics of the TCP targets of ``horizon``-row chunks) if it matches (keys, frame count, state
    min_range), else compute and save it."""
    if action_frame not in ACTION_FRAMES:
        raise ValueError(f"action_frame must be one of {ACTION_FRAMES}, got {action_frame!r}")
    if action_frame != "delta" and not state_key:
        raise ValueError(f"action_frame={action_frame!r} needs the robot state (state_key)")
    path = ds.root / (STATS_FILE if action_frame == "delta" else STATS_FILE.replace(".json", f"_{action_frame}_h{horizon}.json"))
    if path.is_file() and not recompute:
        st = DatasetStats.load(path)
        ex = st.extra
        if ex.get("action_key") == action_key and ex.get("state_key") == state_key \
                and ex.get("num_frames") == ds.num_frames and ex.get("action_frame", "delta") == action_frame \
                and ex.get("state_min_range") == STATE_MIN_RANGE:
            return st
    st = compute_dataset_stats(ds, action_key, state_key)
    if action_frame != "delta":
        st.action = tcp_target_stats(ds, horizon, action_key, state_key)
        st.extra.update(action_frame=action_frame, horizon=int(horizon))
    st.save(path)
    return st


def load_plans(plans) -> dict[str, np.ndarray]:
    """Per-frame plans as a dict: a .safetensors path is read, a dict is returned as is."""
    if isinstance(plans, (str, Path)):
        from safetensors.numpy import load_file
        return load_file(str(plans))
    return plans


class _StageDataset(Dataset):
    def __init__(self, root, image_size: int, window: int, camera: str, nan_policy: str = "skip",
                 reader: LeRobotV3Dataset | None = None, cache_frames: bool = False,
                 trace_convention: str | None = None):
        self.ds = reader if reader is not None else LeRobotV3Dataset(root, nan_policy=nan_policy)
        # cache_frames: decode each (camera, episode) once, sequentially, and keep the native-size uint8 frames
        # in memory (random access into MP4 otherwise re-decodes from a keyframe for every sample). Costs
        # H*W*3 bytes per frame and camera (a 300-episode 128+96 px dataset: ~1.2 GB); per process.
        self.cache_frames = bool(cache_frames)
        self._frames: dict = {}
        self.root = self.ds.root
        self.image_size, self.window, self.camera = int(image_size), int(window), camera
        check_camera_key(self.ds.features, camera, "camera / --image-key", self.root)
        if camera not in self.ds.video_keys:
            raise ValueError(f"{self.root}: camera {camera!r} is stored as images, not video (video keys: "
                             f"{self.ds.video_keys})")
        # layout, convention and image size resolved here (ValueError naming the column and the option)
        self.traces = TraceColumns(self.ds, trace_convention, camera)
        self._valid = np.zeros(self.ds.num_frames, bool)
        self._valid[self.ds.indices] = True  # frames not skipped for non-finite actions

    def _trace(self, e: int, i: int) -> tuple[np.ndarray, bool]:
        """Normalized (window, 2) trace of frame i of episode e (resampled when the dataset's windows have
        another number of points) and whether it is present."""
        wins, pres = self.traces.episode(e)
        win = wins[i]
        if win.shape[0] != self.window:
            win = resample_trace(win, self.window)
        return np.array(win, np.float32), bool(pres[i])

    def _frame(self, key: str, e: int, i: int) -> np.ndarray:
        """Native-size uint8 frame (from the in-memory cache when ``cache_frames``)."""
        if not self.cache_frames:
            return self.ds.get_video_frame(key, e, i)
        ep = self._frames.get((key, e))
        if ep is None:
            ep = np.stack([self.ds.get_video_frame(key, e, j) for j in range(self.ds.episode_length(e))])
            self._frames[(key, e)] = ep
        return ep[i]

    def _image(self, key: str, e: int, i: int, size: int | None = None) -> torch.Tensor:
        return to_chw_float(self._frame(key, e, i), self.image_size if size is None else size)

    def reset_readers(self) -> None:
        """Make sure this process opens its own decoders (the reader parks decoders inherited through fork;
        see ``lerobot_v3._orphan_decoders_after_fork``). Called in each DataLoader worker by ``make_loader``."""
        from semanticvla_core.data.lerobot_v3 import _orphan_decoders_after_fork
        _orphan_decoders_after_fork()

    def __len__(self) -> int:
        return len(self.samples)


class TokenizerDataset(_StageDataset):
    """Stage-1 samples (o_t, o_{t+H}, trace window); see the module docstring for shapes."""

    def __init__(self, root, image_size: int = DEFAULT_IMAGE_SIZE, window: int = DEFAULT_WINDOW,
                 horizon: int = DEFAULT_HORIZON, camera: str = AGENT_CAMERA, only_present: bool = False,
                 with_images: bool = True, **kw):
        super().__init__(root, image_size, window, camera, **kw)
        self.horizon = int(horizon)
        self.with_images = bool(with_images)  # False: traces only (stage A needs no pixels; ~10x faster)
        samples = []
        for e in range(self.ds.num_episodes):
            r = self.ds.episode(e)
            pres = self.traces.episode(e)[1]
            for t in range(len(r) - self.horizon):
                if self._valid[r.start + t] and (pres[t] or not only_present):
                    samples.append((e, t))
        self.samples = np.array(samples, np.int64).reshape(-1, 2)

    def __getitem__(self, k: int) -> dict:
        e, t = (int(v) for v in self.samples[k])
        win, present = self._trace(e, t)
        out = {"trace": torch.from_numpy(win), "trace_present": torch.tensor(present),
               "index": torch.tensor(self.ds.episode(e).start + t)}
        if self.with_images:
            out["image_t"] = self._image(self.camera, e, t)
            out["image_tH"] = self._image(self.camera, e, t + self.horizon)
        return out


class VLMDataset(_StageDataset):
    """Stage-2 samples (image, instruction, anchors, latent ids, trace); see the module docstring."""

    def __init__(self, root, image_size: int = DEFAULT_IMAGE_SIZE, window: int = DEFAULT_WINDOW,
                 num_anchors: int = DEFAULT_NUM_ANCHORS, latent_ids=None, camera: str = AGENT_CAMERA,
                 wrist_camera: str | None = WRIST_CAMERA, only_present: bool = True, **kw):
        super().__init__(root, image_size, window, camera, **kw)
        self.num_anchors = int(num_anchors)
        self.wrist_camera = resolve_wrist_key(self.ds.features, wrist_camera, self.root)
        self.latent_ids = None if latent_ids is None else load_latent_ids(latent_ids, self.ds.num_frames)
        self.samples = self._select(only_present)

    def _select(self, only_present: bool, horizon_needed: int = 0) -> np.ndarray:
        samples = []
        for e in range(self.ds.num_episodes):
            r = self.ds.episode(e)
            pres = self.traces.episode(e)[1]
            for t in range(len(r) - horizon_needed):
                g = r.start + t
                if not self._valid[g] or (only_present and not pres[t]):
                    continue
                if self.latent_ids is not None and np.any(self.latent_ids[g] < 0):
                    continue
                samples.append((e, t))
        return np.array(samples, np.int64).reshape(-1, 2)

    def _vlm_sample(self, e: int, t: int) -> dict:
        win, present = self._trace(e, t)
        g = self.ds.episode(e).start + t
        out = {"image": self._image(self.camera, e, t), "instruction": self.ds.task(e),
               "anchors": torch.from_numpy(resample_trace(win, self.num_anchors)), "trace": torch.from_numpy(win),
               "trace_present": torch.tensor(present), "index": torch.tensor(g)}
        if self.wrist_camera:
            out["wrist_image"] = self._image(self.wrist_camera, e, t)
        if self.latent_ids is not None:
            out["latent_ids"] = torch.from_numpy(self.latent_ids[g].copy())
        return out

    def __getitem__(self, k: int) -> dict:
        e, t = (int(v) for v in self.samples[k])
        return self._vlm_sample(e, t)


class ActionDataset(VLMDataset):
    """Stage-3 samples: VLM keys + normalized action chunk (H, D), ``actions_pad`` (H,), normalized state (+
    ``image_age``, frames the images are older than the state, with ``image_delay_max``)."""

    def __init__(self, root, image_size: int = DEFAULT_IMAGE_SIZE, window: int = DEFAULT_WINDOW,
                 num_anchors: int = DEFAULT_NUM_ANCHORS, latent_ids=None, horizon: int = DEFAULT_HORIZON,
                 stats: DatasetStats | None = None, camera: str = AGENT_CAMERA,
                 wrist_camera: str | None = WRIST_CAMERA, action_key: str = "action",
                 state_key: str | None = "observation.state", with_image_tH: bool = False,
                 only_present: bool = True, recompute_stats: bool = False, stem_image_size: int = 0,
                 stem_wrist_size: int = 0, plans=None, action_frame: str = "delta", image_delay_max: int = 0,
                 image_delay_p0: float | None = None, **kw):
        super().__init__(root, image_size, window, num_anchors, latent_ids, camera, wrist_camera, only_present, **kw)
        # the images (and the VLM's plan of them) of a sample come from up to this many frames before its state and
        # actions, uniformly: trains the decoder for the run-time loop that decodes a plan with the fresh state
        if int(image_delay_max) < 0:
            raise ValueError(f"image_delay_max must be >= 0 frames, got {image_delay_max}")
        self.image_delay_max = int(image_delay_max)
        # the share of samples with no delay (None: uniform over 0..max, 1 / (max + 1)); keeping it high keeps what a
        # synchronous loop (no delay) needs while the rest teach the delayed case
        if image_delay_p0 is not None and not 0.0 <= float(image_delay_p0) <= 1.0:
            raise ValueError(f"image_delay_p0 must be in [0, 1], got {image_delay_p0}")
        self.image_delay_p0 = None if image_delay_p0 is None else float(image_delay_p0)
        self.stem_image_size, self.stem_wrist_size = int(stem_image_size), int(stem_wrist_size)
        self.plans, self._plan_row = None, None
        if plans is not None:
            self.set_plans(plans)
        if self.stem_wrist_size and not self.wrist_camera:
            raise ValueError(f"{self.root}: the visual stem wants a wrist camera but there is none "
                             f"(wrist_camera / --wrist-key {wrist_camera!r}); the dataset's camera keys are "
                             f"{self.ds.video_keys}")
        if action_key not in self.ds.features:
            raise ValueError(f"{self.root}: no action column {action_key!r}")
        if state_key is not None and state_key not in self.ds.features:
            raise ValueError(f"{self.root}: no state column {state_key!r} (pass state_key=None to go without)")
        self.horizon, self.action_key, self.state_key = int(horizon), action_key, state_key
        self.with_image_tH = bool(with_image_tH)
        self.action_frame = action_frame
        self.stats = stats if stats is not None else load_or_compute_stats(self.ds, action_key, state_key,
                                                                           recompute_stats, action_frame, horizon)
        if self.stats.action is None or (state_key is not None and self.stats.state is None):
            raise ValueError("ActionDataset: stats lack action or state statistics")
        if self.with_image_tH:  # o_{t+H} must exist
            self.samples = self._select(only_present, self.horizon)

    def set_plans(self, plans) -> None:
        """The VLM's own plans per frame (``{"index": (F,), "anchors": (F, N, 2), "latent_ids": (F, K)}``, and
        with a frozen VLM its features, or a .safetensors file of it, from ``stage3_e2e.precompute_plans``):
        samples then carry ``plan_<key>`` for every key (``plan_anchors``, ``plan_latent_ids``, ...). Every
        sample's frame must have a plan."""
        plans = load_plans(plans)
        idx = np.asarray(plans["index"], np.int64)
        row = np.full(self.ds.num_frames, -1, np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.ds.num_frames):
            raise ValueError(f"plans: frame index out of range 0..{self.ds.num_frames - 1}")
        row[idx] = np.arange(len(idx))
        need = np.array([self.ds.episode(int(e)).start + int(t) for e, t in self.samples], np.int64)
        if need.size and (row[need] < 0).any():
            raise ValueError(f"plans: {int((row[need] < 0).sum())} sample frames have no plan")
        self.plans, self._plan_row = {k: np.asarray(v) for k, v in plans.items() if k != "index"}, row

    def wrist_mount(self) -> np.ndarray | None:
        """T_tcp_cam (4x4) of the wrist camera from its calibration (``cameras.py``: the feature's ``info``, or
        ``meta/cameras.json``; ``collect_demos`` writes it), or None."""
        cams = self.ds.meta.cameras or {}
        m = (cams.get(self.wrist_camera) or {}).get("T_tcp_cam") if self.wrist_camera else None
        return None if m is None else np.asarray(m, np.float64).reshape(4, 4)

    def keypoint_targets(self, gripper_index: int = -1) -> dict[str, np.ndarray]:
        """Where the manipulated object and its destination are in the agent view, for every frame
        (``traces.object_keypoints`` on each episode's trace and gripper command, action column
        ``gripper_index``): ``{"index": (F,), "keypoint_uv": (F, 2, 2) normalized [object, destination],
        "keypoint_valid": (F, 2)}``; merge into ``set_plans`` to give samples ``plan_keypoint_uv`` /
        ``plan_keypoint_valid`` (the targets of ``Stage3Config.lambda_keypoints``).

        When the wrist camera's mount is known (:meth:`wrist_mount`) and the state is the 15-D robot state, the
        same two points in the *wrist* view as well (``wrist_keypoint_uv`` / ``wrist_keypoint_valid``): the TCP
        positions where the demonstration grasps and places, projected through each frame's wrist camera
        (T_world_tcp from ``observation.state`` times the mount); invalid where behind it or outside the image."""
        F = self.ds.num_frames
        uv, ok = np.zeros((F, 2, 2), np.float32), np.zeros((F, 2), bool)
        mount = self.wrist_mount()
        wrist = mount is not None and self.state_key is not None and \
            int(np.prod(self.ds.features[self.state_key]["shape"])) == STATE_DIM
        if wrist:
            wcam = self.ds.camera(self.wrist_camera)
            wuv, wok = np.zeros((F, 2, 2), np.float32), np.zeros((F, 2), bool)
        for e in range(self.ds.num_episodes):
            keys = [self.action_key] + ([self.state_key] if wrist else [])
            cols = self.ds.get_columns(e, keys)
            L = self.ds.episode_length(e)
            acts = np.asarray(cols[self.action_key], np.float64).reshape(L, -1)
            wins, pres = self.traces.episode(e)
            pts, valid = object_keypoints(acts[:, gripper_index], wins[:, 0], pres)
            s = self.ds.episode(e).start
            uv[s:s + L], ok[s:s + L] = pts, valid
            if wrist:
                states = np.asarray(cols[self.state_key], np.float64).reshape(L, -1)
                p3, v3 = object_keypoints(acts[:, gripper_index], states[:, TCP_POS])
                for t in range(L):
                    p, R = tcp_pose_from_state(states[t])
                    cam = dataclasses.replace(wcam, T_world_cam=pose_matrix(R, p) @ mount)
                    q, vis = cam.project_normalized(p3[t].astype(np.float64))
                    wuv[s + t], wok[s + t] = np.clip(q, 0.0, 1.0), v3[t] & vis
        out = {"index": np.arange(F, dtype=np.int64), "keypoint_uv": uv, "keypoint_valid": ok}
        if wrist:
            out.update(wrist_keypoint_uv=wuv, wrist_keypoint_valid=wok)
        return out

    def __getitem__(self, k: int) -> dict:
        e, t = (int(v) for v in self.samples[k])
        ti = t                                  # the frame the images (and the plan) come from
        if self.image_delay_max:
            if self.image_delay_p0 is None:
                k = int(np.random.randint(0, self.image_delay_max + 1))
            else:
                k = 0 if np.random.random() < self.image_delay_p0 else int(np.random.randint(1, self.image_delay_max + 1))
            ti = max(0, t - k)
            if self.plans is not None and self._plan_row[self.ds.episode(e).start + ti] < 0:
                ti = t                          # (no plan of that frame: no delay for this sample)
        out = self._vlm_sample(e, ti)
        if self.image_delay_max:
            out["image_age"] = torch.tensor(float(t - ti))    # frames (control steps) the images are older than the state
        if self.plans is not None:
            r = self._plan_row[self.ds.episode(e).start + ti]
            for key, col in self.plans.items():     # plan_anchors, plan_latent_ids (+ frozen-VLM features)
                v = col[r]
                dtype = np.int64 if key == "latent_ids" else (bool if key.endswith("keypoint_valid") else np.float32)
                out["plan_" + key] = torch.from_numpy(np.array(v, dtype))
        keys = [self.action_key] + ([self.state_key] if self.state_key else [])
        cols = self.ds.get_columns(e, keys)
        acts = np.asarray(cols[self.action_key], np.float64).reshape(self.ds.episode_length(e), -1)
        T = len(acts)
        idx = t + np.arange(self.horizon)
        pad = idx >= T
        chunk = acts[np.minimum(idx, T - 1)].copy()
        bad = ~np.all(np.isfinite(chunk), axis=1)
        if bad.any():  # a non-finite future action ends the usable chunk
            first = int(np.argmax(bad))
            pad[first:] = True
        last = chunk[0] if not pad[0] else acts[t]
        for j in range(self.horizon):
            if pad[j]:
                chunk[j] = last
            else:
                last = chunk[j]
        st = np.asarray(cols[self.state_key][t], np.float64).reshape(-1) if self.state_key else None
        if self.action_frame == "tcp_pose":     # rows = the TCP targets the chunk steps through
            chunk = deltas_to_tcp_targets(st, chunk)
        out["actions"] = torch.from_numpy(self.stats.action.normalize(chunk).astype(np.float32))
        out["actions_pad"] = torch.from_numpy(pad)
        if self.state_key:
            out["state"] = torch.from_numpy(self.stats.state.normalize(st).astype(np.float32))
        if self.with_image_tH:
            out["image_tH"] = self._image(self.camera, e, t + self.horizon)
        if self.stem_image_size:
            out["stem_image"] = self._image(self.camera, e, ti, self.stem_image_size)
        if self.stem_wrist_size:
            out["stem_wrist"] = self._image(self.wrist_camera, e, ti, self.stem_wrist_size)
        return out


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)
    info = torch.utils.data.get_worker_info()
    np.random.seed((info.seed if info else worker_id) % (2 ** 32))
    ds = info.dataset if info else None
    while ds is not None and not hasattr(ds, "reset_readers") and hasattr(ds, "dataset"):
        ds = ds.dataset  # Subset / wrappers
    if ds is not None and hasattr(ds, "reset_readers"):
        ds.reset_readers()  # never share file offsets of open decoders with the parent after fork


def make_loader(dataset: Dataset, batch_size: int = 8, num_workers: int | None = None, shuffle: bool = True,
                drop_last: bool = True, seed: int = 0, prefetch_factor: int = 4,
                multiprocessing_context: str | None = "forkserver", **kw) -> DataLoader:
    """A DataLoader with sensible defaults for this project: ``default_num_workers()`` workers (1 on 2 cores),
    persistent workers, per-worker single-threaded torch and fresh decoders, seeded shuffling. Strings
    (``instruction``) collate into lists.

    Workers start through ``forkserver`` by default: a plain ``fork`` of a process that has used FFmpeg's
    thread pools (any decoded or encoded video) can deadlock in the child. Scripts that use workers need the
    usual ``if __name__ == "__main__":`` guard.
    """
    nw = default_num_workers() if num_workers is None else int(num_workers)
    g = torch.Generator()
    g.manual_seed(seed)
    extra = dict(persistent_workers=True, prefetch_factor=prefetch_factor, worker_init_fn=_worker_init,
                 multiprocessing_context=multiprocessing_context) if nw > 0 else {}
    extra.update(kw)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=nw, drop_last=drop_last,
                      generator=g, **extra)
