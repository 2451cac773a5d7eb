"""Task families on the tabletop: layouts, colours, labels, language and success predicates.

Families (``TASKS``): ``pick_place_plate`` (a coloured cube onto a coloured, labelled plate; 2-3 cubes,
2-3 plates), ``pick_place_bowl`` (a cube into one of two bowls), ``stack`` (one cube on another, 3 cubes),
``push_region`` (push a cube into one of two labelled squares without lifting it). Every episode is fully
determined by its seed (:meth:`Task.sample`), including the domain randomization (colour shades within the
named colour, positions, yaw, light).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from . import instructions as ins
from .scene import BOWL_INNER_HALF, CUBE_HALF, PARK_X, PLATE_HALF, PLATE_HALF_H, REGION_HALF

COLORS = {   # named colour -> base RGB; episodes jitter the shade but stay within the name
    "red": (0.85, 0.12, 0.10), "green": (0.15, 0.70, 0.20), "blue": (0.12, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10), "purple": (0.55, 0.18, 0.75), "orange": (1.00, 0.50, 0.05),
}
DEST_COLORS = {"white": (0.92, 0.92, 0.92), "pink": (0.98, 0.55, 0.70), **COLORS}
WORKSPACE_X = (0.35, 0.65)
WORKSPACE_Y = (-0.25, 0.25)
SPATIAL_RULES = ("nearest", "farthest", "leftmost", "rightmost")


def jitter_color(rgb, rng: np.random.Generator) -> tuple:
    """A shade of the same named colour: small hue/saturation/value jitter."""
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    h = (h + rng.uniform(-0.015, 0.015)) % 1.0
    s = float(np.clip(s * rng.uniform(0.85, 1.1), 0, 1))
    v = float(np.clip(v * rng.uniform(0.85, 1.1), 0, 1))
    return colorsys.hsv_to_rgb(h, s, v)


@dataclass
class Obj:
    body: str            # body name in the scene
    color: str           # named colour
    rgb: tuple
    pos: np.ndarray      # initial position (world)
    yaw: float = 0.0
    label: str | None = None


@dataclass
class Episode:
    """One sampled episode: what is where, and what the instruction asks for."""

    family: str
    cubes: list
    dests: list
    target: int                     # index into cubes
    dest: int                       # index into dests (for stack: index into cubes)
    spatial: str | None = None      # the spatial rule that singles out the target cube, if any
    max_steps: int = 200
    meta: dict = field(default_factory=dict)


def _sample_positions(rng, n: int, min_dist: list, x=WORKSPACE_X, y=WORKSPACE_Y, tries: int = 2000) -> np.ndarray:
    """n xy positions in the workspace with pairwise distances >= min_dist[i]+min_dist[j]."""
    for _ in range(tries):
        pts = np.column_stack([rng.uniform(*x, n), rng.uniform(*y, n)])
        ok = all(np.linalg.norm(pts[i] - pts[j]) >= min_dist[i] + min_dist[j]
                 for i in range(n) for j in range(i + 1, n))
        if ok:
            return pts
    raise RuntimeError("could not place objects without overlap")


def _spatial_pick(xy: np.ndarray, rule: str) -> tuple[int, float]:
    """(index chosen by a spatial rule, margin to the runner-up in metres)."""
    key = {"nearest": xy[:, 0], "farthest": -xy[:, 0], "leftmost": -xy[:, 1], "rightmost": xy[:, 1]}[rule]
    order = np.argsort(key)
    return int(order[0]), float(key[order[1]] - key[order[0]])


class Task:
    """Base class: a family of episodes. Subclasses define ``sample`` and ``success``."""

    family = "base"
    dest_kind = "plate"      # plate | bowl | cube | region
    max_steps = 200

    def sample(self, rng: np.random.Generator) -> Episode:
        raise NotImplementedError

    def success(self, env, ep: Episode) -> bool:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def _cubes(self, rng, n: int, xy: np.ndarray) -> list:
        names = rng.choice(list(COLORS), size=n, replace=False)
        return [Obj(f"cube{i}", str(c), jitter_color(COLORS[str(c)], rng),
                    np.array([xy[i, 0], xy[i, 1], CUBE_HALF]), float(rng.uniform(-np.pi / 4, np.pi / 4)))
                for i, c in enumerate(names)]

    def apply(self, env, ep: Episode, rng: np.random.Generator) -> None:
        """Place the episode's objects in the scene, park the rest, set colours and labels."""
        m = env.model
        sc = env.cfg.scene
        for i in range(sc.num_cubes):
            env.set_free_body(f"cube{i}", np.array([PARK_X, 0.2 * i, CUBE_HALF]))
        for o in ep.cubes:
            env.set_free_body(o.body, o.pos, o.yaw)
            m.geom_rgba[env.geom_id(o.body)] = (*o.rgb, 1.0)
        for kind, n, park_y in (("plate", sc.num_plates, 2.0), ("bowl", sc.num_bowls, -2.0),
                                ("region", sc.num_regions, -4.0)):
            for i in range(n):
                env.set_mocap_body(f"{kind}{i}", np.array([PARK_X, park_y + 0.3 * i * np.sign(park_y), 0.0]))
        if self.dest_kind != "cube":
            for o in ep.dests:
                env.set_mocap_body(o.body, o.pos, o.yaw)
                for g in range(m.ngeom):
                    name = m.geom(g).name
                    if name == o.body or name.startswith(o.body + "_wall") or name == o.body + "_base":
                        m.geom_rgba[g] = (*o.rgb, 1.0)
                if o.label is not None:
                    m.geom_matid[env.geom_id(o.body + "_label")] = env.mj.mj_name2id(
                        m, env.mj.mjtObj.mjOBJ_MATERIAL, f"mat_label_{o.label}")
        m.geom_rgba[env.geom_id("table")] = (*jitter_color((0.62, 0.50, 0.38), rng), 1.0)

    def instruction(self, ep: Episode, kind: str, split: str, rng: np.random.Generator) -> str:
        c = ep.cubes[ep.target]
        d = ep.cubes[ep.dest] if self.dest_kind == "cube" else ep.dests[ep.dest]
        return ins.make_instruction(self.family, kind, split, {"color": c.color, "spatial": ep.spatial},
                                    {"color": d.color, "label": d.label}, rng)

    @staticmethod
    def cube_pos(env, ep: Episode, i: int) -> np.ndarray:
        return env.body_pose(ep.cubes[i].body)[0]

    @staticmethod
    def released(env) -> bool:
        return env.gripper_cmd < 0.5


