"""Batched crop / normalise / flip pipeline (helpers.pipeline) against independent references."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from helpers.pipeline import (MEAN_3DMPPE, STD_3DMPPE, crop_images, flip_images, flip_test_merge, normalize, pad_batch,
                              unflip_coords)
from helpers.protocol import FLIP_PAIRS


def reference_crop(image: np.ndarray, bbox, out_h: int, out_w: int) -> np.ndarray:
    """OpenCV 4.x's fixed-point warpAffine on uint8, one pixel at a time in plain Python integers, written from
    helpers/README.md ("The crop"): the matrix from cv2.getAffineTransform, then warpAffine's own inversion,
    1/32-pixel positions, integer weights summing to 2**15 and a constant-0 border tap by tap."""
    channels, height, width = image.shape
    x, y, w, h = (float(v) for v in bbox)
    centre = np.array([x + 0.5 * w, y + 0.5 * h], np.float32)
    src = np.array([centre, centre + np.array([0, h * 0.5], np.float32), centre + np.array([w * 0.5, 0], np.float32)])
    dc = np.array([out_w * 0.5, out_h * 0.5], np.float32)
    dst = np.array([dc, dc + np.array([0, out_h * 0.5], np.float32), dc + np.array([out_w * 0.5, 0], np.float32)])
    m0, m1, m2, m3, m4, m5 = (float(v) for v in cv2.getAffineTransform(src.astype(np.float32),
                                                                      dst.astype(np.float32)).ravel())
    d = m0 * m4 - m1 * m3
    d = 1.0 / d if d != 0 else 0.0
    a11, a22, m1, m3 = m4 * d, m0 * d, -m1 * d, -m3 * d
    b1, b2 = -a11 * m2 - m1 * m5, -m3 * m2 - a22 * m5

    def pixel(c, row, col):
        return int(image[c, row, col]) if 0 <= row < height and 0 <= col < width else 0

    out = np.zeros((channels, out_h, out_w), dtype=np.uint8)
    for j in range(out_h):
        x0 = int(np.rint((m1 * j + b1) * 1024)) + 16
        y0 = int(np.rint((a22 * j + b2) * 1024)) + 16
        for i in range(out_w):
            big_x = (x0 + int(np.rint(a11 * i * 1024))) >> 5
            big_y = (y0 + int(np.rint(m3 * i * 1024))) >> 5
            sx, fx, sy, fy = big_x >> 5, big_x & 31, big_y >> 5, big_y & 31
            for c in range(channels):
                total = ((32 - fy) * (32 - fx) * 32 * pixel(c, sy, sx) + (32 - fy) * fx * 32 * pixel(c, sy, sx + 1)
                         + fy * (32 - fx) * 32 * pixel(c, sy + 1, sx) + fy * fx * 32 * pixel(c, sy + 1, sx + 1))
                out[c, j, i] = min(255, max(0, (total + 16384) >> 15))
    return out


def random_image(rng: np.random.Generator, height: int, width: int) -> torch.Tensor:
    return torch.from_numpy(rng.integers(0, 256, size=(3, height, width), dtype=np.uint8))


def test_crop_matches_an_independent_fixed_point_reference():
    rng = np.random.default_rng(1)
    # Different sizes in one batch; boxes cross the left, top, right and bottom borders, fractional corners.
    images = [random_image(rng, 37, 41), random_image(rng, 40, 35), random_image(rng, 37, 41)]
    boxes = np.array([[-6.3, -4.75, 30.2, 30.2], [20.4, 15.1, 27.9, 33.3], [3.5, 2.25, 12.0, 9.0]])
    out_h, out_w = 20, 24
    crops = crop_images(images, boxes, (out_h, out_w))
    assert crops.shape == (3, 3, out_h, out_w) and crops.dtype == torch.uint8
    for image, box, crop in zip(images, boxes, crops):
        assert np.array_equal(crop.numpy(), reference_crop(image.numpy(), box, out_h, out_w))


def test_crop_of_mixed_real_size_batch():
    """Cameras 1/4 give 1000x1002 (w x h) frames, cameras 2/3 give 1000x1000: one batch holds both."""
    rng = np.random.default_rng(2)
    tall, square = random_image(rng, 1002, 1000), random_image(rng, 1000, 1000)
    # The first box reaches below row 1000, where only the taller image has pixels.
    boxes = np.array([[610.25, 760.5, 400.0, 400.0], [610.25, 760.5, 400.0, 400.0]])
    crops = crop_images([tall, square], boxes, (16, 16))
    for image, box, crop in zip([tall, square], boxes, crops):
        assert np.array_equal(crop.numpy(), reference_crop(image.numpy(), box, 16, 16))
    # Same box, different image heights: the crops differ exactly where the taller image still has rows.
    assert not torch.equal(crops[0], crops[1])
    # Batching never changes a crop: each image cropped alone gives the same numbers.
    for k, image in enumerate([tall, square]):
        alone = crop_images([image], boxes[k:k + 1], (16, 16))
        assert torch.equal(alone[0], crops[k])
    # The zero-padded batch the loader workers build crops identically (padding = constant-0 border).
    padded = pad_batch([tall, square])
    assert padded.shape == (2, 3, 1002, 1000) and torch.equal(padded[1, :, 1000:], torch.zeros(3, 2, 1000,
                                                                                                dtype=torch.uint8))
    assert torch.equal(crop_images(padded, boxes, (16, 16)), crops)


def test_crop_reads_hwc_memory_like_decode_jpeg_returns():
    """decode_jpeg gives (3,H,W) views of HWC memory; they must crop exactly like contiguous images."""
    rng = np.random.default_rng(7)
    hwc = [torch.from_numpy(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).permute(2, 0, 1)
           for h, w in ((21, 30), (25, 19))]
    assert not hwc[0].is_contiguous()
    boxes = np.array([[-2.5, 3.25, 20.0, 20.0], [4.0, -1.5, 15.5, 17.0]])
    expected = crop_images([im.contiguous() for im in hwc], boxes, (9, 7))
    assert torch.equal(crop_images(hwc, boxes, (9, 7)), expected)
    for image, box, crop in zip(hwc, boxes, expected):
        assert np.array_equal(crop.numpy(), reference_crop(image.numpy(), box, 9, 7))
    # Padding to 25x30 adds rows to the first image and columns to the second: both must read as 0.
    padded = pad_batch(hwc)
    assert padded.shape == (2, 3, 25, 30)
    assert not padded[0, :, 21:].any() and not padded[1, :, :, 19:].any()
    assert torch.equal(padded[1, :, :, :19], hwc[1]) and torch.equal(padded[0, :, :21], hwc[0])
    assert torch.equal(crop_images(padded, boxes, (9, 7)), expected)


def test_crop_identity_box_returns_the_image_and_accepts_a_4d_tensor():
    rng = np.random.default_rng(3)
    batch = torch.stack([random_image(rng, 12, 10), random_image(rng, 12, 10)])
    crops = crop_images(batch, np.array([[0.0, 0.0, 10.0, 12.0]] * 2), (12, 10))
    assert torch.equal(crops, batch)  # positions land exactly on pixels: the crop is a copy


def test_crop_takes_uint8_images_only():
    """The official crop warps uint8 pixels; a float image (e.g. already normalised) is a mistake upstream."""
    with pytest.raises(ValueError, match="uint8"):
        crop_images([torch.zeros(3, 8, 8)], np.array([[0.0, 0.0, 4.0, 4.0]]), (4, 4))


def test_crop_rejects_bad_input():
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="non-positive width or height"):
        crop_images([image], np.array([[0.0, 0.0, 0.0, 4.0]]), (4, 4))
    with pytest.raises(ValueError, match="shape \\(1, 4\\)"):
        crop_images([image], np.array([[0.0, 0.0, 4.0]]), (4, 4))
    with pytest.raises(ValueError, match="expected \\(3, H, W\\) RGB"):
        crop_images([torch.zeros(1, 8, 8, dtype=torch.uint8)], np.array([[0.0, 0.0, 4.0, 4.0]]), (4, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        crop_images([image], np.array([[np.nan, 0.0, 4.0, 4.0]]), (4, 4))


def test_normalisation_constants_and_formula():
    # helpers/README.md "Normalisation and flip": ImageNet mean/std applied to 0-255 values without /255; Integral uses 0-255 statistics.
    from helpers.models import integral
    from helpers.models.registry import get_spec

    assert (MEAN_3DMPPE, STD_3DMPPE) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert get_spec("posenet").normalization == (MEAN_3DMPPE, STD_3DMPPE)
    assert (integral.MEAN, integral.STD) == ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    assert get_spec("integral_r50").normalization == (integral.MEAN, integral.STD)
    x = torch.tensor([10.0, 128.0, 255.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    quirk = normalize(x, (MEAN_3DMPPE, STD_3DMPPE))
    assert torch.allclose(quirk[0, :, 0, 0], torch.tensor([(10 - 0.485) / 0.229, (128 - 0.456) / 0.224,
                                                           (255 - 0.406) / 0.225]))
    integral = normalize(x, ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)))
    assert torch.allclose(integral[1, :, 1, 1], torch.tensor([(10 - 123.675) / 58.395, (128 - 116.28) / 57.12,
                                                              (255 - 103.53) / 57.375]))
    import dataclasses

    with pytest.raises(ValueError, match="mean must be three finite numbers"):
        dataclasses.replace(get_spec("posenet"), mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="std must be three finite numbers.*all positive"):
        dataclasses.replace(get_spec("posenet"), std=(0.2, 0.0, 0.2))


def test_flip_unflip_round_trip_and_pair_swap():
    rng = np.random.default_rng(5)
    coords = torch.from_numpy(rng.uniform(0, 31, size=(4, 18, 3)).astype(np.float32))
    original = coords.clone()
    out_w = 32
    once = unflip_coords(coords, out_w, FLIP_PAIRS)
    assert torch.allclose(unflip_coords(once, out_w, FLIP_PAIRS), coords, rtol=0, atol=1e-5)  # float32 rounding
    # R_Hip (1) of the un-flipped result is L_Hip (4) of the mirrored prediction, mirrored; Pelvis keeps its slot.
    assert torch.equal(once[:, 1, 0], out_w - 1 - coords[:, 4, 0])
    assert torch.equal(once[:, 4, 1:], coords[:, 1, 1:])
    assert torch.equal(once[:, 16], torch.stack([out_w - 1 - coords[:, 13, 0], coords[:, 13, 1], coords[:, 13, 2]], 1))
    assert torch.equal(once[:, 0, 0], out_w - 1 - coords[:, 0, 0])
    assert torch.equal(coords, original)  # the input is not modified in place
    # numpy arrays work the same way
    assert np.array_equal(unflip_coords(coords.numpy(), out_w, FLIP_PAIRS), once.numpy())
    image = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    assert torch.equal(flip_images(image)[..., 0], image[..., 3])


class MirrorSymmetricModel(torch.nn.Module):
    """Mirror-equivariant stand-in: every joint sits at the intensity centroid of the crop, shifted by
    opposite x offsets for left/right partners, so f(flip(img)) = unflip(f(img)) exactly in theory.
    Heatmap = input resolution, so x' = W - 1 - x is the exact mirror."""

    def __init__(self, flip_pairs, num_joints=18):
        super().__init__()
        offset = torch.zeros(num_joints)
        depth = torch.arange(num_joints, dtype=torch.float32)
        for k, (a, b) in enumerate(flip_pairs):
            offset[a], offset[b] = k + 1.0, -(k + 1.0)
            depth[b] = depth[a]
        self.register_buffer("offset", offset)
        self.register_buffer("depth", depth)

    def forward(self, x):
        weight = x.sum(dim=1).clamp_min(0) + 1e-3  # (N, H, W)
        h, w = weight.shape[1:]
        total = weight.sum(dim=(1, 2))
        cx = (weight.sum(dim=1) * torch.arange(w, dtype=x.dtype)).sum(dim=1) / total
        cy = (weight.sum(dim=2) * torch.arange(h, dtype=x.dtype)).sum(dim=1) / total
        n, j = x.shape[0], self.offset.shape[0]
        return torch.stack([cx[:, None] + self.offset, cy[:, None].expand(n, j), self.depth.expand(n, j)], dim=2)


