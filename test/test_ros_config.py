"""One description of the graph and one table of parameters: the launch file, the bring-up, franka.yaml and the
node entry points must agree."""
import ast
from pathlib import Path

import pytest
import yaml

from semanticvla_ros.bringup import node_command, parse_launch_args
from semanticvla_ros.graph import LAUNCH_ARGUMENTS, find_executable, graph, resolve_arguments
from semanticvla_ros.params import PARAMS, to_yaml

ROOT = Path(__file__).resolve().parents[1]


def test_franka_yaml_declares_exactly_the_node_parameters():
    cfg = yaml.safe_load((ROOT / "config" / "franka.yaml").read_text())
    assert set(cfg) == set(PARAMS)
    for sec, ps in PARAMS.items():
        assert set(cfg[sec]["ros__parameters"]) == {p.name for p in ps}, sec
        for p in ps:
            assert p.description and len(p.description) > 10, (sec, p.name)
    # the file is what the table generates (regenerate with `python -m semanticvla_ros.params --write`)
    assert yaml.safe_load(to_yaml()) == cfg


def test_graph_follows_the_launch_arguments():
    names = lambda **kw: [s.name for s in graph(resolve_arguments(kw))]  # noqa: E731
    rsp = ["robot_state_publisher"] if find_executable("robot_state_publisher", "robot_state_publisher") else []
    assert names(sim="true") == ["perception", "planner", "controller", "safety_filter", "trace_overlay", *rsp, "sim"]
    assert "sim" not in names(sim="false") and "rviz" in names(rviz="true")
    specs = {s.name: s for s in graph(resolve_arguments({"use_moveit": "true", "checkpoint": "/ck", "instruction": "go"}))}
    safety = specs["safety_filter"].parameters
    assert {k: safety[k] for k in ("backend", "execution", "gripper_model")} == {
        "backend": "moveit", "execution": "cartesian", "gripper_model": "sim"}   # sim: its controller, its fingers
    assert specs["planner"].parameters == {"checkpoint": "/ck", "instruction": "go"}
    assert specs["controller"].parameters == {"checkpoint": "/ck"}
    real = {s.name: s for s in graph(resolve_arguments({"sim": "false", "checkpoint": "/ck"}))}
    assert real["safety_filter"].parameters == {"backend": "builtin"}        # the configured execution (stepwise)
    assert real["planner"].parameters == {"checkpoint": "/ck"}               # the configured instruction
    sim = {s.name: s for s in graph(resolve_arguments({"sim": "true", "checkpoint": "/ck"}))}
    assert sim["planner"].parameters == {"checkpoint": "/ck", "instruction": ""}   # waits for the episode's own
    with pytest.raises(ValueError, match="unknown launch argument"):
        resolve_arguments({"simm": "true"})
    assert set(LAUNCH_ARGUMENTS) >= {"sim", "checkpoint", "instruction", "use_moveit", "rviz"}
    assert parse_launch_args(["sim:=false", "instruction:=a b:=c"]) == {"sim": "false", "instruction": "a b:=c"}


def test_use_moveit_gives_the_safety_filter_what_moveit_py_needs():
    """The MoveIt parameters (semanticvla_core/safety/moveit_backend.py) on the safety filter, as the bring-up passes
    them (-p name:=value, nested names joined by '.'): the URDF and SRDF the builtin checker loads, the arm group's
    kinematics, the planning scene monitor and a pipeline; none without use_moveit."""
    import xml.etree.ElementTree as ET

    from semanticvla_core.safety.kinematics import panda_description_xml
    from semanticvla_core.safety.moveit_backend import moveit_parameters, nest_parameters, srdf_arm_group

    spec = next(s for s in graph(resolve_arguments({"use_moveit": "true"})) if s.name == "safety_filter")
    flat = spec.flat_parameters()
    urdf, srdf = panda_description_xml()
    assert flat["robot_description"] == urdf and flat["robot_description_semantic"] == srdf
    assert ET.fromstring(urdf).get("name") == "panda" and srdf_arm_group(srdf) == "arm"
    assert "package://" not in urdf and "file://" in urdf          # meshes resolve without a ROS package index
    assert flat["robot_description_kinematics.arm.kinematics_solver"] == "kdl_kinematics_plugin/KDLKinematicsPlugin"
    assert flat["planning_scene_monitor_options.joint_state_topic"] == "/joint_states"
    assert flat["planning_pipelines.pipeline_names"] == ["ompl"]
    assert nest_parameters({k: v for k, v in flat.items() if k not in ("backend", "execution", "gripper_model")}) \
        == moveit_parameters()
    # the bring-up's command line, parsed by rcl as the node will: every value arrives unchanged (the URDF's lines too)
    import rclpy

    cmd = node_command(spec, str(ROOT / "config" / "franka.yaml"))
    ctx = rclpy.Context()
    rclpy.init(args=["safety_node", *cmd[cmd.index("--ros-args"):]], context=ctx)
    try:
        node = rclpy.create_node("safety_filter", context=ctx, automatically_declare_parameters_from_overrides=True)
        got = {k: node.get_parameter(k).value for k in flat}
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
    assert {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in got.items()} == flat
    plain = next(s for s in graph(resolve_arguments({})) if s.name == "safety_filter")
    assert not any("robot_description" in k for k in plain.flat_parameters())


