"""Strict fp32 everywhere, the TF32 opt-in, the device check and the GPU-only defects, tested on a CPU.

- a probe model records torch's TF32 and cuDNN flags during the forward passes of a default run;
- PRECISION "tf32": strict fp32 on a device without TF32, the guarded opt-in where it is (simulated);
- the device check on a CPU (DEVICE_CHECK = True) and against a simulated TF32 device: ConvNeXtPose-XS with the
  golden fixture's weights, whose convolution and linear inputs are rounded to TF32's 10-bit mantissa;
- out-of-memory on a torch without `torch.OutOfMemoryError`, memory released outside the `except` block,
  non-finite batches counted once;
- the multi-GPU parent leaves nothing of its own work on GPU 0 ("meta" stands in for the GPU);
- shard fingerprints that differ by GPU name.
"""
from __future__ import annotations

import gc
import math
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from helpers import engine
from helpers.engine import InferenceConfig, run_inference
from helpers.models import build_model, get_spec
from helpers.result_schema import PRECISION_NAMES

sys.path.insert(0, str(Path(__file__).resolve().parent))
import golden  # noqa: E402  (tests/golden.py: the golden fill rule)
from test_engine import tiny_pose_model  # noqa: E402
from test_engine_cuda_logic import (ARCH_LIST, NUM_SAMPLES, SPEC, T4, _config, _SmallGPU,  # noqa: E402,F401
                                    dataset)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


class _FlagProbe(nn.Module):
    """The tiny stand-in; every forward records the numerics flags torch would use for it."""

    def __init__(self):
        super().__init__()
        self.net = tiny_pose_model()
        self.seen = []

    def forward(self, x):
        flags = engine.numerics_settings() | {"raw": _raw_flags()}
        self.seen.append(flags)
        return self.net(x)


def _raw_flags() -> dict:
    """torch's own settings, read through the API this torch has (never both: mixing them makes getters raise)."""
    backends = torch.backends
    if engine._fp32_precision_flags() is not None:
        return {"conv": backends.cudnn.conv.fp32_precision, "matmul": backends.cuda.matmul.fp32_precision,
                "benchmark": backends.cudnn.benchmark, "deterministic": backends.cudnn.deterministic}
    return {"conv": backends.cudnn.allow_tf32, "matmul": backends.cuda.matmul.allow_tf32,
            "benchmark": backends.cudnn.benchmark, "deterministic": backends.cudnn.deterministic}


@pytest.fixture(params=["fp32_precision", "legacy"])
def flag_api(request, monkeypatch):
    """The TF32 API this torch has, and the legacy one alone (a torch before 2.9 has only allow_tf32)."""
    if request.param == "legacy":
        monkeypatch.setattr(engine, "_fp32_precision_flags", lambda: None)
    return request.param


@pytest.fixture
def caller_flags(flag_api):
    """A caller who turned cuDNN autotuning on and determinism off, with torch's TF32 default for convolutions."""
    backends = torch.backends
    saved = (backends.cudnn.benchmark, backends.cudnn.deterministic)
    backends.cudnn.benchmark, backends.cudnn.deterministic = True, False
    before = _raw_flags()
    yield before
    backends.cudnn.benchmark, backends.cudnn.deterministic = saved


STRICT = {"tf32": False, "cudnn_benchmark": False, "cudnn_deterministic": True}


def test_every_forward_of_a_default_run_is_strict_fp32_and_the_callers_flags_come_back(dataset, tmp_path,
                                                                                     caller_flags):
    test_set, paths = dataset
    probe = _FlagProbe()
    result = run_inference(SPEC, probe, test_set, paths, _config(tmp_path))
    assert len(probe.seen) >= 5  # every batch
    for flags in probe.seen:
        assert {k: flags[k] for k in STRICT} == STRICT
        assert flags["raw"]["conv"] in ("ieee", False) and flags["raw"]["matmul"] in ("ieee", False)
    assert {k: result["settings"][k] for k in STRICT} == STRICT
    assert _raw_flags() == caller_flags  # benchmark on, deterministic off, conv TF32 as torch defaults it


def test_torch_settings_restore_even_on_error_and_the_official_speed_setting():
    before = _raw_flags()
    with pytest.raises(KeyError):
        with engine.torch_settings("cuda", 1, cudnn_benchmark=True):
            assert engine.numerics_settings() == {"tf32": False, "cudnn_benchmark": True, "cudnn_deterministic": False}
            raise KeyError("boom")
    assert _raw_flags() == before


