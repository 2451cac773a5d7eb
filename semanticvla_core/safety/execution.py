"""What the safety filter sends to the arm, checked as it will be executed (ROS-free; the safety node, the evaluation
harness and the fuzz campaign all run this one executor).

The executor keeps a model of the arm controller's **setpoint**: a joint trajectory controller (ros2_control's JTC
with position-only points, the sim's follower) moves its setpoint linearly from where it is to each point by that
point's time; the Cartesian controller (:mod:`semanticvla_core.cartesian`) moves it to its rate-limited IK solution
every period. Every command is built from that setpoint and re-checked *as sent*
(:meth:`SafetyChecker.verify_command`): joint limits, velocity / acceleration / jerk with no slow-down left, and
collisions + workspace along the whole segment the setpoint sweeps (and the segment from the measured joints, the
arm catching up), at states dense enough that nothing can hide between them (``SafetyConfig.path_resolution_m``).
A command that fails is never sent: the arm brakes instead (within the acceleration limits, the braking path checked
the same way; if even that path is unsafe, an immediate stop at the setpoint).

Modes (safety filter parameter ``execution``):

* ``stepwise``: a chunk is admitted by the whole-chunk check (:meth:`SafetyChecker.check_chunk` from the setpoint),
  then each period one row runs relative to the TCP *measured* then (how ee_delta demonstrations are recorded:
  target = measured TCP + delta), solved by the filter's IK, limited to the joint velocity / acceleration limits
  (:func:`~semanticvla_core.cartesian.limit_joint_step`) and sent as one JointTrajectory point.
* ``cartesian``: as ``stepwise``, but the row goes to the arm's Cartesian controller as an ee_delta. The filter
  predicts the joint setpoint that controller will command by running the controller's own functions
  (clip_ee_delta -> cartesian_ik -> limit_joint_step) on its model of the same arm, and checks that.
* ``trajectory``: the whole admitted chunk, time-scaled to the limits, goes out as one JointTrajectory with
  position-only points (JTC interpolates those linearly: the polyline that was checked).

Rows are consumed by their times (row i applies at ``stamp + i * dt``): each row runs at most once, rows whose time
has passed by more than two periods are skipped, and a tick with no row due brakes a moving setpoint to rest. A row
refused for a real violation ends its chunk; a row whose check ran out of its time budget (TIMEOUT, nothing found) is
not sent, the arm brakes that period, and the chunk goes on with the next row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..actions import ACTION_SPACE_EE_DELTA, apply_ee_delta, clip_ee_delta, matrix_to_rotvec, normalize_rotvec
from ..cartesian import CartesianControllerConfig, cartesian_ik, limit_joint_step
from ..interfaces import ActionChunkData
from .checker import SafetyChecker, SafetyResult, Violation, ViolationKind
from ..actions import GRIPPER_OPEN
from .kinematics import PANDA_REST_Q

EXECUTION_MODES = ("cartesian", "stepwise", "trajectory")
BRAKE_FRACTION = 0.8          # brakes decelerate at 80% of the acceleration limits (margin: see _braking_points)
_SLOW_DOWN_HELPS = (ViolationKind.TABLE_COLLISION, ViolationKind.ENV_COLLISION, ViolationKind.SELF_COLLISION,
                    ViolationKind.WORKSPACE)   # a row refused for these may pass as a harder deceleration
ROW_ACCEL_FRACTION = 0.95     # rows accelerate at up to 95% of the limits: margin for the modelled setpoint velocity
                              # (a Cartesian controller's, or the measured one when the model starts), a few % off


@dataclass
class ArmCommand:
    """One message to the arm. ``kind``: ``joint_points`` (a JointTrajectory: ``positions`` (M, 7) reached at
    ``times`` (M,) seconds after ``stamp_ns``, position-only points), ``ee_delta`` (one Cartesian row ``ee_delta``
    (7,); ``positions[0]`` is the setpoint the controller will command, as checked) or ``hold`` (a joint trajectory
    that brings the setpoint to rest). ``reasons``: why it was clipped or why the arm holds."""

    kind: str
    positions: np.ndarray
    times: np.ndarray
    gripper: float
    stamp_ns: int
    ee_delta: np.ndarray | None = None
    reasons: list[Violation] = field(default_factory=list)
    row: int | None = None            # row index of the admitted chunk (stepwise / cartesian)
    skipped: int = 0                  # rows whose time had passed without running

    @property
    def is_hold(self) -> bool:
        return self.kind == "hold"


class SafetyExecutor:
    """Admit whole chunks, then every control period produce the checked command for now (see the module text)."""

    def __init__(self, checker: SafetyChecker, mode: str = "stepwise", period_s: float = 0.05,
                 cartesian: CartesianControllerConfig | None = None, rest_posture=PANDA_REST_Q,
                 recapture_rad: float = 0.3):
        if mode not in EXECUTION_MODES:
            raise ValueError(f"execution mode must be one of {EXECUTION_MODES}, got {mode!r}")
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.checker, self.mode, self.period = checker, mode, float(period_s)
        self.cartesian = cartesian or CartesianControllerConfig()
        self.rest = np.asarray(rest_posture if rest_posture is not None else PANDA_REST_Q, dtype=np.float64)
        self.recapture = float(recapture_rad)
        self.chunk: ActionChunkData | None = None
        self.last_row_ns: int | None = None
        self._pending: ArmCommand | None = None          # trajectory mode: the admitted chunk, sent at the next tick
        self._pending_after_path = False                  # ... once the setpoint's committed path has come to rest
        self._sp_t: np.ndarray | None = None              # setpoint polyline: times (ns) ...
        self._sp_q: np.ndarray | None = None              # ... and joint positions (K, 7)
        self._old: tuple = (None, None)                   # the polyline the current one replaced
        self._last_now: int | None = None                 # the last valid tick time
        self._stopping = False                            # the committed setpoint path ends at rest by itself
        self._grip: float | None = None                   # the last gripper command (a hold keeps it: no dropped cube)
        self._tail: tuple[int, np.ndarray] | None = None  # (time, braking points) verified with the last row command
        self._dq_meas: np.ndarray | None = None           # the last usable measured joint velocity
        self._sp_measured = True                          # the last setpoint() came from the measurement

    # ------------------------------------------------------------------ the controller's setpoint
    def reset(self) -> None:
        """Forget everything (a new episode / a new clock / the arm moved by something else)."""
        self.chunk, self.last_row_ns, self._pending, self._sp_t, self._sp_q = None, None, None, None, None
        self._old = (None, None)
        self._last_now = None
        self._stopping = False
        self._grip = None
        self._tail = None
        self._dq_meas = None

    def clear(self) -> None:
        """Stop the running chunk (a chunk admitted later starts afresh); the setpoint model stays."""
        self.chunk, self._pending = None, None

    def setpoint(self, now_ns: int, q_measured) -> tuple[np.ndarray, np.ndarray]:
        """(position, velocity) of the controller's setpoint at ``now_ns`` by the model, the velocity as the controller
        samples it: over the last control period (the same number the sim's controller and a 20 Hz observer see). With
        no model yet, or one that disagrees with the arm by more than ``recapture_rad``: the measured joints moving
        at the last measured joint velocity (a filter started, or taking over, while the arm moves must brake it
        from its real speed, not from rest)."""
        q_meas = np.asarray(q_measured, dtype=np.float64).reshape(7)
        self._sp_measured = True
        if self._sp_t is None:
            return q_meas.copy(), self._measured_velocity()
        q = self._q_at(now_ns)
        if np.max(np.abs(q - q_meas)) > self.recapture:
            return q_meas.copy(), self._measured_velocity()
        self._sp_measured = False
        P_ns = int(round(self.period * 1e9))
        return q, (q - self._q_at(now_ns - P_ns)) / self.period

    def _measured_velocity(self) -> np.ndarray:
        dq = self._dq_meas
        return np.zeros(7) if dq is None else np.clip(dq, -self.checker.kin.velocity_limits,
                                                      self.checker.kin.velocity_limits)

    def _note_velocity(self, dq_current) -> None:
        """Remember the last usable measured joint velocity (7 finite numbers; anything else: unknown)."""
        try:
            dq = np.asarray(dq_current, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return
        if dq.shape == (7,) and np.all(np.isfinite(dq)):
            self._dq_meas = dq

    def _q_at(self, t_ns: int) -> np.ndarray:
        """The modelled setpoint at time t: the current polyline, before its start the one it replaced (at rest at its
        first point when there was none), after its end its last point."""
        for n, (T, Q) in enumerate(((self._sp_t, self._sp_q), self._old)):
            if T is None:
                continue
            if t_ns >= T[0] or n == 1:
                if t_ns >= T[-1]:
                    return Q[-1].copy()
                if t_ns <= T[0]:
                    return Q[0].copy()
                i = int(np.searchsorted(T, t_ns, side="right"))
                a = (t_ns - T[i - 1]) / (T[i] - T[i - 1])
                return Q[i - 1] + a * (Q[i] - Q[i - 1])
        return self._sp_q[0].copy()

    def _commit(self, now_ns: int, q0: np.ndarray, positions: np.ndarray, times: np.ndarray) -> None:
        self._old = (self._sp_t, self._sp_q)
        self._sp_t = np.r_[now_ns, now_ns + np.round(np.asarray(times) * 1e9)].astype(np.int64)
        self._sp_q = np.vstack([q0[None], positions])

    # ------------------------------------------------------------------ admission
    def admit(self, chunk: ActionChunkData, q_current, gripper_current: float, now_ns: int,
              dq_current=None) -> SafetyResult:
        """Whole-chunk check from the setpoint now; an accepted chunk replaces the running one, a rejected one also
        stops it (the newest plan is unsafe from here: the next tick brakes; not for a check out of time, see
        :meth:`keeps_running`). Never raises."""
        try:
            return self._admit(chunk, q_current, gripper_current, now_ns, dq_current)
        except Exception as e:  # noqa: BLE001 - bad arguments: a reason, never an exception
            self.chunk, self._pending = None, None
            return self.checker.hold(None, GRIPPER_OPEN, [Violation(ViolationKind.BAD_INPUT,
                                                                    f"admit: {type(e).__name__}: {e}")])

    def _admit(self, chunk, q_current, gripper_current, now_ns, dq_current) -> SafetyResult:
        start = self.admission_start(now_ns, q_current, dq_current)
        return self.accept(chunk, self.check_admission(chunk, q_current, gripper_current, now_ns, dq_current, start),
                           now_ns)

    # admission in three steps, for a caller that checks in another thread than the one running the rows (the safety
    # node): admission_start and accept are quick and touch the executor; check_admission is the whole-chunk check,
    # touches nothing of the executor and may run while ticks go on (with its own checker: a checker is not
    # thread-safe). The rows admitted are verified again as they are sent, from where the setpoint is then.
    def admission_start(self, now_ns, q_current, dq_current=None) -> tuple:
        """(start_q, start_v, settle) of a chunk admitted now: the setpoint by the model and, in trajectory mode, the
        path it is committed to (see SafetyChecker.check_chunk). None values when the state is unusable."""
        if dq_current is not None:
            self._note_velocity(dq_current)
        try:
            sq, sv = self.setpoint(int(now_ns), q_current)
        except Exception:  # noqa: BLE001 - bad state: the checker says why
            return None, None, None
        return sq, sv, (self._committed_path(int(now_ns)) if self.mode == "trajectory" else None)

    def check_admission(self, chunk, q_current, gripper_current, now_ns, dq_current, start: tuple,
                        checker: SafetyChecker | None = None) -> SafetyResult:
        """The whole-chunk check from ``start`` (admission_start). stepwise / cartesian: every row's command is
        rate-limited and verified as sent, so the admission checks the path, not the timing (a chunk that starts
        faster than the arm can accelerate just runs a little later). Never raises."""
        sq, sv, settle = start
        traj = self.mode == "trajectory"
        return (checker or self.checker).check_chunk(chunk, q_current, gripper_current, now_ns=now_ns,
                                                     dq_current=dq_current, start_q=sq, start_v=sv, dynamics=traj,
                                                     end_at_rest=traj, settle=settle)

    def keeps_running(self, res: SafetyResult) -> bool:
        """A rejection that leaves the running chunk running (stepwise / cartesian): the check ran out of time
        (TIMEOUT) and found nothing wrong. The new plan is unknown, not unsafe, and every row of the running one is
        still verified as it is sent (a loaded machine then keeps executing its last admitted plan instead of
        stopping at every late check). Trajectory mode: no (the running trajectory went out whole; a rejection holds,
        as for any other reason)."""
        kinds = res.rejecting_kinds
        return (self.mode != "trajectory" and res.is_hold and bool(kinds)
                and all(k is ViolationKind.TIMEOUT for k in kinds))

    def row_late(self, cmd: ArmCommand | None) -> bool:
        """``cmd`` (from :meth:`tick`) is the brake for a row that was not sent only because its check ran out of
        time: its chunk goes on (the caller sends the brake and must not clear the chunk)."""
        return cmd is not None and cmd.is_hold and cmd.row is not None and self.chunk is not None

    def accept(self, chunk, res: SafetyResult, now_ns) -> SafetyResult:
        """Install the verdict of check_admission: an accepted chunk replaces the running one, a rejected one also
        stops it (the next tick brakes), unless it :meth:`keeps_running`."""
        if res.is_hold and self.keeps_running(res):
            return res
        self._pending = None
        if res.is_hold:
            self.chunk = None
            return res
        acts = np.array(chunk.actions, dtype=np.float64)
        if res.checked_positions is not None and 0 < len(res.checked_positions) < len(acts):
            acts = acts[:len(res.checked_positions)]      # the rows admitted (the check cut the chunk short)
        self.chunk = replace(chunk, actions=acts)
        if self.mode == "trajectory":
            self.chunk = None
            k = int(res.settle_points)
            # after the committed path: its last point held one period, then the chunk, timed from the end of that
            # path (which is rebuilt as it is at the send)
            k0 = k - 1 if k >= 2 else 0
            t_end = float(res.times_from_start[k - 2]) if k >= 2 else 0.0
            self._pending = ArmCommand("joint_points", res.positions[k0:].copy(), res.times_from_start[k0:] - t_end,
                                       float(res.gripper[k]), int(now_ns), reasons=list(res.reasons))
            self._pending_after_path = bool(k)
        return res

    def _committed_path(self, now_ns: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(points (K, 7), times (K,) s from now) of the modelled setpoint's path still ahead, which ends at rest
        (trajectory mode: every command does); None when the setpoint is not moving along a model."""
        if self._sp_measured or self._sp_t is None or self._sp_t[-1] <= now_ns:
            return None
        later = self._sp_t > now_ns
        return self._sp_q[later].copy(), (self._sp_t[later] - now_ns) * 1e-9

    # ------------------------------------------------------------------ every period
    def row_index(self, now_ns: int) -> tuple[int | None, int]:
        """(row to run now or None, rows skipped) of the admitted chunk (see the module text)."""
        c = self.chunk
        if c is None:
            return None, 0
        dt_ns = float(c.dt) * 1e9
        i_now = int(math.floor((now_ns - c.stamp_ns) / dt_ns + 0.5))
        i_next = 0 if self.last_row_ns is None else int(math.floor((self.last_row_ns - c.stamp_ns) / dt_ns + 0.5)) + 1
        i_next = max(i_next, 0)
        skipped = 0
        if i_next < i_now - 2:            # late by more than two periods: skip to the row for now
            skipped, i_next = i_now - i_next, i_now
        if i_next > i_now or i_next >= c.horizon:
            return None, 0
        return i_next, skipped

    def tick(self, q_current, gripper_current: float, now_ns: int, dq_current=None) -> ArmCommand | None:
        """The command for this period (None: nothing to send, the setpoint is at rest where it should be). Never
        raises: with an unusable state or clock the chunk stops and the setpoint stops where it is."""
        args = self._valid(q_current, gripper_current, now_ns)
        if isinstance(args, str):
            return self._stop_bad_input("tick: " + args)
        q, g, now_ns = args
        self._last_now = now_ns
        if dq_current is not None:
            self._note_velocity(dq_current)
        try:
            return self._tick(q, g, now_ns)
        except Exception as e:  # noqa: BLE001
            return self._stop_bad_input(f"tick: {type(e).__name__}: {e}")

    @staticmethod
    def _valid(q_current, gripper_current, now_ns):
        """(q (7,), gripper, now_ns) or a reason string."""
        if isinstance(q_current, (str, bytes)) or q_current is None:
            return f"joint state {q_current!r} is not 7 numbers"
        try:
            q = np.asarray(q_current, dtype=np.float64).reshape(-1)
            g = float(gripper_current)
        except (TypeError, ValueError) as e:
            return f"bad joint state or gripper: {e}"
        if q.shape != (7,) or not np.all(np.isfinite(q)) or not np.isfinite(g):
            return "joint state must be 7 finite numbers and the gripper finite"
        if isinstance(now_ns, bool) or not isinstance(now_ns, (int, np.integer)):
            try:
                f = float(now_ns)
            except (TypeError, ValueError):
                return f"now_ns {now_ns!r} is not a time"
            if not np.isfinite(f):
                return f"now_ns {now_ns!r} is not a time"
            now_ns = int(f)
        return q, g, int(now_ns)

    def _stop_bad_input(self, why: str) -> ArmCommand | None:
        """No usable state or clock: stop the chunk and brake the modelled setpoint from where it will be one period
        after the last valid tick (None when there is no model: nothing can be commanded)."""
        self.chunk, self._pending = None, None
        if self._sp_t is None or self._last_now is None:
            return None
        t = int(self._last_now + round(self.period * 1e9))
        q = self._q_at(t)
        sv = (q - self._q_at(t - int(round(self.period * 1e9)))) / self.period
        pts = self._braking_points(q, sv)
        P, times = (np.array(pts), self.period * np.arange(1, len(pts) + 1)) if len(pts) else \
            (q[None], np.array([self.period]))
        self._commit(t, q, P, times)
        self._stopping = True
        self._last_now = t                 # the next unusable tick estimates one period later again
        return ArmCommand("hold", P, times, float(self._grip if self._grip is not None else GRIPPER_OPEN), t,
                          reasons=[Violation(ViolationKind.BAD_INPUT, why)])

    def _tick(self, q: np.ndarray, g: float, now_ns: int) -> ArmCommand | None:
        sq, sv = self.setpoint(now_ns, q)
        if self.mode == "trajectory":
            cmd, self._pending = self._pending, None
            if cmd is None:
                return None
            cmd.stamp_ns = now_ns                 # starts now, from the setpoint now (re-checked from there)
            if self._pending_after_path:          # ... after the rest of the committed path, as it is from now
                ahead = self._committed_path(now_ns)
                if ahead is not None:
                    cmd.positions = np.vstack([ahead[0], cmd.positions])
                    cmd.times = np.r_[ahead[1], ahead[1][-1] + cmd.times]
                self._pending_after_path = False
            bad = self.checker.verify_command(q, g, sq, sv, cmd.positions, cmd.times, cmd.gripper, period=self.period,
                                              end_at_rest=True)
            if bad:
                return self.brake(q, g, now_ns, bad)
            self._commit(now_ns, sq, cmd.positions, cmd.times)
            self._stopping = False                # (it ends at rest, but a hold must brake it now)
            self._grip = cmd.gripper
            return cmd
        i, skipped = self.row_index(now_ns)
        if i is None:          # no row due: a setpoint left moving by the last row brakes (one already stopping goes on)
            return None if (self._stopping or not np.any(sv)) else self.brake(q, g, now_ns, [], kind="joint_points")
        c = self.chunk
        self.last_row_ns = int(c.stamp_ns + round(i * float(c.dt) * 1e9))
        try:
            cmd = self._row_command(c, i, q, g, sq, sv, now_ns)
        except Exception as e:  # noqa: BLE001 - never raise out of the executor
            cmd = [Violation(ViolationKind.BAD_INPUT, f"row {i}: {type(e).__name__}: {e}", i)]
        if isinstance(cmd, list):          # refused: stop the chunk and brake
            # ... unless the row's check only ran out of time and found nothing wrong: the row is not sent and the
            # arm brakes (along the brake verified with the last row), but the chunk stays admitted and the next
            # period's row is checked afresh from the braking setpoint (a loaded machine loses a period, not the plan)
            keep = c if cmd and all(v.kind is ViolationKind.TIMEOUT for v in cmd) else None
            out = self.brake(q, g, now_ns, cmd)           # (a hold: stops the chunk)
            self.chunk = keep
            out.row, out.skipped = i, skipped
            return out
        cmd.row, cmd.skipped = i, skipped
        return cmd

    def _row_command(self, c: ActionChunkData, i: int, q: np.ndarray, g: float, sq: np.ndarray, sv: np.ndarray,
                     now_ns: int) -> ArmCommand | list[Violation]:
        row_a = np.asarray(c.actions[i], dtype=np.float64)
        cart = self.mode == "cartesian" and c.action_space == ACTION_SPACE_EE_DELTA
        if c.action_space == ACTION_SPACE_EE_DELTA:
            cc = self.cartesian
            row_a = clip_ee_delta(row_a, cc.max_delta_pos, cc.max_delta_rot)   # what the controller executes
        row = ActionChunkData(row_a[None], c.dt, c.action_space, c.plan_id, list(c.joint_names), now_ns, c.frame_id)
        # the row's target (IK, table and obstacle tops, joint margins, workspace); its path is checked below on the
        # command actually sent (verify_command), which is what the setpoint sweeps
        res = self.checker.check_chunk(row, q, g, now_ns=now_ns, start_q=sq, start_v=sv, dynamics=False, path=False)
        if res.is_hold:
            return [v for v in res.reasons if v.rejecting] or res.reasons
        grip = float(res.gripper[0])
        kin = self.checker.kin
        # look ahead: never faster than the setpoint can brake to rest by the chunk's last row (no overshoot when the
        # chunk ends without a successor)
        rows_left = int(c.horizon) - 1 - i
        vmax = np.minimum(kin.velocity_limits, BRAKE_FRACTION * kin.accel_limits * self.period * (rows_left + 1))
        # a setpoint taken from the measurement (the filter's first command, or a recapture) has the measured velocity,
        # which differs from the controller's own by its tracking error: keep that first step's acceleration margin
        amax = kin.accel_limits * (BRAKE_FRACTION if self._sp_measured else ROW_ACCEL_FRACTION)
        ee = None
        if cart:
            p, R = kin.fk(q)
            R_t = apply_ee_delta(p, R, row_a)[1]
            ee = np.r_[np.asarray(res.tcp_targets[0], dtype=np.float64) - p, normalize_rotvec(row_a[3:6]), grip]
            q_cmd = self._cartesian_setpoint(q, sq, sv, ee)               # what the controller will command
            q_want = limit_joint_step(sq, sv, q_cmd, self.period, vmax, amax)
            if np.max(np.abs(q_want - q_cmd)) > 1e-9:
                # the look-ahead binds: ask the controller for the pose of the slower setpoint instead, and predict
                # (and check) what it will command for that
                p_w, R_w = kin.fk(q_want)
                ee = np.r_[p_w - p, matrix_to_rotvec(R_w @ R.T), grip]
                q_cmd = self._cartesian_setpoint(q, sq, sv, ee)
            q_in, _ = self.checker.clip_joints(q_cmd)
            if q_in is not None:
                # the controller's own IK (which stops at the URDF limits, not at the margin) would take a joint past
                # the margin: ask it for the pose of the setpoint held just inside instead (the checker's clip, one
                # place), and predict and check what it commands for that
                p_w, R_w = kin.fk(q_in)
                ee = np.r_[p_w - p, matrix_to_rotvec(R_w @ R.T), grip]
                q_cmd = self._cartesian_setpoint(q, sq, sv, ee)
        else:
            q_cmd = limit_joint_step(sq, sv, res.positions[0], self.period, vmax, amax)
        # the command is checked together with the brake that would follow it: if the next row is refused (or none
        # comes) the setpoint can always stop safely within the acceleration limits from where this row leaves it
        tail, bad = self._verify_row(q, g, sq, sv, q_cmd, grip)
        if bad and np.any(sv) and all(v.kind in _SLOW_DOWN_HELPS for v in bad):
            # the row is fine but the stop after it would come too close to something (an arm coming down fast near
            # the table): decelerate now instead, as hard as a brake does, and go on with the chunk from there
            q_slow = self._braking_points(sq, sv)[0]
            if cart:
                p_w, R_w = kin.fk(q_slow)
                ee = np.r_[p_w - p, matrix_to_rotvec(R_w @ R.T), grip]
                q_slow = self._cartesian_setpoint(q, sq, sv, ee)
            tail, bad2 = self._verify_row(q, g, sq, sv, q_slow, grip)
            if not bad2:
                q_cmd, bad = q_slow, []
        if bad:
            return bad
        self._commit(now_ns, sq, q_cmd[None], np.array([self.period]))
        self._stopping = False
        self._tail = (int(self._sp_t[-1]), tail)          # verified with this command: how it stops from there
        self._grip = grip
        return ArmCommand("ee_delta" if cart else "joint_points", q_cmd[None], np.array([self.period]), grip, now_ns,
                          ee_delta=ee, reasons=list(res.reasons))

    def _verify_row(self, q, g, sq, sv, q_cmd, grip) -> tuple[np.ndarray, list[Violation]]:
        """(braking tail, violations) of a row command ``q_cmd`` sent from setpoint (sq, sv), checked with the brake
        that follows it."""
        tail = self._braking_points(q_cmd, (q_cmd - sq) / self.period)
        P = np.vstack([q_cmd[None], tail]) if len(tail) else q_cmd[None]
        return tail, self.checker.verify_command(q, g, sq, sv, P, self.period * np.arange(1, len(P) + 1), grip,
                                                 period=self.period, end_at_rest=True, stepped=True)

    def _cartesian_setpoint(self, q: np.ndarray, sq: np.ndarray, sv: np.ndarray, ee: np.ndarray) -> np.ndarray:
        """The joint setpoint the Cartesian controller commands for row ``ee`` from the measured joints ``q``: the
        controller's own steps (clip_ee_delta, target from the measured TCP, cartesian_ik, limit_joint_step from its
        setpoint) on the filter's model of the arm."""
        kin, cc = self.checker.kin, self.cartesian
        a = clip_ee_delta(ee, cc.max_delta_pos, cc.max_delta_rot)
        p, R = kin.fk(q)
        p_t, R_t, _ = apply_ee_delta(p, R, a)
        p_t[2] = max(p_t[2], 0.0)                    # (the sim's controller never asks its IK below the table top)
        q_t = cartesian_ik(lambda x: (*kin.fk(x), kin.jacobian(x)), q, p_t, R_t, self.rest, kin.lower, kin.upper, cc)
        if not cc.limit_rate:
            return q_t
        return limit_joint_step(sq, sv, q_t, self.period, kin.velocity_limits, kin.accel_limits)

    def _braking_points(self, q0: np.ndarray, v0: np.ndarray) -> np.ndarray:
        """(n, 7) setpoints one period apart that bring (q0, v0) to rest, each joint decelerating at BRAKE_FRACTION of
        its limit (the rest is margin for a Cartesian controller whose setpoint the model predicts to ~1e-3 rad)."""
        amax = self.checker.kin.accel_limits * self.checker.config.accel_fraction * BRAKE_FRACTION
        T = self.period
        pts, v, p = [], np.asarray(v0, dtype=np.float64).copy(), np.asarray(q0, dtype=np.float64).copy()
        while np.any(np.abs(v) > 1e-9) and len(pts) < 200:
            v = v - np.clip(v, -amax * T, amax * T)
            p = p + v * T
            pts.append(p.copy())
        return np.array(pts).reshape(-1, 7)

    # ------------------------------------------------------------------ holding
    def brake(self, q_current, gripper_current: float, now_ns: int, reasons: list[Violation],
              kind: str = "hold", dq_current=None) -> ArmCommand | None:
        """Bring the setpoint to rest: decelerate each joint at its acceleration limit (checked like any command);
        if that path is unsafe, stop at the setpoint at once. Also what the safety node sends for every hold. Never
        raises (an unusable state: the setpoint stops where the model has it; None without a model)."""
        args = self._valid(q_current, gripper_current, now_ns)
        if isinstance(args, str):
            return self._stop_bad_input("brake: " + args)
        q, gripper_current, now_ns = args
        self._last_now = now_ns
        if dq_current is not None:
            self._note_velocity(dq_current)
        self.chunk = None if kind == "hold" else self.chunk
        reasons = list(reasons)
        if self._grip is not None:
            gripper_current = self._grip           # keep the grip that was commanded (a held object stays held)
        if self._stopping and self._sp_t is not None and np.max(np.abs(self._q_at(now_ns) - q)) <= self.recapture:
            # already stopping along a checked path: the rest of that same path again (at rest: its last point)
            later = self._sp_t > now_ns
            if np.any(later):
                P, times = self._sp_q[later], (self._sp_t[later] - now_ns) * 1e-9
            else:
                P, times = self._sp_q[-1][None], np.array([max(self.checker.config.hold_time_s, self.period)])
            return ArmCommand(kind, P.copy(), times, float(gripper_current), now_ns, reasons=reasons)
        T = self.period
        if (self._tail is not None and self._sp_t is not None and int(self._sp_t[0]) <= now_ns < self._tail[0]
                and self._tail[0] == int(self._sp_t[-1])
                and np.max(np.abs(self._q_at(now_ns) - q)) <= self.recapture):
            # inside the last row's period: that row finishes, then the brake verified with it (all checked already)
            t_end, tail = self._tail
            P = np.vstack([self._sp_q[-1][None], tail]) if len(tail) else self._sp_q[-1][None]
            times = (t_end - now_ns) * 1e-9 + T * np.arange(len(P))
            self._commit(now_ns, self._q_at(now_ns), P, times)
            self._stopping = True
            self._tail = (int(self._sp_t[-1]), np.zeros((0, 7)))
            self.chunk = None if kind == "hold" else self.chunk
            return ArmCommand(kind, P, times, float(gripper_current), now_ns, reasons=reasons)
        sq, sv = self.setpoint(now_ns, q)
        pts = list(self._braking_points(sq, sv))
        verified = self._tail is not None and abs(now_ns - self._tail[0]) < 1000 and len(pts) == len(self._tail[1]) \
            and (not pts or np.allclose(np.array(pts), self._tail[1], atol=1e-9))
        if not pts:
            P, times = sq[None], np.array([max(self.checker.config.hold_time_s, T)])
        else:
            P, times = np.array(pts), T * np.arange(1, len(pts) + 1)
            # the brake at the end of a row command is the one verified with it; any other is checked now, and only
            # a collision on it (not a virtual limit, not the time budget) makes the arm stop at the setpoint at once
            bad = [] if verified else [
                v for v in self.checker.verify_command(q, gripper_current, sq, sv, P, times, gripper_current, period=T,
                                                       end_at_rest=True)
                if v.kind in (ViolationKind.SELF_COLLISION, ViolationKind.TABLE_COLLISION, ViolationKind.ENV_COLLISION)]
            if bad:
                reasons.append(Violation(ViolationKind.ACCEL_LIMIT, "braking path not safe (" + "; ".join(map(str, bad[:2]))
                                         + "): immediate stop at the setpoint", rejecting=False))
                P, times = sq[None], np.array([T])
        self._commit(now_ns, sq, P, times)
        self._stopping = True
        return ArmCommand(kind, P, times, float(gripper_current), now_ns, reasons=reasons)