def _labels(rng, n: int) -> list[str]:
    if rng.random() < 0.6:
        return [str(x) for x in rng.choice(list("123456789"), n, replace=False)]
    return [str(x) for x in rng.choice(list("ABCDE"), n, replace=False)]


class PickPlacePlate(Task):
    family = "pick_place_plate"
    dest_kind = "plate"
    max_steps = 200

    def sample(self, rng):
        nc, npl = int(rng.integers(2, 4)), int(rng.integers(2, 4))
        xy = _sample_positions(rng, nc + npl, [0.045] * nc + [PLATE_HALF * 1.3] * npl)
        cubes = self._cubes(rng, nc, xy[:nc])
        pcols = rng.choice(list(DEST_COLORS), npl, replace=False)
        labels = _labels(rng, npl)
        plates = [Obj(f"plate{i}", str(c), jitter_color(DEST_COLORS[str(c)], rng),
                      np.array([xy[nc + i, 0], xy[nc + i, 1], PLATE_HALF_H]), 0.0, labels[i])
                  for i, c in enumerate(pcols)]
        return Episode(self.family, cubes, plates, int(rng.integers(nc)), int(rng.integers(npl)),
                       max_steps=self.max_steps)

    def success(self, env, ep):
        p = self.cube_pos(env, ep, ep.target)
        d = ep.dests[ep.dest].pos
        inside = np.all(np.abs(p[:2] - d[:2]) < PLATE_HALF - 0.005)
        resting = p[2] < 2 * PLATE_HALF_H + CUBE_HALF + 0.012
        return bool(inside and resting and self.released(env))