def test_flip_merge_of_a_mirror_symmetric_model_changes_nothing():
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.uniform(0, 5, size=(3, 3, 16, 20)).astype(np.float32))
    model = MirrorSymmetricModel(FLIP_PAIRS)
    plain = model(x)
    merged = flip_test_merge(plain, model(flip_images(x)), 20, FLIP_PAIRS)
    assert torch.allclose(merged, plain, atol=1e-4)
    # With no pair swap the merge must visibly disagree: the pair offsets would be mirrored onto the wrong joint.
    wrong = flip_test_merge(plain, model(flip_images(x)), 20, ())
    assert (wrong - plain).abs().max() > 0.5


def test_flip_merge_is_the_plain_average():
    coords = torch.zeros(1, 18, 3)
    flipped = torch.zeros(1, 18, 3)
    flipped[0, 4] = torch.tensor([3.0, 6.0, 10.0])  # mirrored L_Hip -> R_Hip (1) at x = 31 - 3
    coords[0, 1] = torch.tensor([20.0, 2.0, 4.0])
    merged = flip_test_merge(coords, flipped, 32, FLIP_PAIRS)
    assert torch.equal(merged[0, 1], torch.tensor([(20.0 + 28.0) / 2, (2.0 + 6.0) / 2, (4.0 + 10.0) / 2]))
