"""Stage pipelines: documented shapes/dtypes, content, stats saved and reused, tiny ranges, loader."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file

from data_fixtures import AGENT, make_dataset
from semanticvla_core.data.lerobot_v3 import LeRobotV3Dataset
from semanticvla_core.data.pipelines import (STATS_FILE, ActionDataset, TokenizerDataset, VLMDataset,
                                             default_num_workers, make_loader, to_chw_float)
from semanticvla_core.normalize import DatasetStats
from semanticvla_core.traces import resample_trace

S, H_, LENGTHS = 32, 4, (12, 10, 9)


def _state(e, i):
    # dims: moving, constant, tiny-range (1e-6 wiggle), ...
    return np.array([0.1 * i + e, 0.5, 0.3 + 1e-6 * ((i % 3) - 1), np.sin(i), -1.0, e, 2.0 * i, 0.0, 0.01 * i])


@pytest.fixture(scope="module")
def ds_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe") / "ds"
    gt = make_dataset(root, LENGTHS, state_fn=_state)
    return root, gt


def test_tokenizer_samples(ds_root):
    root, gt = ds_root
    tok = TokenizerDataset(root, image_size=S, window=12, horizon=H_, camera=AGENT)
    assert len(tok) == sum(n - H_ for n in LENGTHS)
    s = tok[5]
    assert s["image_t"].shape == (3, S, S) and s["image_t"].dtype == torch.float32
    assert s["image_tH"].shape == (3, S, S) and s["image_tH"].dtype == torch.float32
    assert 0.0 <= s["image_t"].min() and s["image_t"].max() <= 1.0
    assert s["trace"].shape == (12, 2) and s["trace"].dtype == torch.float32
    assert s["trace_present"].dtype == torch.bool and s["trace_present"].shape == ()
    reader = LeRobotV3Dataset(root)
    e, t = reader.episode_of(int(s["index"]))
    torch.testing.assert_close(s["image_tH"], to_chw_float(reader.get_video_frame(AGENT, e, t + H_), S))
    fr = gt["frames"][int(s["index"])][2]
    np.testing.assert_array_equal(s["trace"].numpy(), np.stack([fr["trace.x"], fr["trace.y"]], -1))
    assert bool(s["trace_present"]) == fr["trace.present"]
    fast = TokenizerDataset(root, image_size=S, window=12, horizon=H_, with_images=False)[5]
    assert set(fast) == {"trace", "trace_present", "index"}
    torch.testing.assert_close(fast["trace"], s["trace"])
    # a different window resamples the stored one
    assert TokenizerDataset(root, image_size=S, window=6, horizon=H_)[0]["trace"].shape == (6, 2)


def test_vlm_samples_with_latent_ids(ds_root, tmp_path):
    root, gt = ds_root
    n = sum(LENGTHS)
    ids = np.arange(n * 4, dtype=np.int64).reshape(n, 4) % 32
    ids[7] = -1  # no latent ids for frame 7 (e.g. t+H beyond the episode): left out
    for src in (ids, tmp_path / "ids.npy", tmp_path / "ids.safetensors"):
        if not isinstance(src, np.ndarray):
            np.save(tmp_path / "ids.npy", ids) if src.suffix == ".npy" else save_file({"latent_ids": ids}, str(src))
        vlm = VLMDataset(root, image_size=S, latent_ids=src)
        present = [fr["trace.present"] for _, _, fr in gt["frames"]]
        assert len(vlm) == sum(present) - int(present[7])
        s = vlm[0]
        g = int(s["index"])
        assert s["image"].shape == (3, S, S) and s["wrist_image"].shape == (3, S, S)
        assert isinstance(s["instruction"], str) and s["instruction"].startswith("pick up")
        assert s["anchors"].shape == (4, 2) and s["anchors"].dtype == torch.float32
        assert s["latent_ids"].dtype == torch.int64 and s["latent_ids"].tolist() == ids[g].tolist()
        np.testing.assert_allclose(s["anchors"].numpy(), resample_trace(s["trace"].numpy(), 4))
        assert all(bool(vlm[k]["trace_present"]) for k in range(len(vlm)))
    with pytest.raises(ValueError, match=r"integer array \(31, K\)"):
        VLMDataset(root, image_size=S, latent_ids=np.zeros((5, 4), np.int64))
    assert "wrist_image" not in VLMDataset(root, image_size=S, wrist_camera=None)[0]


def test_action_samples_stats_saved_and_reused(ds_root):
    root, gt = ds_root
    stats_path = root / STATS_FILE
    if stats_path.exists():
        stats_path.unlink()
    act = ActionDataset(root, image_size=S, horizon=8)
    assert stats_path.is_file()
    st = act.stats
    s = act[len(act) - 1]  # last present frame: its chunk runs past the episode end
    assert s["actions"].shape == (8, 7) and s["actions"].dtype == torch.float32
    assert s["actions_pad"].shape == (8,) and s["actions_pad"].dtype == torch.bool and s["actions_pad"].any()
    assert s["state"].shape == (9,) and s["state"].dtype == torch.float32
    for key in ("image", "anchors", "trace", "instruction"):
        assert key in s
    g = int(s["index"])
    e, t = LeRobotV3Dataset(root).episode_of(g)
    raw = st.action.unnormalize(s["actions"].numpy().astype(np.float64))
    T = LENGTHS[e]
    valid = ~s["actions_pad"].numpy()
    assert valid.sum() == min(8, T - t)
    truth = np.stack([gt["frames"][g + j][2]["action"] for j in range(valid.sum())])
    np.testing.assert_allclose(raw[valid], truth, atol=1e-6)
    np.testing.assert_allclose(raw[~valid], np.repeat(truth[-1:], (~valid).sum(), 0), atol=1e-6)
    # tiny ranges (constant dim 1, 1e-6 wiggle dim 2) stay finite and small
    states = torch.stack([act[k]["state"] for k in range(len(act))])
    assert torch.isfinite(states).all() and states.abs().max() < 10
    # reused: a saved file (same keys and frame count) is read, not recomputed
    d = json.loads(stats_path.read_text())
    d["action"]["high"] = [h + 10.0 for h in d["action"]["high"]]
    stats_path.write_text(json.dumps(d))
    act2 = ActionDataset(root, image_size=S, horizon=8)
    np.testing.assert_allclose(act2.stats.action.high, np.array(d["action"]["high"]))
    assert not torch.allclose(act2[0]["actions"], act[0]["actions"])
    # explicit stats (from a checkpoint) override the file; recompute_stats rewrites it
    act3 = ActionDataset(root, image_size=S, horizon=8, stats=st)
    torch.testing.assert_close(act3[0]["actions"], act[0]["actions"])
    ActionDataset(root, image_size=S, horizon=8, recompute_stats=True)
    np.testing.assert_allclose(DatasetStats.load(stats_path).action.high, st.action.high)
    # image_tH for the tokenizer, only where frame t+H exists
    a4 = ActionDataset(root, image_size=S, horizon=8, with_image_tH=True)
    assert a4[0]["image_tH"].shape == (3, S, S) and len(a4) < len(act)



def test_state_ranges_widened_and_stats_files_without_it_recomputed(ds_root, tmp_path):
    """State dimensions are scaled by at most 2 / normalize.STATE_MIN_RANGE (a near-constant state such as the
    gripper's tilt must not turn small run-time deviations into huge inputs); a stats file written before that
    rule (no state_min_range in its provenance) is recomputed, not trusted."""
    import shutil
    from semanticvla_core.normalize import STATE_MIN_RANGE

    root = tmp_path / "ds"
    shutil.copytree(ds_root[0], root)
    (root / STATS_FILE).unlink(missing_ok=True)
    st = ActionDataset(root, image_size=S, horizon=8).stats
    assert st.extra["state_min_range"] == STATE_MIN_RANGE
    half = st.state.half_range
    assert half[2] == pytest.approx(STATE_MIN_RANGE / 2)           # the 1e-6 wiggle
    assert half[0] > STATE_MIN_RANGE                               # a moving dimension keeps its own range
    assert np.all(half[st.state.high - st.state.low > 1e-8] >= STATE_MIN_RANGE / 2 - 1e-12)
    d = json.loads((root / STATS_FILE).read_text())
    del d["extra"]["state_min_range"]
    d["state"]["high"] = [h + 10.0 for h in d["state"]["high"]]
    (root / STATS_FILE).write_text(json.dumps(d))
    again = ActionDataset(root, image_size=S, horizon=8).stats
    np.testing.assert_allclose(again.state.high, st.state.high)


def test_nonfinite_future_action_is_padded(ds_root, tmp_path):
    import shutil
    root = tmp_path / "ds"
    shutil.copytree(ds_root[0], root)
    (root / STATS_FILE).unlink(missing_ok=True)
    p = root / "data/chunk-000/file-000.parquet"
    t = pq.read_table(p)
    a = np.stack(t.column("action").to_pylist()).astype(np.float32)
    a[3] = np.nan
    t = t.set_column(t.column_names.index("action"), "action",
                     pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), 7))
    pq.write_table(t, p)
    with pytest.warns(UserWarning, match="1 frame"):
        act = ActionDataset(root, image_size=S, horizon=8, only_present=False)
    assert len(act) == sum(LENGTHS) - 1  # frame 3 is not a sample
    s = act[0]  # episode 0, t = 0: its chunk hits the NaN at frame 3
    assert s["actions_pad"].tolist() == [False] * 3 + [True] * 5 and torch.isfinite(s["actions"]).all()



def _robot_state(e, i):   # a 15-D robot state (robot_state.STATE_NAMES): TCP at 9:12, its rotation vector at 12:15
    s = np.zeros(15)
    s[9:12] = [0.4 + 0.01 * i, 0.05 * e, 0.2 - 0.005 * i]
    s[12:15] = [0.0, 0.01, 0.1 * e + 0.02 * i]
    return s


def test_tcp_pose_action_frame_samples_and_stats(tmp_path):
    """action_frame="tcp_pose": each chunk becomes the TCP targets it steps through from its frame's state
    (robot_state.deltas_to_tcp_targets), normalized with statistics of exactly those rows, kept in their own
    file next to the delta statistics; a dataset without the 15-D robot state is refused with the reason."""
    from semanticvla_core.robot_state import deltas_to_tcp_targets

    root = tmp_path / "ds"
    gt = make_dataset(root, (12, 10), state_fn=_robot_state)
    act = ActionDataset(root, image_size=S, horizon=4, action_frame="tcp_pose")
    assert (root / "meta" / "semanticvla_stats_tcp_pose_h4.json").is_file() and not (root / STATS_FILE).exists()
    assert act.stats.extra["action_frame"] == "tcp_pose"
    rows = []
    for k in range(len(act)):
        s = act[k]
        g = int(s["index"])
        e, t = LeRobotV3Dataset(root).episode_of(g)
        n = int((~s["actions_pad"].numpy()).sum())
        raw = np.stack([gt["frames"][g + j][2]["action"] for j in range(n)]).astype(np.float64)
        want = deltas_to_tcp_targets(gt["frames"][g][2]["observation.state"], raw)
        got = act.stats.action.unnormalize(s["actions"].numpy().astype(np.float64))[:n]
        np.testing.assert_allclose(got, want, atol=1e-5)
        rows.append(want)
    # the statistics are those of the targets (positions near the states' TCP, not of the ~N(0, 1) deltas)
    assert np.all(act.stats.action.low[:3] >= np.concatenate(rows)[:, :3].min(0) - 1e-9)
    delta = ActionDataset(root, image_size=S, horizon=4)
    assert not np.allclose(delta.stats.action.high, act.stats.action.high)
    with pytest.raises(ValueError, match="15-D robot state"):
        ActionDataset(tmp_path / "nine", image_size=S, horizon=4, action_frame="tcp_pose") \
            if make_dataset(tmp_path / "nine", (6,)) else None


def test_make_loader_batches(ds_root):
    root, _ = ds_root
    assert default_num_workers() >= 1
    act = ActionDataset(root, image_size=S, horizon=8)
    loader = make_loader(act, batch_size=4, num_workers=1)
    batches = [b for _, b in zip(range(2), loader)]
    b = batches[0]
    assert b["actions"].shape == (4, 8, 7) and b["image"].shape == (4, 3, S, S) and b["state"].shape == (4, 9)
    assert isinstance(b["instruction"], list) and len(b["instruction"]) == 4
    # worker output equals main-process output for the same indices
    ref = act[int(np.nonzero(act.samples[:, 0] >= 0)[0][0])]
    assert ref["image"].shape == (3, S, S)
    idx = [int(i) for i in b["index"]]
    pos = {int(act.ds.episode(int(e)).start + int(t)): k for k, (e, t) in enumerate(act.samples)}
    torch.testing.assert_close(b["image"][0], act[pos[idx[0]]]["image"])


def test_stem_images_and_frame_cache_match_direct_decoding(ds_root):
    """Stem keys come at their own sizes from the native frames; the in-memory frame cache returns exactly
    what per-sample decoding returns, for every key of every sample, in any access order."""
    root, _ = ds_root
    kw = dict(image_size=S, horizon=8, stem_image_size=40, stem_wrist_size=24)
    direct = ActionDataset(root, **kw)
    cached = ActionDataset(root, cache_frames=True, **kw)
    order = np.random.default_rng(0).permutation(len(direct))
    for k in order:
        a, b = direct[int(k)], cached[int(k)]
        assert a["stem_image"].shape == (3, 40, 40) and a["stem_wrist"].shape == (3, 24, 24)
        for key in ("image", "wrist_image", "stem_image", "stem_wrist", "actions", "state"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert len(cached._frames) == 2 * len(LENGTHS)   # each (camera, episode) decoded once
    with pytest.raises(ValueError, match="wrist camera"):
        ActionDataset(root, wrist_camera=None, **kw)


def test_image_delay_takes_images_from_earlier_frames_and_state_and_actions_from_now(ds_root):
    """image_delay_max (training for the run-time loop that decodes a plan with the fresh state): the images and the
    frame index come from 0..N frames earlier (never before the episode), the state and actions from the sample's
    own frame, unchanged."""
    root, _ = ds_root
    plain = ActionDataset(root, image_size=S, horizon=8)
    delayed = ActionDataset(root, image_size=S, horizon=8, image_delay_max=3)
    np.random.seed(0)
    offsets = set()
    for k in range(0, len(plain), 3):
        a, b = plain[k], delayed[k]
        torch.testing.assert_close(a["actions"], b["actions"])
        torch.testing.assert_close(a["state"], b["state"])
        off = int(a["index"]) - int(b["index"])
        e, t = (int(v) for v in plain.samples[k])
        assert 0 <= off <= min(3, t)
        assert float(b["image_age"]) == off and "image_age" not in a     # (what the decoder is told)
        offsets.add(off)
        if off == 0:
            torch.testing.assert_close(a["image"], b["image"])
    assert offsets == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="image_delay_max"):
        ActionDataset(root, image_size=S, horizon=8, image_delay_max=-1)
    # image_delay_p0: that share of the samples without delay, the rest spread over 1..N
    mixed = ActionDataset(root, image_size=S, horizon=8, image_delay_max=3, image_delay_p0=0.75)
    np.random.seed(1)
    late = [k for k in range(len(plain)) if int(plain.samples[k][1]) >= 3]
    offs = np.array([int(plain[k]["index"]) - int(mixed[k]["index"]) for k in late[:200]])
    assert set(offs.tolist()) <= {0, 1, 2, 3} and offs.max() > 0 and 0.5 < np.mean(offs == 0) < 0.95, np.bincount(offs)
    with pytest.raises(ValueError, match="image_delay_p0"):
        ActionDataset(root, image_size=S, horizon=8, image_delay_max=3, image_delay_p0=1.5)
