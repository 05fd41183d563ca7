"""Human3.6M data layer: find the annotation and image folders, load the test set, check images.

Reads the 3DMPPE annotation format (helpers/README.md, "Annotation files"): per subject `Human36M_subject{S}_data.json`,
`..._camera.json` and `..._joint_3d.json`, plus RootNet-format `bbox_root` files and person-detector box files
(`bbox_human36m_output.json`, what the official RootNet test reads). Folders are found
by searching, never by assuming one layout, and images are resolved in place (no links, no copies).
"""
from __future__ import annotations

import json
import os
import re
from collections import deque
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import box_sources
from .geometry import fit_boxes_to_aspect, process_bboxes, world_to_camera
from .protocol import (ACTION_NAMES, FIRST_ACTION_IDX, L_SHOULDER, R_SHOULDER,
                       get_protocol)

DATA_FILE_RE = re.compile(r"^Human36M_subject(\d+)_data\.json$")
SEQUENCE_DIR_RE = re.compile(r"^s_\d{2}_act_\d{2}_subact_\d{2}_ca_\d{2}$")
ANNOTATION_SEARCH_DEPTH = 4
IMAGE_SEARCH_DEPTH = 5
FIRST_SHOWN = 5  # how many ids / paths an error message lists


class DataError(Exception):
    """A problem with the input data. The message says what is wrong and what to do."""


def _subject_files(annotation_dir: Path, subject: int) -> dict[str, Path]:
    return {kind: annotation_dir / f"Human36M_subject{subject}_{kind}.json" for kind in ("data", "camera", "joint_3d")}


def _first(items: Sequence, n: int = FIRST_SHOWN) -> str:
    shown = ", ".join(str(x) for x in list(items)[:n])
    return shown + (", ..." if len(items) > n else "")


def _walk_dirs(roots: Iterable[Path], max_depth: int):
    """Breadth-first (folder, depth) pairs under `roots`, skipping hidden and sequence folders.

    Sequence folders hold thousands of frames and never the things searched for, so they are not
    entered; this keeps a search of a full Kaggle input tree fast.
    """
    queue = deque((Path(r), 0) for r in roots)
    seen: set[str] = set()
    while queue:
        folder, depth = queue.popleft()
        key = os.path.realpath(folder)
        if key in seen:
            continue
        seen.add(key)
        yield folder, depth
        if depth >= max_depth:
            continue
        try:
            with os.scandir(folder) as entries:
                children = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        except OSError:
            continue
        queue.extend((folder / name, depth + 1) for name in children if not SEQUENCE_DIR_RE.match(name))


