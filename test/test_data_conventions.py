"""Data from other conventions: trace layouts (per-frame windows, one point per frame, the observation.trace.xy
pair) in [0, 1], 0-100 and pixel coordinates, camera keys as options, and camera calibration that survives
lerobot's dataset edits.

The foreign datasets are built as their authors build them: a LeRobot v3 dataset (here: state, action, task and
two cameras named as in LIBERO's lerobot conversion, written by the project's writer, which lerobot 0.6.1 reads
bit-exactly) whose data Parquet files get trace columns appended with pyarrow and whose meta/info.json gets their
features, the way the authors' tools/rlds_to_lerobot scripts do (convert_v21_to_v30_tracex.py: scalar trace.x /
trace.y on a 0-100 scale, no convention recorded; add_trace_column.py: observation.trace.xy with
info.coordinate_space = normalized_image_xy_0_100; DATASETS.md: 12-anchor arrays + trace.present).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_fixtures import AGENT, WRIST, frame_image, make_dataset, synthetic_camera
from semanticvla_core.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer, load_meta
from semanticvla_core.data.pipelines import ActionDataset, TokenizerDataset, VLMDataset, compute_dataset_stats
from semanticvla_core.data.tracex import TraceColumns, normalize_trace
from semanticvla_core.traces import trace_windows

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
CAM, WRIST_CAM = "observation.images.image", "observation.images.wrist_image"   # LIBERO's lerobot names
H, W = 48, 64            # agent view: width != height, so an x/y mix-up shows
LENGTHS = (16, 18, 14)


def _cli(name: str):
    spec = importlib.util.spec_from_file_location(f"cli_{name}", ROOT / "training" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _track(e: int, T: int) -> np.ndarray:
    """The end-effector's true image track of episode e, (T, 2) normalized (camera.py convention)."""
    s = np.linspace(0.0, 1.0, T)
    return np.stack([0.15 + 0.7 * s, 0.5 + 0.3 * np.sin(2.0 * s + e)], -1)


