"""Benchmark (helpers.benchmark): cold/warm crop cache, pipeline over forward, the --gpu-check code paths on CPU.

Fast CPU runs on a small generated demo set; no assertion on speed figures (they depend on the machine)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import benchmark
from helpers.demo_data import generate

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

TINY = "mobilehumanpose_lpski"  # the smallest registered model (0.48 GMACs)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One sampled frame per sequence: 239 Protocol-2 test samples, about 2 s to generate."""
    return generate(tmp_path_factory.mktemp("bench") / "demo", seed=0, frames=1, show_progress=False).root


@pytest.fixture(scope="module")
def demo_data(demo):
    return benchmark._load_data(demo, 1.0)


def test_gpu_check_without_cuda_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu_check.json"
    assert benchmark.main(["--gpu-check", "--json", str(out)]) == 2
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert lines == [benchmark.NO_CUDA_MESSAGE]
    assert "needs a CUDA GPU" in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_model_ids_space_and_comma_separated():
    assert benchmark.parse_model_ids(["convnextpose_XS,posenet", "posenet", " rootnet "]) == \
        ["convnextpose_XS", "posenet", "rootnet"]
    assert benchmark.parse_model_ids("convnextpose_XS") == ["convnextpose_XS"]
    with pytest.raises(KeyError):
        benchmark.parse_model_ids(["no_such_model"])


def test_benchmark_without_model_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        benchmark.main(["--device", "cpu"])
    assert exc.value.code == 2


