"""Batched torch test-time pipeline of the 3DMPPE family (SPEC §4): crop, normalise, flip test.

Crop, normalisation and flip work on whole batches on the tensors' own device (CPU or CUDA), with no
per-image Python loop in the arithmetic (only `pad_batch`, run in the loader workers, copies image by
image). Images are RGB, values 0-255, `(3, H, W)` as `torchvision.io.decode_jpeg`
returns them (the official code reads BGR with OpenCV and converts, so the network sees RGB).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

# (mean, std) per normalisation kind, both applied to 0-255 values.
NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # The released 3DMPPE-family weights were trained with ImageNet mean/std applied to 0-255 values
    # WITHOUT dividing by 255 (torchvision ToTensor leaves float arrays unscaled); SPEC §4 step 3.
    "3dmppe": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # Integral Human Pose: the usual ImageNet statistics expressed in 0-255 units.
    "integral": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
}


def _as_bbox_tensor(bboxes, batch: int, device: torch.device) -> torch.Tensor:
    """The boxes as float64 on `device`. Checked on the CPU first: checking a GPU tensor would make the
    host wait for the GPU on every batch."""
    boxes = (bboxes.detach().to("cpu", torch.float64) if torch.is_tensor(bboxes)
             else torch.as_tensor(np.asarray(bboxes, dtype=np.float64)))
    if boxes.shape != (batch, 4):
        raise ValueError(f"bboxes must have shape ({batch}, 4) as [x, y, w, h] per image; got {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all():
        raise ValueError("bboxes contain NaN or inf; every box must be finite [x, y, w, h] in image pixels")
    if (boxes[:, 2:] <= 0).any():
        bad = torch.nonzero((boxes[:, 2:] <= 0).any(dim=1)).flatten().tolist()
        raise ValueError(f"bboxes at batch positions {bad[:5]} have a non-positive width or height; "
                         "drop empty boxes before cropping (geometry.process_bbox returns None for them)")
    return boxes.to(device)


def _dense_flat_view(image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """A 1-D view of an image's memory and its (channel, row, col) strides, copying only if it is not dense.

    `decode_jpeg` returns (3,H,W) views of HWC memory; reading them through their strides avoids a
    transposing copy of every full-size image."""
    order = sorted(range(3), key=lambda d: image.stride(d), reverse=True)
    permuted = image.permute(order)
    if not permuted.is_contiguous():
        image = image.contiguous()
        permuted = image
    return permuted.reshape(-1), tuple(image.stride())


def _check_batch(images: list[torch.Tensor]) -> None:
    device, dtype = images[0].device, images[0].dtype
    for i, im in enumerate(images):
        if im.ndim != 3 or im.shape[0] != 3:
            raise ValueError(f"image {i} has shape {tuple(im.shape)}; expected (3, H, W) RGB "
                             "(decode with mode=ImageReadMode.RGB)")
        if im.device != device or im.dtype != dtype:
            raise ValueError(f"image {i} is {im.dtype} on {im.device}; all images of a batch must share "
                             f"{dtype} on {device}")


def _flatten_images(images) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All images as one flat buffer, with per-image offset, H, W and (channel, row, col) strides.

    A (B,3,H,W) tensor is read in place, whatever its memory layout. A list (sizes may differ) is
    concatenated once: one copy of the batch."""
    if torch.is_tensor(images):
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
            raise ValueError(f"images must be a (B,3,H,W) tensor or a list of (3,H,W) tensors; got shape "
                             f"{tuple(images.shape)}")
        order = [0] + sorted(range(1, 4), key=lambda d: images.stride(d), reverse=True)
        if not images.permute(order).is_contiguous():
            images, order = images.contiguous(), [0, 1, 2, 3]
        batch, _, height, width = images.shape
        device = images.device
        strides = torch.tensor([images.stride()[1:]] * batch, dtype=torch.int64, device=device)
        offsets = torch.arange(batch, dtype=torch.int64, device=device) * images.stride(0)
        full = torch.full((batch,), 1, dtype=torch.int64, device=device)
        return images.permute(order).reshape(-1), offsets, full * height, full * width, strides
    images = list(images)
    if not images:
        raise ValueError("crop_images got an empty batch")
    _check_batch(images)
    device = images[0].device
    views = [_dense_flat_view(im) for im in images]
    # The per-image numbers go to the device in one small copy, not one copy each.
    table = torch.tensor([[im.shape[1], im.shape[2], *stride, flat.numel()] for im, (flat, stride) in zip(images, views)],
                         dtype=torch.int64).to(device)
    heights, widths, strides, sizes = table[:, 0], table[:, 1], table[:, 2:5], table[:, 5]
    offsets = torch.cumsum(sizes, 0) - sizes
    return torch.cat([flat for flat, _ in views]), offsets, heights, widths, strides