class PickPlaceBowl(Task):
    family = "pick_place_bowl"
    dest_kind = "bowl"
    max_steps = 200

    def sample(self, rng):
        nc = int(rng.integers(2, 4))
        rule = str(rng.choice(SPATIAL_RULES))
        for _ in range(200):
            half = BOWL_INNER_HALF + 0.01
            xy = _sample_positions(rng, nc + 2, [0.045] * nc + [half * 1.45] * 2)
            tgt, margin = _spatial_pick(xy[:nc], rule)
            if margin > 0.05:
                break
        cubes = self._cubes(rng, nc, xy[:nc])
        bcols = rng.choice(list(DEST_COLORS), 2, replace=False)
        bowls = [Obj(f"bowl{i}", str(c), jitter_color(DEST_COLORS[str(c)], rng),
                     np.array([xy[nc + i, 0], xy[nc + i, 1], 0.0]), 0.0) for i, c in enumerate(bcols)]
        return Episode(self.family, cubes, bowls, tgt, int(rng.integers(2)), spatial=rule, max_steps=self.max_steps)

    def success(self, env, ep):
        p = self.cube_pos(env, ep, ep.target)
        d = ep.dests[ep.dest].pos
        inside = np.all(np.abs(p[:2] - d[:2]) < BOWL_INNER_HALF)
        return bool(inside and p[2] < 0.05 and self.released(env))


class Stack(Task):
    family = "stack"
    dest_kind = "cube"
    max_steps = 200

    def sample(self, rng):
        nc = 3
        rule = str(rng.choice(SPATIAL_RULES))
        for _ in range(200):
            xy = _sample_positions(rng, nc, [0.06] * nc)
            tgt, margin = _spatial_pick(xy, rule)
            if margin > 0.05:
                break
        cubes = self._cubes(rng, nc, xy)
        base = int(rng.choice([i for i in range(nc) if i != tgt]))
        return Episode(self.family, cubes, [], tgt, base, spatial=rule, max_steps=self.max_steps)

    def success(self, env, ep):
        top, bot = self.cube_pos(env, ep, ep.target), self.cube_pos(env, ep, ep.dest)
        aligned = np.linalg.norm(top[:2] - bot[:2]) < 0.025
        on = abs(top[2] - bot[2] - 2 * CUBE_HALF) < 0.012
        return bool(aligned and on and self.released(env))


class PushRegion(Task):
    family = "push_region"
    dest_kind = "region"
    max_steps = 250

    def sample(self, rng):
        nc = int(rng.integers(1, 3))
        for _ in range(500):
            xy = _sample_positions(rng, nc + 2, [0.045] * nc + [REGION_HALF * 1.2] * 2,
                                   x=(0.38, 0.62), y=(-0.2, 0.2))
            dst = int(rng.integers(2))
            dist = np.linalg.norm(xy[nc + dst] - xy[0])
            # the pushed cube must have room behind it and a path free of the other cube
            behind = xy[0] - (xy[nc + dst] - xy[0]) / max(dist, 1e-6) * 0.08
            clear = nc < 2 or _seg_point_dist(xy[0], xy[nc + dst], xy[1]) > 0.08
            if 0.1 < dist < 0.22 and WORKSPACE_X[0] - 0.05 < behind[0] < 0.7 and clear:
                break
        cubes = self._cubes(rng, nc, xy[:nc])
        rcols = rng.choice(list(DEST_COLORS), 2, replace=False)
        labels = _labels(rng, 2)
        regions = [Obj(f"region{i}", str(c), jitter_color(DEST_COLORS[str(c)], rng),
                       np.array([xy[nc + i, 0], xy[nc + i, 1], 0.0]), 0.0, labels[i]) for i, c in enumerate(rcols)]
        return Episode(self.family, cubes, regions, 0, dst, max_steps=self.max_steps)

    def success(self, env, ep):
        p = self.cube_pos(env, ep, ep.target)
        d = ep.dests[ep.dest].pos
        return bool(np.all(np.abs(p[:2] - d[:2]) < REGION_HALF) and p[2] < CUBE_HALF + 0.01)


def _seg_point_dist(a, b, p) -> float:
    ab = b - a
    t = np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0, 1)
    return float(np.linalg.norm(a + t * ab - p))


TASKS: dict[str, Task] = {t.family: t for t in (PickPlacePlate(), PickPlaceBowl(), Stack(), PushRegion())}
TASK_FAMILIES = tuple(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]
