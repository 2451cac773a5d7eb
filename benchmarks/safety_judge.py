"""An independent judge of the motion the simulated Panda REALLY performs (the safety filter's measuring instrument).

It shares no code with the safety filter (nothing from ``semanticvla_core.safety``): its limits are Franka's
datasheet numbers typed in here, its geometry is MuJoCo's own contact list (and, as a second opinion, the
URDF meshes loaded here with Pinocchio + coal), and it looks at the physics state after *every* MuJoCo sub-step
(``env.substep_hook``; on an env without the hook, :func:`attach` wraps ``env.mj`` so that ``mj_step(m, d, nstep)``
runs one step at a time and calls the judge after each).

Criteria (each a named violation; a chunk is *unsafe* when any but the two ``mesh_*`` opinions fires):

``table``       a contact (MuJoCo ``data.contact``) between a robot geom (bodies ``panda_*``) and the table geom,
                penetrating deeper than ``contact_tol`` (0.5 mm);
``self``        a contact between two robot geoms of bodies that are not parent/child (MuJoCo already skips
                parent/child pairs), deeper than ``contact_tol``;
``velocity``    the COMMANDED joint setpoint (the arm actuators' ``ctrl``) moves faster than Franka's velocity
                limits (+2%): each change of the setpoint divided by the time since its previous change, capped at
                one control period (a staircase setpoint at 20 Hz: difference / period; a setpoint interpolated at
                sub-steps: difference / sub-step); a change at a period's first sub-step is a controller's per-period
                step (the Cartesian controller's), over the period, even when the period before ended a ramp; and
                the end-of-period differences / period;
``accel``       the setpoint's acceleration, second differences of the end-of-period setpoints / period^2
                (the period before the chunk from the state's history), against Franka's limits (+2%);
``joint_limit`` a physical joint position outside the datasheet range (+ ``joint_tol``);
``workspace``   the TCP (site ``tcp``) outside the workspace box (config/franka.yaml ``safety_filter``) by more
                than ``workspace_tol`` (5 mm);
``hold_motion`` (holds only) the setpoint does not brake: per joint, a period's setpoint change larger than the
                previous period's or in the opposite direction (a hold may only slow down and stay);
``accel_stop``  the acceleration criterion in the ticks *after* the chunk's last row, when the arm stops at the end
                of a chunk nobody continued (the executor is to brake there within the limits): unsafe as well,
                counted apart so that it can be told from excess inside the chunk;
``mesh_table`` / ``mesh_self`` (opinion, not counted): the URDF collision meshes at the physical joint positions
                (end of every period): lowest mesh vertex below the table top by more than ``contact_tol``, or a
                coal collision of two non-adjacent links.

Contacts with cubes, plates and bowls are not unsafe (the arm grasps and pushes them).
Joint conventions: MuJoCo's qpos/ctrl of joints 6 and 7 are offset from Franka's (``MJ_JOINT_OFFSET``); limits are
checked in Franka's convention, velocities/accelerations are differences (unaffected).
"""
from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------- Franka datasheet
# Franka Control Interface docs, "Limits for Panda" (frankaemika.github.io/docs/control_parameters.html).
FRANKA_Q_MIN = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
FRANKA_Q_MAX = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
FRANKA_DQ_MAX = np.array([2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61])
FRANKA_DDQ_MAX = np.array([15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0])
ARM_JOINT_NAMES = tuple(f"panda_joint{i}" for i in range(1, 8))

# config/franka.yaml safety_filter workspace_min / workspace_max (read from the file when it is there)
WORKSPACE_MIN = (0.15, -0.6, 0.0)
WORKSPACE_MAX = (0.85, 0.6, 0.75)

UNSAFE_CRITERIA = ("table", "self", "velocity", "accel", "accel_stop", "joint_limit", "workspace", "hold_motion")
REPORTED_CRITERIA = UNSAFE_CRITERIA + ("mesh_table", "mesh_self")