def _to_convention(uv: np.ndarray, convention: str) -> np.ndarray:
    """Written independently of tracex: normalized -> pixels (OpenCV centres) -> the authors' 0-100 scale."""
    px = uv * np.array([W, H]) - 0.5
    return {"unit": uv, "pixel": px, "percent": px / np.array([W - 1, H - 1]) * 100.0}[convention]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """State, action, task, two cameras under their LIBERO names; no traces."""
    root = tmp_path_factory.mktemp("conv") / "base"
    feats = {CAM: {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"]},
             WRIST_CAM: {"dtype": "video", "shape": [32, 32, 3], "names": ["height", "width", "channels"]},
             "observation.state": {"dtype": "float32", "shape": [9], "names": None},
             "action": {"dtype": "float32", "shape": [7], "names": None}}
    rng = np.random.default_rng(0)
    w = LeRobotV3Writer(root, fps=20, features=feats)
    for e, T in enumerate(LENGTHS):
        for i in range(T):
            w.add_frame({CAM: frame_image(e, i, H, W), WRIST_CAM: frame_image(e + 1, i, 32, 32, seed=1),
                         "observation.state": rng.normal(size=9).astype(np.float32),
                         "action": np.r_[rng.normal(size=6), float(T // 3 <= i < 2 * T // 3)].astype(np.float32)})
        w.save_episode(task=f"put the {'red' if e % 2 == 0 else 'blue'} bowl on the plate")
    w.finalize()
    return root


def add_traces(root: Path, layout: str, convention: str, metadata: bool = False, present=None,
               null_episodes=()) -> None:
    """Append trace columns to every data file (pyarrow) and their features to meta/info.json.

    layout: "window" (trace.x / trace.y float32[12] of frames t..t+11, last repeated), "point" (one float per
    frame), "pair" (observation.trace.xy float32[2]); metadata: record the convention in the column's
    info.coordinate_space; present: per-frame bool array over the global index (a trace.present column), or None;
    null_episodes: episodes whose trace values are null (no trace)."""
    info = json.loads((root / "meta/info.json").read_text())
    eps = load_meta(root).episodes
    total = sum(int(e["length"]) for e in eps)
    raw = np.zeros((total, 2))
    for e, rec in enumerate(eps):
        a, T = int(rec["dataset_from_index"]), int(rec["length"])
        raw[a:a + T] = _to_convention(_track(e, T), convention)
    null = np.zeros(total, bool)
    for e in null_episodes:
        null[int(eps[e]["dataset_from_index"]):int(eps[e]["dataset_to_index"])] = True
    space = {"percent": "normalized_image_xy_0_100", "pixel": "image_xy_pixels", "unit": "normalized_image_xy_0_1"}
    ft_info = {"info": {"coordinate_space": space[convention]}} if metadata else {}
    if layout == "window":
        cols = {}
        for k, name in enumerate(("trace.x", "trace.y")):
            win = np.zeros((total, 12), np.float32)
            for e, rec in enumerate(eps):
                a, T = int(rec["dataset_from_index"]), int(rec["length"])
                idx = np.minimum(np.arange(T)[:, None] + np.arange(12), T - 1)
                win[a:a + T] = raw[a:a + T, k][idx]
            cols[name] = win
        feats = {n: {"dtype": "float32", "shape": [12], "names": None, **copy.deepcopy(ft_info)} for n in cols}
    elif layout == "point":
        cols = {"trace.x": raw[:, 0].astype(np.float32), "trace.y": raw[:, 1].astype(np.float32)}
        feats = {n: {"dtype": "float32", "shape": [1], "names": [n[-1]], "fps": 20, **copy.deepcopy(ft_info)}
                 for n in cols}
    else:
        cols = {"observation.trace.xy": raw.astype(np.float32)}
        feats = {"observation.trace.xy": {"dtype": "float32", "shape": [2], "names": ["x", "y"], **ft_info}}
    if present is not None:
        cols["trace.present"] = np.asarray(present, bool)
        feats["trace.present"] = {"dtype": "bool", "shape": [1], "names": None}
    for path in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        g = table.column("index").to_numpy()
        for name, values in cols.items():
            v = values[g]
            if v.dtype == bool:
                arr = pa.array(v)
            elif v.ndim == 1:
                arr = pa.array(v, mask=null[g])
            else:
                arr = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), mask=np.repeat(null[g], v.shape[1])),
                                                        v.shape[1])
            table = table.append_column(name, arr)
        pq.write_table(table, path)
    info["features"].update(feats)
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))


def _copy(base: Path, tmp_path: Path, name: str = "ds") -> Path:
    root = tmp_path / name
    shutil.copytree(base, root)
    return root


def _expected(e: int) -> np.ndarray:
    return trace_windows(_track(e, LENGTHS[e]).astype(np.float32), None, 12)[0]


# ------------------------------------------------------------------------------------------------ layouts
CASES = [("window", "pixel", False), ("window", "percent", False), ("point", "pixel", False),
         ("point", "percent", False), ("pair", "pixel", False), ("pair", "percent", True), ("window", "unit", True)]


@pytest.mark.parametrize("layout,convention,metadata", CASES)
def test_every_layout_and_convention_reads_the_same_normalized_windows(base, tmp_path, layout, convention, metadata):
    """Arrays, one point per frame (windows built from the following frames of the episode, the last point
    repeated at its end) and the (x, y) pair, in pixels and on the 0-100 scale, all read as the same [0, 1]
    windows: the convention from the column's info.coordinate_space where it is written, else the option."""
    root = _copy(base, tmp_path)
    present = np.ones(sum(LENGTHS), bool) if layout == "window" else None
    add_traces(root, layout, convention, metadata=metadata, present=present)
    ds = LeRobotV3Dataset(root)
    option = None if metadata else convention
    tc = TraceColumns(ds, trace_convention=option, camera=CAM)
    assert tc.convention == convention and (tc.source.startswith("meta/info.json") == metadata)
    for e in range(len(LENGTHS)):
        win, pres = tc.episode(e)
        assert win.shape == (LENGTHS[e], 12, 2) and win.dtype == np.float32 and pres.all()
        np.testing.assert_allclose(win, _expected(e), atol=2e-6)
    # the stage pipelines read the same windows (no image decoding needed for this)
    tok = TokenizerDataset(root, image_size=32, window=12, horizon=4, camera=CAM, trace_convention=option,
                           with_images=False)
    s = tok[7]
    e, t = ds.episode_of(int(s["index"]))
    np.testing.assert_allclose(s["trace"].numpy(), _expected(e)[t], atol=2e-6)


