"""The launch file under the real ROS 2 Jazzy tooling (launch 3.4.3, launch_ros 0.26.6, ros2cli 0.32.2) from
``../shared/ros2-launch-kit``, installed into this venv by the kit's own ``install.sh`` (a no-op when its stamp is
current; ~25 s the first time). Skipped, with the reason, where the kit folder is absent (a user's fresh clone).

The package is run as installed (``scripts/setup.sh``: share/semanticvla_ros, lib/semanticvla_ros, site-packages),
from a directory outside the repository, so nothing can come from the source tree or the working directory.
"""
from __future__ import annotations

import filecmp
import importlib.util
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KIT = Path(os.environ.get("SEMANTICVLA_ROS2_LAUNCH_KIT", ROOT.parent / "shared" / "ros2-launch-kit"))  # as setup.sh
VENV = Path(sys.prefix)
ROS2 = VENV / "bin" / "ros2"
SHARE = VENV / "share" / "semanticvla_ros"
SITE = Path(sysconfig.get_paths()["purelib"]) / "semanticvla_ros"

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def ros2():
    """The kit's ``ros2`` in this venv, with the installed package matching the sources."""
    if not (KIT / "install.sh").is_file():
        pytest.skip(f"ROS 2 launch kit not found at {KIT}: these tests run the real `ros2 launch` from it "
                    "(CI has it beside the clone as ../shared/ros2-launch-kit)")
    r = subprocess.run(["bash", str(KIT / "install.sh"), str(VENV)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and ROS2.is_file(), f"kit install failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    # the nodes run from the installed copy: a stale one would test old code
    pairs = [(ROOT / "semanticvla_ros" / f.name, SITE / f.name) for f in (ROOT / "semanticvla_ros").glob("*.py")]
    pairs += [(ROOT / "launch" / "franka.launch.py", SHARE / "launch" / "franka.launch.py"),
              (ROOT / "config" / "franka.yaml", SHARE / "config" / "franka.yaml")]
    stale = [str(b) for a, b in pairs if not b.is_file() or not filecmp.cmp(a, b, shallow=False)]
    assert not stale, f"the installed package differs from the sources ({stale[:3]}): run bash scripts/setup.sh"
    return str(ROS2)


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ, TMPDIR=str(tmp_path), ROS_LOG_DIR=str(tmp_path / "log"), PYTHONUNBUFFERED="1")
    e.pop("MUJOCO_GL", None)            # a bare shell has none: the launch file gives the sim its EGL default
    e.pop("SEMANTICVLA_CHECKPOINT", None)
    e.pop("PYTHONPATH", None)
    return e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:        # a zombie not yet reaped by its (gone) parent counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


_RVIZ_TYPES = {"rviz_default_plugins/RobotModel": "std_msgs/msg/String",
               "rviz_default_plugins/MarkerArray": "visualization_msgs/msg/MarkerArray",
               "rviz_default_plugins/Image": "sensor_msgs/msg/Image",
               "rviz_default_plugins/Pose": "geometry_msgs/msg/PoseStamped"}


def _rviz_config() -> tuple[str, list[tuple[str, str]]]:
    """The installed RViz config's fixed frame and (topic, type) of every display that reads a topic (TF aside)."""
    import yaml

    vm = yaml.safe_load((SHARE / "config" / "rviz" / "semanticvla.rviz").read_text())["Visualization Manager"]
    topics = []
    for d in vm["Displays"]:
        if d["Class"] in _RVIZ_TYPES:
            topic = d.get("Description Topic", d.get("Topic"))["Value"]
            topics.append((topic, _RVIZ_TYPES[d["Class"]]))
    return vm["Global Options"]["Fixed Frame"], topics


def _started_pids(text: str) -> list[int]:
    return [int(p) for p in re.findall(r"process started with pid \[(\d+)\]", text)]


def test_bare_launch_from_another_directory_plans_acts_and_stops_on_ctrl_c(ros2, env, tmp_path):
    """`ros2 launch semanticvla_ros franka.launch.py` with no argument, from outside the repository: the shipped
    demo checkpoint is found through the package (share/semanticvla_ros/checkpoints/demo), the planner plans and the
    controller acts on the sim; /robot_description is there for RViz; Ctrl-C (SIGINT to the launcher only, as the
    kit's README describes) stops every node cleanly and leaves no process."""
    import numpy as np
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from ros_testing import Harness
    from semanticvla_ros.msg import ActionChunk, Trace

    rc = None
    h = Harness("launch_observer")
    traces = h.record(Trace, "/semanticvla/trace")
    chunks = h.record(ActionChunk, "/semanticvla/action_chunk", 50)
    rows = h.record(ActionChunk, "/panda_cartesian_controller/ee_delta", 50)    # checked commands sent to the arm
    js = h.record(JointState, "/joint_states", 50)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    description = h.record(String, "/robot_description", latched)
    log = tmp_path / "launch.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([ros2, "launch", "semanticvla_ros", "franka.launch.py"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        flowing = h.spin_until(lambda: len(traces) >= 2 and len(chunks) >= 2 and len(rows) >= 3 and description, 120)
        nodes = set(h.node.get_node_names())
        text = log.read_text()
        assert flowing and js, (len(traces), len(chunks), len(rows), len(description), len(js), text[-4000:])
        q0 = np.array(js[0][1].position[:7])
        moved = h.spin_until(lambda: np.abs(np.array(js[-1][1].position[:7]) - q0).max() > 1e-3, 30)
        assert moved, "the arm did not move"
        assert {"perception", "planner", "controller", "safety_filter", "trace_overlay", "sim"} <= nodes, nodes
        # every topic the RViz config shows is there, with the display's type
        fixed_frame, rviz_topics = _rviz_config()
        graph_topics = dict(h.node.get_topic_names_and_types())
        missing = [(t, ty) for t, ty in rviz_topics if ty not in graph_topics.get(t, [])]
        assert len(rviz_topics) >= 6 and not missing, (missing, sorted(graph_topics))
        demo = str(SHARE / "checkpoints" / "demo")        # installed with the package, not the source tree's
        assert f"loaded policy from {demo}" in text and "no checkpoint" not in text, text[-4000:]
        assert len(_started_pids(text)) >= 6, text[-4000:]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)                  # Ctrl-C, to the launcher only
        rc = proc.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.5)
        pids = _started_pids(log.read_text())
        left = [p for p in pids if _alive(p)] + ([proc.pid] if _group_alive(proc.pid) else [])
        if left:                                   # never leave them running, whatever the outcome
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            for p in pids:
                if _alive(p):
                    os.kill(p, signal.SIGKILL)
        proc.wait()
        h.close()
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert not left, f"a node outlived the launch: {left}"
    assert took < 20.0, (took, text[-3000:])
    assert "Traceback" not in text and "Caught exception" not in text, text[-4000:]
    assert text.count("process has finished cleanly") == len(pids), text[-3000:]
    # the published description is the URDF the safety filter checks against
    from semanticvla_core.safety.kinematics import panda_description_xml
    assert description[-1][1].data == panda_description_xml()[0]
    robot = ET.fromstring(description[-1][1].data)
    assert {"panda_link0", "panda_hand_tcp"} <= {link.get("name") for link in robot.iter("link")}
    # RViz's fixed frame is the robot's base link, the frame of the trace markers and of the camera poses
    from semanticvla_ros.params import PARAMS
    assert fixed_frame == robot.find("link").get("name") == "panda_link0"
    assert next(p.default for p in PARAMS["trace_overlay"] if p.name == "marker_frame") == fixed_frame


