"""Conversions between standard ROS messages and core types (the only place they are written)."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, JointState

from semanticvla_core.camera import PinholeCamera
from semanticvla_core.image_convert import ImageFields, image_fields, rgb_to_image_fields  # noqa: F401

from .messages import ns_to_stamp, stamp_to_ns


def fill_image(msg: Image, f: ImageFields, stamp_ns: int, frame_id: str) -> Image:
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.encoding, msg.height, msg.width, msg.step = f.encoding, int(f.height), int(f.width), int(f.step)
    msg.is_bigendian = int(f.is_bigendian)
    msg.data = bytes(f.data)
    return msg


def rgb_image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str = "") -> Image:
    return fill_image(Image(), rgb_to_image_fields(np.ascontiguousarray(rgb)), stamp_ns, frame_id)


def camera_to_info(cam: PinholeCamera, stamp_ns: int, frame_id: str) -> CameraInfo:
    """Intrinsics -> CameraInfo (plumb_bob, no distortion). Extrinsics travel separately (see camera_pose topics)."""
    info = CameraInfo()
    info.header.stamp = ns_to_stamp(stamp_ns)
    info.header.frame_id = frame_id
    info.width, info.height = int(cam.width), int(cam.height)
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = [float(x) for x in cam.K.ravel()]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [cam.fx, 0.0, cam.cx, 0.0, 0.0, cam.fy, cam.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def camera_from_info(info: CameraInfo, T_world_cam: np.ndarray | None = None) -> PinholeCamera:
    if info.width <= 0 or info.height <= 0 or len(info.k) != 9:
        raise ValueError(f"CameraInfo: invalid size {info.width}x{info.height} or K with {len(info.k)} values")
    return PinholeCamera.from_K(np.asarray(info.k, dtype=np.float64), int(info.width), int(info.height), T_world_cam)


def pose_to_matrix(position, orientation) -> np.ndarray:
    """geometry_msgs Point + Quaternion (x, y, z, w) -> 4x4."""
    x, y, z, w = orientation.x, orientation.y, orientation.z, orientation.w
    n = np.sqrt(x * x + y * y + z * z + w * w)
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError("pose: invalid quaternion")
    x, y, z, w = x / n, y / n, z / n, w / n
    T = np.eye(4)
    T[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                 [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                 [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    T[:3, 3] = [position.x, position.y, position.z]
    return T


def matrix_to_pose(T: np.ndarray, pose) -> None:
    """4x4 -> fill a geometry_msgs/Pose in place."""
    R = np.asarray(T)[:3, :3]
    w = np.sqrt(max(0.0, 1.0 + np.trace(R))) / 2.0
    if w > 1e-6:
        x, y, z = (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w)
    else:  # 180 degree rotation
        i = int(np.argmax(np.diag(R)))
        q = np.zeros(3)
        q[i] = np.sqrt(max(0.0, 1.0 + 2 * R[i, i] - np.trace(R))) / 2.0
        j, k = (i + 1) % 3, (i + 2) % 3
        q[j] = (R[j, i] + R[i, j]) / (4 * q[i])
        q[k] = (R[k, i] + R[i, k]) / (4 * q[i])
        x, y, z = q
        w = (R[k, j] - R[j, k]) / (4 * q[i])
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in np.asarray(T)[:3, 3])
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = float(x), float(y), float(z), float(w)


def joint_state_arrays(msg: JointState, names: list[str]) -> np.ndarray:
    """Positions of ``names`` (in that order) from a JointState; ValueError if one is missing or not finite."""
    if len(msg.name) != len(msg.position):
        raise ValueError(f"JointState: {len(msg.name)} names but {len(msg.position)} positions")
    idx = {n: i for i, n in enumerate(msg.name)}
    missing = [n for n in names if n not in idx]
    if missing:
        raise ValueError(f"JointState: missing joints {missing}")
    q = np.array([msg.position[idx[n]] for n in names], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise ValueError("JointState: NaN or inf position")
    return q


def joint_state_msg(names: list[str], positions, stamp_ns: int, velocities=None) -> JointState:
    js = JointState()
    js.header.stamp = ns_to_stamp(stamp_ns)
    js.name = list(names)
    js.position = [float(x) for x in positions]
    if velocities is not None:
        js.velocity = [float(x) for x in velocities]
    return js


__all__ = ["fill_image", "rgb_image_msg", "camera_to_info", "camera_from_info", "pose_to_matrix", "matrix_to_pose",
           "joint_state_arrays", "joint_state_msg", "stamp_to_ns", "image_fields"]


def boxes_to_markers(boxes, stamp_ns: int, frame_id: str = "panda_link0", ns: str = "scene_obstacles"):
    """Obstacle boxes (``EnvBox``) -> visualization_msgs/MarkerArray of CUBE markers (shown by RViz as they are); a
    DELETEALL marker first, so the array replaces the previous scene."""
    from visualization_msgs.msg import Marker, MarkerArray

    out = MarkerArray()
    clear = Marker()
    clear.action = Marker.DELETEALL
    clear.ns = ns
    out.markers.append(clear)
    for i, b in enumerate(boxes):
        m = Marker()
        m.header.stamp, m.header.frame_id = ns_to_stamp(stamp_ns), frame_id
        m.ns, m.id, m.type, m.action, m.text = ns, i, Marker.CUBE, Marker.ADD, b.name
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = b.rotation(), b.center
        matrix_to_pose(T, m.pose)
        m.scale.x, m.scale.y, m.scale.z = (float(v) for v in b.size)
        m.color.r, m.color.g, m.color.b, m.color.a = 0.9, 0.6, 0.1, 0.5
        out.markers.append(m)
    return out


def boxes_from_markers(msg) -> list:
    """visualization_msgs/MarkerArray -> obstacle boxes (``EnvBox``): its CUBE markers with action ADD (the name from
    ``text``, else ``ns/id``); ValueError on a marker that is not a valid box (non-finite, size <= 0, bad pose)."""
    from semanticvla_core.safety.checker import EnvBox

    boxes = []
    for m in msg.markers:
        if m.action != m.ADD or m.type != m.CUBE:
            continue
        T = pose_to_matrix(m.pose.position, m.pose.orientation)
        boxes.append(EnvBox.from_matrix(m.text or f"{m.ns}/{m.id}", T[:3, 3], (m.scale.x, m.scale.y, m.scale.z),
                                        T[:3, :3]))
    return boxes
