"""Simulated Franka tabletop: expert success per family, determinism, random floor, language splits, camera model,
collected dataset round trip. Physics-only where possible (no rendering)."""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("mujoco")

from semanticvla_core.sim import instructions as ins  # noqa: E402
from semanticvla_core.sim.env import MJ_JOINT_OFFSET, FrankaTabletopEnv, SimConfig  # noqa: E402
from semanticvla_core.sim.evaluation import EvalConfig, ExpertPolicy, RandomPolicy, evaluate  # noqa: E402
from semanticvla_core.sim import expert as expert_mod  # noqa: E402
from semanticvla_core.sim.expert import ScriptedExpert, rollout_expert  # noqa: E402
from semanticvla_core.sim.tasks import TASK_FAMILIES, get_task  # noqa: E402


@pytest.fixture(scope="module")
def env():
    e = FrankaTabletopEnv(SimConfig(render=False))
    yield e
    e.close()


@pytest.mark.parametrize("family", TASK_FAMILIES)
def test_expert_succeeds_on_20_seeds(env, family):
    results = [rollout_expert(env, family, seed, render=False)["success"] for seed in range(20)]
    assert np.mean(results) >= 0.95, f"{family}: expert {sum(results)}/20"


def test_slower_expert_takes_smaller_steps_and_still_succeeds(env):
    """rollout_expert(speed=): the demo recipe's slowed expert (0.01 m per step) moves at most that far per
    action, takes longer episodes, and still solves the task."""
    fast = [rollout_expert(env, "pick_place_plate", s, render=False) for s in range(5)]
    slow = [rollout_expert(env, "pick_place_plate", s, render=False, speed=0.01) for s in range(5)]
    assert all(r["success"] for r in fast + slow)
    assert np.mean([r["steps"] for r in slow]) > 1.3 * np.mean([r["steps"] for r in fast])   # (the joint budgets bind first)
    assert max(np.linalg.norm(r["actions"][:, :3], axis=1).max() for r in slow) <= 0.01 + 1e-6
    assert max(np.linalg.norm(r["actions"][:, :3], axis=1).max() for r in fast) > 0.02
    with pytest.raises(ValueError, match="speed"):
        rollout_expert(env, "pick_place_plate", 0, render=False, speed=0.0)


def _run_expert_with(env, seed: int, recover: bool, when, disturb, limit: int = 200) -> tuple[bool, ScriptedExpert]:
    """Run the pick-and-place expert; the first time ``when(expert)`` holds, ``disturb(env)`` moves the cube."""
    env.reset("pick_place_plate", seed, render=False)
    ex = ScriptedExpert(env, recover=recover)
    ex.max_step, ex.carry_step = 0.01, 0.01
    done = False
    for _ in range(limit):
        a = ex.act()
        if not done and when(ex):
            disturb(env)
            done = True
        env.step(a, render=False)
        if env.success() and ex.done:
            return True, ex
    assert done, "the disturbance never happened"
    return False, ex


def _target(env) -> str:
    return env.episode.cubes[env.episode.target].body


def test_expert_grasps_again_when_the_cube_is_pushed_before_the_grasp(env):
    """A cube moved 3.5 cm across the finger axis while the hand descends: the recovering expert plans the grasp
    again from where the cube lies and places it; without recovery the planned grasp closes on nothing."""
    def when(ex):
        return ex.phase == 1 and env.tcp_pose()[0][2] < 0.10

    def disturb(e):
        pos, R = e.body_pose(_target(e))
        hand_x = e.tcp_pose()[1][:, 0]
        e.set_free_body(_target(e), pos + 0.035 * np.r_[hand_x[:2] / np.linalg.norm(hand_x[:2]), 0.0],
                        expert_mod.cube_yaw(R))

    ok, ex = _run_expert_with(env, 2, True, when, disturb)
    assert ok and ex.recoveries == 1
    ok, ex = _run_expert_with(env, 2, False, when, disturb)
    assert not ok and ex.recoveries == 0


def test_expert_reopens_and_grasps_again_when_the_cube_leaves_the_hand(env):
    """The cube taken out of the closed hand while it carries (put back on the table where it was grasped): the
    recovering expert notices the empty hand, opens, rises and grasps again; without recovery it places air."""
    start = {}

    def when(ex):
        if ex.phase == 0 and "xy" not in start:
            start["xy"] = env.body_pose(_target(env))[0][:2].copy()
        return ex.phase == 4 and env.tcp_pose()[0][2] > 0.15

    def disturb(e):
        e.set_free_body(_target(e), np.r_[start["xy"], expert_mod.CUBE_HALF],
                        expert_mod.cube_yaw(e.body_pose(_target(e))[1]))

    ok, ex = _run_expert_with(env, 4, True, when, disturb, limit=260)
    assert ok and ex.recoveries == 1
    start.clear()
    ok, ex = _run_expert_with(env, 4, False, when, disturb, limit=260)
    assert not ok


