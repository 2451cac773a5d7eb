"""One description of the graph and one table of parameters: the launch file, the bring-up, franka.yaml and the
node entry points must agree."""
import ast
from pathlib import Path

import pytest
import yaml

from semanticvla_ros.bringup import node_command, parse_launch_args
from semanticvla_ros.graph import LAUNCH_ARGUMENTS, graph, resolve_arguments
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
    assert names(sim="true") == ["perception", "planner", "controller", "safety_filter", "trace_overlay", "sim"]
    assert "sim" not in names(sim="false") and "rviz" in names(rviz="true")
    specs = {s.name: s for s in graph(resolve_arguments({"use_moveit": "true", "checkpoint": "/ck", "instruction": "go"}))}
    assert specs["safety_filter"].parameters == {"backend": "moveit", "execution": "cartesian", "gripper_model": "sim"}   # sim: its controller, its fingers
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


def test_every_node_has_an_entry_point_and_a_section():
    for spec in graph(resolve_arguments({"sim": "true"})):
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