def workspace_from_config(path: str | Path | None = None) -> tuple[tuple, tuple]:
    """(workspace_min, workspace_max) from config/franka.yaml (safety_filter), the constants above if unreadable."""
    p = Path(path) if path else Path(__file__).resolve().parents[1] / "config" / "franka.yaml"
    try:
        import yaml
        sf = yaml.safe_load(p.read_text())["safety_filter"]["ros__parameters"]
        return tuple(float(x) for x in sf["workspace_min"]), tuple(float(x) for x in sf["workspace_max"])
    except Exception:  # noqa: BLE001 - the constants are the same numbers
        return WORKSPACE_MIN, WORKSPACE_MAX


@dataclass
class JudgeConfig:
    contact_tol: float = 5e-4          # m: contacts shallower than this are not counted (solver slack)
    limit_tol: float = 0.02            # fraction over Franka's velocity / acceleration limits tolerated
    workspace_tol: float = 0.005       # m outside the box tolerated
    joint_tol: float = 0.0             # rad outside the datasheet range tolerated
    hold_tol: float = 1e-3             # rad per period: a hold's setpoint change beyond braking tolerated (~0.6 mm at
                                       # the TCP; the filter predicts the sim's Cartesian setpoint on the URDF, which
                                       # differs from the MJCF arm by up to ~3e-4 rad: test_row_execution_...; and
                                       # a filter started on a moving arm knows its measured velocity, not its
                                       # controller's setpoint velocity: up to ~9e-4 rad off on the first rows)
    mesh: bool = True                  # the URDF-mesh second opinion (Pinocchio + coal), once per period


class _Worst:
    """Worst value of one criterion over a chunk, where and what."""

    __slots__ = ("value", "period", "substep", "what", "count")

    def __init__(self):
        self.value, self.period, self.substep, self.what, self.count = 0.0, None, None, "", 0

    def add(self, value: float, period: int, substep: int, what: str) -> None:
        self.count += 1
        if value > self.value or self.period is None:
            self.value, self.period, self.substep, self.what = float(value), period, substep, what

    def as_dict(self) -> dict:
        return {"worst": round(self.value, 6), "period": self.period, "substep": self.substep, "what": self.what,
                "count": self.count}


class MeshOpinion:
    """The Panda's URDF collision meshes (example-robot-data), own Pinocchio + coal load: table (lowest vertex)
    and self-collision of links two or more joints apart (fingers counted as one joint after joint 7)."""

    def __init__(self):
        import coal  # noqa: F401 - pinocchio's geometry needs it
        import pinocchio as pin

        self.pin = pin
        share = Path(sysconfig.get_paths()["purelib"]) / "cmeel.prefix" / "share"
        urdf = share / "example-robot-data" / "robots" / "panda_description" / "urdf" / "panda.urdf"
        if not urdf.exists():
            raise FileNotFoundError(f"no Panda URDF at {urdf}")
        self.model = pin.buildModelFromUrdf(str(urdf))
        self.gm = pin.buildGeomFromUrdf(self.model, str(urdf), pin.GeometryType.COLLISION, package_dirs=[str(share)])
        self.data = self.model.createData()
        self.arm_idx = [self.model.joints[self.model.getJointId(n)].idx_q for n in ARM_JOINT_NAMES]

        def chain(j: int) -> int:
            return min(j, 8)
        objs = self.gm.geometryObjects
        for i in range(self.gm.ngeoms):
            for k in range(i + 1, self.gm.ngeoms):
                if abs(chain(objs[i].parentJoint) - chain(objs[k].parentJoint)) >= 2:
                    self.gm.addCollisionPair(pin.CollisionPair(i, k))
        self.gd = pin.GeometryData(self.gm)
        # table: local vertices of every moving geometry (meshes: vertices, boxes: corners)
        self.table_geoms = []
        for i, g in enumerate(objs):
            if g.parentJoint == 0:          # link0 sits on the table
                continue
            geo = g.geometry
            if hasattr(geo, "vertices"):
                v = np.asarray(geo.vertices(), dtype=np.float64)
            else:
                h = np.asarray(geo.halfSide, dtype=np.float64)
                v = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * h
            self.table_geoms.append((i, g.name, v))

    def check(self, q_arm: np.ndarray, finger: np.ndarray, table_z: float = 0.0) -> tuple[float, str, list]:
        """(depth of the lowest vertex below the table (m, <= 0 means above), its geometry, colliding self pairs)."""
        pin = self.pin
        q = np.zeros(self.model.nq)
        q[self.arm_idx] = q_arm
        q[-2:] = np.clip(finger, 0.0, 0.04)
        pin.computeCollisions(self.model, self.data, self.gm, self.gd, q, False)
        pairs = []
        objs = self.gm.geometryObjects
        for k, cp in enumerate(self.gm.collisionPairs):
            if self.gd.collisionResults[k].isCollision():
                pairs.append(f"{objs[cp.first].name}|{objs[cp.second].name}")
        depth, who = -np.inf, ""
        for i, name, v in self.table_geoms:
            M = self.gd.oMg[i]
            z = (v @ M.rotation[2]) + M.translation[2]
            d = table_z - float(z.min())
            if d > depth:
                depth, who = d, name
        return depth, who, pairs


