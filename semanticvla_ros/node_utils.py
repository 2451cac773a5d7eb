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


def run_node(factory, args=None, num_threads: int = 1) -> None:
    """rclpy.init, build the node, spin a single-threaded executor (multi-threaded executors showed 100+ ms
    p99 latency on 2 cores), and shut down on SIGINT/SIGTERM without a traceback.

    Signals: rclpy's own handlers (installed by ``rclpy.init`` for SIGINT and SIGTERM) do it. From the signal they
    trigger the guard condition every executor waits on and shut the context down, so ``spin()`` returns at once
    even in a node with no input and no timer. A Python handler (``signal.signal``) must not replace them: CPython
    runs it only when the main thread next executes bytecode, i.e. after the executor's wait returns by itself
    (never, for an idle node: a SIGTERM was ignored for > 10 s).

    ``num_threads`` > 1: a MultiThreadedExecutor with that many threads instead (and a 0.5 ms GIL switch interval),
    for a node whose callback groups must not wait on each other (the safety filter: its watchdog and holds never
    wait on a chunk check)."""
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.ALL)
    node = None
    ex = None
    try:
        node = factory()
        ex = SingleThreadedExecutor() if num_threads <= 1 else MultiThreadedExecutor(num_threads=num_threads)
        if num_threads > 1:
            # a thread woken by a message waits for the GIL up to the switch interval each time a CPU-bound callback
            # (a chunk check) holds it; 5 ms by default, which added 10-25 ms to a hold measured on 2 busy cores
            sys.setswitchinterval(0.0005)
        ex.add_node(node)
        ex.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001
        # a signal shuts the context down from rclpy's handler; a wait set being built (or a node being constructed)
        # at that moment raises RCLError ("context is not valid"). That is a clean shutdown, not a crash.
        if rclpy.ok():
            raise
    finally:
        if ex is not None and num_threads > 1:
            try:
                ex.shutdown(timeout_sec=2.0)      # let the callbacks in flight on the pool threads finish first
            except Exception:  # noqa: BLE001
                pass
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
