"""Suite-wide settings: ROS 2 traffic stays on loopback, and every test process gets its own DDS domain.

Set before any test imports rclpy; subprocesses started by tests inherit them.
"""
import os

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
if "ROS_DOMAIN_ID" not in os.environ or os.environ.get("SEMANTICVLA_TEST_DOMAIN_FROM_PID", "1") == "1":
    # Domain ids 1..101 are safe for participant port ranges; spread by pid (and xdist worker, if any).
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or "0"
    os.environ["ROS_DOMAIN_ID"] = str(1 + (os.getpid() * 7 + int(worker)) % 100)
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _normal_scheduling():
    """Belt and braces: whatever a test ran (AV1 encoders raise their caller to SCHED_FIFO), the next test and the
    processes it starts run on the normal scheduler."""
    yield
    from semanticvla_core.scheduling import normal_scheduling
    normal_scheduling()
