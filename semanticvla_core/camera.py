"""Pinhole camera model: the one place where 3-D points, pixels and normalized image coordinates meet.

Conventions (used everywhere in the project: sim, trace annotation, overlay, lifting to 3-D):

* Camera frame = ROS/OpenCV *optical* frame: x right, y down, z forward (out of the lens).
* ``T_world_cam`` is the 4x4 pose of that optical frame in the world frame (maps camera -> world).
* Pixel coordinates follow OpenCV: the centre of the top-left pixel is (0, 0), x to the right, y down.
* Normalized image coordinates (what traces are written in) are ``u = (x + 0.5) / width`` and
  ``v = (y + 0.5) / height``, so the whole image spans exactly [0, 1] x [0, 1] whatever its size.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def pixels_to_normalized(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV pixel coordinates (..., 2) -> normalized (u, v) in [0, 1]."""
    pixels = np.asarray(pixels, dtype=np.float64)
    return (pixels + 0.5) / np.array([width, height], dtype=np.float64)


def normalized_to_pixels(uv: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalized (u, v) (..., 2) -> OpenCV pixel coordinates."""
    uv = np.asarray(uv, dtype=np.float64)
    return uv * np.array([width, height], dtype=np.float64) - 0.5


def pose_matrix(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Rotation (3x3) + translation (3,) -> homogeneous 4x4 transform."""
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = np.asarray(R, dtype=np.float64), np.asarray(t, dtype=np.float64)
    return T


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Pose (4x4, optical frame in world) of a camera at ``eye`` looking at ``target``."""
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(x) < 1e-9:  # looking straight along `up`
        x = np.cross(z, np.array([0.0, 1.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics (fx, fy, cx, cy in pixels, OpenCV convention) and extrinsics of one camera."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    T_world_cam: np.ndarray = field(default_factory=lambda: np.eye(4))

    def __post_init__(self):
        T = np.asarray(self.T_world_cam, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"T_world_cam must be a finite 4x4 matrix, got shape {T.shape}")
        if self.width <= 0 or self.height <= 0 or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"invalid intrinsics: {self.width}x{self.height}, fx={self.fx}, fy={self.fy}")
        object.__setattr__(self, "T_world_cam", T)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_fovy(cls, width: int, height: int, fovy_deg: float, T_world_cam: np.ndarray | None = None):
        """Square-pixel camera from a vertical field of view (MuJoCo's ``fovy``)."""
        f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2.0)
        return cls(width, height, f, f, (width - 1) / 2.0, (height - 1) / 2.0,
                   np.eye(4) if T_world_cam is None else T_world_cam)

    @classmethod
    def from_K(cls, K: np.ndarray, width: int, height: int, T_world_cam: np.ndarray | None = None):
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        return cls(width, height, K[0, 0], K[1, 1], K[0, 2], K[1, 2],
                   np.eye(4) if T_world_cam is None else T_world_cam)

    def resized(self, width: int, height: int) -> "PinholeCamera":
        """The same camera seen through an image resized to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        return PinholeCamera(width, height, self.fx * sx, self.fy * sy,
                             (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, self.T_world_cam)

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def T_cam_world(self) -> np.ndarray:
        R, t = self.T_world_cam[:3, :3], self.T_world_cam[:3, 3]
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R.T, -R.T @ t
        return T

    # ------------------------------------------------------------------ projection
    def world_to_camera(self, points_world: np.ndarray) -> np.ndarray:
        p = np.asarray(points_world, dtype=np.float64)
        T = self.T_cam_world
        return p @ T[:3, :3].T + T[:3, 3]

    def project(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) -> (pixels (..., 2), depth (...,)). Depth <= 0 means behind the camera."""
        pc = self.world_to_camera(points_world)
        z = pc[..., 2]
        safe = np.where(np.abs(z) < 1e-12, 1e-12, z)
        px = np.stack([self.fx * pc[..., 0] / safe + self.cx, self.fy * pc[..., 1] / safe + self.cy], axis=-1)
        return px, z

    def project_normalized(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) -> (uv (..., 2), visible mask (...,)): in front of the camera and inside the image."""
        px, z = self.project(points_world)
        uv = pixels_to_normalized(px, self.width, self.height)
        visible = (z > 0) & np.all((uv >= 0.0) & (uv <= 1.0), axis=-1)
        return uv, visible

    # ------------------------------------------------------------------ back-projection
    def pixel_rays(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (..., 2) -> (origin (3,), unit directions (..., 3)) in the world frame."""
        px = np.asarray(pixels, dtype=np.float64)
        d_cam = np.stack([(px[..., 0] - self.cx) / self.fx, (px[..., 1] - self.cy) / self.fy,
                          np.ones(px.shape[:-1])], axis=-1)
        d = d_cam @ self.T_world_cam[:3, :3].T
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        return self.T_world_cam[:3, 3].copy(), d

    def lift_to_plane(self, uv: np.ndarray, plane_z: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Normalized coords (..., 2) -> (world points (..., 3) on the plane z = plane_z, valid mask)."""
        o, d = self.pixel_rays(normalized_to_pixels(uv, self.width, self.height))
        dz = d[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (plane_z - o[2]) / dz
        valid = np.isfinite(s) & (s > 0)
        s = np.where(valid, s, 0.0)
        return o + d * s[..., None], valid

    def lift_with_depth(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Normalized coords (..., 2) and optical-axis depth (...,) -> world points (..., 3)."""
        px = normalized_to_pixels(uv, self.width, self.height)
        depth = np.asarray(depth, dtype=np.float64)
        pc = np.stack([(px[..., 0] - self.cx) / self.fx * depth, (px[..., 1] - self.cy) / self.fy * depth, depth],
                      axis=-1)
        return pc @ self.T_world_cam[:3, :3].T + self.T_world_cam[:3, 3]

    # ------------------------------------------------------------------ serialization (JSON-friendly)
    def to_dict(self) -> dict:
        return {"width": int(self.width), "height": int(self.height), "fx": float(self.fx), "fy": float(self.fy),
                "cx": float(self.cx), "cy": float(self.cy), "T_world_cam": self.T_world_cam.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "PinholeCamera":
        return cls(int(d["width"]), int(d["height"]), float(d["fx"]), float(d["fy"]), float(d["cx"]),
                   float(d["cy"]), np.asarray(d["T_world_cam"], dtype=np.float64))
