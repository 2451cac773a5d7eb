"""ros2 launch semanticvla_ros franka.launch.py [sim:=true] [checkpoint:=DIR] [instruction:="..."]
                                               [use_moveit:=false] [rviz:=false] [config:=FILE]

Starts perception, planner, controller, safety filter, trace overlay (+ the MuJoCo sim, + RViz) from the
graph description in semanticvla_ros.graph, the same one `python -m semanticvla_ros.bringup` uses where
launch_ros is not installed.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from semanticvla_ros.graph import LAUNCH_ARGUMENTS, graph, resolve_arguments


def _nodes(context, *args, **kwargs):
    given = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    resolved = resolve_arguments(given)
    actions = []
    for spec in graph(resolved):
        params = [resolved["config"], spec.parameters] if spec.module else []
        actions.append(Node(package=spec.package, executable=spec.executable, name=spec.name, output="screen",
                            parameters=params, arguments=spec.arguments, remappings=spec.remappings,
                            emulate_tty=True))
    return actions


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=desc)
                for name, (default, desc) in LAUNCH_ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])
