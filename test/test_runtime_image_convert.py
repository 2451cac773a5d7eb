"""ROS Image fields <-> model input: every encoding, row padding, big-endian, malformed input.

Expected colours come from OpenCV's cvtColor (what cv_bridge calls), the raw bytes are built by hand
(padding filled with junk so a conversion that ignored ``step`` would show it).
"""
from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from semanticvla_core.image_convert import (array_to_image_fields, depth_to_image_fields, image_fields, image_to_array,
                                            msg_to_depth_m, msg_to_model_rgb, resize_rgb, rgb_to_image_fields,
                                            to_depth_m, to_model_rgb)

H, W = 5, 7
rng = np.random.default_rng(0)


def pack(arr: np.ndarray, pad: int = 0, big: bool = False) -> dict:
    """Image fields for ``arr`` written by hand: rows of step = row bytes + pad junk bytes."""
    a = np.asarray(arr)
    a3 = a if a.ndim == 3 else a[..., None]
    be = a3.astype(a3.dtype.newbyteorder(">" if big else "<"))
    rows = be.reshape(a3.shape[0], -1).view(np.uint8).reshape(a3.shape[0], -1)
    junk = rng.integers(0, 256, (a3.shape[0], pad), dtype=np.uint8)
    data = np.concatenate([rows, junk], axis=1).tobytes()
    return dict(height=a3.shape[0], width=a3.shape[1], step=rows.shape[1] + pad, is_bigendian=int(big), data=data)


U8_3 = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
U8_4 = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
U8_1 = rng.integers(0, 256, (H, W), dtype=np.uint8)
U16_1 = rng.integers(0, 65536, (H, W), dtype=np.uint16)
U16_3 = rng.integers(0, 65536, (H, W, 3), dtype=np.uint16)


def to8(a16: np.ndarray) -> np.ndarray:
    """16 -> 8 bit as cv_bridge: convertTo with scale 255/65535, rounded (v / 257 to nearest, no ties)."""
    return ((a16.astype(np.int64) * 2 + 257) // 514).astype(np.uint8)


CASES = {   # encoding: (array, expected rgb8)
    "rgb8": (U8_3, U8_3),
    "bgr8": (U8_3, cv2.cvtColor(U8_3, cv2.COLOR_BGR2RGB)),
    "rgba8": (U8_4, cv2.cvtColor(U8_4, cv2.COLOR_RGBA2RGB)),
    "bgra8": (U8_4, cv2.cvtColor(U8_4, cv2.COLOR_BGRA2RGB)),
    "mono8": (U8_1, cv2.cvtColor(U8_1, cv2.COLOR_GRAY2RGB)),
    "mono16": (U16_1, cv2.cvtColor(to8(U16_1), cv2.COLOR_GRAY2RGB)),
    "rgb16": (U16_3, to8(U16_3)),
    "bgr16": (U16_3, to8(U16_3)[..., ::-1]),
}


@pytest.mark.parametrize("encoding", list(CASES))
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("big", [False, True])
def test_colour_encodings_to_model_rgb(encoding, pad, big):
    arr, expected = CASES[encoding]
    f = pack(arr, pad=pad, big=big)
    np.testing.assert_array_equal(image_to_array(encoding, **f), arr)
    rgb = to_model_rgb(encoding, **f)
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3) and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, expected)


def test_byte_order_matters_for_16_bit():
    f = pack(U16_1, big=True)
    f_wrong = dict(f, is_bigendian=0)            # same bytes read as little-endian: different values
    assert not np.array_equal(image_to_array("mono16", **f_wrong), U16_1)
    np.testing.assert_array_equal(image_to_array("mono16", **f), U16_1)
    f8 = pack(U8_3, big=True)                    # 8-bit data ignores the flag
    np.testing.assert_array_equal(to_model_rgb("rgb8", **f8), U8_3)


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("pad", [0, 2])
def test_depth_16uc1_millimetres_to_metres(big, pad):
    mm = rng.integers(0, 5000, (H, W), dtype=np.uint16)
    mm[0, 0] = 0
    d = to_depth_m("16UC1", **pack(mm, pad=pad, big=big))
    assert d.dtype == np.float32 and np.isnan(d[0, 0])
    ok = mm > 0
    np.testing.assert_allclose(d[ok], mm[ok] / 1000.0, rtol=1e-6)


@pytest.mark.parametrize("big", [False, True])
def test_depth_32fc1_metres_with_invalid_readings(big):
    m = rng.uniform(0.2, 3.0, (H, W)).astype(np.float32)
    m[0, 1], m[1, 1], m[2, 2], m[3, 3] = np.nan, np.inf, 0.0, -1.0
    d = to_depth_m("32FC1", **pack(m, pad=4, big=big))
    bad = np.zeros((H, W), bool); bad[0, 1] = bad[1, 1] = bad[2, 2] = bad[3, 3] = True
    assert np.all(np.isnan(d[bad]))
    np.testing.assert_array_equal(d[~bad], m[~bad])
    np.testing.assert_array_equal(image_to_array("32FC1", **pack(m, big=big))[~bad], m[~bad])