def test_percent_goes_to_pixels_as_the_authors_map_it_then_to_camera_coordinates():
    """0-100 -> pixels as value / 100 * (size - 1) (the authors' loader), pixels -> (px + 0.5) / size."""
    pct = np.array([[0.0, 0.0], [100.0, 100.0], [50.0, 25.0]])
    want_px = pct / 100.0 * np.array([W - 1, H - 1])
    np.testing.assert_allclose(normalize_trace(pct, "percent", (W, H)), (want_px + 0.5) / np.array([W, H]), atol=1e-7)
    np.testing.assert_allclose(normalize_trace(want_px, "pixel", (W, H)), (want_px + 0.5) / np.array([W, H]), atol=1e-7)
    np.testing.assert_array_equal(normalize_trace(pct / 100, "unit"), (pct / 100).astype(np.float32))


def test_presence_per_frame_and_per_episode(base, tmp_path):
    """Without a presence column an episode has a trace when all its values are there (null: none); with one,
    a point-layout window needs its first point present and at least half of its points (trace_windows)."""
    root = _copy(base, tmp_path, "episode")
    add_traces(root, "point", "percent", null_episodes=(1,))
    tc = TraceColumns(LeRobotV3Dataset(root), trace_convention="percent", camera=CAM)
    assert tc.episode(0)[1].all() and not tc.episode(1)[1].any() and tc.episode(2)[1].all()
    assert np.isfinite(tc.episode(1)[0]).all()
    vlm = VLMDataset(root, image_size=32, camera=CAM, trace_convention="percent")
    assert sorted({int(e) for e in vlm.samples[:, 0]}) == [0, 2]        # only_present: episode 1 left out

    flags = np.ones(sum(LENGTHS), bool)
    flags[[3, 4, 5]] = False                                            # episode 0, frames 3-5
    root = _copy(base, tmp_path, "frame")
    add_traces(root, "pair", "pixel", present=flags)
    win, ok = TraceColumns(LeRobotV3Dataset(root), trace_convention="pixel", camera=CAM).episode(0)
    _, want = trace_windows(_track(0, LENGTHS[0]).astype(np.float32), flags[:LENGTHS[0]], 12)
    np.testing.assert_array_equal(ok, want)
    assert not ok[3:6].any() and ok[:3].all() and ok[6:].all()


def test_missing_or_wrong_convention_blocks_only_the_traces(base, tmp_path, capsys):
    """Pixel or 0-100 traces whose dataset does not state the convention: state, action, task and images read
    as always; asking for the traces is an error naming the column and --trace-convention."""
    root = _copy(base, tmp_path, "point")
    add_traces(root, "point", "percent")                 # as the authors' v3 repacker: no convention recorded
    ds = LeRobotV3Dataset(root)                          # check=True reads and validates every data file
    fr = ds.frame(1, 5)
    assert fr["observation.state"].shape == (9,) and fr["action"].shape == (7,) and fr[CAM].shape == (H, W, 3)
    assert fr["task"] == "put the blue bowl on the plate" and len(ds) == sum(LENGTHS)
    assert compute_dataset_stats(ds).action.dim == 7
    with pytest.raises(ValueError, match=r"trace\.x / trace\.y \(one point per frame\): .*states no coordinate "
                                         r"convention.*--trace-convention"):
        TraceColumns(ds, camera=CAM)
    with pytest.raises(ValueError, match=r"trace\.x values outside \[0, 1\] \(unit\).*trace_convention='unit'"):
        TraceColumns(ds, trace_convention="unit", camera=CAM).episode(0)
    with pytest.raises(ValueError, match="--trace-convention"):
        TokenizerDataset(root, camera=CAM)
    assert _cli("stage1_tokenizer").main(["--dataset", str(root), "--image-key", CAM, "--out",
                                          str(tmp_path / "s1"), "--no-progress"]) == 2
    assert "--trace-convention" in capsys.readouterr().err

    root = _copy(base, tmp_path, "window")
    add_traces(root, "window", "pixel", present=np.ones(sum(LENGTHS), bool))   # DATASETS.md arrays, in pixels
    ds = LeRobotV3Dataset(root)
    assert ds.frame(2, 0, video=False)["action"].shape == (7,)
    with pytest.raises(ValueError, match=r"episode 0, frame 0: trace\.x values outside \[0, 1\] \(unit\).*states "
                                         r"no coordinate convention.*--trace-convention"):
        TraceColumns(ds, camera=CAM).episode(0)

    root = _copy(base, tmp_path, "pair")
    add_traces(root, "pair", "percent", metadata=True)                        # add_trace_column.py
    with pytest.raises(ValueError, match=r"observation\.trace\.xy: the dataset states its convention .*"
                                         r"normalized_image_xy_0_100.*'pixel' was given \(--trace-convention\)"):
        TraceColumns(LeRobotV3Dataset(root), trace_convention="pixel", camera=CAM)


