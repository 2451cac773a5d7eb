"""The one description of the runtime graph, shared by ``launch/franka.launch.py`` (launch_ros, on machines
with a ROS distribution) and ``semanticvla_ros.bringup`` (plain processes, where only the pip wheels exist).

Launch arguments (both starters accept ``name:=value``):
  sim         true   run the MuJoCo Panda tabletop (sim node) in place of the real robot and cameras
  checkpoint  ""     policy checkpoint directory ("" = the shipped demo checkpoint, installed with the package into
                     <share>/checkpoints/demo: see semanticvla_ros.policy_loading.resolve_checkpoint)
  instruction ""     instruction to run ("" = the sim episode's own with sim:=true, else the planner's configured one)
  use_moveit  false  safety filter backend: MoveIt planning scene (needs moveit_py) instead of the built-in one
  rviz        false  start RViz with config/rviz/semanticvla.rviz (needs rviz2)
  config      <share>/config/franka.yaml   node parameter file
  respawn     false  restart a planner, controller or perception that exited, after RESPAWN_DELAY_S

Optional packages (:func:`check_arguments`, called by both starters before anything starts): ``rviz:=true`` needs the
ROS package rviz2 and ``use_moveit:=true`` needs moveit_py; when one is missing, one message names it and nothing
is started (exit code 1 / launch error).

Robot model (RViz, MoveIt): the Panda URDF the safety filter checks against
(semanticvla_core.safety.kinematics.panda_description_xml). Where the ROS install has robot_state_publisher it is
started with that URDF: it publishes ``/robot_description`` (std_msgs/String, transient_local) and ``/tf`` from
``/joint_states``. Where it has not (pip-only installs), the trace overlay node publishes ``/robot_description``
itself and nothing publishes ``/tf``: RViz's RobotModel then reports "No transform" for the links (install
ros-jazzy-robot-state-publisher). Everything else in RViz (trace markers, camera poses) is in panda_link0.

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
SCENE_OBSTACLES_TOPIC = "/semanticvla/scene/obstacles"     # visualization_msgs/MarkerArray of CUBEs, latched
NODE_EXIT_TOPIC = "/semanticvla/supervisor/node_exit"   # std_msgs/String, JSON: see node_exit_message()
RESPAWN_DELAY_S = 1.0                                     # respawn:=true restarts a node this long after its exit
RESPAWNABLE = ("perception", "planner", "controller")     # the nodes respawn:=true restarts
CRITICAL = ("safety_filter", "sim")                       # their exit stops everything: nothing else can hold the arm


def _truthy(v: str) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def share_dir() -> Path:
    """The package's share directory, whatever the working directory: the ament index (AMENT_PREFIX_PATH, as a
    sourced ROS environment or the kit's ``ros2`` sets it), else the install prefix this module was installed into
    (``<prefix>/lib/python3.X/site-packages/semanticvla_ros`` -> ``<prefix>/share/semanticvla_ros``, no environment
    needed), else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory
        p = Path(get_package_share_directory(PACKAGE))
        if (p / "config").is_dir():
            return p
    except Exception:  # noqa: BLE001 - not installed / no ament index: look beside this module
        pass
    here = Path(__file__).resolve()
    for prefix in here.parents[1:6]:
        p = prefix / "share" / PACKAGE
        if (p / "package.xml").is_file() and (p / "config").is_dir():
            return p
    return here.parents[1]