def find_annotation_dir(root: str | os.PathLike) -> Path:
    """The folder under `root` (itself included, depth <= 4) holding `Human36M_subject*_data.json`.

    Handles the Kaggle layout `annotations (1)/annotations/`. When several folders qualify, the one
    with the most subject files wins, then the shallowest.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"annotation search root {root} does not exist or is not a folder; "
                        "pass the folder that holds Human36M_subject*_data.json or any folder above it")
    candidates = []
    visited = 0
    for folder, depth in _walk_dirs([root], ANNOTATION_SEARCH_DEPTH):
        visited += 1
        try:
            count = sum(1 for name in os.listdir(folder) if DATA_FILE_RE.match(name))
        except OSError:
            continue
        if count:
            candidates.append((-count, depth, str(folder), folder))
    if not candidates:
        raise DataError(f"no Human36M_subject*_data.json found under {root} (searched {visited} folders, "
                        f"{ANNOTATION_SEARCH_DEPTH} levels deep, e.g. 'annotations (1)/annotations/'); "
                        "point --annotations at the Human3.6M annotation folder or a folder above it")
    return min(candidates)[3]



def find_real_annotations(roots) -> tuple[Path, Path] | None:
    """(root, annotation folder) of the first of `roots` that holds Human3.6M annotations; None when none does.

    The one test of "is real data attached" (the runner's DEMO "auto" and the batch's demo settings)."""
    for root in roots:
        try:
            return Path(root), find_annotation_dir(root)
        except DataError:
            continue
    return None

def _sequence_dirs(folder: Path) -> set[str]:
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries if SEQUENCE_DIR_RE.match(e.name) and e.is_dir()}
    except OSError:
        return set()


def find_image_root(root: str | os.PathLike | Iterable[str | os.PathLike],
                    file_names: Sequence[str] | None = None) -> list[Path]:
    """Image roots: the folders under `root` that directly hold sequence folders.

    A sequence folder is named like `s_09_act_02_subact_01_ca_01/`. S9 and S11 may live under
    different parents (`S9_ACT2_16/`, `S11_ACT2_16/...`), so a list is returned, sorted by path.
    `root` may be one folder or several. With `file_names`, only roots holding at least one of the
    needed sequence folders are kept. Raises DataError when no sequence folder is found.
    """
    roots = [Path(root)] if isinstance(root, (str, os.PathLike)) else [Path(r) for r in root]
    absent = [r for r in roots if not r.is_dir()]
    if absent:
        raise DataError(f"image folder {_first(absent)} does not exist; pass the folder that holds the "
                        "Human3.6M images (sequence folders such as s_09_act_02_subact_01_ca_01/) or a folder above it")
    found: dict[Path, set[str]] = {}
    visited = 0
    for folder, _ in _walk_dirs(roots, IMAGE_SEARCH_DEPTH):
        visited += 1
        seqs = _sequence_dirs(folder)
        if seqs:
            found[folder] = seqs
    if not found:
        raise DataError(f"no image sequence folders (named like s_09_act_02_subact_01_ca_01/) under "
                        f"{_first(roots)} (searched {visited} folders, {IMAGE_SEARCH_DEPTH} levels deep); "
                        "point the image root at the folder that holds the Human3.6M images, e.g. the "
                        "dataset folder containing S9_ACT2_16/ and S11_ACT2_16/")
    if file_names is not None:
        needed = {name.split("/")[0] for name in file_names}
        useful = {folder: seqs for folder, seqs in found.items() if seqs & needed}
        if not useful:
            raise DataError(f"the sequence folders under {_first(roots)} contain none of the {len(needed)} "
                            f"sequences of this test set (e.g. {_first(sorted(needed), 3)}); "
                            "check that the images belong to the test subjects")
        found = useful
    return sorted(found, key=str)


@dataclass
class TestSet:
    """The evaluated samples of one protocol, in annotation order (subject by subject).

    `bbox` is the box the pipeline and evaluation use: the processed ground-truth box, a detector's box through
    process_bbox, or a bbox_root file's box (fitted to `aspect_ratio` when that is not 1). `root_cam` is the root that
    places the prediction in depth (ground truth or a bbox_root file's); `gt_root_cam` is always the ground-truth
    Pelvis (for MRPE). `bbox_source` and `root_source` say where the two come from (helpers.box_sources), and
    `sources` holds the details a result records (files, hashes, the RootNet run, the protocol check).
    """

    protocol: int
    image_id: np.ndarray  # (N,) int64
    file_name: list[str]
    subject: np.ndarray  # (N,) int
    action_idx: np.ndarray  # (N,) int, 2..16
    subaction_idx: np.ndarray
    cam_idx: np.ndarray
    frame_idx: np.ndarray
    width: np.ndarray
    height: np.ndarray
    bbox: np.ndarray  # (N, 4) float64
    root_cam: np.ndarray  # (N, 3) float64
    joint_cam: np.ndarray  # (N, 18, 3) float64, incl. Thorax
    f: np.ndarray  # (N, 2)
    c: np.ndarray  # (N, 2)
    bbox_source: str  # box_sources.BOX_SOURCES: "ground_truth" | "detector" | "unknown"
    annotation_dir: Path
    gt_root_cam: np.ndarray  # (N, 3) float64, always the ground-truth root
    gt_bbox: np.ndarray  # (N, 4) the annotation's raw box
    subjects: tuple[int, ...] = ()
    bbox_root_file: Path | None = None
    dropped_empty_boxes: list[int] = field(default_factory=list)  # image ids whose unprocessed box was empty
    aspect_ratio: float = 1.0  # width / height of every box in `bbox`: the model's input aspect ratio
    root_source: str = "ground_truth"  # box_sources.ROOT_SOURCES
    sources: dict = field(default_factory=box_sources.ground_truth_sources)  # result.json conventions.sources
    file_root_cam: np.ndarray | None = None  # (N, 3) the roots of the bbox_root file whose boxes a root model uses

    def __len__(self) -> int:
        return len(self.image_id)

    @property
    def action_index(self) -> np.ndarray:
        """(N,) index into protocol.ACTION_NAMES."""
        return self.action_idx - FIRST_ACTION_IDX

    def action_names(self) -> list[str]:
        """Action name of each sample, from `action_idx` (never from the path text)."""
        return [ACTION_NAMES[i] for i in self.action_index]

    def subset(self, indices) -> "TestSet":
        """A TestSet with the samples at `indices` (integer positions or a boolean mask), in that order."""
        idx = np.asarray(indices)
        if idx.dtype == bool and idx.shape != (len(self),):
            raise ValueError(f"a boolean mask for subset needs {len(self)} entries, got shape {idx.shape}")
        idx = np.flatnonzero(idx) if idx.dtype == bool else np.arange(len(self))[idx.astype(np.int64)]
        changes = {}
        for fld in fields(self):
            value = getattr(self, fld.name)
            if isinstance(value, np.ndarray) and value.shape[:1] == (len(self),):
                changes[fld.name] = value[idx]
        changes["file_name"] = [self.file_name[i] for i in idx]
        return replace(self, **changes)


def _read_json(path: Path, what: str):
    return _read_json_and_sha256(path, what)[0]


def _read_json_and_sha256(path: Path, what: str):
    """(parsed JSON, sha256 of the file's bytes)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        return json.loads(data), box_sources.bytes_sha256(data)
    except FileNotFoundError:
        raise DataError(f"{what} file {path} is missing; add it to the annotation folder "
                        "(the 3DMPPE Human3.6M annotations hold data, camera and joint_3d files per subject)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} file {path} is not valid JSON ({exc}); the file is probably truncated or "
                        "not the 3DMPPE annotation file - download it again") from None


def find_ids(ids, wanted) -> tuple[np.ndarray, np.ndarray]:
    """The one image-id matcher: for each of `wanted`, its row in `ids` (any order, unique) and whether it is there.

    Returns (rows (K,) int64, found (K,) bool); rows of ids that are not found are meaningless (0)."""
    ids = np.asarray(ids, dtype=np.int64)
    wanted = np.asarray(wanted, dtype=np.int64)
    if len(ids) == 0:
        return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), bool)
    order = np.argsort(ids, kind="stable")
    pos = np.clip(np.searchsorted(ids, wanted, sorter=order), 0, len(ids) - 1)
    rows = order[pos]
    found = ids[rows] == wanted
    return np.where(found, rows, 0), found


