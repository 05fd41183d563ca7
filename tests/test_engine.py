"""Inference engine (helpers.engine): multi-process equality, resume, determinism, bad images, limits."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.io import encode_jpeg

from helpers import engine
from helpers.engine import ImageReadError, InferenceConfig, run_inference, write_bbox_root_file
from helpers.h36m import DataError, load_bbox_root
from helpers.models.registry import ModelSpec
from helpers.pipeline import crop_images

# The tests encode/decode their JPEGs with torchvision, which flags its codecs as deprecated on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

POSE_SPEC = ModelSpec(model_id="tiny_standin", family="test", variant="t", builder="unused:unused",
                      input_shape=(32, 32), output_shape=(8, 8), depth_dim=8)
NUM_SAMPLES = 14


def tiny_pose_model(seed: int = 0) -> nn.Module:
    """Stand-in with the pose forward contract, x (N,3,32,32) -> (N,18,3). Only torch.nn classes, so it
    pickles into spawned processes without importing this test file."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 18 * 3), nn.Unflatten(1, (18, 3))).eval()


def _write_jpeg(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(image, quality=95).numpy().tobytes())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Tiny JPEGs of two sizes (like H36M's 1000x1002 and 1000x1000), boxes partly outside the image."""
    root = tmp_path_factory.mktemp("tiny_h36m")
    rng = np.random.default_rng(0)
    paths, boxes = [], []
    for i in range(NUM_SAMPLES):
        height = 50 if i % 2 else 48
        yy, xx = np.mgrid[0:height, 0:40]
        image = np.stack([(xx * 6 + i * 7) % 256, (yy * 5) % 256, rng.integers(0, 256, (height, 40))])
        path = root / f"seq_{i % 3}" / f"img_{i:03d}.jpg"
        _write_jpeg(path, torch.from_numpy(image.astype(np.uint8)))
        paths.append(path)
        boxes.append([rng.uniform(-5, 15), rng.uniform(-5, 15), rng.uniform(20, 35), rng.uniform(20, 35)])
    test_set = SimpleNamespace(image_id=np.arange(1000, 1000 + NUM_SAMPLES, dtype=np.int64),
                               bbox=np.array(boxes), f=np.tile([1145.0, 1144.0], (NUM_SAMPLES, 1)),
                               c=np.tile([20.5, 24.0], (NUM_SAMPLES, 1)),
                               height=np.array([50 if i % 2 else 48 for i in range(NUM_SAMPLES)]),
                               width=np.full(NUM_SAMPLES, 40))
    return test_set, paths


def _config(out_dir, **overrides) -> InferenceConfig:
    settings = dict(batch_size=3, shard_size=6, device="cpu", num_workers=0, cpu_threads=1, out_dir=out_dir,
                    cache_dir=Path(out_dir) / "cache", progress=False)
    settings.update(overrides)
    return InferenceConfig(**settings)


def test_predictions_file_follows_the_schema(dataset, tmp_path):
    test_set, paths = dataset
    result = run_inference(POSE_SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path))
    with np.load(result["predictions_path"], allow_pickle=False) as z:
        assert z["image_id"].dtype == np.int64 and np.array_equal(z["image_id"], test_set.image_id)
        assert z["coords"].shape == (NUM_SAMPLES, 18, 3) and z["coords"].dtype == np.float32
        assert z["output_shape"].tolist() == [8, 8] and int(z["depth_dim"]) == 8
        assert str(z["model_id"]) == "tiny_standin" and bool(z["flip_test"]) is True
    timing = result["timing"]
    assert timing["images"] == NUM_SAMPLES and timing["inference_s"] > 0
    assert timing["images_per_s"] == pytest.approx(NUM_SAMPLES / timing["inference_s"])
    assert result["peak_memory_mb"] > 0 and result["memory_kind"] == "rss"
    assert result["shards"] == {"total": 3, "reused": 0, "computed": 3}


def test_network_input_is_the_normalised_crop_of_the_box(dataset, tmp_path):
    """Wiring: the model sees (crop - mean)/std of the right image and box, and its mirror for the flip test."""
    test_set, paths = dataset
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            return torch.zeros(x.shape[0], 18, 3)

    run_inference(POSE_SPEC, Probe(), test_set, paths, _config(tmp_path, max_samples=3, channels_last=False))
    x = seen[0]
    assert x.shape == (6, 3, 32, 32)  # one forward of 2B: the batch, then its mirror
    assert torch.equal(x[3:], torch.flip(x[:3], dims=(-1,)))
    from torchvision.io import decode_jpeg

    mean = np.array([0.485, 0.456, 0.406])[:, None, None]
    std = np.array([0.229, 0.224, 0.225])[:, None, None]
    for k in range(3):  # the official uint8 crop (tests/test_crop_opencv.py proves it equals OpenCV's)
        image = decode_jpeg(torch.from_numpy(np.fromfile(paths[k], dtype=np.uint8)))
        crop = crop_images([image], test_set.bbox[k:k + 1], (32, 32))[0].numpy().astype(np.float64)
        np.testing.assert_allclose(x[k].numpy(), (crop - mean) / std, rtol=0, atol=1e-4)


