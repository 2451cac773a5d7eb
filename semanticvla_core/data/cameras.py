"""Camera keys and camera calibration of LeRobot v3 datasets: the one place for both.

Keys. ``DEFAULT_IMAGE_KEY`` / ``DEFAULT_WRIST_KEY`` are the names the project's own datasets use
(``training/collect_demos.py``); other datasets name their cameras otherwise (``observation.images.image``,
``observation.images.exterior_image_1_left``, ...), so every reader takes the keys as options
(``--image-key`` / ``--wrist-key`` in the CLIs). A camera key that the dataset lacks is a ``ValueError``
that lists the dataset's camera keys (``check_camera_key``). The wrist camera is optional: the default key
is used when the dataset has it, ``None`` (CLI ``none``) goes without, any other key must exist
(``resolve_wrist_key``).

Calibration. Per camera a ``PinholeCamera.to_dict()`` (plus ``T_tcp_cam``, the rigid mount of a wrist camera
on the TCP). It is stored in the camera feature's own ``info`` dict in ``meta/info.json``
(``features[key]["info"]["camera_calibration"]``): that is where lerobot keeps per-feature information, and
its dataset tools (``delete_episodes``, ``split_dataset``, ``merge``...) copy the features and their ``info``
into the datasets they write, while they drop files of ``meta/`` they do not know. ``meta/cameras.json``, where
the project kept calibration before, is still written as a mirror for older readers and read as the fallback
for cameras whose feature carries none (datasets written before).
"""
from __future__ import annotations

import json
from pathlib import Path

DEFAULT_IMAGE_KEY = "observation.images.agentview"
DEFAULT_WRIST_KEY = "observation.images.wrist"
NO_CAMERA = "none"                       # CLI value of --wrist-key that disables the wrist camera
CALIBRATION_KEY = "camera_calibration"   # in features[camera]["info"] of meta/info.json
CAMERAS_JSON = "meta/cameras.json"       # legacy place (mirror + fallback)
CAMERA_DTYPES = ("video", "image")


def camera_keys(features: dict) -> list[str]:
    """The camera (video or image) features of a dataset, in ``info.json`` order."""
    return [k for k, ft in features.items() if isinstance(ft, dict) and ft.get("dtype") in CAMERA_DTYPES]


def _where(root) -> str:
    return f"{root}: " if root is not None else ""


def check_camera_key(features: dict, key: str, option: str = "--image-key", root=None) -> str:
    """``key`` if the dataset has such a camera, else ``ValueError`` naming the option and listing the
    dataset's camera keys."""
    cams = camera_keys(features)
    if key not in cams:
        raise ValueError(f"{_where(root)}no camera {key!r} ({option}); the dataset's camera keys are {cams}")
    return key


def wrist_key_option(value: str | None) -> str | None:
    """CLI ``--wrist-key`` value -> the ``wrist_camera`` argument: not given -> ``DEFAULT_WRIST_KEY`` (used when
    the dataset has it), ``none`` -> None (no wrist camera), anything else -> that key (must exist)."""
    if value is None:
        return DEFAULT_WRIST_KEY
    return None if value.strip().lower() == NO_CAMERA else value


def resolve_wrist_key(features: dict, key: str | None = DEFAULT_WRIST_KEY, root=None) -> str | None:
    """The wrist camera to use: None for none; ``DEFAULT_WRIST_KEY`` only if the dataset has it (optional);
    any other key must exist (``ValueError`` listing the dataset's camera keys)."""
    if key is None:
        return None
    if key == DEFAULT_WRIST_KEY and key not in camera_keys(features):
        return None
    return check_camera_key(features, key, "--wrist-key", root)


def image_shape(ft: dict) -> tuple[int, int, int]:
    """(height, width, channels) of a video/image feature of ``info.json`` (lerobot writes [H, W, C] with names
    ``height, width, channels``; older datasets [C, H, W] with ``channels`` first)."""
    inf = ft.get("info") or {}
    if "video.height" in inf and "video.width" in inf:
        return int(inf["video.height"]), int(inf["video.width"]), int(inf.get("video.channels", 3))
    shape, names = [int(s) for s in ft["shape"]], ft.get("names") or []
    if names and names[0] in ("channels", "channel", "c"):
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


# ---------------------------------------------------------------------------------------------------- calibration
def calibration_dict(camera) -> dict:
    """A ``PinholeCamera`` (or its dict, possibly with ``T_tcp_cam``) -> a JSON-ready dict."""
    return camera.to_dict() if hasattr(camera, "to_dict") else json.loads(json.dumps(dict(camera)))


def add_calibration(features: dict, cameras: dict | None) -> dict:
    """``features`` with each camera's calibration put into its feature's ``info`` (features not named in
    ``cameras`` unchanged; a key that is no camera feature is left to ``meta/cameras.json``)."""
    out = dict(features)
    for key, cam in (cameras or {}).items():
        if key not in camera_keys(features):
            continue
        ft = dict(out[key])
        ft["info"] = {**(ft.get("info") or {}), CALIBRATION_KEY: calibration_dict(cam)}
        out[key] = ft
    return out


def load_calibration(root, info: dict) -> dict[str, dict]:
    """Every camera's calibration: from its feature's ``info`` in ``meta/info.json``; ``meta/cameras.json`` for
    cameras whose feature has none (datasets written before)."""
    out: dict[str, dict] = {}
    path = Path(root) / CAMERAS_JSON
    if path.is_file():
        try:
            legacy = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from e
        out.update({k: v for k, v in legacy.items() if isinstance(v, dict)})
    for key in camera_keys(info.get("features", {})):
        cal = (info["features"][key].get("info") or {}).get(CALIBRATION_KEY)
        if cal is not None:
            out[key] = cal
    return out
