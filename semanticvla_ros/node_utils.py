"""What every node shares: a main() that spins and shuts down cleanly, and callbacks that never kill a node."""
from __future__ import annotations

import functools
import sys
import time
import traceback

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions


def latched_qos(depth: int = 1) -> QoSProfile:
    """Reliable + transient_local: a subscriber that starts late still gets the last message (state that changes
    rarely, e.g. the scene's obstacles)."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def node_exit_qos() -> QoSProfile:
    """QoS of the supervisor's node-exit reports (semanticvla_ros.graph.NODE_EXIT_TOPIC): latched, so that a
    subscriber that (re)joins late still gets the last 20 exits reported before it."""
    return latched_qos(depth=20)


def guarded(on_error=None):
    """Decorate a callback so that an exception is logged (with its reason) instead of killing the node.

    ``on_error(self, exc)`` is called afterwards (e.g. to hold the arm). Logs are throttled per callback.
    """
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a node must survive any bad input
                if type(e).__name__ == "InvalidHandle" or not rclpy.ok():
                    return None          # the node is being destroyed at shutdown: nothing to report, nothing to do
                now = time.monotonic()
                key = f"_guard_last_{fn.__name__}"
                if now - getattr(self, key, 0.0) > 1.0:
                    setattr(self, key, now)
                    self.get_logger().error(f"{fn.__name__}: {type(e).__name__}: {e}")
                    if not isinstance(e, ValueError):
                        self.get_logger().debug(traceback.format_exc())
                if on_error is not None:
                    try:
                        on_error(self, e)
                    except Exception as e2:  # noqa: BLE001
                        self.get_logger().error(f"{fn.__name__}: error handler failed: {e2}")
                return None
        return wrapper
    return deco


def now_ns(node) -> int:
    return node.get_clock().now().nanoseconds


# how often a spinning node wakes up by itself to see whether its context was shut down (see spin_node)
SHUTDOWN_POLL_S = 0.25


def spin_node(node, num_threads: int = 1) -> None:
    """Spin ``node`` until its context shuts down (raises ExternalShutdownException then, like ``Executor.spin``).

    ``num_threads`` > 1: a MultiThreadedExecutor with that many threads instead of a single-threaded one (and a
    0.5 ms GIL switch interval), for a node whose callback groups must not wait on each other (the safety filter:
    its watchdog and holds never wait on a chunk check). Callbacks in flight on the pool threads finish first.

    The node also gets a no-op timer every SHUTDOWN_POLL_S. rclpy's signal handler triggers the executors' wake-up
    guard condition and then shuts the context down, from its own thread. An executor woken between the two sees
    the context still valid, waits again, and nothing wakes it: an idle node (no input, no timer) then never
    returned from a SIGTERM (seen once in CI: trace_overlay still running 10 s after it). The timer bounds that
    wait, so a shut-down context ends the spin within SHUTDOWN_POLL_S whatever woke the executor last."""
    ex = (SingleThreadedExecutor(context=node.context) if num_threads <= 1
          else MultiThreadedExecutor(num_threads=num_threads, context=node.context))
    node.create_timer(SHUTDOWN_POLL_S, _no_op)
    if num_threads > 1:
        # a thread woken by a message waits for the GIL up to the switch interval each time a CPU-bound callback
        # (a chunk check) holds it; 5 ms by default, which added 10-25 ms to a hold measured on 2 busy cores
        sys.setswitchinterval(0.0005)
    try:
        ex.add_node(node)
        ex.spin()
    finally:
        if num_threads > 1:
            try:
                ex.shutdown(timeout_sec=2.0)      # let the callbacks in flight on the pool threads finish first
            except Exception:  # noqa: BLE001
                pass


def _realtime_if_asked(node) -> None:
    """A node with a ``realtime_priority`` parameter above 0 spins its executor (its timers and callbacks; not
    threads it started before, e.g. the controller's decode worker) under SCHED_FIFO at that priority; where that
    is not permitted it says why and runs on the normal scheduler."""
    prio = int(getattr(getattr(node, "p", None), "realtime_priority", 0) or 0)
    if prio <= 0:
        return
    from semanticvla_core.scheduling import realtime_scheduling

    why = realtime_scheduling(prio)
    if why is None:
        node.get_logger().info(f"executor thread on SCHED_FIFO priority {prio}")
    else:
        node.get_logger().warning(f"realtime_priority {prio}: {why}; running on the normal scheduler (more timing "
                                  "jitter on a busy machine)")


def _no_op() -> None:
    return None


def run_node(factory, args=None, num_threads: int = 1) -> None:
    """rclpy.init, build the node, spin it (spin_node: single-threaded unless ``num_threads`` > 1; multi-threaded
    executors showed 100+ ms p99 latency on 2 cores), and shut down on SIGINT/SIGTERM without a traceback.

    Signals: rclpy's own handlers (installed by ``rclpy.init`` for SIGINT and SIGTERM) do it. From the signal they
    trigger the guard condition every executor waits on and shut the context down, so ``spin()`` returns at once
    even in a node with no input and no timer. A Python handler (``signal.signal``) must not replace them: CPython
    runs it only when the main thread next executes bytecode, i.e. after the executor's wait returns by itself
    (never, for an idle node: a SIGTERM was ignored for > 10 s)."""
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.ALL)
    node = None
    try:
        node = factory()
        _realtime_if_asked(node)
        spin_node(node, num_threads)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001
        # a signal shuts the context down from rclpy's handler; a wait set being built (or a node being constructed)
        # at that moment raises RCLError ("context is not valid"). That is a clean shutdown, not a crash.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass
            try:
                node.destroy_node()
            except Exception:  # noqa: BLE001
                pass
        rclpy.try_shutdown()
