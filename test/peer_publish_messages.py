"""Peer process for test_ros_transport: publishes the reference Trace and ActionChunk until terminated."""
import signal
import sys

import rclpy
from rclpy.executors import ExternalShutdownException

from ros_testing import reference_chunk, reference_trace
from semanticvla_ros.messages import chunk_to_msg, trace_to_msg
from semanticvla_ros.msg import ActionChunk, Trace


def main() -> None:
    seed = int(sys.argv[1])
    rclpy.init()
    node = rclpy.create_node("peer_publisher")
    tp = node.create_publisher(Trace, "test/trace", 10)
    cp = node.create_publisher(ActionChunk, "test/chunk", 10)
    trace, chunk = trace_to_msg(reference_trace(seed)), chunk_to_msg(reference_chunk(seed))
    node.create_timer(0.2, lambda: (tp.publish(trace), cp.publish(chunk)))
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    print("peer ready", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
