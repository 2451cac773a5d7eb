"""NormStats / DatasetStats: quantile mapping, tiny-range guards, JSON round trip."""
import json

import numpy as np
import pytest
import torch

from semanticvla_core.normalize import DatasetStats, NormStats


def _data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.stack([rng.normal(0.0, 0.02, n),          # typical translation delta
                  rng.uniform(-1.0, 3.0, n),           # wide
                  np.full(n, 0.25),                    # constant dim
                  0.25 + rng.uniform(-1e-5, 1e-5, n),  # tiny but non-zero range
                  (rng.uniform(size=n) > 0.5).astype(float)], axis=1)  # gripper 0/1
    return x


def test_quantiles_map_to_unit_interval_and_inverse_is_exact():
    x = _data()
    s = NormStats.compute(x)
    assert s.dim == 5 and s.count == len(x)
    np.testing.assert_allclose(s.low, np.quantile(x, 0.01, axis=0))
    np.testing.assert_allclose(s.high, np.quantile(x, 0.99, axis=0))
    y = s.normalize(x)
    # the well-conditioned dims: q01 -> -1, q99 -> +1
    for d in (0, 1, 4):
        np.testing.assert_allclose(np.quantile(y[:, d], [0.01, 0.99]), [-1.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(s.unnormalize(y), x, atol=1e-12)
    # outliers are not clipped unless asked
    big = x.copy()
    big[0, 1] = 100.0
    assert s.normalize(big)[0, 1] > 10
    assert s.normalize(big, clip=1.5)[0, 1] == pytest.approx(1.5)


def test_tiny_ranges_do_not_blow_up():
    x = _data()
    s = NormStats.compute(x, min_range=1e-3)
    y = s.normalize(x)
    # constant dim passes through centred (scale 1) and an unseen value stays its own size
    np.testing.assert_allclose(y[:, 2], 0.0)
    probe = x[:1].copy()
    probe[0, 2] = 0.75
    assert s.normalize(probe)[0, 2] == pytest.approx(0.5)
    # tiny-range dim is widened to min_range: |y| <= range / min_range, not range / 2e-5
    assert np.abs(y[:, 3]).max() <= 2 * 2e-5 / 1e-3  # full data range 2e-5, centre within it
    probe[0, 3] = 0.25 + 0.01  # 1 cm off a tiny-range dim -> bounded by 2 * 0.01 / min_range
    assert abs(s.normalize(probe)[0, 3]) == pytest.approx(2 * 0.01 / 1e-3, rel=1e-3)  # not 0.01 / 1e-5
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(s.unnormalize(y), x, atol=1e-12)


def test_nonfinite_rows_ignored_and_empty_rejected():
    x = _data(200)
    x2 = x.copy()
    x2[5, 0] = np.nan
    x2[7, 1] = np.inf
    s = NormStats.compute(x2)
    assert s.count == 198
    with pytest.raises(ValueError, match="no finite rows"):
        NormStats.compute(np.full((3, 2), np.nan))


def test_torch_and_numpy_agree():
    x = _data(300).astype(np.float32)
    s = NormStats.compute(x)
    yt = s.normalize(torch.from_numpy(x))
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
    np.testing.assert_allclose(yt.numpy(), s.normalize(x), atol=1e-5)
    np.testing.assert_allclose(s.unnormalize(yt).numpy(), x, atol=1e-5)
    with pytest.raises(ValueError, match="last dimension"):
        s.normalize(np.zeros((2, 3)))


def test_json_round_trip(tmp_path):
    x = _data()
    a, st = NormStats.compute(x), NormStats.compute(x[:, :3] * 2 + 1)
    a.save(tmp_path / "a.json")
    a2 = NormStats.load(tmp_path / "a.json")
    np.testing.assert_array_equal(a2.normalize(x), a.normalize(x))
    ds = DatasetStats(action=a, state=st, extra={"source": "test"})
    ds.save(tmp_path / "norm_stats.json")
    raw = json.loads((tmp_path / "norm_stats.json").read_text())
    assert set(raw) == {"action", "state", "extra"}
    ds2 = DatasetStats.load(tmp_path / "norm_stats.json")
    np.testing.assert_array_equal(ds2.state.low, st.low)
    np.testing.assert_array_equal(ds2.action.high, a.high)
    assert ds2.extra == {"source": "test"}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        DatasetStats.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="missing keys"):
        NormStats.from_dict({"low": [0.0]})