def test_noisy_demonstrations_contain_missed_grasps_labelled_with_the_recovery(env, monkeypatch):
    """With action noise, an episode may get one executed grasp miss (``_GraspBlunder``: the hand closes beside
    the cube and rises): the recorded actions at those states say "open" and the episode still succeeds."""
    monkeypatch.setattr(expert_mod, "MISS_P", 1.0)
    ep = rollout_expert(env, "pick_place_plate", 5, render=False, speed=0.01, action_noise=0.01)
    assert ep["success"]
    fingers = ep["states"][:, 7:9].sum(axis=1)
    empty_closed = fingers < 0.03                # closed on nothing (a held 5 cm cube keeps them at ~0.05)
    assert empty_closed.any()
    assert (ep["actions"][empty_closed, 6] < 0.5).any()     # the label there: open the hand
    monkeypatch.setattr(expert_mod, "MISS_P", 0.0)
    clean = rollout_expert(env, "pick_place_plate", 5, render=False, speed=0.01, action_noise=0.01)
    assert clean["success"] and not (clean["states"][:, 7:9].sum(axis=1) < 0.03).any()


def test_action_noise_pushes_the_hand_off_course_and_keeps_the_experts_labels(env):
    """rollout_expert(action_noise=): bursts of pushes move the executed hand further per step than the expert's
    cap and off the clean path, while the recorded actions stay the expert's capped corrections; the episode
    still succeeds and the same seed gives the same episode."""
    clean = rollout_expert(env, "pick_place_plate", 3, render=False, speed=0.01)
    noisy = rollout_expert(env, "pick_place_plate", 3, render=False, speed=0.01, action_noise=0.01)
    again = rollout_expert(env, "pick_place_plate", 3, render=False, speed=0.01, action_noise=0.01)
    assert clean["success"] and noisy["success"]
    np.testing.assert_array_equal(noisy["actions"], again["actions"])
    assert np.linalg.norm(noisy["actions"][:, :3], axis=1).max() <= 0.01 + 1e-6       # labels: the expert's own
    moved = np.linalg.norm(np.diff(noisy["tcp"], axis=0), axis=1)
    assert moved.max() > 0.0125                                                         # executed: pushed further
    n = min(len(clean["tcp"]), len(noisy["tcp"]))
    assert np.linalg.norm(noisy["tcp"][:n] - clean["tcp"][:n], axis=1).max() > 0.01    # off the clean path
    with pytest.raises(ValueError, match="action_noise"):
        rollout_expert(env, "pick_place_plate", 0, render=False, action_noise=-1.0)



def test_tcp_targets_of_an_expert_chunk_replay_the_same_motion(env):
    """robot_state.deltas_to_tcp_targets / tcp_targets_to_deltas (the decoder's action_frame="tcp_pose"): the
    first target is the pose the simulator steers to for the first action, the conversion round-trips, and the
    ee_delta chunk rebuilt from the targets drives the arm exactly as the expert's chunk did."""
    from semanticvla_core.robot_state import deltas_to_tcp_targets, tcp_targets_to_deltas

    def run(actions):
        obs = env.reset("pick_place_plate", 4, "direct", "train", render=False)
        for a in actions:
            obs = env.step(a, render=False)
        return obs["state"]

    obs = env.reset("pick_place_plate", 4, "direct", "train", render=False)
    state0, expert = obs["state"], ExpertPolicy(env)
    acts = []
    for _ in range(8):
        acts.append(expert(obs, env.instruction))
        obs = env.step(acts[-1], render=False)
    acts = np.array(acts)
    targets = deltas_to_tcp_targets(state0, acts)
    np.testing.assert_allclose(targets[0, :3], state0[9:12] + acts[0, :3], atol=1e-6)   # the env's first target
    np.testing.assert_allclose(targets[:, 6], np.clip(acts[:, 6], 0, 1))
    back = tcp_targets_to_deltas(state0, targets)
    np.testing.assert_allclose(back, acts, atol=1e-9)
    np.testing.assert_allclose(run(back), obs["state"], atol=1e-9)
    assert np.linalg.norm(obs["state"][9:12] - state0[9:12]) > 0.03     # the chunk really moved the arm


