"""The safety filter checks the motion the arm really performs (issue: unsafe motion admitted between rows, SRDF pairs,
unnormalized rotations, the sim's finger pads, malformed inputs, unbounded check time). Each test here fails when the
corresponding fix is reverted."""
from __future__ import annotations

import re

import numpy as np
import pytest

from semanticvla_core.actions import ACTION_SPACE_JOINT_POSITION, clip_ee_delta, normalize_rotvec, rotvec_to_matrix
from semanticvla_core.interfaces import ActionChunkData
from semanticvla_core.safety import READY_Q, BuiltinSafetyChecker, SafetyConfig, ViolationKind as K
from semanticvla_core.safety.execution import SafetyExecutor
from semanticvla_core.safety.limits import PANDA_ACCEL_LIMITS, PANDA_VELOCITY_LIMITS

LONG = 5.0   # check time budget of checkers whose tests are about verdicts, not time (a loaded CI box)
NOW = 10**12


def _chunk(actions, dt=0.05, space="ee_delta_xyz_rotvec_gripper", stamp=NOW):
    return ActionChunkData(np.asarray(actions, dtype=np.float64), dt, space, stamp_ns=stamp)


@pytest.fixture(scope="module")
def checker():
    return BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG))


def _truly_colliding(c: BuiltinSafetyChecker, q, g=0.0) -> list:
    """Brute force, no clearance: every pair coal finds in contact (the independent opinion here)."""
    import pinocchio as pin

    gm = c.geom_model
    gd = pin.GeometryData(gm)
    for k in range(len(gm.collisionPairs)):
        gd.collisionRequests[k].security_margin = 0.0
    pin.computeCollisions(c.kin.model, c.kin.data, gm, gd, c.kin.full_q(np.asarray(q, float), g), False)
    return [(gm.geometryObjects[p.first].name, gm.geometryObjects[p.second].name)
            for k, p in enumerate(gm.collisionPairs) if gd.collisionResults[k].isCollision()]


# found by sampling (see the module text): both ends clear of the table, the joint-linear path between dips into it
DIP_START = np.array([0.0026, 0.202, 0.001, -2.9599, 0.0129, 3.162, 0.7761])   # TCP 3 cm above the table
DIP_DELTA = np.array([0.389, 0.0, 0.161, 0.0, 0.591, -0.598, 0.0])


def test_collision_between_rows_is_found(checker):
    qa, qb = DIP_START, DIP_START + DIP_DELTA
    assert checker.check_state(qa) == [] and checker.check_state(qb) == []           # both rows are clear
    fr = np.linspace(0, 1, 201)
    assert any(_truly_colliding(checker, qa + f * DIP_DELTA) for f in fr)            # the path is not
    # one row, a long dt (0.5 s: within the velocity / acceleration limits)
    slow = BuiltinSafetyChecker(SafetyConfig(check_budget_s=2.0))                    # a 1 m sweep: not a time test
    r = slow.check_chunk(_chunk(qb[None], dt=0.5, space=ACTION_SPACE_JOINT_POSITION), qa, 0.0, now_ns=NOW)
    assert r.is_hold and K.TABLE_COLLISION in r.rejecting_kinds and "on the path" in r.summary(), r.summary()


def test_admitted_segments_are_collision_free_at_every_point(checker):
    """Property: random joint-linear segments near the table and the arm's own links; whatever the checker admits
    is free of contact at 400 points along it (brute force, zero clearance)."""
    rng = np.random.default_rng(7)
    checker = BuiltinSafetyChecker(SafetyConfig(check_budget_s=2.0))                 # correctness, not time
    kin = checker.kin
    p0, R0 = kin.fk(READY_Q)
    admitted = 0
    for it in range(60):
        h = rng.uniform(0.015, 0.06)
        qa = kin.ik(p0 - [0, 0, p0[2] - h], R0, READY_Q).q
        d = rng.uniform(-0.5, 0.5, 7) * (rng.uniform(size=7) < 0.5)
        qb = qa + d
        r = checker.check_chunk(_chunk(qb[None], dt=1.0, space=ACTION_SPACE_JOINT_POSITION), qa, 0.0, now_ns=NOW)
        if r.is_hold:
            continue
        admitted += 1
        for f in np.linspace(0, 1, 401):
            assert not _truly_colliding(checker, qa + f * d), (it, f)
    assert admitted >= 10


def test_pairs_the_srdf_disables_are_checked_unless_provably_apart(checker):
    srdf = open(checker.kin.description.srdf).read()
    disabled = {frozenset((a, b)): why for a, b, why in
                re.findall(r'disable_collisions link1="(\w+)" link2="(\w+)" reason="(\w+)"', srdf)}
    link = lambda n: re.sub(r"_(\d+|sim_pad)$", "", n)                                 # noqa: E731
    assert disabled[frozenset(("panda_link5", "panda_link7"))] == "Default"             # the SRDF disables them ...
    assert disabled[frozenset(("panda_hand", "panda_link5"))] == "Default"
    # ... but they collide when the wrist folds (the meshes interpenetrate here), and the checker says so
    q = np.array([2.665, -1.662, 2.071, -0.174, 2.604, 0.578, 2.691])
    assert ("panda_link5_0", "panda_link7_0") in _truly_colliding(checker, q)
    assert K.SELF_COLLISION in [v.kind for v in checker.check_state(q)]
    # what stays unchecked: pairs of one rigid link, pairs joined by one joint, the two fingers (closing on each other
    # by design); those the SRDF does not call Adjacent never touch over the joint limits (sampled)
    kept = checker.disabled_pairs()
    assert all(why.startswith(("same link", "joined by one joint", "the two fingers")) for _, _, why in kept)
    doubtful = [(a, b) for a, b, why in kept if why.startswith("joined")
                and disabled.get(frozenset((link(a), link(b)))) != "Adjacent"]
    assert doubtful                                                                     # (link6-hand, link7-fingers)
    rng, kin = np.random.default_rng(3), checker.kin
    import pinocchio as pin
    gm = checker.geom_model
    pairs = [(gm.getGeometryId(a), gm.getGeometryId(b)) for a, b in doubtful]
    gm2 = pin.GeometryModel()
    for g in gm.geometryObjects:
        gm2.addGeometryObject(g)
    for a, b in pairs:
        gm2.addCollisionPair(pin.CollisionPair(a, b))
    gd2 = pin.GeometryData(gm2)
    for _ in range(1500):
        pin.computeCollisions(kin.model, kin.data, gm2, gd2, kin.full_q(rng.uniform(kin.lower, kin.upper), rng.uniform()), True)
        assert not any(gd2.collisionResults[k].isCollision() for k in range(len(pairs)))