def source_root() -> Path | None:
    """The repository root when running from (or installed from) a source checkout, else None."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "package.xml").is_file() else None


def default_checkpoint() -> str:
    """The checkpoint '' stands for (semanticvla_ros.policy_loading.resolve_checkpoint, the one place)."""
    from .policy_loading import resolve_checkpoint
    return resolve_checkpoint("")


def find_executable(package: str, executable: str) -> Path | None:
    """``<prefix>/lib/<package>/<executable>`` of a ROS package on AMENT_PREFIX_PATH (what ``ros2 run`` and
    launch_ros start), or None when the package or the executable is not there."""
    try:
        from ament_index_python.packages import get_package_prefix
        exe = Path(get_package_prefix(package)) / "lib" / package / executable
    except Exception:  # noqa: BLE001 - PackageNotFoundError, or no ament index at all
        return None
    return exe if exe.is_file() and os.access(exe, os.X_OK) else None


class MissingOptionalPackage(RuntimeError):
    """A launch argument asks for a package this machine does not have (raised before any node starts)."""


def missing_packages(args: dict[str, str]) -> list[str]:
    """What resolved launch arguments ask for that this machine lacks, one line each (empty: all there)."""
    out = []
    if _truthy(args["rviz"]) and find_executable("rviz2", "rviz2") is None:
        out.append("rviz:=true needs RViz, but the ROS package 'rviz2' is not installed in this ROS environment "
                   f"(AMENT_PREFIX_PATH={os.environ.get('AMENT_PREFIX_PATH', '')!r}): install ros-jazzy-rviz2 and "
                   "source its setup, or leave rviz:=false")
    if _truthy(args["use_moveit"]):
        from semanticvla_core.safety.moveit_backend import moveit_unavailable_reason
        why = moveit_unavailable_reason()
        if why:
            out.append(f"use_moveit:=true needs MoveIt's Python API, but {why}: install ros-jazzy-moveit-py and "
                       "source its setup, or leave use_moveit:=false (the built-in checker)")
    return out


def check_arguments(args: dict[str, str]) -> None:
    """Raise MissingOptionalPackage naming everything missing (before anything starts: no node, no orphan)."""
    missing = missing_packages(args)
    if missing:
        raise MissingOptionalPackage("; ".join(missing) + ". Nothing was started.")


LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "sim": ("true", "Run the MuJoCo Panda tabletop instead of a real robot and cameras"),
    "checkpoint": ("", "Policy checkpoint directory ('' = $SEMANTICVLA_CHECKPOINT if set, else the shipped demo "
                       "checkpoint, installed with the package in share/semanticvla_ros/checkpoints/demo)"),
    "instruction": ("", "Language instruction ('' = the planner's configured default)"),
    "use_moveit": ("false", "Safety filter uses MoveIt's planning scene (needs moveit_py) instead of the built-in "
                            "checker"),
    "rviz": ("false", "Start RViz with the trace overlay, markers and robot model (needs rviz2)"),
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
    env_defaults: dict = field(default_factory=dict)   # environment the node needs, where the caller has not set it

    def environment(self) -> dict[str, str]:
        """Variables to add to the node's environment: ``env_defaults`` except those the caller has set."""
        return {k: os.environ.get(k, v) for k, v in self.env_defaults.items()}

    def flat_parameters(self) -> dict:
        """``parameters`` with nested groups joined by '.' (``-p a.b:=v``; launch_ros flattens them the same way)."""
        from semanticvla_core.safety.moveit_backend import flatten_parameters
        return flatten_parameters(self.parameters)


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
    from .policy_loading import resolve_checkpoint
    args["checkpoint"] = resolve_checkpoint(args["checkpoint"])
    return args


def robot_description() -> str:
    """The URDF on /robot_description: the one the safety filter checks against (file:// mesh URIs)."""
    from semanticvla_core.safety.kinematics import panda_description_xml
    return panda_description_xml()[0]


def graph(args: dict[str, str]) -> list[NodeSpec]:
    """Nodes to start for resolved launch arguments (see :func:`resolve_arguments`)."""
    ckpt = {"checkpoint": args["checkpoint"]} if args["checkpoint"] else {}
    instr = {"instruction": args["instruction"]} if args["instruction"] else {}
    # with the sim and no instruction given, the planner waits for the episode's own (the sim announces it on
    # /semanticvla/instruction) instead of planning the configured default until it arrives
    plan_instr = instr or ({"instruction": ""} if _truthy(args["sim"]) else {})
    safety = {"backend": "moveit" if _truthy(args["use_moveit"]) else "builtin",
              # the sim node has the Cartesian controller that recorded the demonstrations
              # and its fingers carry the sim's longer pads (the checker's collision model includes them)
              **({"execution": "cartesian", "gripper_model": "sim"} if _truthy(args["sim"]) else {})}
    if _truthy(args["use_moveit"]):
        # what MoveItPy needs, in MoveIt's own parameter names (semanticvla_core/safety/moveit_backend.py)
        from semanticvla_core.safety.moveit_backend import moveit_parameters
        safety.update(moveit_parameters())
    # robot_state_publisher where the ROS install has it (/robot_description + /tf from /joint_states); else the
    # trace overlay publishes /robot_description and there is no /tf (module text)
    rsp = find_executable("robot_state_publisher", "robot_state_publisher") is not None
    nodes = [
        NodeSpec("perception", "perception_node", f"{PACKAGE}.perception_node"),
        NodeSpec("planner", "planner_node", f"{PACKAGE}.planner_node", parameters={**ckpt, **plan_instr}),
        NodeSpec("controller", "controller_node", f"{PACKAGE}.controller_node", parameters=dict(ckpt)),
        NodeSpec("safety_filter", "safety_node", f"{PACKAGE}.safety_node", parameters=safety),
        NodeSpec("trace_overlay", "trace_overlay_node", f"{PACKAGE}.trace_overlay_node",
                 parameters={} if not rsp else {"publish_robot_description": False}),
    ]
    if rsp:
        nodes.append(NodeSpec("robot_state_publisher", "robot_state_publisher", None, package="robot_state_publisher",
                              parameters={"robot_description": robot_description()}))
    if _truthy(args["sim"]):
        # MuJoCo renders offscreen through EGL (no display needed); without it, a headless sim aborts
        nodes.append(NodeSpec("sim", "sim_node", f"{PACKAGE}.sim_node", parameters=dict(instr),
                              env_defaults={"MUJOCO_GL": "egl"}))
    if _truthy(args["rviz"]):
        rviz_cfg = str(share_dir() / "config" / "rviz" / "semanticvla.rviz")
        nodes.append(NodeSpec("rviz", "rviz2", None, package="rviz2", arguments=["-d", rviz_cfg]))
    for n in nodes:
        n.critical = n.name in CRITICAL
        n.respawn = _truthy(args["respawn"]) and n.name in RESPAWNABLE
    return nodes