def test_same_seed_same_episode_and_report(env):
    a = rollout_expert(env, "pick_place_plate", 7, render=False)
    b = rollout_expert(env, "pick_place_plate", 7, render=False)
    assert a["instruction"] == b["instruction"]
    np.testing.assert_array_equal(a["actions"], b["actions"])
    np.testing.assert_array_equal(a["states"], b["states"])
    c = rollout_expert(env, "pick_place_plate", 8, render=False)
    assert not np.array_equal(a["actions"][:5], c["actions"][:5])
    cfg = EvalConfig(tasks=("stack", "push_region"), kinds=("direct", "reasoning"), episodes=2, render=False)
    r1 = evaluate(ExpertPolicy, cfg, env=env, progress=False)
    r2 = evaluate(ExpertPolicy, cfg, env=env, progress=False)
    assert json.dumps(r1, sort_keys=True) == json.dumps(r2, sort_keys=True)
    assert r1["success_overall"] >= 0.75
    # per-kind episode counts: the first seeds are shared, so the kinds stay paired
    cfg = EvalConfig(tasks=("stack",), kinds=("direct", "reasoning"), episodes=1, episodes_per_kind={"direct": 2},
                     render=False)
    r3 = evaluate(ExpertPolicy, cfg, env=env, progress=False)
    assert [(e["kind"], e["seed"]) for e in r3["episodes"]] == [("direct", 100000), ("direct", 100001),
                                                                ("reasoning", 100000)]


@pytest.mark.parametrize("mode", ["cartesian", "stepwise", "trajectory"])
def test_expert_succeeds_through_the_safety_filter(env, mode):
    """EvalConfig.safety: every action goes through the safety filter's checks and its execution mode; the
    closed-loop expert still solves its episodes, and the report counts what the filter saw."""
    cfg = EvalConfig(tasks=("pick_place_plate",), kinds=("direct",), episodes=3, render=False, safety=mode)
    rep = evaluate(ExpertPolicy, cfg, env=env, progress=False)
    assert rep["success_overall"] == 1.0, rep["outcomes_per_kind"]
    steps = sum(e["steps"] for e in rep["episodes"])
    assert rep["safety"]["chunks"] == steps and rep["safety"]["rejected"] == 0   # the expert plans every step
    assert all(e["safety"]["chunks"] == e["steps"] for e in rep["episodes"])
    with pytest.raises(ValueError, match="safety"):
        evaluate(ExpertPolicy, EvalConfig(tasks=("pick_place_plate",), episodes=1, render=False, safety="bogus"),
                 env=env, progress=False)


def test_random_policy_scores_near_zero(env):
    cfg = EvalConfig(tasks=TASK_FAMILIES, kinds=("direct",), episodes=3, max_steps=120, render=False)
    rep = evaluate(RandomPolicy(0), cfg, env=env, progress=False)
    assert rep["num_episodes"] == 12
    assert rep["success_overall"] <= 1 / 12
    assert sum(rep["outcomes_per_kind"]["direct"].values()) == 12


def test_failure_modes_from_cube_positions():
    from semanticvla_core.sim.evaluation import failure_mode
    p0 = np.array([[0.4, 0.0, 0.02], [0.5, 0.1, 0.02]])
    assert failure_mode(p0, p0 + 0.001, 0) == "target_untouched"
    assert failure_mode(p0, p0 + [[0, 0, 0], [0.05, 0, 0]], 0) == "wrong_object"
    assert failure_mode(p0, p0 + [[0.1, 0, 0], [0.05, 0, 0]], 0) == "target_moved_not_placed"


def test_instruction_splits_disjoint_and_kinds_differ():
    rng = np.random.default_rng(0)
    for fam in TASK_FAMILIES:
        task = get_task(fam)
        for kind in ins.KINDS:
            fixed_train = {ins.template_fixed_text(t) for t in ins.TEMPLATES[fam][kind]["train"]}
            fixed_eval = {ins.template_fixed_text(t) for t in ins.TEMPLATES[fam][kind]["eval"]}
            assert not fixed_train & fixed_eval
            seen = {"train": set(), "eval": set()}
            for s in range(150):
                ep = task.sample(np.random.default_rng(s))
                for split in ins.SPLITS:
                    seen[split].add(task.instruction(ep, kind, split, rng))
            assert len(seen["train"]) > 10 and len(seen["eval"]) > 10
            assert not seen["train"] & seen["eval"], f"{fam}/{kind}: shared phrasings"
    for split in ins.SPLITS:   # vocabularies are split too
        other = "eval" if split == "train" else "train"
        for c, words in ins.COLOR_SYNONYMS[split].items():
            assert not set(words) & set(ins.COLOR_SYNONYMS[other][c])
    ep = get_task("pick_place_plate").sample(np.random.default_rng(3))
    txt = get_task("pick_place_plate").instruction(ep, "reasoning", "train", np.random.default_rng(1))
    assert ep.dests[ep.dest].color not in txt.split("plate")[-1]   # the plate is named by its label puzzle


