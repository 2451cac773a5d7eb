"""Trace windows, resampling and the [[x, y], ...] text codec (semanticvla_core.traces)."""
import numpy as np
import pytest

from semanticvla_core.traces import (object_keypoints, COORD_SCALE, DEFAULT_NUM_ANCHORS, DEFAULT_WINDOW, encode_trace_text,
                                     parse_trace_text, resample_trace, trace_windows, validate_trace)


def test_codec_round_trip_within_quantization():
    rng = np.random.default_rng(0)
    for n in (1, 4, 7):
        pts = rng.uniform(0, 1, (n, 2)).astype(np.float32)
        text = encode_trace_text(pts)
        parsed = parse_trace_text(text, expected_n=n)
        assert parsed.ok and parsed.problems == []
        assert parsed.points.shape == (n, 2)
        assert np.abs(parsed.points - pts).max() <= 0.5 / COORD_SCALE + 1e-6
        # the text itself is the canonical integer form and re-encodes to the same string
        assert encode_trace_text(parsed.points) == text


def test_codec_format_is_integers_0_1000():
    text = encode_trace_text(np.array([[0.0, 1.0], [0.1234, 0.5]]))
    assert text == "[[0, 1000], [123, 500]]"


@pytest.mark.parametrize("text, expected_n, n_problems_min", [
    ("[[100, 200], [300, 400]", 2, 1),              # missing closing bracket
    ("Sure! [[100, 200], [300, 400]] done", 2, 1),  # chatter around the list
    ("[[100, 200]]", 4, 1),                         # too short -> padded
    ("[[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]", 4, 1),  # too long -> truncated
    ("100 200 300 400", 2, 1),                      # no brackets at all
    ("[[1500, -20], [10, 20]]", 2, 1),              # out of range -> clipped
    ("no numbers here", 4, 1),                      # nothing -> centre
    ("", 4, 1),
])
def test_malformed_text_recovers_with_flag(text, expected_n, n_problems_min):
    parsed = parse_trace_text(text, expected_n=expected_n)
    assert not parsed.ok
    assert len(parsed.problems) >= n_problems_min
    assert parsed.points.shape == (expected_n, 2)
    assert np.all((parsed.points >= 0) & (parsed.points <= 1)) and np.all(np.isfinite(parsed.points))


def test_malformed_text_keeps_recoverable_values():
    parsed = parse_trace_text("Sure! [[100, 200], [300, 400]", expected_n=3)
    np.testing.assert_allclose(parsed.points, [[0.1, 0.2], [0.3, 0.4], [0.3, 0.4]], atol=1e-6)
    parsed = parse_trace_text("[[1500, -20]]", expected_n=1)
    np.testing.assert_allclose(parsed.points, [[1.0, 0.0]])
    assert parse_trace_text(None, expected_n=2).points.shape == (2, 2)   # not even a string: no exception


def test_resample_time_and_arclength():
    # constant-speed line: both modes agree and hit the exact linear positions
    line = np.stack([np.linspace(0, 1, DEFAULT_WINDOW), np.zeros(DEFAULT_WINDOW)], 1)
    for mode in ("time", "arclength"):
        a = resample_trace(line, DEFAULT_NUM_ANCHORS, mode=mode)
        np.testing.assert_allclose(a[:, 0], np.linspace(0, 1, DEFAULT_NUM_ANCHORS), atol=1e-6)
    # uneven speed: time keeps the pauses, arclength spaces evenly along the path
    slow = np.array([[0, 0], [0.01, 0], [0.02, 0], [1, 0]], np.float32)
    t = resample_trace(slow, 3, "time")
    s = resample_trace(slow, 3, "arclength")
    assert abs(t[1, 0] - 0.015) < 1e-6 and abs(s[1, 0] - 0.5) < 1e-6
    np.testing.assert_allclose(t[[0, -1]], slow[[0, -1]])
    # round trip window -> anchors -> window is exact for straight constant-speed motion
    back = resample_trace(resample_trace(line, 4), DEFAULT_WINDOW)
    np.testing.assert_allclose(back, line, atol=1e-6)
    # batched shapes
    assert resample_trace(np.zeros((5, 3, DEFAULT_WINDOW, 2)), 4).shape == (5, 3, 4, 2)
    with pytest.raises(ValueError, match="mode"):
        resample_trace(line, 4, mode="bogus")


def test_trace_windows_pad_with_last_point_and_presence():
    pts = np.stack([np.arange(5) / 10, np.zeros(5)], 1)
    present = np.array([True, True, False, True, True])
    win, ok = trace_windows(pts, present, window=3)
    assert win.shape == (5, 3, 2)
    np.testing.assert_allclose(win[3, :, 0], [0.3, 0.4, 0.4])
    assert ok.tolist() == [True, True, False, True, True]
    with pytest.raises(ValueError, match="points"):
        trace_windows(np.zeros((5, 3)))


def test_validate_trace_names_problem():
    with pytest.raises(ValueError, match="outside"):
        validate_trace(np.array([[0.5, 1.2]]), name="anchors")
    with pytest.raises(ValueError, match="non-finite"):
        validate_trace(np.array([[np.nan, 0.2]]))


def test_object_keypoints_follow_grasp_carry_and_place():
    T = 10
    grip = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0], float)          # closes at 3, opens at 7
    pts = np.stack([np.arange(T) / 10, np.arange(T) / 20], -1).astype(np.float32)
    present = np.ones(T, bool)
    present[7] = False                                              # the place point is hidden
    uv, ok = object_keypoints(grip, pts, present)
    np.testing.assert_allclose(uv[:4, 0], np.repeat(pts[3:4], 4, 0))   # at the grasp point until the grasp
    np.testing.assert_allclose(uv[4:7, 0], pts[4:7])                    # then with the hand
    np.testing.assert_allclose(uv[7:, 0], np.repeat(pts[7:8], 3, 0))    # then where it was put down
    np.testing.assert_allclose(uv[:, 1], np.repeat(pts[7:8], T, 0))     # the destination: the place point
    assert ok[:7, 0].all() and not ok[7:, 0].any() and not ok[:, 1].any()
    # never grasped, or never released: nothing to supervise
    assert not object_keypoints(np.zeros(T), pts)[1].any()
    assert not object_keypoints(np.r_[np.zeros(5), np.ones(5)], pts)[1].any()
    with pytest.raises(ValueError, match="points"):
        object_keypoints(grip, pts[:5])
    # any point dimension (the wrist targets use 3-D TCP positions): the same phases
    p3 = np.concatenate([pts, np.arange(T)[:, None] / 30], axis=1).astype(np.float32)
    xyz, ok3 = object_keypoints(grip, p3)
    assert xyz.shape == (T, 2, 3) and ok3.all()
    np.testing.assert_allclose(xyz[:, :, :2], object_keypoints(grip, pts)[0])
    np.testing.assert_allclose(xyz[4:7, 0, 2], p3[4:7, 2])
