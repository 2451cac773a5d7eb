"""Watchdog of the safety filter: how old the newest message of each input may be before the arm holds (ROS-free)."""
from __future__ import annotations

from dataclasses import dataclass

from .checker import Violation, ViolationKind


@dataclass
class WatchdogConfig:
    """How old the newest message of each input may be before the arm holds position."""

    trace_timeout_s: float = 2.0          # planner (System 2) is slow; a plan older than this is stale
    chunk_timeout_s: float = 0.5          # controller publishes at ~20 Hz
    joint_states_timeout_s: float = 0.2   # robot state must be fresh to check anything
    require: tuple[str, ...] = ("trace", "chunk", "joint_states")   # sources that must have been seen


@dataclass
class WatchdogStatus:
    hold: bool
    reasons: list[Violation]

    def summary(self) -> str:
        return "ok" if not self.hold else "hold: " + "; ".join(str(r) for r in self.reasons)


_SOURCE_LABEL = {"trace": "Trace", "chunk": "ActionChunk", "joint_states": "joint_states"}


def watchdog_check(now_ns: int, last_ns: dict[str, int | None], config: WatchdogConfig | None = None) -> WatchdogStatus:
    """Pure check: ``last_ns`` maps 'trace' / 'chunk' / 'joint_states' to the receive time of the newest message."""
    cfg = config or WatchdogConfig()
    timeouts = {"trace": cfg.trace_timeout_s, "chunk": cfg.chunk_timeout_s, "joint_states": cfg.joint_states_timeout_s}
    reasons = []
    for src in cfg.require:
        if src not in timeouts:
            raise ValueError(f"unknown watchdog source {src!r}; expected one of {list(timeouts)}")
        t = last_ns.get(src)
        label = _SOURCE_LABEL[src]
        if t is None:
            reasons.append(Violation(ViolationKind.STALE, f"no {label} received yet"))
            continue
        age = (int(now_ns) - int(t)) * 1e-9
        if age > timeouts[src]:
            reasons.append(Violation(ViolationKind.STALE, f"no {label} for {age:.3f} s (timeout {timeouts[src]} s)"))
    return WatchdogStatus(bool(reasons), reasons)


class Watchdog:
    """Remembers when each input last arrived and says whether to hold (and why)."""

    def __init__(self, config: WatchdogConfig | None = None):
        self.config = config or WatchdogConfig()
        self._last: dict[str, int | None] = {"trace": None, "chunk": None, "joint_states": None}

    def feed(self, source: str, now_ns: int) -> None:
        if source not in self._last:
            raise ValueError(f"unknown watchdog source {source!r}; expected one of {list(self._last)}")
        self._last[source] = int(now_ns)

    def last(self, source: str) -> int | None:
        return self._last[source]

    def reset(self) -> None:
        for k in self._last:
            self._last[k] = None

    def check(self, now_ns: int) -> WatchdogStatus:
        return watchdog_check(now_ns, self._last, self.config)


