"""Trace annotation: exact projection, LK tracking (and an identity tracker failing the same check), keyframes,
resume, overlays, the TraceX schema accessors, CoTracker loading errors."""
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data_fixtures import AGENT, make_dataset
from semanticvla_core.camera import PinholeCamera, look_at, pixels_to_normalized
from semanticvla_core.data.annotate import AnnotateConfig, annotate_dataset
from semanticvla_core.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer
from semanticvla_core.data.tracex import episode_traces, frame_trace, iter_traces
from semanticvla_core.data.trackers import (CoTrackerTracker, IdentityTracker, LKTracker, detect_keyframes,
                                            make_tracker)
from semanticvla_core.data.viz import draw_trace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import annotate_traces  # noqa: E402  (the CLI)

LK_MAX_ERR_PX = 1.0   # stated accuracy of LK on the synthetic moving textured patch (max over frames)
TRACK_MAX_ERR_PX = 2.0  # keyframes + LK through an H.264 round trip, vs. the exact projection

H, W = 72, 96
TEXTURE = np.random.default_rng(7).integers(0, 256, (14, 14, 3)).astype(np.uint8)


def _background():
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    return np.stack([80 + 60 * xx / W, 80 + 60 * yy / H, np.full_like(xx, 90.0)], -1)


def render_patch(px: np.ndarray) -> np.ndarray:
    """Frame with the textured patch centred at sub-pixel position ``px`` (OpenCV pixel coords)."""
    bg = _background()
    canvas = np.zeros((H, W, 3), np.float32)
    mask = np.zeros((H, W), np.float32)
    k = TEXTURE.shape[0]
    M = np.float32([[1, 0, px[0] - (k - 1) / 2], [0, 1, px[1] - (k - 1) / 2]])
    canvas = cv2.warpAffine(TEXTURE.astype(np.float32), M, (W, H), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ones((k, k), np.float32), M, (W, H), flags=cv2.INTER_LINEAR)[..., None]
    return np.clip(bg * (1 - mask) + canvas * mask, 0, 255).astype(np.uint8)


def pixel_path(T=30, phase=0.0):
    t = np.arange(T)
    return np.stack([W / 2 + 22 * np.cos(0.12 * t + phase), H / 2 + 14 * np.sin(0.17 * t + phase)], 1)


# ------------------------------------------------------------------------------------------------ trackers
def test_lk_follows_moving_patch_and_identity_fails():
    path = pixel_path(30)
    frames = np.stack([render_patch(p) for p in path])

    def max_err(tracker, t0):
        tr, vis = tracker.track(frames, np.array([[t0, *path[t0]]]))
        assert tr.shape == (30, 1, 2) and vis.shape == (30, 1)
        return np.linalg.norm(tr[:, 0] - path, axis=1).max(), vis

    err, vis = max_err(LKTracker(), 0)
    assert err < LK_MAX_ERR_PX and vis.all(), err
    err_mid, _ = max_err(LKTracker(), 15)  # forward and backward from the middle
    assert err_mid < LK_MAX_ERR_PX, err_mid
    err_id, _ = max_err(IdentityTracker(), 0)
    assert not err_id < LK_MAX_ERR_PX, err_id  # a broken tracker fails the same check


def test_keyframes_from_gripper_events_and_velocity_minima():
    T = 40
    grip = np.zeros(T)
    grip[12:30] = 1.0  # close at 12, open at 30
    t = np.arange(T, dtype=float)
    pos = np.stack([np.where(t < 20, t, 20 + 0.0 * t), np.zeros(T), np.zeros(T)], 1)
    pos[20:, 0] = 20 + np.maximum(t[20:] - 24, 0)  # stands still 20..24 -> a speed minimum there
    k = detect_keyframes(grip, pos)
    assert {0, 12, 30, T - 1} <= set(k.tolist())
    assert any(20 <= x <= 25 for x in k), k
    assert np.all(np.diff(k) > 0)