def test_label_puzzles_evaluate_to_the_label():
    rng = np.random.default_rng(0)
    for _ in range(200):
        for label in "123456789":
            for split in ins.SPLITS:
                q = ins.label_puzzle(label, split, rng)
                expr = q.replace("the answer to ", "").replace("the result of ", "").replace(" times ", "*") \
                    .replace(" minus ", "-")
                assert eval(expr) == int(label), q   # noqa: S307 - our own generated arithmetic


def test_tcp_projection_lands_on_the_rendered_gripper():
    e = FrankaTabletopEnv(SimConfig(image_size=128, render=True))
    try:
        e.reset("pick_place_plate", 3)
        for _ in range(6):
            e.step(np.array([0.01, 0.012, -0.02, 0, 0, 0.05, 0]))
        e.set_marker_visible(True)
        for name in ("agentview", "wrist"):
            img = e.render(name).astype(int)
            cam = e.camera(name)
            uv, vis = cam.project_normalized(e.tcp_pose()[0])
            assert vis
            magenta = (img[..., 0] > 180) & (img[..., 2] > 180) & (img[..., 1] < 90)
            assert magenta.sum() > 3, f"{name}: marker not visible"
            ys, xs = np.nonzero(magenta)
            centroid = np.array([xs.mean(), ys.mean()])
            px = uv * np.array([cam.width, cam.height]) - 0.5
            assert np.linalg.norm(centroid - px) < 2.0, f"{name}: projected {px}, marker at {centroid}"
    finally:
        e.close()