def test_rotation_vectors_are_normalized_before_clipping():
    axis = np.array([0.0, 0.0, 1.0])
    a = np.r_[0.0, 0.0, 0.0, (2 * np.pi - 0.05) * axis, 0.0]
    np.testing.assert_allclose(normalize_rotvec(a[3:6]), -0.05 * axis, atol=1e-12)
    np.testing.assert_allclose(rotvec_to_matrix(normalize_rotvec(a[3:6])), rotvec_to_matrix(a[3:6]), atol=1e-12)
    c = clip_ee_delta(a, 0.05, 0.3)
    np.testing.assert_allclose(c[3:6], -0.05 * axis, atol=1e-12)              # a -0.05 rad turn, not +0.3


def test_sim_cartesian_controller_turns_the_normalized_way_within_joint_limits():
    from semanticvla_core.sim.env import FrankaTabletopEnv, SimConfig

    env = FrankaTabletopEnv(SimConfig(render=False))
    env.reset("pick_place_plate", 0, render=False)
    R0 = env.tcp_pose()[1]
    env.step(np.r_[0.0, 0.0, 0.0, 0.0, 0.0, 2 * np.pi - 0.05, 0.0], render=False)
    turn = np.arctan2(*(env.tcp_pose()[1] @ R0.T)[[1, 0], 0])
    assert -0.06 < turn < 0.0, turn
    # big rows: the setpoint never moves or accelerates faster than Franka allows
    prev = env.setpoint_velocity()
    for k in range(12):
        env.step(np.r_[0.05 * (-1) ** (k // 3), 0.05, -0.02, 0.0, 0.0, 0.3, 0.0], render=False)
        v = env.setpoint_velocity()
        assert np.all(np.abs(v) <= PANDA_VELOCITY_LIMITS * (1 + 1e-9)), v / PANDA_VELOCITY_LIMITS
        assert np.all(np.abs(v - prev) / env.dt <= PANDA_ACCEL_LIMITS * (1 + 1e-9))
        prev = v


def test_sim_finger_pads_are_in_the_collision_model():
    from semanticvla_core.sim.env import FrankaTabletopEnv, SimConfig

    urdf, sim = BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG, gripper="urdf")), BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG, gripper="sim"))
    env = FrankaTabletopEnv(SimConfig(render=False))
    env.reset("pick_place_plate", 0, render=False)
    R = env.tcp_pose()[1]
    lowest = {n: min(env.data.geom_xpos[env.geom_id(f"panda_{n}_pad")][2] for n in ("left",)) for n in ("left",)}
    pad_reach = env.tcp_pose()[0][2] - (lowest["left"] - 0.028)                  # pad bottom below the TCP (MuJoCo)
    assert 0.035 < pad_reach < 0.05
    # the TCP floor of the sim gripper is the pads' reach + clearance; the URDF fingertips reach ~1 cm
    assert float(sim.tcp_floor(R)) == pytest.approx(pad_reach + sim.config.gripper_table_margin_m, abs=2e-3)
    assert float(urdf.tcp_floor(R)) < 0.02
    # a row down to 2.5 cm TCP height: the URDF model admits it, the sim's pads would be in the table
    q = env.joint_positions()
    dz = 0.025 - env.tcp_pose()[0][2]
    rows = np.zeros((8, 7)); rows[:, 2] = dz / 8
    assert K.TABLE_COLLISION not in urdf.check_chunk(_chunk(rows), q, 0.0, now_ns=NOW).kinds
    r = sim.check_chunk(_chunk(rows), q, 0.0, now_ns=NOW)
    assert K.TABLE_COLLISION in r.kinds and (r.is_hold or r.tcp_targets[:, 2].min() >= float(sim.tcp_floor(R)) - 1e-4)


@pytest.mark.parametrize("bad", [
    dict(stamp_ns=None), dict(stamp_ns=float("nan")), dict(stamp_ns="12"), dict(now_ns=float("nan")),
    dict(now_ns="now"), dict(q_current="abcdefg"), dict(dq_current="fast"), dict(action_space=np.zeros(3)),
    dict(joint_names=5, action_space=ACTION_SPACE_JOINT_POSITION), dict(q_current=object()), dict(gripper_current="x"),
    dict(dt="0.05"), dict(dt=True), dict(actions=[[1, 2], [3]]), dict(actions="rows"), dict(start_q="x"),
    dict(actions=np.zeros((8, 7)) + 1e-3j),
])
def test_malformed_arguments_give_a_reason_never_an_exception(checker, bad):
    args = dict(actions=np.zeros((8, 7)), dt=0.05, action_space="ee_delta_xyz_rotvec_gripper", joint_names=[],
                stamp_ns=NOW, now_ns=NOW, q_current=READY_Q, gripper_current=0.0, dq_current=None, start_q=None)
    args.update(bad)
    chunk = ActionChunkData.__new__(ActionChunkData)
    for k, v in dict(actions=args["actions"], dt=args["dt"], action_space=args["action_space"], plan_id=0,
                     joint_names=args["joint_names"], stamp_ns=args["stamp_ns"], frame_id="").items():
        object.__setattr__(chunk, k, v)
    r = checker.check_chunk(chunk, args["q_current"], args["gripper_current"], now_ns=args["now_ns"],
                            dq_current=args["dq_current"], start_q=args["start_q"])
    if "dq_current" in bad:            # an unusable velocity is ignored (accelerations inside the chunk still checked)
        assert r.ok
    else:
        assert r.is_hold and r.reasons and r.reasons[0].message, r.summary()
    ex = SafetyExecutor(checker, "cartesian")
    ex.admit(chunk, args["q_current"], args["gripper_current"], NOW) if "q_current" not in bad else None