def test_cotracker_needs_local_files(tmp_path):
    with pytest.raises(ValueError, match="not found.*nothing is downloaded"):
        make_tracker("cotracker", checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="hubconf.py"):
        (tmp_path / "w.pth").write_bytes(b"x")
        CoTrackerTracker(tmp_path / "w.pth", repo_dir=tmp_path)

    class Shift(torch.nn.Module):  # stands in for an exported CoTracker: same call signature and outputs
        def forward(self, video, queries):
            T = video.shape[1]
            tr = queries[:, None, :, 1:3].repeat(1, T, 1, 1) + torch.arange(T).float()[None, :, None, None]
            return tr, torch.ones(tr.shape[:3], dtype=torch.bool)

    ts = tmp_path / "tracker.ts"
    torch.jit.script(Shift()).save(str(ts))
    tr, vis = make_tracker("cotracker", checkpoint=str(ts)).track(np.zeros((5, 8, 8, 3), np.uint8),
                                                                  np.array([[0, 2.0, 3.0]]))
    np.testing.assert_allclose(tr[:, 0, 0], 2.0 + np.arange(5))
    assert vis.dtype == bool and vis.shape == (5, 1)


# ------------------------------------------------------------------------------------------------ datasets
def _camera_setups():
    cam_a = PinholeCamera.from_fovy(W, H, 55.0, look_at([1.0, 0.3, 0.8], [0.45, 0.0, 0.05]))
    K = np.array([[70.0, 0, 41.3], [0, 64.0, 33.9], [0, 0, 1]])  # non-square pixels, off-centre
    cam_b = PinholeCamera.from_K(K, W, H, look_at([0.2, -0.9, 0.6], [0.5, 0.1, 0.1]))
    return cam_a, cam_b


def make_ee_dataset(root, cam, lengths=(30, 24, 26, 20), codec="h264", off_image_frames=()):
    """Dataset whose agent-view video shows a textured patch exactly where the end-effector projects."""
    feats = {AGENT: {"dtype": "video", "shape": [H, W, 3]},
             "observation.ee_pos": {"dtype": "float64", "shape": [3], "names": ["x", "y", "z"]},
             "action": {"dtype": "float32", "shape": [7]}}
    w = LeRobotV3Writer(root, 20, feats, video_codec=codec, cameras={AGENT: cam}, crf=18)
    truth = []
    for e, T in enumerate(lengths):
        px = pixel_path(T, phase=0.7 * e)
        depth = 0.9 + 0.1 * np.sin(np.arange(T) / 5.0)
        xyz = cam.lift_with_depth(pixels_to_normalized(px, W, H), depth)
        vis = np.ones(T, bool)
        for i in off_image_frames:
            if i < T:
                xyz[i] = cam.lift_with_depth(np.array([1.4, 0.5]), 1.0)  # projects off the right edge
                vis[i] = False
        for i in range(T):
            g = 1.0 if T // 3 <= i < 2 * T // 3 else 0.0
            w.add_frame({AGENT: render_patch(px[i]), "observation.ee_pos": xyz[i],
                         "action": np.array([0, 0, 0, 0, 0, 0, g], np.float32)})
        w.save_episode(f"task {e}")
        truth.append((px, vis))
    w.finalize()
    return truth


@pytest.mark.parametrize("setup", [0, 1])
def test_projection_reproduces_known_pixels(tmp_path, setup):
    cam = _camera_setups()[setup]
    root = tmp_path / "ds"
    truth = make_ee_dataset(root, cam, lengths=(20, 15), off_image_frames=(3,))
    rep = annotate_dataset(root, AnnotateConfig(method="projection", overlay_episodes=1, show_progress=False))
    assert rep.complete and rep.annotated == [0, 1]
    ds = LeRobotV3Dataset(root)
    assert "trace.x" in ds.features and ds.features["trace.x"]["shape"] == [12]
    for e, (px, vis) in enumerate(truth):
        win, present = episode_traces(ds, e)
        T = len(px)
        assert win.shape == (T, 12, 2) and win.dtype == np.float32
        got_px = win * np.array([W, H]) - 0.5
        idx = np.minimum(np.arange(T)[:, None] + np.arange(12)[None], T - 1)
        ok_rows = np.array([vis[idx[t]].all() for t in range(T)])
        err = np.linalg.norm(got_px - px[idx], axis=-1)[ok_rows]
        assert err.max() < 1e-3, err.max()  # exact up to float32 storage
        assert not present[3] and present[0] and present[10]
    # overlays for a human: a PNG contact sheet and an MP4
    pngs = [p for p in rep.overlays if p.endswith(".png")]
    assert pngs and cv2.imread(pngs[0]) is not None and cv2.imread(pngs[0]).shape[0] >= 256
    assert any(p.endswith(".mp4") and Path(p).stat().st_size > 0 for p in rep.overlays)