def test_tf32_on_a_device_without_tf32_is_strict_fp32(dataset, tmp_path):
    test_set, paths = dataset
    reference = run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "fp32"))
    result = run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "tf32", precision="tf32"))
    check = result["precision_check"]
    assert check["requested"] == "tf32" and check["used"] == "fp32" and "no TF32" in check["note"]
    assert result["settings"]["precision"] == "fp32" and result["settings"]["tf32"] is False
    assert np.array_equal(result["predictions"]["coords"], reference["predictions"]["coords"])


def test_tf32_where_the_device_has_it_is_calibrated_against_strict_fp32(dataset, tmp_path, monkeypatch):
    """A GPU with TF32, simulated: the flags are set for the forward passes (a CPU computes in fp32 anyway)."""
    test_set, paths = dataset
    monkeypatch.setattr(engine, "tf32_available", lambda device_type, gpus=(0,): True)
    probe = _FlagProbe()
    result = run_inference(SPEC, probe, test_set, paths, _config(tmp_path, precision="tf32", calibration_samples=5))
    check = result["precision_check"]
    assert check["requested"] == check["used"] == "tf32" and check["fell_back"] is False and check["samples"] == 5
    assert check["max_abs_diff_mm"] == 0.0  # the CPU ignores the flags: strict fp32 both times
    assert result["settings"]["precision"] == "tf32" and result["settings"]["tf32"] is True
    assert any(f["tf32"] for f in probe.seen) and any(not f["tf32"] for f in probe.seen)  # run vs fp32 reference
    tf32_forwards = [f["raw"] for f in probe.seen if f["tf32"]]
    assert all(f["conv"] in ("tf32", True) and f["matmul"] in ("tf32", True) for f in tf32_forwards)
    assert all(not f["benchmark"] and f["deterministic"] for f in tf32_forwards)


def test_precision_names_are_one_list():
    assert tuple(engine.PRECISIONS) == PRECISION_NAMES


# ---------------------------------------------------------------- the device check

def test_tolerance_follows_from_the_unit_roundoffs_and_is_capped():
    fp32_order = math.sqrt(2 ** 10) * 2.0 ** -24  # 2^-19: fp32 sums of 2^10 terms in another order
    tf32 = 2.0 ** -11  # operands rounded to 11 significant bits
    assert engine.device_check_tolerance_mm(2000.0) == pytest.approx(2.0 ** -15 * 2000.0)  # ~0.061 mm
    assert engine.device_check_tolerance_mm(1e9) == 0.1
    for kappa in (1 / 15, 1.0, 15.0):  # any amplification within 16x of both regimes' is told apart
        assert kappa * fp32_order * 2000 < engine.device_check_tolerance_mm(2000.0) < kappa * tf32 * 2000


@pytest.mark.parametrize("mode, device, on", [("auto", "cpu", False), ("auto", "cuda", True), (True, "cpu", True),
                                              (False, "cuda", False), ("strict", "cpu", True),
                                              (np.bool_(False), "cuda", False)])
def test_device_check_modes(mode, device, on):
    assert engine.device_check_enabled(mode, device) is on
    with pytest.raises(ValueError, match="device_check must be"):
        engine.device_check_enabled("sometimes", device)


def test_device_check_on_cpu_is_recorded_and_passes(dataset, tmp_path):
    test_set, paths = dataset
    result = run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path, device_check=True))
    check = result["device_check"]
    assert {"device", "reference", "samples", "max_abs_diff_mm", "mean_abs_diff_mm", "tolerance_mm", "passed"} <= set(check)
    assert check["device"] == "cpu" and check["reference"] == "cpu" and check["samples"] == 8
    assert check["passed"] is True and 0 < check["tolerance_mm"] <= 0.1 and check["mean_abs_diff_mm"] <= check["tolerance_mm"]
    assert result["settings"]["device_check"] is True
    off = run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(tmp_path / "off"))  # "auto" on a CPU
    assert off["device_check"] is None