def test_a_check_never_outlives_its_budget():
    c = BuiltinSafetyChecker(SafetyConfig(check_budget_s=0.002))
    rows = np.zeros((256, 7)); rows[:, 0] = 0.05                                    # 12.8 m away: unreachable
    r = c.check_chunk(_chunk(rows), READY_Q, 0.0, now_ns=NOW)
    assert r.is_hold and r.rejecting_kinds == [K.TIMEOUT], r.summary()


def test_every_command_sent_is_within_the_limits(checker):
    """An aggressive chunk through the executor: the setpoints it commands (stepwise rows, then the brake) never
    exceed the velocity or acceleration limits, measured on the commands themselves."""
    ex = SafetyExecutor(checker, "stepwise")
    rows = np.zeros((8, 7)); rows[:, 1] = 0.04; rows[:, 5] = 0.25                    # 0.8 m/s and 5 rad/s asked
    assert ex.admit(_chunk(rows), READY_Q, 0.0, NOW).ok
    q, t, sp = READY_Q.copy(), NOW, [READY_Q.copy()]
    for k in range(14):
        cmd = ex.tick(q, 0.0, t)
        if cmd is not None:
            assert not cmd.is_hold, cmd.reasons
            sp.append(cmd.positions[0])
            q = cmd.positions[0]                                                      # a stiff arm
        else:
            sp.append(sp[-1])
        t += 50_000_000
    v = np.diff(np.array(sp), axis=0) / 0.05
    a = np.diff(v, axis=0) / 0.05
    assert np.all(np.abs(v) <= PANDA_VELOCITY_LIMITS * (1 + 1e-6))
    assert np.all(np.abs(a) <= PANDA_ACCEL_LIMITS * (1 + 1e-6)), np.abs(a).max(axis=0) / PANDA_ACCEL_LIMITS
    assert np.abs(v[-1]).max() < 1e-9                                                 # ended at rest


def test_a_filter_starting_on_a_moving_arm_brakes_it_from_its_measured_speed(checker):
    """The executor's first command with no setpoint model yet starts from the measured joint velocity: a chunk that
    asks to stand still is reached by braking within the acceleration limits (from rest, the model would command
    an instant stop: a velocity jump far beyond them)."""
    ex = SafetyExecutor(checker, "stepwise")
    dq = np.zeros(7); dq[0] = 1.2                                                      # joint 1 at 1.2 rad/s
    rows = np.tile(READY_Q, (8, 1))
    assert ex.admit(_chunk(rows, space=ACTION_SPACE_JOINT_POSITION), READY_Q, 0.0, NOW, dq).ok
    cmd = ex.tick(READY_Q, 0.0, NOW, dq)
    v1 = (cmd.positions[0] - READY_Q) / 0.05
    assert abs((v1[0] - dq[0]) / 0.05) <= PANDA_ACCEL_LIMITS[0] * 0.8 + 1e-6        # braking, not an instant stop
    assert v1[0] > 0.5


def test_commands_are_checked_out_to_where_the_arm_overshoots_them():
    """tracking_lag_s: a command whose setpoint stops 4 mm above the table at 0.4 m/s downwards is refused (the arm
    runs on past it); the same end point reached slowly, or with no lag modelled, is sent."""
    c0 = BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG, tracking_lag_s=0.0))
    c1 = BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG))
    p0, R0 = c1.kin.fk(READY_Q)
    floor = float(c1.tcp_floor(R0)) - c1.config.gripper_table_margin_m        # gripper's lowest point at the table
    q_end = c1.kin.ik(np.r_[p0[:2], floor + 0.004], R0, READY_Q).q
    q_prev = c1.kin.ik(np.r_[p0[:2], floor + 0.004 + 0.02], R0, READY_Q).q      # 2 cm higher: 0.4 m/s over 50 ms
    v = (q_end - q_prev) / 0.05
    args = (q_prev, 0.0, q_prev, v, q_end[None], np.array([0.05]), 0.0)
    assert not c0.verify_command(*args, period=0.05)
    bad = c1.verify_command(*args, period=0.05)
    assert any(b.kind is K.TABLE_COLLISION for b in bad), bad
    slow = (q_prev, 0.0, q_prev, v * 0.0, q_end[None], np.array([0.5]), 0.0)     # 2 cm in 0.5 s: 4 cm/s
    assert not [b for b in c1.verify_command(*slow, period=0.05) if b.kind is K.TABLE_COLLISION]


