"""MoveIt backend of the safety checker: the same whole-chunk pipeline as the builtin checker, with the
collision check delegated to MoveIt's planning scene (``moveit_py``).

What MoveIt adds over the builtin checker: the *live* planning scene (objects other nodes added,
perceived octomaps, attached objects) checked with MoveIt's own collision environment and allowed
collision matrix. FK/IK, limits, workspace and timing stay on the Pinocchio model of the same URDF
(:mod:`.kinematics`), so both backends agree on everything but the collision world.

Written against the moveit_py API (MoveIt 2, Humble .. Rolling):
``moveit.planning.MoveItPy(node_name=..., config_dict=...)``, ``MoveItPy.get_planning_scene_monitor()``,
``PlanningSceneMonitor.read_only()`` / ``read_write()`` context managers yielding a
``moveit.core.planning_scene.PlanningScene``, ``moveit.core.robot_state.RobotState(robot_model)`` with
``set_joint_group_positions(group, values)``, ``joint_positions`` (dict) and ``update()``, and the scene's
``is_state_colliding(robot_state=..., joint_model_group_name=..., verbose=...)``,
``is_state_valid(robot_state=..., joint_model_group_name=..., verbose=...)``,
``check_self_collision(collision_request, collision_result, state)`` and
``apply_collision_object(collision_object_msg)``.

``moveit_py`` is only available with a ROS 2 distribution that ships MoveIt, so this module cannot be
exercised in this project's pip-only test environment; :func:`semanticvla_core.safety.make_checker`
falls back to the builtin checker (with a logged reason) whenever it cannot be used.

Configuration (:func:`moveit_parameters`, the one place): ``MoveItPy`` builds its own rclcpp node from a
``config_dict`` in MoveIt's standard parameter names. The safety filter node declares the same names
(flattened: ``robot_description_kinematics.arm.kinematics_solver``) when ``backend`` is ``moveit``, the launch
file and the bring-up set them, and the node hands them to ``MoveItPy``:

* ``robot_description`` / ``robot_description_semantic``: the URDF and SRDF the builtin checker loads
  (example-robot-data's Panda, :func:`.kinematics.panda_description_xml`; its arm group is ``arm``);
* ``robot_description_kinematics.<group>``: KDL, as MoveIt's Panda config;
* ``planning_scene_monitor_options``: the monitor's name, the description parameter, ``/joint_states`` and
  MoveIt's default scene topics (the scene that other nodes and RViz's MotionPlanning panel edit);
* ``planning_pipelines`` + ``ompl``: one OMPL pipeline (MoveItCpp refuses to start without one; the filter
  never plans with it).

To use your own MoveIt configuration of the arm, set these parameters of the ``safety_filter`` node to its
values (e.g. a ``MoveItConfigsBuilder(...).to_dict()`` in your own launch file) *and* point
``SEMANTICVLA_PANDA_DESCRIPTION`` at the same URDF/SRDF, so that the kinematics (Pinocchio) and the collision world
(MoveIt) describe one robot.
"""
from __future__ import annotations

import logging

import numpy as np

from ..actions import GRIPPER_OPEN
from .checker import SafetyChecker, SafetyConfig, Violation, ViolationKind
from .kinematics import PANDA_ARM_JOINTS, PANDA_FINGER_JOINTS, PandaKinematics, gripper_to_width

log = logging.getLogger(__name__)

TABLE_OBJECT_ID = "semanticvla_table"
ENV_OBJECT_PREFIX = "semanticvla_env_"


MOVEIT_PIPELINE = "ompl"


def srdf_arm_group(srdf: str) -> str:
    """Name of the SRDF group that moves the 7 arm joints (``arm`` in example-robot-data, ``panda_arm`` in
    moveit_resources_panda): a group listing exactly panda_joint1..7, else the first group defined by a chain."""
    import xml.etree.ElementTree as ET

    groups = ET.fromstring(srdf).findall("group")
    for g in groups:
        if {j.get("name") for j in g.findall("joint")} == set(PANDA_ARM_JOINTS):
            return g.get("name")
    for g in groups:
        if g.find("chain") is not None:
            return g.get("name")
    raise ValueError(f"SRDF has no group of the arm joints {PANDA_ARM_JOINTS} (groups: "
                     f"{[g.get('name') for g in groups]})")