@dataclass
class BBoxRoot:
    """A RootNet-format file: box (already processed: square, x1.25) and root per image."""

    image_id: np.ndarray  # (M,) int64, sorted
    bbox: np.ndarray  # (M, 4) float64
    root_cam: np.ndarray  # (M, 3) float64 camera mm
    path: Path | None = None
    file_sha256: str | None = None  # of the file's bytes

    def __len__(self) -> int:
        return len(self.image_id)

    def lookup(self, image_ids) -> tuple[np.ndarray, np.ndarray]:
        """Row of each requested id and whether it is present: (positions (K,), found (K,) bool)."""
        return find_ids(self.image_id, image_ids)

    def describe(self) -> dict:
        """What can be known about where its boxes and roots come from (`box_sources.describe_bbox_root`)."""
        return box_sources.describe_bbox_root(self.path, self.file_sha256, self.image_id, self.bbox, self.root_cam)


@dataclass
class DetectorBoxes:
    """A person detector's output in the official format (`bbox_human36m_output.json`, what the official RootNet
    test reads when `use_gt_bbox` is off): one unprocessed box `[x, y, w, h]` per image."""

    image_id: np.ndarray  # (M,) int64, sorted
    bbox: np.ndarray  # (M, 4) float64, unprocessed
    path: Path | None = None
    file_sha256: str | None = None
    repeated_images: int = 0  # images listed more than once (the last box is used, as the official loader does)

    def __len__(self) -> int:
        return len(self.image_id)

    def lookup(self, image_ids) -> tuple[np.ndarray, np.ndarray]:
        return find_ids(self.image_id, image_ids)

    def describe(self) -> dict:
        return box_sources.describe_detector_file(self.path, self.file_sha256, len(self), self.repeated_images)


