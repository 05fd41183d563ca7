"""A small, generated Human3.6M dataset in the exact 3DMPPE format (synthetic data).

`python -m helpers demo-data OUT_DIR [--seed N] [--frames K]` writes a folder that the real-data code path
reads unchanged, laid out like the Kaggle dataset (helpers/README.md, "Annotation files"):

    OUT_DIR/annotations (1)/annotations/Human36M_subject{9,11}_{data,camera,joint_3d}.json
    OUT_DIR/S9_ACT2_16/<sequence>/<sequence>_%06d.jpg
    OUT_DIR/S11_ACT2_16/S11_ACT2_16/<sequence>/...        (nested one level deeper, as on Kaggle)
    OUT_DIR/bbox_human36m_output.json                      (a person detector's boxes, official format)
    OUT_DIR/bbox_root_human36m_output.json                 (RootNet format: those boxes processed, noisy roots)
    OUT_DIR/bbox_root_human36m_output.sources.json         (its sidecar: detector boxes, generated roots)
    OUT_DIR/DEMO_DATA.md                                   (says plainly that this is synthetic)

The cameras are the public Human3.6M calibration of S9 and S11. The people are stick figures posed by a
small kinematic model (bone lengths of a real S11 frame) with per-action postures and motion; the images are
thick-stroke renderings of them with left and right limbs in different colours, so a flip error is visible.
Everything is deterministic for a seed. Numbers measured on it say nothing about a model's real accuracy.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from . import atomic, box_sources
from .geometry import camera_to_pixel, process_bboxes, world_to_camera
from .protocol import ACTION_NAMES, EVAL_JOINTS, FIRST_ACTION_IDX, FRAME_STRIDE, SKELETON

# ----------------------------------------------------------------------------------------------------
# Dataset facts (helpers/README.md, "Annotation files")
# ----------------------------------------------------------------------------------------------------
SUBJECTS: tuple[int, ...] = (9, 11)
FIRST_IMAGE_ID = {9: 1559752, 11: 1877420}  # global ids as in the released annotation files
SUBACTIONS = (1, 2)
CAMERA_IDS = (1, 2, 3, 4)
# (subject, action_idx, subaction_idx, cam_idx) of the sequence missing from the released data.
MISSING_SEQUENCES = frozenset({(11, 2, 2, 1)})
# Real per-camera image size (width, height).
IMAGE_SIZE = {1: (1000, 1002), 2: (1000, 1000), 3: (1000, 1000), 4: (1000, 1002)}
FPS = 50.0
# A frame that protocol sampling (frame_idx % 64 == 0) must skip; present in the camera-1, subaction-1
# sequences only, to keep the default set small.
NON_SAMPLED_FRAME = 5
DEFAULT_FRAMES = 2
MAX_FRAMES = 40

ANNOTATION_SUBDIR = ("annotations (1)", "annotations")
# Image folders as on Kaggle; S11's is nested one level deeper so layout discovery is exercised.
IMAGE_SUBDIRS = {9: ("S9_ACT2_16",), 11: ("S11_ACT2_16", "S11_ACT2_16")}
BBOX_ROOT_FILE = "bbox_root_human36m_output.json"
DETECTOR_FILE = "bbox_human36m_output.json"  # the name the official RootNet test reads detector boxes from
# The demo detector: the annotation box with its centre moved by N(0, 3 %) and each side scaled by exp(N(0, 5 %)).
DETECTOR_CENTRE_JITTER, DETECTOR_SIZE_JITTER = 0.03, 0.05
ROOT_NOISE_MM = (15.0, 15.0, 40.0)  # per-axis sd of the noise on the bbox_root file's roots
README_FILE = "DEMO_DATA.md"  # also the marker that lets a rerun replace the folder
JPEG_QUALITY = 90

# Public Human3.6M calibration (3DMPPE camera files): X_cam = R . X_world + t (mm), pinhole f, c (px).
CAMERAS: dict[int, dict[int, dict[str, tuple]]] = {
    9: {
        1: {
            "R": (
                (-0.9033486260272712, 0.4269119654795902, 0.04132110338549699),
                (0.04153059141632878, 0.18295112836308314, -0.9822444169387193),
                (-0.426891637106247, -0.885593054602975, -0.18299855684600486),
            ),
            "t": (-321.20776125070915, 467.1346519339377, 5514.330241304001),
            "f": (1145.04940458804, 1143.78109572365),
            "c": (512.541504956548, 515.4514869776),
        },
        2: {
            "R": (
                (0.9315720465358872, 0.3634828818709248, -0.007329167738975462),
                (0.06810071184729458, -0.1942674979614265, -0.9785818475128686),
                (-0.35712156915934173, 0.9111203728501601, -0.2057276136510484),
            ),
            "t": (19.19303939084135, 404.22827999346055, 5702.1693038350595),
            "f": (1149.67569986785, 1147.59161666764),
            "c": (508.848621645943, 508.064917088557),
        },
        3: {
            "R": (
                (-0.9269344187566051, -0.37323035401781157, -0.03862235316617463),
                (-0.04725991505866475, 0.21824050525219763, -0.9747500101543538),
                (0.3722352532377898, -0.9017040449654221, -0.21993347071329028),
            ),
            "t": (455.4010868460436, 273.3587876019835, 5657.814578282303),
            "f": (1149.14071676148, 1148.7989685676),
            "c": (519.815837182153, 501.402658888552),
        },
        4: {
            "R": (
                (0.9154607066450974, -0.3973460708470371, 0.06362228046274651),
                (-0.049406281472139824, -0.2678916280979431, -0.9621814251720562),
                (0.39936288503058803, 0.8776959471123555, -0.2648756509809662),
            ),
            "t": (-69.2712542455083, 422.18454762467445, 4457.893318879169),
            "f": (1145.51133842318, 1144.77392807652),
            "c": (514.968197319863, 501.882018537695),
        },
    },
    11: {
        1: {
            "R": (
                (-0.9059013006181885, 0.4217144115102914, 0.038727105014486805),
                (0.044493184429779696, 0.1857199061874203, -0.9815948619389944),
                (-0.4211450938543295, -0.8875049698848251, -0.1870073216538954),
            ),
            "t": (-234.7208032216618, 464.34018262882194, 5536.652631113797),
            "f": (1145.04940458804, 1143.78109572365),
            "c": (512.541504956548, 515.4514869776),
        },
        2: {
            "R": (
                (0.9216646531492915, 0.3879848687925067, -0.0014172943441045224),
                (0.07721054863099915, -0.18699239961454955, -0.979322405373477),
                (-0.3802272982247548, 0.9024974149959955, -0.20230080971229314),
            ),
            "t": (-11.934348472090557, 449.4165893644565, 5541.113551868937),
            "f": (1149.67569986785, 1147.59161666764),
            "c": (508.848621645943, 508.064917088557),
        },
        3: {
            "R": (
                (-0.9063540572469627, -0.42053101768163204, -0.04093880896680188),
                (-0.0603212197838846, 0.22468715090881142, -0.9725620980997899),
                (0.4181909532208387, -0.8790161246439863, -0.2290130547809762),
            ),
            "t": (781.127357651581, 235.3131620173424, 5576.37044019807),
            "f": (1149.14071676148, 1148.7989685676),
            "c": (519.815837182153, 501.402658888552),
        },
        4: {
            "R": (
                (0.91754082476548, -0.39226322025776267, 0.06517975852741943),
                (-0.04531905395586976, -0.26600517028098103, -0.9629057236990188),
                (0.395050652748768, 0.8805514269006645, -0.2618476013752581),
            ),
            "t": (-155.13650339749012, 422.16256306729633, 4435.416222660868),
            "f": (1145.51133842318, 1144.77392807652),
            "c": (514.968197319863, 501.882018537695),
        },
    },
}

# ----------------------------------------------------------------------------------------------------
# Kinematic model. Body frame: x = the person's right, y = forward, z = up (mm).
# Rest pose: bone vectors (joint minus parent) of a real S11 frame (Directions, frame 0) expressed in the
# body frame, made left/right symmetric and with the arms lowered to hang at the sides.
# ----------------------------------------------------------------------------------------------------
PARENT = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
REST_BONES = np.array([
    (0.0, 0.0, 0.0),        # Pelvis (root)
    (138.0, 0.0, 0.0),      # R_Hip
    (10.0, 4.0, -461.8),    # R_Knee
    (0.0, -60.0, -456.1),   # R_Ankle
    (-138.0, 0.0, 0.0),     # L_Hip
    (-10.0, 4.0, -461.8),   # L_Knee
    (0.0, -60.0, -456.1),   # L_Ankle
    (5.7, -3.0, 254.3),     # Torso
    (-3.3, -4.2, 249.9),    # Neck
    (0.0, 67.2, 88.4),      # Nose
    (0.0, -46.2, 105.3),    # Head
    (-164.2, -23.3, 6.0),   # L_Shoulder
    (-30.0, 0.0, -281.6),   # L_Elbow
    (-10.0, 40.0, -244.8),  # L_Wrist
    (164.2, -23.3, 6.0),    # R_Shoulder
    (30.0, 0.0, -281.6),    # R_Elbow
    (10.0, 40.0, -244.8),   # R_Wrist
])
SUBJECT_SCALE = {9: 1.03, 11: 1.0}  # S9 is a little taller than S11
ANKLE_HEIGHT_MM = 85.0  # ankle joint height above the floor when the foot is on the ground

# Postures: joint angles in degrees. bend/nod > 0 lean forward; flex > 0 moves a limb forward;
# abd > 0 moves it away from the body; knee/elbow > 0 bend the joint.
ANGLE_KEYS = (
    "bend", "twist", "nod",
    "r_hip_flex", "r_hip_abd", "r_knee", "l_hip_flex", "l_hip_abd", "l_knee",
    "r_sh_flex", "r_sh_abd", "r_elbow", "l_sh_flex", "l_sh_abd", "l_elbow",
)
NEUTRAL = {"r_sh_abd": 8.0, "l_sh_abd": 8.0, "r_elbow": 12.0, "l_elbow": 12.0, "r_knee": 3.0, "l_knee": 3.0}
# Per action: (static posture, oscillations [(key, amplitude deg, period s)], gait or None).
# Periods are chosen so frames 64 apart (1.28 s) never repeat a pose.
ACTION_STYLES: dict[str, tuple[dict, list, dict | None]] = {
    "Directions": ({"r_sh_flex": 65, "r_sh_abd": 20, "r_elbow": 15, "l_sh_flex": 10},
                   [("r_sh_flex", 25, 2.3), ("twist", 15, 3.1), ("r_sh_abd", 15, 1.7)], None),
    "Discussion": ({"r_sh_flex": 25, "l_sh_flex": 20, "r_elbow": 80, "l_elbow": 75},
                   [("r_elbow", 25, 1.7), ("l_elbow", 20, 2.1), ("twist", 10, 2.9), ("nod", 8, 1.9)], None),
    "Eating": ({"r_sh_flex": 40, "r_elbow": 125, "l_sh_flex": 25, "l_elbow": 90, "nod": 12},
               [("r_elbow", 15, 1.3), ("r_sh_flex", 10, 2.2), ("nod", 6, 1.9)], None),
    "Greeting": ({"r_sh_abd": 80, "r_sh_flex": 20, "r_elbow": 70, "bend": 5},
                 [("r_elbow", 30, 0.9), ("r_sh_abd", 10, 2.4), ("l_sh_flex", 10, 2.0)], None),
    "Phoning": ({"r_sh_flex": 20, "r_sh_abd": 30, "r_elbow": 145, "l_elbow": 30, "l_sh_abd": 15},
                [("twist", 8, 3.7), ("l_elbow", 20, 2.3), ("r_hip_abd", 5, 4.1)], None),
    "Posing": ({"r_sh_abd": 75, "l_sh_abd": 75, "r_elbow": 20, "l_elbow": 20, "r_hip_abd": 12, "l_hip_abd": 12},
               [("r_sh_abd", 12, 2.7), ("l_sh_abd", 12, 3.3), ("bend", 8, 2.9)], None),
    "Purchases": ({"bend": 25, "r_sh_flex": 45, "l_sh_flex": 45, "r_elbow": 40, "l_elbow": 40},
                  [("bend", 10, 2.3), ("r_sh_flex", 15, 1.9), ("twist", 10, 3.1)], None),
    "Sitting": ({"r_hip_flex": 90, "l_hip_flex": 88, "r_knee": 90, "l_knee": 85, "bend": -5,
                 "r_sh_flex": 35, "l_sh_flex": 35, "r_elbow": 50, "l_elbow": 50},
                [("bend", 8, 3.3), ("r_elbow", 20, 2.1), ("nod", 10, 2.7)], None),
    "SittingDown": ({"r_hip_flex": 80, "l_hip_flex": 75, "r_knee": 105, "l_knee": 100, "bend": 30,
                     "r_sh_flex": 50, "l_sh_flex": 45, "r_elbow": 30, "l_elbow": 35},
                    [("r_hip_flex", 15, 2.9), ("l_hip_flex", 15, 2.9), ("bend", 12, 2.9), ("r_knee", 15, 2.9)], None),
    "Smoking": ({"r_sh_flex": 35, "r_elbow": 115, "l_sh_abd": 15, "l_elbow": 25},
                [("r_elbow", 25, 2.6), ("r_sh_flex", 10, 2.6), ("r_hip_abd", 5, 3.9)], None),
    "Photo": ({"r_sh_flex": 70, "l_sh_flex": 70, "r_sh_abd": 20, "l_sh_abd": 20, "r_elbow": 100, "l_elbow": 100,
               "bend": 10, "nod": 10},
              [("twist", 20, 3.4), ("bend", 8, 2.5)], None),
    "Waiting": ({"r_sh_flex": -15, "l_sh_flex": -15, "r_elbow": 30, "l_elbow": 30},
                [("r_hip_abd", 5, 4.1), ("twist", 10, 5.3), ("nod", 8, 3.1)], None),
    "Walking": ({}, [], {"speed_mm_s": 1100.0, "cycle_s": 1.1}),
    "WalkDog": ({"bend": 15, "r_sh_flex": 40, "r_elbow": 30}, [("nod", 8, 1.7)],
                {"speed_mm_s": 800.0, "cycle_s": 1.3}),
    "WalkTogether": ({"l_elbow": 70, "l_sh_flex": 15}, [("twist", 8, 2.9)],
                     {"speed_mm_s": 900.0, "cycle_s": 1.2}),
}

# ----------------------------------------------------------------------------------------------------
# Rendering. Radii in mm (drawn at the perspective scale of each bone); colours RGB.
# ----------------------------------------------------------------------------------------------------
RIGHT_COLOUR = (np.array((215.0, 55.0, 40.0)), np.array((245.0, 140.0, 60.0)))   # upper, lower limb
LEFT_COLOUR = (np.array((40.0, 75.0, 215.0)), np.array((70.0, 170.0, 235.0)))
TORSO_COLOUR = np.array((70.0, 150.0, 85.0))
HEAD_COLOUR = np.array((235.0, 200.0, 160.0))
HEAD_RADIUS_MM = 100.0
RIGHT_JOINTS = frozenset({1, 2, 3, 14, 15, 16})
LEFT_JOINTS = frozenset({4, 5, 6, 11, 12, 13})
LOWER_LIMB_JOINTS = frozenset({3, 6, 13, 16})  # child joints of shins and forearms
BONE_RADIUS_MM = {  # keyed by the child joint of each SKELETON bone
    7: 125.0, 8: 115.0, 9: 45.0, 10: 55.0, 11: 55.0, 14: 55.0, 1: 85.0, 4: 85.0,
    2: 70.0, 5: 70.0, 3: 50.0, 6: 50.0, 12: 45.0, 15: 45.0, 13: 38.0, 16: 38.0,
}
IMAGE_MARGIN_PX = 50  # every joint projects at least this far inside the image


class DemoDataError(RuntimeError):
    """Bad arguments or an output folder that must not be overwritten."""


@dataclass(frozen=True)
class DemoDataset:
    """What `generate` wrote."""

    root: Path
    annotation_dir: Path
    image_dirs: dict[int, Path]
    bbox_root_file: Path
    detector_file: Path
    subjects: tuple[int, ...]
    seed: int
    frames: int
    num_images: int
    num_test_samples: int  # images with frame_idx % 64 == 0
    seconds: float
    images_per_subject: dict[int, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Poses
# ----------------------------------------------------------------------------------------------------
def _rotation(axis: str, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _local_rotations(angles: dict[str, float]) -> list[np.ndarray]:
    """Rotation of each bone (indexed by child joint) about its parent joint, in the parent's frame."""
    rot = [np.eye(3) for _ in range(EVAL_JOINTS)]
    # Forward bending is a negative rotation about the right (x) axis for bones that point up.
    rot[7] = _rotation("x", -angles["bend"] / 2)
    rot[8] = _rotation("x", -angles["bend"] / 2) @ _rotation("z", angles["twist"])
    rot[9] = _rotation("x", -angles["nod"])
    for side, sign, hip, knee, shoulder, elbow in (("r", 1.0, 2, 3, 15, 16), ("l", -1.0, 5, 6, 12, 13)):
        # For bones that point down, +x rotation swings them forward; -sign*y swings them outward.
        rot[hip] = _rotation("y", -sign * angles[f"{side}_hip_abd"]) @ _rotation("x", angles[f"{side}_hip_flex"])
        rot[knee] = _rotation("x", -angles[f"{side}_knee"])
        rot[shoulder] = _rotation("y", -sign * angles[f"{side}_sh_abd"]) @ _rotation("x", angles[f"{side}_sh_flex"])
        rot[elbow] = _rotation("x", angles[f"{side}_elbow"])
    return rot


