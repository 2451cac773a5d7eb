"""THE conversion between ``sensor_msgs/Image`` fields and model input (ROS-free, pure functions).

The perception node passes the message's plain fields (``encoding, height, width, step,
is_bigendian, data``) or the message itself to :func:`image_fields`; nothing here imports rclpy.

Semantics follow ``cv_bridge`` (ROS 2 ``vision_opencv``):

* the buffer is ``height`` rows of ``step`` bytes; only the first ``width * channels * bytes_per_channel``
  bytes of each row are pixels (row padding is skipped); ``len(data)`` must be ``step * height``;
* multi-byte channels are big-endian when ``is_bigendian`` is set and are byte-swapped to native;
* colour conversion to ``rgb8`` exists for the formats cv_bridge converts (``rgb8, bgr8, rgba8, bgra8,
  mono8`` and their 16-bit versions ``rgb16 ... mono16``): channel reorder, alpha dropped, mono replicated,
  16 -> 8 bit scaled by 255/65535 with rounding (``cv::Mat::convertTo``); generic encodings
  (``16UC1``, ``32FC1``, ``8UC3`` ...) have no colour meaning and are refused for RGB, as cv_bridge does;
* depth (REP 118): ``16UC1``/``mono16`` in millimetres, ``32FC1`` in metres; 0 / NaN / inf mean "no reading".

When ``cv_bridge`` is importable the node may use it instead (``imgmsg_to_cv2(msg, "rgb8")``); the tests
of this module (``test/test_runtime_image_convert.py``) pin down the semantics above byte by byte,
so both paths give the same pixels. The inverse (:func:`array_to_image_fields`) is ``cv2_to_imgmsg``:
tightly packed rows, native byte order.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

# encoding -> (numpy base dtype, channels); the named ROS encodings
_NAMED: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4), "mono8": ("u1", 1),
    "rgb16": ("u2", 3), "bgr16": ("u2", 3), "rgba16": ("u2", 4), "bgra16": ("u2", 4), "mono16": ("u2", 1),
}
_GENERIC = re.compile(r"^(8U|8S|16U|16S|32S|32F|64F)C([1-4])$")
_GENERIC_DTYPE = {"8U": "u1", "8S": "i1", "16U": "u2", "16S": "i2", "32S": "i4", "32F": "f4", "64F": "f8"}
# colour layouts cv_bridge can convert to rgb8: (channel order of R, G, B in the source, has colour)
_COLOR = {"rgb": (0, 1, 2), "bgr": (2, 1, 0), "rgba": (0, 1, 2), "bgra": (2, 1, 0)}
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")


def encoding_info(encoding: str) -> tuple[np.dtype, int]:
    """(little-endian numpy dtype of one channel, number of channels) of a ROS image encoding."""
    if not isinstance(encoding, str) or not encoding:
        raise ValueError(f"encoding: expected a non-empty string, got {encoding!r}")
    if encoding in _NAMED:
        base, ch = _NAMED[encoding]
    else:
        m = _GENERIC.match(encoding)
        if m is None:
            raise ValueError(f"encoding: unsupported image encoding {encoding!r} (supported: {sorted(_NAMED)} "
                             "and the generic 8U/8S/16U/16S/32S/32F/64F C1..C4)")
        base, ch = _GENERIC_DTYPE[m.group(1)], int(m.group(2))
    return np.dtype("<" + base), ch


@dataclass
class ImageFields:
    """The fields of a ``sensor_msgs/Image`` (without the header)."""

    encoding: str
    height: int
    width: int
    step: int
    is_bigendian: int
    data: bytes

    def as_kwargs(self) -> dict[str, Any]:
        return {"encoding": self.encoding, "height": self.height, "width": self.width, "step": self.step,
                "is_bigendian": self.is_bigendian, "data": self.data}


def image_fields(msg: Any) -> ImageFields:
    """Read the fields of any object shaped like ``sensor_msgs/Image`` (duck-typed: no rclpy import)."""
    try:
        return ImageFields(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)
    except AttributeError as e:
        raise ValueError(f"not an Image-like message: {e}") from e


def _buffer(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray) and data.dtype == np.uint8:
        return np.ascontiguousarray(data).reshape(-1)
    if isinstance(data, np.ndarray):   # values, not raw memory: must be bytes 0..255
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise ValueError(f"data: expected uint8 bytes, got a {data.dtype} array")
        return data.astype(np.uint8).reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    try:   # array.array('B') (what rclpy gives for uint8[]) exposes the buffer protocol
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:
        arr = np.asarray(data)
        if arr.dtype.kind not in "iu" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            raise ValueError(f"data: expected bytes or a uint8 sequence, got {type(data).__name__}") from None
        return arr.astype(np.uint8).reshape(-1)


def image_to_array(encoding: str, height: int, width: int, step: int, is_bigendian: int | bool, data: Any) -> np.ndarray:
    """Image fields -> numpy array in native byte order: (H, W) for one channel, (H, W, C) otherwise.

    Raises ValueError naming the field for a zero size, an unknown encoding, a step too small for the
    width, or ``len(data) != step * height``.
    """
    dtype, ch = encoding_info(encoding)
    try:
        h, w, st = int(height), int(width), int(step)
    except (TypeError, ValueError) as e:
        raise ValueError(f"height/width/step must be integers: {e}") from e
    if h <= 0 or w <= 0:
        raise ValueError(f"height/width: image has zero size ({w}x{h})")
    row = w * ch * dtype.itemsize
    if st < row:
        raise ValueError(f"step: {st} bytes per row is less than width {w} x {ch} channels x {dtype.itemsize} bytes = {row}")
    buf = _buffer(data)
    if buf.size != st * h:
        raise ValueError(f"data: {buf.size} bytes, expected step * height = {st} * {h} = {st * h} ({encoding} {w}x{h})")
    pix = buf.reshape(h, st)[:, :row]                          # drop row padding
    order = ">" if bool(is_bigendian) else "<"
    arr = np.ascontiguousarray(pix).view(dtype.newbyteorder(order)).reshape(h, w, ch)
    arr = arr.astype(dtype.newbyteorder("="), copy=True)       # native order, owns its memory
    return arr[:, :, 0] if ch == 1 else arr


def to_rgb8(encoding: str, arr: np.ndarray) -> np.ndarray:
    """An array decoded from ``encoding`` -> uint8 (H, W, 3) RGB, as ``cv_bridge.cvtColor(..., "rgb8")``."""
    if encoding in ("mono8", "mono16"):
        g = arr if arr.ndim == 2 else arr[..., 0]
        rgb = np.repeat(g[..., None], 3, axis=2)
    else:
        layout = re.sub(r"(8|16)$", "", encoding) if encoding in _NAMED else None
        if layout not in _COLOR:
            kind = "a depth image (use to_depth_m)" if encoding in DEPTH_ENCODINGS else "not a colour encoding"
            raise ValueError(f"encoding: cannot convert {encoding!r} to rgb8: {kind}")
        rgb = arr[..., list(_COLOR[layout])]
    if rgb.dtype == np.uint16:   # 16 -> 8 bit as cv::Mat::convertTo(..., 255/65535): scale and round
        rgb = np.clip(np.rint(rgb.astype(np.float64) * (255.0 / 65535.0)), 0, 255)
    return np.ascontiguousarray(rgb.astype(np.uint8))


def resize_rgb(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, C) image to ``size`` (int S -> S x S, or (width, height)) with OpenCV:
    INTER_AREA when shrinking (no aliasing), INTER_LINEAR when enlarging. Aspect ratio is not kept."""
    import cv2

    w, h = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if w <= 0 or h <= 0:
        raise ValueError(f"size: must be positive, got {size!r}")
    if img.shape[1] == w and img.shape[0] == h:
        return img.copy()
    interp = cv2.INTER_AREA if (w < img.shape[1] and h < img.shape[0]) else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def resize_depth(depth: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a depth image (H, W) float metres with nearest-neighbour sampling (no mixing of depths across
    edges; NaN = no reading stays NaN)."""
    import cv2

    w, h = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if w <= 0 or h <= 0:
        raise ValueError(f"size: must be positive, got {size!r}")
    d = np.asarray(depth, dtype=np.float32)
    if d.shape[1] == w and d.shape[0] == h:
        return d.copy()
    return cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST)


def to_model_rgb(encoding: str, height: int, width: int, step: int, is_bigendian: int | bool, data: Any,
                 size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Image fields -> uint8 (H, W, 3) RGB, resized to ``size`` when given (the model's input size)."""
    rgb = to_rgb8(encoding, image_to_array(encoding, height, width, step, is_bigendian, data))
    return rgb if size is None else resize_rgb(rgb, size)


def to_depth_m(encoding: str, height: int, width: int, step: int, is_bigendian: int | bool, data: Any) -> np.ndarray:
    """Depth image fields -> float32 (H, W) metres; NaN where there is no reading (REP 118).

    16UC1 / mono16: millimetres, 0 = no reading. 32FC1: metres, NaN/inf/<= 0 = no reading.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise ValueError(f"encoding: {encoding!r} is not a depth encoding ({', '.join(DEPTH_ENCODINGS)})")
    arr = image_to_array(encoding, height, width, step, is_bigendian, data)
    if arr.dtype == np.uint16:
        d = arr.astype(np.float32) * np.float32(0.001)
        d[arr == 0] = np.nan
    else:
        d = arr.astype(np.float32)
        d[~np.isfinite(d) | (d <= 0)] = np.nan
    return d


def msg_to_model_rgb(msg: Any, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """:func:`to_model_rgb` on an Image-like message."""
    return to_model_rgb(**image_fields(msg).as_kwargs(), size=size)


def msg_to_depth_m(msg: Any) -> np.ndarray:
    """:func:`to_depth_m` on an Image-like message."""
    return to_depth_m(**image_fields(msg).as_kwargs())


# ---------------------------------------------------------------------------------------------- inverse
def array_to_image_fields(arr: np.ndarray, encoding: str) -> ImageFields:
    """numpy image -> Image fields (``cv2_to_imgmsg``): packed rows, native byte order.

    ``arr`` must already be in ``encoding``'s layout: (H, W) or (H, W, 1) for one channel, (H, W, C) else,
    with the encoding's channel type (e.g. uint8 for rgb8, uint16 for 16UC1, float32 for 32FC1).
    """
    dtype, ch = encoding_info(encoding)
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] != ch or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"array of shape {np.asarray(arr).shape} does not fit encoding {encoding!r} ({ch} channels)")
    if a.dtype.newbyteorder("<") != dtype and a.dtype != dtype.newbyteorder("="):
        raise ValueError(f"array dtype {a.dtype} does not match encoding {encoding!r} ({dtype.name})")
    a = np.ascontiguousarray(a.astype(dtype.newbyteorder("="), copy=False))
    h, w = a.shape[:2]
    return ImageFields(encoding, h, w, w * ch * dtype.itemsize, int(sys.byteorder == "big"), a.tobytes())


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = "rgb8") -> ImageFields:
    """uint8 (H, W, 3) RGB -> Image fields in ``rgb8`` or ``bgr8`` (for publishing annotated images)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb: expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if encoding == "rgb8":
        return array_to_image_fields(rgb, "rgb8")
    if encoding == "bgr8":
        return array_to_image_fields(rgb[..., ::-1], "bgr8")
    raise ValueError(f"encoding: 'rgb8' or 'bgr8', got {encoding!r}")


def depth_to_image_fields(depth_m: np.ndarray, encoding: str = "32FC1") -> ImageFields:
    """float (H, W) metres (NaN = no reading) -> Image fields in ``32FC1`` (metres) or ``16UC1`` (mm, 0 = none)."""
    d = np.asarray(depth_m, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth_m: expected (H, W), got {d.shape}")
    if encoding == "32FC1":
        return array_to_image_fields(d.astype(np.float32), "32FC1")
    if encoding == "16UC1":
        mm = np.where(np.isfinite(d) & (d > 0), np.rint(d * 1000.0), 0.0)
        if mm.max(initial=0) > 65535:
            raise ValueError("depth_m: values beyond 65.535 m do not fit 16UC1 millimetres")
        return array_to_image_fields(mm.astype(np.uint16), "16UC1")
    raise ValueError(f"encoding: '32FC1' or '16UC1', got {encoding!r}")