def moveit_parameters(urdf: str | None = None, srdf: str | None = None,
                      joint_states_topic: str = "/joint_states") -> dict:
    """What ``MoveItPy`` needs, in MoveIt's parameter names, nested (``MoveItPy(config_dict=...)`` takes it as is;
    ROS parameters are its :func:`flatten_parameters`). ``urdf``/``srdf`` None: the description the builtin checker
    loads (module text)."""
    if urdf is None or srdf is None:
        from .kinematics import panda_description_xml
        u, s = panda_description_xml()
        urdf, srdf = urdf if urdf is not None else u, srdf if srdf is not None else s
    group = srdf_arm_group(srdf)
    return {
        "robot_description": urdf,
        "robot_description_semantic": srdf,
        "robot_description_kinematics": {group: {
            "kinematics_solver": "kdl_kinematics_plugin/KDLKinematicsPlugin",
            "kinematics_solver_search_resolution": 0.005,
            "kinematics_solver_timeout": 0.005,
        }},
        "planning_scene_monitor_options": {
            "name": "planning_scene_monitor",
            "robot_description": "robot_description",
            "joint_state_topic": joint_states_topic,
            "attached_collision_object_topic": "/moveit_cpp/planning_scene_monitor",
            "publish_planning_scene_topic": "/moveit_cpp/publish_planning_scene",
            "monitored_planning_scene_topic": "/moveit_cpp/monitored_planning_scene",
            "wait_for_initial_state_timeout": 10.0,
        },
        "planning_pipelines": {"pipeline_names": [MOVEIT_PIPELINE]},
        MOVEIT_PIPELINE: {
            "planning_plugins": ["ompl_interface/OMPLPlanner"],
            "request_adapters": ["default_planning_request_adapters/ResolveConstraintFrames",
                                 "default_planning_request_adapters/ValidateWorkspaceBounds",
                                 "default_planning_request_adapters/CheckStartStateBounds",
                                 "default_planning_request_adapters/CheckStartStateCollision"],
            "response_adapters": ["default_planning_response_adapters/AddTimeOptimalParameterization",
                                  "default_planning_response_adapters/ValidateSolution"],
            "start_state_max_bounds_error": 0.1,
        },
    }


def flatten_parameters(params: dict, prefix: str = "") -> dict:
    """Nested parameters -> ROS parameter names joined with '.' (as a ROS parameter file nests them)."""
    out = {}
    for k, v in params.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_parameters(v, name + "."))
        else:
            out[name] = v
    return out


def nest_parameters(flat: dict) -> dict:
    """Inverse of :func:`flatten_parameters` (ROS parameters -> ``MoveItPy``'s ``config_dict``)."""
    out: dict = {}
    for name, v in flat.items():
        *path, leaf = name.split(".")
        d = out
        for p in path:
            d = d.setdefault(p, {})
        d[leaf] = v
    return out


def moveit_unavailable_reason() -> str | None:
    """None when ``moveit_py`` can be imported, otherwise why not."""
    try:
        from moveit.core.robot_state import RobotState  # noqa: F401
        from moveit.planning import MoveItPy  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken ROS environment raising anything
        return f"moveit_py not importable ({type(e).__name__}: {e})"
    return None