def test_generic_encodings_decode():
    a = rng.normal(size=(H, W, 3)).astype(np.float64)
    np.testing.assert_array_equal(image_to_array("64FC3", **pack(a, pad=8, big=True)), a)
    s = rng.integers(-30000, 30000, (H, W), dtype=np.int16)
    np.testing.assert_array_equal(image_to_array("16SC1", **pack(s, big=True)), s)


def test_rgb_refused_for_depth_and_generic():
    with pytest.raises(ValueError, match="depth"):
        to_model_rgb("16UC1", **pack(U16_1))
    with pytest.raises(ValueError, match="rgb8"):
        to_model_rgb("8UC3", **pack(U8_3))
    with pytest.raises(ValueError, match="not a depth encoding"):
        to_depth_m("rgb8", **pack(U8_3))


@pytest.mark.parametrize("bad, match", [
    (dict(data=b"\x00" * 10), "data: 10 bytes, expected"),
    (dict(height=0), "zero size"),
    (dict(width=0), "zero size"),
    (dict(step=W * 3 - 1), "step"),
    (dict(encoding="yuv422_weird"), "unsupported image encoding"),
    (dict(encoding=""), "encoding"),
    (dict(data=[1, 2, 300]), "data"),
])
def test_malformed_input_clear_error(bad, match):
    f = dict(encoding="rgb8", **pack(U8_3))
    f.update(bad)
    with pytest.raises(ValueError, match=match):
        to_model_rgb(**f)


def test_data_containers_and_message_objects():
    f = pack(U8_3, pad=1)
    msg = SimpleNamespace(encoding="bgr8", header=None, **dict(f, data=array.array("B", f["data"])))  # rclpy-style
    np.testing.assert_array_equal(msg_to_model_rgb(msg), CASES["bgr8"][1])
    np.testing.assert_array_equal(to_model_rgb("bgr8", **dict(f, data=list(f["data"]))), CASES["bgr8"][1])
    np.testing.assert_array_equal(to_model_rgb("bgr8", **dict(f, data=np.frombuffer(f["data"], np.uint8))), CASES["bgr8"][1])
    as_int64 = np.frombuffer(f["data"], np.uint8).astype(np.int64)          # values, not memory
    np.testing.assert_array_equal(to_model_rgb("bgr8", **dict(f, data=as_int64)), CASES["bgr8"][1])
    with pytest.raises(ValueError, match="data"):
        to_model_rgb("bgr8", **dict(f, data=as_int64.astype(np.float32)))
    with pytest.raises(ValueError, match="Image-like"):
        image_fields(object())
    dm = SimpleNamespace(**depth_to_image_fields(np.full((2, 3), 1.5)).as_kwargs())
    np.testing.assert_allclose(msg_to_depth_m(dm), 1.5)


def test_resize_to_model_size():
    img = np.zeros((48, 64, 3), np.uint8); img[:, :32] = 200          # left half bright
    f = dict(encoding="rgb8", **pack(img, pad=5))
    out = to_model_rgb(**f, size=32)
    assert out.shape == (32, 32, 3)
    assert out[:, :15].min() == 200 and out[:, 17:].max() == 0     # the edge stays in the middle
    assert resize_rgb(img, (128, 96)).shape == (96, 128, 3)
    with pytest.raises(ValueError, match="size"):
        resize_rgb(img, 0)


def test_inverse_round_trips():
    for enc, arr in [("rgb8", U8_3), ("bgra8", U8_4), ("mono8", U8_1), ("mono16", U16_1), ("16UC1", U16_1)]:
        f = array_to_image_fields(arr, enc)
        assert f.step == W * (arr.shape[2] if arr.ndim == 3 else 1) * arr.dtype.itemsize and len(f.data) == f.step * H
        np.testing.assert_array_equal(image_to_array(**f.as_kwargs()), arr)
    np.testing.assert_array_equal(to_model_rgb(**rgb_to_image_fields(U8_3, "bgr8").as_kwargs()), U8_3)
    np.testing.assert_array_equal(to_model_rgb(**rgb_to_image_fields(U8_3).as_kwargs()), U8_3)
    d = rng.uniform(0.3, 2.0, (H, W)); d[1, 1] = np.nan
    back = to_depth_m(**depth_to_image_fields(d, "16UC1").as_kwargs())
    assert np.isnan(back[1, 1]) and np.nanmax(np.abs(back - d)) <= 0.0005 + 1e-6
    np.testing.assert_allclose(to_depth_m(**depth_to_image_fields(d).as_kwargs()), d.astype(np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        array_to_image_fields(U8_3, "mono8")
    with pytest.raises(ValueError, match="dtype"):
        array_to_image_fields(U8_3.astype(np.float32), "rgb8")
