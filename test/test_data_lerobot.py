"""LeRobot v3 writer/reader: round trip, roll-over, random access, lerobot 0.4.4 layout, bad input, atomicity."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_fixtures import AGENT, WRIST, default_features, frame_image, make_dataset
from semanticvla_core.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer, load_meta
from semanticvla_core.data.tracex import TraceColumns

CODEC_TOL = 8.0  # mean absolute pixel error (0..255) allowed after lossy encoding of the smooth test images


def _compare(ds, truth, exact_only=False):
    for e, i, fr in truth:
        got = ds.frame(e, i, video=not exact_only)
        for k, v in fr.items():
            if k in (AGENT, WRIST):
                err = np.abs(got[k].astype(np.int16) - v.astype(np.int16)).mean()
                assert got[k].dtype == np.uint8 and got[k].shape == v.shape
                assert err < CODEC_TOL, (k, e, i, err)
            elif k == "trace.present":
                assert got[k].dtype == np.bool_ and got[k].shape == () and bool(got[k]) == v
            else:
                np.testing.assert_array_equal(got[k], v)
                assert got[k].dtype == np.float32
        assert int(got["episode_index"]) == e and int(got["frame_index"]) == i
        assert got["timestamp"] == np.float32(i / 20)


@pytest.mark.parametrize("codec", ["h264", "av1"])
def test_round_trip_rollover_random_access(tmp_path, codec):
    root = tmp_path / "ds"
    lengths = (10, 13, 16, 11, 12)
    gt = make_dataset(root, lengths, codec=codec, data_files_size_in_mb=1e-4, video_files_size_in_mb=1e-4,
                      chunks_size=3)
    # several data and video files, rolled into a second chunk (chunks_size=3)
    data_files = sorted(p.relative_to(root).as_posix() for p in (root / "data").rglob("*.parquet"))
    assert len(data_files) == 5 and "data/chunk-001/file-000.parquet" in data_files
    for cam in (AGENT, WRIST):
        vids = list((root / "videos" / cam).rglob("*.mp4"))
        assert len(vids) >= 2, vids
    # one row group per episode, fixed_size_list vectors, plain bool column
    pf = pq.ParquetFile(root / "data/chunk-000/file-000.parquet")
    assert pf.metadata.num_row_groups == 1
    sch = pf.schema_arrow
    assert pa.types.is_fixed_size_list(sch.field("action").type) and sch.field("action").type.list_size == 7
    assert sch.field("trace.present").type == pa.bool_() and b"huggingface" in sch.metadata
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 5 and info["total_frames"] == sum(lengths)
    assert list(info["features"])[-5:] == ["timestamp", "frame_index", "episode_index", "index", "task_index"]
    assert info["features"][AGENT]["info"]["video.codec"] == codec
    ep_files = sorted((root / "meta/episodes").rglob("*.parquet"))
    assert len(ep_files) >= 2  # episode metadata rolls over too (same size limit)
    ep_cols = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").column_names
    for c in ("episode_index", "tasks", "length", "data/chunk_index", "dataset_from_index", "dataset_to_index",
              f"videos/{AGENT}/from_timestamp", f"videos/{WRIST}/to_timestamp", "stats/action/q99",
              f"stats/{AGENT}/mean"):
        assert c in ep_cols, c
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["pick up the red block", "pick up the blue block"]
    stats = json.loads((root / "meta/stats.json").read_text())
    acts = np.stack([fr["action"] for _, _, fr in gt["frames"]])
    np.testing.assert_allclose(stats["action"]["min"], acts.min(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["mean"], acts.mean(0), rtol=1e-5, atol=1e-6)
    assert stats["action"]["count"] == [len(acts)]

    ds = LeRobotV3Dataset(root)
    assert len(ds) == sum(lengths) and ds.num_episodes == 5
    assert [len(ds.episode(e)) for e in range(5)] == list(lengths)
    assert ds.task(1) == "pick up the blue block" and ds[ds.episode(1)[0]]["task"] == "pick up the blue block"
    _compare(ds, gt["frames"])
    # random access == sequential access
    seq = [ds[i] for i in range(len(ds))]
    ds2 = LeRobotV3Dataset(root, decoder_cache_size=1)
    for i in np.random.default_rng(0).permutation(len(ds)):
        r = ds2[int(i)]
        for k in (AGENT, WRIST):
            np.testing.assert_array_equal(r[k], seq[i][k])
        np.testing.assert_array_equal(r["action"], seq[i]["action"])


def test_lerobot_044_layout_loads(tmp_path):
    """A dataset laid out as lerobot 0.4.4 writes it: task column ``__index_level_0__``, int/bool min/max stats,
    other info key order, ``video.is_depth_map`` spelling, CHW video shape, leftover ``images/`` folders."""
    root = tmp_path / "ds"
    gt = make_dataset(root, (8, 9), codec="av1", wrist=None)
    tasks = pq.read_table(root / "meta/tasks.parquet")
    pq.write_table(pa.table({"task_index": tasks.column("task_index"),
                             "__index_level_0__": tasks.column("task")}), root / "meta/tasks.parquet")
    ep_path = root / "meta/episodes/chunk-000/file-000.parquet"
    t = pq.read_table(ep_path)
    for stat in ("min", "max"):
        name = f"stats/trace.present/{stat}"
        t = t.set_column(t.column_names.index(name), name,
                         pa.array([[bool(v[0])] for v in t.column(name).to_pylist()], pa.list_(pa.bool_())))
        name = f"stats/frame_index/{stat}"
        t = t.set_column(t.column_names.index(name), name,
                         pa.array([[int(v[0])] for v in t.column(name).to_pylist()], pa.list_(pa.int64())))
    pq.write_table(t, ep_path)
    info = json.loads((root / "meta/info.json").read_text())
    ft = info["features"][AGENT]
    ft["shape"], ft["names"] = [3, 48, 64], ["channels", "height", "width"]
    info = {k: info[k] for k in reversed(list(info))}
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "images" / AGENT).mkdir(parents=True)
    ds = LeRobotV3Dataset(root)
    assert ds.meta.tasks == ["pick up the red block", "pick up the blue block"]
    assert ds.meta.video_shape(AGENT) == (48, 64, 3)
    _compare(ds, gt["frames"])


def _rewrite_data(path, fn):
    t = pq.read_table(path)
    t = fn(t)
    pq.write_table(t, path)


def _set_vector(t, col, row, values):
    arr = np.stack(t.column(col).to_pylist()).astype(np.float32)
    arr[row] = values
    flat = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])
    return t.set_column(t.column_names.index(col), col, flat)


def test_bad_inputs_name_file_episode_frame(tmp_path):
    base = tmp_path / "base"
    make_dataset(base, (6, 7, 8), wrist=None, data_files_size_in_mb=1e-4)  # one data file per episode

    def fresh(name):
        d = tmp_path / name
        shutil.copytree(base, d)
        return d

    # truncated parquet
    d = fresh("trunc")
    p = d / "data/chunk-000/file-001.parquet"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"file-001\.parquet.*corrupt or truncated.*episodes 1\.\.1"):
        LeRobotV3Dataset(d)
    ds = LeRobotV3Dataset(d, check=False)  # lazily: the error comes on first access to that file
    ds.frame(0, 0, video=False)
    with pytest.raises(ValueError, match=r"file-001\.parquet"):
        ds.frame(1, 3)
    # missing video file
    d = fresh("novideo")
    (d / f"videos/{AGENT}/chunk-000/file-000.mp4").unlink()
    with pytest.raises(ValueError, match=rf"{AGENT}/chunk-000/file-000\.mp4: missing video file.*episode 0"):
        LeRobotV3Dataset(d)
    # truncated video (mp4 index lost): the error comes when a frame is decoded, naming file, camera, episode and frame
    d = fresh("badvideo")
    p = d / f"videos/{AGENT}/chunk-000/file-000.mp4"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    ds = LeRobotV3Dataset(d)
    with pytest.raises(ValueError, match=rf"file-000\.mp4: (cannot open|corrupt|no frame).*\({AGENT}, episode 0, frame 0\)"):
        for e in range(3):
            for i in range(ds.episode_length(e)):
                ds.get_video_frame(AGENT, e, i)
    # mismatched episode length: metadata claims one frame fewer than the data holds
    d = fresh("mismatch")
    deltas = {"length": [0, -1, 0], "dataset_to_index": [0, -1, -1], "dataset_from_index": [0, 0, -1]}
    for ep_path in (d / "meta/episodes").rglob("*.parquet"):
        t = pq.read_table(ep_path)
        eps = t.column("episode_index").to_pylist()
        for col, delta in deltas.items():
            vals = [v + delta[e] for v, e in zip(t.column(col).to_pylist(), eps)]
            t = t.set_column(t.column_names.index(col), col, pa.array(vals, pa.int64()))
        pq.write_table(t, ep_path)
    with pytest.raises(ValueError, match=r"file-000\.mp4: episode 1 spans 7\.0 video frames .* has length 6"):
        LeRobotV3Dataset(d)
    with pytest.raises(ValueError, match=r"file-001\.parquet: episode 1 has 7 rows but meta/episodes says length 6"):
        LeRobotV3Dataset(d, check=False).get_columns(1)  # the data file disagrees too
    # traces outside [0, 1] in a present frame: every other column stays readable; reading the traces names the
    # file, episode, frame, column and the option
    d = fresh("trace")
    p = d / "data/chunk-000/file-002.parquet"
    present = pq.read_table(p).column("trace.present").to_pylist()
    row = present.index(True)
    _rewrite_data(p, lambda t: _set_vector(t, "trace.x", row, 1.5))
    ds = LeRobotV3Dataset(d)
    fr = ds.frame(2, row)
    assert fr["action"].shape == (7,) and fr[AGENT].shape == (48, 64, 3) and fr["task"].startswith("pick up")
    TraceColumns(ds).episode(1)
    with pytest.raises(ValueError, match=rf"file-002\.parquet: episode 2, frame {row}: trace\.x values outside "
                                         r"\[0, 1\] .*--trace-convention"):
        TraceColumns(ds).episode(2)
    # NaN action: error policy names it, skip policy drops and counts it
    d = fresh("nan")
    p = d / "data/chunk-000/file-001.parquet"
    _rewrite_data(p, lambda t: _set_vector(t, "action", 4, np.nan))
    with pytest.raises(ValueError, match=r"file-001\.parquet: episode 1, frame 4: non-finite action"):
        LeRobotV3Dataset(d)
    with pytest.warns(UserWarning, match="1 frame"):
        ds = LeRobotV3Dataset(d, nan_policy="skip")
    assert len(ds) == 20 and ds.num_frames == 21 and ds.skipped.tolist() == [6 + 4]
    assert all(np.all(np.isfinite(ds[i]["action"])) for i in range(len(ds)))


def test_writer_validation_and_nan_policy(tmp_path):
    feats = default_features(wrist=None)
    good = {AGENT: frame_image(0, 0, 48, 64), "observation.state": np.zeros(9, np.float32),
            "action": np.zeros(7, np.float32), "trace.x": np.full(12, 0.5, np.float32),
            "trace.y": np.full(12, 0.5, np.float32), "trace.present": True}
    w = LeRobotV3Writer(tmp_path / "a", 20, feats)
    w.add_frame(good)
    with pytest.raises(ValueError, match=r"episode 0, frame 1: trace\.y values outside \[0, 1\]"):
        w.add_frame({**good, "trace.y": np.full(12, -0.1, np.float32)})
    w.add_frame({**good, "trace.y": np.full(12, -0.1, np.float32), "trace.present": False})  # absent: not checked
    with pytest.raises(ValueError, match=r"episode 0, frame 2: non-finite action"):
        w.add_frame({**good, "action": np.full(7, np.nan, np.float32)})
    with pytest.raises(ValueError, match=r"episode 0, frame 2: .*has shape \(40, 64, 3\)"):
        w.add_frame({**good, AGENT: np.zeros((40, 64, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"missing features \['action'\]"):
        w.add_frame({k: v for k, v in good.items() if k != "action"})
    w.abort()
    w = LeRobotV3Writer(tmp_path / "b", 20, feats, nan_policy="skip")
    for i in range(5):
        w.add_frame({**good, "action": np.full(7, np.inf if i in (1, 3) else 0.1, np.float32)})
    with pytest.warns(UserWarning, match="skipped 2 frame"):
        w.save_episode("t")
    w.finalize()
    assert w.skipped_frames == 2 and len(LeRobotV3Dataset(tmp_path / "b")) == 3
    with pytest.raises(ValueError, match="shape \\[\\] is not allowed"):
        LeRobotV3Writer(tmp_path / "c", 20, {"flag": {"dtype": "bool", "shape": []}})


def test_interrupted_writer_leaves_nothing_complete(tmp_path):
    root = tmp_path / "ds"
    feats = default_features(wrist=None)
    fr = {AGENT: frame_image(0, 0, 48, 64), "observation.state": np.zeros(9, np.float32),
          "action": np.zeros(7, np.float32), "trace.x": np.full(12, 0.5, np.float32),
          "trace.y": np.full(12, 0.5, np.float32), "trace.present": True}
    w = LeRobotV3Writer(root, 20, feats)
    for _ in range(4):
        w.add_frame(fr)
    w.save_episode("t")
    del w  # "crash": no finalize
    assert not root.exists()
    leftovers = [p for p in tmp_path.iterdir()]
    assert all(not (p / "meta/info.json").exists() for p in leftovers)
    with pytest.raises(ValueError, match="not a finished LeRobot dataset"):
        LeRobotV3Dataset(tmp_path / ".ds.incomplete")
    # an exception inside the context manager removes the partial data
    with pytest.raises(RuntimeError):
        with LeRobotV3Writer(root, 20, feats) as w:
            w.add_frame(fr)
            w.save_episode("t")
            raise RuntimeError("simulated crash")
    assert not root.exists() and not (tmp_path / ".ds.incomplete").exists()
    # a clean run completes and then exists
    with LeRobotV3Writer(root, 20, feats) as w:
        w.add_frame(fr)
        w.save_episode("t")
    assert load_meta(root).info["total_frames"] == 1
    # a process killed mid-write (no cleanup at all) leaves the finished dataset untouched
    code = f"""
import os, numpy as np, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from data_fixtures import default_features, frame_image, AGENT
from semanticvla_core.data.lerobot_v3 import LeRobotV3Writer
w = LeRobotV3Writer({str(root)!r}, 20, default_features(wrist=None), overwrite=True)
fr = {{AGENT: frame_image(0, 0, 48, 64), "observation.state": np.zeros(9, np.float32),
      "action": np.zeros(7, np.float32), "trace.x": np.full(12, .5, np.float32),
      "trace.y": np.full(12, .5, np.float32), "trace.present": True}}
for _ in range(3):
    w.add_frame(fr)
w.save_episode("killed")
os._exit(9)
"""
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert (tmp_path / ".ds.incomplete").is_dir()
    assert load_meta(root).info["total_frames"] == 1 and LeRobotV3Dataset(root).task(0) == "t"
    # overwrite=True replaces the old dataset only at finalize
    w = LeRobotV3Writer(root, 20, feats, overwrite=True)
    for _ in range(2):
        w.add_frame(fr)
    w.save_episode("new")
    assert load_meta(root).info["total_frames"] == 1
    w.finalize()
    assert load_meta(root).info["total_frames"] == 2 and not (tmp_path / ".ds.incomplete").exists()
