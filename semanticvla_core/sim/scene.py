"""The project's own MJCF scene: a Franka Panda on a table top, cubes, plates, bowls, regions, two cameras.

The Panda model (kinematic chain, meshes, position actuators) comes from the ``gymnasium-robotics`` wheel,
installed with ``--no-deps`` and never imported: its asset files are only located on disk. The chain is
renamed to the project's frame names while it is written into the scene (``panda0_link0`` ->
``panda_link0``, ``robot:panda0_joint1`` -> ``panda_joint1``, ...), every arm body gets gravity
compensation, and a ``panda_hand`` frame is added with a ``tcp`` site 0.1034 m along its +z (Franka's
``panda_hand_tcp``) and the wrist camera.

Frames (see the shared formats): ``panda_link0`` is the world frame; the table top is the plane z = 0.

The scene is a *superset*: a fixed pool of cubes (free bodies), plates, bowls and regions (mocap bodies).
Each episode places the objects its task uses in the workspace and parks the others out of view, so one
compiled model (and one renderer) serves every task family. Plates and regions carry a label square whose
material (a small PNG drawn with OpenCV at build time) is switched per episode.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..camera import look_at

ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")
LABELS = tuple("123456789") + tuple("ABCDE")   # glyphs drawn on plate / region label squares
CUBE_HALF = 0.025                              # 5 cm cubes
PLATE_HALF = 0.06                              # 12 cm square plates
PLATE_HALF_H = 0.005                           # 1 cm thick (top face at z = 0.01)
BOWL_INNER_HALF = 0.055                        # inner half-width of the square bowl
BOWL_WALL_H = 0.04                             # wall height
BOWL_WALL_T = 0.008                            # wall thickness
REGION_HALF = 0.06                             # pushing target squares (visual only)
PARK_X = -3.0                                  # unused objects wait here, out of every camera's view
HAND_IN_LINK7_POS = (0.0, 0.0, 0.107)
HAND_IN_LINK7_QUAT = (0.92388, 0.0, 0.0, -0.382683)
TCP_OFFSET = 0.1034
LABEL_YAW = 1.5707963    # label squares turned so glyphs read upright in the agent view
PAD_OFFSET = 0.003    # pad centre from the finger frame along the finger's closing axis
PAD_CENTER_Z = 0.06   # pad centre along the finger's axis (from the finger frame, toward the fingertip)
PAD_HALF_SIZE = (0.0095, 0.004, 0.028)   # pad box half sizes (m): its bottom reaches ~4.3 cm beyond the TCP
# The sim's finger pads as boxes in each finger link's frame (URDF panda_{left,right}finger = the MJCF finger bodies):
# (finger link, centre (3,), half sizes (3,)). The safety filter adds them to its collision model (gripper "sim").
SIM_FINGER_PADS = (("panda_leftfinger", (0.0, PAD_OFFSET, PAD_CENTER_Z), PAD_HALF_SIZE),
                   ("panda_rightfinger", (0.0, -PAD_OFFSET, PAD_CENTER_Z), PAD_HALF_SIZE))


def franka_assets_dir() -> Path:
    """Directory of the Panda MJCF inside the installed ``gymnasium-robotics`` wheel (not imported)."""
    spec = importlib.util.find_spec("gymnasium_robotics")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("gymnasium-robotics is not installed: `pip install --no-deps gymnasium-robotics==1.4.2` "
                         "(requirements/sim-nodeps.txt) provides the Panda model")
    d = Path(list(spec.submodule_search_locations)[0]) / "envs" / "assets" / "kitchen_franka" / "franka_assets"
    for f in ("chain.xml", "assets.xml", "actuator.xml"):
        if not (d / f).is_file():
            raise ValueError(f"Panda asset file missing: {d / f}")
    return d


@dataclass
class SceneConfig:
    """What the compiled scene contains. Defaults are what every task family needs."""

    num_cubes: int = 4            # pool of free cubes
    num_plates: int = 3           # pool of plates (each with a label square)
    num_bowls: int = 2
    num_regions: int = 2          # flat target squares for pushing (each with a label square)
    agent_eye: tuple = (1.15, 0.0, 0.60)      # agent-view camera position (m, world)
    agent_target: tuple = (0.45, 0.0, 0.08)   # point it looks at
    agent_fovy: float = 45.0
    wrist_pos_in_hand: tuple = (0.065, 0.0, 0.035)   # wrist camera on the hand, looking past the fingers
    wrist_target_in_hand: tuple = (0.0, 0.0, 0.17)
    wrist_fovy: float = 75.0
    label_px: int = 64            # label texture size
    texture_dir: str | None = None   # where label PNGs go (default: a per-user temp cache)


def _mj_xyaxes(T: np.ndarray) -> str:
    """Optical-frame pose (x right, y down, z forward) -> MuJoCo camera ``xyaxes`` (x right, y up, looks -z)."""
    x, y = T[:3, 0], -T[:3, 1]
    return " ".join(f"{v:.6f}" for v in np.concatenate([x, y]))


def write_label_textures(out_dir: Path, size: int = 64) -> dict[str, Path]:
    """Draw each label glyph (black on white) into ``out_dir/label_<g>.png`` with OpenCV; returns the paths."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for g in LABELS:
        img = np.full((size, size, 3), 255, np.uint8)
        scale = size / 40.0
        th = max(2, size // 12)
        (tw, tht), _ = cv2.getTextSize(g, cv2.FONT_HERSHEY_SIMPLEX, scale, th)
        org = ((size - tw) // 2, (size + tht) // 2)
        cv2.putText(img, g, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), th, cv2.LINE_AA)
        cv2.rectangle(img, (1, 1), (size - 2, size - 2), (0, 0, 0), max(1, size // 32))
        p = out_dir / f"label_{g}.png"
        tmp = out_dir / f".label_{g}.{os.getpid()}.png"
        cv2.imwrite(str(tmp), img)
        os.replace(tmp, p)   # atomic: several worker processes may build scenes at once
        paths[g] = p
    return paths


def _panda_chain_xml(assets: Path) -> tuple[str, str, str]:
    """The Panda chain, assets and actuators, renamed to the project's frame names."""
    chain = (assets / "chain.xml").read_text()
    act = (assets / "actuator.xml").read_text()
    asset = (assets / "assets.xml").read_text()

    def rename(s: str) -> str:
        s = s.replace("robot:panda0_", "panda_").replace("panda0_", "panda_")
        s = s.replace('name="panda_leftfinger"', 'name="panda_leftfinger"')
        return s

    chain, act = rename(chain), rename(act)
    # gravity compensation on every arm body (position actuators then hold the arm without sag)
    chain = re.sub(r"<body name=", '<body gravcomp="1" name=', chain)
    # a panda_hand frame (Franka's), with the TCP site, a marker site and the wrist camera
    hand = "\n".join([
        f'<body name="panda_hand" pos="{" ".join(map(str, HAND_IN_LINK7_POS))}" '
        f'quat="{" ".join(map(str, HAND_IN_LINK7_QUAT))}">',
        f'  <site name="tcp" pos="0 0 {TCP_OFFSET}" size="0.006" rgba="1 0 1 0" group="4"/>',
        f'  <site name="tcp_marker" pos="0 0 {TCP_OFFSET}" size="0.008" rgba="1 0 1 0" group="0"/>',
        "  __WRIST_CAMERA__",
        "</body>",
    ])
    chain = chain.replace('<site name=\'end_effector\'', hand + "\n<site name='end_effector'", 1)
    # flat finger pads (like Franka's rubber pads): the wheel's crossed capsules grip a cube along a line,
    # about which it pivots and squirts out when squeezed off-centre
    for side, sign in (("left", 1.0), ("right", -1.0)):
        m = re.search(rf'<body gravcomp="1" name="panda_{side}finger"[^>]*>', chain)
        pad = (f'<geom name="panda_{side}_pad" type="box" pos="0 {sign * PAD_OFFSET} {PAD_CENTER_Z}" '
               f'size="{" ".join(map(str, PAD_HALF_SIZE))}" rgba="0.25 0.25 0.25 1" group="0"/>')
        chain = chain[:m.end()] + pad + chain[m.end():]
    body_start = chain.index("<body")
    body_end = chain.rindex("</mujocoinclude>")
    chain_body = chain[body_start:body_end]
    act_body = act[act.index("<actuator>"):act.rindex("</actuator>") + len("</actuator>")]
    # assets.xml: compiler/meshes/defaults; drop the mujocoinclude wrapper, the compiler line and option
    a = asset[asset.index("<mujocoinclude>") + len("<mujocoinclude>"):asset.rindex("</mujocoinclude>")]
    a = re.sub(r"<compiler[^>]*/>", "", a)
    a = re.sub(r"<option[^>]*/>", "", a)
    a = re.sub(r"<size[^>]*/>", "", a)
    return chain_body, a, act_body


def build_scene_xml(cfg: SceneConfig | None = None) -> str:
    """Return the complete MJCF text of the tabletop scene (meshes referenced by absolute path)."""
    cfg = cfg or SceneConfig()
    assets = franka_assets_dir()
    tex_dir = Path(cfg.texture_dir) if cfg.texture_dir else Path(tempfile.gettempdir()) / "semanticvla_sim_textures"
    tex_paths = write_label_textures(tex_dir / f"px{cfg.label_px}", cfg.label_px)
    chain, panda_assets, actuators = _panda_chain_xml(assets)

    T_agent = look_at(np.array(cfg.agent_eye), np.array(cfg.agent_target))
    T_wrist = look_at(np.array(cfg.wrist_pos_in_hand), np.array(cfg.wrist_target_in_hand), up=(1.0, 0.0, 0.0))
    wp = " ".join(f"{v:.5f}" for v in cfg.wrist_pos_in_hand)
    chain = chain.replace("__WRIST_CAMERA__", f'<camera name="wrist" mode="fixed" pos="{wp}" '
                                              f'xyaxes="{_mj_xyaxes(T_wrist)}" fovy="{cfg.wrist_fovy}"/>')

    tex_xml = "\n".join(f'<texture name="tex_label_{g}" type="2d" file="{p}"/>\n'
                        f'<material name="mat_label_{g}" texture="tex_label_{g}" rgba="1 1 1 1" specular="0.1"/>'
                        for g, p in tex_paths.items())
    bodies = []
    for i in range(cfg.num_cubes):
        bodies.append(
            f'<body name="cube{i}" pos="{PARK_X} {i * 0.2} {CUBE_HALF}"><freejoint name="cube{i}_joint"/>'
            f'<geom name="cube{i}" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" rgba="1 0 0 1" '
            f'mass="0.08" friction="0.5 0.01 0.001" condim="4"/></body>')
    for i in range(cfg.num_plates):
        bodies.append(
            f'<body name="plate{i}" mocap="true" pos="{PARK_X} {2 + i * 0.3} {PLATE_HALF_H}">'
            f'<geom name="plate{i}" type="box" size="{PLATE_HALF} {PLATE_HALF} {PLATE_HALF_H}" rgba="0 0 1 1" '
            f'friction="1 0.01 0.001"/>'
            f'<geom name="plate{i}_label" type="box" pos="0 0 {PLATE_HALF_H + 0.0005}" '
            f'size="{0.6 * PLATE_HALF} {0.6 * PLATE_HALF} 0.0005" euler="0 0 {LABEL_YAW}" material="mat_label_1" contype="0" '
            f'conaffinity="0"/></body>')
    for i in range(cfg.num_bowls):
        h, t, wh = BOWL_INNER_HALF, BOWL_WALL_T, BOWL_WALL_H
        o = h + t / 2
        walls = [(o, 0, t / 2, h + t), (-o, 0, t / 2, h + t), (0, o, h + t, t / 2), (0, -o, h + t, t / 2)]
        g = [f'<geom name="bowl{i}_base" type="box" size="{h + t} {h + t} 0.003" pos="0 0 0.003" rgba="1 1 0 1"/>']
        g += [f'<geom name="bowl{i}_wall{k}" type="box" size="{sx} {sy} {wh / 2}" pos="{x} {y} {wh / 2}" '
              f'rgba="1 1 0 1"/>' for k, (x, y, sx, sy) in enumerate(walls)]
        bodies.append(f'<body name="bowl{i}" mocap="true" pos="{PARK_X} {-2 - i * 0.3} 0">{"".join(g)}</body>')
    for i in range(cfg.num_regions):
        bodies.append(
            f'<body name="region{i}" mocap="true" pos="{PARK_X} {-4 - i * 0.3} 0">'
            f'<geom name="region{i}" type="box" size="{REGION_HALF} {REGION_HALF} 0.0004" pos="0 0 0.0004" '
            f'rgba="0 1 0 1" contype="0" conaffinity="0"/>'
            f'<geom name="region{i}_label" type="box" pos="{REGION_HALF * 0.55} {REGION_HALF * 0.55} 0.001" '
            f'size="{0.35 * REGION_HALF} {0.35 * REGION_HALF} 0.0002" euler="0 0 {LABEL_YAW}" material="mat_label_1" contype="0" '
            f'conaffinity="0"/></body>')

    ae = " ".join(f"{v:.5f}" for v in cfg.agent_eye)
    return f"""<mujoco model="semanticvla_tabletop">
  <compiler angle="radian" meshdir="{assets / 'meshes'}"/>
  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="1"/>
  <size nuser_actuator="5"/>
  <visual>
    <quality offsamples="0" shadowsize="0"/>
    <global offwidth="640" offheight="640"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0.05 0.05 0.05"/>
  </visual>
  {panda_assets}
  <asset>
    <material name="mat_table" rgba="0.62 0.50 0.38 1" specular="0.05" reflectance="0"/>
    {tex_xml}
  </asset>
  <worldbody>
    <light name="key" pos="0.8 0.4 1.8" dir="-0.4 -0.2 -1" directional="true" castshadow="false"
           diffuse="0.55 0.55 0.55" specular="0.1 0.1 0.1"/>
    <geom name="table" type="plane" size="3 3 0.05" material="mat_table" contype="1" conaffinity="1" friction="0.5 0.005 0.0001"/>
    <camera name="agentview" mode="fixed" pos="{ae}" xyaxes="{_mj_xyaxes(T_agent)}" fovy="{cfg.agent_fovy}"/>
    {chain}
    {"".join(bodies)}
  </worldbody>
  {actuators}
</mujoco>
"""


def scene_hash(xml: str) -> str:
    return hashlib.sha1(xml.encode()).hexdigest()[:12]
