"""planner (System 2): the VLM writes a trace and latent action tokens at its own pace -> Trace.

Subscribes  /semanticvla/observation/{camera} (model-ready rgb8 from perception; the first camera of the
            checkpoint's view), /semanticvla/observation/{wrist_camera} (only for checkpoints whose decoder
            stem uses the wrist camera: planned only with a wrist frame of the same stamp),
            /semanticvla/instruction (std_msgs/String; overrides the parameter)
Publishes   /semanticvla/trace (semanticvla_ros/Trace) with the conditioning the controller needs
If the checkpoint cannot be loaded the node stays up, publishes nothing (the arm holds) and says why.
"""
from __future__ import annotations

import time

from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String

from semanticvla_core.image_convert import msg_to_model_rgb

from .messages import stamp_to_ns, trace_to_msg
from .msg import Trace
from .node_utils import guarded, now_ns, run_node
from .params import declare
from .policy_loading import load_policy

class PlannerNode(Node):
    def __init__(self):
        super().__init__("planner")
        self.p = declare(self, "planner")
        self.policy, self.load_error = load_policy(self.p.checkpoint, self.p.device, self.p.dtype, self.get_logger())
        self.instruction = self.p.instruction
        self._told_waiting = False
        self.obs: Image | None = None
        self.obs_rx_ns = 0
        self.last_planned_stamp = -1
        self.plan_id = 0
        self.pub = self.create_publisher(Trace, "/semanticvla/trace", 5)
        self.create_subscription(Image, f"/semanticvla/observation/{self.p.camera}", self.on_obs, 1)
        self.wrist: dict[int, Image] = {}     # stamp -> wrist frame (a few, to pair with the main camera's)
        self.needs_wrist = self.policy is not None and self.policy.uses_wrist
        if self.needs_wrist:
            self.create_subscription(Image, f"/semanticvla/observation/{self.p.wrist_camera}", self.on_wrist, 2)
        self.create_subscription(String, "/semanticvla/instruction", self.on_instruction, 5)
        self.create_timer(1.0 / self.p.max_rate_hz, self.tick)

    def on_obs(self, msg: Image) -> None:
        self.obs, self.obs_rx_ns = msg, now_ns(self)

    def on_wrist(self, msg: Image) -> None:
        self.wrist[stamp_to_ns(msg.header.stamp)] = msg
        while len(self.wrist) > 4:
            self.wrist.pop(min(self.wrist))

    @guarded()
    def on_instruction(self, msg: String) -> None:
        text = msg.data.strip()
        if not text:
            raise ValueError("empty instruction ignored")
        if text != self.instruction:
            self.get_logger().info(f"instruction: {text!r}")
        self.instruction = text

    @guarded()
    def tick(self) -> None:
        if self.policy is None or self.obs is None:
            return
        if not self.instruction:
            if not self._told_waiting:
                self._told_waiting = True
                self.get_logger().info("no instruction yet (parameter instruction is empty): waiting for "
                                       "/semanticvla/instruction")
            return
        stamp = stamp_to_ns(self.obs.header.stamp)
        if stamp == self.last_planned_stamp:
            return
        age = (now_ns(self) - stamp) * 1e-9
        if age > self.p.max_obs_age_s:
            raise ValueError(f"observation is {age:.2f} s old (max_obs_age_s {self.p.max_obs_age_s}); not planning")
        wrist = None
        if self.needs_wrist:
            if stamp not in self.wrist:
                return          # perception publishes both cameras with one stamp: wait for the pair
            wrist = msg_to_model_rgb(self.wrist[stamp])
        self.last_planned_stamp = stamp
        rx, obs = self.obs_rx_ns, self.obs
        rgb = msg_to_model_rgb(obs)
        self.plan_id += 1
        tp = self.policy.plan_trace(rgb, self.instruction, plan_id=self.plan_id, wrist=wrist)
        tp.stamp_ns, tp.frame_id = stamp, obs.header.frame_id
        tp.planning_latency_s = max(0.0, (now_ns(self) - rx) * 1e-9)
        self.pub.publish(trace_to_msg(tp))
        if not tp.parse_ok:
            self.get_logger().warning(f"plan {self.plan_id}: VLM text needed recovery: {tp.raw_text!r}")


def main(args=None):
    run_node(PlannerNode, args)


if __name__ == "__main__":
    main()
