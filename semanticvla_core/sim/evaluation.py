"""Success-rate evaluation of any policy in the simulated tabletop.

A policy is either
* an object with the core ``plan(images, instruction, state=None)`` interface returning an object with
  ``.actions`` ((H, 7) or (B, H, 7), robot units) and optionally ``.anchors`` ((N, 2) or (B, N, 2),
  normalized agent-view coordinates: drawn into the videos), or
* a plain callable ``f(obs: dict, instruction: str) -> actions (H, 7) or (7,)``.

``obs`` holds ``agentview`` (S, S, 3) uint8, ``wrist``, ``state`` (15,) (see ``env.STATE_NAMES``),
``tcp_pos``, ``tcp_rot``, ``joint_positions``, ``gripper``, ``instruction``, ``t``. The first
``execute_steps`` rows of a chunk are executed open loop, then the policy is asked again.

For each task and instruction kind, ``episodes`` seeded episodes (seeds ``seed .. seed+episodes-1``: the
same layouts for every kind, so the drop between kinds measures language alone). The report gives success
per task and kind, per kind overall, and the relative drop from direct to rephrased and to reasoning.
Custom phrasings: a JSON/YAML file ``{task: ["push the {obj_color} block to the {dest_color} zone", ...]}``;
placeholders ``{obj_color}``, ``{dest_color}``, ``{dest_label}`` are filled per episode (kind ``custom``).
"""
from __future__ import annotations

import inspect
import json
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.viz import write_mp4
from ..control import ChunkExecutor, ExecutorConfig
from ..interfaces import ActionChunkData
from ..safety.checker import BuiltinSafetyChecker, SafetyConfig
from ..safety.execution import EXECUTION_MODES, SafetyExecutor
from .arm import SimArm
from .env import FrankaTabletopEnv, SimConfig
from .expert import ScriptedExpert
from .instructions import KINDS
from .tasks import TASK_FAMILIES, get_task


@dataclass
class EvalConfig:
    """What to evaluate (documented defaults)."""

    tasks: tuple = TASK_FAMILIES
    kinds: tuple = KINDS               # plus "custom" when custom_instructions is given
    episodes: int = 10                 # per task and kind
    episodes_per_kind: dict = field(default_factory=dict)   # {kind: episodes} overrides, e.g. {"direct": 100}
    seed: int = 100_000                # first episode seed (training demos use small seeds)
    split: str = "eval"                # instruction split: eval phrasings are disjoint from training ones
    execute_steps: int | None = None   # rows of each chunk executed before replanning (None: all)
    max_steps: int | None = None       # per-episode step limit (None: the task's own)
    image_size: int = 128
    wrist_size: int = 96
    video_dir: str | None = None       # MP4 per episode (agent view, predicted trace drawn) when set
    videos_per_task: int = 2           # at most this many videos per task and kind
    custom_instructions: dict = field(default_factory=dict)   # {task: [template, ...]}
    render: bool = True                # False: no images in obs (only for policies that do not look)
    safety: str = "none"               # every chunk through the safety filter's checks (no ROS) in one of its
                                       # execution modes: "cartesian" | "stepwise" | "trajectory" | "none": env.step
    loop: str = "synchronous"          # run-time loop (run_episode): "synchronous" | "naive" | "rtc"
    delay: int = 0                     # control steps from a plan's request to its first row (rows frozen by rtc)
    image_delay: int = 0               # control steps by which a plan's images are older than its state


def load_custom_instructions(path: str | Path) -> dict:
    """Read ``{task: [template, ...]}`` from JSON or YAML; validates task names and types."""
    p = Path(path)
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping task -> list of instructions")
    for task, items in data.items():
        get_task(task)
        if not isinstance(items, list) or not all(isinstance(s, str) and s.strip() for s in items):
            raise ValueError(f"{p}: task {task!r} must map to a list of non-empty strings")
        for template in items:
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            except ValueError as e:
                raise ValueError(f"{p}: task {task!r}: instruction {template!r} is not a valid template ({e}); "
                                 "write literal braces as {{ and }}") from None
            unknown = sorted(fields - set(PLACEHOLDERS))
            if unknown:
                raise ValueError(f"{p}: task {task!r}: instruction {template!r} uses unknown placeholder(s) "
                                 f"{', '.join('{' + u + '}' for u in unknown)}; allowed: "
                                 f"{', '.join('{' + a + '}' for a in PLACEHOLDERS)}")
    return data


