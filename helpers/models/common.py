"""Soft-argmax decoders shared by the pose models (helpers/README.md, "Back to camera space"; tests/data/golden/README.md, "Output convention").

All coordinates are 0-based heatmap units: x, y in output-heatmap pixels, z in depth bins.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _softmax_dtype(logits: torch.Tensor) -> torch.Tensor:
    # A softmax over up to 64^3 bins loses too much in half precision; float64 is kept for reference runs.
    return logits if logits.dtype == torch.float64 else logits.float()


def _expectation(marginal: torch.Tensor) -> torch.Tensor:
    """Expected 0-based index along the last axis of a probability `marginal`."""
    index = torch.arange(marginal.shape[-1], device=marginal.device, dtype=marginal.dtype)
    return (marginal * index).sum(dim=-1)


def soft_argmax_3d(logits: torch.Tensor, joint_num: int, depth_dim: int) -> torch.Tensor:
    """Integral regression over a (J, D, H, W) volume.

    `logits` is (N, J*D, H, W) with channel index j*D + d. The softmax runs jointly over D*H*W per
    joint, in float32 even under autocast. Returns (N, J, 3) float32 (x, y, z) in heatmap units.
    """
    if logits.dim() != 4:
        raise ValueError(f"soft_argmax_3d expects (N, J*D, H, W) logits, got shape {tuple(logits.shape)}")
    n, channels, height, width = logits.shape
    if channels != joint_num * depth_dim:
        raise ValueError(f"soft_argmax_3d: {channels} channels, but joint_num*depth_dim = "
                         f"{joint_num}*{depth_dim} = {joint_num * depth_dim}; check the model's depth_dim")
    volume = _softmax_dtype(logits).reshape(n, joint_num, depth_dim * height * width)
    probs = F.softmax(volume, dim=2).reshape(n, joint_num, depth_dim, height, width)
    x = _expectation(probs.sum(dim=(2, 3)))
    y = _expectation(probs.sum(dim=(2, 4)))
    z = _expectation(probs.sum(dim=(3, 4)))
    return torch.stack((x, y, z), dim=2)


def soft_argmax_2d(logits: torch.Tensor) -> torch.Tensor:
    """Integral regression over each (H, W) map: (N, C, H, W) -> (N, C, 2) float32 (x, y) heatmap pixels."""
    if logits.dim() != 4:
        raise ValueError(f"soft_argmax_2d expects (N, C, H, W) logits, got shape {tuple(logits.shape)}")
    n, channels, height, width = logits.shape
    probs = F.softmax(_softmax_dtype(logits).reshape(n, channels, height * width), dim=2)
    probs = probs.reshape(n, channels, height, width)
    x = _expectation(probs.sum(dim=2))
    y = _expectation(probs.sum(dim=3))
    return torch.stack((x, y), dim=2)


def check_input(x: torch.Tensor, stride: int, name: str) -> None:
    """Fail early and clearly on inputs the fully convolutional models cannot map to a heatmap."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} expects a (N, 3, H, W) image batch, got shape {tuple(x.shape)}")
    if x.shape[2] % stride or x.shape[3] % stride:
        raise ValueError(f"{name} needs H and W divisible by {stride}, got {tuple(x.shape[2:])}; "
                         f"crop to the model's input_shape")
