"""The safety filter under fuzz, judged by an independent judge (benchmarks/safety_judge.py, safety_fuzz.py).

CI subset of the campaign: 175 chunks over every category, each run in the three execution modes (525 executions
watched at every physics sub-step): no unsafe motion admitted, no exception, at most 0.5 % false rejections of expert
chunks. And the judge itself must be able to fail: motions known to be unsafe, commanded with the filter bypassed,
are flagged (table, self-collision, velocity, acceleration, joint limit, workspace, a hold that moves); a clean
motion is not; restoring a state is exact.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

mujoco = pytest.importorskip("mujoco")
pytest.importorskip("pinocchio")

import safety_fuzz as F  # noqa: E402
from safety_judge import FRANKA_Q_MAX, JudgeConfig, SafetyJudge, attach, detach  # noqa: E402

CI_CHUNKS = 175
CI_POOL = dict(n_home=4, n_low=8, n_edge=8)
CI_CHECK_BUDGET_S = 1.0     # the node's 50 ms check budget depends on the machine's load: CI judges the logic (every
                            # chunk that passes the checks is executed); benchmarks/safety_fuzz.py reports the timing


@pytest.fixture(scope="module")
def runner():
    saved = F.CHECK_BUDGET_S
    F.CHECK_BUDGET_S = CI_CHECK_BUDGET_S
    try:
        yield F.Runner(0, mesh=True, pool_kw=CI_POOL)
    finally:
        F.CHECK_BUDGET_S = saved


def _watch(env, judge, fn, periods: int, ctrl_prev=None, hold: bool = False, proxy: bool = False) -> dict:
    """Run ``fn(k)`` (one control period of physics each) under the judge."""
    attach(env, judge, proxy)
    try:
        judge.begin(ctrl_prev, rows=periods, hold=hold)
        for k in range(periods):
            judge.start_period(hold=hold)
            fn(k)
            judge.end_period()
        return judge.finish()
    finally:
        detach(env)


def _ramp(env, q_goal, periods: int):
    """Joint targets moving smoothly (well within Franka's limits) from the setpoint to q_goal: no filter."""
    q0 = env.joint_targets()
    s = 0.5 - 0.5 * np.cos(np.pi * np.arange(1, periods + 1) / periods)

    def step(k):
        env.step_joint_targets(q0 + s[min(k, periods - 1)] * (q_goal - q0), env.gripper_cmd)
    return step


# ---------------------------------------------------------------------------------------------- the judge can fail
def test_judge_flags_table_contact(runner):
    env, judge = runner.env, runner.judge
    snap = runner.pool.low[0]
    F.restore(env, snap)
    p, R = env.tcp_pose()
    q_goal = env.solve_ik(np.r_[p[:2], 0.0], R, iters=100)        # pads 4 cm into the table
    rep = _watch(env, judge, _ramp(env, q_goal, 30), 30, snap.ctrl_prev)
    assert "table" in rep["criteria"], rep
    assert rep["details"]["table"]["worst"] > 0.002
    assert "velocity" not in rep["criteria"] and "accel" not in rep["criteria"]


def test_judge_flags_self_collision(runner):
    env, judge = runner.env, runner.judge
    snap = runner.pool.home[0]
    F.restore(env, snap)
    rng = np.random.default_rng(3)
    q0 = env.joint_positions()
    qc = None
    while qc is None:
        qc = F._self_colliding_target(env, q0, rng, {})
    rep = _watch(env, judge, _ramp(env, q0 + 1.3 * (qc - q0), 60), 60, snap.ctrl_prev)
    assert "self" in rep["criteria"], rep


def test_judge_flags_velocity_and_acceleration_jump(runner):
    env, judge = runner.env, runner.judge
    snap = runner.pool.home[1]
    F.restore(env, snap)
    q = env.joint_targets()
    jump = q + np.r_[0.3, 0, 0, 0, 0, 0, 0]       # 6 rad/s for one period: 2.8x the velocity limit

    rep = _watch(env, judge, lambda k: env.step_joint_targets(jump, env.gripper_cmd), 4, snap.ctrl_prev)
    assert "velocity" in rep["criteria"] and "accel" in rep["criteria"], rep
    assert rep["details"]["velocity"]["worst"] == pytest.approx(0.3 / 0.05 / 2.175, rel=1e-3)


def test_judge_flags_joint_limit_and_workspace(runner):
    env, judge = runner.env, runner.judge
    snap = runner.pool.home[2]
    F.restore(env, snap)
    q = env.joint_targets()
    q_goal = q.copy()
    q_goal[6] = FRANKA_Q_MAX[6] + 0.1          # the sim's joint 7 range reaches past Franka's (3.68 rad)
    rep = _watch(env, judge, _ramp(env, q_goal, 40), 40, snap.ctrl_prev)
    assert "joint_limit" in rep["criteria"], rep
    F.restore(env, snap)
    p, R = env.tcp_pose()
    q_goal = env.solve_ik(np.r_[0.12, p[1], p[2]], R, iters=100)   # 3 cm short of workspace x_min 0.15
    rep = _watch(env, judge, _ramp(env, q_goal, 60), 60, snap.ctrl_prev)
    assert "workspace" in rep["criteria"], rep


def test_judge_flags_a_hold_that_moves(runner):
    env, judge = runner.env, runner.judge
    snap = runner.pool.home[0]
    F.restore(env, snap)
    q = env.joint_targets()
    rep = _watch(env, judge, lambda k: env.step_joint_targets(q + 0.002 * k, env.gripper_cmd), 4, snap.ctrl_prev,
                 hold=True)
    assert "hold_motion" in rep["criteria"], rep


def test_judge_passes_clean_motion_and_sees_every_substep(runner):
    env, judge = runner.env, runner.judge
    e = runner.pool.expert[0]
    t, snap = e["snaps"][10]
    F.restore(env, snap)
    rep = _watch(env, judge, lambda k: env.step(e["actions"][t + k], render=False), 8, snap.ctrl_prev)
    assert rep["criteria"] == [], rep
    assert rep["substeps"] == 8 * env.substeps


def test_judge_hooks_an_env_without_substep_hook(runner):
    env = runner.env
    judge = SafetyJudge(env, JudgeConfig(mesh=False))
    F.restore(env, runner.pool.home[0])      # an env of before the hook: env.mj.mj_step is wrapped instead
    rep = _watch(env, judge, lambda k: env.step_joint_targets(env.joint_targets(), 0.0), 2, proxy=True)
    assert rep["substeps"] == 2 * env.substeps
    assert env.mj is mujoco


def test_restore_is_exact(runner):
    case = runner.case("random", 3)
    a = runner.run(case, "stepwise")
    qa = runner.env.data.qpos.copy()
    b = runner.run(case, "stepwise")
    assert np.array_equal(qa, runner.env.data.qpos)
    assert a["judge"] == b["judge"] and a["verdict"] == b["verdict"]


# ---------------------------------------------------------------------------------------------- the campaign
@pytest.fixture(scope="module")
def campaign(runner):
    F._W = runner                                          # reuse the module's worker (pool, env, checker)
    cases = F.plan_cases(CI_CHUNKS)
    recs = F._run_batch((cases, F.MODES))
    table = F.summarize(recs)
    print("\n" + F.format_table(table))
    return recs, table


def _failures(recs, pred, n=8):
    out = []
    for r in recs:
        if pred(r):
            what = "; ".join(r["judge"]["details"][k]["what"] for k in r["judge"]["criteria"]) if r.get("judge") else ""
            exc = "; ".join(f"{e['where']} {e['type']} at {e['at']}: {e['message']}" for e in r["exceptions"])
            out.append(f"{r['mode']} {r['category']}:{r['index']} ({r['sub']}) {what} {exc}")
    return f"{len(out)}: " + " | ".join(out[:n])


def test_campaign_covers_categories_and_modes(campaign):
    recs, table = campaign
    assert len(recs) >= 500
    assert {r["category"] for r in recs} == set(F.CATEGORIES)
    assert {r["mode"] for r in recs} == set(F.MODES)


def test_campaign_no_unsafe_motion_admitted(campaign):
    recs, _ = campaign
    bad = [r for r in recs if r.get("admitted") and r.get("unsafe")]
    assert not bad, _failures(recs, lambda r: r.get("admitted") and r.get("unsafe"))


def test_campaign_holds_are_safe(campaign):
    recs, _ = campaign
    bad = [r for r in recs if r.get("admitted") is False and r.get("unsafe")]
    assert not bad, _failures(recs, lambda r: r.get("admitted") is False and r.get("unsafe"))


def test_campaign_no_exceptions(campaign):
    recs, _ = campaign
    assert not any(r["exceptions"] or r.get("harness_error") for r in recs), \
        _failures(recs, lambda r: r["exceptions"] or r.get("harness_error"))


def test_campaign_false_rejections_of_expert_chunks(campaign):
    recs, _ = campaign
    expert = [r for r in recs if r["category"] == "expert"]
    fr = [r for r in expert if r.get("false_rejection")]
    assert len(expert) >= 60
    assert len(fr) <= 0.005 * len(expert), [f"{r['mode']} {r['index']}: {r.get('verdict')}" for r in fr[:5]]