_BBOX_ROOT_FORMAT = "expected RootNet output: a JSON list of {\"image_id\", \"bbox\": [x, y, w, h], \"root_cam\": [X, Y, Z]}"
_DETECTOR_FORMAT = ("expected a person detector's output (bbox_human36m_output.json): a JSON list of {\"image_id\", "
                    "\"bbox\": [x, y, w, h]}, or a RootNet bbox_root file")


def load_bbox_root(path: str | os.PathLike) -> BBoxRoot:
    """Read a RootNet output file `[{"image_id", "bbox": [x,y,w,h], "root_cam": [X,Y,Z]}, ...]`, sorted by id."""
    path = Path(path)
    entries, sha256 = _read_json_and_sha256(path, "bbox_root")
    return _parse_bbox_root(entries, path, sha256)


def load_box_file(path: str | os.PathLike) -> BBoxRoot | DetectorBoxes:
    """Boxes for a RootNet run: a detector's file in the official format (entries without `root_cam`), or a
    bbox_root file (entries with `root_cam`: its processed boxes, and its roots for comparison)."""
    path = Path(path)
    entries, sha256 = _read_json_and_sha256(path, "detector box")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise DataError(f"box file {path} is empty or not a list of entries; {_DETECTOR_FORMAT}")
    if "root_cam" in entries[0]:
        return _parse_bbox_root(entries, path, sha256)
    try:
        ids = np.array([e["image_id"] for e in entries])
        bbox = np.array([e["bbox"] for e in entries], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"box file {path} has a malformed entry ({type(exc).__name__}: {exc}); "
                        f"{_DETECTOR_FORMAT}") from None
    if ids.dtype.kind not in "iu" or bbox.shape != (len(entries), 4):
        raise DataError(f"box file {path}: image_id values must be integers and every bbox 4 numbers; "
                        f"{_DETECTOR_FORMAT}")
    if not np.isfinite(bbox).all():
        raise DataError(f"box file {path} contains NaN or infinite values; regenerate it")
    ids = ids.astype(np.int64)
    # The official loader fills a dict in file order, so the last box of an image wins.
    last = len(ids) - 1 - np.unique(ids[::-1], return_index=True)[1]
    repeated = len(np.unique(ids[np.setdiff1d(np.arange(len(ids)), last)]))
    return DetectorBoxes(ids[last], bbox[last], path, sha256, repeated)