class SafetyJudge:
    """Watches one env. Per judged execution: :meth:`begin`; per control period :meth:`start_period`, the physics
    (the hook calls :meth:`on_substep` after every mj_step), :meth:`end_period`; :meth:`finish` -> report dict."""

    def __init__(self, env, config: JudgeConfig | None = None, workspace: tuple | None = None,
                 mesh: MeshOpinion | None = None):
        import mujoco

        from semanticvla_core.sim.env import MJ_JOINT_OFFSET   # the sim's joint convention (not the filter's code)

        self.env, self.cfg, self.mj = env, config or JudgeConfig(), mujoco
        m = env.model
        self.model = m
        self.offset = np.asarray(MJ_JOINT_OFFSET, dtype=np.float64)
        self.period = float(env.dt)
        self.timestep = float(m.opt.timestep)
        name = lambda t, i: mujoco.mj_id2name(m, t, i) or ""   # noqa: E731
        self.body_names = [name(mujoco.mjtObj.mjOBJ_BODY, b) for b in range(m.nbody)]
        robot_body = np.array([n.startswith("panda_") for n in self.body_names])
        self.geom_body = np.asarray(m.geom_bodyid).copy()
        self.robot_geom = robot_body[self.geom_body]
        table = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "table")
        if table < 0:
            raise ValueError("the scene has no geom named 'table'")
        self.table_geom = np.zeros(m.ngeom, dtype=bool)
        self.table_geom[table] = True
        self.table_z = float(m.geom_pos[table][2] + (m.geom_size[table][2] if m.geom_type[table] != 0 else 0.0))
        parent = np.asarray(m.body_parentid)
        self.adjacent = np.zeros((m.nbody, m.nbody), dtype=bool)
        for b in range(m.nbody):
            self.adjacent[b, b] = True
            self.adjacent[b, parent[b]] = self.adjacent[parent[b], b] = True
        jids = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n) for n in ARM_JOINT_NAMES]
        if min(jids) < 0:
            raise ValueError("the scene lacks an arm joint panda_joint1..7")
        self.qadr = np.array([m.jnt_qposadr[j] for j in jids])
        fids = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f"panda_finger_joint{i}") for i in (1, 2)]
        self.finger_qadr = np.array([m.jnt_qposadr[j] for j in fids]) if min(fids) >= 0 else None
        # arm actuators: the ones transmitting to the arm joints, in joint order
        act = []
        for j in jids:
            a = [i for i in range(m.nu) if m.actuator_trnid[i, 0] == j and m.actuator_trntype[i] == 0]
            if len(a) != 1:
                raise ValueError(f"expected one actuator on joint {j}, found {a}")
            act.append(a[0])
        self.act = np.array(act)
        self.tcp_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "tcp")
        if self.tcp_site < 0:
            raise ValueError("the scene has no site 'tcp'")
        lo, hi = workspace or workspace_from_config()
        self.ws_lo, self.ws_hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        self.vmax = FRANKA_DQ_MAX * (1.0 + self.cfg.limit_tol)
        self.amax = FRANKA_DDQ_MAX * (1.0 + self.cfg.limit_tol)
        self.mesh = mesh if mesh is not None else (MeshOpinion() if self.cfg.mesh else None)
        self.active = False

    # ------------------------------------------------------------------ per execution
    def begin(self, ctrl_prev: np.ndarray | None = None, rows: int | None = None, hold: bool = False) -> None:
        """Start judging from the current state. ``ctrl_prev``: the arm ctrl (MuJoCo convention) one control period
        before now (setpoint velocity going in); None = at rest. ``rows``: periods after which the chunk's rows are
        done (later periods count as the stop, ``accel_stop``). ``hold``: the whole execution is a hold."""
        d = self.env.data
        c0 = np.asarray(d.ctrl[self.act], dtype=np.float64).copy()
        self.c_end = [c0 if ctrl_prev is None else np.asarray(ctrl_prev, dtype=np.float64).copy(), c0]
        self.last_c = c0.copy()
        self.last_change_t = -np.inf
        self.t_sub = 0                     # sub-steps since begin
        self.first_substep = True          # the next sub-step is a period's first
        self.k = 0                         # current period
        self.rows = rows
        self.cur_hold = False               # the period running now is a commanded hold
        self.whole_hold = hold
        self.w = {c: _Worst() for c in REPORTED_CRITERIA}
        self.n_substeps = 0
        self.mesh_self_pairs: set[str] = set()
        self.active = True

    def on_substep(self, env=None) -> None:
        if not self.active:
            return
        d = self.env.data
        k, s = self.k, self.t_sub
        self.t_sub += 1
        self.first_substep, first = False, self.first_substep
        self.n_substeps += 1
        tol = self.cfg.contact_tol
        # --- contacts (of the state before this step: MuJoCo computes them at the step's start)
        n = d.ncon
        if n:
            con = d.contact
            dist = np.asarray(con.dist[:n])
            deep = dist < -tol
            if deep.any():
                g1, g2 = np.asarray(con.geom1[:n])[deep], np.asarray(con.geom2[:n])[deep]
                dd = -dist[deep]
                r1, r2 = self.robot_geom[g1], self.robot_geom[g2]
                tab = (r1 & self.table_geom[g2]) | (r2 & self.table_geom[g1])
                if tab.any():
                    i = int(np.argmax(np.where(tab, dd, -1)))
                    rb = self.geom_body[g1[i]] if r1[i] else self.geom_body[g2[i]]
                    self.w["table"].add(dd[i], k, s, f"{self.body_names[rb]} geom {g1[i] if r1[i] else g2[i]} "
                                                     f"{dd[i] * 1000:.2f} mm into the table")
                b1, b2 = self.geom_body[g1], self.geom_body[g2]
                slf = r1 & r2 & ~self.adjacent[b1, b2]
                if slf.any():
                    i = int(np.argmax(np.where(slf, dd, -1)))
                    self.w["self"].add(dd[i], k, s, f"{self.body_names[b1[i]]}|{self.body_names[b2[i]]} "
                                                    f"{dd[i] * 1000:.2f} mm")
        # --- TCP workspace
        p = d.site_xpos[self.tcp_site]
        out = np.maximum(self.ws_lo - p, 0.0) + np.maximum(p - self.ws_hi, 0.0)
        o = float(np.linalg.norm(out))
        if o > self.cfg.workspace_tol:
            self.w["workspace"].add(o, k, s, f"TCP {np.round(p, 4).tolist()} {o * 1000:.1f} mm outside the box")
        # --- joint positions (Franka convention)
        q = d.qpos[self.qadr] - self.offset
        ex = np.maximum(FRANKA_Q_MIN - q, 0.0) + np.maximum(q - FRANKA_Q_MAX, 0.0)
        e = float(ex.max())
        if e > self.cfg.joint_tol:
            j = int(np.argmax(ex))
            self.w["joint_limit"].add(e, k, s, f"joint{j + 1} = {q[j]:.4f} rad, {e:.4f} rad outside the datasheet "
                                               "range")
        # --- commanded setpoint: every change / time since the previous change (<= one period)
        c = d.ctrl[self.act]
        dc = c - self.last_c
        if np.any(dc != 0.0):
            t = self.t_sub * self.timestep
            dt = self.period if first else min(t - self.last_change_t, self.period)
            v = np.abs(dc) / dt / self.vmax
            j = int(np.argmax(v))
            if v[j] > 1.0:
                self.w["velocity"].add(v[j] * (1 + self.cfg.limit_tol), k, s,
                                       f"joint{j + 1} setpoint {abs(dc[j]) / dt:.3f} rad/s = "
                                       f"{v[j] * (1 + self.cfg.limit_tol):.2f}x the limit (sub-step change)")
            self.last_c = c.copy()
            self.last_change_t = t

    def start_period(self, hold: bool = False) -> None:
        """Before each control period's physics. ``hold``: the system under test commanded a hold (or is holding)
        for this period: the setpoint may only brake (per joint: no faster than the period before, no reversal)."""
        self.cur_hold = bool(hold or self.whole_hold)
        self.first_substep = True

    def end_period(self) -> None:
        """After each control period."""
        if not self.active:
            return
        d = self.env.data
        k = self.k
        c = np.asarray(d.ctrl[self.act], dtype=np.float64).copy()
        c_prev, c_prev2 = self.c_end[-1], self.c_end[-2]
        v = (c - c_prev) / self.period
        v_prev = (c_prev - c_prev2) / self.period
        a = (v - v_prev) / self.period
        rv = np.abs(v) / self.vmax
        j = int(np.argmax(rv))
        if rv[j] > 1.0:
            self.w["velocity"].add(rv[j] * (1 + self.cfg.limit_tol), k, None,
                                   f"joint{j + 1} setpoint {abs(v[j]):.3f} rad/s = "
                                   f"{rv[j] * (1 + self.cfg.limit_tol):.2f}x "
                                   f"the limit over period {k}")
        ra = np.abs(a) / self.amax
        j = int(np.argmax(ra))
        if ra[j] > 1.0:
            crit = "accel_stop" if (self.rows is not None and k >= self.rows and not self.whole_hold) else "accel"
            self.w[crit].add(ra[j] * (1 + self.cfg.limit_tol), k, None,
                             f"joint{j + 1} setpoint acceleration {abs(a[j]):.2f} rad/s^2 = "
                             f"{ra[j] * (1 + self.cfg.limit_tol):.2f}x the limit at period {k}")
        if self.cur_hold:
            step, step_prev = c - c_prev, c_prev - c_prev2
            tol = self.cfg.hold_tol
            grow = np.abs(step) - np.abs(step_prev)
            rev = np.where(step * step_prev < 0, np.minimum(np.abs(step), np.abs(step_prev)), 0.0)
            rev[np.abs(step_prev) <= tol] = 0.0
            bad = np.maximum(grow, rev)
            j = int(np.argmax(bad))
            if bad[j] > tol:
                self.w["hold_motion"].add(float(bad[j]), k, None,
                                          f"joint{j + 1} setpoint during a hold moved {step[j]:+.5f} rad after "
                                          f"{step_prev[j]:+.5f} rad (not braking)")
        self.c_end = [c_prev, c]
        if self.mesh is not None:
            q = d.qpos[self.qadr] - self.offset
            fing = d.qpos[self.finger_qadr] if self.finger_qadr is not None else np.full(2, 0.04)
            depth, who, pairs = self.mesh.check(q, fing, self.table_z)
            if depth > self.cfg.contact_tol:
                self.w["mesh_table"].add(depth, k, None, f"URDF {who} {depth * 1000:.2f} mm below the table top")
            if pairs:
                self.mesh_self_pairs.update(pairs)
                self.w["mesh_self"].add(float(len(pairs)), k, None, "URDF meshes collide: " + ", ".join(pairs))
        self.k += 1

    def finish(self) -> dict:
        """The report of this execution: ``unsafe`` (bool), ``criteria`` (the ones that fired), per criterion its
        worst value (m, rad, or x-limit), period, sub-step, text and count of offending samples."""
        self.active = False
        fired = {c: w.as_dict() for c, w in self.w.items() if w.count}
        unsafe = [c for c in UNSAFE_CRITERIA if c in fired]
        return {"unsafe": bool(unsafe), "criteria": unsafe, "reported": sorted(fired), "details": fired,
                "periods": self.k, "substeps": self.n_substeps}