def _forward_kinematics(angles: dict[str, float], scale: float) -> np.ndarray:
    """(17, 3) joints in the body frame, pelvis at the origin."""
    local = _local_rotations(angles)
    orientation = [np.eye(3)] * EVAL_JOINTS
    joints = np.zeros((EVAL_JOINTS, 3))
    for j in range(1, EVAL_JOINTS):
        p = PARENT[j]
        orientation[j] = orientation[p] @ local[j]
        joints[j] = joints[p] + orientation[j] @ (REST_BONES[j] * scale)
    return joints


@dataclass(frozen=True)
class _SequenceMotion:
    """Randomised but deterministic parameters of one (subject, action, subaction) sequence."""

    action: str
    scale: float
    angle_offsets: dict[str, float]
    phases: tuple[float, ...]
    position: tuple[float, float]  # standing place, or the centre of the walking circle (mm)
    yaw: float  # facing (rad); for walking the start angle on the circle
    radius: float  # walking circle radius (mm)
    direction: float  # +1 / -1: walking counter-clockwise or clockwise


def _draw_motion(rng: np.random.Generator, action: str, scale: float, spread: float) -> _SequenceMotion:
    static, oscillations, gait = ACTION_STYLES[action]
    offsets = {k: float(rng.normal(0.0, 5.0)) for k in ANGLE_KEYS}
    phases = tuple(float(rng.uniform(0, 2 * math.pi)) for _ in range(len(oscillations) + 1))
    if gait:
        position = (float(rng.uniform(-300, 300)) * spread, float(rng.uniform(-300, 300)) * spread)
        radius = float(rng.uniform(900, 1400)) * spread
    else:
        position = (float(rng.uniform(-900, 900)) * spread, float(rng.uniform(-700, 700)) * spread)
        radius = 0.0
    return _SequenceMotion(action, scale, offsets, phases, position, float(rng.uniform(0, 2 * math.pi)),
                           radius, float(rng.choice([-1.0, 1.0])))


