"""Watchdog of the safety filter (ROS-free): when to hold because an upstream node is silent or has exited.

Two ways an upstream node (perception, planner, controller) can fail, and what the safety filter sees of each:

* **silent** (hung, wedged, its input gone): the newest message of its output is too old. Each input is a *source*
  with a timeout: ``trace`` (the planner's Trace), ``chunk`` (the controller's ActionChunk), ``joint_states`` (the
  arm), ``observation`` (perception's per-observation joint state). Sources in ``require`` hold until they have
  been seen at all; sources in ``watch`` are checked only once seen (a node that never started is not waited for;
  the supervisor reports its exit). The reason names the source and its producer:
  ``no Trace from the planner for 1.204 s (timeout 1.0 s)``.
* **dead**: the supervisor (``semanticvla_ros.bringup`` or the launch file) sees the process exit at once and says
  so (:func:`parse_node_exit` reads its message). :meth:`Watchdog.node_exited` *latches* a hold,
  ``planner exited (signal 9 SIGKILL): holding until it publishes again``, that only a message the node made
  after its exit lifts (:meth:`Watchdog.alive` with the message's header stamp: a Trace for the planner, an
  ActionChunk for the controller, an observation for perception; a message still in flight from the dead process
  is stamped before the exit and lifts nothing). A node that is not restarted keeps the arm held for good.
"""
from __future__ import annotations

import json
import signal
from dataclasses import dataclass

from .checker import Violation, ViolationKind

# source -> (what the status calls its messages, the node that produces them)
SOURCES: dict[str, tuple[str, str]] = {
    "trace": ("Trace", "planner"),
    "chunk": ("ActionChunk", "controller"),
    "joint_states": ("joint_states", "arm"),
    "observation": ("observation", "perception"),
}
_FROM = {"planner": "the planner", "controller": "the controller", "arm": "the arm", "perception": "perception"}
UPSTREAM_NODES = ("perception", "planner", "controller")
FUTURE_TOLERANCE_NS = 1_000_000_000   # a message stamped further ahead of now proves nothing (bad clock / garbage)


@dataclass
class WatchdogConfig:
    """How old the newest message of each input may be before the arm holds position."""

    trace_timeout_s: float = 2.0          # planner (System 2) is slow; a plan older than this is stale
    chunk_timeout_s: float = 0.5          # controller publishes at ~20 Hz
    joint_states_timeout_s: float = 0.2   # robot state must be fresh to check anything
    observation_timeout_s: float = 1.0    # perception publishes at ~10 Hz
    require: tuple[str, ...] = ("trace", "chunk", "joint_states")   # sources that must have been seen
    watch: tuple[str, ...] = ()           # sources checked for staleness only once seen
    upstream: tuple[str, ...] = UPSTREAM_NODES   # nodes whose exit latches a hold

    def timeout(self, source: str) -> float:
        _known(source)
        return float(getattr(self, f"{source}_timeout_s"))


@dataclass
class WatchdogStatus:
    hold: bool
    reasons: list[Violation]

    def summary(self) -> str:
        return "ok" if not self.hold else "hold: " + "; ".join(str(r) for r in self.reasons)


@dataclass(frozen=True)
class NodeExit:
    """One node exit as the supervisor reports it."""

    node: str
    returncode: int | None      # negative: killed by that signal (subprocess / asyncio convention); None: unknown
    stamp_ns: int               # wall-clock time (the ROS clock of every node) when the supervisor saw it

    def describe(self) -> str:
        rc = self.returncode
        if rc is None:
            how = "exit status not known yet"
        elif rc < 0:
            try:
                how = f"signal {-rc} {signal.Signals(-rc).name}"
            except ValueError:
                how = f"signal {-rc}"
        else:
            how = f"code {rc}"
        return f"{self.node} exited ({how})"