def _parse_bbox_root(entries, path: Path, sha256: str | None) -> BBoxRoot:
    fix = _BBOX_ROOT_FORMAT
    if not isinstance(entries, list) or not entries:
        raise DataError(f"bbox_root file {path} is empty or not a list; {fix}")
    try:
        ids = np.array([e["image_id"] for e in entries])
        bbox = np.array([e["bbox"] for e in entries], dtype=np.float64)
        root = np.array([e["root_cam"] for e in entries], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"bbox_root file {path} has a malformed entry ({type(exc).__name__}: {exc}); {fix}") from None
    if ids.dtype.kind not in "iu":
        raise DataError(f"bbox_root file {path}: image_id values must be integers; {fix}")
    if bbox.shape != (len(entries), 4) or root.shape != (len(entries), 3):
        raise DataError(f"bbox_root file {path}: bbox must have 4 values and root_cam 3 in every entry; {fix}")
    if not (np.isfinite(bbox).all() and np.isfinite(root).all()):
        raise DataError(f"bbox_root file {path} contains NaN or infinite values; regenerate it")
    order = np.argsort(ids, kind="stable")
    ids = ids[order].astype(np.int64)
    duplicated = ids[1:][ids[1:] == ids[:-1]]
    if len(duplicated):
        raise DataError(f"bbox_root file {path} lists image ids more than once ({_first(np.unique(duplicated))}); "
                        "keep one entry per image")
    return BBoxRoot(ids, bbox[order], root[order], path, sha256)


def _column(records: list[dict], key: str, path: Path, dtype=np.int64) -> np.ndarray:
    try:
        return np.array([r[key] for r in records], dtype=dtype)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: an entry lacks a valid '{key}' field; this is not a 3DMPPE Human3.6M "
                        "annotation file - download the annotations again") from None


def _load_subject(annotation_dir: Path, subject: int, stride: int) -> dict:
    paths = _subject_files(annotation_dir, subject)
    data = _read_json(paths["data"], f"subject {subject} data")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{paths['data']} has no 'images' and 'annotations' lists; it is not a 3DMPPE "
                        "Human3.6M data file - download the annotations again")
    images, anns = data["images"], data["annotations"]
    image_ids = _column(images, "id", paths["data"])
    frame_idx = _column(images, "frame_idx", paths["data"])
    ann_image_ids = _column(anns, "image_id", paths["data"])

    img_row, found = find_ids(image_ids, ann_image_ids)
    unmatched = ann_image_ids[~found]
    if len(unmatched):
        raise DataError(f"{paths['data']}: {len(unmatched)} annotations refer to images that are not listed "
                        f"(first ids {_first(unmatched)}); the file is inconsistent - download it again")
    keep = np.flatnonzero(frame_idx[img_row] % stride == 0)  # annotation order
    kept_images = [images[i] for i in img_row[keep]]
    kept_anns = [anns[i] for i in keep]
    out = {"image_id": ann_image_ids[keep]}
    for key in ("action_idx", "subaction_idx", "cam_idx", "frame_idx", "width", "height"):
        out[key] = _column(kept_images, key, paths["data"])
    out["file_name"] = _column(kept_images, "file_name", paths["data"], dtype=str).tolist()
    out["gt_bbox"] = _column(kept_anns, "bbox", paths["data"], np.float64).reshape(-1, 4)
    bad_action = (out["action_idx"] < FIRST_ACTION_IDX) | (out["action_idx"] >= FIRST_ACTION_IDX + len(ACTION_NAMES))
    if bad_action.any():
        raise DataError(f"{paths['data']}: action_idx outside 2..16 (e.g. {out['action_idx'][bad_action][0]}); "
                        "this is not a Human3.6M test annotation file")

    cameras = _read_json(paths["camera"], f"subject {subject} camera")
    cam = {}
    for cam_idx in np.unique(out["cam_idx"]):
        entry = cameras.get(str(cam_idx)) if isinstance(cameras, dict) else None
        try:
            cam[cam_idx] = tuple(np.asarray(entry[k], dtype=np.float64) for k in ("R", "t", "f", "c"))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{paths['camera']} has no valid entry for camera {cam_idx} (R, t, f, c); "
                            "download the annotations again") from None
    joints = _read_json(paths["joint_3d"], f"subject {subject} joint_3d")
    try:
        world = [joints[str(a)][str(s)][str(f)] for a, s, f in
                 zip(out["action_idx"], out["subaction_idx"], out["frame_idx"])]
    except (KeyError, TypeError) as exc:
        raise DataError(f"{paths['joint_3d']} lacks the joints of a test frame (key {exc}); "
                        "the joint file does not match the data file - download the annotations again") from None
    try:
        world = np.array(world, dtype=np.float64).reshape(len(keep), 17, 3)
    except ValueError:
        raise DataError(f"{paths['joint_3d']}: every frame must hold 17 joints x 3 coordinates") from None
    # Thorax is added in world space before R.X + t, as upstream does.
    thorax = (world[:, L_SHOULDER] + world[:, R_SHOULDER]) * 0.5
    world = np.concatenate([world, thorax[:, None]], axis=1)

    n = len(keep)
    R = np.empty((n, 3, 3))
    t = np.empty((n, 3))
    out["f"] = np.empty((n, 2))
    out["c"] = np.empty((n, 2))
    for cam_idx, (Rc, tc, fc, cc) in cam.items():
        sel = out["cam_idx"] == cam_idx
        R[sel], t[sel], out["f"][sel], out["c"][sel] = Rc, tc, fc, cc
    out["joint_cam"] = world_to_camera(world, R, t)
    out["subject"] = np.full(n, subject, dtype=np.int64)
    return out