def _pose_world(motion: _SequenceMotion, frame_idx: int) -> np.ndarray:
    """(17, 3) world joints (mm, z up) of one frame."""
    static, oscillations, gait = ACTION_STYLES[motion.action]
    t = frame_idx / FPS
    angles = {k: NEUTRAL.get(k, 0.0) for k in ANGLE_KEYS}
    angles.update({k: float(v) for k, v in static.items()})
    for k in ANGLE_KEYS:
        angles[k] += motion.angle_offsets[k]
    for (key, amplitude, period), phase in zip(oscillations, motion.phases):
        angles[key] += amplitude * math.sin(2 * math.pi * t / period + phase)
    if gait:
        phi = 2 * math.pi * t / gait["cycle_s"] + motion.phases[-1]
        swing = math.sin(phi)
        angles["r_hip_flex"] += 25 * swing
        angles["l_hip_flex"] -= 25 * swing
        # The knee bends while its leg swings forward.
        angles["r_knee"] += 45 * max(0.0, math.cos(phi)) ** 2
        angles["l_knee"] += 45 * max(0.0, -math.cos(phi)) ** 2
        angles["r_sh_flex"] -= 18 * swing  # arms swing against the legs
        angles["l_sh_flex"] += 18 * swing
        angles["twist"] += 6 * swing
        alpha = motion.yaw + motion.direction * gait["speed_mm_s"] * t / motion.radius
        x = motion.position[0] + motion.radius * math.cos(alpha)
        y = motion.position[1] + motion.radius * math.sin(alpha)
        facing = (-motion.direction * math.sin(alpha), motion.direction * math.cos(alpha))  # circle tangent
        yaw = math.atan2(-facing[0], facing[1])  # rotates body +y onto `facing`
    else:
        sway = 20.0 * math.sin(2 * math.pi * t / 4.7 + motion.phases[-1])
        x, y, yaw = motion.position[0] + sway, motion.position[1], motion.yaw
    body = _forward_kinematics(angles, motion.scale)
    # Stand (or sit) on the floor: the lower ankle rests at ankle height.
    body[:, 2] += ANKLE_HEIGHT_MM - min(body[3, 2], body[6, 2])
    return body @ _rotation("z", math.degrees(yaw)).T + np.array([x, y, 0.0])


