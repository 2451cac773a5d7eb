"""Helpers for tests that run real rclpy over DDS on loopback (imported by test modules, not a fixture file)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from semanticvla_core.interfaces import ActionChunkData, TracePlan
from semanticvla_core.scheduling import normal_scheduling

HERE = Path(__file__).resolve().parent


def reference_trace(seed: int, hidden: int = 65536) -> TracePlan:
    """A deterministic TracePlan whose conditioning arrays exceed 1 MB (4 x 65536 float32 = 1 MiB + E_v)."""
    rng = np.random.default_rng(seed)
    return TracePlan(
        anchors=rng.random((4, 2)).astype(np.float32),
        latent_ids=rng.integers(0, 32, 4).astype(np.int32),
        latent_hidden=rng.standard_normal((4, hidden)).astype(np.float32),
        visual_features=rng.standard_normal((16, 384)).astype(np.float32),
        image_width=224, image_height=160,
        instruction="put the red cube on the blue plate \u2013 gently",
        raw_text="[[120, 450], [300, 400], [500, 380], [640, 600]]<ACT_3><ACT_17><ACT_0><ACT_31>",
        parse_ok=bool(seed % 2), plan_id=2**40 + seed, planning_latency_s=0.123,
        stamp_ns=1_700_000_000_123_456_789 + seed, frame_id="agentview_optical_frame",
    )


def reference_chunk(seed: int) -> ActionChunkData:
    rng = np.random.default_rng(seed + 1)
    return ActionChunkData(
        actions=rng.standard_normal((8, 7)).astype(np.float32), dt=0.05, action_space="ee_delta_xyz_rotvec_gripper",
        plan_id=2**40 + seed, joint_names=[f"j{i}" for i in range(7)], stamp_ns=1_700_000_000_987_654_321 + seed,
        frame_id="panda_link0",
    )


def start_peer(script: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """Start a python script from test/ as a separate process in this test's DDS domain."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.Popen([sys.executable, str(HERE / script), *args], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=normal_scheduling)


def stop_peer(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """Stop a peer (SIGTERM, then SIGKILL) and return its output; never leaves it running."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read() if proc.stdout else ""


def spin_until(executor, predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
        if predicate():
            return True
    return predicate()


# ------------------------------------------------------------------------------------------ node harness
class Harness:
    """A test-side rclpy node that publishes to and records from the nodes under test."""

    def __init__(self, name: str = "test_harness"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        if not rclpy.ok():
            rclpy.init()
        self.node = rclpy.create_node(f"{name}_{os.getpid()}")
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        self.procs: list[subprocess.Popen] = []

    def record(self, msg_type, topic: str, qos=10) -> list:
        got: list = []
        self.node.create_subscription(msg_type, topic, lambda m: got.append((time.monotonic(), m)), qos)
        return got

    def publisher(self, msg_type, topic: str, qos=10):
        return self.node.create_publisher(msg_type, topic, qos)

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.02)

    def spin_until(self, predicate, timeout: float) -> bool:
        return spin_until(self.ex, predicate, timeout)

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def start(self, section: str, params: dict | None = None) -> subprocess.Popen:
        """Start one project node (by its parameter-file section) as a separate process, like the bring-up does."""
        from semanticvla_ros.bringup import node_command
        from semanticvla_ros.graph import graph, resolve_arguments

        spec = next(s for s in graph(resolve_arguments({"sim": "true"})) if s.name == section)
        spec.parameters = dict(params or {})
        cfg = str(HERE.parent / "config" / "franka.yaml")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        p = subprocess.Popen(node_command(spec, cfg), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True, preexec_fn=normal_scheduling)
        self.procs.append(p)
        return p

    def alive(self) -> list[bool]:
        return [p.poll() is None for p in self.procs]

    def close(self) -> dict[int, str]:
        outs = {p.pid: stop_peer(p) for p in self.procs}
        self.ex.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown()
        return outs


def wait_for_output(proc: subprocess.Popen, text: str, timeout: float) -> bool:
    """Read a node's output until ``text`` appears (the output is kept in proc._seen)."""
    import select

    # (the pipe's file descriptor, not the text stream: readline() after select() left lines that had arrived together
    # in the stream's buffer, where select() never sees them: a line that was there went unseen until the timeout)
    seen = getattr(proc, "_seen", "")
    fd = proc.stdout.fileno()
    end = time.monotonic() + timeout
    while text not in seen and time.monotonic() < end and proc.poll() is None:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            data = os.read(fd, 65536)
            if not data:
                break
            seen += data.decode(errors="replace")
    proc._seen = seen
    return text in seen


def tiny_checkpoint(directory: Path, stem: dict | None = None, state_dim: int = 0) -> Path:
    """A tiny policy with random weights (seeded), saved as a real checkpoint directory (``stem``: a
    ``VisualStemConfig`` dict for a decoder with a keypoint stem; ``state_dim`` 15: a decoder that reads the
    robot state)."""
    import torch

    from semanticvla_core.model.config import get_config
    from semanticvla_core.policy import SemanticVLAPolicy

    from semanticvla_core.normalize import DatasetStats, NormStats

    d = Path(directory) / (("tiny_policy" if not stem else "tiny_policy_stem") + (f"_state{state_dim}" if state_dim else ""))
    if not (d / "config.json").is_file():
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        # statistics of small motions (~2 mm / 2 mrad per step) so that the random policy's chunks are
        # physically sane: the graph tests then see the arm move instead of every chunk being rejected
        acts = rng.normal(0.0, 0.002, (2000, 7))
        acts[:, 6] = rng.uniform(0.0, 0.02, 2000)
        states = rng.normal(0.0, 0.3, (2000, 15))
        stats = DatasetStats(action=NormStats.compute(acts, min_range=1e-4), state=NormStats.compute(states))
        pol = SemanticVLAPolicy(get_config("tiny", stem=stem or {}, state_dim=state_dim), norm_stats=stats)
        if state_dim:   # the decoder's output layers start at zero (its output ignores every input): make it react
            with torch.no_grad():
                for n, w in pol.decoder.named_parameters():
                    if n.endswith(".weight") and w.ndim == 2 and not w.any():
                        w.normal_(0.0, 0.3)
        pol.save_pretrained(d)
    return d


@pytest.fixture
def h():
    """A Harness for one test (import it into a test module: ``from ros_testing import h``); at the end every node
    it started must be down and none may have printed a traceback."""
    harness = Harness()
    yield harness
    outs = harness.close()
    assert all(p.poll() is not None for p in harness.procs), "a node process survived shutdown"
    for p in harness.procs:
        assert "Traceback" not in outs[p.pid], outs[p.pid]