class MoveItSafetyChecker(SafetyChecker):
    """Whole-chunk checker whose collision check is MoveIt's planning scene.

    moveit: an existing ``MoveItPy`` instance (preferred: the node owns it); otherwise one is created
      with ``node_name`` and ``config_dict`` (the MoveIt config of the Panda, e.g. from
      ``MoveItConfigsBuilder("moveit_resources_panda").to_moveit_configs().to_dict()``).
      :func:`moveit_parameters` gives the one for the description the builtin checker uses.
    group: the arm's joint model group in the SRDF; None: found in ``config_dict``'s SRDF (:func:`srdf_arm_group`),
      else ``panda_arm`` (moveit_resources_panda).
    add_scene_objects: put the table plane and ``config.env_boxes`` into the planning scene.
    """

    backend_name = "moveit"

    def __init__(self, config: SafetyConfig | None = None, kinematics: PandaKinematics | None = None, *,
                 moveit=None, node_name: str = "semanticvla_safety_moveit", config_dict: dict | None = None,
                 group: str | None = None, add_scene_objects: bool = True):
        reason = moveit_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        super().__init__(config, kinematics)
        from moveit.core.robot_state import RobotState
        from moveit.planning import MoveItPy

        self._RobotState = RobotState
        self.moveit = moveit if moveit is not None else MoveItPy(node_name=node_name, config_dict=config_dict)
        self.psm = self.moveit.get_planning_scene_monitor()
        if group is None:
            srdf = (config_dict or {}).get("robot_description_semantic")
            group = srdf_arm_group(srdf) if srdf else "panda_arm"
        self.group = group
        if add_scene_objects:
            self._add_scene_objects()

    # ------------------------------------------------------------------ scene setup
    def _add_scene_objects(self) -> None:
        from geometry_msgs.msg import Pose
        from moveit_msgs.msg import CollisionObject
        from shape_msgs.msg import SolidPrimitive

        import pinocchio as pin

        cfg = self.config
        boxes = [(TABLE_OBJECT_ID, (0.0, 0.0, cfg.table_z + cfg.link_table_margin_m - 0.05),
                  (2 * cfg.table_half_extent_m, 2 * cfg.table_half_extent_m, 0.1), (0.0, 0.0, 0.0))]
        boxes += [(ENV_OBJECT_PREFIX + b.name, b.center, b.size, b.rpy) for b in cfg.env_boxes]
        with self.psm.read_write() as scene:
            for oid, center, size, rpy in boxes:
                co = CollisionObject()
                co.header.frame_id = "panda_link0"
                co.id = oid
                prim = SolidPrimitive()
                prim.type = SolidPrimitive.BOX
                prim.dimensions = [float(s) for s in size]
                pose = Pose()
                pose.position.x, pose.position.y, pose.position.z = (float(c) for c in center)
                qx, qy, qz, qw = pin.Quaternion(pin.rpy.rpyToMatrix(*rpy)).coeffs()  # (x, y, z, w)
                pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (
                    float(qx), float(qy), float(qz), float(qw))
                co.primitives.append(prim)
                co.primitive_poses.append(pose)
                co.operation = CollisionObject.ADD
                scene.apply_collision_object(co)
            scene.current_state.update()
            # the robot base stands on the table: let panda_link0 touch it
            try:
                scene.allowed_collision_matrix.set_entry(TABLE_OBJECT_ID, "panda_link0", True)
            except Exception as e:  # noqa: BLE001 - older bindings expose the ACM read-only
                log.warning("could not allow panda_link0 <-> table contact in the ACM: %s", e)

    # ------------------------------------------------------------------ collision hook
    def _classify(self, scene, state) -> ViolationKind:
        """Self or environment (table vs. other objects) for a state MoveIt found colliding."""
        from moveit.core.collision_detection import CollisionRequest, CollisionResult

        req = CollisionRequest()
        req.joint_model_group_name = self.group
        req.contacts = True
        req.max_contacts = 16
        res = CollisionResult()
        scene.check_self_collision(req, res, state)
        if res.collision:
            return ViolationKind.SELF_COLLISION
        res = CollisionResult()
        scene.check_collision(req, res, state)
        try:
            names = " ".join(str(k) for k in dict(res.contacts).keys())
        except Exception:  # noqa: BLE001 - contact map layout differs between binding versions
            names = ""
        return ViolationKind.TABLE_COLLISION if TABLE_OBJECT_ID in names else ViolationKind.ENV_COLLISION

    def collisions(self, q: np.ndarray, gripper: np.ndarray) -> list[Violation]:
        seen: dict[ViolationKind, Violation] = {}
        with self.psm.read_only() as scene:
            state = self._RobotState(scene.robot_model)
            state.set_to_default_values()
            for i, (qi, gi) in enumerate(zip(q, gripper)):
                if not np.all(np.isfinite(qi)):
                    continue
                state.set_joint_group_positions(self.group, np.asarray(qi, dtype=np.float64))
                half = float(gripper_to_width(float(gi) if np.isfinite(gi) else GRIPPER_OPEN)) / 2.0
                try:
                    state.joint_positions = {PANDA_FINGER_JOINTS[0]: half, PANDA_FINGER_JOINTS[1]: half}
                except Exception:  # noqa: BLE001 - a model without finger joints (or mimic only)
                    pass
                state.update()
                if scene.is_state_colliding(robot_state=state, joint_model_group_name=self.group, verbose=False):
                    kind = self._classify(scene, state)
                    seen.setdefault(kind, Violation(kind, f"MoveIt planning scene: state {i} is in collision", i))
                elif not scene.is_state_valid(robot_state=state, joint_model_group_name=self.group, verbose=False):
                    seen.setdefault(ViolationKind.ENV_COLLISION, Violation(
                        ViolationKind.ENV_COLLISION, f"MoveIt planning scene: state {i} is invalid (constraints/feasibility)", i))
        return list(seen.values())