def test_annotating_a_dataset_with_pixel_traces_writes_unit_traces_and_their_convention(base, tmp_path):
    """annotate_traces.py on a dataset whose trace columns hold pixels (it exited 2 before): the new columns
    replace them, in [0, 1], with the convention and the camera recorded in their feature info."""
    root = _copy(base, tmp_path)
    add_traces(root, "window", "pixel", present=np.ones(sum(LENGTHS), bool))
    points = {str(e): {"0": _track(e, T)[0].tolist()} for e, T in enumerate(LENGTHS)}
    (tmp_path / "points.json").write_text(json.dumps(points))
    args = ["--dataset", str(root), "--method", "track", "--tracker", "identity", "--keyframe-points",
            str(tmp_path / "points.json"), "--overlay-episodes", "0"]
    annotate = _cli("annotate_traces")
    assert annotate.main([*args, "--image-key", "observation.images.agentview"]) == 2
    assert annotate.main([*args, "--image-key", CAM]) == 0
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"]["trace.x"]["info"] == {"coordinate_space": "normalized_image_xy_0_1", "camera": CAM}
    win, ok = TraceColumns(LeRobotV3Dataset(root)).episode(0)     # no option needed any more
    np.testing.assert_allclose(win[0, 0], _track(0, LENGTHS[0])[0], atol=1e-6)


def test_the_writer_records_the_trace_convention(tmp_path):
    make_dataset(tmp_path / "ds", lengths=(4,), wrist=None)
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    for k in ("trace.x", "trace.y"):
        assert info["features"][k]["info"]["coordinate_space"] == "normalized_image_xy_0_1"
    with pytest.raises(ValueError, match="stores traces in \\[0, 1\\]"):
        LeRobotV3Writer(tmp_path / "bad", 20, {"trace.x": {"dtype": "float32", "shape": [12],
                                                           "info": {"coordinate_space": "normalized_image_xy_0_100"}}})


