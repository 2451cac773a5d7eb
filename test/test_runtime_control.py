"""Chunk executor: time indexing, alignment of late chunks by stamp, blending, staleness, rejection."""
from __future__ import annotations

import numpy as np
import pytest

from semanticvla_core.control import ChunkExecutor, ExecutorConfig
from semanticvla_core.interfaces import ActionChunkData
from semanticvla_core.safety import ViolationKind as K

DT = 0.05
DT_NS = int(DT * 1e9)
T0 = 10_000_000_000


def make(rows: np.ndarray, stamp: int, plan_id: int = 0) -> ActionChunkData:
    return ActionChunkData(np.asarray(rows, np.float32), dt=DT, stamp_ns=stamp, plan_id=plan_id)


def ramp(H=8, base=0.0) -> np.ndarray:
    """Row i = base + i in every dimension, so the executed row index is readable from the value."""
    return base + np.repeat(np.arange(H, dtype=np.float64)[:, None], 7, axis=1)


def test_rows_by_time_then_exhausted():
    ex = ChunkExecutor(ExecutorConfig(mode="latest"))
    assert ex.next_action(T0) is None and "no chunk" in ex.last_reason
    assert ex.add_chunk(make(ramp(), T0), T0) is None
    for i in range(8):
        np.testing.assert_allclose(ex.next_action(T0 + i * DT_NS), i)
    np.testing.assert_allclose(ex.next_action(T0 + 3 * DT_NS + int(0.012e9)), 3)   # tick jitter: nearest row
    assert ex.next_action(T0 + 8 * DT_NS) is None and ex.last_reason       # exhausted -> hold


def test_late_chunk_aligned_by_stamp():
    ex = ChunkExecutor(ExecutorConfig(mode="latest"))
    late = T0 + 3 * DT_NS                                   # inference took 3 steps: rows 0..2 are in the past
    assert ex.add_chunk(make(ramp(), T0), late) is None
    np.testing.assert_allclose(ex.next_action(late), 3)
    up = ex.upcoming(late)
    assert up.stamp_ns == late and up.horizon == 5            # rows 3..7 remain
    np.testing.assert_allclose(up.actions[:, 0], [3, 4, 5, 6, 7])


def test_temporal_ensembling_act_weights():
    k = 0.5
    ex = ChunkExecutor(ExecutorConfig(mode="ensemble", ensemble_k=k))
    ex.add_chunk(make(ramp(base=0.0), T0), T0)
    ex.add_chunk(make(ramp(base=100.0), T0 + 2 * DT_NS), T0 + 2 * DT_NS)
    t = T0 + 4 * DT_NS                                         # old chunk row 4 (=4), new chunk row 2 (=102)
    w = np.exp(-k * np.arange(2))                              # oldest first
    np.testing.assert_allclose(ex.next_action(t), (w[0] * 4 + w[1] * 102) / w.sum())
    np.testing.assert_allclose(ex.next_action(T0 + DT_NS), 1)          # before the new chunk starts: old alone
    np.testing.assert_allclose(ex.next_action(t), (w[0] * 4 + w[1] * 102) / w.sum())
    np.testing.assert_allclose(ex.next_action(T0 + 9 * DT_NS), 107)   # old chunk exhausted: new one alone