def test_default_checkpoint_does_not_depend_on_the_working_directory(tmp_path):
    """checkpoint '' = the shipped demo checkpoint, for the installed package (share/semanticvla_ros/checkpoints/demo,
    CMakeLists.txt installs it) from any directory, with or without AMENT_PREFIX_PATH; for the source tree its
    checkpoints/demo. The nodes resolve '' the same way (one function); $SEMANTICVLA_CHECKPOINT overrides."""
    import json
    import os
    import subprocess
    import sys
    import sysconfig

    from semanticvla_ros.policy_loading import resolve_checkpoint

    venv = Path(sys.prefix)
    installed = Path(sysconfig.get_paths()["purelib"]) / "semanticvla_ros" / "graph.py"
    assert installed.is_file(), "semanticvla_ros is not installed: run bash scripts/setup.sh"
    code = ("import json, semanticvla_ros.graph as g, semanticvla_ros.policy_loading as p; "
            "a = g.resolve_arguments(); print(json.dumps([g.__file__, a['checkpoint'], a['config'], "
            "p.resolve_checkpoint('')]))")
    for ament in (None, str(venv)):
        env = {k: v for k, v in os.environ.items()
               if k not in ("AMENT_PREFIX_PATH", "PYTHONPATH", "SEMANTICVLA_CHECKPOINT")}
        if ament:
            env["AMENT_PREFIX_PATH"] = ament
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        module, ckpt, config, node_ckpt = json.loads(r.stdout.strip().splitlines()[-1])
        share = venv / "share" / "semanticvla_ros"
        assert Path(module) == installed
        assert Path(ckpt) == share / "checkpoints" / "demo" and (Path(ckpt) / "config.json").is_file(), ckpt
        assert node_ckpt == ckpt and Path(config) == share / "config" / "franka.yaml"
    # this process's copy (installed, or the source tree's checkpoints/demo); an explicit value and the environment win
    src = resolve_checkpoint("")
    assert (Path(src) / "config.json").is_file()
    assert resolve_checkpoint("/some/ckpt") == "/some/ckpt"
    os.environ["SEMANTICVLA_CHECKPOINT"] = "/env/ckpt"
    try:
        assert resolve_checkpoint("") == "/env/ckpt" and resolve_arguments({})["checkpoint"] == "/env/ckpt"
    finally:
        del os.environ["SEMANTICVLA_CHECKPOINT"]


def test_every_node_has_an_entry_point_and_a_section():
    for spec in [s for s in graph(resolve_arguments({"sim": "true"})) if s.module]:   # ours, not robot_state_publisher
        assert spec.name in PARAMS
        exe = ROOT / "bin" / spec.executable
        assert exe.is_file() and exe.stat().st_mode & 0o111, exe
        assert f"from {spec.module} import main" in exe.read_text()
        cmd = node_command(spec, "/cfg.yaml")
        assert cmd[1:3] == ["-m", spec.module] and f"__node:={spec.name}" in cmd


def test_launch_file_uses_launch_ros_and_the_shared_graph():
    src = (ROOT / "launch" / "franka.launch.py").read_text()
    tree = ast.parse(src)
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("launch_ros.actions", "Node") in imported and ("launch", "LaunchDescription") in imported
    assert ("semanticvla_ros.graph", "graph") in imported
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    assert (ROOT / "config" / "rviz" / "semanticvla.rviz").is_file()
    assert ("semanticvla_ros.graph", "check_arguments") in imported      # optional packages before any node starts
