"""Human3.6M protocol definitions: joints, skeleton, actions, splits and result conventions.

Everything a result must state to be comparable lives here, in one place (helpers/README.md, "Protocols, joints and actions").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# 18 joints as the 3DMPPE family predicts them; Thorax (17) is added to the ground truth
# as the shoulder midpoint and is never evaluated.
JOINT_NAMES: tuple[str, ...] = (
    "Pelvis", "R_Hip", "R_Knee", "R_Ankle", "L_Hip", "L_Knee", "L_Ankle", "Torso",
    "Neck", "Nose", "Head", "L_Shoulder", "L_Elbow", "L_Wrist", "R_Shoulder", "R_Elbow",
    "R_Wrist", "Thorax",
)
NUM_JOINTS = 18
EVAL_JOINTS = 17  # joints 0..16 are evaluated
EVAL_JOINT_NAMES: tuple[str, ...] = JOINT_NAMES[:EVAL_JOINTS]
ROOT_JOINT = 0  # Pelvis
THORAX = 17
L_SHOULDER, R_SHOULDER = 11, 14

FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 4), (2, 5), (3, 6), (14, 11), (15, 12), (16, 13))
SKELETON: tuple[tuple[int, int], ...] = (
    (0, 7), (7, 8), (8, 9), (9, 10), (8, 11), (11, 12), (12, 13), (8, 14), (14, 15), (15, 16),
    (0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6),
)

# Spelled and ordered as the official evaluation prints them; name = ACTION_NAMES[action_idx - 2].
ACTION_NAMES: tuple[str, ...] = (
    "Directions", "Discussion", "Eating", "Greeting", "Phoning", "Posing", "Purchases",
    "Sitting", "SittingDown", "Smoking", "Photo", "Waiting", "Walking", "WalkDog", "WalkTogether",
)
FIRST_ACTION_IDX = 2

# The order most papers print the actions in (Martinez et al. 2017, Sun et al. 2018, Pavllo et al. 2019): Photo
# after Phoning and WalkDog before Walking, unlike the official index order above. Their column headings:
PAPER_ACTION_ORDER: tuple[str, ...] = (
    "Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing", "Purchases",
    "Sitting", "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking", "WalkTogether",
)
ACTION_ABBREVIATIONS: dict[str, str] = {
    "Directions": "Dir.", "Discussion": "Disc.", "Eating": "Eat", "Greeting": "Greet", "Phoning": "Phone",
    "Photo": "Photo", "Posing": "Pose", "Purchases": "Purch.", "Sitting": "Sit", "SittingDown": "SitD.",
    "Smoking": "Smoke", "Waiting": "Wait", "WalkDog": "WalkD.", "Walking": "Walk", "WalkTogether": "WalkT.",
}


def action_name(action_idx: int) -> str:
    """Action name for an annotation's `action_idx` (2..16)."""
    i = int(action_idx) - FIRST_ACTION_IDX
    if not 0 <= i < len(ACTION_NAMES):
        raise ValueError(f"action_idx {action_idx} is outside 2..16")
    return ACTION_NAMES[i]


# Depth extent of the 3D box around the root (mm): depth bins span +-1000 mm.
BBOX_3D_SHAPE_MM = (2000.0, 2000.0, 2000.0)
FRAME_STRIDE = 64  # frame_idx % 64 == 0 is evaluated


# The metrics a result can hold (keys of result.json "metrics") and their labels in tables and plots (mm).
POSE_METRICS = ("mpjpe", "pa_mpjpe_rigid", "pa_mpjpe_similarity", "pa_mpjpe_rigid_fit18")
ROOT_METRICS = ("mrpe",)
METRIC_LABELS = {
    "mpjpe": "MPJPE",
    "pa_mpjpe_rigid": "PA-MPJPE rigid",
    "pa_mpjpe_similarity": "PA-MPJPE similarity",
    "pa_mpjpe_rigid_fit18": "PA-MPJPE rigid fit18",
    "mrpe": "MRPE",
}
HEADLINE_METRICS = ("mpjpe", "pa_mpjpe_rigid_fit18", "mrpe")  # what a protocol (or a root model) reports


@dataclass(frozen=True)
class Protocol:
    number: int
    train_subjects: tuple[int, ...]
    test_subjects: tuple[int, ...]
    frame_stride: int
    headline_metric: str  # the metric the 3DMPPE family reports for this protocol
    expected_test_images: int  # entries of the real RootNet output file


PROTOCOLS: dict[int, Protocol] = {
    1: Protocol(1, (1, 5, 6, 7, 8, 9), (11,), FRAME_STRIDE, "pa_mpjpe_rigid_fit18", 3683),
    2: Protocol(2, (1, 5, 6, 7, 8), (9, 11), FRAME_STRIDE, "mpjpe", 8695),
}


def get_protocol(number: int) -> Protocol:
    try:
        return PROTOCOLS[int(number)]
    except (KeyError, ValueError):
        raise ValueError(f"unknown protocol {number!r}; use 1 or 2") from None


@dataclass(frozen=True)
class Conventions:
    """What a number means. Stored in every result so two results can be compared honestly."""

    protocol: int
    test_subjects: tuple[int, ...]
    frame_stride: int
    joints_evaluated: tuple[str, ...] = EVAL_JOINT_NAMES
    root_joint: str = JOINT_NAMES[ROOT_JOINT]
    root_relative: bool = True
    alignment: dict = field(default_factory=lambda: {
        "mpjpe": "none (root-relative only)",
        "pa_mpjpe_rigid": "rotation + translation (official 3DMPPE rigid_align), fitted on 17 joints",
        "pa_mpjpe_rigid_fit18": "rotation + translation fitted on 18 joints incl. Thorax, Thorax dropped (official protocol-1 print)",
        "pa_mpjpe_similarity": "scale + rotation + translation (VideoPose3D p_mpjpe)",
    })
    averaging: dict = field(default_factory=lambda: {
        "total": "mean over all samples x 17 joints (official 'tot')",
        "action_mean": "unweighted mean of the 15 per-action means (VideoPose3D style)",
    })
    # Where boxes and roots come from, two separate facts (helpers.box_sources): box "ground_truth" | "detector" |
    # "unknown"; root "ground_truth" | "rootnet_released" | "rootnet_run" | "generated" | "unknown" (a root model's
    # own result: "evaluated (model output)"). Results written before they were told apart say "detected".
    bbox_source: str = "ground_truth"
    root_source: str = "ground_truth"
    flip_test: bool | None = None  # None: unknown (e.g. rescoring a dump that does not say)
    units: str = "mm"
    sources: dict = field(default_factory=dict)  # the details: files, hashes, RootNet run, protocol check

    def to_dict(self) -> dict:
        d = asdict(self)
        d["test_subjects"] = list(self.test_subjects)
        d["joints_evaluated"] = list(self.joints_evaluated)
        return d


def conventions_for(protocol: int, *, bbox_source: str = "ground_truth", root_source: str = "ground_truth",
                    flip_test: bool | None = None, sources: dict | None = None) -> Conventions:
    p = get_protocol(protocol)
    return Conventions(protocol=p.number, test_subjects=p.test_subjects, frame_stride=p.frame_stride,
                       bbox_source=bbox_source, root_source=root_source, flip_test=flip_test,
                       sources=dict(sources or {}))