def _project(joints_world: np.ndarray, camera: dict) -> np.ndarray:
    """(..., 17, 3) world -> (..., 17, 3) [u, v, Z_cam]."""
    return camera_to_pixel(world_to_camera(joints_world, camera["R"], camera["t"]), camera["f"], camera["c"])


def _inside_images(joints_world: np.ndarray, subject: int) -> bool:
    for cam_idx in CAMERA_IDS:
        uvz = _project(joints_world, CAMERAS[subject][cam_idx])
        width, height = IMAGE_SIZE[cam_idx]
        if (uvz[..., 2].min() < 1500 or uvz[..., 0].min() < IMAGE_MARGIN_PX
                or uvz[..., 0].max() > width - 1 - IMAGE_MARGIN_PX or uvz[..., 1].min() < IMAGE_MARGIN_PX
                or uvz[..., 1].max() > height - 1 - IMAGE_MARGIN_PX):
            return False
    return True


def _sequence_poses(seed: int, subject: int, action_idx: int, subaction_idx: int,
                    frames: list[int]) -> dict[int, np.ndarray]:
    """World joints of the listed frames, placed so that every camera sees the whole person."""
    action = ACTION_NAMES[action_idx - FIRST_ACTION_IDX]
    rng = np.random.default_rng([seed, subject, action_idx, subaction_idx, 1])
    for attempt in range(200):
        spread = 1.0 - attempt / 250.0  # shrink the placement range if the first draws do not fit
        motion = _draw_motion(rng, action, SUBJECT_SCALE[subject], spread)
        # Annotation files store float32 world joints, as the released ones do.
        poses = {f: _pose_world(motion, f).astype(np.float32) for f in frames}
        if _inside_images(np.stack(list(poses.values())).astype(np.float64), subject):
            return poses
    raise RuntimeError(f"could not place S{subject} action {action_idx} subaction {subaction_idx} inside "
                       "all camera views; the placement ranges in helpers/demo_data.py are inconsistent")


