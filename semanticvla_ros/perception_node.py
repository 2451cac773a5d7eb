"""perception: camera Images (+ CameraInfo) and /joint_states in -> synchronized, model-sized observations out.

Subscribes  /camera/{name}/image_raw (sensor_msgs/Image, any common encoding), /camera/{name}/camera_info,
            /joint_states
            /camera/{name}/depth/image_raw (optional: 16UC1 mm, mono16 or 32FC1 m)
Publishes   /semanticvla/observation/{name} (sensor_msgs/Image rgb8, its image_sizes entry squared, all with the main
            frame's stamp)
            /semanticvla/observation/joint_states (sensor_msgs/JointState, same stamp)
            /semanticvla/observation/camera_info/{name} (CameraInfo scaled to the model image)
            /semanticvla/observation/{name}/depth (32FC1 metres, the camera's size squared, NaN = no reading; passed through)
Malformed, stale or unsynchronized frames are dropped with a logged reason (throttled) and counted.
"""
from __future__ import annotations

from sensor_msgs.msg import CameraInfo, Image, JointState

from semanticvla_core.image_convert import (depth_to_image_fields, msg_to_depth_m, msg_to_model_rgb, resize_depth,
                                            rgb_to_image_fields)
from semanticvla_core.observation import ObservationSync
from semanticvla_core.robot_state import ARM_JOINTS, FINGER_JOINTS

from rclpy.node import Node

from .node_utils import guarded, now_ns, run_node
from .params import declare
from .messages import stamp_to_ns
from .ros_conversions import camera_from_info, camera_to_info, fill_image, joint_state_msg


class PerceptionNode(Node):
    def __init__(self):
        super().__init__("perception")
        self.p = declare(self, "perception")
        names = list(self.p.camera_names)
        sizes = [int(v) for v in self.p.image_sizes]
        if len(sizes) == 1:
            sizes = sizes * len(names)
        if len(sizes) != len(names) or min(sizes) < 8:
            raise ValueError(f"perception: image_sizes {sizes} must hold one size >= 8 px, or one per camera of "
                             f"{names}")
        self.size = dict(zip(names, sizes))
        self.sync = ObservationSync(list(self.p.camera_names), self.p.sync_tolerance_s, self.p.max_age_s)
        self.infos: dict[str, CameraInfo] = {}
        self.pub_img = {n: self.create_publisher(Image, f"/semanticvla/observation/{n}", 5) for n in self.p.camera_names}
        self.pub_info = {n: self.create_publisher(CameraInfo, f"/semanticvla/observation/camera_info/{n}", 5)
                         for n in self.p.camera_names}
        self.pub_depth = {n: self.create_publisher(Image, f"/semanticvla/observation/{n}/depth", 2)
                          for n in self.p.camera_names}
        self.pub_js = self.create_publisher(JointState, "/semanticvla/observation/joint_states", 5)
        for n in self.p.camera_names:
            self.create_subscription(Image, self.p.image_topic_format.format(name=n),
                                     lambda m, n=n: self.on_image(n, m), 5)
            self.create_subscription(CameraInfo, self.p.camera_info_topic_format.format(name=n),
                                     lambda m, n=n: self.infos.__setitem__(n, m), 5)
            self.create_subscription(Image, self.p.image_topic_format.format(name=n).replace("/image_raw", "/depth/image_raw"),
                                     lambda m, n=n: self.on_depth(n, m), 2)
        self.create_subscription(JointState, self.p.joint_states_topic, self.on_joint_state, 20)
        self.create_timer(1.0 / self.p.publish_rate_hz, self.tick)
        self._last_warn = 0
        self.get_logger().info(f"perception: cameras {list(self.p.camera_names)} -> {self.size} px observations")

    def _warn(self, reason: str | None) -> None:
        if reason:
            t = now_ns(self)
            if t - self._last_warn > 2e9:
                self._last_warn = t
                self.get_logger().warning(f"dropped: {reason} (counts so far: {self.sync.dropped})")

    @guarded()
    def on_image(self, name: str, msg: Image) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        try:
            rgb = msg_to_model_rgb(msg, self.size[name])
        except ValueError as e:
            self.sync._drop(f"malformed image: {e}")
            self._warn(f"malformed image on camera {name}: {e}")
            return
        self._warn(self.sync.add_image(name, stamp, rgb, now_ns(self), msg.header.frame_id))

    @guarded()
    def on_depth(self, name: str, msg: Image) -> None:
        depth = resize_depth(msg_to_depth_m(msg), self.size[name])   # ValueError on malformed data (logged)
        self.pub_depth[name].publish(fill_image(Image(), depth_to_image_fields(depth), stamp_to_ns(msg.header.stamp),
                                                msg.header.frame_id))

    @guarded()
    def on_joint_state(self, msg: JointState) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        self._warn(self.sync.add_joint_state(stamp, list(msg.name), list(msg.position), ARM_JOINTS, FINGER_JOINTS))

    @guarded()
    def tick(self) -> None:
        obs, why = self.sync.pop(now_ns(self))
        if obs is None:
            if why.startswith(("stale", "unsynchronized")):
                self._warn(why)
            return
        for n, rgb in obs.images.items():
            msg = fill_image(Image(), rgb_to_image_fields(rgb), obs.stamp_ns, obs.frame_ids.get(n, ""))
            self.pub_img[n].publish(msg)
            if n in self.infos:
                cam = camera_from_info(self.infos[n]).resized(self.size[n], self.size[n])
                self.pub_info[n].publish(camera_to_info(cam, obs.stamp_ns, self.infos[n].header.frame_id))
        self.pub_js.publish(joint_state_msg(ARM_JOINTS + FINGER_JOINTS,
                                            list(obs.joint_positions) + list(obs.finger_positions), obs.stamp_ns))


def main(args=None):
    run_node(PerceptionNode, args)


if __name__ == "__main__":
    main()
