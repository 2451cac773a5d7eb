"""ros2 launch semanticvla_ros franka.launch.py [sim:=true] [checkpoint:=DIR] [instruction:="..."]
                                               [use_moveit:=false] [rviz:=false] [respawn:=false] [config:=FILE]

Starts perception, planner, controller, safety filter, trace overlay (+ the MuJoCo sim, + RViz) from the
graph description in semanticvla_ros.graph, the same one `python -m semanticvla_ros.bringup` uses where
launch_ros is not installed.

Fail safe, not fail stop (as the bring-up): per node, a watcher started by OnProcessStart reports the node the moment
the kernel begins to end it (``returncode`` null, a few ms after a SIGKILL) and an OnProcessExit handler reports the
exit with its code, both on
/semanticvla/supervisor/node_exit (std_msgs/String, JSON {"node", "returncode", "stamp_ns"}; reliable +
transient_local) through launch_ros's own rclpy node, so the safety filter holds the arm and names the node.
perception, planner, controller and the trace overlay may exit without taking the graph down (respawn:=true restarts
the first three after 1 s: launch_ros Node respawn / respawn_delay); an exit of the safety filter or the sim stops
the whole launch with a non-zero exit code (nothing could hold the arm any more). Ctrl-C stops everything as usual.

Works from any directory: the config and the demo checkpoint ('' = checkpoints/demo, installed into
share/semanticvla_ros) are found through the package, not the working directory. Optional packages are checked
before any node starts: rviz:=true without rviz2 or use_moveit:=true without moveit_py ends the launch with one error
naming what is missing and starts nothing. robot_state_publisher is started where installed (/robot_description and
/tf for RViz); use_moveit:=true hands the safety filter MoveIt's parameters (robot_description,
robot_description_semantic, robot_description_kinematics, planning_scene_monitor_options, planning pipeline).
"""
import time

import launch.logging
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit, OnProcessStart
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.ros_adapters import get_ros_node

from semanticvla_ros.graph import (LAUNCH_ARGUMENTS, NODE_EXIT_TOPIC, check_arguments, graph, node_exit_message,
                                   resolve_arguments)


class CriticalNodeExited(RuntimeError):
    """Raised in the launch loop when the safety filter or the sim exits: launch then shuts everything down and
    `ros2 launch` exits with code 1 (a plain Shutdown action would exit 0)."""


def _exit_publisher(context):
    """The node-exit publisher on launch_ros's own node (created once per launch, before any node starts, so that
    discovery is done when an exit has to be reported)."""
    pub = getattr(context.locals, "semanticvla_node_exit_pub", None)
    if pub is None:
        from std_msgs.msg import String

        from semanticvla_ros.node_utils import node_exit_qos
        pub = get_ros_node(context).create_publisher(String, NODE_EXIT_TOPIC, node_exit_qos())
        context.extend_globals({"semanticvla_node_exit_pub": pub})
    return pub


def _on_node_exit(context, spec):
    """OpaqueFunction run by OnProcessExit of ``spec``'s node: report the exit, then stop all if it was critical."""
    from std_msgs.msg import String

    from semanticvla_ros.bringup import describe_exit

    if context.is_shutdown:
        return None       # Ctrl-C / a shutdown in progress: every node exits (and launch_ros's node is gone)
    rc = context.locals.event.returncode
    what = describe_exit(spec.name, rc)
    log = launch.logging.get_logger("franka.launch")
    try:
        _exit_publisher(context).publish(String(data=node_exit_message(spec.name, rc, time.time_ns())))
    except Exception as e:  # noqa: BLE001 - an exception here would take the whole launch down
        log.error(f"could not report '{what}' on {NODE_EXIT_TOPIC}: {type(e).__name__}: {e}")
    if spec.critical:
        raise CriticalNodeExited(f"{what}: nothing can hold the arm without it; stopping every node")
    more = (f"restarting it in {spec.respawn_delay:g} s" if spec.respawn
            else "the rest keeps running (respawn:=true restarts perception, planner and controller)")
    log.warning(f"{what}; the safety filter holds the arm; {more}")
    return None


def _watch_exiting(context, spec):
    """OpaqueFunction run by OnProcessStart of ``spec``'s node: a thread reports the node as exiting the moment the
    kernel starts ending it (PF_EXITING, e.g. right after a SIGKILL), before launch's wait() returns (which waits for
    the process's memory to be torn down: tens of ms with torch loaded). OnProcessExit reports again with the code."""
    import threading

    from std_msgs.msg import String

    from semanticvla_core.scheduling import EXIT_POLL_S, process_exiting

    pid = context.locals.event.pid
    pub = _exit_publisher(context)

    def watch():
        while not context.is_shutdown:
            if process_exiting(pid):
                if not context.is_shutdown:
                    try:
                        pub.publish(String(data=node_exit_message(spec.name, None, time.time_ns())))
                    except Exception:  # noqa: BLE001 - launch_ros's node may be going away; OnProcessExit reports
                        pass
                return
            time.sleep(EXIT_POLL_S)

    threading.Thread(target=watch, name=f"exit-watch-{spec.name}", daemon=True).start()
    return None


def _parameters(spec, config: str) -> list:
    """The node's parameters for launch_ros: the parameter file (the project's nodes), then the overrides from the
    launch arguments, flattened, every string as a string (launch_ros would parse '<robot ...>' or 'true' as YAML)."""
    flat = {k: ParameterValue(v, value_type=str) if isinstance(v, str) else v
            for k, v in spec.flat_parameters().items()}
    return ([] if spec.module is None else [config]) + ([flat] if flat else [])


def node_actions(resolved: dict) -> list:
    """launch_ros Node actions (+ their exit watchers) of the graph for resolved launch arguments."""
    actions = []
    for spec in graph(resolved):
        node = Node(package=spec.package, executable=spec.executable, name=spec.name, output="screen",
                    parameters=_parameters(spec, resolved["config"]), arguments=spec.arguments,
                    remappings=spec.remappings, additional_env=spec.environment() or None, emulate_tty=True,
                    respawn=spec.respawn, respawn_delay=spec.respawn_delay if spec.respawn else None)
        actions.append(RegisterEventHandler(OnProcessStart(
            target_action=node, on_start=[OpaqueFunction(function=_watch_exiting, args=[spec])])))
        actions.append(RegisterEventHandler(OnProcessExit(
            target_action=node, on_exit=[OpaqueFunction(function=_on_node_exit, args=[spec])])))
        actions.append(node)
    return actions


def _nodes(context, *args, **kwargs):
    given = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    resolved = resolve_arguments(given)
    # rviz2 / moveit_py missing: raise before any node is scheduled (launch prints the message, exits 1, no orphans)
    check_arguments(resolved)
    _exit_publisher(context)
    return node_actions(resolved)


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=desc)
                for name, (default, desc) in LAUNCH_ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])