def test_a_stepped_controllers_command_keeps_clearance_in_proportion_to_its_step():
    """step_path_tolerance: a Cartesian controller jumps its setpoint once per period and the arm's saturated joints
    bend its path off the joint-linear one, so a big step passing 7 mm above the table is refused when stepped; the
    same step sent to an interpolating (joint trajectory) controller, or a small stepped one, is not."""
    c = BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG, tracking_lag_s=0.0))
    p0, R0 = c.kin.fk(READY_Q)
    floor = float(c.tcp_floor(R0)) - c.config.gripper_table_margin_m
    qa = c.kin.ik(np.r_[p0[0] - 0.03, p0[1], floor + 0.007], R0, READY_Q).q
    qb = c.kin.ik(np.r_[p0[0] + 0.03, p0[1], floor + 0.007], R0, qa).q      # 6 cm sideways, 7 mm above the table
    args = (qa, 0.0, qa, np.zeros(7), qb[None], np.array([0.05]), 0.0)
    assert not [b for b in c.verify_command(*args, period=0.05) if b.kind is K.TABLE_COLLISION]
    bad = c.verify_command(*args, period=0.05, stepped=True)
    assert any(b.kind is K.TABLE_COLLISION for b in bad), bad
    qs = c.kin.ik(np.r_[p0[0] - 0.026, p0[1], floor + 0.007], R0, qa).q      # a 4 mm step
    small = (qa, 0.0, qa, np.zeros(7), qs[None], np.array([0.05]), 0.0)
    assert not [b for b in c.verify_command(*small, period=0.05, stepped=True) if b.kind is K.TABLE_COLLISION]


def _near_top_face(c, gap: float, dz: float):
    """Joint states whose TCP is ``gap + dz`` and ``gap`` below the workspace's top face (READY_Q's x, y and
    orientation): a move of ``dz`` up towards the face."""
    p0, R0 = c.kin.fk(READY_Q)
    top = float(c.config.workspace_max[2])
    q_prev = c.kin.ik(np.r_[p0[:2], top - gap - dz], R0, READY_Q).q
    q_end = c.kin.ik(np.r_[p0[:2], top - gap], R0, q_prev).q
    return q_prev, q_end


def test_the_workspace_is_checked_out_to_where_the_arm_overshoots():
    """tracking_lag_s applies to the workspace box as to obstacles: a setpoint that stops 6.5 mm under the top face at
    0.4 m/s upwards is refused (the arm runs on past the clip inset); reached slowly it is sent."""
    c = BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG, workspace_max=(0.85, 0.60, 0.60)))
    q_prev, q_end = _near_top_face(c, 0.0065, 0.02)
    v = (q_end - q_prev) / 0.05
    bad = c.verify_command(q_prev, 0.0, q_prev, v, q_end[None], np.array([0.05]), 0.0, period=0.05)
    assert any(b.kind is K.WORKSPACE for b in bad), bad
    slow = c.verify_command(q_prev, 0.0, q_prev, v * 0.0, q_end[None], np.array([0.5]), 0.0, period=0.05)
    assert not [b for b in slow if b.kind is K.WORKSPACE], slow


def test_a_stepped_command_keeps_its_workspace_inset_in_proportion_to_its_step():
    """step_path_tolerance applies to the workspace box: a 5 cm stepped move that ends 6.5 mm under the top face is
    refused (the bent path may pass the face); the same move to an interpolating controller is sent."""
    c = BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG, tracking_lag_s=0.0, workspace_max=(0.85, 0.60, 0.60)))
    q_prev, q_end = _near_top_face(c, 0.0065, 0.05)
    args = (q_prev, 0.0, q_prev, np.zeros(7), q_end[None], np.array([0.5]), 0.0)
    assert not [b for b in c.verify_command(*args, period=0.05) if b.kind is K.WORKSPACE]
    bad = c.verify_command(*args, period=0.05, stepped=True)
    assert any(b.kind is K.WORKSPACE for b in bad), bad


def test_the_continuous_check_never_sends_coal_a_query_it_cannot_stop():
    """Bounded checking: the budget is enforced between pieces of work, so no single piece may be long. A mesh query
    whose clearance is inflated by a whole row's motion (tens of cm) walked most of both BVHs (up to 33 ms in one call,
    the check overshooting its budget by that much); such pieces are halved first. Here: a chunk that swings the arm
    far in a few rows is checked with every coal query recorded; none has a clearance beyond the cap, and the verdict
    is the same as with the cap lifted."""
    import semanticvla_core.safety.checker as checker_mod

    c = BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG, tracking_lag_s=0.0))
    margins = []

    class Recording:
        def __init__(self, pin):
            self._pin = pin

        def __getattr__(self, name):
            f = getattr(self._pin, name)
            if name != "computeCollision":
                return f

            def query(gm, gd, k):
                margins.append(float(gd.collisionRequests[k].security_margin))
                return f(gm, gd, k)
            return query

    c._pin = Recording(c._pin)
    rows = READY_Q[None] + np.linspace(0.0, 1.0, 5)[1:, None] * np.array([1.2, 0.3, -0.8, 0.5, 1.0, 0.6, 1.5])
    chunk = _chunk(np.c_[rows, np.zeros(4)], dt=1.0, space=ACTION_SPACE_JOINT_POSITION)
    res = c.check_chunk(chunk, READY_Q, 0.0, now_ns=NOW, dynamics=False)
    assert margins and max(margins) < 0.06, max(margins)              # (the cap, 3 cm, plus the pair's own clearance)
    cap = checker_mod._MAX_QUERY_INFLATION_M
    try:
        checker_mod._MAX_QUERY_INFLATION_M = 10.0
        ref = c.check_chunk(chunk, READY_Q, 0.0, now_ns=NOW, dynamics=False)
    finally:
        checker_mod._MAX_QUERY_INFLATION_M = cap
    assert [v.kind for v in res.reasons] == [v.kind for v in ref.reasons] and res.is_hold == ref.is_hold