@pytest.mark.parametrize("starter", ["ros2 launch", "bringup"])
@pytest.mark.parametrize("argument,missing", [("rviz:=true", "rviz2"), ("use_moveit:=true", "moveit")])
def test_optional_package_missing_starts_nothing(request, env, tmp_path, starter, argument, missing):
    """rviz:=true without rviz2, use_moveit:=true without moveit_py: one message naming what is missing, exit 1 and no
    node started (before: the other six nodes were scheduled and kept running as orphans). The bring-up the same (it
    needs no kit)."""
    from semanticvla_core.safety.moveit_backend import moveit_unavailable_reason
    from semanticvla_ros.graph import find_executable

    if missing == "rviz2" and find_executable("rviz2", "rviz2") is not None:
        pytest.skip("rviz2 is installed here")
    if missing == "moveit" and moveit_unavailable_reason() is None:
        pytest.skip("moveit_py is installed here")
    if starter == "ros2 launch":
        cmd, prefix = [request.getfixturevalue("ros2"), "launch", "semanticvla_ros", "franka.launch.py", argument], \
            "[ERROR] [launch]"
    else:
        cmd, prefix = [sys.executable, "-m", "semanticvla_ros.bringup", argument], "[bringup] error"
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=60)
    finally:
        orphans = _group_alive(p.pid)
        if orphans or p.poll() is None:       # never leave them running, whatever the outcome
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert not orphans, f"processes outlived the failed start:\n{out}"
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert p.returncode == 1, out
    assert len(errors) == 1 and errors[0].startswith(prefix) and missing in errors[0], out
    assert f"{argument} needs" in errors[0] and "Nothing was started" in errors[0], out
    assert not _started_pids(out) and "[bringup] started" not in out, out


