"""controller (System 1): flow-matching decoder on the latest Trace (+ the joint state of its observation, or the
fresh one: ``state_source``) -> ActionChunk at the control rate; chunks are blended by the core's ChunkExecutor,
aligned by their stamps.

``loop: rtc`` (the default) never stops for the planner: each new Trace is decoded with the fresh joint state (the
Trace's images are older by the planning time, measured from its stamp), stamped on the running chunk's time grid,
by real-time chunking (Black et al. 2025): the rows of the running chunk from now on are the prefix and the delay (rows that run before the new
chunk can take over) is ceil((expected decode time + two ticks) / dt), from the measured decode times; the
hand-over is continuous. ``loop: synchronous`` runs each chunk to
its end, then holds still until a plan of a later observation arrives (stop-and-go); ``loop: asynchronous`` keeps
moving without real-time chunking (the harness's ``naive`` loop, for comparison). The evaluation harness runs the
same loops with the same executor (semanticvla_core/sim/evaluation.py run_episode).

Subscribes  /semanticvla/trace (Trace), /joint_states (sensor_msgs/JointState),
            /semanticvla/observation/joint_states (the joint state of each observation, with its stamp)
Publishes   /semanticvla/action_chunk (ActionChunk): every tick, the blended actions from now on, stamped now
Holds (publishes nothing; the safety filter's watchdog holds the arm) when the Trace or the state is stale,
or a Trace is malformed; the reason is logged. With ``refill_on_gap``, a gap between the newest chunk's last row
and the next Trace's chunk is filled by decoding the last decoded Trace again with the fresh state (stamped now).
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState

from semanticvla_core.control import ChunkExecutor, ExecutorConfig
from semanticvla_core.robot_state import ARM_JOINTS, FINGER_JOINTS, state_from_joints

from .messages import chunk_to_msg, stamp_to_ns, trace_from_msg
from .msg import ActionChunk, Trace
from .node_utils import guarded, now_ns, run_node
from .params import declare
from .policy_loading import load_policy
from .ros_conversions import joint_state_arrays


class ControllerNode(Node):
    def __init__(self):
        super().__init__("controller")
        self.p = declare(self, "controller")
        self.policy, self.load_error = load_policy(self.p.checkpoint, self.p.device, self.p.dtype, self.get_logger())
        self.executor_ = ChunkExecutor(ExecutorConfig(mode=self.p.blend_mode, ensemble_k=self.p.ensemble_decay))
        self.trace = None
        self.decoded = None           # the last Trace that was decoded (refill_on_gap decodes it again)
        self.trace_rx_ns = 0
        self.trace_new = False
        self.q = self.fingers = None
        self.state_rx_ns = 0
        self.ticks_since_decode = 0
        if self.p.state_source not in ("observation", "latest"):
            raise ValueError(f"controller: state_source must be 'observation' or 'latest', got {self.p.state_source!r}")
        if self.p.loop not in ("rtc", "synchronous", "asynchronous"):
            raise ValueError(f"controller: loop must be 'rtc', 'synchronous' or 'asynchronous', got {self.p.loop!r}")
        self.decode_s: list[float] = []   # recent decode times (rtc: the expected one sets the delay)
        self.delays: list[int] = []       # rtc: measured delays (control steps) of the decoded plans
        self.image_ages: list[float] = [] # rtc: how much older (control steps) each plan's images were
        self.sync_end_ns = 0          # loop synchronous: when the running chunk's last row ends
        self.obs_states: dict[int, tuple] = {}     # observation stamp -> (arm q, fingers), the last few
        self._kin = None
        self.pub = self.create_publisher(ActionChunk, "/semanticvla/action_chunk", 5)
        self.create_subscription(Trace, "/semanticvla/trace", self.on_trace, 1)
        self.create_subscription(JointState, "/joint_states", self.on_joint_state, 20)
        self.create_subscription(JointState, "/semanticvla/observation/joint_states", self.on_obs_state, 20)
        # the publishing tick never waits for a decode: rtc decodes in a worker thread of its own (the ChunkExecutor
        # is shared under a lock); the node itself spins single-threaded (rclpy's multi-threaded executor cost the
        # other loops most of their 20 Hz on 2 cores)
        self._lock = threading.RLock()
        self.create_timer(1.0 / self.p.control_rate_hz, self.tick)
        self._stop = threading.Event()
        self._worker = None
        if self.p.loop == "rtc":
            sys.setswitchinterval(0.0005)     # the tick waits at most this for the GIL while the decoder runs
            self._worker = threading.Thread(target=self._decode_worker, name="rtc-decode", daemon=True)
            self._worker.start()
        self._last_hold_log = 0

    @guarded()
    def on_trace(self, msg: Trace) -> None:
        tp = trace_from_msg(msg)          # ValueError (logged by guarded) on a malformed Trace
        self.trace, self.trace_rx_ns, self.trace_new = tp, now_ns(self), True

    @guarded()
    def on_joint_state(self, msg: JointState) -> None:
        self.q = joint_state_arrays(msg, ARM_JOINTS)
        self.fingers = joint_state_arrays(msg, FINGER_JOINTS)
        self.state_rx_ns = now_ns(self)

    @guarded()
    def on_obs_state(self, msg: JointState) -> None:
        self.obs_states[stamp_to_ns(msg.header.stamp)] = (joint_state_arrays(msg, ARM_JOINTS),
                                                          joint_state_arrays(msg, FINGER_JOINTS))
        while len(self.obs_states) > 32:
            self.obs_states.pop(min(self.obs_states))

    def _decode(self, trace, q, fingers, stamp_ns: int, t: int, prev=None, delay: int = 0, image_age: float = 0.0) -> None:
        """Decode ``trace`` with the state (q, fingers); ``image_age``: control steps by which the trace's images are
        older than that state (a decoder trained with ``image_age_cond`` reads it)."""
        if self._kin is None:
            from semanticvla_core.safety.kinematics import PandaKinematics
            self._kin = PandaKinematics()
        state = state_from_joints(q, fingers, self._kin)
        t0 = time.perf_counter()
        chunk = self.policy.decode_actions(trace, state, num_flow_steps=self.p.flow_steps, seed=self.p.seed,
                                           prev_actions=prev, delay=delay, image_age=image_age)
        self.decode_s = (self.decode_s + [time.perf_counter() - t0])[-20:]
        chunk.stamp_ns = stamp_ns
        with self._lock:
            bad = self.executor_.add_chunk(chunk, t)     # (as of the tick that decoded it: a slow decode on a loaded
                                                          # machine does not make a chunk stale; its past rows skip)
        if bad is not None:
            raise ValueError(f"decoded chunk refused: {bad}")
        self.decoded, self.ticks_since_decode = trace, 0
        if self.p.loop != "rtc":       # (rtc: a Trace that arrived during the decode is still new)
            self.trace_new = False

    def _image_age(self, trace, t: int) -> float:
        """Control steps by which ``trace``'s images (its observation stamp) are older than a state taken at ``t``."""
        return max(0.0, (t - trace.stamp_ns) * 1e-9 * self.p.control_rate_hz)

    def _expected_ready_ns(self, t: int) -> int:
        """When a chunk decoded now will be running: now + the slowest of the recent decode times + two ticks (this
        node's next publication, then the safety filter's next period). Too late a guess only freezes more rows of
        the running chunk; too early a one makes the hand-over jump."""
        dec = max(self.decode_s) if self.decode_s else 0.05
        return int(t + (dec + 2.0 / self.p.control_rate_hz) * 1e9)

    def _decode_worker(self) -> None:
        while not self._stop.wait(0.005):
            self.decode_tick()

    def destroy_node(self):
        # the worker must be out of torch before the interpreter exits: a decode still running in a daemon thread
        # while torch's thread pools are torn down aborts the process ("terminate called without an active
        # exception", exit -6; 8 of 12 SIGINTs sent during decodes did). A decode takes ~0.1 s; wait up to 10 s.
        self._stop.set()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=10.0)
        return super().destroy_node()

    @guarded()
    def decode_tick(self) -> None:
        """loop rtc (the worker thread): decode as soon as a new Trace is there."""
        t = now_ns(self)
        if self.policy is None or self.trace is None or self.q is None:
            return
        if (t - self.trace_rx_ns) * 1e-9 > self.p.trace_timeout_s or (t - self.state_rx_ns) * 1e-9 > self.p.state_timeout_s:
            return
        self._rtc_step(t)

    def _rtc_step(self, t: int) -> None:
        """loop rtc: decode each new Trace once, with the fresh joint state (its images are older by the planning
        time, as the harness's --image-delay evaluates), stamped on the running chunk's time grid, continuing the
        running chunk by real-time chunking over the rows that run until the decoded chunk can take over; when planning falls behind (a
        loaded machine) and the running chunk is about to end, decode the last Trace again the same way
        (refill_on_gap): longer use of one plan, never a stop."""
        dt_ns = 1e9 / self.p.control_rate_hz
        trace, new = self.trace, self.trace_new
        with self._lock:
            gap = self.decoded is not None and not self.executor_.covers(int(t + 2 * dt_ns))
        if not (new or (gap and self.p.refill_on_gap)):
            return
        if new:
            self.trace_new = False
        else:
            trace = self.decoded
        with self._lock:      # (stamped on the running chunk's time grid: the hand-over neither repeats nor skips a row)
            prev, d, stamp = self.executor_.continuation(t, self._expected_ready_ns(t))
        age = self._image_age(trace, t)
        self._decode(trace, self.q, self.fingers, stamp, now_ns(self), prev, d, age)
        if new:
            self.delays = (self.delays + [d])[-200:]
            self.image_ages = (self.image_ages + [age])[-200:]
            if len(self.delays) % 100 == 0:
                self.get_logger().info(
                    f"rtc: last 100 plans: delay (rows continued) median {np.median(self.delays[-100:]):.0f}, "
                    f"image age median {np.median(self.image_ages[-100:]):.1f} periods, "
                    f"decode median {1000 * np.median(self.decode_s):.0f} ms")

    def _sync_step(self, t: int) -> None:
        """loop synchronous: while a chunk runs, nothing new; once it has ended, decode the first Trace whose
        observation was taken after that end (the arm held still meanwhile) with that observation's state and run
        all its rows from now on, as the evaluation harness does."""
        if t < self.sync_end_ns:
            return
        if self.trace.stamp_ns < self.sync_end_ns or (self.trace is self.decoded):
            return                                    # no plan of a post-chunk observation yet: hold still
        obs = self.obs_states.get(self.trace.stamp_ns)
        if obs is None:
            raise ValueError(f"no joint state of the Trace's observation (stamp {self.trace.stamp_ns}); waiting "
                             "for the next plan")
        self.executor_.clear()
        self._decode(self.trace, *obs, t, t)
        self.sync_end_ns = t + int(round(self.executor_.horizon_ns()))

    def _hold(self, why: str) -> None:
        t = now_ns(self)
        if t - self._last_hold_log > 2e9:
            self._last_hold_log = t
            self.get_logger().warning(f"holding: {why}")

    @guarded()
    def tick(self) -> None:
        t = now_ns(self)
        if self.policy is None:
            return self._hold(self.load_error)
        if self.trace is None:
            return self._hold("no Trace received yet")
        if (t - self.trace_rx_ns) * 1e-9 > self.p.trace_timeout_s:
            return self._hold(f"Trace is {(t - self.trace_rx_ns) * 1e-9:.2f} s old (trace_timeout_s {self.p.trace_timeout_s})")
        if self.q is None or (t - self.state_rx_ns) * 1e-9 > self.p.state_timeout_s:
            return self._hold("no fresh joint state")
        self.ticks_since_decode += 1
        if self.p.loop == "rtc":
            pass                                   # decode_tick decodes; this tick only publishes
        elif self.p.loop == "synchronous":
            self._sync_step(t)
        elif self.p.state_source == "observation":
            if self.trace_new:
                self.trace_new = False
                obs = self.obs_states.get(self.trace.stamp_ns)
                if obs is None:
                    raise ValueError(f"no joint state of the Trace's observation (stamp {self.trace.stamp_ns}); "
                                     "its chunk is skipped")
                self.executor_.drop_after(self.trace.stamp_ns)  # stop-gap chunks give way to the new plan
                self._decode(self.trace, *obs, self.trace.stamp_ns, t)   # rows whose time has passed are skipped
            if self.p.refill_on_gap and self.decoded is not None and not self.executor_.covers(t):
                self._decode(self.decoded, self.q, self.fingers, t, t, image_age=self._image_age(self.decoded, t))   # stop-gap: the last plan, fresh state
        elif (self.trace_new and self.p.decode_on_new_trace) or self.ticks_since_decode >= self.p.decode_every_steps \
                or self.executor_.num_chunks == 0:
            self._decode(self.trace, self.q, self.fingers, t, t, image_age=self._image_age(self.trace, t))
        with self._lock:
            out = self.executor_.upcoming(t)
            why = self.executor_.last_reason
        if out is None:
            return self._hold(why or "no action covers now")
        out.frame_id = "panda_link0"
        self.pub.publish(chunk_to_msg(out))


def main(args=None):
    run_node(ControllerNode, args)


if __name__ == "__main__":
    main()
