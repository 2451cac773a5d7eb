"""Model-ready observations: synchronizing camera frames and robot state (ROS-free; the perception node's logic).

A set is complete when every camera has a frame and the joint state lies within ``sync_tolerance_s`` of the
main camera's frame; frames older than ``max_age_s`` are dropped as stale. Every drop has a reason string.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Observation:
    stamp_ns: int                         # stamp of the main (first) camera frame
    images: dict[str, np.ndarray]         # name -> uint8 (S, S, 3) RGB, model size
    joint_positions: np.ndarray           # (7,) arm joints [rad]
    finger_positions: np.ndarray          # (2,) finger joints [m]
    frame_ids: dict[str, str] = field(default_factory=dict)


@dataclass
class _Frame:
    stamp_ns: int
    image: np.ndarray
    frame_id: str


class ObservationSync:
    """Keeps the newest frame per camera and a short history of joint states; emits synchronized sets."""

    def __init__(self, camera_names: list[str], sync_tolerance_s: float = 0.06, max_age_s: float = 0.5,
                 state_history: int = 200):
        if not camera_names:
            raise ValueError("camera_names must not be empty")
        self.cameras = list(camera_names)
        self.tol_ns = int(sync_tolerance_s * 1e9)
        self.max_age_ns = int(max_age_s * 1e9)
        self._frames: dict[str, list[_Frame]] = {c: [] for c in self.cameras}   # newest last
        self._buffer = 6
        self._states: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._hist = state_history
        self._last_emitted = -1
        self.dropped: dict[str, int] = {}

    def _drop(self, reason: str) -> str:
        key = reason.split(":")[0]
        self.dropped[key] = self.dropped.get(key, 0) + 1
        return reason

    def add_image(self, name: str, stamp_ns: int, image: np.ndarray, now_ns: int, frame_id: str = "") -> str | None:
        """Store a converted frame; returns a drop reason or None."""
        if name not in self.cameras:
            return self._drop(f"unknown camera: {name!r}")
        if stamp_ns <= 0:
            return self._drop(f"unstamped frame: camera {name} has stamp 0")
        if now_ns - stamp_ns > self.max_age_ns:
            return self._drop(f"stale frame: camera {name} is {(now_ns - stamp_ns) * 1e-9:.3f} s old")
        if stamp_ns - now_ns > self.max_age_ns:
            return self._drop(f"future frame: camera {name} is {(stamp_ns - now_ns) * 1e-9:.3f} s ahead of the clock")
        buf = self._frames[name]
        if buf and stamp_ns < buf[-1].stamp_ns:
            return self._drop(f"out-of-order frame: camera {name}")
        buf.append(_Frame(int(stamp_ns), image, frame_id))
        del buf[:-self._buffer]
        return None

    def add_joint_state(self, stamp_ns: int, names: list[str], positions: list[float],
                        arm_joints: list[str], finger_joints: list[str]) -> str | None:
        """Store a joint state (by joint name); returns a drop reason or None."""
        if len(names) != len(positions):
            return self._drop(f"malformed joint state: {len(names)} names, {len(positions)} positions")
        idx = {n: i for i, n in enumerate(names)}
        missing = [j for j in arm_joints if j not in idx]
        if missing:
            return self._drop(f"malformed joint state: missing joints {missing}")
        q = np.array([positions[idx[j]] for j in arm_joints], dtype=np.float64)
        f = np.array([positions[idx[j]] if j in idx else 0.0 for j in finger_joints], dtype=np.float64)
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(f))):
            return self._drop("malformed joint state: NaN or inf position")
        self._states.append((int(stamp_ns), q, f))
        if len(self._states) > self._hist:
            del self._states[: len(self._states) - self._hist]
        return None

    def pop(self, now_ns: int) -> tuple[Observation | None, str]:
        """The newest synchronized set not yet emitted, or (None, why not).

        Frames of the other cameras may arrive a little after the main camera's; a main frame without partners
        yet is waited for (not dropped) until it is ``max_age_s`` old.
        """
        missing = [c for c in self.cameras if not self._frames[c]]
        if missing:
            return None, f"waiting for cameras {missing}"
        if not self._states:
            return None, "waiting for joint states"
        newest_main = self._frames[self.cameras[0]][-1]
        if newest_main.stamp_ns == self._last_emitted:
            return None, "no new frame"
        if now_ns - newest_main.stamp_ns > self.max_age_ns:
            return None, self._drop(f"stale frame: {(now_ns - newest_main.stamp_ns) * 1e-9:.3f} s old")
        why = ""
        for main in reversed(self._frames[self.cameras[0]]):
            if main.stamp_ns <= self._last_emitted or now_ns - main.stamp_ns > self.max_age_ns:
                break
            partners, why = {}, ""
            for c in self.cameras[1:]:
                best = min(self._frames[c], key=lambda f: abs(f.stamp_ns - main.stamp_ns))
                if abs(best.stamp_ns - main.stamp_ns) > self.tol_ns:
                    why = (f"unsynchronized cameras: {c} is {(best.stamp_ns - main.stamp_ns) * 1e-9:+.3f} s "
                           f"from {self.cameras[0]}")
                    break
                partners[c] = best
            if why:
                continue
            st = min(self._states, key=lambda s: abs(s[0] - main.stamp_ns))
            if abs(st[0] - main.stamp_ns) > self.tol_ns:
                why = f"unsynchronized joint state: nearest is {(st[0] - main.stamp_ns) * 1e-9:+.3f} s away"
                continue
            self._last_emitted = main.stamp_ns
            frames = {self.cameras[0]: main, **partners}
            return Observation(main.stamp_ns, {c: frames[c].image for c in self.cameras}, st[1].copy(), st[2].copy(),
                               {c: frames[c].frame_id for c in self.cameras}), ""
        # nothing complete: wait while the newest main frame is young, drop (count) once it would be stale
        if now_ns - newest_main.stamp_ns > self.max_age_ns // 2:
            return None, self._drop(why or "unsynchronized")
        return None, "waiting: " + (why or "partners not yet received")
