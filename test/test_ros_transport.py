"""Trace and ActionChunk published by one process and received by another over Fast DDS on loopback."""
import os

import numpy as np
import pytest
import rclpy

from ros_testing import reference_chunk, reference_trace, spin_until, start_peer, stop_peer
from semanticvla_ros.messages import chunk_from_msg, trace_from_msg
from semanticvla_ros.msg import ActionChunk, Trace


def test_env_is_loopback_only():
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


def test_messages_cross_processes_exactly():
    seed = 11
    peer = start_peer("peer_publish_messages.py", str(seed))
    got = {}
    rclpy.init()
    try:
        node = rclpy.create_node("transport_test_subscriber")
        node.create_subscription(Trace, "test/trace", lambda m: got.setdefault("trace", m), 10)
        node.create_subscription(ActionChunk, "test/chunk", lambda m: got.setdefault("chunk", m), 10)
        ex = rclpy.executors.SingleThreadedExecutor()
        ex.add_node(node)
        ok = spin_until(ex, lambda: len(got) == 2, timeout=30.0)
        out = stop_peer(peer)
        assert ok, f"nothing received from the peer process; its output:\n{out}"
        ex.shutdown()
        node.destroy_node()
    finally:
        stop_peer(peer)
        rclpy.try_shutdown()
    assert peer.returncode is not None  # the peer is gone: nothing left running

    sent, recv = reference_trace(seed), trace_from_msg(got["trace"])
    assert sent.latent_hidden.nbytes + sent.visual_features.nbytes >= 1_000_000
    for f in ("anchors", "latent_ids", "latent_hidden", "visual_features"):
        assert np.array_equal(getattr(recv, f), getattr(sent, f)), f
    for f in ("image_width", "image_height", "instruction", "raw_text", "parse_ok", "plan_id", "stamp_ns", "frame_id"):
        assert getattr(recv, f) == getattr(sent, f), f
    assert np.float32(recv.planning_latency_s) == np.float32(sent.planning_latency_s)

    sc, rc = reference_chunk(seed), chunk_from_msg(got["chunk"])
    assert np.array_equal(rc.actions, sc.actions)
    assert (rc.plan_id, rc.action_space, rc.joint_names, rc.stamp_ns, rc.frame_id) == \
        (sc.plan_id, sc.action_space, sc.joint_names, sc.stamp_ns, sc.frame_id)
    assert np.float32(rc.dt) == np.float32(sc.dt)
    assert got["chunk"].ACTION_SPACE_EE_DELTA == sc.action_space
