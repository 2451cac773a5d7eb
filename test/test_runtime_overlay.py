"""Trace overlay: pixels land where the trace is; 3-D lifting agrees with the camera projection."""
from __future__ import annotations

import numpy as np
import pytest

from semanticvla_core.camera import PinholeCamera, look_at, normalized_to_pixels
from semanticvla_core.overlay import OverlayStyle, draw_plan_overlay, lift_trace, trace_marker_arrays

H, W = 120, 160
ANCHORS = np.array([[0.2, 0.3], [0.5, 0.5], [0.8, 0.7], [0.75, 0.35]])


def px(uv) -> tuple[int, int]:
    x, y = normalized_to_pixels(np.asarray(uv, float), W, H)
    return int(round(y)), int(round(x))


def lit(img, r, c, rad=1) -> bool:
    return img[max(r - rad, 0):r + rad + 1, max(c - rad, 0):c + rad + 1].max() > 0


def test_overlay_draws_on_the_trace_and_nowhere_else():
    img = draw_plan_overlay(np.zeros((H, W, 3), np.uint8), ANCHORS)
    for a in ANCHORS:                                        # every anchor is drawn
        assert lit(img, *px(a))
    for a, b in zip(ANCHORS[:-1], ANCHORS[1:]):              # ... and the polyline between them
        for t in (0.25, 0.5, 0.75):
            assert lit(img, *px((1 - t) * a + t * b)), (a, b, t)
    for far in ([0.05, 0.95], [0.95, 0.05], [0.1, 0.8], [0.35, 0.9]):   # far from the trace: untouched
        r, c = px(far)
        assert img[r - 3:r + 4, c - 3:c + 4].max() == 0, far
    r0, c0 = px(ANCHORS[0])                                  # start point in the start colour (green)
    assert img[r0, c0, 1] > 200 and img[r0, c0, 0] < 100
    r1, c1 = px(ANCHORS[1])                                  # later anchors in the line colour (red)
    assert img[r1, c1, 0] > 200 and img[r1, c1, 1] < 100


def test_anchor_numbers_drawn_next_to_anchors():
    st = OverlayStyle(label_color=(0, 0, 255), line_color=(255, 0, 0), start_color=(255, 0, 0))
    img = draw_plan_overlay(np.zeros((H, W, 3), np.uint8), ANCHORS, style=st)
    blue = (img[..., 2] > 100) & (img[..., 0] < 50)
    for a in ANCHORS:                                        # label sits up-right of its anchor
        r, c = px(a)
        assert blue[max(r - 15, 0):r, c:c + 15].any(), a
    assert blue.sum() > 20


def test_text_bands_for_instruction_and_latent_ids():
    base = np.full((H, W, 3), 90, np.uint8)
    img = draw_plan_overlay(base, ANCHORS, latent_ids=np.array([3, 17, 5, 9]), instruction="pick up the red block")
    top, bottom, middle = img[:8], img[-8:], img[40:80, :10]
    assert (top != 90).any() and (bottom != 90).any()
    assert (middle == 90).all()
    assert (base == 90).all()                                # input untouched (copy)


def test_bad_plans_do_not_raise():
    img = np.zeros((H, W, 3), np.uint8)
    out = draw_plan_overlay(img, np.array([[np.nan, 0.5], [0.5, 0.5]]))
    assert lit(out, *px([0.5, 0.5]))
    assert draw_plan_overlay(img, np.zeros((0, 2))).max() == 0
    with pytest.raises(ValueError, match="image"):
        draw_plan_overlay(np.zeros((H, W), np.uint8), ANCHORS)


@pytest.fixture
def camera() -> PinholeCamera:
    return PinholeCamera.from_fovy(W, H, 60.0, look_at([1.2, 0.3, 0.8], [0.5, 0.0, 0.0]))


def test_lift_to_plane_then_project_returns_uv(camera):
    rng = np.random.default_rng(0)
    uv = rng.uniform(0.05, 0.95, (12, 2))
    P, ok = lift_trace(camera, uv, plane_z=0.0)
    assert ok.all() and np.allclose(P[:, 2], 0.0, atol=1e-9)
    back, vis = camera.project_normalized(P)
    assert vis.all()
    np.testing.assert_allclose(back, uv, atol=1e-9)
    P2, ok2 = lift_trace(camera, uv, plane_z=0.05)           # a raised plane works too
    np.testing.assert_allclose(P2[:, 2], 0.05, atol=1e-9)
    up = PinholeCamera.from_fovy(W, H, 60.0, look_at([0.5, 0.0, 0.5], [0.5, 0.0, 2.0]))   # looking at the sky
    assert not lift_trace(up, uv)[1].any()


def test_lift_with_depth_matches_the_scene(camera):
    # depth image of the table plane z = 0.1, rendered with the same camera
    ys, xs = np.mgrid[0:H, 0:W]
    uv_all = np.stack([(xs + 0.5) / W, (ys + 0.5) / H], -1).reshape(-1, 2)
    P_all, ok_all = camera.lift_to_plane(uv_all, 0.1)
    depth = camera.world_to_camera(P_all)[:, 2].reshape(H, W)
    depth[~ok_all.reshape(H, W)] = np.nan
    uv = np.array([[(20 + 0.5) / W, (30 + 0.5) / H], [(100 + 0.5) / W, (90 + 0.5) / H]])   # pixel centres
    P, ok = lift_trace(camera, uv, plane_z=0.0, depth_m=depth)
    assert ok.all()
    np.testing.assert_allclose(P[:, 2], 0.1, atol=1e-9)      # from the depth, not the z = 0 fallback plane
    depth[30, 20] = np.nan                                   # no reading -> falls back to the plane (or invalid)
    P, ok = lift_trace(camera, uv, plane_z=0.0, depth_m=depth)
    assert ok.all() and abs(P[0, 2]) < 1e-9 and abs(P[1, 2] - 0.1) < 1e-9
    assert lift_trace(camera, uv, depth_m=depth, fallback_to_plane=False)[1].tolist() == [False, True]
    with pytest.raises(ValueError, match="depth_m"):
        lift_trace(camera, uv, depth_m=np.ones((10, 10)))


def test_marker_arrays_keep_order_and_skip_invalid():
    P = np.arange(12, dtype=float).reshape(4, 3)
    m = trace_marker_arrays(P, np.array([True, False, True, True]))
    np.testing.assert_array_equal(m["points"], P[[0, 2, 3]])
    assert m["labels"] == ["1", "3", "4"] and m["colors"].shape == (3, 4)
    np.testing.assert_allclose(m["colors"][0], [0.2, 1.0, 0.2, 1.0])
    np.testing.assert_allclose(m["colors"][-1], [1.0, 0.2, 0.2, 1.0])