@pytest.mark.parametrize("h", [0.0031, 0.0015, 0.0005, 0.0, -0.0003])
def test_an_arm_pressed_near_the_table_may_always_move_away_and_never_closer(h):
    """A pad pushed within its clearance (or onto the table) while grasping: a command lifting it or moving it along
    the table is sent, one lowering it by a millimetre is refused. (The step allowance and a 1 mm floor under the
    lowered clearance made every move from there a TABLE_COLLISION: the demo's arm stood still for 51 s.)"""
    c = BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG, gripper="sim"))
    p0, R0 = c.kin.fk(READY_Q)
    floor = float(c.tcp_floor(R0)) - c.config.gripper_table_margin_m            # the pads' lowest point at the table
    q = c.kin.ik(np.r_[p0[:2], floor + h], R0, READY_Q).q

    def table(dx, dz):
        qb = c.kin.ik(np.r_[p0[0] + dx, p0[1], floor + h + dz], R0, q).q
        bad = c.verify_command(q, 0.0, q, np.zeros(7), qb[None], np.array([0.5]), 0.0, period=0.05, stepped=True)
        return [b for b in bad if b.kind is K.TABLE_COLLISION]
    assert not table(0.0, 0.01)                    # up
    assert not table(0.005, 0.0)                   # along
    assert table(0.0, -0.001)                      # down


def test_the_scenes_fixed_objects_are_obstacles():
    """The simulator's bowls and plates (immovable: an arm that strikes a bowl wall is pressed into the table, the fuzz
    campaign's last unsafe case) are obstacle boxes for the filter, as the sim node publishes them: a move that takes
    the fingers into a bowl wall is refused with them, and was sent without."""
    from dataclasses import replace

    from semanticvla_core.sim.env import FrankaTabletopEnv, SimConfig

    env = FrankaTabletopEnv(SimConfig(render=False))
    env.reset("pick_place_bowl", 3, render=False)
    boxes = env.static_obstacles()
    walls = [b for b in boxes if "wall" in b.name]
    assert len(walls) >= 4 and all(abs(b.center[2] - b.size[2] / 2) < 1e-6 for b in walls)   # standing on the table
    base = SafetyConfig(check_budget_s=LONG, gripper="sim")
    blind, seeing = BuiltinSafetyChecker(base), BuiltinSafetyChecker(replace(base, env_boxes=boxes))
    wall = walls[0]
    _, R0 = blind.kin.fk(READY_Q)
    floor = float(blind.tcp_floor(R0)) - base.gripper_table_margin_m       # TCP height with the pads at the table
    above = np.r_[wall.center[:2], floor + wall.size[2] + 0.03]           # pads 3 cm above the wall's top
    qa = blind.kin.ik(above, R0, READY_Q).q
    qb = blind.kin.ik(above - [0, 0, 0.04], R0, qa).q                      # pads 1 cm down into the wall
    args = (qa, 0.0, qa, np.zeros(7), qb[None], np.array([1.0]), 0.0)
    assert not [v for v in blind.verify_command(*args, period=0.05) if v.kind is K.ENV_COLLISION]
    hit = [v for v in seeing.verify_command(*args, period=0.05) if v.kind is K.ENV_COLLISION]
    assert hit and "wall" in hit[0].message, hit


def test_a_pad_may_rest_on_a_plate_but_not_strike_its_edge():
    """The 1 cm plates are obstacles up to 5 mm below their top (the fuzz campaign: pads kept only clear of the
    table struck a plate's edge and were pushed down it 0.8 mm into the table). A move at the table's clearance into
    the plate's side is refused; coming down to 2 mm above the plate's top, as placing a cube does, is sent."""
    from dataclasses import replace

    from semanticvla_core.sim.env import FrankaTabletopEnv, SimConfig

    env = FrankaTabletopEnv(SimConfig(render=False))
    env.reset("pick_place_plate", 3, render=False)
    plate = next(b for b in env.static_obstacles() if "plate" in b.name)
    top = 2 * plate.center[2] + 0.005                                      # the real plate's top (5 mm above its box)
    c = BuiltinSafetyChecker(replace(SafetyConfig(check_budget_s=LONG, gripper="sim"), env_boxes=env.static_obstacles()))
    _, R0 = c.kin.fk(READY_Q)
    floor = float(c.tcp_floor(R0)) - c.config.gripper_table_margin_m      # TCP height with the pads at the table

    def verdict(p_from, p_to):
        qa = c.kin.ik(np.asarray(p_from), R0, READY_Q).q
        qb = c.kin.ik(np.asarray(p_to), R0, qa).q
        bad = c.verify_command(qa, 0.0, qa, np.zeros(7), qb[None], np.array([1.0]), 0.0, period=0.05)
        return [v for v in bad if v.kind in (K.ENV_COLLISION, K.TABLE_COLLISION)]
    z_table = floor + c.config.gripper_table_margin_m                      # pads 6 mm above the table (its clearance)
    beside = np.r_[plate.center[0] - plate.size[0] / 2 - 0.06, plate.center[1], z_table]
    hit = verdict(beside, beside + [0.08, 0.0, 0.0])                       # along the table, into the plate's side
    assert hit and "plate" in hit[0].message, hit
    above = np.r_[plate.center[:2], floor + top + 0.03]
    assert not verdict(above, np.r_[plate.center[:2], floor + top + 0.002])   # down onto the plate, as placing


def _sample_setpoints(history, t_from, t_to, period=0.05):
    """The setpoint a joint trajectory controller follows (linear between the points of the newest command) sampled
    every period: ``history`` [(stamp_s, q_start, positions, times)] (the test's own interpolation)."""
    out = []
    for t in np.arange(t_from, t_to + 1e-9, period):
        stamp, q0, P, T = [h for h in history if h[0] <= t + 1e-12][-1]
        kt, kq = np.r_[0.0, T], np.vstack([q0[None], P])
        out.append(np.array([np.interp(t - stamp, kt, kq[:, j]) for j in range(7)]))
    return np.array(out)