def test_ros2_run_and_interface_show_on_the_package(ros2, env, tmp_path):
    """`ros2 interface show` finds the messages; `ros2 run` starts a node from lib/semanticvla_ros, and it ends at
    once on SIGTERM (a supervisor's stop) although it has no input."""
    r = subprocess.run([ros2, "interface", "show", "semanticvla_ros/msg/Trace"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "anchors_u" in r.stdout and "latent_ids" in r.stdout, r.stdout + r.stderr

    from ros_testing import Harness
    h = Harness("run_observer")
    p = subprocess.Popen([ros2, "run", "semanticvla_ros", "trace_overlay_node"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        up = h.spin_until(lambda: any(i.node_name == "trace_overlay"
                                      for i in h.node.get_publishers_info_by_topic("/semanticvla/trace_markers")), 60)
        assert up, p.poll()
        h.spin_for(1.0)
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGTERM)     # ros2 run and the node it starts, as a supervisor stopping the group
        p.wait(timeout=10)
        while _group_alive(p.pid) and time.monotonic() - t0 < 10.0:
            time.sleep(0.02)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        h.close()
    out = p.stdout.read()
    time.sleep(0.2)
    assert took < 3.0 and not _group_alive(p.pid), (took, out[-2000:])
    assert "Traceback" not in out, out[-2000:]


def test_launch_gives_the_safety_filter_what_moveit_py_needs(ros2):
    """use_moveit:=true: the launch description (the installed launch file, evaluated by launch_ros as it would start
    the node) hands the safety filter MoveIt's parameters: a non-empty URDF and SRDF, the arm group's kinematics
    solver, the planning scene monitor's options and a planning pipeline. Static: moveit_py cannot run here."""
    from launch import LaunchContext
    from launch_ros.actions import Node
    from launch_ros.utilities import evaluate_parameters

    from semanticvla_ros.graph import resolve_arguments

    spec = importlib.util.spec_from_file_location("franka_launch", SHARE / "launch" / "franka.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    actions = mod.node_actions(resolve_arguments({"use_moveit": "true"}))
    # launch_ros keeps a node's name and parameters private until it executes the node; evaluate them as it does
    safety = next(a for a in actions if isinstance(a, Node) and a._Node__node_name == "safety_filter")
    evaluated = evaluate_parameters(LaunchContext(), safety._Node__parameters)
    params = {k: v for d in evaluated if isinstance(d, dict) for k, v in d.items()}
    assert any(str(d).endswith("franka.yaml") for d in evaluated if not isinstance(d, dict))
    assert params["backend"] == "moveit"
    urdf, srdf = params["robot_description"], params["robot_description_semantic"]
    assert isinstance(urdf, str) and isinstance(srdf, str)
    links = {link.get("name") for link in ET.fromstring(urdf).iter("link")}
    assert {"panda_link0", "panda_link8", "panda_hand_tcp"} <= links
    groups = {g.get("name") for g in ET.fromstring(srdf).iter("group")}
    assert "arm" in groups
    assert params["robot_description_kinematics.arm.kinematics_solver"] == "kdl_kinematics_plugin/KDLKinematicsPlugin"
    assert params["planning_scene_monitor_options.robot_description"] == "robot_description"
    assert params["planning_scene_monitor_options.joint_state_topic"] == "/joint_states"
    assert tuple(params["planning_pipelines.pipeline_names"]) == ("ompl",)
    assert params["ompl.planning_plugins"] == ("ompl_interface/OMPLPlanner",)
    # without use_moveit the safety filter gets none of it
    plain = mod.node_actions(resolve_arguments({}))
    safety = next(a for a in plain if isinstance(a, Node) and a._Node__node_name == "safety_filter")
    evaluated = evaluate_parameters(LaunchContext(), safety._Node__parameters)
    assert not any("robot_description" in k for d in evaluated if isinstance(d, dict) for k in d)