def _round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 rounded to nearest-even at TF32's 10 explicit mantissa bits (what a tensor core reads)."""
    bits = x.view(torch.int32)
    return ((bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF).view(torch.float32)


def _tf32_device(model: nn.Module) -> nn.Module:
    """The model as a TF32 GPU computes it: every convolution and linear layer reads TF32-rounded inputs."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            module.register_forward_pre_hook(lambda _m, args: (_round_to_tf32(args[0].contiguous()), *args[1:]))
    return model


@pytest.fixture(scope="module")
def xs_run(golden_models_dir, tmp_path_factory):
    """ConvNeXtPose-XS with the golden fixture's weights, and 8 real-size demo crops (256x256)."""
    from helpers import h36m
    from helpers.demo_data import generate

    fixture = golden.load_fixture(golden_models_dir / "convnextpose_XS.json")
    weights = {k.removeprefix("module."): v for k, v in golden.fill_state_dict(fixture).items()}

    def model():
        m = build_model("convnextpose_XS")
        m.load_state_dict(weights)
        return m.eval()

    root = generate(tmp_path_factory.mktemp("xs") / "demo", seed=0, frames=1, show_progress=False).root
    test_set = h36m.load_test_set(h36m.find_annotation_dir(root), protocol=2)
    picks = np.linspace(0, len(test_set) - 1, 8).round().astype(int)
    test_set = test_set.subset(picks)
    return model, test_set, h36m.resolve_image_paths(test_set, root)


def test_device_check_separates_fp32_reordering_from_tf32(xs_run, tmp_path):
    model, test_set, paths = xs_run
    spec = get_spec("convnextpose_XS")
    from helpers.crop_cache import ensure_crops

    crops = ensure_crops([str(p) for p in paths], test_set.bbox, spec.input_shape, cache_dir=tmp_path, num_workers=0,
                         progress=False)
    kw = dict(device=torch.device("cpu"), flip_test=True, channels_last=True, samples=8, batch_size=8, cpu_threads=1)
    plain = model().to(memory_format=torch.channels_last)
    same = engine.check_device(spec, plain, crops, test_set, test_set.bbox, 8, reference_model=model(), **kw)["fp32"]
    # channels-last batch of 8 vs contiguous batches of 1: the same arithmetic in another order
    assert same["passed"] is True and same["mean_abs_diff_mm"] < same["tolerance_mm"] <= 0.1
    tf32 = engine.check_device(spec, _tf32_device(model()), crops, test_set, test_set.bbox, 8,
                               reference_model=model(), **kw)["fp32"]
    assert tf32["passed"] is False and tf32["mean_abs_diff_mm"] > 3 * tf32["tolerance_mm"]
    assert "tolerance" in engine.device_check_failure(tf32)


def test_a_failed_device_check_warns_or_stops_the_run(xs_run, tmp_path, monkeypatch, capsys):
    model, test_set, paths = xs_run
    monkeypatch.setattr(engine, "_cpu_reference_model", lambda m: model())  # the CPU: no TF32 rounding
    config = dict(batch_size=8, device="cpu", num_workers=0, cpu_threads=1, cache_dir=tmp_path / "cache",
                  progress=False)
    with pytest.raises(engine.DeviceCheckError, match="strict"):
        run_inference("convnextpose_XS", _tf32_device(model()), test_set, paths,
                      InferenceConfig(out_dir=tmp_path / "strict", device_check="strict", **config))
    assert not (tmp_path / "strict" / "predictions.npz").exists()
    result = run_inference("convnextpose_XS", _tf32_device(model()), test_set, paths,
                           InferenceConfig(out_dir=tmp_path / "warn", device_check=True, **config))
    printed = capsys.readouterr()
    assert result["device_check"]["passed"] is False and "WARNING: the device check" in printed.out + printed.err
    from helpers import report

    assert "device check FAILED" in report.verification_problems(result)[0]


# ---------------------------------------------------------------- out of memory, non-finite batches

def test_out_of_memory_without_torch_OutOfMemoryError_halves_and_releases_outside_except(dataset, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)  # torch < 2.4 has only torch.cuda's
    released = []
    monkeypatch.setattr(engine, "release_cached_memory", lambda device: released.append(sys.exc_info()[0]))
    test_set, paths = dataset
    result = run_inference(SPEC, _SmallGPU(), test_set, paths, _config(tmp_path, batch_size=8))
    assert result["settings"]["batch_size_used"] == 2 and result["rank_stats"][0]["oom_events"] == 2
    assert len(released) >= 2 and released == [None] * len(released)  # never inside an except block
    # A plain RuntimeError saying "out of memory" (what torch raised before 1.13) is recognised too.
    assert engine._is_oom(RuntimeError("CUDA error: out of memory")) and not engine._is_oom(RuntimeError("other"))


class _NaNThenSmall(nn.Module):
    """NaN under autocast; its fp32 recompute runs out of memory above 4 images (2 samples, flip test)."""

    def __init__(self):
        super().__init__()
        self.net = tiny_pose_model()

    def forward(self, x):
        if torch.is_autocast_enabled(x.device.type):
            return self.net(x) * float("nan")
        if x.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return self.net(x)


def test_a_non_finite_batch_is_counted_once_when_its_fp32_recompute_runs_out_of_memory():
    job = SimpleNamespace(kind="pose", normalization="3dmppe", channels_last=False, flip_test=True,
                          output_shape=(8, 8), flip_pairs=SPEC.flip_pairs, output_width=(18, 3))
    crops = np.random.default_rng(0).integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    runner = engine._BatchRunner(_NaNThenSmall(), job, torch.device("cpu"), 4, "bf16")
    with torch.inference_mode():
        out = runner.run(np.arange(7), lambda p: crops[p])
    assert np.isfinite(out).all() and runner.batch_size == 2 and runner.oom_events == 1
    assert runner.nonfinite_batches == 4  # batches of 2, 2, 2, 1; the failed batch of 4 is not counted


def test_batches_follow_the_groups_and_the_next_one_is_read_before_the_output_is_fetched():
    job = SimpleNamespace(kind="pose", normalization="3dmppe", channels_last=False, flip_test=False,
                          output_shape=(8, 8), flip_pairs=(), output_width=(18, 3))
    crops = np.random.default_rng(0).integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    events = []

    class Model(nn.Module):
        def forward(self, x):
            events.append(("forward", x.shape[0]))
            return torch.zeros(x.shape[0], 18, 3)

    def read(positions, out=None):
        events.append(("read", len(positions)))
        return crops[positions]

    with torch.inference_mode():
        engine._BatchRunner(Model(), job, torch.device("cpu"), 3, "fp32").run(np.arange(10), read, group_size=5)
    # groups [0,5) and [5,10), each cut into batches of 3 from its own start: 3, 2 | 3, 2
    assert events == [("read", 3), ("forward", 3), ("read", 2), ("forward", 2), ("read", 3), ("forward", 3),
                      ("read", 2), ("forward", 2)]


# ---------------------------------------------------------------- multi-GPU parent, fingerprints

@pytest.fixture
def two_t4(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(ARCH_LIST))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: T4)