PLACEHOLDERS = ("obj_color", "dest_color", "dest_label")   # what a custom instruction template may name


def _custom_text(template: str, ep) -> str:
    obj = ep.cubes[ep.target]
    dest = ep.cubes[ep.dest] if ep.family == "stack" else ep.dests[ep.dest]
    return template.format(obj_color=obj.color, dest_color=dest.color, dest_label=dest.label or "")


class _PolicyAdapter:
    """Uniform access to plan()-style objects and plain callables: returns (actions (H,7), anchors or None)."""

    def __init__(self, policy):
        if not (hasattr(policy, "plan") or callable(policy)):
            raise ValueError("policy must have a plan() method or be callable")
        self.policy = policy
        params = inspect.signature(policy.plan).parameters if hasattr(policy, "plan") else {}
        self._takes_wrist = "wrist" in params
        self._takes_prefix = "prev_actions" in params      # real-time chunking (loop "rtc")
        self._takes_age = "image_age" in params
        self.last_keypoints = None      # (2, 2) object / destination keypoints of the last plan, when it has them

    def __call__(self, obs: dict, instruction: str, prev_actions=None, delay: int = 0, image_age: int = 0):
        anchors = None
        if hasattr(self.policy, "plan"):
            imgs = obs["agentview"][None]
            kw = {"state": obs["state"][None]}
            if self._takes_wrist and "wrist" in obs:
                kw["wrist"] = obs["wrist"][None]
            if prev_actions is not None and self._takes_prefix:
                kw.update(prev_actions=np.asarray(prev_actions), delay=int(delay))
            if image_age and self._takes_age:
                kw["image_age"] = float(image_age)
            try:
                out = self.policy.plan(imgs, instruction, **kw)
            except TypeError:
                out = self.policy.plan(imgs, instruction)
            acts = np.asarray(out.actions, dtype=np.float64)
            if getattr(out, "anchors", None) is not None:
                anchors = np.asarray(out.anchors, dtype=np.float64)
                anchors = anchors[0] if anchors.ndim == 3 else anchors
            acts = acts[0] if acts.ndim == 3 else acts
            kp = getattr(out, "keypoints", None)
            self.last_keypoints = None if kp is None else np.asarray(kp, np.float64).reshape(-1, 2, 2)[0]
        else:
            acts = np.asarray(self.policy(obs, instruction), dtype=np.float64)
        if acts.ndim == 1:
            acts = acts[None]
        if acts.ndim != 2 or acts.shape[1] != 7 or acts.shape[0] < 1:
            raise ValueError(f"policy returned actions of shape {acts.shape}; expected (H, 7) or (7,)")
        return acts, anchors


class ExpertPolicy:
    """The privileged scripted expert as a callable policy (a reference upper bound for the harness).

    Pass the class itself to :func:`evaluate` (``needs_env``): it is built on the evaluation's env.
    """

    needs_env = True

    def __init__(self, env: FrankaTabletopEnv):
        self.env, self.expert, self._episode = env, ScriptedExpert(env), None

    def __call__(self, obs: dict, instruction: str) -> np.ndarray:
        if self.env.episode is not self._episode:
            self.expert.reset()
            self._episode = self.env.episode
        return self.expert.act(obs)


