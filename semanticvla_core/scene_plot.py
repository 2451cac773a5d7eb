"""The RViz-equivalent pictures, rendered without RViz: the robot (URDF forward kinematics), the trace lifted
to 3-D on the table, the camera, next to the annotated camera image. Used by the demo to write PNGs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SKELETON = ["panda_link0", "panda_link1", "panda_link2", "panda_link3", "panda_link4", "panda_link5",
            "panda_link6", "panda_link7", "panda_hand"]


def robot_points(q: np.ndarray, kinematics) -> np.ndarray:
    """(len(SKELETON) + 1, 3) positions of the Panda's joint frames and its TCP."""
    pts = [kinematics.frame_pose(q, f)[0] for f in SKELETON]
    pts.append(kinematics.fk(q)[0])
    return np.array(pts)


def render_scene(path: str | Path, q: np.ndarray, trace_points: np.ndarray | None = None,
                 overlay_image: np.ndarray | None = None, camera_T: np.ndarray | None = None,
                 title: str = "", kinematics=None, tcp_path: np.ndarray | None = None) -> Path:
    """Write a PNG: left the annotated camera image (if any), right a 3-D view of robot + trace + camera."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if kinematics is None:
        from .safety.kinematics import PandaKinematics
        kinematics = PandaKinematics()
    ncol = 2 if overlay_image is not None else 1
    fig = plt.figure(figsize=(6 * ncol, 5.5), dpi=110)
    if overlay_image is not None:
        ax0 = fig.add_subplot(1, ncol, 1)
        ax0.imshow(overlay_image)
        ax0.set_title("camera + trace overlay")
        ax0.axis("off")
    ax = fig.add_subplot(1, ncol, ncol, projection="3d")
    # table top z = 0
    xx, yy = np.meshgrid([0.0, 0.9], [-0.5, 0.5])
    ax.plot_surface(xx, yy, np.zeros_like(xx), color=(0.75, 0.65, 0.5), alpha=0.35)
    P = robot_points(q, kinematics)
    ax.plot(P[:, 0], P[:, 1], P[:, 2], "-o", color="0.25", lw=4, ms=4, label="Panda (URDF FK)")
    ax.scatter(*P[-1], color="magenta", s=40, label="TCP")
    if tcp_path is not None and len(tcp_path) > 1:
        T = np.asarray(tcp_path)
        ax.plot(T[:, 0], T[:, 1], T[:, 2], color="magenta", lw=1, alpha=0.6, label="TCP path")
    if trace_points is not None and len(trace_points):
        tp = np.asarray(trace_points)
        ax.plot(tp[:, 0], tp[:, 1], tp[:, 2], "-", color="red", lw=2, label="predicted trace (on table)")
        ax.scatter(tp[:, 0], tp[:, 1], tp[:, 2], c=np.linspace(0, 1, len(tp)), cmap="RdYlGn_r", s=30)
        for i, p in enumerate(tp):
            ax.text(p[0], p[1], p[2] + 0.02, str(i + 1), color="darkred", fontsize=8)
    if camera_T is not None:
        c = camera_T[:3, 3]
        z = camera_T[:3, 2] * 0.15
        ax.scatter(*c, marker="s", color="blue", s=30, label="camera")
        ax.plot([c[0], c[0] + z[0]], [c[1], c[1] + z[1]], [c[2], c[2] + z[2]], color="blue")
    ax.set_xlim(-0.1, 1.0)
    ax.set_ylim(-0.55, 0.55)
    ax.set_zlim(0.0, 1.0)
    ax.set_box_aspect((1.1, 1.1, 1.0))
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    ax.set_zlabel("z [m]")
    ax.view_init(elev=25, azim=-140)
    ax.legend(loc="upper left", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
