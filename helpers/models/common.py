"""Soft-argmax decoders shared by the pose models (helpers/README.md, "Back to camera space"; tests/data/golden/README.md, "Output convention").

All coordinates are 0-based heatmap units: x, y in output-heatmap pixels, z in depth bins.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

_RECORDERS: list[list[dict]] = []  # open `record_heatmaps` blocks; empty in every normal forward


@contextlib.contextmanager
def record_heatmaps():
    """Collect the heatmap shape every soft-argmax call sees inside the block: a list of {kind, joints, depth,
    height, width} dicts ("3d": `soft_argmax_3d`, "2d": `soft_argmax_2d`)."""
    seen: list[dict] = []
    _RECORDERS.append(seen)
    try:
        yield seen
    finally:
        _RECORDERS.remove(seen)


def _record(**shape) -> None:
    for seen in _RECORDERS:
        seen.append(shape)


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
    if _RECORDERS:
        _record(kind="3d", joints=joint_num, depth=depth_dim, height=height, width=width)
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
    if _RECORDERS:
        _record(kind="2d", joints=channels, depth=None, height=height, width=width)
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


class DeclarationError(ValueError):
    """A family declares a heatmap size, depth or joint count its model does not produce; the message names both."""


def _last_heatmap_output(model: torch.nn.Module, probe) -> tuple | None:
    """(channels, height, width) of the last 4-D output any leaf module produced during `probe()`."""
    shapes: list[tuple] = []

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            shapes.append(tuple(output.shape[1:]))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        probe()
    finally:
        for handle in handles:
            handle.remove()
    return shapes[-1] if shapes else None


def _probe(spec, model: torch.nn.Module, device) -> tuple[torch.Tensor, list[dict], tuple | None]:
    """One forward of one blank crop: (output, soft-argmax shapes seen, last 4-D leaf output shape)."""
    height, width = spec.input_shape
    x = torch.zeros(1, 3, height, width, device=device)
    k = torch.full((1, 1), 1000.0, device=device)
    output: list = []

    def forward():
        with torch.no_grad():
            output.append(model(x, k) if spec.kind == "root" else model(x))

    with record_heatmaps() as seen:
        last = _last_heatmap_output(model, forward)
    return output[0], seen, last


def check_declarations(spec, model: torch.nn.Module | None = None) -> dict:
    """Compare what a `ModelSpec` declares (output_shape, depth_dim, joint_num) with what its model produces, before
    any number is computed, by one forward of one blank crop: of the spec's architecture on the "meta" device (shapes
    only, no arithmetic), or where that model cannot run there, of `model` (the loaded one) on its device. Models that
    decode with our soft-argmax are checked exactly (the heatmap shape it sees); others by the last 4-D tensor of the
    forward. Raises `DeclarationError` naming both sizes on a mismatch; returns what was checked."""
    height, width = spec.input_shape
    try:
        with torch.device("meta"):
            output, seen, last = _probe(spec, spec.build(), "meta")
    except Exception:  # noqa: BLE001 - e.g. autocast or .item() inside the forward: run the loaded model instead
        if model is None:
            raise
        was_training = model.training
        model.eval()
        try:
            output, seen, last = _probe(spec, model, next((p.device for p in model.parameters()), "cpu"))
        finally:
            model.train(was_training)
    declared = {"output_shape": [int(v) for v in spec.output_shape],
                "depth_dim": int(spec.depth_dim) if spec.kind == "pose" else None, "joint_num": int(spec.joint_num)}
    name = spec.model_id
    if spec.kind == "root":
        wanted = [s for s in seen if s["kind"] == "2d"]
        found = ({"output_shape": [wanted[-1]["height"], wanted[-1]["width"]]} if wanted else
                 {"output_shape": list(last[1:])} if last else None)
        if tuple(output.shape) != (1, 3):
            raise DeclarationError(f"{name}: a root model must return (N, 3) (x, y heatmap pixels, z mm); it "
                                   f"returned {tuple(output.shape)}")
    else:
        wanted = [s for s in seen if s["kind"] == "3d"]
        if wanted:
            s = wanted[-1]
            found = {"output_shape": [s["height"], s["width"]], "depth_dim": s["depth"], "joint_num": s["joints"]}
        elif last and last[0] % max(1, spec.joint_num) == 0:
            found = {"output_shape": list(last[1:]), "depth_dim": last[0] // spec.joint_num,
                     "joint_num": int(output.shape[1]) if output.dim() == 3 else None}
        else:
            found = None
        if output.dim() != 3 or output.shape[2] != 3 or output.shape[1] != spec.joint_num:
            raise DeclarationError(f"{name}: the model returns {tuple(output.shape)}, but a pose model must return "
                                   f"(N, joint_num, 3) heatmap units with joint_num = {spec.joint_num} as declared")
    if found is None:
        return {"verified": False, "declared": declared,
                "reason": "no soft-argmax call and no 4-D output in the forward: the heatmap size was not seen"}
    problems = [f"{key} {found[key]} (declared {declared[key]})" for key in found
                if declared.get(key) is not None and found[key] is not None and list(np.atleast_1d(found[key]))
                != list(np.atleast_1d(declared[key]))]
    if problems:
        how = "soft-argmax input" if wanted else "last 4-D tensor of the forward"
        raise DeclarationError(f"{name}: the model produces {', '.join(problems)} ({how}, one blank "
                               f"{height}x{width} crop); the heatmap units would be decoded with the wrong size. "
                               "Fix the ModelSpec (output_shape, depth_dim, joint_num) or the builder_kwargs.")
    return {"verified": True, "declared": declared, "found": found,
            "method": "soft-argmax" if wanted else "last 4-D tensor"}
