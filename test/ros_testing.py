"""Helpers for tests that run real rclpy over DDS on loopback (imported by test modules, not a fixture file)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from semanticvla_core.interfaces import ActionChunkData, TracePlan

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
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