def test_a_trajectory_chunk_arriving_while_the_arm_still_moves_starts_after_that_motion_not_refused(checker):
    """Trajectory mode: a chunk that turns back while the setpoint still runs the last trajectory fast cannot start
    from that velocity within the acceleration limits (no slow-down helps: it was refused, an expert chunk falsely
    rejected). It now runs once the committed trajectory has come to rest; what the arm is commanded stays within
    the limits throughout (sampled by the test every period from the commands sent)."""
    ex = SafetyExecutor(checker, "trajectory")
    P_ns = 50_000_000
    out = READY_Q + np.outer(np.arange(1, 9) * 0.045, np.eye(7)[0])          # joint 1 out at 0.9 rad/s
    assert ex.admit(_chunk(out, space=ACTION_SPACE_JOINT_POSITION), READY_Q, 0.0, NOW).ok
    cmd = ex.tick(READY_Q, 0.0, NOW)
    hist = [(0.0, READY_Q.copy(), cmd.positions.copy(), cmd.times.copy())]
    n_moving = int(np.floor(cmd.times[-1] / 0.05)) - 1                       # a period before that trajectory ends
    t = NOW + n_moving * P_ns
    q_now = _sample_setpoints(hist, n_moving * 0.05, n_moving * 0.05)[0]
    back = q_now + np.outer(np.arange(1, 9) * -0.03, np.eye(7)[0])           # ... and back at 0.6 rad/s
    res = ex.admit(_chunk(back, space=ACTION_SPACE_JOINT_POSITION, stamp=t), q_now, 0.0, t)
    assert res.ok, res.summary()
    cmd2 = ex.tick(q_now, 0.0, t + P_ns)
    assert cmd2 is not None and not cmd2.is_hold, cmd2 and cmd2.reasons
    t2 = (n_moving + 1) * 0.05
    hist.append((t2, _sample_setpoints(hist, t2, t2)[0], cmd2.positions.copy(), cmd2.times.copy()))
    S = _sample_setpoints(hist, 0.0, t2 + cmd2.times[-1] + 0.15)
    v = np.diff(np.vstack([READY_Q[None], S]), axis=0) / 0.05
    a = np.diff(v, axis=0) / 0.05
    assert np.all(np.abs(v) <= PANDA_VELOCITY_LIMITS * (1 + 1e-6))
    assert np.all(np.abs(a) <= PANDA_ACCEL_LIMITS * (1 + 1e-6)), np.abs(a).max(axis=0) / PANDA_ACCEL_LIMITS
    assert np.max(S[:, 0]) >= out[-1, 0] - 1e-9                               # the first trajectory ran out ...
    assert np.allclose(S[-1], back[-1], atol=1e-9)                             # ... then the new chunk, to its end


def test_an_arm_coming_down_fast_near_the_table_slows_down_instead_of_being_stopped():
    """Stepwise rows bring the gripper down at 0.3 m/s towards the table. Near it, a row whose own path is clear but
    whose brake (if the next row were refused) would end within the pads' clearance was refused: the chunk stopped
    and the arm stood still 3 cm above the table (expert rows falsely refused in the fuzz campaign). The executor now
    decelerates instead and goes on: no row refused, the pads come down to their clearance and never touch the table
    (brute-force contact check at every commanded setpoint and between them)."""
    c = BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG, gripper="sim"))
    ex = SafetyExecutor(c, "stepwise")
    q, t, sp, refused = READY_Q.copy(), NOW, [READY_Q.copy()], 0
    for k in range(60):
        if k % 4 == 0:
            rows = np.zeros((8, 7)); rows[:, 2] = -0.015
            ex.admit(_chunk(rows, stamp=t), q, 0.0, t)
        cmd = ex.tick(q, 0.0, t)
        if cmd is not None:
            refused += bool(cmd.is_hold and cmd.reasons)
            q = cmd.positions[0]
            sp.append(q.copy())
        t += 50_000_000
    assert refused == 0
    p, R = c.kin.fk(q)
    floor = float(c.tcp_floor(R))                                    # the TCP height at which the pads touch
    assert p[2] - floor < 0.02, p[2] - floor                         # came down to near its clearance (refused: 4 cm)
    for a, b in zip(sp[:-1], sp[1:]):
        for f in np.linspace(0.0, 1.0, 6):
            assert not [x for x in _truly_colliding(c, a + f * (b - a)) if "table" in " ".join(x)]


def _running_stepwise(checker, rows_run: int):
    """(executor, joints, time) of a stepwise executor that has run ``rows_run`` rows of an admitted 8-row chunk
    (2 mm along x each) on an arm that follows every command."""
    ex = SafetyExecutor(checker, "stepwise")
    rows = np.zeros((8, 7)); rows[:, 0] = 0.002
    assert ex.admit(_chunk(rows), READY_Q, 0.0, NOW).ok
    q, t = READY_Q.copy(), NOW
    for _ in range(rows_run):
        q = ex.tick(q, 0.0, t).positions[0]
        t += 50_000_000
    return ex, q, t


def _hurried(checker) -> BuiltinSafetyChecker:
    """The same checker with a budget every check runs out of."""
    from dataclasses import replace

    return BuiltinSafetyChecker(replace(checker.config, check_budget_s=1e-6))


def test_a_chunk_whose_check_runs_out_of_time_leaves_the_running_chunk_running(checker):
    """A new chunk whose check runs out of its budget (a loaded machine) is not admitted, but the running chunk goes
    on, each of its rows verified as it is sent (it used to stop the arm at every late check: holds and stillness
    under load). A chunk found unsafe still stops it."""
    ex, q, t = _running_stepwise(checker, rows_run=2)
    hurried = _hurried(checker)
    new = _chunk(np.tile([0.0, 0.002, 0.0, 0.0, 0.0, 0.0, 0.0], (8, 1)), stamp=t)
    res = ex.accept(new, ex.check_admission(new, q, 0.0, t, None, ex.admission_start(t, q), checker=hurried), t)
    assert res.is_hold and res.rejecting_kinds == [K.TIMEOUT]
    cmd = ex.tick(q, 0.0, t)
    assert cmd is not None and not cmd.is_hold and cmd.row == 2            # the running chunk's next row
    q = cmd.positions[0]
    t += 50_000_000
    bad = _chunk(np.tile(np.r_[READY_Q[:6], 3.5], (8, 1)), space=ACTION_SPACE_JOINT_POSITION, stamp=t)
    assert ex.admit(bad, q, 0.0, t).rejecting_kinds == [K.JOINT_LIMIT]
    cmd = ex.tick(q, 0.0, t)
    assert cmd is None or cmd.row is None                                  # stopped: braking, no row


