"""The engine's CUDA-only logic, exercised on a CPU-only machine.

- device placement: the pipeline and every pose model run on the "meta" device, which (like CUDA)
  refuses any operation that mixes in a CPU tensor;
- branches on torch.cuda (device choice, world size, unsupported GPU, rank start-up) with mocked calls;
- out-of-memory: a simulated CUDA OOM halves the batch for the rest of the run;
- reduced precision (fp16 autocast, what a T4 runs, and bf16) on the CPU: the fp32 comparison, the
  fallback and the fp32 recompute of non-finite batches.
(The GPU JPEG decoder's path is tested in test_crop_cache.py.)
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.io import encode_jpeg

from helpers import engine
from helpers.engine import ImageReadError, InferenceConfig, run_inference
from helpers.models import build_model, get_spec, list_models
from helpers.models.registry import ModelSpec
from helpers.pipeline import crop_images, flip_test_merge, normalize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import golden  # noqa: E402  (tests/golden.py: the golden fill rule)
from test_engine import tiny_pose_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

SPEC = ModelSpec(model_id="tiny_standin", family="test", variant="t", builder="unused:unused",
                 input_shape=(32, 32), output_shape=(8, 8), depth_dim=8)
NUM_SAMPLES = 14  # batches of 3 in shards of 6: five batches (3, 3 | 3, 3 | 2)
NUM_BATCHES = 5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """JPEGs of two sizes (odd samples are 50 rows high, even ones 48), boxes partly outside the image."""
    root = tmp_path_factory.mktemp("cuda_logic")
    rng = np.random.default_rng(1)
    paths, boxes = [], []
    for i in range(NUM_SAMPLES):
        height = 50 if i % 2 else 48
        image = rng.integers(0, 256, (3, height, 40), dtype=np.uint8)
        image[0] = (np.arange(40)[None, :] * 6 + i * 11) % 256  # a ramp, so the crops differ per sample
        path = root / f"img_{i:03d}.jpg"
        path.write_bytes(encode_jpeg(torch.from_numpy(image), quality=95).numpy().tobytes())
        paths.append(path)
        boxes.append([rng.uniform(-5, 15), rng.uniform(-5, 15), rng.uniform(20, 35), rng.uniform(20, 35)])
    test_set = SimpleNamespace(image_id=np.arange(NUM_SAMPLES, dtype=np.int64) + 500, bbox=np.array(boxes),
                               f=np.tile([1145.0, 1144.0], (NUM_SAMPLES, 1)), c=np.tile([20.0, 24.0], (NUM_SAMPLES, 1)),
                               root_cam=np.tile([0.0, 0.0, 5000.0], (NUM_SAMPLES, 1)))
    return test_set, paths


def _config(out_dir, **overrides) -> InferenceConfig:
    settings = dict(batch_size=3, shard_size=6, device="cpu", num_workers=0, cpu_threads=1, out_dir=out_dir,
                    cache_dir=Path(out_dir) / "cache", progress=False)
    settings.update(overrides)
    return InferenceConfig(**settings)


# ---------------------------------------------------------------- device placement

def test_pipeline_creates_every_tensor_on_the_images_device():
    """On "meta", as on CUDA, an operation with a CPU tensor (other than a 0-d scalar) raises."""
    with pytest.raises(RuntimeError, match="device"):
        torch.empty(3, device="meta") + torch.ones(3)  # the premise of this test
    boxes = np.array([[-3.0, 2.0, 30.0, 25.0], [5.0, 1.0, 20.0, 33.0]])
    padded = torch.empty((2, 50, 40, 3), dtype=torch.uint8, device="meta").permute(0, 3, 1, 2)  # pad_batch layout
    as_list = [torch.empty((3, 48, 40), dtype=torch.uint8, device="meta"),
               torch.empty((3, 50, 40), dtype=torch.uint8, device="meta")]
    for images in (padded, as_list):
        x = normalize(crop_images(images, boxes, (32, 24)), "3dmppe")
        assert x.device.type == "meta" and x.shape == (2, 3, 32, 24) and x.dtype == torch.float32
        assert crop_images(images, boxes, (32, 24)).dtype == torch.uint8
    crops = torch.empty((2, 3, 32, 24), dtype=torch.uint8, device="meta")
    inputs = engine.prepare_inputs(crops, normalization="integral", channels_last=True)
    assert inputs.device.type == "meta" and inputs.is_contiguous(memory_format=torch.channels_last)
    merged = flip_test_merge(torch.empty(2, 18, 3, device="meta"), torch.empty(2, 18, 3, device="meta"), 64,
                             get_spec("posenet").flip_pairs)
    assert merged.device.type == "meta"


@pytest.mark.parametrize("model_id", [m for m in list_models() if get_spec(m).kind == "pose"])
def test_flip_tested_forward_keeps_every_tensor_on_the_device(model_id):
    spec = get_spec(model_id)
    with torch.device("meta"):  # built on "meta": no weights are initialised, nothing is computed
        model = build_model(model_id).eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.empty((2, 3, *spec.input_shape), device="meta").contiguous(memory_format=torch.channels_last)
    out = engine.forward_batch(model, x, kind="pose", flip_test=True, output_width=spec.output_shape[1],
                               flip_pairs=spec.flip_pairs)
    assert out.device.type == "meta" and out.shape == (2, spec.joint_num, 3) and out.dtype == torch.float32


# ---------------------------------------------------------------- branches on torch.cuda, mocked

T4 = SimpleNamespace(name="Tesla T4", major=7, minor=5, total_memory=15 * 2**30)
P100 = SimpleNamespace(name="Tesla P100-PCIE-16GB", major=6, minor=0, total_memory=16 * 2**30)
ARCH_LIST = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # a current torch wheel: no sm_60


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend torch sees these GPUs; only the queries the parent process makes are answered."""
    def install(*gpus):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(ARCH_LIST))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: gpus[index])
    return install


