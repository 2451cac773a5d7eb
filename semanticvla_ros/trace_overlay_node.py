"""trace_overlay: camera image + Trace -> annotated image and the trace lifted to 3-D as RViz markers.

Subscribes  /camera/{camera_name}/image_raw, /camera/{camera_name}/camera_info,
            /camera/{camera_name}/pose (geometry_msgs/PoseStamped: optical frame in marker_frame; or the
            camera_pose parameter), /semanticvla/trace
Publishes   /semanticvla/trace_overlay/image (sensor_msgs/Image rgb8: polyline, numbered anchors, latent ids,
            instruction), /semanticvla/trace_markers (visualization_msgs/MarkerArray: the trace on the table plane),
            /robot_description (std_msgs/String, transient_local, once: the URDF the safety filter checks against;
            publish_robot_description, false where robot_state_publisher runs and publishes it)
"""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point, PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import ColorRGBA, String
from visualization_msgs.msg import Marker, MarkerArray

from semanticvla_core.image_convert import msg_to_model_rgb
from semanticvla_core.overlay import draw_plan_overlay, lift_trace, trace_marker_arrays

from .messages import ns_to_stamp, stamp_to_ns, trace_from_msg
from .msg import Trace
from .node_utils import guarded, now_ns, run_node
from .params import declare
from .ros_conversions import camera_from_info, pose_to_matrix, rgb_image_msg


class TraceOverlayNode(Node):
    def __init__(self):
        super().__init__("trace_overlay")
        self.p = declare(self, "trace_overlay")
        n = self.p.camera_name
        self.trace = None
        self.trace_rx_ns = 0
        self.info: CameraInfo | None = None
        self.T_world_cam = None
        if len(self.p.camera_pose) == 7:
            from types import SimpleNamespace as NS
            x, y, z, qx, qy, qz, qw = self.p.camera_pose
            self.T_world_cam = pose_to_matrix(NS(x=x, y=y, z=z), NS(x=qx, y=qy, z=qz, w=qw))
        self.pub_img = self.create_publisher(Image, "/semanticvla/trace_overlay/image", 5)
        self.pub_markers = self.create_publisher(MarkerArray, "/semanticvla/trace_markers", 5)
        self.create_subscription(Image, self.p.image_topic_format.format(name=n), self.on_image, 2)
        self.create_subscription(CameraInfo, self.p.camera_info_topic_format.format(name=n),
                                 lambda m: setattr(self, "info", m), 2)
        self.create_subscription(PoseStamped, f"/camera/{n}/pose", self.on_pose, 2)
        self.create_subscription(Trace, "/semanticvla/trace", self.on_trace, 5)
        self.pub_description = None
        if self.p.publish_robot_description:
            self.publish_robot_description()

    def publish_robot_description(self) -> None:
        """The URDF once, transient_local (as robot_state_publisher does): RViz gets it whenever it (re)connects."""
        from semanticvla_core.safety.kinematics import panda_description_xml

        try:
            urdf = panda_description_xml()[0]
        except Exception as e:  # noqa: BLE001 - the overlay works without it; say why RViz shows no robot
            self.get_logger().error(f"no /robot_description: {type(e).__name__}: {e}")
            return
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_description = self.create_publisher(String, "/robot_description", qos)
        self.pub_description.publish(String(data=urdf))

    @guarded()
    def on_pose(self, msg: PoseStamped) -> None:
        if len(self.p.camera_pose) != 7:       # a configured pose wins over the topic
            self.T_world_cam = pose_to_matrix(msg.pose.position, msg.pose.orientation)

    @guarded()
    def on_trace(self, msg: Trace) -> None:
        self.trace, self.trace_rx_ns = trace_from_msg(msg), now_ns(self)
        self.publish_markers()

    @guarded()
    def on_image(self, msg: Image) -> None:
        rgb = msg_to_model_rgb(msg)
        tp = self.trace
        fresh = tp is not None and (now_ns(self) - self.trace_rx_ns) * 1e-9 <= self.p.max_trace_age_s
        out = draw_plan_overlay(rgb, tp.anchors if fresh else np.zeros((0, 2)), tp.latent_ids if fresh else None,
                                tp.instruction if fresh else "waiting for a plan")
        self.pub_img.publish(rgb_image_msg(out, stamp_to_ns(msg.header.stamp),
                                           msg.header.frame_id))

    def publish_markers(self) -> None:
        if self.trace is None or self.info is None or self.T_world_cam is None:
            return
        cam = camera_from_info(self.info, self.T_world_cam)
        pts, valid = lift_trace(cam, self.trace.anchors, plane_z=self.p.plane_z)
        arr = trace_marker_arrays(pts, valid)
        stamp = ns_to_stamp(self.trace.stamp_ns)
        line = Marker(type=Marker.LINE_STRIP, action=Marker.ADD, ns="trace", id=0)
        spheres = Marker(type=Marker.SPHERE_LIST, action=Marker.ADD, ns="trace", id=1)
        markers = [line, spheres]
        for m in (line, spheres):
            m.header.frame_id, m.header.stamp = self.p.marker_frame, stamp
            m.pose.orientation.w = 1.0
            m.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in arr["points"]]
            m.colors = [ColorRGBA(r=float(c[0]), g=float(c[1]), b=float(c[2]), a=float(c[3])) for c in arr["colors"]]
        line.scale.x = 0.006
        spheres.scale.x = spheres.scale.y = spheres.scale.z = 0.02
        for i, (label, p) in enumerate(zip(arr["labels"], arr["points"])):
            t = Marker(type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, ns="trace_labels", id=i, text=label)
            t.header.frame_id, t.header.stamp = self.p.marker_frame, stamp
            t.pose.position = Point(x=float(p[0]), y=float(p[1]), z=float(p[2]) + 0.03)
            t.pose.orientation.w = 1.0
            t.scale.z = 0.03
            t.color = ColorRGBA(r=1.0, g=1.0, b=0.0, a=1.0)
            markers.append(t)
        self.pub_markers.publish(MarkerArray(markers=[Marker(action=Marker.DELETEALL)] + markers))


def main(args=None):
    run_node(TraceOverlayNode, args)


if __name__ == "__main__":
    main()
