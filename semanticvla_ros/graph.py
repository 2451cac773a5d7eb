"""The one description of the runtime graph, shared by ``launch/franka.launch.py`` (launch_ros, on machines
with a ROS distribution) and ``semanticvla_ros.bringup`` (plain processes, where only the pip wheels exist).

Launch arguments (both starters accept ``name:=value``):
  sim         true   run the MuJoCo Panda tabletop (sim node) in place of the real robot and cameras
  checkpoint  ""     policy checkpoint directory ("" = the checkpoint shipped in checkpoints/, if any)
  instruction ""     instruction to run ("" = the sim episode's own with sim:=true, else the planner's configured one)
  use_moveit  false  safety filter backend: MoveIt planning scene (needs moveit_py) instead of the built-in one
  rviz        false  start RViz with config/rviz/semanticvla.rviz (needs rviz2; the bring-up cannot)
  config      <share>/config/franka.yaml   node parameter file
  respawn     false  restart a planner, controller or perception that exited, after RESPAWN_DELAY_S

Supervision (both starters): every node exit is reported at once on NODE_EXIT_TOPIC (std_msgs/String holding
:func:`node_exit_message`, reliable + transient_local) so the safety filter holds the arm and names the node. An
exit of the safety filter or the sim (``NodeSpec.critical``) stops the whole graph with a non-zero exit code:
nothing could hold the arm any more. Any other node's exit leaves the rest running (the safety filter holds until
the node publishes again), and with ``respawn:=true`` perception, planner and controller are restarted.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "semanticvla_ros"
NODE_EXIT_TOPIC = "/semanticvla/supervisor/node_exit"   # std_msgs/String, JSON: see node_exit_message()
RESPAWN_DELAY_S = 1.0                                     # respawn:=true restarts a node this long after its exit
RESPAWNABLE = ("perception", "planner", "controller")     # the nodes respawn:=true restarts
CRITICAL = ("safety_filter", "sim")                       # their exit stops everything: nothing else can hold the arm


def _truthy(v: str) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def share_dir() -> Path:
    """The package's share directory (installed copy first, then the source tree)."""
    try:
        from ament_index_python.packages import get_package_share_directory
        p = Path(get_package_share_directory(PACKAGE))
        if (p / "config").is_dir():
            return p
    except Exception:  # noqa: BLE001 - not installed / no ament index: fall back to the source tree
        pass
    return Path(__file__).resolve().parents[1]


def source_root() -> Path | None:
    """The repository root when running from (or installed from) a source checkout, else None."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "package.xml").is_file() else None


def default_checkpoint() -> str:
    env = os.environ.get("SEMANTICVLA_CHECKPOINT")
    if env:
        return env
    for root in filter(None, [source_root(), share_dir()]):
        p = root / "checkpoints" / "demo"
        if (p / "config.json").is_file():
            return str(p)
    return ""


LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "sim": ("true", "Run the MuJoCo Panda tabletop instead of a real robot and cameras"),
    "checkpoint": ("", "Policy checkpoint directory ('' = the shipped demo checkpoint)"),
    "instruction": ("", "Language instruction ('' = the planner's configured default)"),
    "use_moveit": ("false", "Safety filter uses MoveIt's planning scene (moveit_py) instead of the built-in checker"),
    "rviz": ("false", "Start RViz with the trace overlay, markers and robot model"),
    "config": ("", "Node parameter file ('' = config/franka.yaml of the package)"),
    "respawn": ("false", f"Restart a planner, controller or perception that exited, after {RESPAWN_DELAY_S:g} s "
                         "(the safety filter holds the arm meanwhile)"),
}


@dataclass
class NodeSpec:
    name: str                                   # node name and its section in the parameter file
    executable: str                             # installed in lib/semanticvla_ros (launch_ros) ...
    module: str | None                          # ... and runnable as `python -m <module>` (bring-up); None = external
    package: str = PACKAGE
    parameters: dict = field(default_factory=dict)     # overrides from launch arguments
    arguments: list[str] = field(default_factory=list)
    remappings: list[tuple[str, str]] = field(default_factory=list)
    respawn: bool = False                       # restart after an exit (respawn:=true, RESPAWNABLE nodes)
    respawn_delay: float = RESPAWN_DELAY_S
    critical: bool = False                      # its exit stops the whole graph (CRITICAL nodes)


def node_exit_message(node: str, returncode: int | None, stamp_ns: int) -> str:
    """What a supervisor publishes on NODE_EXIT_TOPIC when a node's process exits (returncode < 0: killed by that
    signal; stamp_ns: wall-clock time of the exit, the clock every node stamps with)."""
    return json.dumps({"node": node, "returncode": None if returncode is None else int(returncode),
                       "stamp_ns": int(stamp_ns)})


def resolve_arguments(given: dict[str, str] | None = None) -> dict[str, str]:
    args = {k: v[0] for k, v in LAUNCH_ARGUMENTS.items()}
    for k, v in (given or {}).items():
        if k not in args:
            raise ValueError(f"unknown launch argument {k!r}; known: {', '.join(args)}")
        args[k] = v
    if not args["config"]:
        args["config"] = str(share_dir() / "config" / "franka.yaml")
    if not args["checkpoint"]:
        args["checkpoint"] = default_checkpoint()
    return args


def graph(args: dict[str, str]) -> list[NodeSpec]:
    """Nodes to start for resolved launch arguments (see :func:`resolve_arguments`)."""
    ckpt = {"checkpoint": args["checkpoint"]} if args["checkpoint"] else {}
    instr = {"instruction": args["instruction"]} if args["instruction"] else {}
    # with the sim and no instruction given, the planner waits for the episode's own (the sim announces it on
    # /semanticvla/instruction) instead of planning the configured default until it arrives
    plan_instr = instr or ({"instruction": ""} if _truthy(args["sim"]) else {})
    nodes = [
        NodeSpec("perception", "perception_node", f"{PACKAGE}.perception_node"),
        NodeSpec("planner", "planner_node", f"{PACKAGE}.planner_node", parameters={**ckpt, **plan_instr}),
        NodeSpec("controller", "controller_node", f"{PACKAGE}.controller_node", parameters=dict(ckpt)),
        NodeSpec("safety_filter", "safety_node", f"{PACKAGE}.safety_node",
                 parameters={"backend": "moveit" if _truthy(args["use_moveit"]) else "builtin",
                             # the sim node has the Cartesian controller that recorded the demonstrations
                             # and its fingers carry the sim's longer pads (the checker's collision model includes them)
                             **({"execution": "cartesian", "gripper_model": "sim"} if _truthy(args["sim"]) else {})}),
        NodeSpec("trace_overlay", "trace_overlay_node", f"{PACKAGE}.trace_overlay_node"),
    ]
    if _truthy(args["sim"]):
        nodes.append(NodeSpec("sim", "sim_node", f"{PACKAGE}.sim_node", parameters=dict(instr)))
    if _truthy(args["rviz"]):
        rviz_cfg = str(share_dir() / "config" / "rviz" / "semanticvla.rviz")
        nodes.append(NodeSpec("rviz", "rviz2", None, package="rviz2", arguments=["-d", rviz_cfg]))
    for n in nodes:
        n.critical = n.name in CRITICAL
        n.respawn = _truthy(args["respawn"]) and n.name in RESPAWNABLE
    return nodes