def pad_batch(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (3,H_i,W_i) images into one zero-padded (B,3,H_max,W_max) tensor with HWC memory.

    The zero padding lies outside every image, where `crop_images` samples the constant-0 border anyway,
    so cropping the padded batch equals cropping the list. Used by the loader workers so that the device
    process receives one ready tensor (one transfer, no concatenation on the hot path)."""
    images = list(images)
    if not images:
        raise ValueError("pad_batch got an empty batch")
    _check_batch(images)
    height = max(im.shape[1] for im in images)
    width = max(im.shape[2] for im in images)
    out = torch.empty((len(images), height, width, 3), dtype=images[0].dtype, device=images[0].device)
    for slot, im in zip(out, images):  # zero only the padding: a full zero fill would touch the batch twice
        slot[:im.shape[1], :im.shape[2]] = im.permute(1, 2, 0)
        slot[im.shape[1]:].zero_()
        slot[:im.shape[1], im.shape[2]:].zero_()
    return out.permute(0, 3, 1, 2)


def _axis_taps(start: torch.Tensor, step: torch.Tensor, n_out: int, size: torch.Tensor):
    """Integer taps and bilinear weights along one axis, for all images at once.

    Source coordinate of crop pixel i is start + i*step (pixel centres at integers, OpenCV convention).
    Taps outside the image get weight 0: the constant-0 border. Coordinates are float64 so a 1000-px
    image keeps ~1e-13 px precision; the weights are then float32.
    """
    pos = start[:, None] + torch.arange(n_out, dtype=torch.float64, device=start.device)[None, :] * step[:, None]
    lo = torch.floor(pos)
    frac = pos - lo
    lo = lo.to(torch.int64)
    hi = lo + 1
    limit = size[:, None]
    w_lo = (1.0 - frac) * ((lo >= 0) & (lo < limit))
    w_hi = frac * ((hi >= 0) & (hi < limit))
    lo = lo.clamp(0, None).minimum(limit - 1)
    hi = hi.clamp(0, None).minimum(limit - 1)
    return lo, hi, w_lo.to(torch.float32), w_hi.to(torch.float32)


def crop_images(images, bboxes, out_hw: Sequence[int]) -> torch.Tensor:
    """Affine-warp each box to an `out_hw` crop: bilinear, constant-0 border, OpenCV pixel centres.

    images: a `(B,3,H,W)` tensor (any memory layout, e.g. from `pad_batch`) or a list of `(3,H_i,W_i)`
        tensors (sizes may differ, e.g. 1000x1002 and 1000x1000), uint8 or float, RGB 0-255, one device.
    bboxes: `(B,4)` `[x, y, w, h]` in image pixels (array or tensor).
    Returns `(B,3,h,w)` float32 RGB 0-255 on the images' device.

    Crop pixel (i, j) samples the source at (x + i*w/out_w, y + j*h/out_h), which maps the box centre
    to the crop centre like the official `cv2.warpAffine` (without its 1/32-pixel weight rounding).
    The map is axis-aligned, so the bilinear weights are separable; the four taps are gathered through
    each image's strides from one flat buffer holding every image (mixed sizes need no padding). This is numerically the
    `grid_sample(align_corners=True, padding_mode="zeros")` warp, but with float64 source coordinates:
    float32 normalised grids lose ~1e-4 px at 1000 px, i.e. up to ~0.03 grey levels at sharp edges.
    """
    out_h, out_w = (int(v) for v in out_hw)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"out_hw must be positive (h, w); got {tuple(out_hw)}")
    flat, offsets, heights, widths, strides = _flatten_images(images)
    batch = offsets.shape[0]
    boxes = _as_bbox_tensor(bboxes, batch, flat.device)

    x0, x1, wx0, wx1 = _axis_taps(boxes[:, 0], boxes[:, 2] / out_w, out_w, widths)
    y0, y1, wy0, wy1 = _axis_taps(boxes[:, 1], boxes[:, 3] / out_h, out_h, heights)

    # Flat index of (image b, channel c, row y, col x) = offset_b + c*stride_c + y*stride_y + x*stride_x.
    channel = torch.arange(3, device=flat.device)[None, :, None] * strides[:, 0:1, None]  # (B,3,1)
    base = offsets[:, None, None] + channel
    rows0 = (base + (y0 * strides[:, 1:2])[:, None, :])[..., None]  # (B,3,h,1)
    rows1 = (base + (y1 * strides[:, 1:2])[:, None, :])[..., None]
    cols0 = (x0 * strides[:, 2:3])[:, None, None, :]  # (B,1,1,w)
    cols1 = (x1 * strides[:, 2:3])[:, None, None, :]
    wx0, wx1 = wx0[:, None, None, :], wx1[:, None, None, :]
    wy0, wy1 = wy0[:, None, :, None], wy1[:, None, :, None]

    # One index tensor walks the four taps in place (00, 01, 10, 11): the temporaries of a (B,3,h,w)
    # batch, not the arithmetic, dominate the cost on CPU.
    index = rows0 + cols0
    top = flat[index].to(torch.float32).mul_(wx0)
    index += cols1 - cols0
    top.addcmul_(flat[index].to(torch.float32), wx1)
    index += (rows1 - rows0) - (cols1 - cols0)
    bottom = flat[index].to(torch.float32).mul_(wx0)
    index += cols1 - cols0
    bottom.addcmul_(flat[index].to(torch.float32), wx1)
    return top.mul_(wy0).addcmul_(bottom, wy1)


def normalize(x: torch.Tensor, kind: str) -> torch.Tensor:
    """(x − mean)/std per channel, x `(B,3,H,W)` float RGB 0-255; `kind` is a key of NORMALIZATION."""
    try:
        mean, std = NORMALIZATION[kind]
    except KeyError:
        raise ValueError(f"unknown normalisation {kind!r}; known: {', '.join(NORMALIZATION)}") from None
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"normalize expects (B,3,H,W); got {tuple(x.shape)}")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    mean_t = torch.tensor(mean, dtype=dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=dtype, device=x.device).view(1, 3, 1, 1)
    return (x.to(dtype) - mean_t) / std_t


def flip_images(x: torch.Tensor) -> torch.Tensor:
    """Horizontal mirror of a `(B,C,H,W)` batch (the flip-test input)."""
    return torch.flip(x, dims=(-1,))


def _pair_permutation(num_joints: int, flip_pairs) -> list[int]:
    perm = list(range(num_joints))
    for a, b in flip_pairs:
        if not (0 <= a < num_joints and 0 <= b < num_joints):
            raise ValueError(f"flip pair ({a}, {b}) is outside 0..{num_joints - 1}")
        perm[a], perm[b] = b, a
    return perm


def unflip_coords(coords, out_w: int, flip_pairs):
    """Map predictions of a mirrored crop back: x' = out_w − 1 − x, then swap left/right joints.

    coords: `(N,J,3)` tensor or array in heatmap units. Returns a new object of the same type.
    """
    if coords.ndim != 3 or coords.shape[-1] != 3:
        raise ValueError(f"coords must be (N, J, 3); got {tuple(coords.shape)}")
    perm = _pair_permutation(coords.shape[1], flip_pairs)
    out = coords[:, perm]  # advanced indexing copies, so the caller's array is untouched
    out[..., 0] = (out_w - 1) - out[..., 0]
    return out


def flip_test_merge(coords, coords_flipped_raw, out_w: int, flip_pairs):
    """Average the plain prediction with the un-flipped prediction of the mirrored crop (x, y and z)."""
    if tuple(coords.shape) != tuple(coords_flipped_raw.shape):
        raise ValueError(f"flip-test outputs differ in shape: {tuple(coords.shape)} vs "
                         f"{tuple(coords_flipped_raw.shape)}")
    return (coords + unflip_coords(coords_flipped_raw, out_w, flip_pairs)) / 2