def test_auto_device_and_world_size_follow_the_visible_gpus(dataset, tmp_path, fake_gpus, monkeypatch):
    test_set, paths = dataset
    fake_gpus(T4, T4)
    assert engine._resolve_device("auto") == "cuda"
    with pytest.raises(ValueError, match="world_size 3 exceeds the 2 visible CUDA GPUs"):
        run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "x", device="auto", world_size=3))
    # world_size None means every visible GPU; stop where the processes would be spawned.
    seen = {}

    def stop(job):
        seen.update(world_size=job.world_size, device_type=job.device_type, precision=job.precision)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_run_spawned", stop)
    with pytest.raises(KeyboardInterrupt):
        run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "y", device="auto", world_size=None,
                                                                        device_check=False))
    assert seen == {"world_size": 2, "device_type": "cuda", "precision": "fp32"}  # fp32 by default, also on CUDA

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine._resolve_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        engine._resolve_device("cuda")


def test_unsupported_gpu_fails_before_any_work(dataset, tmp_path, fake_gpus):
    test_set, paths = dataset
    fake_gpus(P100)
    out = tmp_path / "never"
    with pytest.raises(RuntimeError) as info:
        run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(out, device="cuda"))
    message = str(info.value)
    assert "GPU 0 (Tesla P100-PCIE-16GB, sm_60)" in message and "sm_75" in message and "GPU T4 x2" in message
    assert not out.exists()


def test_support_check_covers_exactly_the_gpus_in_use(fake_gpus):
    fake_gpus(T4, P100)
    engine.check_cuda_devices(1)  # GPU 0 only: the T4 is fine
    with pytest.raises(RuntimeError, match=r"GPU 1 \(Tesla P100"):
        engine.check_cuda_devices(2)
    fake_gpus(T4, T4)
    engine.check_cuda_devices(2)


def test_each_rank_makes_its_own_gpu_current(monkeypatch):
    made_current, reset = [], []
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset.append)
    assert engine._rank_device(1, SimpleNamespace(device_type="cuda")) == torch.device("cuda", 1)
    assert made_current == [torch.device("cuda", 1)] and reset == [torch.device("cuda", 1)]
    assert engine._rank_device(1, SimpleNamespace(device_type="cpu")) == torch.device("cpu")

    def busy(device):
        raise RuntimeError("CUDA error: all CUDA-capable devices are busy or unavailable")

    monkeypatch.setattr(torch.cuda, "set_device", busy)
    with pytest.raises(engine._RankStartError, match="process 1 could not use GPU cuda:1 .*busy"):
        engine._rank_device(1, SimpleNamespace(device_type="cuda"))