def test_multi_gpu_parent_leaves_nothing_of_its_own_on_gpu_0(dataset, tmp_path, monkeypatch, two_t4):
    """"meta" stands in for GPU 0: the parent's calibration and device check run there on a copy of the model,
    which is gone (and the allocator's cache released) when the processes start; the caller's model stays put."""
    test_set, paths = dataset
    meta = torch.device("meta")
    monkeypatch.setattr(engine, "_main_device", lambda device_type: meta)
    on_gpu, released, seen = [], [], {}

    def calibrate(spec, runner, crops, test_set, bbox, n, config, tf32_ok=False):
        on_gpu.append(weakref.ref(runner.model))
        seen["calibrated_on"] = next(runner.model.parameters()).device
        return {"requested": "fp16", "used": "fp16", "nonfinite_batches": 0}

    def device_check(spec, model, *args, **kwargs):
        seen["checked_on"] = next(model.parameters()).device
        return {"fp32": {"passed": True, "device": str(kwargs["device"])}}

    def spawn(job):
        gc.collect()
        seen["alive_on_gpu"] = [ref() is not None for ref in on_gpu]
        seen["handed_over"] = {t.device.type for t in job.model.parameters()}
        seen["released_before_spawn"] = list(released)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "check_precision", calibrate)
    monkeypatch.setattr(engine, "check_device", device_check)
    monkeypatch.setattr(engine, "release_cached_memory", released.append)
    monkeypatch.setattr(engine, "_run_spawned", spawn)
    model = tiny_pose_model()
    with pytest.raises(KeyboardInterrupt):
        run_inference(SPEC, model, test_set, paths, _config(tmp_path, device="cuda", world_size=2, precision="fp16",
                                                            device_check=True))
    assert seen["calibrated_on"] == meta and seen["checked_on"] == meta
    assert seen["alive_on_gpu"] == [False]  # the calibration copy is gone
    assert seen["handed_over"] == {"cpu"} and {p.device.type for p in model.parameters()} == {"cpu"}
    assert meta in seen["released_before_spawn"]


def test_shards_of_another_gpu_kind_are_never_reused(dataset, tmp_path, monkeypatch):
    test_set, paths = dataset
    names = iter([["Tesla T4"], ["Tesla T4"], ["NVIDIA L4"]])
    monkeypatch.setattr(engine, "_device_names", lambda device_type, world_size: next(names))
    out = tmp_path / "run"
    first = run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(out))
    again = run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(out))
    other = run_inference(SPEC, tiny_pose_model(), test_set, paths, _config(out))
    assert first["shards"]["computed"] == 3 and again["shards"]["reused"] == 3
    assert other["shards"]["reused"] == 0 and other["fingerprint"] != first["fingerprint"] == again["fingerprint"]
    assert len(test_set.image_id) == NUM_SAMPLES