def test_track_method_matches_projection(tmp_path):
    cam = _camera_setups()[0]
    root = tmp_path / "ds"
    truth = make_ee_dataset(root, cam, lengths=(30, 24))
    rep = annotate_dataset(root, AnnotateConfig(method="track", tracker="lk", overlay_episodes=0,
                                                show_progress=False))
    assert rep.complete
    ds = LeRobotV3Dataset(root)
    for e, (px, _) in enumerate(truth):
        win, present = episode_traces(ds, e)
        err = np.linalg.norm(win[:, 0] * np.array([W, H]) - 0.5 - px, axis=1)
        assert present.all() and err.max() < TRACK_MAX_ERR_PX, err.max()
    # the same pipeline with a broken (identity) tracker: only keyframes are right, the check fails
    annotate_dataset(root, AnnotateConfig(method="track", tracker="identity", overlay_episodes=0,
                                          show_progress=False))
    ds = LeRobotV3Dataset(root)
    errs = [np.linalg.norm(episode_traces(ds, e)[0][:, 0] * np.array([W, H]) - 0.5 - px, axis=1).max()
            for e, (px, _) in enumerate(truth)]
    assert max(errs) > TRACK_MAX_ERR_PX, errs


def test_resume_continues_and_matches_fresh_run(tmp_path):
    cam = _camera_setups()[1]
    root = tmp_path / "ds"
    make_ee_dataset(root, cam, lengths=(12, 10, 14, 11))
    fresh = tmp_path / "fresh"
    shutil.copytree(root, fresh)
    rc = annotate_traces.main(["--dataset", str(root), "--method", "projection", "--max-episodes", "2",
                               "--overlay-episodes", "0"])
    assert rc == 0
    prog = json.loads((root / "meta/annotation/progress.json").read_text())
    assert prog["done"] == [0, 1] and not prog["complete"]
    assert "trace.x" not in LeRobotV3Dataset(root).features  # nothing written before all episodes are done
    rep = annotate_dataset(root, AnnotateConfig(method="projection", overlay_episodes=0, show_progress=False))
    assert rep.resumed_from == 2 and rep.annotated == [2, 3] and rep.complete
    annotate_dataset(fresh, AnnotateConfig(method="projection", overlay_episodes=0, show_progress=False,
                                           resume=False))
    a, b = LeRobotV3Dataset(root), LeRobotV3Dataset(fresh)
    for e in range(4):
        np.testing.assert_array_equal(episode_traces(a, e)[0], episode_traces(b, e)[0])
        np.testing.assert_array_equal(episode_traces(a, e)[1], episode_traces(b, e)[1])
    # rerunning a finished annotation with --no-resume redoes it and leaves a loadable dataset
    assert annotate_traces.main(["--dataset", str(root), "--no-resume", "--overlay-episodes", "0"]) == 0
    assert len(LeRobotV3Dataset(root)) == 47
    assert annotate_traces.main(["--dataset", str(root), "--camera-json", str(tmp_path / "none.json")]) == 2


def test_tracex_fixture_loads_and_yields_traces(tmp_path):
    gt = make_dataset(tmp_path / "ds", (6, 5), wrist=None)
    ds = LeRobotV3Dataset(tmp_path / "ds")
    got = list(iter_traces(ds))
    assert len(got) == 11
    for (e, i, win, pres), (e2, i2, fr) in zip(got, gt["frames"]):
        assert (e, i) == (e2, i2) and win.shape == (12, 2) and win.dtype == np.float32
        np.testing.assert_array_equal(win[:, 0], fr["trace.x"])
        np.testing.assert_array_equal(win[:, 1], fr["trace.y"])
        assert pres == fr["trace.present"]
    win, pres = frame_trace(ds[3])
    np.testing.assert_array_equal(win, got[3][2])


def test_draw_trace_marks_pixels():
    img = np.zeros((40, 60, 3), np.uint8)
    uv = np.array([[0.1, 0.1], [0.5, 0.5], [0.9, 0.8]])
    out = draw_trace(img, uv, color=(255, 0, 0))
    assert img.sum() == 0 and out.shape == img.shape
    x, y = np.rint(uv[1] * [60, 40] - 0.5).astype(int)
    assert out[y, x, 0] > 100  # a point of the trace is drawn in red
    assert out[2, 58].sum() == 0  # far from the trace stays black