def test_one_and_two_processes_give_identical_predictions(dataset, tmp_path):
    """The 2-process run goes through a gloo process group; rank 0 gathers every rank's shard list."""
    test_set, paths = dataset
    model = tiny_pose_model()
    single = run_inference(POSE_SPEC, model, test_set, paths, _config(tmp_path / "one", world_size=1))
    double = run_inference(POSE_SPEC, model, test_set, paths, _config(tmp_path / "two", world_size=2, num_workers=1))
    assert double["settings"]["world_size"] == 2 and len(double["rank_stats"]) == 2
    assert sorted(r["shards_computed"] for r in double["rank_stats"]) == [1, 2]  # shards 0, 2 | 1
    assert [r["shards_done"] for r in double["rank_stats"]] == [[0, 2], [1]]  # gathered in rank order
    assert np.array_equal(single["predictions"]["coords"], double["predictions"]["coords"])
    assert Path(single["predictions_path"]).read_bytes() == Path(double["predictions_path"]).read_bytes()


def test_interrupted_run_resumes_to_identical_predictions(dataset, tmp_path, monkeypatch):
    test_set, paths = dataset
    model = tiny_pose_model()
    reference = Path(run_inference(POSE_SPEC, model, test_set, paths, _config(tmp_path / "ref"))["predictions_path"])

    written = []
    original_write = engine._write_shard

    def crash_after_two_shards(*args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated interruption")
        original_write(*args, **kwargs)
        written.append(args[0])

    monkeypatch.setattr(engine, "_write_shard", crash_after_two_shards)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_inference(POSE_SPEC, model, test_set, paths, _config(out))
    assert not (out / "predictions.npz").exists()
    assert sorted(p.name for p in (out / "shards").glob("*.npz")) == ["shard_00000.npz", "shard_00001.npz"]
    monkeypatch.setattr(engine, "_write_shard", original_write)

    resumed = run_inference(POSE_SPEC, model, test_set, paths, _config(out))
    assert resumed["shards"] == {"total": 3, "reused": 2, "computed": 1}
    assert resumed["timing"]["images"] == NUM_SAMPLES - 12
    assert (out / "predictions.npz").read_bytes() == reference.read_bytes()

    # Shards of another run (other weights) in the same folder are never mixed in.
    other = run_inference(POSE_SPEC, tiny_pose_model(seed=1), test_set, paths, _config(out))
    assert other["shards"]["reused"] == 0
    assert not np.array_equal(other["predictions"]["coords"], resumed["predictions"]["coords"])
    # resume=False recomputes everything even when the shards match.
    fresh = run_inference(POSE_SPEC, tiny_pose_model(seed=1), test_set, paths, _config(out, resume=False))
    assert fresh["shards"]["computed"] == 3


def test_two_cpu_runs_are_byte_identical(dataset, tmp_path):
    test_set, paths = dataset
    first = run_inference(POSE_SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "a", num_workers=1))
    second = run_inference(POSE_SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "b"))
    assert Path(first["predictions_path"]).read_bytes() == Path(second["predictions_path"]).read_bytes()


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_jpeg_is_reported_with_its_path(dataset, tmp_path, workers):
    test_set, paths = dataset
    paths = list(paths)
    bad = tmp_path / "seq_9" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(paths[4].read_bytes()[:200])  # a truncated JPEG
    paths[4] = bad
    with pytest.raises(ImageReadError, match="broken.jpg is not a readable JPEG") as info:
        run_inference(POSE_SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "out", num_workers=workers))
    assert isinstance(info.value, DataError)
    assert not (tmp_path / "out" / "predictions.npz").exists()
    paths[4] = tmp_path / "missing.jpg"
    with pytest.raises(ImageReadError, match="missing.jpg cannot be read"):
        run_inference(POSE_SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "out", num_workers=workers))


def test_model_output_that_does_not_fit_the_spec_is_a_clear_error(dataset, tmp_path):
    test_set, paths = dataset
    seventeen_joints = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 17 * 3), nn.Unflatten(1, (17, 3)))
    with pytest.raises(ValueError, match="spec expects"):
        run_inference(POSE_SPEC, seventeen_joints, test_set, paths, _config(tmp_path, max_samples=3))
    assert not (tmp_path / "predictions.npz").exists()


def test_max_samples_runs_only_the_first_samples(dataset, tmp_path):
    test_set, paths = dataset
    full = run_inference(POSE_SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "full"))
    limited = run_inference(POSE_SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "lim", max_samples=9))
    assert limited["num_samples"] == 9 and limited["timing"]["images"] == 9
    assert np.array_equal(limited["predictions"]["image_id"], test_set.image_id[:9])
    # Batches start at shard starts, so the first 9 samples were computed in the very same batches.
    assert np.array_equal(limited["predictions"]["coords"], full["predictions"]["coords"][:9])
    with pytest.raises(ValueError, match="max_samples"):
        run_inference(POSE_SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "x", max_samples=0))