def test_failures_of_spawned_ranks_become_clear_errors():
    start = engine._rank_failure(("error", 1, "_RankStartError", "process 1 could not use GPU cuda:1 (busy)"))
    assert isinstance(start, RuntimeError) and "WORLD_SIZE = 1" in str(start) and "cuda:1" in str(start)
    image = engine._rank_failure(("error", 0, "ImageReadError", "test image a.jpg is empty (0 bytes). Replace it"))
    assert isinstance(image, ImageReadError) and "a.jpg" in str(image)
    assert isinstance(engine._rank_failure(("error", 0, "ValueError", "the model returned shape")), ValueError)
    other = engine._rank_failure(("error", 1, "OutOfMemoryError", "CUDA out of memory"))
    assert type(other) is RuntimeError and "inference process 1 failed with OutOfMemoryError" in str(other)


def test_model_that_cannot_reach_the_processes_is_a_clear_error(dataset, tmp_path):
    test_set, paths = dataset

    class NotImportable(nn.Module):  # like a class defined in a notebook cell
        def forward(self, x):
            return torch.zeros(x.shape[0], 18, 3)

    with pytest.raises(RuntimeError, match="importable.*WORLD_SIZE = 1"):
        run_inference(SPEC, NotImportable(), test_set, paths, _config(tmp_path, world_size=2))
    assert engine._model_on_cpu(tiny := tiny_pose_model()) is tiny  # a CPU model is handed over as is


def test_error_in_a_spawned_process_reaches_the_caller_with_its_path(dataset, tmp_path):
    test_set, paths = dataset
    paths = list(paths)
    paths[9] = tmp_path / "gone.jpg"  # shard 1 (samples 6..11) belongs to rank 1
    with pytest.raises(ImageReadError, match="gone.jpg cannot be read"):
        run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "out", world_size=2))
    assert not (tmp_path / "out" / "predictions.npz").exists()


# ---------------------------------------------------------------- mixed precision

@pytest.fixture(scope="module")
def golden_xs(golden_models_dir):
    """ConvNeXtPose XS with the golden fixture's weights and input: a peaked, informative softmax."""
    fixture = golden.load_fixture(golden_models_dir / "convnextpose_XS.json")
    model = build_model("convnextpose_XS")
    model.load_state_dict({k.removeprefix("module."): v for k, v in golden.fill_state_dict(fixture).items()})
    return model.eval().to(memory_format=torch.channels_last), fixture


def test_reduced_precision_forward_really_runs_reduced_and_returns_float32(golden_xs):
    """fp16 (what a T4 runs) and bf16 autocast on the CPU: float32 (N, J, 3) coordinates that differ from fp32.
    No bound on the difference here: it depends on the CPU's kernels; the run-time guard measures it instead."""
    model, fixture = golden_xs
    spec = get_spec("convnextpose_XS")
    x = golden.fixture_input(fixture).contiguous(memory_format=torch.channels_last)
    run = dict(kind="pose", flip_test=True, output_width=spec.output_shape[1], flip_pairs=spec.flip_pairs)
    with torch.inference_mode():
        full = engine.forward_batch(model, x, precision="fp32", **run)
        plain = model(x)
        np.testing.assert_allclose(plain.numpy(), golden.expected_coords(fixture), rtol=0, atol=golden.atol(fixture))
        for precision in ("fp16", "bf16"):
            low = engine.forward_batch(model, x, precision=precision, **run)
            assert low.dtype == torch.float32 and low.shape == full.shape == (2, 18, 3)
            assert not torch.equal(low, full)  # autocast really ran in reduced precision


class _NaNUnderAutocast(nn.Module):
    """The tiny stand-in, but its output is NaN whenever autocast is on: fp16 overflow, made certain."""

    def __init__(self):
        super().__init__()
        self.net = tiny_pose_model()

    def forward(self, x):
        out = self.net(x)
        return out * float("nan") if torch.is_autocast_enabled(x.device.type) else out