def test_a_row_whose_check_runs_out_of_time_is_not_sent_but_its_chunk_goes_on(checker):
    """A row whose own check runs out of its budget (a loaded machine) is not sent: the arm brakes that period along
    the brake verified with the last row. The chunk stays admitted and the next period sends its next row, checked
    afresh (it used to end the chunk: the arm stood still until the next admission, the demo's single missed periods).
    A row refused for a real violation still ends its chunk (test above)."""
    ex, q, t = _running_stepwise(checker, rows_run=3)
    ex.checker = _hurried(checker)                                  # this period's check: too late
    late = ex.tick(q, 0.0, t)
    assert late.is_hold and late.row == 3 and [v.kind for v in late.reasons] and \
        all(v.kind is K.TIMEOUT for v in late.reasons), late.reasons
    sq = ex.setpoint(t, q)[0]
    assert np.linalg.norm(late.positions[-1] - q) < 0.01            # a brake from where the arm was: no row in it
    ex.checker = checker
    t += 50_000_000
    cmd = ex.tick(sq, 0.0, t)
    assert cmd is not None and not cmd.is_hold and cmd.row == 4, cmd      # the chunk goes on with its next row
    p0, p1 = checker.kin.fk(sq)[0], checker.kin.fk(cmd.positions[0])[0]
    assert p1[0] > p0[0]                                                  # ... moving on in x


def _sim_period(env, ex: SafetyExecutor, t: int) -> None:
    """One control period of the MuJoCo arm under the filter's executor: its command for now (an ee_delta row for
    the sim's Cartesian step, or a joint target), or none due (the controller stays put)."""
    cmd = ex.tick(env.joint_positions(), 0.0, t)
    if cmd is not None and cmd.ee_delta is not None:
        env.step(cmd.ee_delta, render=False)
    elif cmd is not None:
        env.step_joint_targets(cmd.positions[0], cmd.gripper)
    else:
        env.step(np.zeros(7), render=False)


@pytest.mark.parametrize("mode", ["cartesian", "stepwise"])
def test_a_policy_pushing_a_joint_into_its_limit_keeps_moving_along_it_on_the_sim(mode):
    """joint_limit_policy clip: chunk after chunk turns the wrist (joint 7) past its limit while moving the TCP
    sideways. The filter used to reject every chunk (JOINT_LIMIT) and hold the arm for good (the main command's
    seed 1 stalled 45 s with joint 4 at its limit); now it holds the joint just inside the margin and the rest of
    the motion goes on. Judged on the MuJoCo arm: its own joint ranges, never past them minus the margin."""
    from semanticvla_core.sim.env import MJ_JOINT_OFFSET, FrankaTabletopEnv, SimConfig

    env = FrankaTabletopEnv(SimConfig(render=False))
    env.reset("pick_place_plate", 0, render=False)
    for _ in range(60):                                             # the wrist near its upper limit, no filter
        if env.joint_positions()[6] > 2.83:
            break
        env.step(np.r_[0.0, 0.0, 0.0, 0.0, 0.0, -0.05, 0.0], render=False)
    assert env.joint_positions()[6] > 2.83
    upper = env._jnt_range[6, 1] - MJ_JOINT_OFFSET[6]              # the sim's own range (not the checker's URDF)
    results = {}
    for policy in ("clip", "reject"):
        state = env.data.qpos.copy(), env.data.qvel.copy(), env.data.ctrl.copy(), env._setpoint_v.copy()
        c = BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG, gripper="sim", joint_limit_policy=policy))
        ex = SafetyExecutor(c, mode)
        y0, t, held, q7 = env.tcp_pose()[0][1], NOW, 0, []
        for k in range(6):                                          # 6 chunks of 8 rows, each from the arm's state
            rows = np.zeros((8, 7)); rows[:, 1] = 0.004                            # 4 mm sideways per row ...
            rows[:, 3:6] = 0.002 * env.tcp_pose()[1][:, 2]                         # ... turning joint 7 up
            res = ex.admit(_chunk(rows, stamp=t), env.joint_positions(), 0.0, t)
            held += res.is_hold
            for _ in range(8):
                _sim_period(env, ex, t)
                q7.append(env.joint_positions()[6])
                t += 50_000_000
        results[policy] = (env.tcp_pose()[0][1] - y0, held, max(q7))
        env.data.qpos[:], env.data.qvel[:], env.data.ctrl[:], env._setpoint_v = state[0], state[1], state[2], state[3]
        env.step(np.zeros(7), render=False)
    moved, held, q7max = results["clip"]
    assert held == 0 and moved > 0.08, results                       # 6 x 8 rows of 4 mm: it kept going
    assert q7max <= upper - SafetyConfig().joint_limit_margin_rad + 2e-3, (q7max, upper)
    assert results["reject"][1] >= 4 and results["reject"][0] < 0.5 * moved, results   # as before: holds


