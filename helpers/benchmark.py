"""Throughput of the inference engine: a cold vs a warm crop cache end to end, the pipeline vs the forward pass
alone, and (`--gpu-check`) what a CUDA machine does with every model.

`python -m helpers benchmark --model ID [ID ...] [--device auto|cpu|cuda] [--batch-size N] [--iters N]
[--repeats N] [--precision fp32|tf32|fp16|bf16] [--json FILE] [--data DIR] [--cache-dir DIR]`

`python -m helpers benchmark --gpu-check [--model ID ...] [--json FILE] [--data DIR] [--budget-s S]`

Model ids may also be comma-separated (`--model convnextpose_XS,posenet`). For each model, on the first
`iters x batch-size` test samples, one run measures:

(i) cold: `engine.run_inference` with an empty crop cache (a fresh sub-folder of the cache directory per model,
    so every JPEG is decoded and cropped): wall time, end-to-end images/s, images decoded, cache hits/misses;
(ii) warm: `run_inference` again on the same cache (`resume=False`, so the forward really runs): the same
    figures; it decodes nothing and every crop is a hit;
(iii) `pipeline_over_forward` on the warm cache = the warm run's inference images/s (read cached crops,
    normalise, flip, forward, un-flip and merge, gather) / the forward pass alone (`engine.forward_batch` on
    the pre-made network inputs of one batch, the flip test as ONE forward of 2B images, the same threads and
    strict fp32 numerics via `engine.torch_settings`, after `WARMUP_FORWARDS` warm-up forwards). 1.0 means the
    pipeline adds nothing to the model's own time.
Forward and warm pipeline alternate for `--repeats` rounds and the fastest round of each is reported (like
`timeit`'s minimum): on a shared or throttled machine the fastest round is the least disturbed one. Every
round is kept in the JSON. `--precision` goes to both; a reduced precision that `run_inference`'s fp32
comparison rejects falls back to fp32 there, and the forward alone then runs in fp32 too (like with like).
The cache directory is a temporary folder unless `--cache-dir` is given (its per-model folders are kept).

`--gpu-check` (CUDA only; without a CUDA GPU it prints one line and exits 2, writing nothing) runs, within
`--budget-s` (default 270 s; models that do not fit are listed as skipped), for each pose model and RootNet
at its `spec.default_batch_size` (halved on CUDA out-of-memory): forward-alone and full-pipeline (warm cache)
images/s in strict fp32, tf32 and fp16, pipeline/forward, and their peak memory (`torch.cuda.max_memory_allocated`);
the fp32 forward with `cudnn.benchmark` on (the official scripts' setting) against the strict default; the
tf32 and fp16 deviation from strict fp32 in mm (`run_inference`'s `precision_check`, measured on real crops,
fallback allowed); the CUDA-vs-CPU deviation in mm of 8 crops with TF32 off and on (`engine.check_device`,
against the device check's tolerance); the CUDA crop vs the CPU crop of the same decoded images (must be
identical); nvjpeg vs CPU JPEG decoding (`crop_cache.check_gpu_decoder`) and both decoders' images/s; with two or
more GPUs, 1-process vs 2-process predictions of the first model (must be identical: `multi_process_check`);
and the projected time of the full Protocol-2 set (8,695 images, flip test) per model = 8695 / fp32 pipeline
images/s, plus the four ConvNeXtPose variants on two GPUs = (sum of their four projections) / 2, assuming the two
GPUs split the work evenly. The measurements are functions taking a device (`crop_identity_check`,
`decode_check`, `gpu_check_model`, `multi_process_check`), so they also run on "cpu". The pipeline runs here
leave the device check off (it is measured on its own) and keep the crop check.

Without `--data`, the generated demo dataset (`helpers.demo_data`, synthetic images at the real 1000x1002 /
1000x1000 sizes) is used. Random weights: throughput does not depend on the weight values.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from .atomic import write_json
from .crop_cache import check_gpu_decoder, ensure_crops
from .engine import (DEVICE_CHECK_SAMPLES, InferenceConfig, _is_oom, _memory_now_mb, _resolve_device,
                     check_cuda_devices, check_device, forward_batch, prepare_inputs, release_cached_memory,
                     run_inference, tf32_available, torch_settings)
from .images import decode_rgb, read_image
from .pipeline import crop_images
from .protocol import PROTOCOLS
from .models.registry import get_family

# CPU kernels, cuDNN autotuning and the caching allocators need a few passes before a forward reaches its speed.
WARMUP_FORWARDS = 3
PROTOCOL2_IMAGES = PROTOCOLS[2].expected_test_images  # 8,695
# The two-GPU projection covers the four ConvNeXtPose variants, in the family file's order.
CONVNEXTPOSE_IDS = tuple(spec.model_id for spec in get_family("convnextpose").models)
GPU_CHECK_IMAGES = 384  # a multiple of every default batch size (128, 64, 32): whole batches only
GPU_CHECK_ITERS = 3
GPU_CHECK_BUDGET_S = 270.0
GPU_CHECK_PRECISIONS = ("fp32", "tf32", "fp16")
TWO_GPU_ASSUMPTION = ("the two GPUs split the work evenly (each runs two of the four models or half of every "
                      "model's images) and each runs as fast as the GPU measured here")
NO_CUDA_MESSAGE = "--gpu-check needs a CUDA GPU, and torch sees none on this machine; nothing was measured or written."


# ---------------------------------------------------------------- shared pieces

def parse_model_ids(values: Iterable[str] | str) -> list[str]:
    """Model ids from `--model` values (space- and/or comma-separated), in order, without repeats; unknown ids
    raise KeyError (the registry's message)."""
    from .models import get_spec

    values = [values] if isinstance(values, str) else list(values)
    ids: list[str] = []
    for value in values:
        for item in str(value).split(","):
            item = item.strip()
            if item and item not in ids:
                get_spec(item)
                ids.append(item)
    if not ids:
        raise ValueError("no model id given; see helpers.models.list_models()")
    return ids


def environment_info(device_type: str, cpu_threads: int | None = None) -> dict:
    """Where the figures were measured: `environment.environment_report()` (versions, GPUs) plus the device,
    its name and the CPU threads used."""
    from .environment import cpu_name, environment_report

    return {
        **environment_report(),
        "device": device_type,
        "device_name": torch.cuda.get_device_name(0) if device_type == "cuda" else cpu_name(),
        "cpu_name": cpu_name(),
        "cpu_threads": int(cpu_threads or torch.get_num_threads()),
    }


def _load_data(data_dir: Path, aspect_ratio: float = 1.0):
    from . import h36m

    annotation_dir = h36m.find_annotation_dir(data_dir)
    test_set = h36m.load_test_set(annotation_dir, protocol=2, aspect_ratio=aspect_ratio)
    return test_set, h36m.resolve_image_paths(test_set, data_dir)


def _data_source(work: Path, data_dir: str | Path | None) -> tuple[Callable, str]:
    """A loader `aspect_ratio -> (test_set, paths)` (memoised) and a note on the data. Without `data_dir` the
    demo dataset is generated into `work`."""
    if data_dir is None:
        from .demo_data import generate

        generate(work / "demo", seed=0, show_progress=False)
        data_dir, note = work / "demo", "generated demo data (helpers.demo_data, seed 0)"
    else:
        data_dir, note = Path(data_dir), str(data_dir)
    loaded: dict[float, tuple] = {}

    def load(aspect_ratio: float):
        key = float(aspect_ratio)
        if key not in loaded:
            loaded[key] = _load_data(data_dir, key)
        return loaded[key]

    return load, note


def _torch_device(device_type: str | torch.device) -> torch.device:
    device = torch.device(device_type)
    return torch.device("cuda", 0) if device.type == "cuda" and device.index is None else device


def _build_model(model_id: str, device: torch.device, channels_last: bool) -> torch.nn.Module:
    from .models import build_model

    torch.manual_seed(0)
    model = build_model(model_id).eval().to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def forward_inputs(spec, crops_uint8, test_set, positions, *, device, channels_last: bool = True):
    """The network input of one batch of uint8 crops on `device`, and RootNet's k (None for pose models)."""
    device = _torch_device(device)
    x = prepare_inputs(crops_uint8, normalization=spec.normalization, channels_last=channels_last, device=device)
    k = None
    if spec.kind == "root":
        from .geometry import rootnet_k_value

        positions = np.asarray(positions)
        bbox = np.asarray(test_set.bbox, dtype=np.float64)[positions]
        f = np.asarray(test_set.f, dtype=np.float64)[positions]
        k = torch.from_numpy(rootnet_k_value(bbox, f)).to(device)
    return x, k


def time_forward(model, spec, inputs: torch.Tensor, k: torch.Tensor | None = None, *, iters: int,
                 precision: str = "fp32", device, cpu_threads: int | None = None, cudnn_benchmark: bool = False) -> dict:
    """`iters` timed forwards of one batch `inputs` (after `WARMUP_FORWARDS` warm-up forwards), with the flip
    test as the pipeline runs it (pose models: one forward of 2B images), in the run's strict settings
    (`cudnn_benchmark=True`: cuDNN autotuning on, determinism off, as the official test scripts run). Returns
    images (iters x B), seconds, images_per_s, peak_memory_mb (CUDA: max allocated since the start of this call;
    CPU: RSS)."""
    device = _torch_device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def once():
        return forward_batch(model, inputs, kind=spec.kind, flip_test=spec.kind == "pose", precision=precision,
                             output_width=spec.output_shape[1], flip_pairs=spec.flip_pairs, k=k)

    # The same threads and numerics as the pipeline's run, so that both compare like with like.
    with torch.inference_mode(), torch_settings(device.type, int(cpu_threads or torch.get_num_threads()),
                                                cudnn_benchmark=cudnn_benchmark):
        for _ in range(WARMUP_FORWARDS):
            once()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            out = once()
        out.cpu()  # waits for the device, like the pipeline's copy of the coordinates
        elapsed = time.perf_counter() - start
    images = iters * int(inputs.shape[0])
    return {"images": images, "seconds": elapsed, "images_per_s": images / elapsed,
            "peak_memory_mb": _memory_now_mb(device), "precision": precision, "cudnn_benchmark": cudnn_benchmark}


def _run_record(result: dict) -> dict:
    """The figures of one `run_inference` result that the benchmark reports."""
    timing, cache = result["timing"], result["crop_cache"]
    n = int(result["num_samples"])
    return {"wall_s": timing["wall_s"], "images": n,
            "end_to_end_images_per_s": n / timing["wall_s"] if timing["wall_s"] > 0 else None,
            "inference_s": timing["inference_s"], "inference_images_per_s": timing["images_per_s"],
            "images_decoded": int(timing["images_decoded"]),
            "crop_cache_hits": int(cache["hits"]), "crop_cache_misses": int(cache["misses"]),
            "peak_memory_mb": result["peak_memory_mb"], "precision_used": result["settings"]["precision"],
            "batch_size_used": result["settings"]["batch_size_used"]}


# ---------------------------------------------------------------- cold / warm / pipeline over forward

def benchmark_model(model_id: str, test_set, paths: Sequence, *, device: str = "cpu", batch_size: int = 16,
                    iters: int = 5, repeats: int = 3, precision: str = "fp32", cache_root: str | Path,
                    out_root: str | Path, num_workers: int = 2, channels_last: bool = True,
                    cpu_threads: int | None = None) -> dict:
    """Cold run, then `repeats` rounds of (forward alone, warm run) for one model; the per-model report."""
    from .models import get_spec

    spec = get_spec(model_id)
    device_type = _resolve_device(device)
    torch_device = _torch_device(device_type)
    batches = min(iters, len(test_set) // batch_size)
    if batches < 1:
        raise ValueError(f"the data has {len(test_set)} test samples: fewer than one batch of {batch_size}; "
                         "lower --batch-size or pass a larger --data folder")
    images = batches * batch_size
    threads = int(cpu_threads or torch.get_num_threads())
    model = _build_model(model_id, torch_device, channels_last)
    num_params = sum(p.numel() for p in model.parameters())

    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(tempfile.mkdtemp(prefix=f"{model_id}-", dir=cache_root))  # empty: the first run is cold
    # One process on one device: the forward alone runs on GPU 0 only, so the pipeline must not spread either.
    # The device check is measured by --gpu-check; here it would add CPU forwards to every run's wall time.
    config = InferenceConfig(batch_size=batch_size, device=device_type, world_size=1, max_samples=images,
                             shard_size=images, out_dir=Path(out_root) / model_id, cache_dir=cache_dir,
                             resume=False, num_workers=num_workers, channels_last=channels_last,
                             precision=precision, cpu_threads=threads, progress=False, device_check=False)
    cold_result = run_inference(spec, model, test_set, paths, config)
    cold = _run_record(cold_result)
    precision_used = cold_result["precision_check"]["used"]

    # The forward's input: the first batch's crops, from the cache the cold run built (all hits, no decoding).
    store = ensure_crops([str(p) for p in paths[:images]], np.asarray(test_set.bbox[:images], dtype=np.float64),
                         spec.input_shape, cache_dir=cache_dir, num_workers=0, progress=False)
    inputs, k = forward_inputs(spec, store.read(0, batch_size), test_set, np.arange(batch_size),
                               device=torch_device, channels_last=channels_last)

    forward_rounds, warm_rounds = [], []
    for _ in range(repeats):
        forward_rounds.append(time_forward(model, spec, inputs, k, iters=batches, precision=precision_used,
                                           device=torch_device, cpu_threads=threads))
        warm_rounds.append(_run_record(run_inference(spec, model, test_set, paths, config)))
    best_forward = max(forward_rounds, key=lambda r: r["images_per_s"])
    warm = max(warm_rounds, key=lambda r: r["inference_images_per_s"] or 0.0)
    pipeline_ips = warm["inference_images_per_s"]
    return {
        "model_id": model_id,
        "kind": spec.kind,
        "batch_size": batch_size,
        "timed_batches": batches,
        "images": images,
        "repeats": repeats,
        "precision": {"requested": precision, "used": precision_used},
        "precision_check": cold_result["precision_check"],
        "channels_last": channels_last,
        "num_workers": num_workers,
        "cpu_threads": threads,
        "flip_test": cold_result["settings"]["flip_test"],
        "flip_test_mode": "one forward of 2B images per batch (batch + mirror)" if spec.kind == "pose"
                          else "none (RootNet's official test has no flip test)",
        "cold": cold,
        "warm": warm,
        "forward_images_per_s": best_forward["images_per_s"],
        "pipeline_images_per_s": pipeline_ips,
        "pipeline_over_forward": pipeline_ips / best_forward["images_per_s"] if pipeline_ips else None,
        "warm_over_cold_wall": cold["wall_s"] / warm["wall_s"] if warm["wall_s"] > 0 else None,
        "rounds": {"forward": forward_rounds, "warm": warm_rounds},
        "peak_memory_mb": {"forward": max(r["peak_memory_mb"] for r in forward_rounds),
                           "pipeline": max([cold["peak_memory_mb"]] + [r["peak_memory_mb"] for r in warm_rounds]),
                           "kind": cold_result["memory_kind"]},
        "cache_dir": str(cache_dir),
        "crop_cache_key": cold_result["crop_cache"]["key"],
        "num_params": num_params,
        "gmacs": spec.gmacs,
        "gmacs_note": "multiply-accumulates per image at the input size, from the model spec (papers call them GFLOPs)",
    }


def run_benchmark(model_ids: Sequence[str] | str, *, device: str = "auto", batch_size: int = 16, iters: int = 5,
                  repeats: int = 3, precision: str = "fp32", data_dir: str | Path | None = None,
                  cache_dir: str | Path | None = None, num_workers: int = 2, channels_last: bool = True) -> dict:
    """Cold run, warm run and forward alone for each model (see the module docstring); the JSON-ready report:
    `models` (one dict per model, in order), `environment`, `settings`, `data`."""
    ids = parse_model_ids(model_ids)
    if batch_size < 1 or iters < 1 or repeats < 1:
        raise ValueError(f"batch_size, iters and repeats must be >= 1; got {batch_size}, {iters} and {repeats}")
    from .engine import PRECISIONS

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device_type = _resolve_device(device)
    if device_type == "cuda":
        check_cuda_devices(1)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="helpers_benchmark_") as tmp:
        work = Path(tmp)
        load, note = _data_source(work, data_dir)
        cache_root = Path(cache_dir) / "benchmark" if cache_dir is not None else work / "cache"
        models = []
        for model_id in ids:
            from .models import get_spec

            test_set, paths = load(get_spec(model_id).aspect_ratio)
            models.append(benchmark_model(model_id, test_set, paths, device=device_type, batch_size=batch_size,
                                          iters=iters, repeats=repeats, precision=precision, cache_root=cache_root,
                                          out_root=work / "inference", num_workers=num_workers,
                                          channels_last=channels_last, cpu_threads=threads))
    return {
        "kind": "benchmark",
        "models": models,
        "environment": environment_info(device_type, threads),
        "settings": {"batch_size": batch_size, "iters": iters, "repeats": repeats, "precision": precision,
                     "num_workers": num_workers, "channels_last": channels_last,
                     "cache_dir": str(cache_root) if cache_dir is not None else "temporary (deleted afterwards)"},
        "data": note,
    }


def _f(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: dict) -> pd.DataFrame:
    """Table of a benchmark report: one row per quantity, one column per model."""
    env = report["environment"]
    columns = {}
    for m in report["models"]:
        cold, warm = m["cold"], m["warm"]
        mem = m["peak_memory_mb"]
        columns[m["model_id"]] = {
            "cold cache: wall time (s)": _f(cold["wall_s"], ".2f"),
            "cold cache: end-to-end images/s": _f(cold["end_to_end_images_per_s"]),
            "cold cache: images decoded": str(cold["images_decoded"]),
            "cold cache: crop hits / misses": f"{cold['crop_cache_hits']} / {cold['crop_cache_misses']}",
            "warm cache: wall time (s)": _f(warm["wall_s"], ".2f"),
            "warm cache: end-to-end images/s": _f(warm["end_to_end_images_per_s"]),
            "warm cache: images decoded": str(warm["images_decoded"]),
            "warm cache: crop hits / misses": f"{warm['crop_cache_hits']} / {warm['crop_cache_misses']}",
            "warm pipeline (images/s)": _f(m["pipeline_images_per_s"]),
            "forward alone (images/s)": _f(m["forward_images_per_s"]),
            "pipeline / forward": _f(m["pipeline_over_forward"], ".3f"),
            f"peak memory, forward (MB, {mem['kind']})": _f(mem["forward"], ".0f"),
            f"peak memory, pipeline (MB, {mem['kind']})": _f(mem["pipeline"], ".0f"),
            "precision (requested / used)": f"{m['precision']['requested']} / {m['precision']['used']}",
            "parameters": f"{m['num_params']:,}",
            "GMACs per image (spec)": _f(m["gmacs"], ".2f"),
            "batch size / timed batches / rounds": f"{m['batch_size']} / {m['timed_batches']} / {m['repeats']} (best)",
            "flip test": m["flip_test_mode"],
            "device": f"{env['device']} ({env['device_name']}, {m['cpu_threads']} CPU threads)",
        }
    frame = pd.DataFrame(columns)
    frame.index.name = "quantity"
    return frame


# ---------------------------------------------------------------- --gpu-check measurements

def crop_identity_check(paths: Sequence, bbox, input_shape, device, count: int = 16) -> dict:
    """Decode `count` images (spread evenly) on the CPU, crop them on the CPU and, the same decoded images, on
    `device`; the crops must be identical (integer arithmetic)."""
    device = _torch_device(device)
    bbox = np.asarray(bbox, dtype=np.float64)
    picks = np.unique(np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(np.int64))
    images = [read_image(paths[p]) for p in picks]
    reference = crop_images(images, bbox[picks], input_shape)
    other = crop_images([im.to(device) for im in images], bbox[picks], input_shape).cpu()
    diff = int((other.int() - reference.int()).abs().max())
    return {"device": str(device), "images_compared": int(len(picks)), "input_shape": [int(v) for v in input_shape],
            "max_abs_diff": diff, "identical": bool(torch.equal(other, reference))}


def decode_check(paths: Sequence, bbox, input_shape, device, count: int = 8, timed_images: int = 32) -> dict:
    """`crop_cache.check_gpu_decoder` (pixels and crops of `count` images, `device`'s decoder vs the CPU's) and
    the decode throughput of both decoders on `timed_images` JPEGs (bytes read beforehand; CPU: one thread, one
    image at a time, as one loader process decodes; device: one batched call). On "cpu" both sides are the
    CPU decoder, which tests the code path."""
    device = _torch_device(device)
    record = check_gpu_decoder([str(p) for p in paths], np.asarray(bbox, dtype=np.float64), input_shape, device,
                               count=count)
    if device.type != "cuda":
        record["decoder"] = "cpu (the CPU decoder stands in for nvjpeg)"
    picks = np.unique(np.linspace(0, len(paths) - 1, min(timed_images, len(paths))).round().astype(np.int64))
    data = [read_image(paths[p], decode=False) for p in picks]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decode_rgb(data[0])  # warm-up
        start = time.perf_counter()
        for d in data:
            decode_rgb(d)
        cpu_s = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    decode_rgb(data[:2], device=device)  # warm-up (nvjpeg handles, buffers)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    decode_rgb(data, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    device_s = time.perf_counter() - start
    record.update(device=str(device), images_timed=int(len(data)), cpu_images_per_s=len(data) / cpu_s,
                  device_images_per_s=len(data) / device_s,
                  cpu_note="one thread, one image at a time (one loader process); the engine runs num_workers of them")
    return record


def _forward_with_halving(model, spec, store, test_set, *, batch: int, iters: int, precision: str,
                          device: torch.device, channels_last: bool, cudnn_benchmark: bool = False
                          ) -> tuple[dict, int, int]:
    """`time_forward` at `batch`, halving the batch on out-of-memory. Returns (record, batch used, halvings)."""
    halvings = 0
    while True:
        try:
            inputs, k = forward_inputs(spec, store.read(0, batch), test_set, np.arange(batch), device=device,
                                       channels_last=channels_last)
            record = time_forward(model, spec, inputs, k, iters=iters, precision=precision, device=device,
                                  cudnn_benchmark=cudnn_benchmark)
            return record | {"batch_size": batch}, batch, halvings
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            if not _is_oom(exc) or batch == 1:
                raise
        inputs = k = None  # outside the except block, so the failed batch's memory can go back
        batch, halvings = batch // 2, halvings + 1
        release_cached_memory(device)


def gpu_check_model(model_id: str, test_set, paths: Sequence, *, device, cache_dir: str | Path,
                    out_dir: str | Path, images: int = GPU_CHECK_IMAGES, batch_size: int | None = None,
                    iters: int = GPU_CHECK_ITERS, precisions: Sequence[str] = GPU_CHECK_PRECISIONS,
                    num_workers: int = 4, channels_last: bool = True) -> dict:
    """One model's `--gpu-check` figures on `device` (any device; the check itself runs it on CUDA).

    Keys: model_id, kind, batch_size (requested: `spec.default_batch_size` unless given), batch_size_used,
    oom_halvings, images (pipeline samples), crop_cache_build {images, seconds, images_per_s, hits, misses,
    images_decoded}, forward {precision: {images_per_s, peak_memory_mb, batch_size, seconds, images}},
    pipeline {precision: {images_per_s, peak_memory_mb, batch_size_used, precision_used, wall_s, inference_s,
    images_decoded, crop_cache_hits, crop_cache_misses, ...}}, pipeline_over_forward {precision: ratio},
    precision_check {reduced precision: run_inference's precision_check (max_abs_diff_mm, mean_abs_diff_mm,
    fell_back, ...)}, cudnn_benchmark {off_images_per_s, on_images_per_s, on_over_off} (the fp32 forward alone),
    device_vs_cpu {fp32, tf32: engine.check_device records (max_abs_diff_mm, tolerance_mm, passed, ...),
    tf32_supported}, protocol2_projection_s (8695 / fp32 pipeline images/s), peak_memory_mb (the largest),
    memory_kind, num_params, gmacs."""
    from .models import get_spec

    spec = get_spec(model_id)
    device = _torch_device(device)
    batch = int(batch_size or spec.default_batch_size)
    n = min(int(images), len(test_set))
    batch = min(batch, n)
    n = (n // batch) * batch
    path_list = [str(p) for p in paths[:n]]
    bbox = np.asarray(test_set.bbox[:n], dtype=np.float64)

    # The crops of this rule (decoded on the CPU, as the exact path does); a later model with the same rule
    # finds them cached.
    start = time.perf_counter()
    store = ensure_crops(path_list, bbox, spec.input_shape, cache_dir=cache_dir, num_workers=num_workers,
                         progress=False)
    build_s = time.perf_counter() - start
    build = {"images": n, "seconds": build_s, "images_per_s": store.misses / build_s if store.misses else None,
             "hits": store.hits, "misses": store.misses, "images_decoded": store.images_decoded,
             "num_workers": num_workers}

    model = _build_model(model_id, device, channels_last)
    num_params = sum(p.numel() for p in model.parameters())
    forward, halvings = {}, 0
    for precision in precisions:
        forward[precision], batch, more = _forward_with_halving(model, spec, store, test_set, batch=batch,
                                                                iters=iters, precision=precision, device=device,
                                                                channels_last=channels_last)
        halvings += more
    autotuned = None
    if "fp32" in forward:  # the official scripts' cudnn.benchmark = True, against the strict default
        autotuned, batch, more = _forward_with_halving(model, spec, store, test_set, batch=batch, iters=iters,
                                                       precision="fp32", device=device, channels_last=channels_last,
                                                       cudnn_benchmark=True)
        halvings += more
    n = (n // batch) * batch
    # The device against the CPU, both in strict fp32, and the device with TF32 against the same CPU reference.
    deviation = check_device(spec, model, store, test_set, bbox, n, device=device, flip_test=spec.kind == "pose",
                             channels_last=channels_last, samples=DEVICE_CHECK_SAMPLES, batch_size=batch,
                             precisions=("fp32", "tf32"))
    deviation["tf32_supported"] = tf32_available(device.type, (device.index or 0,))

    pipeline, checks = {}, {}
    for precision in precisions:
        config = InferenceConfig(batch_size=batch, device=device.type, world_size=1, max_samples=n, shard_size=n,
                                 out_dir=Path(out_dir) / f"{model_id}_{precision}", cache_dir=cache_dir,
                                 resume=False, num_workers=num_workers, channels_last=channels_last,
                                 precision=precision, precision_fallback=True, progress=False, device_check=False)
        result = run_inference(spec, model, test_set, paths, config)
        pipeline[precision] = _run_record(result)
        if precision != "fp32":
            checks[precision] = result["precision_check"]
        memory_kind = result["memory_kind"]
    ratios = {p: (pipeline[p]["inference_images_per_s"] / forward[p]["images_per_s"]
                  if pipeline[p]["inference_images_per_s"] else None) for p in precisions}
    fp32_ips = pipeline.get("fp32", {}).get("inference_images_per_s")
    for record in pipeline.values():
        record["images_per_s"] = record["inference_images_per_s"]
    del model
    release_cached_memory(device)
    return {
        "model_id": model_id,
        "kind": spec.kind,
        "batch_size": int(batch_size or spec.default_batch_size),
        "batch_size_used": min([batch] + [r["batch_size_used"] for r in pipeline.values()]),
        "oom_halvings": halvings,
        "images": n,
        "flip_test": spec.kind == "pose",
        "crop_cache_build": build,
        "forward": forward,
        "pipeline": pipeline,
        "pipeline_over_forward": ratios,
        "cudnn_benchmark": {"off_images_per_s": forward["fp32"]["images_per_s"] if autotuned else None,
                            "on_images_per_s": autotuned["images_per_s"] if autotuned else None,
                            "on_over_off": (autotuned["images_per_s"] / forward["fp32"]["images_per_s"]
                                            if autotuned else None)},
        "device_vs_cpu": deviation,
        "precision_check": checks,
        "protocol2_projection_s": PROTOCOL2_IMAGES / fp32_ips if fp32_ips else None,
        "peak_memory_mb": max([r["peak_memory_mb"] for r in forward.values()]
                              + [r["peak_memory_mb"] for r in pipeline.values() if r["peak_memory_mb"] is not None]),
        "memory_kind": memory_kind,
        "num_params": num_params,
        "gmacs": spec.gmacs,
    }


def multi_process_check(model_id: str, test_set, paths: Sequence, *, device_type: str, cache_dir: str | Path,
                        out_dir: str | Path, images: int = GPU_CHECK_IMAGES, batch_size: int | None = None,
                        num_workers: int = 4) -> dict:
    """`run_inference` with 2 processes (one per device) and with 1, strict fp32, shards of one batch so the two
    ranks alternate: the predictions must be identical, value for value (every sample is computed in the same
    batch whatever the number of processes). The 2-process run goes first, while the model is still on the CPU."""
    from .models import get_spec

    spec = get_spec(model_id)
    batch = int(batch_size or spec.default_batch_size)
    n = min(int(images), len(test_set))
    batch = min(batch, max(1, n // 2))
    n = (n // batch) * batch
    model = _build_model(model_id, torch.device("cpu"), channels_last=True)
    runs = {}
    for world_size in (2, 1):
        config = InferenceConfig(batch_size=batch, device=device_type, world_size=world_size, max_samples=n,
                                 shard_size=batch, out_dir=Path(out_dir) / f"{model_id}_{world_size}_processes",
                                 cache_dir=cache_dir, resume=False, num_workers=num_workers, progress=False,
                                 device_check=False)
        runs[world_size] = run_inference(spec, model, test_set, paths, config)
    key = "coords" if spec.kind == "pose" else "root_output"
    one, two = runs[1]["predictions"][key], runs[2]["predictions"][key]
    del model
    return {"model_id": model_id, "images": n, "batch_size": batch, "shards": n // batch, "world_sizes": [1, 2],
            "identical": bool(one.shape == two.shape and np.array_equal(one, two)),
            "max_abs_diff": float(np.abs(one - two).max()) if one.shape == two.shape else None,
            "images_per_s": {str(w): r["timing"]["images_per_s"] for w, r in sorted(runs.items())}}


def protocol2_projection(models: Sequence[dict]) -> dict:
    """Projected full Protocol-2 time per model (8695 / fp32 pipeline images/s) and the four ConvNeXtPose
    variants on two GPUs (sum of their four projections / 2, under `TWO_GPU_ASSUMPTION`)."""
    per_model = {m["model_id"]: m["protocol2_projection_s"] for m in models}
    convnext = [per_model.get(i) for i in CONVNEXTPOSE_IDS]
    two_gpus = sum(convnext) / 2 if all(v is not None for v in convnext) else None
    return {"images": PROTOCOL2_IMAGES, "flip_test": True, "per_model_s": per_model,
            "convnextpose_models": list(CONVNEXTPOSE_IDS), "convnextpose_one_gpu_s": sum(convnext) if two_gpus else None,
            "convnextpose_two_gpus_s": two_gpus, "assumption": TWO_GPU_ASSUMPTION,
            "note": "the fp32 pipeline on a warm crop cache; building the cache once for all models "
                    "(decode + crop) comes on top: see crop_cache_build_projection_s"}


def gpu_check_models() -> list[str]:
    """Every pose model and RootNet, the four ConvNeXtPose variants first (the two-GPU projection needs them)."""
    from .models import get_spec, list_models

    ids = [i for i in list_models() if get_spec(i).kind in ("pose", "root")]
    return [i for i in CONVNEXTPOSE_IDS if i in ids] + [i for i in ids if i not in CONVNEXTPOSE_IDS]


def run_gpu_check(model_ids: Sequence[str] | None = None, *, device: str = "cuda", data_dir: str | Path | None = None,
                  cache_dir: str | Path | None = None, images: int = GPU_CHECK_IMAGES, iters: int = GPU_CHECK_ITERS,
                  precisions: Sequence[str] = GPU_CHECK_PRECISIONS, budget_s: float = GPU_CHECK_BUDGET_S,
                  num_workers: int = 4, batch_size: int | None = None) -> dict:
    """The `--gpu-check` report (see the module docstring). `device` "cpu" runs the same code on the CPU."""
    from .models import get_spec

    started = time.perf_counter()
    device_t = _torch_device(device)
    if device_t.type == "cuda":
        check_cuda_devices(1)
    ids = parse_model_ids(model_ids) if model_ids else gpu_check_models()
    with tempfile.TemporaryDirectory(prefix="helpers_gpu_check_") as tmp:
        work = Path(tmp)
        load, note = _data_source(work, data_dir)
        cache = Path(cache_dir) if cache_dir is not None else work / "cache"
        test_set, paths = load(1.0)
        first_spec = get_spec(ids[0])
        crop = crop_identity_check(paths, test_set.bbox, first_spec.input_shape, device_t)
        decoding = decode_check(paths, test_set.bbox, first_spec.input_shape, device_t)
        gpus = torch.cuda.device_count() if device_t.type == "cuda" else 1
        if gpus >= 2:
            multi_set, multi_paths = load(get_spec(ids[0]).aspect_ratio)
            multi = multi_process_check(ids[0], multi_set, multi_paths, device_type=device_t.type, cache_dir=cache,
                                        out_dir=work / "processes", images=images, batch_size=batch_size,
                                        num_workers=num_workers)
        else:
            multi = {"skipped": f"needs two or more GPUs; this machine has {gpus} {device_t.type} device"}
        models, skipped = [], []
        for model_id in ids:
            elapsed = time.perf_counter() - started
            if models and elapsed > budget_s:
                skipped.append({"model_id": model_id, "reason": f"time budget of {budget_s:.0f} s used "
                                f"({elapsed:.0f} s elapsed)"})
                continue
            spec = get_spec(model_id)
            model_set, model_paths = load(spec.aspect_ratio)
            models.append(gpu_check_model(model_id, model_set, model_paths, device=device_t, cache_dir=cache,
                                          out_dir=work / "inference", images=images, batch_size=batch_size,
                                          iters=iters, precisions=precisions, num_workers=num_workers))
    projection = protocol2_projection(models)
    builds = [m["crop_cache_build"]["images_per_s"] for m in models if m["crop_cache_build"]["images_per_s"]]
    projection["crop_cache_build_projection_s"] = PROTOCOL2_IMAGES / builds[0] if builds else None
    return {
        "kind": "gpu_check",
        "environment": environment_info(device_t.type) | {"gpu_index": device_t.index},
        "settings": {"images": images, "iters": iters, "precisions": list(precisions), "num_workers": num_workers,
                     "warmup_forwards": WARMUP_FORWARDS, "budget_s": budget_s,
                     "batch_size": batch_size or "spec.default_batch_size"},
        "data": note,
        "crop_identity": crop,
        "jpeg_decoding": decoding,
        "one_vs_two_processes": multi,
        "models": models,
        "skipped": skipped,
        "projection": projection,
        "elapsed_s": time.perf_counter() - started,
    }


def format_gpu_check(report: dict) -> pd.DataFrame:
    """Table of a `--gpu-check` report: one column per model."""
    columns = {}
    for m in report["models"]:
        col = {"batch size (default / used)": f"{m['batch_size']} / {m['batch_size_used']}"}
        for p, r in m["forward"].items():
            col[f"forward {p} (images/s)"] = _f(r["images_per_s"])
        for p, r in m["pipeline"].items():
            col[f"pipeline {p} (images/s)"] = _f(r["images_per_s"]) + (
                "" if r["precision_used"] == p else f" (ran {r['precision_used']})")
        autotune = m.get("cudnn_benchmark") or {}
        col["forward fp32, cudnn.benchmark on (images/s)"] = (
            f"{_f(autotune.get('on_images_per_s'))} (x{_f(autotune.get('on_over_off'), '.2f')})")
        for p, r in m["pipeline_over_forward"].items():
            col[f"pipeline / forward {p}"] = _f(r, ".3f")
        col["peak memory (MB)"] = _f(m["peak_memory_mb"], ".0f")
        for p, c in m["precision_check"].items():
            col[f"{p} vs fp32: max / mean mm"] = f"{_f(c['max_abs_diff_mm'], '.3f')} / {_f(c['mean_abs_diff_mm'], '.3f')}"
        deviation = m.get("device_vs_cpu") or {}
        for p in ("fp32", "tf32"):
            if p in deviation:
                d = deviation[p]
                col[f"device vs CPU, {p}: max mm (tolerance)"] = (
                    f"{_f(d['max_abs_diff_mm'], '.4f')} ({_f(d['tolerance_mm'], '.4f')}) "
                    + ("passed" if d["passed"] else "FAILED"))
        if "tf32_supported" in deviation:
            col["TF32 on this GPU"] = "yes" if deviation["tf32_supported"] else "no (tf32 runs strict fp32)"
        col["Protocol 2 projection (s, fp32)"] = _f(m["protocol2_projection_s"], ".0f")
        columns[m["model_id"]] = col
    frame = pd.DataFrame(columns)
    frame.index.name = "quantity"
    return frame


def _gpu_check_summary(report: dict) -> str:
    crop, dec, proj = report["crop_identity"], report["jpeg_decoding"], report["projection"]
    lines = [f"CUDA crop vs CPU crop: {crop['images_compared']} images, max abs diff {crop['max_abs_diff']}, "
             f"identical {crop['identical']}",
             f"JPEG decoding: {dec['decoder']} vs CPU, max abs diff pixels {dec['max_abs_diff_pixels']}, crops "
             f"{dec['max_abs_diff_crop']}, identical {dec['identical']}; {dec['device_images_per_s']:.0f} images/s "
             f"on the device vs {dec['cpu_images_per_s']:.0f} on one CPU thread"]
    multi = report.get("one_vs_two_processes") or {}
    if multi.get("skipped"):
        lines.append(f"1 vs 2 processes: skipped ({multi['skipped']})")
    elif multi:
        lines.append(f"1 vs 2 processes ({multi['model_id']}, {multi['images']} images): identical "
                     f"{multi['identical']}, max abs diff {multi['max_abs_diff']}")
    if proj["convnextpose_two_gpus_s"] is not None:
        lines.append(f"four ConvNeXtPose variants on two GPUs: {proj['convnextpose_two_gpus_s']:.0f} s "
                     f"(assuming {proj['assumption']})")
    for s in report["skipped"]:
        lines.append(f"skipped {s['model_id']}: {s['reason']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- statistics
def run_bootstrap_benchmark(models: int = 10, samples: int = 8695, resamples: int = 10_000, seed: int = 0) -> dict:
    """Time the report's statistics on a Protocol-2-sized synthetic set (60 recordings of 2 subjects x 15 actions x
    2 subactions): the headline interval of every model and the paired comparison of every pair."""
    from itertools import combinations

    from . import stats

    rng = np.random.default_rng(seed)
    recording = np.sort(rng.integers(0, 60, samples))
    subject, action, subaction = 9 + 2 * (recording // 30), (recording % 30) // 2, recording % 2
    errors = rng.normal(50.0, 15.0, (samples, models)) + rng.normal(0.0, 5.0, 60)[recording][:, None]
    codes, groups = stats.recording_codes(subject, action, subaction)
    start = time.perf_counter()
    intervals = stats.mean_interval(errors, codes, groups, resamples=resamples)
    intervals_s = time.perf_counter() - start
    pairs = list(combinations(range(models), 2))
    start = time.perf_counter()
    comparisons = [stats.paired_comparison(errors[:, i], errors[:, j], subject, action, subaction, resamples=resamples)
                  for i, j in pairs]
    pairs_s = time.perf_counter() - start
    return {"models": models, "samples": samples, "recordings": groups, "resamples": resamples, "pairs": len(pairs),
            "significant_pairs": sum(c.significant for c in comparisons),
            "intervals_s": round(intervals_s, 4), "pairwise_s": round(pairs_s, 4),
            "total_s": round(intervals_s + pairs_s, 4),
            "headline_interval_width_mm": float(np.mean(intervals[1] - intervals[0]))}


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", help="model ids, space- or comma-separated, e.g. convnextpose_XS "
                        "posenet (see helpers.models.list_models); --gpu-check: default every pose model and RootNet")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default 16; --gpu-check: default each model's spec.default_batch_size")
    parser.add_argument("--iters", type=int, default=None,
                        help=f"timed batches (default 5; --gpu-check: forwards per measurement, default {GPU_CHECK_ITERS})")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds of forward and warm pipeline; "
                        "the best of each counts")
    parser.add_argument("--precision", choices=("fp32", "tf32", "fp16", "bf16"), default="fp32",
                        help="passed to the forward alone and to run_inference (default fp32, the official setting)")
    parser.add_argument("--json", type=Path, help="write the report here (atomically)")
    parser.add_argument("--data", type=Path, help="a Human3.6M folder (annotations + images); default: generated demo data")
    parser.add_argument("--cache-dir", type=Path, help="crop cache root (default: a temporary folder)")
    parser.add_argument("--workers", type=int, default=2, help="loader processes that decode and crop the JPEGs")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--gpu-check", action="store_true", help="the CUDA check described in the module docstring")
    parser.add_argument("--budget-s", type=float, default=GPU_CHECK_BUDGET_S,
                        help="--gpu-check: start no further model after this many seconds")
    parser.add_argument("--bootstrap", action="store_true",
                        help="time the report's statistics instead: intervals and paired comparisons of 10 models on "
                             "8,695 samples with 10,000 resamples")
    args = parser.parse_args(argv)
    if args.bootstrap:
        report = run_bootstrap_benchmark()
        for key, value in report.items():
            print(f"{key:<28} {value}")
        if args.json:
            write_json(args.json, report)
        return 0
    from .h36m import DataError

    if args.gpu_check and not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        return 2
    if not args.gpu_check and not args.model:
        parser.error("--model is required (except with --gpu-check)")
    try:
        if args.gpu_check:
            report = run_gpu_check(args.model, device="cuda", data_dir=args.data, cache_dir=args.cache_dir,
                                   iters=args.iters or GPU_CHECK_ITERS, budget_s=args.budget_s,
                                   num_workers=max(args.workers, 4), batch_size=args.batch_size)
        else:
            report = run_benchmark(args.model, device=args.device, batch_size=args.batch_size or 16,
                                   iters=args.iters or 5, repeats=args.repeats, precision=args.precision,
                                   data_dir=args.data, cache_dir=args.cache_dir, num_workers=args.workers,
                                   channels_last=not args.no_channels_last)
    except (KeyError, ValueError, RuntimeError, DataError) as exc:
        print(f"benchmark failed: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    with pd.option_context("display.max_colwidth", 80, "display.width", 250):
        if args.gpu_check:
            print(format_gpu_check(report).to_string())
            print(_gpu_check_summary(report))
        else:
            print(format_report(report).to_string())
            env = report["environment"]
            print(f"torch {env['torch']}, {env['cpu_threads']} CPU threads of {env['cpu_count']} cores, {report['data']}")
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