def load_test_set(annotation_dir: str | os.PathLike, protocol: int = 2,
                  bbox_root: str | os.PathLike | BBoxRoot | None = None,
                  subjects: Sequence[int] | None = None, aspect_ratio: float = 1.0,
                  detector_boxes: str | os.PathLike | DetectorBoxes | BBoxRoot | None = None) -> TestSet:
    """Load the protocol's test samples (`frame_idx % 64 == 0`) from the 3DMPPE annotation files.

    `annotation_dir` may also be any folder above it (see `find_annotation_dir`). Boxes and roots (helpers/README.md,
    "Boxes and roots: two facts"):
    - neither file: the processed ground-truth boxes and GT roots (samples with an empty box are dropped);
    - `bbox_root`: the boxes and roots of a RootNet-format file, which must cover every test image; where the file
      comes from (released, written by a RootNet run, unknown) and whether it fits the protocol is in `sources`;
    - `detector_boxes` (what a RootNet run uses): a person detector's boxes in the official format, processed like
      ground-truth boxes (an empty box drops the sample), or the boxes of a bbox_root file as they are (its roots
      become `file_root_cam`, for comparison); roots are the ground truth's.
    `aspect_ratio` is the model's input width / height (`ModelSpec.aspect_ratio`, 0.75 for 384x288):
    unprocessed boxes are padded to it around their centre (helpers/README.md, "Boxes"); a bbox_root file's boxes,
    square in RootNet files, become the largest box of that aspect ratio inside them, same centre
    (`geometry.fit_boxes_to_aspect`).
    """
    if bbox_root is not None and detector_boxes is not None:
        raise ValueError("give bbox_root (boxes and roots) or detector_boxes (boxes only), not both")
    aspect_ratio = float(aspect_ratio)
    if not (np.isfinite(aspect_ratio) and aspect_ratio > 0):
        raise ValueError(f"aspect_ratio must be a positive number (input width / height), got {aspect_ratio}")
    spec = get_protocol(protocol)
    subjects = tuple(int(s) for s in (spec.test_subjects if subjects is None else subjects))
    annotation_dir = Path(annotation_dir)
    if not annotation_dir.is_dir() or not any(DATA_FILE_RE.match(n) for n in os.listdir(annotation_dir)):
        annotation_dir = find_annotation_dir(annotation_dir)
    missing = [str(p) for s in subjects for p in _subject_files(annotation_dir, s).values() if not p.is_file()]
    if missing:
        raise DataError(f"the annotation folder {annotation_dir} is incomplete for protocol {spec.number} "
                        f"(subjects {list(subjects)}): missing {len(missing)} file(s): {_first(missing, 6)}; "
                        "add the 3DMPPE annotation files of every test subject")

    parts = [_load_subject(annotation_dir, s, spec.frame_stride) for s in subjects]
    cat = {key: (sum((p[key] for p in parts), []) if key == "file_name" else np.concatenate([p[key] for p in parts]))
           for key in parts[0]}
    if len(cat["image_id"]) == 0:
        raise DataError(f"no test frames (frame_idx % {spec.frame_stride} == 0) in the annotations of subjects "
                        f"{list(subjects)} in {annotation_dir}")
    gt_root = cat["joint_cam"][:, 0].copy()
    root_cam, file_root_cam, bbox_root_file = gt_root, None, None
    boxes = (load_box_file(detector_boxes) if isinstance(detector_boxes, (str, os.PathLike)) else detector_boxes)
    if bbox_root is None and boxes is None:
        bbox, valid = process_bboxes(cat["gt_bbox"], cat["width"], cat["height"], aspect_ratio)
        sources = box_sources.ground_truth_sources()
    elif isinstance(boxes, DetectorBoxes):
        pos = _covering_rows(boxes, cat["image_id"], spec.number, "detector box file")
        bbox, valid = process_bboxes(boxes.bbox[pos], cat["width"], cat["height"], aspect_ratio)
        sources = box_sources.sources_for_detector_boxes(boxes.describe(), None, from_bbox_root=False)
    else:
        table = bbox_root if boxes is None else boxes
        table = table if isinstance(table, BBoxRoot) else load_bbox_root(table)
        bbox_root_file = table.path
        pos = _covering_rows(table, cat["image_id"], spec.number, "bbox_root file")
        bbox, valid = table.bbox[pos], np.ones(len(pos), bool)
        if aspect_ratio != 1.0:
            bbox = fit_boxes_to_aspect(bbox, aspect_ratio)
        description = table.describe()
        check = box_sources.protocol_check(description, spec.number, test_images=len(pos), uses_roots=boxes is None)
        if boxes is None:
            root_cam = table.root_cam[pos]
            sources = box_sources.sources_for_bbox_root(description, check)
        else:
            file_root_cam = table.root_cam[pos]
            sources = box_sources.sources_for_detector_boxes(description, check, from_bbox_root=True)

    dropped = [int(i) for i in cat["image_id"][~valid]]
    keep = np.flatnonzero(valid)
    arrays = {k: v[keep] for k, v in cat.items() if k != "file_name"}
    return TestSet(
        protocol=spec.number,
        image_id=arrays["image_id"].astype(np.int64),
        file_name=[cat["file_name"][i] for i in keep],
        subject=arrays["subject"], action_idx=arrays["action_idx"], subaction_idx=arrays["subaction_idx"],
        cam_idx=arrays["cam_idx"], frame_idx=arrays["frame_idx"], width=arrays["width"], height=arrays["height"],
        bbox=bbox[keep], root_cam=np.asarray(root_cam, dtype=np.float64)[keep], joint_cam=arrays["joint_cam"],
        f=arrays["f"], c=arrays["c"], bbox_source=sources["boxes"]["source"], annotation_dir=annotation_dir,
        gt_root_cam=gt_root[keep], gt_bbox=arrays["gt_bbox"], subjects=subjects,
        bbox_root_file=bbox_root_file, dropped_empty_boxes=dropped, aspect_ratio=aspect_ratio,
        root_source=sources["roots"]["source"], sources=sources,
        file_root_cam=None if file_root_cam is None else np.asarray(file_root_cam, np.float64)[keep],
    )


