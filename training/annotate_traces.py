#!/usr/bin/env python3
"""Add TraceX trace columns (trace.x, trace.y, trace.present) to a LeRobot v3 dataset.

Examples:
  # exact labels in simulation: project the end-effector position through the dataset's camera calibration
  python training/annotate_traces.py --dataset data/sim_demos --method projection   # observation.ee_pos
  # real data: keyframes + Lucas-Kanade tracking, end-effector located on keyframes from a JSON of points
  python training/annotate_traces.py --dataset data/real --method track --tracker lk \
      --keyframe-points keypoints.json --overlay-episodes 4
  # another dataset's camera name
  python training/annotate_traces.py --dataset data/real --image-key observation.images.image --method track ...
Rerunning with --resume continues after the last finished episode. The trace columns are written in [0, 1]
(coordinate_space normalized_image_xy_0_1 and the camera in their feature info in meta/info.json), replacing
trace columns of the same names the dataset had.
"""
from __future__ import annotations

import argparse
import json
import sys

from semanticvla_core.data.annotate import AnnotateConfig, annotate_dataset


def main(argv=None) -> int:
    d = AnnotateConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset root (LeRobot v3)")
    p.add_argument("--method", choices=["projection", "track"], default=d.method)
    p.add_argument("--image-key", "--camera", dest="camera", default=d.camera,
                   help="camera (video key) the trace is drawn in (default %(default)s)")
    p.add_argument("--camera-json", default=None, help="PinholeCamera JSON (default: the dataset's calibration, "
                   "meta/info.json features[<image key>].info.camera_calibration or meta/cameras.json)")
    p.add_argument("--window", type=int, default=d.window)
    p.add_argument("--ee-key", default=d.ee_key, help="column with end-effector xyz (default %(default)s)")
    p.add_argument("--ee-slice", type=int, nargs=2, default=list(d.ee_slice), metavar=("START", "STOP"))
    p.add_argument("--gripper-key", default=d.gripper_key)
    p.add_argument("--gripper-index", type=int, default=d.gripper_index)
    p.add_argument("--tracker", choices=["lk", "cotracker", "identity"], default=d.tracker)
    p.add_argument("--cotracker-checkpoint", default=None, help="local TorchScript file or weights file")
    p.add_argument("--cotracker-repo", default=None, help="local CoTracker repository (hubconf.py)")
    p.add_argument("--keyframe-points", default=None, help='JSON {"<episode>": {"<frame>": [u, v]}}')
    p.add_argument("--keyframe-every", type=int, default=None, help="extra keyframe every N frames")
    p.add_argument("--overlay-episodes", type=int, default=d.overlay_episodes)
    p.add_argument("--overlay-dir", default=None)
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue a previous run (default); --no-resume starts over")
    p.add_argument("--max-episodes", type=int, default=None, help="stop after this many episodes (resumable)")
    a = p.parse_args(argv)
    cfg = AnnotateConfig(method=a.method, camera=a.camera, camera_json=a.camera_json, window=a.window,
                         ee_key=a.ee_key, ee_slice=tuple(a.ee_slice), gripper_key=a.gripper_key,
                         gripper_index=a.gripper_index, tracker=a.tracker,
                         cotracker_checkpoint=a.cotracker_checkpoint, cotracker_repo=a.cotracker_repo,
                         keyframe_points=a.keyframe_points, keyframe_every=a.keyframe_every,
                         overlay_episodes=a.overlay_episodes,
                         overlay_dir=a.overlay_dir, resume=a.resume, max_episodes=a.max_episodes)
    try:
        rep = annotate_dataset(a.dataset, cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"annotated_this_run": len(rep.annotated), "already_done": rep.resumed_from,
                      "complete": rep.complete, "visible_fraction": round(rep.visible_fraction, 4),
                      "overlays": rep.overlays}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