def annotation_bbox(uv: np.ndarray) -> list[float]:
    """The Human3.6M annotation tool's box: centre of the projected-joint box, size (max - min - 1) * 1.2."""
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    centre = (lo + hi) / 2.0
    size = (hi - lo - 1.0) * 1.2
    return [float(centre[0] - size[0] / 2), float(centre[1] - size[1] / 2), float(size[0]), float(size[1])]


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------
def _background(seed: int, subject: int, cam_idx: int) -> np.ndarray:
    """(H, W, 3) uint8: a wall-to-floor gradient with faint low-frequency texture."""
    width, height = IMAGE_SIZE[cam_idx]
    rng = np.random.default_rng([seed, subject, cam_idx, 2])
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top = np.array([172.0, 170.0, 164.0], np.float32) + rng.uniform(-6, 6, 3).astype(np.float32)
    bottom = np.array([118.0, 112.0, 104.0], np.float32) + rng.uniform(-6, 6, 3).astype(np.float32)
    image = top * (1.0 - rows) + bottom * rows
    coarse = torch.from_numpy(rng.normal(0.0, 5.0, (1, 1, height // 25 + 1, width // 25 + 1)).astype(np.float32))
    texture = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    image = image + texture[0, 0].numpy()[:, :, None]
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _primitives(uvz: np.ndarray, focal: float) -> list[tuple[float, np.ndarray, np.ndarray, float, np.ndarray]]:
    """Capsules (depth, p, q, radius px, colour) for the limbs, torso and head."""
    prims = []
    for a, b in SKELETON:
        if b in RIGHT_JOINTS:
            colour = RIGHT_COLOUR[b in LOWER_LIMB_JOINTS]
        elif b in LEFT_JOINTS:
            colour = LEFT_COLOUR[b in LOWER_LIMB_JOINTS]
        else:
            colour = TORSO_COLOUR
        depth = float((uvz[a, 2] + uvz[b, 2]) / 2)
        prims.append((depth, uvz[a, :2], uvz[b, :2], BONE_RADIUS_MM[b] * focal / depth, colour))
    head = (uvz[9] + uvz[10]) / 2  # between nose and head top
    prims.append((float(head[2]) - 1.0, head[:2], head[:2], HEAD_RADIUS_MM * focal / float(head[2]), HEAD_COLOUR))
    return prims


def _render_patch(background: np.ndarray, uvz: np.ndarray, focal: float) -> tuple[int, int, np.ndarray]:
    """Draw the figure over `background` (H, W, 3 uint8, not modified); return (x0, y0, patch uint8), the
    changed box only.

    Each capsule is a distance-to-segment field with a one-pixel soft edge and a little shading; capsules
    are painted far to near so nearer limbs cover farther ones.
    """
    height, width = background.shape[:2]
    prims = sorted(_primitives(uvz, focal), key=lambda prim: -prim[0])
    boxes = []
    for _, p, q, radius, _ in prims:
        boxes.append((max(int(math.floor(min(p[0], q[0]) - radius - 2)), 0),
                      max(int(math.floor(min(p[1], q[1]) - radius - 2)), 0),
                      min(int(math.ceil(max(p[0], q[0]) + radius + 2)) + 1, width),
                      min(int(math.ceil(max(p[1], q[1]) + radius + 2)) + 1, height)))
    rx0, ry0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    rx1, ry1 = max(max(b[2] for b in boxes), rx0), max(max(b[3] for b in boxes), ry0)
    canvas = background[ry0:ry1, rx0:rx1].astype(np.float32)
    for (_, p, q, radius, colour), (x0, y0, x1, y1) in zip(prims, boxes):
        if x0 >= x1 or y0 >= y1:
            continue
        xs = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(p[0])
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(p[1])
        seg = (q - p).astype(np.float32)
        length_sq = float(seg @ seg)
        t = np.clip((xs * seg[0] + ys * seg[1]) / length_sq, 0.0, 1.0) if length_sq > 1e-6 else np.float32(0.0)
        dist = np.sqrt((xs - t * seg[0]) ** 2 + (ys - t * seg[1]) ** 2)
        alpha = np.clip(np.float32(radius + 0.5) - dist, 0.0, 1.0)[..., None]
        shade = (1.0 - 0.35 * np.clip(dist / np.float32(radius), 0.0, 1.0) ** 2)[..., None]
        region = canvas[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0]
        region += alpha * (colour.astype(np.float32) * shade - region)
    return rx0, ry0, np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def _jpeg_bytes(background: PIL.Image.Image, background_array: np.ndarray, uvz: np.ndarray, focal: float) -> bytes:
    """Render and encode one frame; only the figure's box is pasted onto a copy of the background."""
    image = background.copy()
    x0, y0, patch = _render_patch(background_array, uvz, focal)
    if patch.size:
        image.paste(PIL.Image.fromarray(patch), (x0, y0))
    buffer = io.BytesIO()  # PIL encodes several times faster than torchvision.io.encode_jpeg here
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------
def sequence_name(subject: int, action_idx: int, subaction_idx: int, cam_idx: int) -> str:
    return f"s_{subject:02d}_act_{action_idx:02d}_subact_{subaction_idx:02d}_ca_{cam_idx:02d}"


def _sequence_frames(frames: int, subaction_idx: int, cam_idx: int) -> list[int]:
    sampled = [FRAME_STRIDE * k for k in range(frames)]
    extra = [NON_SAMPLED_FRAME] if (subaction_idx, cam_idx) == (1, 1) else []
    return sorted(sampled + extra)


def _camera_json(subject: int) -> dict:
    return {str(cam): {key: [list(row) for row in value] if key == "R" else list(value)
                       for key, value in params.items()}
            for cam, params in CAMERAS[subject].items()}


def _write_subject(staging: Path, subject: int, seed: int, frames: int,
                   progress) -> tuple[int, list[dict], list[dict]]:
    """Write one subject's annotation files and images; return (image count, bbox_root entries, detections)."""
    annotation_dir = staging.joinpath(*ANNOTATION_SUBDIR)
    image_root = staging.joinpath(*IMAGE_SUBDIRS[subject])
    noise_rng = np.random.default_rng([seed, subject, 3])
    detector_rng = np.random.default_rng([seed, subject, 5])
    backgrounds = {cam: _background(seed, subject, cam) for cam in CAMERA_IDS}
    background_images = {cam: PIL.Image.fromarray(array) for cam, array in backgrounds.items()}
    images, annotations, bbox_root, detections, joint_3d = [], [], [], [], {}
    next_id = FIRST_IMAGE_ID[subject]
    for action_idx in range(FIRST_ACTION_IDX, FIRST_ACTION_IDX + len(ACTION_NAMES)):
        action = ACTION_NAMES[action_idx - FIRST_ACTION_IDX]
        for subaction_idx in SUBACTIONS:
            cams = [c for c in CAMERA_IDS if (subject, action_idx, subaction_idx, c) not in MISSING_SEQUENCES]
            all_frames = sorted({f for c in cams for f in _sequence_frames(frames, subaction_idx, c)})
            poses = _sequence_poses(seed, subject, action_idx, subaction_idx, all_frames)
            joint_3d.setdefault(str(action_idx), {})[str(subaction_idx)] = {
                str(f): poses[f].astype(np.float64).tolist() for f in all_frames}
            for cam_idx in cams:
                camera = CAMERAS[subject][cam_idx]
                width, height = IMAGE_SIZE[cam_idx]
                background = backgrounds[cam_idx]
                focal = float(np.mean(camera["f"]))
                seq = sequence_name(subject, action_idx, subaction_idx, cam_idx)
                for frame_idx in _sequence_frames(frames, subaction_idx, cam_idx):
                    joint_cam = world_to_camera(poses[frame_idx].astype(np.float64), camera["R"], camera["t"])
                    uvz = camera_to_pixel(joint_cam, camera["f"], camera["c"])
                    file_name = f"{seq}/{seq}_{frame_idx + 1:06d}.jpg"
                    jpeg = _jpeg_bytes(background_images[cam_idx], background, uvz, focal)
                    atomic.write_bytes(image_root / file_name, jpeg)
                    bbox = annotation_bbox(uvz[:, :2])
                    images.append({"id": next_id, "file_name": file_name, "width": width, "height": height,
                                   "subject": subject, "action_name": action, "action_idx": action_idx,
                                   "subaction_idx": subaction_idx, "cam_idx": cam_idx, "frame_idx": frame_idx})
                    annotations.append({"id": next_id, "image_id": next_id, "keypoints_vis": [True] * EVAL_JOINTS,
                                        "bbox": bbox})
                    if frame_idx % FRAME_STRIDE == 0:
                        detections.append(_detector_box(next_id, bbox, detector_rng))
                        bbox_root.append(_bbox_root_entry(detections[-1], width, height, joint_cam[0], noise_rng))
                    next_id += 1
                    progress.update(1)
    atomic.write_json(annotation_dir / f"Human36M_subject{subject}_data.json",
                      {"images": images, "annotations": annotations}, indent=None)
    atomic.write_json(annotation_dir / f"Human36M_subject{subject}_camera.json", _camera_json(subject), indent=None)
    atomic.write_json(annotation_dir / f"Human36M_subject{subject}_joint_3d.json", joint_3d, indent=None)
    return len(images), bbox_root, detections


def _detector_box(image_id: int, gt_bbox: list[float], rng: np.random.Generator) -> dict:
    """A person detector's entry in the official format: an unprocessed box, here the annotation box jittered."""
    x, y, w, h = gt_bbox
    cx = x + w / 2 + rng.normal(0.0, DETECTOR_CENTRE_JITTER) * w
    cy = y + h / 2 + rng.normal(0.0, DETECTOR_CENTRE_JITTER) * h
    w, h = w * math.exp(rng.normal(0.0, DETECTOR_SIZE_JITTER)), h * math.exp(rng.normal(0.0, DETECTOR_SIZE_JITTER))
    return {"image_id": image_id, "category_id": 1, "bbox": [cx - w / 2, cy - h / 2, w, h], "score": 1.0}


def _bbox_root_entry(detection: dict, width: int, height: int, root_cam: np.ndarray, rng: np.random.Generator) -> dict:
    """A RootNet-style entry, like the released file's: the detector's box through process_bbox, and the GT root
    plus a few cm of noise."""
    box, valid = process_bboxes(np.array([detection["bbox"]]), [width], [height])
    if not valid[0]:
        raise RuntimeError(f"image {detection['image_id']}: generated box {detection['bbox']} is empty inside the image")
    root = root_cam + rng.normal(0.0, 1.0, 3) * np.array(ROOT_NOISE_MM)
    return {"image_id": detection["image_id"], "bbox": [float(v) for v in box[0]], "root_cam": [float(v) for v in root]}


def _write_box_files(staging: Path, bbox_root: list[dict], detections: list[dict]) -> None:
    """The detector file, the bbox_root file and the sidecar that says where the bbox_root file's boxes and roots
    come from."""
    bbox_root = sorted(bbox_root, key=lambda e: e["image_id"])
    atomic.write_json(staging / DETECTOR_FILE, sorted(detections, key=lambda e: e["image_id"]), indent=None)
    atomic.write_json(staging / BBOX_ROOT_FILE, bbox_root, indent=None)
    detector_bytes = (staging / DETECTOR_FILE).read_bytes()
    content = box_sources.content_sha256([e["image_id"] for e in bbox_root], [e["bbox"] for e in bbox_root],
                                         [e["root_cam"] for e in bbox_root])
    box_sources.write_sidecar(
        staging / BBOX_ROOT_FILE, content_hash=content, entries=len(bbox_root), protocol=None,
        boxes={"source": "detector", "from": f"{DETECTOR_FILE} beside it (generated: the annotation box jittered)",
               "file_sha256": box_sources.bytes_sha256(detector_bytes)},
        roots={"source": "generated", "detail": f"the ground-truth root plus Gaussian noise, sd {ROOT_NOISE_MM} mm "
                                                "(x, y, z)"},
        note="generated demo data: synthetic")


def _readme(seed: int, frames: int, subjects: tuple[int, ...], num_images: int, num_test: int) -> str:
    return f"""# Demo Human3.6M dataset: GENERATED, SYNTHETIC DATA

This folder was generated by `python -m helpers demo-data` (seed {seed}, {frames} sampled frame(s) per
sequence, subjects {', '.join(f'S{s}' for s in subjects)}). It is **not** Human3.6M footage.

- Annotation files are in the exact 3DMPPE format; the camera parameters are the public Human3.6M
  calibration of S9 and S11. Everything else is synthetic.
- The people are stick figures posed by a small kinematic model with per-action postures; the images are
  renderings of them (right limbs red/orange, left limbs blue, torso green, head beige).
- `{DETECTOR_FILE}` holds a person detector's boxes in the official format (image id and an unprocessed
  box): the ground-truth box with its centre and size jittered (fixed seed). RootNet runs on it with
  `USE_GT_INFO = False` (its `DETECTOR_BOXES` default on the demo).
- `{BBOX_ROOT_FILE}` holds RootNet-format entries: those detector boxes through `process_bbox`, and the
  ground-truth root with a few cm of noise; its sidecar `{box_sources.sidecar_path(BBOX_ROOT_FILE).name}` says so.
- {num_images} images, {num_test} of them test samples (`frame_idx % 64 == 0`). The sequence
  `s_11_act_02_subact_02_ca_01` is absent, as in the released data.

Use it to exercise the pipeline end to end. Errors measured on it say nothing about a model's accuracy
on Human3.6M.
"""


def _prepare_target(out_dir: Path) -> None:
    """Refuse to overwrite a folder that is not an earlier demo dataset."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DemoDataError(f"{out_dir} exists and is not a folder; choose another output path")
        if any(out_dir.iterdir()) and not (out_dir / README_FILE).is_file():
            raise DemoDataError(f"{out_dir} is not empty and holds no {README_FILE}, so it is not a demo dataset "
                                "this tool wrote; refusing to replace it. Choose an empty or new folder.")


def generate(out_dir: str | os.PathLike, seed: int = 0, frames: int = DEFAULT_FRAMES,
             subjects: tuple[int, ...] = SUBJECTS, show_progress: bool = True) -> DemoDataset:
    """Write the demo dataset to `out_dir` and describe it.

    The folder is built beside `out_dir` and moved into place at the end, so a failure leaves nothing
    half-written. An existing earlier demo dataset in `out_dir` is replaced; any other non-empty folder is
    refused.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DemoDataError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not 1 <= frames <= MAX_FRAMES:
        raise DemoDataError(f"frames must be an integer in 1..{MAX_FRAMES} (sampled frames per sequence), "
                            f"got {frames!r}")
    try:
        chosen = tuple(sorted({int(s) for s in subjects}))
    except (TypeError, ValueError):
        chosen = ()
    if not chosen or not set(chosen) <= set(SUBJECTS):
        raise DemoDataError(f"subjects must be a non-empty subset of {SUBJECTS}, got {subjects!r}")
    subjects = chosen
    seed, frames = int(seed), int(frames)
    out_dir = Path(out_dir).resolve()
    _prepare_target(out_dir)

    start = time.perf_counter()
    staging = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}"
    retired = out_dir.parent / f".{out_dir.name}.replaced-{os.getpid()}"
    for leftover in (staging, retired):  # from an earlier run of this process that was interrupted
        if leftover.exists():
            shutil.rmtree(leftover)
    total = sum(len(_sequence_frames(frames, sub, cam)) for s in subjects for a in range(len(ACTION_NAMES))
                for sub in SUBACTIONS for cam in CAMERA_IDS
                if (s, a + FIRST_ACTION_IDX, sub, cam) not in MISSING_SEQUENCES)
    per_subject, bbox_root, detections = {}, [], []
    try:
        with tqdm(total=total, desc="demo images", unit="img", disable=not show_progress) as progress:
            for subject in subjects:
                per_subject[subject], entries, boxes = _write_subject(staging, subject, seed, frames, progress)
                bbox_root.extend(entries)
                detections.extend(boxes)
        _write_box_files(staging, bbox_root, detections)
        num_images = sum(per_subject.values())
        atomic.write_text(staging / README_FILE, _readme(seed, frames, subjects, num_images, len(bbox_root)))
        _prepare_target(out_dir)  # the folder may have changed while generating
        if out_dir.exists():
            os.replace(out_dir, retired)
        try:
            os.replace(staging, out_dir)
        except OSError:
            if retired.exists():  # put the earlier dataset back rather than lose it
                os.replace(retired, out_dir)
            raise
    finally:
        for leftover in (staging, retired):
            if leftover.exists():
                shutil.rmtree(leftover)

    return DemoDataset(
        root=out_dir,
        annotation_dir=out_dir.joinpath(*ANNOTATION_SUBDIR),
        image_dirs={s: out_dir.joinpath(*IMAGE_SUBDIRS[s]) for s in subjects},
        bbox_root_file=out_dir / BBOX_ROOT_FILE, detector_file=out_dir / DETECTOR_FILE,
        subjects=subjects, seed=seed, frames=frames, num_images=num_images,
        num_test_samples=len(bbox_root), seconds=time.perf_counter() - start,
        images_per_subject=per_subject,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers demo-data",
        description="Write a small generated (synthetic) Human3.6M dataset in the 3DMPPE format.")
    parser.add_argument("out_dir", help="output folder (created; an earlier demo dataset there is replaced)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                        help=f"sampled frames (frame_idx %% 64 == 0) per sequence (default {DEFAULT_FRAMES})")
    parser.add_argument("--subjects", type=int, nargs="+", default=list(SUBJECTS), choices=SUBJECTS,
                        help="subjects to generate (default: 9 11)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        info = generate(args.out_dir, seed=args.seed, frames=args.frames, subjects=tuple(args.subjects),
                        show_progress=not args.quiet)
    except DemoDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {info.num_images} images ({info.num_test_samples} test samples) for "
          f"{', '.join(f'S{s}' for s in info.subjects)} to {info.root} in {info.seconds:.1f} s")
    print(f"annotations: {info.annotation_dir}")
    print(f"detector:    {info.detector_file}")
    print(f"bbox_root:   {info.bbox_root_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