def _known(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown watchdog source {source!r}; expected one of {list(SOURCES)}")


def parse_node_exit(text: str, now_ns: int) -> NodeExit:
    """Read the supervisor's JSON ``{"node": str, "returncode": int | null, "stamp_ns": int}`` (``stamp_ns``
    missing: ``now_ns``). ValueError on anything else."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"node exit message is not JSON: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("node"), str) or not d["node"]:
        raise ValueError(f"node exit message needs a non-empty string 'node': {text[:200]!r}")
    rc, stamp = d.get("returncode"), d.get("stamp_ns", now_ns)
    if rc is not None and (isinstance(rc, bool) or not isinstance(rc, int)):
        raise ValueError(f"node exit message: returncode must be an integer or null, got {rc!r}")
    if isinstance(stamp, bool) or not isinstance(stamp, int) or stamp < 0:
        raise ValueError(f"node exit message: stamp_ns must be a non-negative integer, got {stamp!r}")
    return NodeExit(d["node"], rc, stamp)


def watchdog_check(now_ns: int, last_ns: dict[str, int | None], config: WatchdogConfig | None = None,
                   ignore: tuple[str, ...] = (), refused: dict[str, tuple[int, str]] | None = None) -> WatchdogStatus:
    """Pure staleness check: ``last_ns`` maps a source (see :data:`SOURCES`) to the receive time of its newest
    message (None: never). ``ignore``: sources not to check this time. ``refused``: source -> (receive time, reason)
    of its newest message that arrived but was refused (a stale source refused within its timeout is reported as
    refused, not as silent)."""
    cfg = config or WatchdogConfig()
    reasons = []
    for src in dict.fromkeys(tuple(cfg.require) + tuple(cfg.watch)):
        timeout = cfg.timeout(src)        # ValueError for an unknown source
        if src in ignore:
            continue
        label, node = SOURCES[src]
        t = last_ns.get(src)
        if t is None:
            if src in cfg.require:
                reasons.append(Violation(ViolationKind.STALE, f"no {label} received yet (from {_FROM[node]})"))
            continue
        age = (int(now_ns) - int(t)) * 1e-9
        if timeout > 0 and age > timeout:
            r = (refused or {}).get(src)
            if r is not None and int(now_ns) - int(r[0]) <= timeout * 1e9:
                reasons.append(Violation(ViolationKind.STALE, f"no {label} admitted for {age:.3f} s: the {label}s from "
                                                              f"{_FROM[node]} arrive but are refused (the newest: {r[1]})"))
            else:
                reasons.append(Violation(ViolationKind.STALE, f"no {label} from {_FROM[node]} for {age:.3f} s "
                                                              f"(timeout {timeout} s)"))
    return WatchdogStatus(bool(reasons), reasons)


class Watchdog:
    """Remembers when each input last arrived and which upstream nodes are down; says whether to hold and why."""

    def __init__(self, config: WatchdogConfig | None = None):
        self.config = config or WatchdogConfig()
        for src in tuple(self.config.require) + tuple(self.config.watch):
            _known(src)
        self._last: dict[str, int | None] = {s: None for s in SOURCES}
        self._exits: dict[str, NodeExit] = {}      # latched: node -> its exit, until it is seen alive after it
        self._alive_ns: dict[str, int] = {}        # node -> header stamp of its newest message
        self._refused: dict[str, tuple[int, str]] = {}   # source -> (time, reason) of its newest refused message

    def feed(self, source: str, now_ns: int) -> None:
        """A message of ``source`` arrived at ``now_ns`` (the receive time; staleness is measured from it)."""
        _known(source)
        self._last[source] = int(now_ns)
        self._refused.pop(source, None)

    def refused(self, source: str, now_ns: int, reason: str) -> None:
        """A message of ``source`` arrived at ``now_ns`` but was refused (``reason``): it does not count as fresh,
        but while refusals keep coming the source's timeout says so instead of calling the source silent."""
        _known(source)
        self._refused[source] = (int(now_ns), str(reason))

    def last(self, source: str) -> int | None:
        return self._last[source]

    def alive(self, node: str, stamp_ns: int, now_ns: int) -> NodeExit | None:
        """``node`` published a message stamped ``stamp_ns``. Lifts its latched exit when the message was made after
        it (and is not stamped in the future); returns the exit it lifted, else None."""
        stamp_ns = int(stamp_ns)
        if stamp_ns > int(now_ns) + FUTURE_TOLERANCE_NS:
            return None
        self._alive_ns[node] = max(stamp_ns, self._alive_ns.get(node, stamp_ns))
        ex = self._exits.get(node)
        if ex is not None and stamp_ns > ex.stamp_ns:
            return self._exits.pop(node)
        return None

    def node_exited(self, ex: NodeExit) -> Violation | None:
        """The supervisor saw ``ex.node`` exit. For an upstream node: latch a hold and return its reason; None for
        other nodes, or when the node was already seen alive after that exit (a late, replayed report)."""
        if ex.node not in self.config.upstream:
            return None
        if self._alive_ns.get(ex.node, -1) > ex.stamp_ns:
            return None
        self._exits[ex.node] = ex
        return self._exit_violation(ex)

    @staticmethod
    def _exit_violation(ex: NodeExit) -> Violation:
        return Violation(ViolationKind.STALE, f"{ex.describe()}: holding until it publishes again")

    @property
    def exits(self) -> dict[str, NodeExit]:
        """Latched exits (node -> exit)."""
        return dict(self._exits)

    def reset(self) -> None:
        for k in self._last:
            self._last[k] = None
        self._exits.clear()
        self._alive_ns.clear()
        self._refused.clear()

    def check(self, now_ns: int, ignore: tuple[str, ...] = ()) -> WatchdogStatus:
        """Latched exits first (oldest first), then the stale sources (``ignore``: sources not to check)."""
        reasons = [self._exit_violation(ex) for ex in sorted(self._exits.values(), key=lambda e: e.stamp_ns)]
        st = watchdog_check(now_ns, self._last, self.config, ignore, self._refused)
        reasons += st.reasons
        return WatchdogStatus(bool(reasons), reasons)
