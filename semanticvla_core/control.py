"""The controller's executor (System 1 side), ROS-free: keep executing the current action chunk and blend
into the next one, so the arm never waits on the planner.

Chunks are indexed by *time*: row ``i`` of a chunk stamped ``stamp_ns`` with period ``dt`` applies at
``stamp_ns + i * dt``, and a control tick at time ``t`` executes row ``round((t - stamp) / dt)``. A chunk
that arrives late (inference took a while) is therefore aligned by its stamp: the rows whose time has
passed are skipped, never replayed.

Blending modes (``ExecutorConfig.mode``):

* ``"ensemble"`` (default): temporal ensembling as in ACT (Zhao et al., 2023): every buffered chunk
  that covers the current step contributes its row, weighted ``w_i = exp(-k * i)`` with ``i = 0`` the
  *oldest* chunk (ACT's choice, k = 0.01: nearly uniform, slightly favouring older predictions, which
  smooths the motion). Set ``ensemble_k < 0`` to favour newer predictions instead.
* ``"crossfade"``: real-time-chunking-style hand-over: when a new chunk arrives, its weight ramps
  linearly from ``1/(n+1)`` to 1 over its first ``n = crossfade_steps`` steps against the chunk it
  replaces (the soft-masked overlap of RTC, Black et al. 2025, without the inference-time inpainting,
  which belongs in the decoder).
* ``"latest"``: the newest covering chunk only (no blending).

For ee_delta actions the blended row is the weighted mean of the predicted deltas for the same time
step (same units, same frame), so blending never mixes conventions.
:meth:`ChunkExecutor.next_action` returns ``None`` (hold position) when no chunk covers ``now`` or the
newest chunk is older than ``stale_after_s``; malformed chunks are rejected with a reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .interfaces import ActionChunkData
from .safety.checker import Violation, ViolationKind


@dataclass
class ExecutorConfig:
    """Executor policy (defaults: 7-D ee_delta at 20 Hz)."""

    mode: str = "ensemble"         # "ensemble" | "crossfade" | "latest"
    ensemble_k: float = 0.01       # ACT weight exponent, w_i = exp(-k i), i = 0 the oldest chunk
    crossfade_steps: int = 3       # crossfade length in steps
    action_dim: int = 7            # expected D of (H, D) chunks
    max_chunk_age_s: float = 1.0   # a chunk whose row 0 lies further in the past on arrival is STALE
    max_future_s: float = 0.5      # ... or further in the future (clock skew)
    stale_after_s: float = 1.0     # next_action -> None once the newest chunk's row 0 is this old
    max_chunks: int = 16           # buffer size (older chunks are dropped)

    def __post_init__(self):
        if self.mode not in ("ensemble", "crossfade", "latest"):
            raise ValueError(f"mode: 'ensemble', 'crossfade' or 'latest', got {self.mode!r}")
        if self.crossfade_steps < 0 or self.max_chunks < 1 or self.action_dim < 1:
            raise ValueError("crossfade_steps >= 0, max_chunks >= 1 and action_dim >= 1 required")


@dataclass
class _Entry:
    actions: np.ndarray   # (H, D) float64
    stamp_ns: int
    dt_ns: float
    arrival_ns: int
    seq: int
    plan_id: int

    def index(self, t_ns: int) -> int:
        return int(np.floor((t_ns - self.stamp_ns) / self.dt_ns + 0.5))

    def end_ns(self) -> float:
        return self.stamp_ns + (len(self.actions) - 0.5) * self.dt_ns


class ChunkExecutor:
    """Buffer of action chunks, queried by time. Not thread-safe: call from one executor/callback group."""

    def __init__(self, config: ExecutorConfig | None = None):
        self.config = config or ExecutorConfig()
        self._chunks: list[_Entry] = []
        self._seq = 0
        self.last_reason: str = "no chunk received yet"

    # ------------------------------------------------------------------ input
    def add_chunk(self, chunk: ActionChunkData, now_ns: int) -> Violation | None:
        """Buffer a chunk. Returns None when accepted, else the reason it was rejected (nothing changes)."""
        cfg = self.config
        if not isinstance(chunk, ActionChunkData):
            return Violation(ViolationKind.WRONG_SHAPE, f"expected ActionChunkData, got {type(chunk).__name__}")
        try:
            a = np.asarray(chunk.actions, dtype=np.float64)
        except (TypeError, ValueError) as e:
            return Violation(ViolationKind.WRONG_SHAPE, f"actions are not numeric: {e}")
        if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != cfg.action_dim:
            return Violation(ViolationKind.WRONG_SHAPE, f"actions: expected (H>0, {cfg.action_dim}), got {a.shape}")
        bad = ~np.all(np.isfinite(a), axis=1)
        if bad.any():
            s = int(np.flatnonzero(bad)[0])
            return Violation(ViolationKind.NAN, f"actions contain NaN or inf (row {s})", s)
        try:
            dt = float(chunk.dt)
        except (TypeError, ValueError):
            dt = float("nan")
        if not (np.isfinite(dt) and dt > 0):
            return Violation(ViolationKind.BAD_TIMING, f"dt must be a positive finite number, got {chunk.dt!r}")
        stamp = int(chunk.stamp_ns)
        if stamp <= 0:
            return Violation(ViolationKind.STALE, "chunk has no stamp (stamp_ns <= 0)")
        age = (int(now_ns) - stamp) * 1e-9
        if age > cfg.max_chunk_age_s:
            return Violation(ViolationKind.STALE, f"chunk is {age:.3f} s old on arrival (max {cfg.max_chunk_age_s} s)")
        if -age > cfg.max_future_s:
            return Violation(ViolationKind.STALE, f"chunk is stamped {-age:.3f} s in the future (max {cfg.max_future_s} s)")
        e = _Entry(a, stamp, dt * 1e9, int(now_ns), self._seq, int(chunk.plan_id))
        if e.end_ns() <= now_ns:
            return Violation(ViolationKind.STALE, f"chunk ends {(now_ns - e.end_ns()) * 1e-9:.3f} s before it arrived")
        self._seq += 1
        self._chunks.append(e)
        self._chunks.sort(key=lambda c: (c.stamp_ns, c.seq))
        del self._chunks[:-cfg.max_chunks]
        return None

    def clear(self) -> None:
        self._chunks.clear()
        self.last_reason = "cleared"

    def drop_after(self, stamp_ns: int) -> int:
        """Drop the chunks stamped after ``stamp_ns`` (stop-gap chunks decoded since an observation whose own
        plan has now arrived); returns how many were dropped."""
        n = len(self._chunks)
        self._chunks = [c for c in self._chunks if c.stamp_ns <= stamp_ns]
        return n - len(self._chunks)

    def horizon_ns(self) -> float:
        """Duration of the newest chunk's rows (H * dt), 0 without chunks."""
        return len(self._chunks[-1].actions) * self._chunks[-1].dt_ns if self._chunks else 0.0

    def covers(self, now_ns: int) -> bool:
        """True when some buffered chunk has a row for ``now_ns``."""
        return any(0 <= c.index(now_ns) < len(c.actions) for c in self._chunks)

    @property
    def num_chunks(self) -> int:
        return len(self._chunks)

    # ------------------------------------------------------------------ output
    def _action_at(self, t_ns: int) -> tuple[np.ndarray | None, str]:
        cfg = self.config
        if not self._chunks:
            return None, "no chunk received yet" if self._seq == 0 else "no chunk buffered"
        newest = self._chunks[-1]
        if (t_ns - newest.stamp_ns) * 1e-9 > cfg.stale_after_s:
            return None, f"newest chunk is {(t_ns - newest.stamp_ns) * 1e-9:.3f} s old (stale_after_s {cfg.stale_after_s})"
        cover = [(c, c.index(t_ns)) for c in self._chunks]
        cover = [(c, i) for c, i in cover if 0 <= i < len(c.actions)]
        if not cover:
            return None, "no chunk covers this time (exhausted or not started)"
        if cfg.mode == "latest" or len(cover) == 1:
            c, i = cover[-1]
            return c.actions[i].copy(), ""
        if cfg.mode == "ensemble":
            w = np.exp(-cfg.ensemble_k * np.arange(len(cover)))
            rows = np.array([c.actions[i] for c, i in cover])
            return (w[:, None] * rows).sum(0) / w.sum(), ""
        # crossfade: newest against the blend of the older ones, recursively from the oldest
        out = cover[0][0].actions[cover[0][1]].copy()
        for c, i in cover[1:]:
            start = max(c.stamp_ns, c.arrival_ns)
            j = int(np.floor((t_ns - start) / c.dt_ns + 0.5))   # steps this chunk has been executing
            wn = min(1.0, (max(j, 0) + 1) / (cfg.crossfade_steps + 1))
            out = wn * c.actions[i] + (1.0 - wn) * out
        return out, ""

    def next_action(self, now_ns: int) -> np.ndarray | None:
        """The (D,) action to execute at ``now_ns``, or None (hold position; ``last_reason`` says why).
        Also drops chunks that ended before ``now_ns``."""
        self._chunks = [c for c in self._chunks if c.end_ns() > now_ns]
        a, why = self._action_at(int(now_ns))
        self.last_reason = why
        return a

    def continuation(self, obs_stamp_ns: int, ready_ns: int) -> tuple[np.ndarray | None, int, int]:
        """Real-time chunking inputs for the chunk planned from an observation taken at ``obs_stamp_ns`` that can
        start running at ``ready_ns`` (both on this executor's clock, e.g. message stamps): the actions the arm
        runs from the observation's time on (None when nothing covers it), the delay (the number of them that run
        before the new chunk can take over: ceil((ready - stamp) / dt), at most all of them) and the stamp to give
        the new chunk.

        The stamp is the start of the running row at ``obs_stamp_ns`` on the running chunk's own time grid (at
        most half a period earlier or later than it), and the actions are that chunk's rows from there: row ``i``
        of the new chunk then runs exactly when row ``i`` of the continued actions would have, at every tick.
        (Stamped at an off-grid ``obs_stamp_ns`` instead, the two grids differ by a fraction of a period and the
        hand-over repeats or skips a row depending on where the ticks fall.)"""
        if not self._chunks:
            return None, 0, int(obs_stamp_ns)
        newest = self._chunks[-1]
        stamp = int(newest.stamp_ns + newest.index(int(obs_stamp_ns)) * newest.dt_ns)
        prev = self.upcoming(stamp)
        if prev is None:
            return None, 0, int(obs_stamp_ns)
        d = int(np.ceil((int(ready_ns) - stamp) / newest.dt_ns - 1e-9))
        return np.asarray(prev.actions, dtype=np.float64), int(np.clip(d, 0, len(prev.actions))), stamp

    def upcoming(self, now_ns: int, horizon: int | None = None) -> ActionChunkData | None:
        """The blended actions for the ticks ``now, now + dt, ...`` (dt of the newest chunk) as one chunk
        stamped ``now_ns``, up to ``horizon`` rows or until nothing covers the time (None if nothing now).
        This is what a controller publishes for the safety filter's whole-chunk check."""
        if not self._chunks:
            self.last_reason = "no chunk received yet" if self._seq == 0 else "no chunk buffered"
            return None
        newest = self._chunks[-1]
        H = horizon or len(newest.actions)
        rows = []
        for k in range(H):
            a, why = self._action_at(int(now_ns + k * newest.dt_ns))
            if a is None:
                if k == 0:
                    self.last_reason = why
                break
            rows.append(a)
        if not rows:
            return None
        return ActionChunkData(np.asarray(rows, dtype=np.float32), dt=newest.dt_ns * 1e-9, plan_id=newest.plan_id,
                               stamp_ns=int(now_ns))
