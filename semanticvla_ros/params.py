"""Every node parameter in one table: name, default, description. Nodes declare from here (with a
ParameterDescriptor carrying the description); ``config/franka.yaml`` sets values for a Franka/sim setup and
a test checks that the file and this table name the same parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from semanticvla_core.safety.checker import SafetyConfig
from semanticvla_core.safety.kinematics import IKConfig

_SAFETY, _IK = SafetyConfig(), IKConfig()


@dataclass(frozen=True)
class Param:
    name: str
    default: object
    description: str


_CAMS = ["agentview", "wrist"]

PARAMS: dict[str, list[Param]] = {
    "perception": [
        Param("camera_names", _CAMS, "Camera names, in the order the model expects them (first = main view)"),
        Param("image_topic_format", "/camera/{name}/image_raw", "Image topic of each camera ({name} is replaced)"),
        Param("camera_info_topic_format", "/camera/{name}/camera_info", "CameraInfo topic of each camera"),
        Param("joint_states_topic", "/joint_states", "sensor_msgs/JointState of the arm"),
        Param("image_sizes", [128, 96], "Side [px] of each camera's square model input image, in camera_names order "
              "(one value = every camera); the demo checkpoint was trained on a 128 px agent view and a 96 px wrist view"),
        Param("max_age_s", 0.5, "Frames older than this (header stamp vs. now) are dropped as stale"),
        Param("sync_tolerance_s", 0.06, "Camera frames and joint state must lie within this of each other"),
        Param("publish_rate_hz", 10.0, "Maximum rate of model-ready observations"),
    ],
    "planner": [
        Param("checkpoint", "", "Policy checkpoint directory (config.json + *.safetensors)"),
        Param("device", "cpu", "torch device for the VLM (cpu, cuda, cuda:1, ...)"),
        Param("dtype", "float32", "float32 or bfloat16 (bfloat16 on GPU)"),
        Param("instruction", "put the red cube on the green plate", "Instruction used until one arrives on "
              "/semanticvla/instruction (empty: no plans until then; sim:=true without an instruction sets this)"),
        Param("max_rate_hz", 5.0, "Upper bound on the planning rate (it plans as fast as the VLM allows up to this)"),
        Param("max_obs_age_s", 1.0, "Do not plan from an observation older than this"),
        Param("camera", "agentview", "Camera whose model-ready observation the VLM sees"),
        Param("wrist_camera", "wrist", "Wrist camera for checkpoints whose decoder stem looks at it (same stamp as camera)"),
    ],
    "controller": [
        Param("checkpoint", "", "Policy checkpoint directory (the flow decoder and trace encoder are read from it)"),
        Param("device", "cpu", "torch device for the flow decoder"),
        Param("dtype", "float32", "float32 or bfloat16"),
        Param("control_rate_hz", 20.0, "Rate at which the blended action chunk is published"),
        Param("flow_steps", 10, "Euler steps of the flow-matching sampler"),
        Param("blend_mode", "latest", "Chunk blending: latest (the newest chunk only; how the policy is evaluated), "
              "ensemble (ACT temporal ensembling) or crossfade"),
        Param("ensemble_decay", 0.01, "ACT ensembling weight exponent k: w_i = exp(-k * i), i = 0 the oldest chunk"),
        Param("loop", "rtc", "rtc: never stop for the planner: each new Trace is decoded by real-time chunking, "
              "continuing the running chunk over the delay measured from the message stamps | synchronous: run each "
              "chunk to its end, hold still until a plan of a later observation arrives, run all its rows "
              "(stop-and-go) | asynchronous: keep moving without real-time chunking (state_source, refill_on_gap "
              "apply); the evaluation harness runs the same loops (training/evaluate.py --loop rtc|synchronous|naive)"),
        Param("state_source", "observation", "(loop asynchronous) observation: decode each new Trace once with the joint state of the "
              "observation it was planned from (what the policy was trained on: image and state of one instant) and "
              "stamp the chunk at that instant, so the rows whose time has passed while planning are skipped; "
              "latest: decode the newest Trace with the fresh joint state every decode_every_steps ticks"),
        Param("refill_on_gap", True, "(loop rtc or asynchronous, state_source observation) when the rows of the newest chunk are used up before "
              "the next Trace's chunk arrives (planning slower than the chunk), decode the last decoded Trace again with "
              "the fresh joint state, stamped now, instead of holding; the next Trace's chunk replaces it"),
        Param("decode_every_steps", 8, "state_source latest: re-decode the newest Trace with fresh state every this "
              "many control ticks (default: the demo checkpoint's chunk length H = 8)"),
        Param("decode_on_new_trace", False, "state_source latest: also decode as soon as a new Trace arrives (False: "
              "only every decode_every_steps ticks; with blend_mode latest each chunk then runs to its end)"),
        Param("trace_timeout_s", 3.0, "Hold (publish nothing) when the newest Trace is older than this"),
        Param("state_timeout_s", 0.5, "Hold when joint states are older than this"),
        Param("seed", 0, "Seed of the flow sampler's noise (deterministic chunks for a given input)"),
        Param("realtime_priority", 10, "SCHED_FIFO priority (1-99) of the thread that runs the control tick and "
              "the callbacks (not the decode worker): the tick then runs on time on a busy machine. 0 = normal "
              "scheduler. Needs an rtprio limit or CAP_SYS_NICE; without, the node logs why and runs normally"),
    ],
    "safety_filter": [
        Param("backend", "builtin", "builtin (Pinocchio + coal on the Panda URDF/SRDF) or moveit (moveit_py planning scene)"),
        Param("trajectory_topic", "/panda_arm_controller/joint_trajectory", "trajectory_msgs/JointTrajectory output"),
        Param("gripper_topic", "/panda_gripper/command", "std_msgs/Float64 gripper command: 0 open .. 1 closed"),
        Param("joint_states_topic", "/joint_states", "sensor_msgs/JointState of the arm"),
        Param("chunk_timeout_s", 0.5, "Hold position when no valid ActionChunk arrived for this long"),
        Param("state_timeout_s", 0.5, "Hold position when joint states are older than this"),
        Param("trace_timeout_s", 1.0, "Hold position when the planner's newest Trace is older than this, once one has "
                                      "arrived (a silent planner; 0 = do not watch)"),
        Param("observation_timeout_s", 1.0, "Hold position when perception's newest observation "
                                            "(/semanticvla/observation/joint_states) is older than this, once one has "
                                            "arrived (a silent perception; 0 = do not watch)"),
        Param("upstream_nodes", ["perception", "planner", "controller"],
              "Nodes whose exit, reported by the supervisor on /semanticvla/supervisor/node_exit, holds the arm at "
              "once until the node publishes again (a Trace, an ActionChunk, an observation made after the exit)"),
        Param("max_chunk_age_s", 0.5, "Reject a chunk whose first row is older than this (stale plan)"),
        Param("workspace_min", [0.15, -0.6, 0.0], "TCP workspace box, lower corner [m] in the base frame"),
        Param("workspace_max", [0.85, 0.6, 0.75], "TCP workspace box, upper corner [m]"),
        Param("table_z", 0.0, "Height of the table surface [m] in the base frame"),
        Param("table_margin", _SAFETY.gripper_table_margin_m, "The gripper's lowest point (true finger / pad geometry, "
                                                             "target orientation) must stay this far above the table [m]"),
        Param("table_policy", _SAFETY.table_policy, "ee_delta TCP targets whose gripper would come lower, or closer than "
                                      "table_margin to the top of a scene obstacle it is above (a plate): clip (raised "
                                      "just enough, when at most table_clip_max_m) or reject"),
        Param("gripper_model", _SAFETY.gripper, "Collision model of the fingers: urdf (Franka Hand meshes) | sim (+ the MuJoCo "
                                                "sim's longer finger pads; sim:=true selects it)"),
        Param("check_budget_s", _SAFETY.check_budget_s, "A chunk check that takes longer is stopped and the chunk rejected "
                                                       "(TIMEOUT; the running chunk goes on, its rows verified as sent) [s]"),
        Param("table_clip_max_m", _SAFETY.table_clip_max_m, "With table_policy clip: targets further below than this are rejected [m]"),
        Param("joint_limit_policy", _SAFETY.joint_limit_policy, "ee_delta targets whose IK takes a joint past the limit "
              "margin: clip (that joint held just inside it and the TCP falls short, when at most "
              "joint_limit_clip_max_rad past it; a policy pushing into a limit then slides along it instead of "
              "holding the arm) or reject"),
        Param("joint_limit_clip_max_rad", _SAFETY.joint_limit_clip_max_rad, "With joint_limit_policy clip: joint "
              "targets further past the margin than this are rejected [rad]"),
        Param("execution", "stepwise", "stepwise: every period one row of the newest admitted chunk, relative to the "
                                       "measured TCP (how ee_delta demonstrations are recorded), re-checked and sent "
                                       "as one JointTrajectory point | cartesian: the same checked row sent as an "
                                       "ee_delta to cartesian_topic (the arm's Cartesian controller executes it; "
                                       "sim:=true selects this) | trajectory: the whole chunk, integrated open loop, "
                                       "as one JointTrajectory of position-only points (linear interpolation). Every "
                                       "command is re-checked as sent (semanticvla_core/safety/execution.py)"),
        Param("cartesian_topic", "/panda_cartesian_controller/ee_delta", "execution cartesian: ActionChunk output, "
                                                                          "one checked ee_delta row per period"),
        Param("step_rate_hz", 20.0, "execution stepwise: rows run at this rate (= 1 / the chunks' dt)"),
        Param("ik_rest_posture", list(_IK.rest_posture),
              "IK redundancy resolution: the 7 joint positions [rad] the elbow is pulled toward (default: the "
              "simulator's home posture, which every demonstration kept)"),
        Param("ik_nullspace_gain", _IK.nullspace_gain, "Fraction of the distance to ik_rest_posture removed per IK iteration in the "
                                         "Jacobian null space (0: plain damped least squares)"),
        Param("env_boxes_json", "[]", 'Extra collision boxes, JSON: [{"name": "camera", "center": [x, y, z], "size": [sx, sy, sz]}]'),
        Param("scene_obstacles_topic", "/semanticvla/scene/obstacles",
              "visualization_msgs/MarkerArray (latched) of CUBE markers in the base frame: the scene's fixed objects, "
              "added to env_boxes_json whenever it changes (the simulator publishes its bowls' walls; on a robot, "
              "publish the workcell's fixtures; '' = env_boxes_json only). Backend moveit uses MoveIt's own scene"),
        Param("watchdog_rate_hz", 20.0, "Rate of the watchdog that holds position on silence (20 Hz: a timeout is "
                                        "acted on within one 50 ms control period)"),
        Param("hold_recapture_rad", 0.3, "If the measured joints are further than this from the controller's setpoint "
                                          "(the filter's model of it), the model restarts from the measured joints at rest"),
    ],
    "trace_overlay": [
        Param("camera_name", "agentview", "Camera whose image is annotated"),
        Param("image_topic_format", "/camera/{name}/image_raw", "Image topic"),
        Param("camera_info_topic_format", "/camera/{name}/camera_info", "CameraInfo topic (for lifting to 3-D)"),
        Param("plane_z", 0.0, "Height [m] of the plane the trace is lifted onto for the markers"),
        Param("marker_frame", "panda_link0", "Frame of the MarkerArray (the camera pose is given in it)"),
        Param("camera_pose", [0.0], "Calibrated camera optical-frame pose in marker_frame [x y z qx qy qz qw]; "
                                    "a list of fewer than 7 values = take it from /camera/{name}/pose"),
        Param("max_trace_age_s", 5.0, "Stop drawing a trace older than this"),
        Param("publish_robot_description", True, "Publish the Panda URDF the safety filter checks against on "
              "/robot_description (std_msgs/String, transient_local) for RViz; the launch file and the bring-up set "
              "it false where they start robot_state_publisher, which publishes the same URDF (and /tf)"),
    ],
    "sim": [
        Param("task", "pick_place_plate", "Task family: pick_place_plate, pick_place_bowl, stack or push_region"),
        Param("seed", 0, "Episode seed (object colours, positions, instruction)"),
        Param("instruction", "", "Instruction to announce on /semanticvla/instruction ('' = the task's own)"),
        Param("image_size", 128, "Rendered agent-view image side [px]"),
        Param("wrist_image_size", 96, "Rendered wrist-camera image side [px]"),
        Param("camera_rate_hz", 10.0, "Camera publication rate"),
        Param("physics_rate_hz", 20.0, "Control periods per second (real time); joint states are published after each"),
        Param("trajectory_topic", "/panda_arm_controller/joint_trajectory", "JointTrajectory input (safety filter output)"),
        Param("gripper_topic", "/panda_gripper/command", "Gripper command input (std_msgs/Float64, 0 open .. 1 closed)"),
        Param("cartesian_topic", "/panda_cartesian_controller/ee_delta", "Cartesian controller input (ActionChunk, "
              "ee_delta rows applied to the measured TCP by the simulator's own IK step, the controller that "
              "recorded the demonstrations; safety filter execution cartesian)"),
    ],
}


def declare(node, section: str) -> SimpleNamespace:
    """Declare every parameter of ``section`` on ``node`` with its description; return the current values."""
    from rcl_interfaces.msg import ParameterDescriptor

    values = {}
    for p in PARAMS[section]:
        node.declare_parameter(p.name, p.default, ParameterDescriptor(description=p.description))
        values[p.name] = node.get_parameter(p.name).value
    return SimpleNamespace(**values)


def to_yaml() -> str:
    """config/franka.yaml content with every parameter at its default (``--write`` regenerates the file)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    _Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
    head = ("# Node parameters of semanticvla_ros for a Franka Panda (simulated by default).\n"
            "# Every parameter is declared with a default and a description in semanticvla_ros/params.py\n"
            "# (`python -m semanticvla_ros.params` lists them). Launch arguments (checkpoint, instruction,\n"
            "# use_moveit) override the values here.\n")
    doc = {sec: {"ros__parameters": {p.name: p.default for p in ps}} for sec, ps in PARAMS.items()}
    return head + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120)


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv:
        from pathlib import Path
        Path(__file__).resolve().parents[1].joinpath("config", "franka.yaml").write_text(to_yaml())
    else:
        for sec, ps in PARAMS.items():
            print(f"[{sec}]")
            for p in ps:
                print(f"  {p.name} = {p.default!r}\n      {p.description}")