class SymmetricCentroidModel(nn.Module):
    """Mirror-equivariant stand-in with heatmap = input resolution (32): joints at the intensity centroid,
    left/right partners shifted by opposite x offsets. Its flip-tested output equals its plain output."""

    def forward(self, x):
        weight = (x.sum(dim=1) - x.sum(dim=1).amin(dim=(1, 2), keepdim=True)) + 1e-3
        total = weight.sum(dim=(1, 2))
        cx = (weight.sum(dim=1) * torch.arange(x.shape[3])).sum(dim=1) / total
        cy = (weight.sum(dim=2) * torch.arange(x.shape[2])).sum(dim=1) / total
        offset = torch.zeros(18)
        for k, (a, b) in enumerate(POSE_SPEC.flip_pairs):
            offset[a], offset[b] = k + 1.0, -(k + 1.0)
        n = x.shape[0]
        return torch.stack([cx[:, None] + offset, cy[:, None].expand(n, 18), torch.ones(n, 18)], dim=2)


def test_flip_test_wiring_with_a_mirror_symmetric_model(dataset, tmp_path):
    test_set, paths = dataset
    spec = ModelSpec(model_id="centroid", family="test", variant="t", builder="unused:unused",
                     input_shape=(32, 32), output_shape=(32, 32), depth_dim=8)
    flipped = run_inference(spec, SymmetricCentroidModel(), test_set, paths, _config(tmp_path / "f"))
    plain = run_inference(spec, SymmetricCentroidModel(), test_set, paths, _config(tmp_path / "p", flip_test=False))
    assert bool(plain["predictions"]["flip_test"]) is False
    np.testing.assert_allclose(flipped["predictions"]["coords"], plain["predictions"]["coords"], atol=1e-3)
    # A spec without flip pairs merges R with L joints' mirror images: the engine must use the spec's pairs.
    no_pairs = ModelSpec(model_id="centroid", family="test", variant="t", builder="unused:unused",
                         input_shape=(32, 32), output_shape=(32, 32), depth_dim=8, flip_pairs=())
    wrong = run_inference(no_pairs, SymmetricCentroidModel(), test_set, paths, _config(tmp_path / "w"))
    assert np.abs(wrong["predictions"]["coords"] - plain["predictions"]["coords"]).max() > 0.5


class TinyRootModel(nn.Module):
    """RootNet forward contract: model(x, k) -> (N, 3) = x, y heatmap pixels, z mm (here z = k / 10)."""

    def forward(self, x, k):
        n = x.shape[0]
        xy = torch.stack([x.mean(dim=(1, 2, 3)) % 7 + 10, torch.full((n,), 20.0)], dim=1)
        return torch.cat([xy, k.reshape(n, 1) / 10], dim=1)


def test_rootnet_outputs_camera_roots_and_a_bbox_root_file(dataset, tmp_path):
    test_set, paths = dataset
    spec = ModelSpec(model_id="tiny_root", family="rootnet", variant="t", builder="unused:unused", kind="root",
                     input_shape=(32, 32), output_shape=(64, 64), depth_dim=1, joint_num=1, flip_pairs=())
    result = run_inference(spec, TinyRootModel(), test_set, paths, _config(tmp_path))
    pred = result["predictions"]
    assert bool(pred["flip_test"]) is False and pred["root_cam"].shape == (NUM_SAMPLES, 3)
    box, f, c = test_set.bbox, test_set.f, test_set.c
    k = np.sqrt(2000.0 * 2000.0 * f[:, 0] * f[:, 1] / (box[:, 2] * box[:, 3]))
    np.testing.assert_allclose(pred["root_output"][:, 2], k / 10, rtol=1e-6)
    depth = pred["root_output"][:, 2].astype(np.float64)
    u = pred["root_output"][:, 0] / 64 * box[:, 2] + box[:, 0]
    v = 20.0 / 64 * box[:, 3] + box[:, 1]
    expected = np.stack([(u - c[:, 0]) / f[:, 0] * depth, (v - c[:, 1]) / f[:, 1] * depth, depth], axis=1)
    np.testing.assert_allclose(pred["root_cam"], expected, rtol=1e-9)

    order = np.arange(NUM_SAMPLES)[::-1]  # written sorted by id whatever the input order
    path = write_bbox_root_file(tmp_path / "bbox_root.json", pred["image_id"][order], box[order],
                                pred["root_cam"][order])
    loaded = load_bbox_root(path)
    assert np.array_equal(loaded.image_id, test_set.image_id)
    np.testing.assert_allclose(loaded.bbox, box, rtol=1e-12)
    np.testing.assert_allclose(loaded.root_cam, pred["root_cam"], rtol=1e-12)
    with pytest.raises(ValueError, match="finite"):
        write_bbox_root_file(tmp_path / "bad.json", [1], [[0, 0, 1, 1]], [[np.nan, 0, 0]])
    assert not (tmp_path / "bad.json").exists()