def _covering_rows(table: BBoxRoot | DetectorBoxes, image_ids: np.ndarray, protocol: int, what: str) -> np.ndarray:
    """The row of every test image in `table`; a DataError naming the first absent ids when any is missing."""
    pos, found = table.lookup(image_ids)
    if not found.all():
        lacking = image_ids[~found]
        raise DataError(f"{what} {table.path} lacks {len(lacking)} of {len(found)} protocol-{protocol} test images "
                        f"(first ids {_first(lacking)}); use the file made for this protocol's test set, or "
                        "evaluate with ground-truth boxes")
    return pos


def _as_image_roots(image_root_or_roots) -> list[Path]:
    """Accept image roots from `find_image_root`, or any folder(s) to search for them."""
    given = ([image_root_or_roots] if isinstance(image_root_or_roots, (str, os.PathLike))
             else list(image_root_or_roots))
    roots: list[Path] = []
    for r in given:
        r = Path(r)
        roots.extend([r] if _sequence_dirs(r) else find_image_root(r))
    return list(dict.fromkeys(roots))


def _sequence_locations(roots: list[Path]) -> dict[str, Path]:
    location: dict[str, Path] = {}
    for root in roots:
        for seq in sorted(_sequence_dirs(root)):
            location.setdefault(seq, root)  # the first root wins when a sequence exists twice
    return location


