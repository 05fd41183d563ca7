"""Reading test images: JPEG bytes and CPU decoding to uint8 RGB (3, H, W), with errors that name the file.

The CPU decoder (torchvision/libjpeg) gives the same pixels as `cv2.imread` on Human3.6M frames, so it is
the exact path. GPU decoding (nvjpeg) is not known to be identical; the engine uses it only on request and
measures its deviation (helpers/README.md, "Decoding").
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from .h36m import DataError


class ImageReadError(DataError):
    """A test image could not be read or decoded; the message names the file."""


def decode_rgb(data, device: str | torch.device = "cpu"):
    """Decode JPEG bytes (a uint8 tensor, or a list of them) to uint8 RGB (3, H, W) on `device`."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 flags its image codecs as deprecated on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def short_error(exc: Exception) -> str:
    """The last line of a torchvision codec error, without the C++ source location."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.split(", ")[-1] if "decode_jpeg" in text else text


def image_error(path: str, reason: str) -> ImageReadError:
    return ImageReadError(f"test image {path} {reason}. Replace the file with the original JPEG (or remove it "
                          "and rerun with the skip-missing-images option, which records it as skipped).")


def read_jpeg_bytes(path: str | os.PathLike) -> torch.Tensor:
    path = str(path)
    try:
        data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    except OSError as exc:
        raise image_error(path, f"cannot be read ({exc.strerror or exc})") from None
    if data.numel() == 0:
        raise image_error(path, "is empty (0 bytes)")
    return data


def read_image(path: str | os.PathLike, decode: bool = True) -> torch.Tensor:
    """One JPEG as uint8 RGB (3, H, W) decoded on the CPU, or its raw bytes with `decode=False`."""
    data = read_jpeg_bytes(path)
    if not decode:
        return data
    try:
        return decode_rgb(data)
    except RuntimeError as exc:
        raise image_error(str(path), f"is not a readable JPEG ({short_error(exc)})") from None