def test_crossfade_ramps_to_the_new_chunk():
    ex = ChunkExecutor(ExecutorConfig(mode="crossfade", crossfade_steps=3))
    ex.add_chunk(make(np.zeros((16, 7)), T0), T0)
    t1 = T0 + 4 * DT_NS
    ex.add_chunk(make(np.ones((8, 7)), t1), t1)
    got = [float(ex.next_action(t1 + j * DT_NS)[0]) for j in range(6)]
    np.testing.assert_allclose(got, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_latest_prefers_newest_chunk():
    ex = ChunkExecutor(ExecutorConfig(mode="latest"))
    ex.add_chunk(make(ramp(), T0), T0)
    ex.add_chunk(make(ramp(base=50), T0 + DT_NS), T0 + DT_NS)
    np.testing.assert_allclose(ex.next_action(T0 + 2 * DT_NS), 51)


def test_stale_and_malformed_chunks_rejected_with_reason():
    ex = ChunkExecutor(ExecutorConfig(max_chunk_age_s=1.0, stale_after_s=0.3))
    old = make(ramp(64), T0)
    assert ex.add_chunk(old, T0 + int(1.5e9)).kind is K.STALE                     # too old on arrival
    assert ex.add_chunk(make(ramp(), T0 + int(2e9)), T0).kind is K.STALE         # stamped in the future
    assert ex.add_chunk(make(ramp(), 0), T0).kind is K.STALE                      # unstamped
    assert ex.add_chunk(make(ramp(4), T0), T0 + 5 * DT_NS).kind is K.STALE        # ended before arrival
    nan = ramp(); nan[2, 3] = np.nan
    v = ex.add_chunk(make(nan, T0), T0)
    assert v.kind is K.NAN and v.step == 2
    assert ex.add_chunk(make(np.zeros((8, 6)), T0), T0).kind is K.WRONG_SHAPE
    assert ex.add_chunk(make(np.zeros((0, 7)), T0), T0).kind is K.WRONG_SHAPE
    assert ex.add_chunk(ActionChunkData(np.zeros((8, 7), np.float32), dt=-1.0, stamp_ns=T0), T0).kind is K.BAD_TIMING
    assert ex.add_chunk("not a chunk", T0).kind is K.WRONG_SHAPE
    assert ex.num_chunks == 0                                                      # nothing got in
    # a long chunk still covers the time but is too old to execute open loop
    assert ex.add_chunk(old, T0) is None
    assert ex.next_action(T0 + int(0.2e9)) is not None
    assert ex.next_action(T0 + int(0.4e9)) is None and "old" in ex.last_reason


def test_upcoming_blends_and_stops_where_coverage_ends():
    ex = ChunkExecutor(ExecutorConfig(mode="ensemble", ensemble_k=0.0))   # plain average
    ex.add_chunk(make(ramp(), T0), T0)
    ex.add_chunk(make(ramp(base=10), T0 + 2 * DT_NS), T0 + 2 * DT_NS)
    up = ex.upcoming(T0 + 2 * DT_NS)
    assert up.horizon == 8 and up.dt == pytest.approx(DT)
    expect = [(2 + i + 10 + i) / 2 if 2 + i < 8 else 10 + i for i in range(8)]
    np.testing.assert_allclose(up.actions[:, 0], expect, rtol=1e-6)
    assert up.validate() is up
    assert ex.upcoming(T0 + 20 * DT_NS) is None


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        ExecutorConfig(mode="average")


def test_continuation_gives_the_running_rows_from_the_observation_and_the_delay_from_stamps():
    """Real-time chunking inputs: the rows the arm runs from the observation's time on, and how many of them run
    before a chunk ready at ``ready`` can take over (ceil of the elapsed periods)."""
    ex = ChunkExecutor(ExecutorConfig(mode="latest"))
    assert ex.continuation(T0, T0 + DT_NS) == (None, 0, T0)                # nothing running: plain sampling
    assert ex.add_chunk(make(ramp(), T0), T0) is None
    prev, d, stamp = ex.continuation(T0 + 2 * DT_NS, T0 + 2 * DT_NS + int(3.2 * DT_NS))
    np.testing.assert_allclose(prev[:, 0], [2, 3, 4, 5, 6, 7])
    assert d == 4 and stamp == T0 + 2 * DT_NS                              # 3.2 periods -> 4 rows run meanwhile
    prev, d, _ = ex.continuation(T0 + 6 * DT_NS, T0 + 20 * DT_NS)
    np.testing.assert_allclose(prev[:, 0], [6, 7])
    assert d == 2                                                          # at most the rows there are


@pytest.mark.parametrize("offset", [0.3, 0.49, 0.51, 0.7])
def test_a_continued_chunk_runs_on_the_running_chunks_grid_and_never_repeats_or_skips_a_row(offset):
    """A plan whose observation falls between two rows of the running chunk (a controller decodes whenever a
    Trace arrives, not on the grid): the new chunk, its first rows the continued ones, is stamped on the running
    chunk's grid, so at any tick time after the hand-over it gives exactly the row the old chunk would have."""
    ex = ChunkExecutor(ExecutorConfig(mode="latest"))
    assert ex.add_chunk(make(ramp(), T0), T0) is None
    t_obs = T0 + int((2 + offset) * DT_NS)
    prev, d, stamp = ex.continuation(t_obs, t_obs + int(1.5 * DT_NS))
    assert abs(stamp - t_obs) <= DT_NS // 2 + 1 and (stamp - T0) % DT_NS == 0
    new = prev.copy()
    new[d:, 0] += 100.0                                                    # the rows after the delay are new
    assert ex.add_chunk(make(new, stamp), t_obs) is None
    rng = np.random.default_rng(0)
    end = stamp + (d - 0.5) * DT_NS                                        # the frozen rows run until then
    for t1 in t_obs + (rng.random(40) * (end - t_obs)).astype(np.int64):   # ticks while they run
        ideal = np.floor((t1 - T0) / DT_NS + 0.5)                          # the old chunk's row at t1
        assert ex.upcoming(int(t1)).actions[0, 0] == ideal, (t1 - T0) / DT_NS