def resolve_image_paths(test_set: TestSet, image_root_or_roots) -> list[Path]:
    """Path of every sample's image: `<root>/<file_name>`, where root is the image root that holds its
    sequence folder. Samples whose sequence folder exists nowhere get a path under the first root
    (which does not exist; `check_images` reports it)."""
    roots = _as_image_roots(image_root_or_roots)
    location = _sequence_locations(roots)
    return [location.get(name.split("/")[0], roots[0]) / name for name in test_set.file_name]


@dataclass
class ImageCheck:
    """Result of `check_images`: which samples have an image on disk."""

    paths: list[Path]  # for every sample of the checked test set
    kept_indices: np.ndarray  # samples whose image exists
    missing_paths: list[Path]
    image_roots: list[Path]

    @property
    def num_missing(self) -> int:
        return len(self.missing_paths)

    def skipped_block(self, first: int = 20) -> dict:
        """The `skipped_images` block of result.json."""
        return {"count": self.num_missing, "first_paths": [str(p) for p in self.missing_paths[:first]]}


def check_images(test_set: TestSet, roots, skip_missing: bool = False) -> ImageCheck:
    """Check, before any inference, that every test image exists under `roots`.

    Missing images raise DataError (count and first paths) unless `skip_missing=True`; then the
    kept sample indices and the skipped paths are returned so the run can record them.
    """
    image_roots = _as_image_roots(roots)
    paths = resolve_image_paths(test_set, image_roots)
    listing: dict[Path, set[str]] = {}  # one directory listing per sequence folder, not one stat per image
    exists = np.empty(len(paths), dtype=bool)
    for i, p in enumerate(paths):
        folder = p.parent
        if folder not in listing:
            try:
                listing[folder] = set(os.listdir(folder))
            except OSError:
                listing[folder] = set()
        exists[i] = p.name in listing[folder]
    missing = [p for p, ok in zip(paths, exists) if not ok]
    if missing and not skip_missing:
        raise DataError(f"{len(missing)} of {len(paths)} test images are missing under {_first(image_roots, 3)} "
                        f"(first: {_first(missing, 3)}); complete the image folders, or pass the explicit skip "
                        "option (skip_missing=True, or skip_missing_images in the notebooks) to evaluate the "
                        "others and record the skipped ones")
    if len(missing) == len(paths):
        raise DataError(f"none of the {len(paths)} test images exist under {_first(image_roots, 3)} "
                        f"(first expected: {_first(missing, 3)}); point the image root at the Human3.6M test images")
    return ImageCheck(paths=paths, kept_indices=np.flatnonzero(exists), missing_paths=missing, image_roots=image_roots)
