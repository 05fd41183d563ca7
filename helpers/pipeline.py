"""Batched torch test-time pipeline of the 3DMPPE family: crop, normalise, flip test (helpers/README.md).

Crop, normalisation and flip work on whole batches on the tensors' own device (CPU or CUDA), with no
per-image Python loop in the arithmetic (only `pad_batch` copies image by image). The crop is the
official uint8 OpenCV 4.x warp, reproduced bit for bit in integer arithmetic. Images are RGB, values 0-255, `(3, H, W)` as `torchvision.io.decode_jpeg`
returns them (the official code reads BGR with OpenCV and converts, so the network sees RGB).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

# The released 3DMPPE-family weights were trained with ImageNet mean/std applied to 0-255 values WITHOUT dividing
# by 255 (torchvision ToTensor leaves float arrays unscaled); helpers/README.md, "Normalisation and flip". They are
# `ModelSpec`'s default mean and std; a family with other statistics declares its own, in the same 0-255 units.
MEAN_3DMPPE = (0.485, 0.456, 0.406)
STD_3DMPPE = (0.229, 0.224, 0.225)


def _checked_boxes(bboxes, batch: int) -> np.ndarray:
    """The boxes as a float64 (batch, 4) array on the CPU, where the crop's positions are computed."""
    boxes = (bboxes.detach().to("cpu", torch.float64).numpy() if torch.is_tensor(bboxes)
             else np.asarray(bboxes, dtype=np.float64))
    if boxes.shape != (batch, 4):
        raise ValueError(f"bboxes must have shape ({batch}, 4) as [x, y, w, h] per image; got {tuple(boxes.shape)}")
    if not np.isfinite(boxes).all():
        raise ValueError("bboxes contain NaN or inf; every box must be finite [x, y, w, h] in image pixels")
    if (boxes[:, 2:] <= 0).any():
        bad = np.flatnonzero((boxes[:, 2:] <= 0).any(axis=1)).tolist()
        raise ValueError(f"bboxes at batch positions {bad[:5]} have a non-positive width or height; "
                         "drop empty boxes before cropping (geometry.process_bbox returns None for them)")
    return boxes


def _check_batch(images: list[torch.Tensor]) -> None:
    device, dtype = images[0].device, images[0].dtype
    for i, im in enumerate(images):
        if im.ndim != 3 or im.shape[0] != 3:
            raise ValueError(f"image {i} has shape {tuple(im.shape)}; expected (3, H, W) RGB "
                             "(decode with mode=ImageReadMode.RGB)")
        if im.device != device or im.dtype != dtype:
            raise ValueError(f"image {i} is {im.dtype} on {im.device}; all images of a batch must share "
                             f"{dtype} on {device}")