@pytest.mark.parametrize("mode", ["cartesian", "stepwise"])
def test_a_grasp_beside_a_plate_comes_down_onto_the_plate_not_into_it_on_the_sim(mode):
    """A cube lying against a plate: one finger comes down over the plate's edge. The filter used to refuse every
    such chunk (the finger in the plate's clearance) and the policy repeated it: the main command's seed 0 stood
    still for its last 32 s. Now the targets are raised onto the plate's top as onto the table (table_policy clip)
    and the arm comes down as far as it safely can. Judged by MuJoCo: no contact of the arm with the plate at any
    physics step; with table_policy reject the chunks are refused as before."""
    from semanticvla_core.sim.env import FrankaTabletopEnv, SimConfig

    env = FrankaTabletopEnv(SimConfig(render=False))
    env.reset("pick_place_plate", 0, render=False)
    boxes = env.static_obstacles()
    plate = min((b for b in boxes if b.name.startswith("plate")), key=lambda b: abs(b.center[0] - 0.45))
    p0, R0 = env.tcp_pose()
    axis = np.r_[R0[:2, 1], 0.0] / np.linalg.norm(R0[:2, 1])           # the fingers' axis, in the table plane
    half = 0.5 * abs(axis[:2]) @ np.asarray(plate.size[:2])
    goal = np.r_[np.asarray(plate.center[:2]) + (half + 0.012) * axis[:2], 0.085]   # TCP 12 mm off the plate's edge
    for _ in range(80):                                                # there (no filter), gripper open
        d = goal - env.tcp_pose()[0]
        if np.linalg.norm(d) < 0.002:
            break
        env.step(np.r_[np.clip(d, -0.01, 0.01), 0.0, 0.0, 0.0, 0.0], render=False)
    assert np.linalg.norm(goal - env.tcp_pose()[0]) < 0.005
    import mujoco
    m = env.model
    plate_body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, plate.name)
    arm_bodies = {mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, n) for n in
                  ("panda_link7", "panda_hand", "panda_leftfinger", "panda_rightfinger")}
    touches = []

    def hook(e):                                                     # every physics sub-step
        for i in range(e.data.ncon):
            con = e.data.contact[i]
            bodies = {int(m.geom_bodyid[con.geom1]), int(m.geom_bodyid[con.geom2])}
            if plate_body in bodies and bodies & arm_bodies and con.dist < 0:
                touches.append(float(con.dist))
    results = {}
    for policy in ("clip", "reject"):
        state = env.data.qpos.copy(), env.data.qvel.copy(), env.data.ctrl.copy(), env._setpoint_v.copy()
        c = BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG, gripper="sim", table_policy=policy, env_boxes=boxes))
        ex = SafetyExecutor(c, mode)
        z0, t, held = env.tcp_pose()[0][2], NOW, 0
        env.substep_hook, touches[:] = hook, []
        for k in range(5):                                          # 5 chunks of 8 rows, 5 mm down per row
            rows = np.zeros((8, 7)); rows[:, 2] = -0.005
            res = ex.admit(_chunk(rows, stamp=t), env.joint_positions(), 0.0, t)
            held += res.is_hold
            for _ in range(8):
                _sim_period(env, ex, t)
                t += 50_000_000
        env.substep_hook = None
        results[policy] = (z0 - env.tcp_pose()[0][2], held, list(touches))
        env.data.qpos[:], env.data.qvel[:], env.data.ctrl[:], env._setpoint_v = state[0], state[1], state[2], state[3]
        env.step(np.zeros(7), render=False)
    down, held, touched = results["clip"]
    assert not touched, touched                                        # never into the plate
    assert held == 0 and down > 0.025, results                         # came down ~3-4 cm (to the plate's top)
    assert results["reject"][1] >= 4 and results["reject"][0] < 0.01, results    # as before: refused, still
    assert not results["reject"][2]


def test_a_chunk_pushing_a_joint_far_past_its_limit_runs_up_to_where_it_would_not_be_held_for_good():
    """joint_limit_policy clip: the elbow near its folded limit and a chunk reaching further back, its later rows
    more than joint_limit_clip_max_rad past the margin. The rows before that are admitted (clipped) and run, and the
    chunk ends there; it used to be refused whole, every chunk again while the policy kept asking (the main
    command's seed 1 held for 12 s with joint 4 at its limit)."""
    from semanticvla_core.safety.kinematics import PandaKinematics

    kin = PandaKinematics()
    c = BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG, workspace_min=(-0.3, -0.6, 0.0)))
    q = READY_Q.copy(); q[3] = kin.lower[3] + 0.05
    rows = np.zeros((8, 7)); rows[:, 0] = -0.015                      # 1.5 cm per row towards the base
    res = c.check_chunk(_chunk(rows), q, 0.0, now_ns=NOW, dynamics=False)
    assert not res.is_hold, res.summary()
    n = len(res.checked_positions)
    assert 1 <= n < 8 and any(v.kind is K.JOINT_LIMIT and v.step == n and not v.rejecting for v in res.reasons), res.summary()
    margin = c.config.joint_limit_margin_rad
    assert np.all(res.checked_positions[:, 3] >= kin.lower[3] + margin)
    ex = SafetyExecutor(c, "stepwise")
    assert ex.admit(_chunk(rows), q, 0.0, NOW).ok
    t, sent = NOW, []
    for _ in range(10):
        cmd = ex.tick(q, 0.0, t)
        if cmd is not None and cmd.row is not None and not cmd.is_hold:
            sent.append(cmd.row)
            q = cmd.positions[0]
        t += 50_000_000
    assert sent == list(range(n)), (sent, n)                           # those rows, each once, then the chunk ends
    assert q[3] >= kin.lower[3] + margin - 1e-9
    reject = BuiltinSafetyChecker(SafetyConfig(check_budget_s=LONG, workspace_min=(-0.3, -0.6, 0.0),
                                               joint_limit_policy="reject"))
    q0 = READY_Q.copy(); q0[3] = kin.lower[3] + 0.05
    assert reject.check_chunk(_chunk(rows), q0, 0.0, now_ns=NOW, dynamics=False).rejecting_kinds == [K.JOINT_LIMIT]