def test_collected_dataset_loads_and_traces_overlay_gripper(tmp_path):
    pytest.importorskip("av")
    from semanticvla_core.camera import PinholeCamera
    from semanticvla_core.data.lerobot_v3 import LeRobotV3Dataset
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "collect_demos", Path(__file__).resolve().parents[1] / "training" / "collect_demos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    collect = mod.collect

    out = tmp_path / "ds"
    s = collect("pick_place_plate", 2, out, workers=1, image_size=96, wrist_size=64, seed=0, progress=False)
    assert s["episodes"] == 2
    ds = LeRobotV3Dataset(out)
    assert ds.num_episodes == 2 and len(ds) == s["frames"]
    cams = json.loads((out / "meta" / "cameras.json").read_text())
    cam = PinholeCamera.from_dict(cams["observation.images.agentview"])
    assert cam.width == 96
    f = ds[5]
    assert f["observation.images.agentview"].shape == (96, 96, 3)
    assert f["observation.state"].shape == (15,) and f["action"].shape == (7,)
    # the first trace point is the projected TCP of that frame
    uv0 = cam.project_normalized(np.asarray(f["observation.ee_pos"], dtype=np.float64))[0]
    np.testing.assert_allclose([f["trace.x"][0], f["trace.y"][0]], uv0, atol=1e-5)
    assert bool(np.asarray(f["trace.present"]).reshape(-1)[0])
    # and it lies on the gripper: the rendered pixel there is the light-grey robot, not the table
    x, y = np.round(uv0 * 96 - 0.5).astype(int)
    patch = np.asarray(f["observation.images.agentview"])[max(0, y - 5):y + 6, max(0, x - 5):x + 6].astype(int)
    grey = (patch.min(axis=-1) > 150) & (np.ptp(patch, axis=-1) < 40)
    assert grey.any(), f"no gripper pixels around the trace point {x, y}"
    # an overlay to look at (trace window in cyan, current TCP in magenta)
    import cv2
    img = np.ascontiguousarray(np.asarray(f["observation.images.agentview"])).copy()
    for k, (u, v) in enumerate(zip(np.asarray(f["trace.x"]), np.asarray(f["trace.y"]))):
        cv2.circle(img, (int(round(u * 96 - 0.5)), int(round(v * 96 - 0.5))), 1, (255, 0, 255) if k == 0 else (0, 255, 255), -1)
    cv2.imwrite(str(tmp_path / "trace_overlay.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

    # the wrist camera's rigid mount travels in cameras.json, and the wrist keypoint targets computed from it
    # (ActionDataset.keypoint_targets) sit on the named cube in the wrist images before the grasp
    from semanticvla_core.data.pipelines import ActionDataset
    from semanticvla_core.sim.tasks import COLORS
    env = FrankaTabletopEnv(SimConfig(render=False))
    np.testing.assert_allclose(cams["observation.images.wrist"]["T_tcp_cam"], env.wrist_mount(), atol=1e-9)
    env.reset("pick_place_plate", 0, "direct", "train", render=False)       # episode 0 = seed 0, direct
    rgb = np.array(COLORS[env.episode.cubes[env.episode.target].color]) * 255
    kp = ActionDataset(out, image_size=32, horizon=4).keypoint_targets()
    L = ds.episode_length(0)
    acts = np.stack([ds[t]["action"] for t in range(L)])
    tg = int(np.argmax(acts[:, 6] > 0.5))
    hits, n = 0, 0
    for t in range(max(0, tg - 15), tg):
        if not kp["wrist_keypoint_valid"][t, 0]:
            continue
        x, y = np.round(kp["wrist_keypoint_uv"][t, 0] * 64 - 0.5).astype(int)
        patch = np.asarray(ds[t]["observation.images.wrist"])[max(0, y - 3):y + 4, max(0, x - 3):x + 4].astype(float)
        hits += bool((np.linalg.norm(patch - rgb, axis=-1) < 90).any())
        n += 1
    assert n >= 5 and hits >= 0.8 * n, (hits, n)


class _ExpertPlanPolicy:
    """A plan()-interface policy (privileged): one-row chunks from the expert, anchors = the projected TCP target."""

    needs_env = True

    def __init__(self, env):
        self.env, self.inner = env, ExpertPolicy(env)

    def plan(self, images, instruction, state=None):
        assert images.ndim == 4 and images.shape[-1] == 3 and state.shape == (1, 15)
        from types import SimpleNamespace
        acts = np.array([self.inner({}, instruction)])
        p, _ = self.env.tcp_pose()
        pts = p + np.cumsum(np.repeat(acts[:, :3], 4, axis=0), axis=0)
        uv, _ = self.env.camera("agentview").project_normalized(pts)
        return SimpleNamespace(actions=acts[None].astype(np.float32), anchors=np.clip(uv, 0, 1)[None])


def test_plan_interface_policy_with_videos_and_custom_instructions(tmp_path):
    import av

    from semanticvla_core.sim.evaluation import load_custom_instructions
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps({"pick_place_plate": ["shift the {obj_color} cube to the plate marked {dest_label}"]}))
    cfg = EvalConfig(tasks=("pick_place_plate",), kinds=("direct",), episodes=1, seed=5, image_size=96,
                     video_dir=str(tmp_path / "videos"), videos_per_task=1,
                     custom_instructions=load_custom_instructions(custom))
    rep = evaluate(_ExpertPlanPolicy, cfg, progress=False, out_json=tmp_path / "report.json")
    assert rep["success_per_task"]["pick_place_plate"] == {"direct": 1.0, "custom": 1.0}
    custom_ep = [e for e in rep["episodes"] if e["kind"] == "custom"][0]
    assert custom_ep["instruction"].startswith("shift the ") and "{" not in custom_ep["instruction"]
    assert json.loads((tmp_path / "report.json").read_text())["num_episodes"] == 2
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 2
    with av.open(str(videos[0])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) > 10 and frames[0].shape == (96, 96, 3)
    import cv2
    cv2.imwrite(str(tmp_path / "video_frame.png"), cv2.cvtColor(frames[len(frames) // 2], cv2.COLOR_RGB2BGR))


def test_joint_target_path_and_rendering_are_deterministic():
    from semanticvla_core.sim.env import R_DOWN
    e = FrankaTabletopEnv(SimConfig(image_size=64, wrist_image_size=64, render=True))
    try:
        o1 = e.reset("stack", 4)
        o2 = e.reset("stack", 4)
        np.testing.assert_array_equal(o1["agentview"], o2["agentview"])
        np.testing.assert_array_equal(o1["wrist"], o2["wrist"])
        # the ROS sim node's path: joint targets from IK, stepped until the TCP is there
        goal = np.array([0.55, -0.1, 0.2])
        q = e.solve_ik(goal, R_DOWN, iters=100)
        for _ in range(20):
            e.step_joint_targets(q, 1.0)
        np.testing.assert_allclose(e.joint_positions(), q, atol=5e-3)
        assert np.linalg.norm(e.tcp_pose()[0] - goal) < 5e-3
        assert e.finger_positions().max() < 0.005          # gripper command 1 = closed
        with pytest.raises(ValueError, match="q_target"):
            e.step_joint_targets(np.zeros(6), 0.0)
        with pytest.raises(ValueError, match="NaN"):
            e.step(np.full(7, np.nan))
    finally:
        e.close()


def test_sim_kinematics_match_urdf():
    """The simulator's joints are in the Franka/URDF convention: Pinocchio's FK of the URDF (what the safety
    filter checks) puts the TCP where MuJoCo does, and the state vector is the same function of both."""
    from semanticvla_core.robot_state import state_from_joints
    from semanticvla_core.safety.kinematics import PandaKinematics

    kin = PandaKinematics()
    e = FrankaTabletopEnv(SimConfig(render=False))
    rng = np.random.default_rng(0)
    for _ in range(5):
        q = np.clip(e.joint_positions() + rng.normal(0, 0.3, 7), kin.lower + 0.05, kin.upper - 0.05)
        e.data.qpos[e._arm_qadr] = q + MJ_JOINT_OFFSET
        e.mj.mj_forward(e.model, e.data)
        np.testing.assert_allclose(e.joint_positions(), q, atol=1e-12)
        p_mj, R_mj = e.tcp_pose()
        p_pin, R_pin = kin.fk(q)
        assert np.linalg.norm(p_mj - p_pin) < 3e-3, (p_mj, p_pin)
        assert np.abs(R_mj - R_pin).max() < 1e-2
        np.testing.assert_allclose(e.state(), state_from_joints(q, e.finger_positions(), kin), atol=1e-2)


def test_video_overlay_marks_the_policys_object_and_destination_keypoints():
    from semanticvla_core.sim.evaluation import _draw
    img = _draw(np.zeros((128, 128, 3), np.uint8), None, None, keypoints=np.array([[0.25, 0.25], [0.75, 0.5]]))
    green = np.argwhere((img[..., 1] == 255) & (img[..., 0] == 0))
    orange = np.argwhere((img[..., 0] == 255) & (img[..., 1] == 140))
    np.testing.assert_allclose(green.mean(0), [31.5, 31.5], atol=1.0)     # (row, col) ring centre
    np.testing.assert_allclose(orange.mean(0), [63.5, 95.5], atol=1.0)
    assert np.array_equal(_draw(np.zeros((8, 8, 3), np.uint8), None, None), np.zeros((8, 8, 3), np.uint8))


def test_shipped_demo_checkpoint_loads_and_locates_the_named_cube():
    """checkpoints/demo (what the README's main command runs): loads from JSON + safetensors, plans on a live
    simulated observation, and its language keypoint for the named cube lands near that cube (the measured
    mean error on held-out layouts is ~4 px at 128 px; a policy that does not locate it is ~40 px off)."""
    from pathlib import Path

    from semanticvla_core.policy import SemanticVLAPolicy
    ckpt = Path(__file__).resolve().parents[1] / "checkpoints" / "demo"
    assert not list(ckpt.rglob("*.bin")) and not list(ckpt.rglob("*.pt")) and not list(ckpt.rglob("*.pkl"))
    pol = SemanticVLAPolicy.from_pretrained(ckpt)
    env = FrankaTabletopEnv(SimConfig(image_size=128, wrist_image_size=96))
    errs = []
    for seed in (100000, 100001, 100002):
        obs = env.reset(get_task("pick_place_plate"), seed, "direct", "eval")
        out = pol.plan(obs["agentview"][None], env.instruction, state=obs["state"][None], wrist=obs["wrist"][None])
        assert out.actions.shape == (1, 8, 7) and np.isfinite(out.actions).all()
        cube = env.body_pose(env.episode.cubes[env.episode.target].body)[0]
        uv, _ = env.camera("agentview").project_normalized(cube)
        errs.append(np.linalg.norm(out.keypoints[0, 0] - uv) * obs["agentview"].shape[1])
    env.close()
    print("named-cube keypoint error [px]:", np.round(errs, 1))
    assert np.median(errs) < 12


def test_safety_rest_posture_is_the_sims_home_posture(env):
    from semanticvla_core.safety.kinematics import PANDA_REST_Q
    np.testing.assert_allclose(env.home_q - MJ_JOINT_OFFSET, PANDA_REST_Q, atol=1e-3)


def test_row_execution_moves_like_the_demonstrations(env):
    """ee_delta rows run one per period relative to the measured TCP (the safety filter's ``stepwise`` and
    ``cartesian``) end where env.step() (how every demonstration was recorded) ends; the open-loop trajectory of the
    same chunk does not. In ``cartesian`` mode the joint setpoint the filter checked is the one the sim's Cartesian
    controller commands (the same controller code on the filter's model of the arm)."""
    from semanticvla_core.interfaces import ActionChunkData
    from semanticvla_core.safety import BuiltinSafetyChecker, SafetyConfig
    from semanticvla_core.safety.execution import SafetyExecutor
    from semanticvla_core.sim.arm import SimArm

    chk = BuiltinSafetyChecker(SafetyConfig(gripper="sim"))
    acts = np.zeros((8, 7)); acts[:, 0] = 0.008; acts[:, 2] = -0.006

    def moved(mode):
        env.reset("pick_place_plate", 3, render=False)
        p0 = env.tcp_pose()[0]
        if mode == "demonstrations":
            for a in acts:
                env.step(a, render=False)
            return env.tcp_pose()[0] - p0
        arm, ex, t0, ran = SimArm(env), SafetyExecutor(chk, mode), 10**12, []
        arm.reset()
        assert ex.admit(ActionChunkData(acts, 0.05, stamp_ns=t0), env.joint_positions(), 0.0, t0).ok
        for k in range(10):                          # two ticks more than rows: the used-up chunk runs nothing
            t = t0 + k * 50_000_000
            cmd = ex.tick(env.joint_positions(), env.gripper_cmd, t)
            if cmd is not None:
                assert not cmd.is_hold, [str(v) for v in cmd.reasons]
                if cmd.row is not None:
                    ran.append(cmd.row)
                else:                                 # the chunk is used up: the setpoint brakes to rest
                    assert mode == "trajectory" or (k >= 8 and not cmd.reasons)
                arm.command(cmd)
            arm.tick(t)
            if mode == "cartesian" and cmd is not None and cmd.kind == "ee_delta":   # checked == commanded setpoint
                np.testing.assert_allclose(env.joint_targets(), cmd.positions[0], atol=1e-3)   # URDF vs MJCF: ~0.2 mm
        if mode != "trajectory":
            assert ran == list(range(8))
        return env.tcp_pose()[0] - p0          # the rows, then the setpoint braked to rest (two more periods)

    demo, cart, step, traj = moved("demonstrations"), moved("cartesian"), moved("stepwise"), moved("trajectory")
    np.testing.assert_allclose(cart, demo, atol=8e-3)   # (the last rows slow down so that the arm ends at rest)
    assert np.abs(step - demo).max() < 8e-3, (demo, step)
    assert np.abs(traj - demo).max() > 4e-3, (demo, traj)


class _RowPolicy:
    """A plan() policy whose chunk k has row i = (0, 0, 0, 0, 0, 0, 0) + code k*100 + i in column 5 (a tiny rotation
    about z, harmless), so what ran is readable; records the real-time-chunking inputs it was given."""

    def __init__(self):
        self.calls = []

    def plan(self, images, instruction, state=None, prev_actions=None, delay=0):
        from types import SimpleNamespace
        k = len(self.calls)
        self.calls.append((None if prev_actions is None else np.asarray(prev_actions).copy(), int(delay)))
        acts = np.zeros((8, 7))
        acts[:, 5] = 1e-6 * (100 * (k + 1) + np.arange(8))
        return SimpleNamespace(actions=acts[None].astype(np.float64), anchors=None)


@pytest.mark.parametrize("loop,d", [("synchronous", 2), ("naive", 2), ("rtc", 2), ("rtc", 4)])
def test_run_time_loops_with_a_planning_delay(loop, d):
    """The harness's run-time loops with a 2-step planning delay: synchronous holds still 2 steps per plan and runs
    every chunk from row 0; naive and rtc hold only before the first plan, then switch at the row for the time
    (rows 2..7, a new observation every 6 steps); rtc hands the planner the running chunk's rows from the
    observation's time (rows 6, 7) and the delay 2."""
    from semanticvla_core.sim.evaluation import run_episode
    env = FrankaTabletopEnv(SimConfig(image_size=64, wrist_image_size=64))
    ran = []
    step = env.step
    env.step = lambda a, render=None: (ran.append(np.asarray(a, dtype=np.float64).copy()), step(a, render))[1]
    pol = _RowPolicy()
    r = run_episode(env, pol, "pick_place_plate", 3, "direct", loop=loop, delay=d, max_steps=26)
    env.close()
    code = [int(round(a[5] * 1e6)) for a in ran]          # 0 = commanded still
    if loop == "synchronous":
        assert code[:12] == [0, 0] + [100 + i for i in range(8)] + [0, 0]
        assert r["still_steps"] == 6 and r["plans"] == 3
        assert all(c[0] is None for c in pol.calls)
    else:
        s = 8 - d                                           # rows per plan: a new observation every s steps
        want = [0] * d + [100 * k + i for k in range(1, 8) for i in range(d, 8)]
        assert code == want[:26]
        assert r["still_steps"] == d and r["plans"] == len(range(0, 26, s))
        if loop == "naive":
            assert all(c[0] is None for c in pol.calls)
        else:
            assert pol.calls[0][0] is None
            for k in (1, 2, 3):
                prev, dd = pol.calls[k]
                assert dd == d and [int(round(x * 1e6)) for x in prev[:, 5]] == [100 * k + i for i in range(s, 8)]


def test_sim_joint_ranges_are_the_real_pandas_and_trajectory_setpoints_are_interpolated():
    """The MuJoCo arm stops where the real Panda stops (datasheet limits, also the actuators' control range), and
    with interpolate_setpoint a joint-trajectory step moves the setpoint linearly over the period's physics steps,
    not in one jump."""
    from semanticvla_core.safety.limits import PANDA_POSITION_LOWER, PANDA_POSITION_UPPER
    e = FrankaTabletopEnv(SimConfig(render=False, interpolate_setpoint=True))
    lo, hi = (e._jnt_range - MJ_JOINT_OFFSET[:, None]).T
    np.testing.assert_allclose(lo, PANDA_POSITION_LOWER, atol=1e-9)
    np.testing.assert_allclose(hi, PANDA_POSITION_UPPER, atol=1e-9)
    np.testing.assert_allclose(e.model.actuator_ctrlrange[:7], e._jnt_range, atol=1e-9)
    e.reset(get_task("pick_place_plate"), 0, "direct", "eval", render=False)
    q0 = e.joint_targets()
    target = q0.copy(); target[6] -= 0.1
    seen = []
    e.substep_hook = lambda env: seen.append(env.joint_targets()[6])
    e.step_joint_targets(target, 0.0)
    e.substep_hook = None
    seen = np.array(seen)
    assert len(seen) == e.substeps and np.all(np.diff(seen) < 0)
    np.testing.assert_allclose(seen[len(seen) // 2 - 1], q0[6] - 0.1 * (len(seen) // 2) / len(seen), atol=1e-9)
    np.testing.assert_allclose(seen[-1], target[6], atol=1e-12)
    e.close()


def test_custom_instruction_files_name_unknown_placeholders_before_anything_runs(tmp_path):
    from semanticvla_core.sim.evaluation import load_custom_instructions
    f = tmp_path / "custom.json"
    f.write_text(json.dumps({"pick_place_plate": ["move the {target_color} cube to {dest_label}"]}))
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) \{target_color\}; allowed: \{obj_color\}"):
        load_custom_instructions(f)
    f.write_text(json.dumps({"pick_place_plate": ["move the {obj_color cube"]}))
    with pytest.raises(ValueError, match="not a valid template"):
        load_custom_instructions(f)
    f.write_text(json.dumps({"pick_place_plate": ["move the {obj_color} cube onto {{the}} {dest_label}"]}))
    assert load_custom_instructions(f)["pick_place_plate"]


def test_shipped_checkpoint_reproduces_its_recorded_episodes():
    """Reproducibility: three recorded episodes of checkpoints/demo/eval.json (the shipped checkpoint's evaluation)
    run again here, with the loop, threads and rendering backend the report records, end the same way after the
    same number of steps (pinned libraries: requirements/; an unpinned install changed outcomes)."""
    from pathlib import Path

    import torch

    from semanticvla_core.policy import SemanticVLAPolicy
    from semanticvla_core.sim.evaluation import run_episode
    ckpt = Path(__file__).resolve().parents[1] / "checkpoints" / "demo"
    rep = json.loads((ckpt / "eval.json").read_text())
    cfg = rep["config"]
    env_rec = rep.get("environment", {})
    cap = env_rec.get("torch_cpu_capability")
    if cap and cap != torch.backends.cpu.get_cpu_capability():
        # other kernels sum in another order: a closed loop makes some episodes end differently (BENCHMARKS.md,
        # "Reproducibility"); the success rate reproduces within its interval, episode by episode only on this CPU kind
        pytest.skip(f"eval.json was recorded with torch's {cap} kernels; this CPU runs "
                    f"{torch.backends.cpu.get_cpu_capability()}")
    threads = torch.get_num_threads()
    torch.set_num_threads(int(env_rec.get("torch_threads", 2)))
    try:
        pol = SemanticVLAPolicy.from_pretrained(ckpt)
        env = FrankaTabletopEnv(SimConfig(image_size=cfg["image_size"], wrist_image_size=cfg["wrist_size"]))
        recorded = sorted(rep["episodes"], key=lambda e: e["seed"])[:3]
        for e in recorded:
            r = run_episode(env, pol, e["task"], e["seed"], e["kind"], cfg["split"], loop=cfg.get("loop", "synchronous"),
                            delay=cfg.get("delay", 0), image_delay=cfg.get("image_delay", 0))
            assert (r["success"], r["steps"]) == (e["success"], e["steps"]), (e["seed"], r["steps"], e["steps"])
        env.close()
    finally:
        torch.set_num_threads(threads)