class RandomPolicy:
    """Uniform random ee_delta actions (seeded): the floor every task should score near zero on."""

    def __init__(self, seed: int = 0, scale: float = 0.03):
        self.rng, self.scale = np.random.default_rng(seed), scale

    def __call__(self, obs: dict, instruction: str) -> np.ndarray:
        a = self.rng.uniform(-1, 1, 7) * np.r_[[self.scale] * 3, [0.1] * 3, 0.5] + np.r_[[0] * 6, 0.5]
        return a


def _draw(frame: np.ndarray, anchors, tcp_uv, keypoints=None) -> np.ndarray:
    """Agent view with the predicted trace (cyan), the TCP (magenta) and, when the policy reports them, where
    it locates the named object (green ring) and its destination (orange ring)."""
    import cv2

    img = np.ascontiguousarray(frame).copy()
    S = img.shape[1]
    if anchors is not None and len(anchors):
        pts = np.round(np.asarray(anchors) * np.array([img.shape[1], img.shape[0]]) - 0.5).astype(int)
        for a, b in zip(pts[:-1], pts[1:]):
            cv2.line(img, tuple(map(int, a)), tuple(map(int, b)), (0, 255, 255), max(1, S // 128))
        for p in pts:
            cv2.circle(img, tuple(map(int, p)), max(1, S // 64), (0, 255, 255), -1)
    if tcp_uv is not None:
        p = np.round(np.asarray(tcp_uv) * np.array([img.shape[1], img.shape[0]]) - 0.5).astype(int)
        cv2.circle(img, tuple(map(int, p)), max(1, S // 64), (255, 0, 255), -1)
    if keypoints is not None:
        for uv, color in zip(np.asarray(keypoints), ((0, 255, 0), (255, 140, 0))):
            p = np.round(uv * np.array([img.shape[1], img.shape[0]]) - 0.5).astype(int)
            cv2.circle(img, tuple(map(int, p)), max(2, S // 32), color, max(1, S // 128))
    return img


class SafetyExecution:
    """Runs chunks in the simulator the way the ROS graph's safety filter commands the arm, without ROS or latency:
    the same executor (:class:`~semanticvla_core.safety.execution.SafetyExecutor`, one of its execution modes) and
    the same simulated controllers as the sim node (:class:`~semanticvla_core.sim.arm.SimArm`). A refused chunk or
    row brakes the arm. Counts what the filter did."""

    def __init__(self, env: FrankaTabletopEnv, mode: str):
        if mode not in EXECUTION_MODES:
            raise ValueError(f"safety: one of {EXECUTION_MODES} or 'none', got {mode!r}")
        self.env, self.mode = env, mode
        # no wall-clock budget here: the harness's verdicts must not depend on how loaded the machine is (the budget
        # is a run-time property of the ROS node, measured by benchmarks/safety_fuzz.py)
        self.checker = BuiltinSafetyChecker(SafetyConfig(gripper="sim", check_budget_s=60.0))
        self.dt_ns = int(round(1e9 / env.cfg.control_hz))
        self.executor = SafetyExecutor(self.checker, mode, period_s=self.dt_ns * 1e-9)
        self.arm = SimArm(env)
        self.counts = {"chunks": 0, "rejected": 0, "clipped": 0, "rows_refused": 0}

    def reset(self) -> None:
        self.t_ns, self.counts = 10**12, {k: 0 for k in self.counts}
        self.executor.reset()
        self.arm.reset()

    def start_chunk(self, acts: np.ndarray) -> None:
        env, c = self.env, ActionChunkData(np.asarray(acts, np.float64), self.dt_ns * 1e-9, stamp_ns=self.t_ns)
        res = self.executor.admit(c, env.joint_positions(), env.gripper_cmd, self.t_ns, env.joint_velocities())
        self.counts["chunks"] += 1
        if res.is_hold or res.reasons:
            self.counts["rejected" if res.is_hold else "clipped"] += 1

    def step(self, render: bool) -> dict:
        env = self.env
        cmd = self.executor.tick(env.joint_positions(), env.gripper_cmd, self.t_ns, env.joint_velocities())
        if cmd is not None:
            if cmd.is_hold and cmd.row is not None:
                self.counts["rows_refused"] += 1
            self.arm.command(cmd)
        obs = self.arm.tick(self.t_ns, render)
        self.t_ns += self.dt_ns
        return obs


LOOPS = ("synchronous", "naive", "rtc")
CLOCK0_NS = 10**12            # the harness's simulated clock starts here (any positive stamp works)


def run_episode(env: FrankaTabletopEnv, policy, task: str, seed: int, kind: str, split: str = "eval",
                instruction: str | None = None, execute_steps: int | None = None, max_steps: int | None = None,
                record: bool = False, safety: SafetyExecution | None = None, loop: str = "synchronous",
                delay: int = 0, image_delay: int = 0) -> dict:
    """One seeded episode; success as soon as the task's predicate holds. With ``safety``, every chunk runs through
    the safety filter's checks (:class:`SafetyExecution`) instead of ``env.step``.

    The run-time loop of the ROS controller, on the simulated clock, with the same executor
    (:class:`~semanticvla_core.control.ChunkExecutor`, chunks indexed by time) and a planning delay of ``delay``
    control steps: a plan made from the observation at time t can start at t + delay (its rows for earlier times
    are skipped, as the ROS graph skips them).
    * ``synchronous``: a new observation is taken when the running chunk is used up (after ``execute_steps`` rows,
      default the whole chunk); the arm holds still while it is planned;
    * ``naive``: asynchronous: the next observation is taken ``execute_steps`` rows (default H - delay) after the
      previous one, while the arm keeps running the current chunk; at t + delay it switches to the new chunk;
    * ``rtc``: as ``naive``, and the new chunk is planned by real-time chunking: its first ``delay`` rows frozen to
      the rows the arm runs meanwhile, the rest inpainted towards the running chunk (policies with ``plan``;
      :meth:`ChunkExecutor.continuation` gives the rows and the delay).
    ``image_delay``: the images a plan reads are that many control steps older than the state it is decoded with
    (the ROS graph decodes each Trace with the fresh joint state: the image is older by the planning time).
    Reported: ``still_steps`` (control steps commanded still because no chunk covered them) and smoothness
    (:func:`smoothness`: action jumps at chunk switches vs within chunks, joint setpoint acceleration and jerk)."""
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    d, k_img = int(delay), int(image_delay)
    if d < 0 or k_img < 0:
        raise ValueError(f"delay and image_delay must be >= 0 control steps, got {delay}, {image_delay}")
    adapter = policy if isinstance(policy, _PolicyAdapter) else _PolicyAdapter(policy)
    render = env.cfg.render
    obs = env.reset(task, seed, kind if kind in KINDS else "direct", split, instruction=instruction, render=render)
    seen = [obs]                                    # the last image_delay + 1 observations
    limit = max_steps or env.episode.max_steps
    p0 = np.array([env.body_pose(c.body)[0] for c in env.episode.cubes])
    frames, success, steps, n_plans, still = [], False, 0, 0, 0
    executed, switch, targets = [], [], []
    cam = env.camera("agentview") if record else None
    anchors = None
    if safety is not None:
        safety.reset()
    dt_ns = int(round(env.dt * 1e9))
    t = CLOCK0_NS                                   # the simulated clock (ns), one control period per step
    ex = ChunkExecutor(ExecutorConfig(mode="latest", max_chunk_age_s=3600.0, stale_after_s=3600.0))
    pending = None                                  # (time it can start, chunk) of the plan being "computed"
    next_obs, H, switched = t, None, False

    def take_pending() -> None:
        """The plan being computed becomes the running chunk once its time has come."""
        nonlocal pending, switched
        if pending is not None and t >= pending[0]:
            bad = ex.add_chunk(pending[1], t)
            if bad is not None:
                raise ValueError(f"harness: chunk refused by the executor: {bad}")
            pending, switched = None, True
            if safety is not None:
                up = ex.upcoming(t)
                safety.start_chunk(np.asarray(up.actions, dtype=np.float64))

    while steps < limit and not success:
        take_pending()                              # (a chunk due now frees the planner first)
        if pending is None and t >= next_obs and (loop != "synchronous" or not ex.covers(t)):
            prev, dd, _ = ex.continuation(t, t + d * dt_ns) if loop == "rtc" else (None, 0, t)   # (t is on the grid)
            old = seen[0]                           # images from image_delay steps ago, the state of now
            view = {**obs, **{key: old[key] for key in ("agentview", "wrist") if key in old}}
            acts, anchors = adapter(view, env.instruction, prev_actions=prev, delay=dd, image_age=len(seen) - 1)
            n_plans += 1
            if H is None:
                H = len(acts)
                if loop != "synchronous" and d >= H:
                    raise ValueError(f"delay {d} must be shorter than the chunk ({H} rows) for an asynchronous loop")
            n = len(acts) if loop == "synchronous" else H - d
            n = n if execute_steps is None else max(1, min(int(execute_steps), n))
            # synchronous: the chunk runs from its first row (its n rows); asynchronous: it is indexed from the
            # observation's time and kept whole (a late successor finds it still running)
            sync = loop == "synchronous"
            chunk = np.asarray(acts[:n] if sync else acts, np.float64)
            pending = (t + d * dt_ns, ActionChunkData(chunk, env.dt, stamp_ns=t + d * dt_ns if sync else t))
            next_obs = t + n * dt_ns
        take_pending()                              # (delay 0: the new plan runs at once)
        a = ex.next_action(t)
        if record and "agentview" in obs:
            uv, _ = cam.project_normalized(obs["tcp_pos"])
            frames.append(_draw(obs["agentview"], anchors, uv, adapter.last_keypoints))
        if a is None:
            still += 1
            obs = env.step(np.r_[np.zeros(6), env.gripper_cmd], render=render) if safety is None \
                else safety.step(render)
        else:
            obs = env.step(a, render=render) if safety is None else safety.step(render)
            executed.append(np.asarray(a, dtype=np.float64))
            switch.append(switched)
        switched = False
        targets.append(env.joint_targets())
        seen = (seen + [obs])[-(k_img + 1):]
        steps += 1
        t += dt_ns
        success = env.success()
    p = np.array([env.body_pose(c.body)[0] for c in env.episode.cubes])
    out = {"task": task, "seed": int(seed), "kind": kind, "instruction": env.instruction, "success": bool(success),
           "steps": steps, "plans": n_plans, "still_steps": still, "loop": loop, "delay": d, "image_delay": k_img,
           "final_cube_positions": np.round(p, 6).tolist(),
           "outcome": "success" if success else failure_mode(p0, p, env.episode.target), "frames": frames,
           "smoothness": smoothness(np.array(executed).reshape(-1, 7), np.array(switch, dtype=bool),
                                    np.array(targets).reshape(-1, 7), env.dt)}
    if safety is not None:
        out["safety"] = dict(safety.counts)
    return out


def smoothness(actions: np.ndarray, switch: np.ndarray, joint_targets: np.ndarray, dt: float) -> dict:
    """Action jumps (L2 of consecutive executed ee_delta rows, position part in m) at chunk switches vs within
    chunks, and the commanded joint setpoint's acceleration and jerk (max over joints, rad/s^2, rad/s^3)."""
    out: dict = {}
    if len(actions) > 1:
        jump = np.linalg.norm(np.diff(actions[:, :3], axis=0), axis=1)
        sw = switch[1:]
        out["jump_switch_mean"] = float(jump[sw].mean()) if sw.any() else None
        out["jump_within_mean"] = float(jump[~sw].mean()) if (~sw).any() else None
        out["jump_switch"] = jump[sw].round(6).tolist()
        out["jump_within"] = jump[~sw].round(6).tolist()
    if len(joint_targets) > 3:
        acc = np.abs(np.diff(joint_targets, 2, axis=0)).max(axis=1) / dt ** 2
        jerk = np.abs(np.diff(joint_targets, 3, axis=0)).max(axis=1) / dt ** 3
        out["accel"] = acc.round(4).tolist()
        out["jerk"] = jerk.round(3).tolist()
    return out


FAILURE_MODES = ("target_untouched", "wrong_object", "target_moved_not_placed")


def failure_mode(p0: np.ndarray, p1: np.ndarray, target: int, moved_m: float = 0.02) -> str:
    """Coarse reason of a failed episode from the cubes' start and end positions: the named cube never moved
    (and no other did), another cube moved instead, or the named cube moved but did not end where asked."""
    moved = np.linalg.norm(np.asarray(p1) - np.asarray(p0), axis=1) > moved_m
    if moved[target]:
        return "target_moved_not_placed"
    return "wrong_object" if moved.any() else "target_untouched"


def relative_drop(base: float, other: float) -> float | None:
    """(base - other) / base; None when base is 0."""
    return None if base <= 0 else float((base - other) / base)


def evaluate(policy, cfg: EvalConfig | None = None, env: FrankaTabletopEnv | None = None,
             progress: bool = True, out_json: str | Path | None = None) -> dict:
    """Evaluate ``policy`` over tasks x kinds x seeds; returns (and optionally writes) the JSON report.

    ``policy`` may also be a class with ``needs_env = True`` (e.g. :class:`ExpertPolicy`): it is then
    constructed with the evaluation's environment (privileged policies).
    """
    from tqdm import tqdm

    cfg = cfg or EvalConfig()
    render = cfg.render
    own_env = env is None
    if env is None:
        env = FrankaTabletopEnv(SimConfig(image_size=cfg.image_size, wrist_image_size=cfg.wrist_size, render=render))
    if isinstance(policy, type) and getattr(policy, "needs_env", False):
        policy = policy(env)   # privileged policy classes are built on the evaluation's own env
    if hasattr(policy, "plan") and not env.cfg.render:
        raise ValueError("a plan() policy needs images: EvalConfig.render must be True")
    adapter = _PolicyAdapter(policy)
    safety = None if cfg.safety == "none" else SafetyExecution(env, cfg.safety)
    kinds = list(cfg.kinds) + (["custom"] if cfg.custom_instructions else [])
    jobs = [(t, k, i) for t in cfg.tasks for k in kinds for i in range(int(cfg.episodes_per_kind.get(k, cfg.episodes)))
            if k != "custom" or t in cfg.custom_instructions]
    episodes = []
    for t, k, i in tqdm(jobs, desc="evaluate", unit="ep", disable=not progress):
        seed = cfg.seed + i
        instruction = None
        if k == "custom":
            # the template needs the sampled episode; reset once to fill it, then run with the text
            tmpl = cfg.custom_instructions[t]
            env.reset(t, seed, "direct", cfg.split, render=False)
            instruction = _custom_text(tmpl[i % len(tmpl)], env.episode)
        record = cfg.video_dir is not None and i < cfg.videos_per_task and env.cfg.render
        r = run_episode(env, adapter, t, seed, k, cfg.split, instruction, cfg.execute_steps, cfg.max_steps, record,
                        safety, cfg.loop, cfg.delay, cfg.image_delay)
        if record and r["frames"]:
            name = f"{t}_{k}_seed{seed}_{'ok' if r['success'] else 'fail'}.mp4"
            write_mp4(Path(cfg.video_dir) / name, r["frames"], fps=20)
            r["video"] = str(Path(cfg.video_dir) / name)
        r.pop("frames")
        episodes.append(r)
    report = summarize(episodes)
    for r in report["episodes"]:       # per episode only the summary numbers (the report stays small)
        sm = r.get("smoothness") or {}
        for key in ("accel", "jerk"):
            vals = sm.pop(key, None)
            sm[f"joint_{key}_max"] = max(vals) if vals else None
        sm.pop("jump_switch", None)
        sm.pop("jump_within", None)
    report["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    report["environment"] = run_environment()
    if own_env:
        env.close()
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(report, indent=2))
    return report


def motion_summary(episodes: list[dict]) -> dict:
    """Commanded-still share of all control steps, and smoothness over every episode: the action jump at chunk
    switches vs within chunks (mean, p99), the joint setpoint's acceleration and jerk (p99, max)."""
    steps = sum(int(r.get("steps", 0)) for r in episodes)
    still = sum(int(r.get("still_steps", 0)) for r in episodes)
    cat = lambda key: np.array([x for r in episodes for x in (r.get("smoothness") or {}).get(key) or []])  # noqa: E731
    q = lambda a, p: float(np.percentile(a, p)) if len(a) else None                                       # noqa: E731
    sw, wi, acc, jerk = cat("jump_switch"), cat("jump_within"), cat("accel"), cat("jerk")
    return {"still_fraction": still / steps if steps else None, "still_steps": still, "steps": steps,
            "jump_switch_mean_m": float(sw.mean()) if len(sw) else None, "jump_switch_p99_m": q(sw, 99),
            "jump_within_mean_m": float(wi.mean()) if len(wi) else None, "jump_within_p99_m": q(wi, 99),
            "joint_accel_p99": q(acc, 99), "joint_accel_max": float(acc.max()) if len(acc) else None,
            "joint_jerk_p99": q(jerk, 99), "joint_jerk_max": float(jerk.max()) if len(jerk) else None}


def run_environment() -> dict:
    """What an evaluation's numbers depend on besides the code: library versions, threads, rendering backend."""
    import os
    import platform
    import sys
    from importlib import metadata

    import torch
    versions = {}
    for pkg in ("mujoco", "torch", "numpy", "opencv-python-headless", "transformers", "pin", "gymnasium-robotics"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    # the CPU's instruction set picks torch's kernels (benchmarks/eval_sensitivity.py: another one changes some
    # episodes' step counts and outcomes), so a report names it and the CPU
    from ..machine import cpu_model
    return {"python": sys.version.split()[0], "platform": platform.platform(), "versions": versions,
            "torch_threads": torch.get_num_threads(), "mujoco_gl": os.environ.get("MUJOCO_GL", ""),
            "cpu_count": os.cpu_count(), "cpu": cpu_model(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def summarize(episodes: list[dict]) -> dict:
    """Success per task and kind, per kind overall, and the relative drops from direct."""
    per_task: dict = {}
    per_kind: dict = {}
    for r in episodes:
        per_task.setdefault(r["task"], {}).setdefault(r["kind"], []).append(r["success"])
        per_kind.setdefault(r["kind"], []).append(r["success"])
    rate = lambda xs: float(np.mean(xs)) if xs else 0.0   # noqa: E731
    task_rates = {t: {k: rate(v) for k, v in d.items()} for t, d in per_task.items()}
    kind_rates = {k: rate(v) for k, v in per_kind.items()}
    d = kind_rates.get("direct", 0.0)
    drops = {f"direct_to_{k}": relative_drop(d, kind_rates[k]) for k in kind_rates if k != "direct"}
    outcomes: dict = {}
    for r in episodes:
        if "outcome" in r:
            d = outcomes.setdefault(r["kind"], {m: 0 for m in ("success",) + FAILURE_MODES})
            d[r["outcome"]] = d.get(r["outcome"], 0) + 1
    out = {"success_overall": rate([r["success"] for r in episodes]), "success_per_kind": kind_rates,
           "outcomes_per_kind": outcomes,
           "success_per_task": task_rates, "relative_drop": drops, "num_episodes": len(episodes),
           "episodes": episodes}
    if any("smoothness" in r for r in episodes):
        out["motion"] = motion_summary(episodes)
    if any("safety" in r for r in episodes):      # totals of what the safety filter did
        out["safety"] = {k: int(sum(r.get("safety", {}).get(k, 0) for r in episodes))
                         for k in episodes[0].get("safety", {})}
    return out
