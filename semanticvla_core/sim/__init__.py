"""Simulated Franka tabletop (MuJoCo): environment, task families with language, scripted expert, evaluation.

Quick start::

    from semanticvla_core.sim import FrankaTabletopEnv, SimConfig, rollout_expert
    env = FrankaTabletopEnv(SimConfig(image_size=128, wrist_image_size=96))
    obs = env.reset("pick_place_plate", seed=0, instruction_kind="direct", split="train")
    obs = env.step(action7)              # 7-D ee_delta (semanticvla_core.actions), 20 Hz
    env.success(); env.camera("agentview")  # PinholeCamera (optical frame)

Modules: ``scene`` (MJCF built from the gymnasium-robotics Panda assets), ``env``, ``tasks``,
``instructions``, ``expert``, ``evaluation``. MuJoCo is imported lazily by the environment.
"""
from .env import CAMERA_NAMES, R_DOWN, STATE_DIM, STATE_NAMES, FrankaTabletopEnv, SimConfig
from .evaluation import EvalConfig, ExpertPolicy, RandomPolicy, evaluate, run_episode
from .expert import ScriptedExpert, rollout_expert, tcp_track
from .instructions import KINDS, SPLITS
from .tasks import TASK_FAMILIES, TASKS, get_task

__all__ = ["CAMERA_NAMES", "R_DOWN", "STATE_DIM", "STATE_NAMES", "FrankaTabletopEnv", "SimConfig", "EvalConfig",
           "ExpertPolicy", "RandomPolicy", "evaluate", "run_episode", "ScriptedExpert", "rollout_expert", "tcp_track",
           "KINDS", "SPLITS", "TASK_FAMILIES", "TASKS", "get_task"]
