"""sim: the MuJoCo Panda tabletop behind the topics a real Franka setup uses.

Publishes   /camera/{agentview,wrist}/image_raw (rgb8), /camera/{..}/camera_info, /camera/{..}/pose
            (PoseStamped of the optical frame in panda_link0, what a calibration gives on a real robot),
            /joint_states (7 arm joints in Franka/URDF convention + 2 finger joints, after every physics step),
            /semanticvla/instruction (std_msgs/String: the episode's instruction, on reset and every second)
Subscribes  <trajectory_topic> (trajectory_msgs/JointTrajectory, as a joint trajectory controller does),
            <gripper_topic> (std_msgs/Float64, 0 open .. 1 closed),
            <cartesian_topic> (ActionChunk, ee_delta: the first row runs at the next physics step through the same
            IK step that recorded the demonstrations, relative to the TCP then; the newest command of either kind wins)
Services    ~/reset (std_srvs/Trigger): next episode (seed + 1); message = its instruction
            ~/success (std_srvs/Trigger): success = the task's success predicate now
Without a trajectory the arm holds its last target. Malformed trajectories are refused with a logged reason.
"""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import MarkerArray

from semanticvla_core.robot_state import ARM_JOINTS, FINGER_JOINTS
from semanticvla_core.sim.env import CAMERA_NAMES, FrankaTabletopEnv, SimConfig
from semanticvla_core.sim.arm import SimArm

from semanticvla_core.actions import ACTION_SPACE_EE_DELTA

from .messages import chunk_from_msg, ns_to_stamp, stamp_to_ns
from .msg import ActionChunk
from .graph import SCENE_OBSTACLES_TOPIC
from .node_utils import guarded, latched_qos, now_ns, run_node
from .params import declare
from .ros_conversions import boxes_to_markers, camera_to_info, joint_state_msg, matrix_to_pose, rgb_image_msg

class SimNode(Node):
    def __init__(self):
        super().__init__("sim")
        self.p = declare(self, "sim")
        self.env = FrankaTabletopEnv(SimConfig(control_hz=self.p.physics_rate_hz, image_size=self.p.image_size,
                                               wrist_image_size=self.p.wrist_image_size))
        self.seed = int(self.p.seed)
        self.arm = SimArm(self.env)   # joint trajectory follower + Cartesian controller (one implementation with the harness)
        self.steps = 0
        self.pub_js = self.create_publisher(JointState, "/joint_states", 20)
        self.pub_img = {n: self.create_publisher(Image, f"/camera/{n}/image_raw", 2) for n in CAMERA_NAMES}
        self.pub_info = {n: self.create_publisher(CameraInfo, f"/camera/{n}/camera_info", 2) for n in CAMERA_NAMES}
        self.pub_pose = {n: self.create_publisher(PoseStamped, f"/camera/{n}/pose", 2) for n in CAMERA_NAMES}
        self.pub_instr = self.create_publisher(String, "/semanticvla/instruction", 5)
        # the episode's fixed objects (plates, bowls' walls) for the safety filter, as a planning scene would give them
        self.pub_scene = self.create_publisher(MarkerArray, SCENE_OBSTACLES_TOPIC, latched_qos())
        self.create_subscription(JointTrajectory, self.p.trajectory_topic, self.on_trajectory, 5)
        self.create_subscription(Float64, self.p.gripper_topic, self.on_gripper, 5)
        self.create_subscription(ActionChunk, self.p.cartesian_topic, self.on_cartesian, 5)
        self.create_service(Trigger, "~/reset", self.on_reset)
        self.create_service(Trigger, "~/success", self.on_success)
        self.reset_episode()
        self.create_timer(1.0 / self.p.physics_rate_hz, self.physics_tick)
        self.create_timer(1.0 / self.p.camera_rate_hz, self.camera_tick)
        self.create_timer(1.0, lambda: self.pub_instr.publish(String(data=self.env.instruction)))

    def reset_episode(self) -> None:
        self.env.reset(self.p.task, self.seed, instruction=self.p.instruction or None, render=False)
        self.arm.reset()
        self.steps = 0
        self.pub_instr.publish(String(data=self.env.instruction))
        boxes = self.env.static_obstacles()
        self.pub_scene.publish(boxes_to_markers(boxes, now_ns(self)))
        self.get_logger().info(f"episode: task {self.p.task}, seed {self.seed}: {self.env.instruction!r} "
                               f"({len(boxes)} fixed obstacle boxes on {SCENE_OBSTACLES_TOPIC})")

    # ------------------------------------------------------------------ inputs
    @guarded()
    def on_trajectory(self, msg: JointTrajectory) -> None:
        self.arm.set_trajectory(list(msg.joint_names), [list(p.positions) for p in msg.points],
                                [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points],
                                stamp_to_ns(msg.header.stamp) or now_ns(self))

    @guarded()
    def on_cartesian(self, msg: ActionChunk) -> None:
        c = chunk_from_msg(msg)       # ValueError (logged by guarded) on a malformed message
        if c.action_space != ACTION_SPACE_EE_DELTA:
            raise ValueError(f"Cartesian command: action_space {c.action_space!r} is not {ACTION_SPACE_EE_DELTA!r}; ignored")
        self.arm.set_delta(c.actions[0])

    @guarded()
    def on_gripper(self, msg: Float64) -> None:
        self.arm.set_gripper(msg.data)

    def on_reset(self, request, response):
        self.seed += 1
        try:
            self.reset_episode()
            response.success, response.message = True, self.env.instruction
        except Exception as e:  # noqa: BLE001
            response.success, response.message = False, f"reset failed: {e}"
        return response

    def on_success(self, request, response):
        response.success = bool(self.env.success())
        response.message = f"task {self.p.task} seed {self.seed} step {self.steps}: " + \
            ("success" if response.success else "not yet")
        return response

    # ------------------------------------------------------------------ simulation
    @guarded()
    def physics_tick(self) -> None:
        t = now_ns(self)
        self.arm.tick(t)
        self.steps += 1
        self.pub_js.publish(joint_state_msg(ARM_JOINTS + FINGER_JOINTS,
                                            list(self.env.joint_positions()) + list(self.env.finger_positions()), t,
                                            list(self.env.joint_velocities()) + list(self.env.finger_velocities())))

    @guarded()
    def camera_tick(self) -> None:
        t = now_ns(self)
        for n in CAMERA_NAMES:
            cam = self.env.camera(n)
            frame = f"{n}_optical_frame"
            self.pub_img[n].publish(rgb_image_msg(self.env.render(n), t, frame))
            self.pub_info[n].publish(camera_to_info(cam, t, frame))
            pose = PoseStamped()
            pose.header.stamp, pose.header.frame_id = ns_to_stamp(t), "panda_link0"
            matrix_to_pose(cam.T_world_cam, pose.pose)
            self.pub_pose[n].publish(pose)

    def close(self) -> None:
        self.env.close()


def main(args=None):
    run_node(SimNode, args)


if __name__ == "__main__":
    main()