def pad_batch(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (3,H_i,W_i) images into one zero-padded (B,3,H_max,W_max) tensor with HWC memory.

    The zero padding lies outside every image, where each tap of `crop_images` reads the constant-0 border
    anyway, so cropping the padded batch equals cropping the list. One tensor: one transfer to a device."""
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


# OpenCV 4.x warpAffine fixed-point constants (imgwarp.cpp): source coordinates carry INTER_BITS = 5
# fractional bits (1/32 pixel) after an AB_SCALE = 2**10 fixed-point accumulation; bilinear weights are
# integers summing to 2**15 (INTER_REMAP_COEF_BITS).
_AB_BITS, _INTER_BITS, _COEF_BITS = 10, 5, 15
_INTER_TAB = 1 << _INTER_BITS
_ROUND_DELTA = 1 << (_AB_BITS - _INTER_BITS - 1)  # 16: rounds the 1/1024 position to the nearest 1/32


def _solve_like_opencv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve the (B,6,6) systems a·x = b in float64 the way OpenCV 4.x's small-matrix LU does (partial pivoting
    on the first strictly largest |pivot|, elimination with the negated reciprocal, back-substitution dividing
    by the pivot), so the matrix bits equal `cv2.getAffineTransform`'s. The bits matter: the float32 box
    points make exact rounding ties frequent in the 1/1024 fixed-point positions, and the last bit decides."""
    a, b = a.copy(), b.copy()
    rows = np.arange(a.shape[0])
    m = a.shape[1]
    for i in range(m):
        k = i + np.argmax(np.abs(a[:, i:, i]), axis=1)  # argmax keeps the first maximum, like OpenCV's `>`
        swap_a, swap_b = a[rows, k].copy(), b[rows, k].copy()
        a[rows, k], b[rows, k] = a[:, i].copy(), b[:, i].copy()
        a[:, i], b[:, i] = swap_a, swap_b
        d = -1.0 / a[:, i, i]
        alpha = a[:, i + 1:, i] * d[:, None]  # (B, m-i-1)
        a[:, i + 1:, i + 1:] += alpha[:, :, None] * a[:, i:i + 1, i + 1:]
        b[:, i + 1:] += alpha * b[:, i:i + 1]
    x = b
    for i in range(m - 1, -1, -1):
        s = x[:, i].copy()
        for k2 in range(i + 1, m):
            s -= a[:, i, k2] * x[:, k2]
        x[:, i] = s / a[:, i, i]
    return x


def crop_matrices(bboxes, out_hw: Sequence[int]) -> np.ndarray:
    """The official crop's affine matrices (B,2,3) float64, box -> crop, as `cv2.getAffineTransform` builds them.

    The official code maps three float32 points of each box (centre, centre + (0, h/2), centre + (w/2, 0);
    the centre x + w/2 computed in float64, then stored as float32) to the crop's (W/2, H/2), (W/2, H),
    (W, H/2), and solves the 6x6 system in float64 (helpers/README.md, "The crop")."""
    boxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
    out_h, out_w = (int(v) for v in out_hw)
    centre = np.stack([boxes[:, 0] + 0.5 * boxes[:, 2], boxes[:, 1] + 0.5 * boxes[:, 3]], 1).astype(np.float32)
    zero = np.zeros(len(boxes), np.float32)
    down = np.stack([zero, (boxes[:, 3] * 0.5).astype(np.float32)], 1)
    right = np.stack([(boxes[:, 2] * 0.5).astype(np.float32), zero], 1)
    src = np.stack([centre, centre + down, centre + right], 1).astype(np.float64)  # (B,3,2), float32 values
    dst = np.array([[out_w * 0.5, out_h * 0.5], [out_w * 0.5, out_h * 1.0], [out_w * 1.0, out_h * 0.5]],
                   np.float32).astype(np.float64)
    a = np.zeros((len(boxes), 6, 6))
    a[:, 0::2, 0:2] = src
    a[:, 0::2, 2] = 1.0
    a[:, 1::2, 3:5] = src
    a[:, 1::2, 5] = 1.0
    b = np.broadcast_to(dst.reshape(1, 6), (len(boxes), 6))
    return _solve_like_opencv(a, b).reshape(-1, 2, 3)


def _invert_affine(m: np.ndarray) -> np.ndarray:
    """warpAffine's own inversion of the (B,2,3) matrices, operation for operation (crop -> box)."""
    m0, m1, m2, m3, m4, m5 = (m.reshape(-1, 6)[:, i] for i in range(6))
    d = m0 * m4 - m1 * m3
    d = np.where(d != 0, 1.0 / np.where(d != 0, d, 1.0), 0.0)
    a11, a22 = m4 * d, m0 * d
    m1, m3 = m1 * -d, m3 * -d
    b1 = -a11 * m2 - m1 * m5
    b2 = -m3 * m2 - a22 * m5
    return np.stack([a11, m1, b1, m3, a22, b2], 1).reshape(-1, 2, 3)


def _fixed_point_coords(bboxes, out_hw: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per crop pixel, the source position in 1/32 pixels as OpenCV 4.x computes it: (B,h,w) int64 X, Y.

    Computed on the CPU in float64 then integers (`np.rint` rounds half to even, like cvRound), so every
    device receives the same integers."""
    out_h, out_w = (int(v) for v in out_hw)
    inv = _invert_affine(crop_matrices(bboxes, out_hw)).reshape(-1, 6)
    scale = float(1 << _AB_BITS)
    x = np.arange(out_w, dtype=np.float64)
    y = np.arange(out_h, dtype=np.float64)
    adelta = np.rint(inv[:, 0:1] * x * scale).astype(np.int64)  # (B,w)
    bdelta = np.rint(inv[:, 3:4] * x * scale).astype(np.int64)
    x0 = np.rint((inv[:, 1:2] * y + inv[:, 2:3]) * scale).astype(np.int64) + _ROUND_DELTA  # (B,h)
    y0 = np.rint((inv[:, 4:5] * y + inv[:, 5:6]) * scale).astype(np.int64) + _ROUND_DELTA
    shift = _AB_BITS - _INTER_BITS
    big_x = (x0[:, :, None] + adelta[:, None, :]) >> shift
    big_y = (y0[:, :, None] + bdelta[:, None, :]) >> shift
    return big_x, big_y


def crop_images(images, bboxes, out_hw: Sequence[int]) -> torch.Tensor:
    """The official crop: each box warped to an `out_hw` uint8 crop exactly as OpenCV 4.x `warpAffine`
    (INTER_LINEAR, BORDER_CONSTANT 0) warps a uint8 image, bit for bit.

    images: a `(B,3,H,W)` uint8 tensor (any memory layout; zero padding beyond an image's own size is
        fine, e.g. from `pad_batch`: a tap there reads 0, which is the border value) or a list of
        `(3,H_i,W_i)` uint8 tensors (sizes may differ), RGB, one device.
    bboxes: `(B,4)` processed boxes `[x, y, w, h]` in image pixels (array or tensor).
    Returns `(B,3,h,w)` uint8 RGB on the images' device.

    Integer arithmetic from the source positions on (computed once on the CPU), so CPU and CUDA give
    identical crops. Source position of crop pixel (i, j) is close to (x + i*w/W, y + j*h/H), rounded to
    1/32 pixel; each of the four taps outside the image contributes 0; the weighted sum of the integer
    weights (32-fy)(32-fx)*32, ... is rounded with +2**14 >> 15. See helpers/README.md, "The crop".
    """
    out_h, out_w = (int(v) for v in out_hw)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"out_hw must be positive (h, w); got {tuple(out_hw)}")
    images = _image_list(images)
    batch = len(images)
    boxes = _checked_boxes(bboxes, batch)
    big_x, big_y = _fixed_point_coords(boxes, (out_h, out_w))
    out = torch.empty((batch, 3, out_h, out_w), dtype=torch.uint8, device=images[0].device)
    # Axis-aligned boxes almost always give a column-only X and a row-only Y; those crops take the separable
    # path (two small gathers per image). The matrix's ~1e-19 off-diagonal terms can shift one row's X by a
    # 1/32 step, so the general path stays for them. Both are the same integer arithmetic.
    separable = (big_x == big_x[:, :1, :]).all(axis=(1, 2)) & (big_y == big_y[:, :, :1]).all(axis=(1, 2))
    for b, image in enumerate(images):
        if separable[b]:
            out[b] = _warp_separable(image, big_x[b, 0], big_y[b, :, 0])
        else:
            out[b] = _warp_general(image, big_x[b], big_y[b])
    return out


def _image_list(images) -> list[torch.Tensor]:
    """The batch as (3, H, W) uint8 views on one device (a (B,3,H,W) tensor is split without copying)."""
    if torch.is_tensor(images):
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
            raise ValueError(f"images must be a (B,3,H,W) tensor or a list of (3,H,W) tensors; got shape "
                             f"{tuple(images.shape)}")
        images = list(images.unbind(0))
    images = list(images)
    if not images:
        raise ValueError("crop_images got an empty batch")
    _check_batch(images)
    if images[0].dtype != torch.uint8:
        raise ValueError(f"crop_images takes uint8 images (decoded JPEGs); got {images[0].dtype}. The official crop "
                         "is a uint8 warp: convert exact 0-255 values with .to(torch.uint8) first")
    return images


def _taps_1d(fixed: np.ndarray, size: int):
    """Clamped indices of the two taps along one axis and their integer weights (0 outside the image)."""
    lo, frac = fixed >> _INTER_BITS, fixed & (_INTER_TAB - 1)
    w_lo = np.where((lo >= 0) & (lo < size), _INTER_TAB - frac, 0)
    w_hi = np.where((lo + 1 >= 0) & (lo + 1 < size), frac, 0)
    return np.clip(lo, 0, size - 1), np.clip(lo + 1, 0, size - 1), w_lo, w_hi


def _warp_separable(image: torch.Tensor, fixed_x: np.ndarray, fixed_y: np.ndarray) -> torch.Tensor:
    """One crop whose X depends on the column only and Y on the row only; integer-exact.

    The 2-D weights are products (wy·wx·32), so the sum factorises: a horizontal pass over the 2h source rows
    needed, then a vertical pass, with no rounding in between."""
    out_w, out_h = len(fixed_x), len(fixed_y)
    x0, x1, wx0, wx1 = _taps_1d(fixed_x, image.shape[2])
    y0, y1, wy0, wy1 = _taps_1d(fixed_y, image.shape[1])
    device = image.device
    # Gather in the image's own memory order ((H, W, 3) for decoded JPEGs): whole-row copies, then columns.
    hwc = image.permute(1, 2, 0)
    rows = hwc.index_select(0, torch.from_numpy(np.concatenate([y0, y1])).to(device))
    taps = rows.index_select(1, torch.from_numpy(np.concatenate([x0, x1])).to(device)).to(torch.int32)
    wx = torch.from_numpy(np.stack([wx0, wx1]).astype(np.int32)).to(device)[:, :, None]
    wy = torch.from_numpy(np.stack([wy0, wy1]).astype(np.int32) * _INTER_TAB).to(device)[:, :, None, None]
    horizontal = taps[:, :out_w] * wx[0] + taps[:, out_w:] * wx[1]  # (2h, w, 3)
    total = horizontal[:out_h] * wy[0] + horizontal[out_h:] * wy[1]
    total = total.add_(1 << (_COEF_BITS - 1)).bitwise_right_shift_(_COEF_BITS).clamp_(0, 255).to(torch.uint8)
    return total.permute(2, 0, 1)


def _warp_general(image: torch.Tensor, fixed_x: np.ndarray, fixed_y: np.ndarray) -> torch.Tensor:
    """One crop from per-pixel fixed-point positions (h, w): the four taps gathered one by one."""
    height, width = image.shape[1:]
    device = image.device
    sx, fx = fixed_x >> _INTER_BITS, fixed_x & (_INTER_TAB - 1)
    sy, fy = fixed_y >> _INTER_BITS, fixed_y & (_INTER_TAB - 1)
    total = torch.zeros((3,) + fixed_x.shape, dtype=torch.int32, device=device)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        tx, ty = sx + dx, sy + dy
        inside = (tx >= 0) & (tx < width) & (ty >= 0) & (ty < height)
        weight = (fy if dy else _INTER_TAB - fy) * (fx if dx else _INTER_TAB - fx) * _INTER_TAB * inside
        taps = image[:, torch.from_numpy(np.clip(ty, 0, height - 1)).to(device),
                     torch.from_numpy(np.clip(tx, 0, width - 1)).to(device)]
        total += taps.to(torch.int32) * torch.from_numpy(weight.astype(np.int32)).to(device)
    return total.add_(1 << (_COEF_BITS - 1)).bitwise_right_shift_(_COEF_BITS).clamp_(0, 255).to(torch.uint8)


def normalize(x: torch.Tensor, normalization) -> torch.Tensor:
    """(x − mean)/std per channel, x `(B,3,H,W)` float RGB 0-255; `normalization` is (mean, std), three values each
    in 0-255 units (`ModelSpec.normalization`)."""
    mean, std = normalization
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


def crop_main(argv: list[str] | None = None) -> int:
    """`python -m helpers crop IMAGE --box X Y W H [--size H W] --out OUT.png`: the exact crop a model sees."""
    import argparse
    import math
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="python -m helpers crop",
        description="Write the exact uint8 RGB crop a model sees for an already processed box (square, x1.25), "
                    "before normalisation: the official OpenCV 4.x warpAffine crop, bit for bit.")
    parser.add_argument("image", type=Path, help="a JPEG (decoded on the CPU, as the benchmark does)")
    parser.add_argument("--box", type=float, nargs=4, required=True, metavar=("X", "Y", "W", "H"),
                        help="processed box in image pixels, as in a bbox_root file or predictions.npz 'bbox'")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                        help="crop size (the model's input_shape); default 256 256, Integral challenge 384 288")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write (lossless)")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"crop: {message}", file=sys.stderr)
        return 2

    x, y, w, h = args.box
    if not all(math.isfinite(v) for v in args.box) or w <= 0 or h <= 0:
        return fail(f"--box needs finite X Y and a positive W H; got {' '.join(str(v) for v in args.box)}")
    if min(args.size) <= 0:
        return fail(f"--size needs a positive H W; got {args.size[0]} {args.size[1]}")
    if not args.out.parent.is_dir():
        return fail(f"the folder of --out does not exist: {args.out.parent}")
    from torchvision.io import encode_png

    from .atomic import write_bytes
    from .images import ImageReadError, read_image

    try:
        image = read_image(args.image)
    except ImageReadError as exc:
        return fail(str(exc))
    crop = crop_images([image], np.array([[x, y, w, h]]), tuple(args.size))[0]
    write_bytes(args.out, encode_png(crop).numpy().tobytes())
    print(f"wrote {args.out}: {args.size[1]}x{args.size[0]} crop of {args.image} for box [{x}, {y}, {w}, {h}]")
    return 0