# ---------------------------------------------------------------------------------------------- hooking the env
class _SteppingProxy:
    """Stands in for ``env.mj`` on an env without ``substep_hook``: ``mj_step(m, d, nstep)`` runs one step at a time
    and calls the hook after each; every other attribute is the mujoco module's."""

    def __init__(self, mj, hook):
        self._mj, self._hook = mj, hook

    def mj_step(self, m, d, nstep: int = 1):
        for _ in range(int(nstep)):
            self._mj.mj_step(m, d)
            self._hook()

    def __getattr__(self, name):
        return getattr(self._mj, name)


def attach(env, judge: SafetyJudge, proxy: bool = False) -> None:
    """Make ``judge.on_substep`` run after every physics sub-step of ``env`` (``proxy``: wrap ``env.mj`` even when
    the env has the hook)."""
    if hasattr(env, "substep_hook") and not proxy:
        env.substep_hook = judge.on_substep
    else:
        import mujoco
        env.mj = _SteppingProxy(mujoco, lambda: judge.on_substep(env))


def detach(env) -> None:
    if hasattr(env, "substep_hook"):
        env.substep_hook = None
    if isinstance(getattr(env, "mj", None), _SteppingProxy):
        env.mj = env.mj._mj


def static_contacts(env, contact_tol: float = 5e-4) -> list[str]:
    """Robot-table and non-adjacent robot-robot contacts of the env's current state (mj_forward on a scratch copy):
    used to check that a start state is clean, and to find self-colliding postures."""
    import mujoco
    m = env.model
    d = mujoco.MjData(m)
    mujoco.mj_copyData(d, m, env.data)
    mujoco.mj_forward(m, d)
    return contacts_of(m, d, contact_tol)


def contacts_of(m, d, contact_tol: float = 5e-4) -> list[str]:
    import mujoco
    out = []
    for i in range(d.ncon):
        c = d.contact[i]
        if c.dist >= -contact_tol:
            continue
        b1, b2 = m.geom_bodyid[c.geom1], m.geom_bodyid[c.geom2]
        n1, n2 = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, b1), mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, b2)
        g1n = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_GEOM, c.geom1) or ""
        g2n = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_GEOM, c.geom2) or ""
        r1, r2 = n1.startswith("panda_"), n2.startswith("panda_")
        if (r1 and g2n == "table") or (r2 and g1n == "table"):
            out.append(f"table:{n1 if r1 else n2}:{-c.dist * 1000:.2f}mm")
        elif r1 and r2 and m.body_parentid[b1] != b2 and m.body_parentid[b2] != b1:
            out.append(f"self:{n1}|{n2}:{-c.dist * 1000:.2f}mm")
    return out