# ------------------------------------------------------------------------------------------------ camera keys
def test_a_missing_camera_key_lists_the_datasets_cameras(base, tmp_path, capsys):
    root = _copy(base, tmp_path)
    add_traces(root, "pair", "percent", metadata=True)
    keys = rf"\['{CAM}', '{WRIST_CAM}'\]"
    with pytest.raises(ValueError, match=rf"no camera 'observation\.images\.agentview' \(camera / --image-key\); "
                                         rf"the dataset's camera keys are {keys}"):
        TokenizerDataset(root)
    with pytest.raises(ValueError, match=rf"no camera 'observation\.images\.nope' \(--wrist-key\).*{keys}"):
        VLMDataset(root, image_size=32, camera=CAM, wrist_camera="observation.images.nope")
    assert VLMDataset(root, image_size=32, camera=CAM).wrist_camera is None          # default key: optional
    assert VLMDataset(root, image_size=32, camera=CAM, wrist_camera=WRIST_CAM)[0]["wrist_image"].shape == (3, 32, 32)
    assert _cli("stage1_tokenizer").main(["--dataset", str(root), "--out", str(tmp_path / "s1"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--image-key" in err and CAM in err and WRIST_CAM in err


@pytest.mark.parametrize("layout,convention,metadata", CASES[:6])
def test_stages_1_2_3_through_the_clis_with_other_camera_keys(base, tmp_path, layout, convention, metadata):
    """Each layout in pixels and on the 0-100 scale, under LIBERO's camera names: stage 1 (+ latent labels),
    stage 2 and stage 3 (with a wrist stem, so the wrist key is read) train through the CLIs with --image-key /
    --wrist-key, and --trace-convention where the dataset does not state its convention."""
    root = _copy(base, tmp_path)
    add_traces(root, layout, convention, metadata=metadata,
               present=np.ones(sum(LENGTHS), bool) if layout == "window" else None)
    data = ["--dataset", str(root), "--image-key", CAM] + ([] if metadata else ["--trace-convention", convention])
    common = ["--batch-size", "4", "--num-workers", "0", "--no-progress", "--save-every", "0", "--threads", "1",
              "--eval-fraction", "0.34"]
    assert _cli("stage1_tokenizer").main([*data, "--out", str(tmp_path / "s1"), "--steps-a", "2", "--steps-b", "2",
                                          "--label-latents", *common]) == 0
    tok = tmp_path / "s1" / "tokenizer"
    ids = tok / "latent_ids.safetensors"
    from safetensors.numpy import load_file
    lat = load_file(str(ids))["latent_ids"]
    assert lat.shape[0] == sum(LENGTHS) and (lat >= 0).any()
    data += ["--wrist-key", WRIST_CAM]
    assert _cli("stage2_vlm").main([*data, "--latent-tokenizer", str(tok), "--latent-ids", str(ids),
                                    "--out", str(tmp_path / "s2"), "--steps", "2", *common]) == 0
    stem = '{"image_size": 32, "wrist_size": 24, "channels": 8, "keypoints": 4}'
    assert _cli("stage3_e2e").main([*data, "--init-from", str(tmp_path / "s2" / "policy"), "--latent-ids", str(ids),
                                    "--out", str(tmp_path / "s3"), "--steps", "2", "--set", f"stem={stem}",
                                    *common]) == 0
    for phase, steps in (("s1/stage_a", 2), ("s1/stage_b", 2), ("s2/vlm", 2), ("s3/e2e", 2)):
        rows = [json.loads(r) for r in (tmp_path / phase / "metrics.jsonl").read_text().splitlines() if r.strip()]
        assert rows[-1]["step"] == steps and all(np.isfinite(r["loss"]) for r in rows), phase
    from semanticvla_core.policy import SemanticVLAPolicy
    pol = SemanticVLAPolicy.from_pretrained(tmp_path / "s3" / "policy")
    assert pol.config.stem.wrist_size == 24 and pol.config.state_dim == 9
    # with --wrist-key none the stem's wrist input is missing: refused naming the option and the cameras
    assert _cli("stage3_e2e").main([*data[:-2], "--wrist-key", "none", "--init-from", str(tmp_path / "s2" / "policy"),
                                    "--latent-ids", str(ids), "--out", str(tmp_path / "bad"), "--steps", "1",
                                    "--set", f"stem={stem}", *common]) == 2


# ------------------------------------------------------------------------------------------------ calibration
_INFO_FIELDS = ("codebase_version", "fps", "features", "total_episodes", "total_frames", "total_tasks",
                "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "data_path", "video_path",
                "robot_type", "splits")     # lerobot's DatasetInfo: other top-level keys are dropped


def _delete_first_episode_as_lerobot_does(src: Path, dst: Path) -> None:
    """lerobot.datasets.dataset_tools.delete_episodes(dataset, [0], output_dir=dst) when lerobot is installed;
    else its effect on the files: a new dataset whose meta/info.json is rebuilt from the source's features
    (LeRobotDatasetMetadata.create + the video features' info copied), with data, episodes and tasks re-indexed
    and no other file of meta/ (meta/cameras.json, meta/semanticvla_stats.json...)."""
    if importlib.util.find_spec("lerobot") is not None:
        from lerobot.datasets.dataset_tools import delete_episodes
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
        delete_episodes(LeRobotDataset("local/src", root=src), [0], output_dir=dst)
        return
    meta = load_meta(src)
    n0 = int(meta.episodes[0]["length"])
    info = {k: copy.deepcopy(meta.info[k]) for k in _INFO_FIELDS if k in meta.info}
    info.update(total_episodes=len(meta.episodes) - 1, total_frames=int(meta.info["total_frames"]) - n0,
                splits={"train": f"0:{len(meta.episodes) - 1}"})
    (dst / "meta").mkdir(parents=True)
    (dst / "meta/info.json").write_text(json.dumps(info, indent=4))
    shutil.copy(src / "meta/stats.json", dst / "meta/stats.json")
    shutil.copy(src / "meta/tasks.parquet", dst / "meta/tasks.parquet")
    shutil.copytree(src / "videos", dst / "videos")          # kept episodes keep their from/to timestamps
    for p in (src / "data").rglob("*.parquet"):
        t = pq.read_table(p)
        t = t.filter(pa.array(t.column("episode_index").to_numpy() != 0))
        for col in ("episode_index", "index"):
            t = t.set_column(t.column_names.index(col), col,
                             pa.array(t.column(col).to_numpy() - (1 if col == "episode_index" else n0)))
        out = dst / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, out)
    for p in (src / "meta/episodes").rglob("*.parquet"):
        t = pq.read_table(p)
        t = t.filter(pa.array(t.column("episode_index").to_numpy() != 0))
        for col, d in (("episode_index", 1), ("dataset_from_index", n0), ("dataset_to_index", n0)):
            t = t.set_column(t.column_names.index(col), col, pa.array(t.column(col).to_numpy() - d))
        out = dst / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, out)


def test_camera_calibration_survives_lerobot_delete_episodes(tmp_path):
    """Calibration lives in each camera feature's info in meta/info.json, which lerobot's dataset tools keep;
    meta/cameras.json (dropped by them) is only a mirror, and the fallback for datasets written before."""
    cam = synthetic_camera(64, 48)
    mount = np.eye(4)
    mount[:3, 3] = [0.0, 0.05, 0.1]
    wrist = {**synthetic_camera(32, 32).to_dict(), "T_tcp_cam": mount.tolist()}
    src = tmp_path / "src"
    make_dataset(src, lengths=(6, 7, 8), cameras={AGENT: cam, WRIST: wrist})
    info = json.loads((src / "meta/info.json").read_text())
    assert info["features"][AGENT]["info"]["camera_calibration"] == cam.to_dict()
    assert info["features"][AGENT]["info"]["video.codec"] == "h264"                 # lerobot's own keys stay
    dst = tmp_path / "edited"
    _delete_first_episode_as_lerobot_does(src, dst)
    assert not (dst / "meta/cameras.json").exists()
    ds, old = LeRobotV3Dataset(dst), LeRobotV3Dataset(src)
    assert ds.num_episodes == 2 and len(ds) == 15
    np.testing.assert_array_equal(ds.get_columns(0, ["action"])["action"], old.get_columns(1, ["action"])["action"])
    assert ds.camera(AGENT).to_dict() == cam.to_dict()
    act = ActionDataset(dst, image_size=32, horizon=4)
    np.testing.assert_array_equal(act.wrist_mount(), mount)

    # a dataset written before (calibration only in meta/cameras.json) still reads it
    legacy = tmp_path / "legacy"
    shutil.copytree(src, legacy)
    info = json.loads((legacy / "meta/info.json").read_text())
    for k in (AGENT, WRIST):
        del info["features"][k]["info"]["camera_calibration"]
    (legacy / "meta/info.json").write_text(json.dumps(info))
    assert LeRobotV3Dataset(legacy).camera(AGENT).to_dict() == cam.to_dict()
    (legacy / "meta/cameras.json").unlink()
    with pytest.raises(ValueError, match=r"no calibration for camera 'observation\.images\.agentview'"):
        LeRobotV3Dataset(legacy).camera(AGENT)
