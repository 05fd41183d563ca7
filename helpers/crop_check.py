"""The run's own crops against the official crop, OpenCV 4.x, at run time (where `cv2` 4.x imports).

The tests prove on generated JPEGs and a real photograph that `pipeline.crop_images` equals OpenCV 4.x's
fixed-point `warpAffine`, bit for bit. This check repeats that proof on the user's machine with the user's
images: `count` of the run's images (spread evenly) are decoded with `cv2.imread` and cropped with
`cv2.getAffineTransform` + `cv2.warpAffine` exactly as the official 3DMPPE code does, then compared with

- `decode_identical`: our CPU decoder (torchvision/libjpeg) against `cv2.imread`, pixel for pixel;
- `crop_identical`: the crops the model sees (from the crop cache, made by the run's decoder) against OpenCV's.

OpenCV stays optional: without `cv2`, or with OpenCV 5.x (which changed `warpAffine`; the published numbers
predate it), the check is skipped with the reason in `skipped`, and the run goes on.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

CROP_CHECK_IMAGES = 8


def import_opencv() -> tuple[object | None, str | None, str | None]:
    """(cv2, its version, None) where OpenCV 4.x imports; otherwise (None, version or None, why it cannot serve)."""
    try:
        import cv2
    except Exception as exc:  # absent, or a broken install (e.g. a missing libGL): never stop a run for it
        return None, None, (f"OpenCV (cv2) is not importable ({type(exc).__name__}: {exc}); install "
                            "opencv-python-headless 4.x to compare the crops with the official OpenCV crop")
    version = str(getattr(cv2, "__version__", "unknown"))
    if version.split(".")[0] != "4":
        return None, version, (f"OpenCV {version} is not 4.x: OpenCV 5 changed warpAffine, and the official crop "
                               "(and every published number) is OpenCV 4.x's")
    return cv2, version, None


def read_bgr(cv2, path: str):
    """The official decode: `cv2.imread` in colour, EXIF orientation ignored (BGR uint8, (H, W, 3)); None if unread."""
    return cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)


def official_crop(cv2, bgr: np.ndarray, box, out_hw) -> np.ndarray:
    """The official 3DMPPE/Integral crop of a BGR uint8 image, returned as RGB (H, W, 3) uint8.

    `cv2.getAffineTransform` from three float32 points of the box (centre, centre + (0, h/2), centre + (w/2, 0);
    the centre computed in float64) to the crop's (W/2, H/2), (W/2, H), (W, H/2); then `cv2.warpAffine` with
    INTER_LINEAR and the default constant-0 border; then BGR -> RGB (SPEC §4a)."""
    out_h, out_w = (int(v) for v in out_hw)
    centre = np.array([float(box[0] + 0.5 * box[2]), float(box[1] + 0.5 * box[3])], dtype=np.float32)
    src = np.stack([centre, centre + np.array([0, box[3] * 0.5], dtype=np.float32),
                    centre + np.array([box[2] * 0.5, 0], dtype=np.float32)]).astype(np.float32)
    dst_centre = np.array([out_w * 0.5, out_h * 0.5], dtype=np.float32)
    dst = np.stack([dst_centre, dst_centre + np.array([0, out_h * 0.5], dtype=np.float32),
                    dst_centre + np.array([out_w * 0.5, 0], dtype=np.float32)]).astype(np.float32)
    trans = cv2.getAffineTransform(src, dst)
    return cv2.warpAffine(bgr, trans, (out_w, out_h), flags=cv2.INTER_LINEAR)[:, :, ::-1]


def skipped_record(reason: str, version: str | None = None) -> dict:
    return {"opencv": version, "images": 0, "decode_identical": None, "crop_identical": None, "max_abs_diff": None,
            "skipped": reason}


def check_crops(paths: Sequence[str], bbox: np.ndarray, input_shape, crops_of: Callable[[np.ndarray], np.ndarray],
                count: int = CROP_CHECK_IMAGES) -> dict:
    """The `crop_check` block of result.json: `count` images spread evenly over `paths` (see the module docstring).

    `crops_of(positions)` returns the run's crops of those samples, `(k, 3, H, W)` uint8 RGB (`CropStore.take`).
    Returns {opencv, images, decode_identical, crop_identical, max_abs_diff (grey levels), skipped (None or why)}."""
    from .images import ImageReadError, read_image

    if count < 1:
        return skipped_record("turned off (crop_check_images = 0)")
    cv2, version, reason = import_opencv()
    if cv2 is None:
        return skipped_record(reason, version)
    picks = np.unique(np.linspace(0, len(paths) - 1, min(int(count), len(paths))).round().astype(np.int64))
    ours = crops_of(picks)
    bbox = np.asarray(bbox, dtype=np.float64)
    decode_identical, crop_identical, max_diff, unreadable = True, True, 0, []
    for row, p in enumerate(picks):
        bgr = read_bgr(cv2, paths[p])
        if bgr is None:  # our decoder read it (its crop is cached), OpenCV cannot: a difference in itself
            decode_identical = crop_identical = False
            unreadable.append(str(paths[p]))
            continue
        try:
            decoded = read_image(paths[p]).permute(1, 2, 0).numpy()
        except ImageReadError:
            decoded = None
        decode_identical &= decoded is not None and np.array_equal(decoded, bgr[:, :, ::-1])
        expected = official_crop(cv2, bgr, bbox[p], input_shape)
        got = np.asarray(ours[row]).transpose(1, 2, 0)
        diff = int(np.abs(got.astype(np.int16) - expected.astype(np.int16)).max()) if got.shape == expected.shape else 255
        crop_identical &= diff == 0
        max_diff = max(max_diff, diff)
    record = {"opencv": version, "images": int(len(picks)), "decode_identical": bool(decode_identical),
              "crop_identical": bool(crop_identical), "max_abs_diff": max_diff, "skipped": None}
    if unreadable:
        record["unreadable_by_opencv"] = unreadable[:3]
    return record


def crop_check_failed(record: dict | None) -> bool:
    """True when the check ran and found a difference (a skipped or absent check is not a failure)."""
    return bool(record) and not record.get("skipped") and not (record.get("decode_identical")
                                                               and record.get("crop_identical"))
