#!/usr/bin/env bash
# Sets everything up (idempotent, scripts/setup.sh) and runs the main job: the full ROS graph on the simulated
# Franka with the shipped checkpoint, one instruction, results in outputs/demo/ (see README).
#   bash scripts/demo.sh [--instruction "..."] [--seed N] [--timeout S] [--checkpoint DIR] [--out DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup.sh"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((RANDOM % 90 + 10))}"
export MUJOCO_GL="${MUJOCO_GL:-egl}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$ROOT"
exec "$VENV/bin/python" -m semanticvla_ros.demo "$@"
