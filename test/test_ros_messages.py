"""The message helper: numpy <-> Trace / ActionChunk with shape checks (no DDS involved here)."""
import numpy as np
import pytest

from ros_testing import reference_chunk, reference_trace
from semanticvla_ros.messages import chunk_from_msg, chunk_to_msg, ns_to_stamp, stamp_to_ns, trace_from_msg, trace_to_msg


def test_trace_roundtrip_exact():
    p = reference_trace(3, hidden=1024)
    q = trace_from_msg(trace_to_msg(p))
    for f in ("anchors", "latent_ids", "latent_hidden", "visual_features"):
        assert np.array_equal(getattr(q, f), getattr(p, f)), f
    for f in ("image_width", "image_height", "instruction", "raw_text", "parse_ok", "plan_id", "stamp_ns", "frame_id"):
        assert getattr(q, f) == getattr(p, f), f
    assert q.planning_latency_s == pytest.approx(p.planning_latency_s, rel=1e-6)  # float32 field


def test_chunk_roundtrip_exact():
    c = reference_chunk(5)
    d = chunk_from_msg(chunk_to_msg(c))
    assert np.array_equal(d.actions, c.actions) and d.actions.shape == (8, 7)
    assert (d.dt, d.action_space, d.plan_id, d.joint_names, d.stamp_ns, d.frame_id) == \
        (pytest.approx(c.dt), c.action_space, c.plan_id, c.joint_names, c.stamp_ns, c.frame_id)


def test_stamp_conversion():
    assert stamp_to_ns(ns_to_stamp(1_234_567_890_123)) == 1_234_567_890_123
    with pytest.raises(ValueError, match="negative"):
        ns_to_stamp(-1)


@pytest.mark.parametrize("mutate, match", [
    (lambda m: setattr(m, "actions", m.actions[:-1]), r"55 values, expected horizon\*action_dim = 8\*7 = 56"),
    (lambda m: setattr(m, "horizon", 0), "must be positive"),
    (lambda m: m.actions.__setitem__(3, float("nan")), "NaN"),
    (lambda m: setattr(m, "dt", 0.0), "dt"),
    (lambda m: setattr(m, "joint_names", ["a", "b"]), "joint_names"),
])
def test_malformed_chunk_messages_raise_clear_errors(mutate, match):
    m = chunk_to_msg(reference_chunk(1))
    mutate(m)
    with pytest.raises(ValueError, match=match):
        chunk_from_msg(m)


@pytest.mark.parametrize("mutate, match", [
    (lambda m: setattr(m, "latent_hidden_shape", [4, 1000]), "do not fill shape"),
    (lambda m: setattr(m, "visual_features_shape", [16]), "expected 2 dimensions"),
    (lambda m: setattr(m, "anchors_v", m.anchors_v[:-1]), "anchors_u has 4 values but anchors_v has 3"),
    (lambda m: m.anchors_u.__setitem__(0, 1.5), r"outside \[0, 1\]"),
    (lambda m: setattr(m, "latent_ids", [1, 2, 3]), "3 latent ids"),
    (lambda m: setattr(m, "latent_ids", [1, 2, 3, -4]), "negative"),
    (lambda m: m.visual_features.__setitem__(7, float("inf")), "visual_features: contains NaN or inf"),
    (lambda m: setattr(m, "anchors_u", []) or setattr(m, "anchors_v", []), "anchors: must not be empty"),
])
def test_malformed_trace_messages_raise_clear_errors(mutate, match):
    m = trace_to_msg(reference_trace(2, hidden=64))
    mutate(m)
    with pytest.raises(ValueError, match=match):
        trace_from_msg(m)


def test_building_from_wrong_shapes_raises():
    p = reference_trace(1, hidden=8)
    p.anchors = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"anchors: expected shape \(N, 2\)"):
        trace_to_msg(p)
    c = reference_chunk(1)
    c.actions = np.zeros(7)
    with pytest.raises(ValueError, match="2-D"):
        chunk_to_msg(c)