def test_tiny_benchmark_cold_warm_and_json(demo, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = benchmark.main(["--model", TINY, "--device", "cpu", "--batch-size", "2", "--iters", "2", "--repeats", "1",
                           "--workers", "0", "--data", str(demo), "--cache-dir", str(tmp_path / "cache"),
                           "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pipeline / forward" in printed and TINY in printed

    report = json.loads(out.read_text())
    assert report["kind"] == "benchmark"
    assert {"device", "device_name", "torch", "cpu_threads"} <= set(report["environment"])
    assert report["environment"]["device"] == "cpu"
    (model,) = report["models"]
    assert model["model_id"] == TINY and model["images"] == 4 and model["timed_batches"] == 2
    cold, warm = model["cold"], model["warm"]
    assert cold["crop_cache_misses"] == 4 and cold["crop_cache_hits"] == 0 and cold["images_decoded"] == 4
    assert warm["crop_cache_hits"] == 4 and warm["crop_cache_misses"] == 0 and warm["images_decoded"] == 0
    for run in (cold, warm):
        assert run["wall_s"] > 0 and run["end_to_end_images_per_s"] > 0 and run["images"] == 4
    assert model["pipeline_over_forward"] > 0
    assert model["pipeline_images_per_s"] == warm["inference_images_per_s"]
    assert len(model["rounds"]["forward"]) == 1 and len(model["rounds"]["warm"]) == 1
    assert model["precision"] == {"requested": "fp32", "used": "fp32"}
    # The cache was under --cache-dir, in a fresh folder of this model.
    assert model["cache_dir"].startswith(str(tmp_path / "cache"))

    table = benchmark.format_report(report)
    assert list(table.columns) == [TINY]
    assert table.loc["warm cache: images decoded", TINY] == "0"


def test_two_models_share_one_run(demo_data, tmp_path):
    test_set, paths = demo_data
    common = dict(device="cpu", batch_size=2, iters=1, repeats=1, cache_root=tmp_path / "cache",
                  out_root=tmp_path / "out", num_workers=0)
    first = benchmark.benchmark_model(TINY, test_set, paths, **common)
    second = benchmark.benchmark_model(TINY, test_set, paths, **common)
    # Each model gets a cold cache of its own, even with the same crop rule.
    assert first["cache_dir"] != second["cache_dir"]
    assert second["cold"]["crop_cache_misses"] == 2 and second["warm"]["crop_cache_hits"] == 2
    report = {"models": [first, dict(second, model_id="copy")], "environment": benchmark.environment_info("cpu")}
    assert list(benchmark.format_report(report).columns) == [TINY, "copy"]


def test_crop_identity_and_decode_check_on_cpu(demo_data):
    test_set, paths = demo_data
    crop = benchmark.crop_identity_check(paths, test_set.bbox, (256, 256), "cpu", count=3)
    assert crop["identical"] is True and crop["max_abs_diff"] == 0 and crop["images_compared"] == 3

    dec = benchmark.decode_check(paths, test_set.bbox, (256, 256), "cpu", count=2, timed_images=3)
    assert {"decoder", "images_compared", "max_abs_diff_pixels", "max_abs_diff_crop", "identical",
            "cpu_images_per_s", "device_images_per_s", "images_timed"} <= set(dec)
    assert dec["identical"] is True and dec["max_abs_diff_pixels"] == 0 and dec["images_timed"] == 3


def test_gpu_check_model_on_cpu(demo_data, tmp_path):
    test_set, paths = demo_data
    # bf16 stands in for fp16 on the CPU (fp16 autocast convolutions are very slow there).
    m = benchmark.gpu_check_model(TINY, test_set, paths, device="cpu", cache_dir=tmp_path / "cache",
                                  out_dir=tmp_path / "out", images=4, batch_size=2, iters=1,
                                  precisions=("fp32", "bf16"), num_workers=0)
    assert {"model_id", "kind", "batch_size", "batch_size_used", "oom_halvings", "images", "crop_cache_build",
            "forward", "pipeline", "pipeline_over_forward", "precision_check", "protocol2_projection_s",
            "peak_memory_mb", "memory_kind", "num_params", "gmacs"} <= set(m)
    assert m["batch_size_used"] == 2 and m["oom_halvings"] == 0 and m["images"] == 4
    assert m["crop_cache_build"]["misses"] == 4
    for p in ("fp32", "bf16"):
        assert m["forward"][p]["images_per_s"] > 0 and m["forward"][p]["peak_memory_mb"] > 0
        assert m["pipeline"][p]["images_per_s"] > 0 and m["pipeline"][p]["images_decoded"] == 0
        assert m["pipeline_over_forward"][p] > 0
    check = m["precision_check"]["bf16"]
    assert {"max_abs_diff_mm", "mean_abs_diff_mm", "fell_back", "used", "samples"} <= set(check)
    assert check["samples"] == 4
    assert m["protocol2_projection_s"] == pytest.approx(8695 / m["pipeline"]["fp32"]["images_per_s"])
    # cudnn.benchmark off (the strict default) and on, for the fp32 forward alone
    autotune = m["cudnn_benchmark"]
    assert autotune["off_images_per_s"] == m["forward"]["fp32"]["images_per_s"] and autotune["on_images_per_s"] > 0
    assert autotune["on_over_off"] == pytest.approx(autotune["on_images_per_s"] / autotune["off_images_per_s"])
    # the device against the CPU in strict fp32 and with TF32 (a CPU has none: the tf32 side is strict fp32 too)
    deviation = m["device_vs_cpu"]
    assert deviation["tf32_supported"] is False
    for p in ("fp32", "tf32"):
        d = deviation[p]
        assert d["precision"] == p and d["device"] == "cpu" and d["reference"] == "cpu" and d["samples"] == 4
        assert d["passed"] is True and 0 < d["tolerance_mm"] <= 0.1


def test_protocol2_projection_two_gpus():
    models = [{"model_id": i, "protocol2_projection_s": s}
              for i, s in zip(benchmark.CONVNEXTPOSE_IDS, (100.0, 200.0, 300.0, 400.0))]
    proj = benchmark.protocol2_projection(models + [{"model_id": "rootnet", "protocol2_projection_s": 50.0}])
    assert proj["images"] == 8695
    assert proj["convnextpose_two_gpus_s"] == pytest.approx(500.0)
    assert proj["per_model_s"]["rootnet"] == 50.0 and "evenly" in proj["assumption"]
    assert benchmark.protocol2_projection(models[:3])["convnextpose_two_gpus_s"] is None


def test_run_gpu_check_on_cpu(demo, tmp_path):
    report = benchmark.run_gpu_check([TINY], device="cpu", data_dir=demo, images=2, batch_size=2, iters=1,
                                     precisions=("fp32", "bf16"), num_workers=0)
    assert report["kind"] == "gpu_check" and report["skipped"] == []
    assert "needs two or more GPUs" in report["one_vs_two_processes"]["skipped"]
    assert report["crop_identity"]["identical"] is True
    assert report["jpeg_decoding"]["identical"] is True
    assert [m["model_id"] for m in report["models"]] == [TINY]
    assert report["projection"]["per_model_s"][TINY] > 0
    json.dumps(report, allow_nan=False)  # JSON-ready
    table = benchmark.format_gpu_check(report)
    assert list(table.columns) == [TINY]
    assert {"forward fp32, cudnn.benchmark on (images/s)", "device vs CPU, fp32: max mm (tolerance)",
            "device vs CPU, tf32: max mm (tolerance)", "TF32 on this GPU", "pipeline / forward fp32"} <= set(table.index)
    summary = benchmark._gpu_check_summary(report)
    assert "identical True" in summary and "1 vs 2 processes: skipped" in summary


@pytest.mark.parametrize("differ", [False, True])
def test_one_vs_two_processes_compares_the_predictions(demo_data, tmp_path, monkeypatch, differ):
    """The logic of the multi-GPU comparison, with run_inference mocked (the real 1- vs 2-process equality is
    tested in test_engine.py): the 2-process run goes first, shards of one batch, predictions compared exactly."""
    test_set, paths = demo_data
    calls = []

    def fake_run(spec, model, test_set, paths, config):
        calls.append((config.world_size, config.shard_size, config.batch_size, config.max_samples,
                      {p.device.type for p in model.parameters()}))
        coords = np.zeros((config.max_samples, spec.joint_num, 3), np.float32)
        if differ and config.world_size == 2:
            coords[1, 2, 0] = 1e-6
        return {"predictions": {"coords": coords}, "timing": {"images_per_s": 10.0 * config.world_size}}

    monkeypatch.setattr(benchmark, "run_inference", fake_run)
    record = benchmark.multi_process_check(TINY, test_set, paths, device_type="cuda", cache_dir=tmp_path,
                                           out_dir=tmp_path, images=8, batch_size=2, num_workers=0)
    assert [c[0] for c in calls] == [2, 1] and all(c[1] == c[2] == 2 and c[3] == 8 for c in calls)
    assert calls[0][4] == {"cpu"}  # the model reaches the processes from the CPU
    assert record["identical"] is (not differ) and record["shards"] == 4 and record["world_sizes"] == [1, 2]
    assert record["max_abs_diff"] == pytest.approx(1e-6 if differ else 0.0)
    assert record["images_per_s"] == {"1": 10.0, "2": 20.0}


def test_gpu_check_runs_the_process_comparison_with_two_gpus(demo, monkeypatch):
    seen = {}

    def fake_multi(model_id, test_set, paths, **kwargs):
        seen.update(model_id=model_id, device_type=kwargs["device_type"], samples=len(paths))
        return {"model_id": model_id, "images": 2, "identical": True, "max_abs_diff": 0.0}

    def fake_model(model_id, *args, **kwargs):
        return {"model_id": model_id, "protocol2_projection_s": 1.0, "crop_cache_build": {"images_per_s": None}}

    # A CUDA machine with two GPUs, as far as run_gpu_check asks; the measurements themselves are stubbed.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(benchmark, "_torch_device", lambda d: torch.device("cuda", 0))
    monkeypatch.setattr(benchmark, "check_cuda_devices", lambda n: None)
    monkeypatch.setattr(benchmark, "environment_info", lambda device_type: {"device": device_type})
    monkeypatch.setattr(benchmark, "crop_identity_check", lambda *a, **k: {})
    monkeypatch.setattr(benchmark, "decode_check", lambda *a, **k: {})
    monkeypatch.setattr(benchmark, "gpu_check_model", fake_model)
    monkeypatch.setattr(benchmark, "multi_process_check", fake_multi)
    report = benchmark.run_gpu_check([TINY], device="cuda", data_dir=demo, images=2, batch_size=2, iters=1,
                                     num_workers=0)
    assert seen == {"model_id": TINY, "device_type": "cuda", "samples": 239}
    assert report["one_vs_two_processes"]["identical"] is True
    summary = benchmark._gpu_check_summary(report | {"crop_identity": CROP, "jpeg_decoding": DEC})
    assert f"1 vs 2 processes ({TINY}, 2 images): identical True" in summary


CROP = {"images_compared": 1, "max_abs_diff": 0, "identical": True}
DEC = {"decoder": "nvjpeg", "max_abs_diff_pixels": 0, "max_abs_diff_crop": 0, "identical": True,
       "device_images_per_s": 1.0, "cpu_images_per_s": 1.0}


def test_gpu_check_default_models_cover_pose_and_rootnet():
    ids = benchmark.gpu_check_models()
    assert ids[:4] == list(benchmark.CONVNEXTPOSE_IDS) and "rootnet" in ids and "posenet" in ids