def test_non_finite_reduced_precision_falls_back_to_fp32_with_a_record(dataset, tmp_path):
    test_set, paths = dataset
    reference = run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "fp32"))
    model = _NaNUnderAutocast()
    result = run_inference(SPEC, model, test_set, paths, _config(tmp_path / "fp16", precision="fp16"))
    check = result["precision_check"]
    assert check["requested"] == "fp16" and check["used"] == "fp32" and check["fell_back"] is True
    assert check["samples"] == NUM_SAMPLES and check["calibration_nonfinite_samples"] == NUM_SAMPLES
    assert result["settings"]["precision"] == "fp32"
    assert np.array_equal(result["predictions"]["coords"], reference["predictions"]["coords"])
    with pytest.raises(engine.PrecisionError, match="fp16 deviates from fp32.*NaN"):
        run_inference(SPEC, model, test_set, paths, _config(tmp_path / "stop", precision="fp16",
                                                            precision_fallback=False))
    assert not (tmp_path / "stop" / "predictions.npz").exists()


def test_reduced_precision_within_tolerance_is_kept_and_its_deviation_recorded(dataset, tmp_path):
    test_set, paths = dataset
    reference = run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "fp32"))
    kept = run_inference(SPEC, tiny_pose_model(), test_set, paths,
                         _config(tmp_path / "bf16", precision="bf16", precision_tolerance_mm=1e9, calibration_samples=5))
    check = kept["precision_check"]
    assert check["used"] == "bf16" and check["fell_back"] is False and check["samples"] == 5
    assert kept["settings"]["precision"] == "bf16" and str(kept["predictions"]["precision"]) == "bf16"
    assert check["max_abs_diff_heatmap"] > 0 and check["max_abs_diff_mm"] >= check["mean_abs_diff_mm"] > 0
    assert np.isfinite(kept["predictions"]["coords"]).all()
    assert not np.array_equal(kept["predictions"]["coords"], reference["predictions"]["coords"])
    strict = run_inference(SPEC, tiny_pose_model(), test_set, paths,
                           _config(tmp_path / "strict", precision="bf16", precision_tolerance_mm=0.0))
    assert strict["precision_check"]["fell_back"] is True and strict["settings"]["precision"] == "fp32"
    assert np.array_equal(strict["predictions"]["coords"], reference["predictions"]["coords"])


def test_batch_with_non_finite_output_is_recomputed_in_fp32():
    job = SimpleNamespace(kind="pose", normalization="3dmppe", channels_last=False, flip_test=True,
                          output_shape=(8, 8), flip_pairs=SPEC.flip_pairs, output_width=(18, 3))
    crops = np.random.default_rng(0).integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    runner = engine._BatchRunner(_NaNUnderAutocast(), job, torch.device("cpu"), 3, "fp16")
    with torch.inference_mode():
        out = runner.run(np.arange(7), lambda p: crops[p])
        full = engine._BatchRunner(_NaNUnderAutocast(), job, torch.device("cpu"), 3, "fp32").run(np.arange(7), lambda p: crops[p])
    assert runner.nonfinite_batches == 3 and np.isfinite(out).all() and np.array_equal(out, full)


class _SmallGPU(nn.Module):
    """Raises CUDA's out-of-memory error for more than 4 images in one forward (2 samples with the flip test)."""

    def __init__(self):
        super().__init__()
        self.net = tiny_pose_model()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")  # in every torch
        return self.net(x)


def test_out_of_memory_halves_the_batch_for_the_rest_of_the_run(dataset, tmp_path):
    test_set, paths = dataset
    model = _SmallGPU()
    result = run_inference(SPEC, model, test_set, paths, _config(tmp_path / "oom", batch_size=8))
    assert result["settings"]["batch_size"] == 8 and result["settings"]["batch_size_used"] == 2
    assert model.sizes[:3] == [12, 8, 4] and set(model.sizes[3:]) <= {4, 2}  # halved once for all, then kept
    reference = run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "b2", batch_size=2))
    assert np.array_equal(result["predictions"]["coords"], reference["predictions"]["coords"])
    other = RuntimeError("CUDA error: an illegal memory access was encountered")
    job = SimpleNamespace(kind="pose", normalization="3dmppe", channels_last=False, flip_test=False,
                          output_shape=(8, 8), flip_pairs=(), output_width=(18, 3))

    class Broken(nn.Module):
        def forward(self, x):
            raise other

    with pytest.raises(RuntimeError, match="illegal memory access"):  # only out-of-memory is retried
        engine._BatchRunner(Broken(), job, torch.device("cpu"), 4, "fp32").run(
            np.arange(4), lambda p: np.zeros((len(p), 3, 32, 32), np.uint8))
