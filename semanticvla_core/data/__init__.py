"""Datasets: the LeRobot v3 format (reader + writer), the TraceX trace schema, trace annotation and the
sample pipelines of the three training stages. Import the submodules directly, e.g.
``from semanticvla_core.data.lerobot_v3 import LeRobotV3Writer, LeRobotV3Dataset``."""
