#!/usr/bin/env bash
# Sets everything up (idempotent, see scripts/setup.sh) and runs the test suite.
#   bash scripts/test.sh                 # the whole suite
#   bash scripts/test.sh -k transport    # extra arguments go to pytest
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup.sh"

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST   # DDS discovery stays on loopback
export MUJOCO_GL="${MUJOCO_GL:-egl}"             # offscreen rendering without a display
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # nothing downloads at run time
export PYTHONDONTWRITEBYTECODE=1
cd "$ROOT"
set +e
"$VENV/bin/pytest" "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "[test] error: pytest collected no tests (exit 5); treating that as a failure" >&2
  exit 1
fi
exit "$rc"
