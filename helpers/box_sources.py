"""Where a run's boxes and roots come from: two separate facts, recorded in every result (helpers/README.md,
"Boxes and roots: two facts").

- **Box source:** `ground_truth` (the annotation box through `process_bbox`), `detector` (a person detector's boxes:
  a detector file in the official format, `bbox_human36m_output.json`, processed here; or the already processed
  boxes of a bbox_root file), or `unknown`.
- **Root source:** `ground_truth`, `rootnet_released` (the RootNet authors' output file), `rootnet_run` (a RootNet
  run of this suite: its result id and checkpoint sha256), `generated` (the demo's noisy ground truth) or `unknown`.

A bbox_root file this suite writes gets a sidecar, `<name>.sources.json`, beside it (the bbox_root file keeps the
released structure). A file from elsewhere is described by what can be known: the released files by their content
hash, any other file as of unknown origin, with its hashes, size and box shape. `protocol_check` says whether a
bbox_root file's roots belong to the run's protocol.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import write_json

BOX_SOURCES = ("ground_truth", "detector", "unknown")
ROOT_SOURCES = ("ground_truth", "rootnet_released", "rootnet_run", "generated", "unknown")
MODEL_OUTPUT = "evaluated (model output)"  # the root source of a root model's own result
LEGACY_DETECTED = "detected"  # results written before the two sources were told apart

BOX_LABELS = {
    "ground_truth": "ground-truth boxes",
    "detector": "detector boxes",
    "unknown": "boxes of unknown origin",
    LEGACY_DETECTED: "detected boxes (origin not recorded)",
}
ROOT_LABELS = {
    "ground_truth": "ground-truth roots",
    "rootnet_released": "released RootNet roots",
    "rootnet_run": "RootNet roots (this run)",
    "generated": "generated demo roots (ground truth + noise)",
    "unknown": "roots of unknown origin",
    LEGACY_DETECTED: "detected roots (origin not recorded)",
    MODEL_OUTPUT: "the model's own roots",
}

SIDECAR_SUFFIX = ".sources.json"
SIDECAR_FORMAT = "h36m-bbox-root-sources"
SIDECAR_VERSION = 1
GT_BOX_RULE = "process_bbox: clip to the image, pad to the aspect ratio, x1.25"
FILE_BOX_RULE = "the bbox_root file's boxes, already processed, used as they are"


def box_label(source: str) -> str:
    return BOX_LABELS.get(source, f"boxes: {source}")


def root_label(source: str) -> str:
    return ROOT_LABELS.get(source, f"roots: {source}")


def sources_label(bbox_source: str, root_source: str) -> str:
    """"detector boxes, released RootNet roots": both facts, in the words every table and report uses."""
    return f"{box_label(bbox_source)}, {root_label(root_source)}"


# ----------------------------------------------------------------------------------------------- hashes
def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_sha256(image_id, bbox, root_cam) -> str:
    """sha256 of a bbox_root table's numbers (sorted by image id; int64 ids, float64 boxes and roots): the same for
    every serialisation of the same file (indentation, key or entry order), unlike the file's own sha256."""
    ids = np.asarray(image_id, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    digest = hashlib.sha256(b"bbox_root v1\0")
    digest.update(np.ascontiguousarray(ids[order], dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(np.asarray(bbox, np.float64)[order], dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(np.asarray(root_cam, np.float64)[order], dtype="<f8").tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------- the released files
@dataclass(frozen=True)
class ReleasedBBoxRoot:
    """One of the RootNet authors' released Human3.6M output files (`bbox_root_human36m_output.json`)."""

    protocol: int
    test_subjects: tuple[int, ...]
    entries: int
    file_sha256: str
    content_sha256: str
    trained_on: str

    @property
    def description(self) -> str:
        return f"the released RootNet output for protocol {self.protocol} (RootNet trained on {self.trained_on})"


# The two files in tests/data/h36m_real (the authors' files, byte for byte). Their boxes are the authors' detector
# boxes through process_bbox (SPEC §6: image 1877420), so both hold the same boxes for S11, with different roots.
RELEASED_BBOX_ROOT_FILES: tuple[ReleasedBBoxRoot, ...] = (
    ReleasedBBoxRoot(2, (9, 11), 8695, "dc207378ce7e128042c2175737438cfae7e250a96c6a113733124595237f8752",
                     "958b488f5d199f13fafa68f96d75f768f694da713a2f586af100450b89870ffc", "S1, S5, S6, S7, S8"),
    ReleasedBBoxRoot(1, (11,), 3683, "411a6b5a5b06976d4e4660a7447cbe404f76fcc57bd505416a19f9119fe2fd4a",
                     "6b936f4990c7e03db7382779e1fc339d1b030d83e4be4dc5a08aba38337d7ba9", "S1, S5, S6, S7, S8, S9"),
)


def released_file(file_sha256: str | None, content_hash: str | None) -> ReleasedBBoxRoot | None:
    """The released file these hashes identify (file bytes, or numbers in any serialisation); None otherwise."""
    for released in RELEASED_BBOX_ROOT_FILES:
        if file_sha256 == released.file_sha256 or content_hash == released.content_sha256:
            return released
    return None


# ---------------------------------------------------------------------------------------------- sidecars
def sidecar_path(bbox_root_path: str | os.PathLike) -> Path:
    """`bbox_root_human36m_output.json` -> `bbox_root_human36m_output.sources.json` beside it."""
    path = Path(bbox_root_path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


def write_sidecar(bbox_root_path: str | os.PathLike, *, content_hash: str, entries: int, boxes: dict, roots: dict,
                  protocol: int | None, note: str = "") -> Path:
    """Describe a bbox_root file this suite wrote: its boxes and its roots. `protocol` is the protocol its roots
    belong to (None: any, e.g. generated roots). The file's content hash ties the sidecar to the file."""
    if boxes.get("source") not in BOX_SOURCES or roots.get("source") not in ROOT_SOURCES:
        raise ValueError(f"unknown box or root source {boxes.get('source')!r} / {roots.get('source')!r}; "
                         f"boxes: {BOX_SOURCES}, roots: {ROOT_SOURCES}")
    payload = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "bbox_root_file": Path(bbox_root_path).name,
               "content_sha256": content_hash, "entries": int(entries), "protocol": protocol,
               "boxes": boxes, "roots": roots}
    if note:
        payload["note"] = note
    return write_json(sidecar_path(bbox_root_path), payload)


def read_sidecar(bbox_root_path: str | os.PathLike, content_hash: str) -> tuple[dict | None, str]:
    """(the sidecar, "") when one describes exactly this file; else (None, why not)."""
    path = sidecar_path(bbox_root_path)
    if not path.is_file():
        return None, ""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"its sidecar {path.name} is unreadable ({exc}); ignored"
    if not isinstance(payload, dict) or payload.get("format") != SIDECAR_FORMAT:
        return None, f"{path.name} is not a {SIDECAR_FORMAT} sidecar; ignored"
    if payload.get("content_sha256") != content_hash:
        return None, (f"its sidecar {path.name} describes other contents (the file was changed after the sidecar "
                      "was written); ignored")
    boxes, roots = payload.get("boxes"), payload.get("roots")
    if not (isinstance(boxes, dict) and isinstance(roots, dict) and boxes.get("source") in BOX_SOURCES
            and roots.get("source") in ROOT_SOURCES):
        return None, f"its sidecar {path.name} names no known box and root source; ignored"
    return payload, ""


# ------------------------------------------------------------------------------------------- descriptions
def ground_truth_sources() -> dict:
    """The published default: the annotation's box through process_bbox, the ground-truth root."""
    return {"boxes": {"source": "ground_truth", "label": box_label("ground_truth"), "rule": GT_BOX_RULE},
            "roots": {"source": "ground_truth", "label": root_label("ground_truth")}}


def describe_bbox_root(path, file_sha256: str | None, image_id, bbox, root_cam) -> dict:
    """What can be known about a bbox_root file: {file, file_sha256, content_sha256, entries, origin, boxes, roots,
    protocol (its roots' protocol, None when unknown or any), note}. `boxes`/`roots` each hold `source` and `label`."""
    content_hash = content_sha256(image_id, bbox, root_cam)
    entries = int(len(np.asarray(image_id)))
    info = {"file": None if path is None else str(path), "file_sha256": file_sha256,
            "content_sha256": content_hash, "entries": entries}
    released = released_file(file_sha256, content_hash)
    if released is not None:
        info.update(origin="released", protocol=released.protocol, note=f"recognised by its hash as {released.description}")
        info["boxes"] = {"source": "detector", "label": box_label("detector"),
                         "detail": "the RootNet authors' detector boxes, processed (process_bbox)",
                         "from": f"released bbox_root file, protocol {released.protocol}"}
        info["roots"] = {"source": "rootnet_released", "label": root_label("rootnet_released"),
                         "protocol": released.protocol, "trained_on": released.trained_on}
        return info
    sidecar, problem = (None, "") if path is None else read_sidecar(path, content_hash)
    if sidecar is not None:
        info.update(origin="sidecar", protocol=sidecar.get("protocol"), sidecar=str(sidecar_path(path)),
                    note=f"described by its sidecar {sidecar_path(path).name}")
        info["boxes"] = {**sidecar["boxes"], "label": box_label(sidecar["boxes"]["source"])}
        info["roots"] = {**sidecar["roots"], "label": root_label(sidecar["roots"]["source"])}
        return info
    boxes = np.asarray(bbox, np.float64)
    square = bool(len(boxes)) and bool(np.allclose(boxes[:, 2], boxes[:, 3], rtol=1e-9, atol=1e-9))
    note = ("not a released file and no sidecar describes it: where its boxes and roots come from is unknown; "
            + ("its boxes are square, like processed RootNet boxes" if square else "its boxes are not square"))
    info.update(origin="unknown", protocol=None, note=note + (f"; {problem}" if problem else ""))
    info["boxes"] = {"source": "unknown", "label": box_label("unknown"), "square": square}
    info["roots"] = {"source": "unknown", "label": root_label("unknown")}
    return info


def describe_detector_file(path, file_sha256: str | None, entries: int, repeated_images: int) -> dict:
    """A person detector's output in the official format (`[{"image_id", "bbox": [x, y, w, h] unprocessed, ...}]`)."""
    note = ""
    if repeated_images:
        note = (f"{repeated_images} image(s) have several detections; the last one is used, as the official loader "
                "does")
    return {"file": None if path is None else str(path), "file_sha256": file_sha256, "entries": int(entries),
            "format": "detector output (unprocessed boxes; process_bbox applied)", "note": note}


def _file_boxes(description: dict) -> dict:
    """The boxes of a bbox_root file: `file` is where they first came from (a sidecar's detector file), `via` the
    bbox_root file when that differs."""
    boxes = {**description["boxes"], "rule": FILE_BOX_RULE}
    if boxes.get("file") and boxes["file"] != description["file"]:
        boxes["via"] = description["file"]
    else:
        boxes["file"] = description["file"]
    return boxes


def sources_for_bbox_root(description: dict, check: dict) -> dict:
    """The `sources` block of a run whose boxes and roots both come from a bbox_root file."""
    return {"boxes": _file_boxes(description), "roots": {**description["roots"], "file": description["file"]},
            "bbox_root_file": _file_block(description), "protocol_check": check}


def sources_for_detector_boxes(box_file: dict, check: dict | None, from_bbox_root: bool) -> dict:
    """The `sources` block of a run on detector boxes with ground-truth roots (what a RootNet run gets: its own roots
    replace them). `box_file` is a `describe_detector_file` or `describe_bbox_root` description."""
    if from_bbox_root:
        boxes = _file_boxes(box_file)
        block = {"bbox_root_file": _file_block(box_file)}
    else:
        boxes = {"source": "detector", "label": box_label("detector"), "rule": GT_BOX_RULE.replace(
            "process_bbox", "process_bbox of the detector's box"), "file": box_file["file"],
            "file_sha256": box_file["file_sha256"], "format": box_file["format"]}
        if box_file.get("note"):
            boxes["note"] = box_file["note"]
        block = {"detector_file": box_file}
    out = {"boxes": boxes, "roots": {"source": "ground_truth", "label": root_label("ground_truth")}, **block}
    if check is not None:
        out["protocol_check"] = check
    return out


def _file_block(description: dict) -> dict:
    return {k: description.get(k) for k in ("file", "file_sha256", "content_sha256", "entries", "origin", "protocol",
                                            "note", "sidecar") if description.get(k) is not None}


# ------------------------------------------------------------------------------------------ protocol match
def protocol_check(description: dict, protocol: int, *, test_images: int, uses_roots: bool) -> dict:
    """Whether a bbox_root file fits a run of `protocol` whose test set it covers (coverage is checked by the loader).

    Roots belong to a protocol (RootNet is trained on that protocol's training subjects: a protocol-2 RootNet never
    saw S9, a protocol-1 one did); boxes from a detector do not. Status: "match", "mismatch" (the file's roots were
    made for another protocol: not the official setting), "unknown" (a file of unknown origin; extra entries
    are reported), or "boxes only" (the roots are not used)."""
    entries = int(description["entries"])
    extra = max(entries - int(test_images), 0)
    made_for = description.get("protocol")
    check = {"run_protocol": int(protocol), "file_protocol": made_for, "entries": entries,
             "test_images": int(test_images), "extra_entries": extra}
    if not uses_roots:
        check.update(status="boxes only", message="only the file's boxes are used (detector boxes do not depend on "
                                                  "the protocol)")
    elif made_for is not None and int(made_for) != int(protocol):
        check.update(status="mismatch", message=(
            f"the bbox_root file's roots were made for protocol {made_for}, this run is protocol {protocol}: not the "
            f"official protocol-{protocol} setting (use the RootNet output made for protocol {protocol})"))
    elif description.get("origin") == "unknown":
        check.update(status="unknown", message=(
            "the bbox_root file is of unknown origin, so the protocol its roots were made for is unknown"
            + (f"; it has {extra} entries beyond this run's {test_images} test images (made for another protocol, "
               "or for more images than these annotations hold?)" if extra else "")))
    else:
        check.update(status="match", message=(f"made for protocol {made_for}" if made_for is not None
                                              else "its roots do not depend on the protocol"))
    return check
