"""Row-by-row execution of admitted chunks: each ee_delta row relative to the TCP *measured* when it runs.

Two ways to turn a checked chunk into arm commands (safety filter parameter ``execution``):

* ``trajectory``: the whole chunk, integrated open loop from the joints at its arrival, goes out as one
  JointTrajectory (what a joint trajectory controller wants; the arm tracks the integrated path closely).
* ``stepwise`` (:class:`StepwiseExecutor`): the chunk is *admitted* by the same whole-chunk check, then every
  control period one row runs, added to the TCP pose measured at that moment, re-checked as a one-row chunk from
  the measured joints and sent as a single trajectory point (the filter's own IK). This is the convention ee_delta
  demonstrations are recorded with (``sim/env.py`` ``step()``: target = measured TCP + delta; robosuite's OSC
  controller likewise): an arm that lags its targets moves less than the open-loop integral, and a policy trained
  on such data expects exactly that. Measured in the simulator: the open-loop path runs about 1 cm per chunk
  ahead of the stepwise one.
* ``cartesian``: as ``stepwise``, but the checked row goes to the arm's Cartesian controller as an ee_delta (the
  position after any clipping, relative to the measured TCP: :meth:`StepwiseExecutor.cartesian_command`), so the
  controller that recorded the demonstrations also executes them (the sim node has one; on a real arm, a Cartesian
  impedance/pose controller bridge). The check used the filter's IK; the controller may resolve the elbow slightly
  differently (the same TCP pose).

Harness (``training/evaluate.py --safety MODE``), 50 direct episodes of the session-7 demo checkpoint: no filter 78%,
cartesian 76%, stepwise 64%, trajectory 8% (BENCHMARKS.md, session 7).

Every command is still checked before it is sent (the one-row check), and a chunk the whole-chunk check
rejects is never started. Rows are consumed by their times (row i applies at ``stamp + i * dt``): each row runs at
most once, rows whose time has passed by more than one period are skipped, and a tick with no row for now
sends nothing (the arm keeps its last target; the watchdog holds it when chunks stop coming).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..interfaces import ActionChunkData
from .checker import SafetyChecker, SafetyResult

EXECUTION_MODES = ("cartesian", "stepwise", "trajectory")


@dataclass
class StepwiseRow:
    """What one tick runs: the checked one-row result (a hold when the row was refused) and which row it was."""

    result: SafetyResult
    index: int            # row index in the admitted chunk
    skipped: int          # rows whose time had passed without running (0 normally)


class StepwiseExecutor:
    """Admit whole chunks, then run one row per tick relative to the measured state (see the module text)."""

    def __init__(self, checker: SafetyChecker):
        self.checker = checker
        self.chunk: ActionChunkData | None = None
        self.last_row_ns: int | None = None       # time of the row that ran last (any chunk)

    def admit(self, chunk: ActionChunkData, q_current, gripper_current: float, now_ns: int,
              dq_current=None) -> SafetyResult:
        """Whole-chunk check from the current state; an accepted chunk replaces the running one, a rejected one
        also stops it (the newest plan is unsafe from here: hold)."""
        res = self.checker.check_chunk(chunk, q_current, gripper_current, now_ns=now_ns, dq_current=dq_current)
        self.chunk = None if res.is_hold else replace(chunk, actions=np.array(chunk.actions, dtype=np.float64))
        return res

    def clear(self) -> None:
        """Stop the running chunk (a chunk admitted later starts afresh)."""
        self.chunk = None

    def reset(self) -> None:
        """Forget everything, also which row ran last (a new episode / a new clock)."""
        self.chunk, self.last_row_ns = None, None

    def row_index(self, now_ns: int) -> tuple[int | None, int]:
        """(row to run now or None, rows skipped): the first row after the last one that ran, unless its time has
        passed by more than a period (then the row for now); None when that row is still more than half a period
        ahead or the chunk is used up."""
        c = self.chunk
        if c is None:
            return None, 0
        dt_ns = float(c.dt) * 1e9
        i_now = int(math.floor((now_ns - c.stamp_ns) / dt_ns + 0.5))
        i_next = 0 if self.last_row_ns is None else int(math.floor((self.last_row_ns - c.stamp_ns) / dt_ns + 0.5)) + 1
        i_next = max(i_next, 0)
        skipped = 0
        if i_next < i_now - 1:
            skipped, i_next = i_now - i_next, i_now
        if i_next > i_now or i_next >= c.horizon:
            return None, 0
        return i_next, skipped

    def step(self, q_current, gripper_current: float, now_ns: int, dq_current=None) -> StepwiseRow | None:
        """Check and return the row for now (None: nothing to run this tick). A refused row stops the chunk."""
        i, skipped = self.row_index(now_ns)
        if i is None:
            return None
        c = self.chunk
        row = ActionChunkData(c.actions[i:i + 1], c.dt, c.action_space, c.plan_id, list(c.joint_names), now_ns,
                              c.frame_id)
        res = self.checker.check_chunk(row, q_current, gripper_current, now_ns=now_ns, dq_current=dq_current)
        self.last_row_ns = int(c.stamp_ns + round(i * float(c.dt) * 1e9))
        if res.is_hold:
            self.chunk = None
        return StepwiseRow(res, i, skipped)

    def cartesian_command(self, row: StepwiseRow, q_current) -> np.ndarray:
        """The checked row as an ee_delta (7,) from the TCP of ``q_current`` (the joints it was checked from): the
        checked (clipped) position minus the TCP, the row's rotation, the checked gripper command. Unclipped rows
        come back unchanged."""
        if self.chunk is None or row.result.tcp_targets is None:
            raise ValueError("cartesian_command needs an accepted ee_delta row")
        a = np.array(self.chunk.actions[row.index], dtype=np.float64)
        a[:3] = row.result.tcp_targets[0] - self.checker.kin.fk(np.asarray(q_current, dtype=np.float64))[0]
        a[6] = float(row.result.gripper[0])
        return a
