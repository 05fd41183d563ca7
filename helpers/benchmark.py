"""Throughput: the model's forward pass alone vs the full inference pipeline, in one run on the same data.

`python -m helpers.benchmark --model MODEL_ID [--device cpu|cuda] [--batch-size N] [--iters N]
[--json FILE] [--data DIR]`

(a) forward: `engine.forward_batch` on pre-made network inputs (the crops of the first batch), with the
    flip test as the pipeline runs it: ONE forward of 2B images per batch (the batch and its mirror);
(b) pipeline: `engine.run_inference` on the first (iters + 1) batches of the data: read, decode, crop,
    normalise, flip, forward, un-flip and merge, gather.
(a) and (b) alternate for `--repeats` rounds and the fastest round of each is reported (like `timeit`'s
minimum): on a shared or throttled machine the fastest round is the least disturbed one. Every round's
figure is kept in the JSON.
Both report steady-state images/s, without their first (warm-up) batch. `pipeline_over_forward` = b / a:
1.0 means reading and decoding are fully hidden behind the model. Without `--data`, the generated demo
dataset (`helpers.demo_data`, synthetic images at the real 1000x1002 / 1000x1000 sizes) is used.
Random weights: throughput does not depend on the weight values.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from .atomic import write_json
from .engine import (InferenceConfig, _memory_now_mb, _resolve_device, check_cuda_devices, forward_batch,
                     prepare_inputs, read_image, run_inference, torch_settings)


# CPU kernels and the caching allocators need a few passes before a forward reaches its steady speed.
WARMUP_FORWARDS = 3


def _load_data(data_dir: Path, aspect_ratio: float = 1.0):
    from . import h36m

    annotation_dir = h36m.find_annotation_dir(data_dir)
    test_set = h36m.load_test_set(annotation_dir, protocol=2, aspect_ratio=aspect_ratio)
    return test_set, h36m.resolve_image_paths(test_set, data_dir)


def _time_forward(model, spec, inputs, k, *, iters: int, amp: bool, device: torch.device) -> tuple[float, float]:
    """Seconds for `iters` flip-tested forwards of `inputs` (after the warm-up forwards) and peak memory (MB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def once():
        return forward_batch(model, inputs, kind=spec.kind, flip_test=True, amp=amp,
                             output_width=spec.output_shape[1], flip_pairs=spec.flip_pairs, k=k)

    # The same threads and cuDNN autotuning as the pipeline's run, so that (a) and (b) compare like with like.
    with torch.inference_mode(), torch_settings(device.type, torch.get_num_threads()):
        for _ in range(WARMUP_FORWARDS):
            once()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            out = once()
        out.cpu()  # waits for the device, like the pipeline's copy of the coordinates
        elapsed = time.perf_counter() - start
    return elapsed, _memory_now_mb(device)


def run_benchmark(model_id: str, *, device: str = "auto", batch_size: int = 16, iters: int = 5, repeats: int = 3,
                  data_dir: str | Path | None = None, num_workers: int = 2, channels_last: bool = True) -> dict:
    """Measure (a) forward alone and (b) the full pipeline; return the JSON-ready report."""
    from .models import build_model, get_spec

    spec = get_spec(model_id)
    if batch_size < 1 or iters < 1 or repeats < 1:
        raise ValueError(f"batch_size, iters and repeats must be >= 1; got {batch_size}, {iters} and {repeats}")
    device_type = _resolve_device(device)
    if device_type == "cuda":
        check_cuda_devices(1)
    amp = device_type == "cuda"
    with tempfile.TemporaryDirectory(prefix="helpers_benchmark_") as tmp:
        if data_dir is None:
            from .demo_data import generate

            generate(Path(tmp) / "demo", seed=0, show_progress=False)
            data_dir, data_note = Path(tmp) / "demo", "generated demo data (helpers.demo_data, seed 0)"
        else:
            data_dir, data_note = Path(data_dir), str(data_dir)
        test_set, paths = _load_data(data_dir, spec.aspect_ratio)
        batches = min(iters + 1, len(test_set) // batch_size)
        if batches < 2:
            raise ValueError(f"the data has {len(test_set)} test samples: too few for two batches of {batch_size}; "
                             "lower --batch-size or pass a larger --data folder")
        iters = batches - 1
        images = batches * batch_size

        torch.manual_seed(0)
        model = build_model(model_id).eval()
        num_params = sum(p.numel() for p in model.parameters())
        torch_device = torch.device("cuda", 0) if device_type == "cuda" else torch.device("cpu")
        model = model.to(torch_device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)

        # (a) forward alone, on the network inputs of the first batch (made once, outside the timing).
        first = [read_image(p).to(torch_device) for p in paths[:batch_size]]
        inputs = prepare_inputs(first, test_set.bbox[:batch_size], input_shape=spec.input_shape,
                                normalization=spec.normalization, channels_last=channels_last)
        k = None
        if spec.kind == "root":
            from .geometry import rootnet_k_value

            k = torch.from_numpy(rootnet_k_value(test_set.bbox[:batch_size], test_set.f[:batch_size])).to(torch_device)
        timed = dict(iters=iters, amp=amp, device=torch_device)
        # One process on one device: (a) is measured on GPU 0 alone, so (b) must not spread over every GPU.
        config = InferenceConfig(batch_size=batch_size, device=device_type, world_size=1, image_limit=images,
                                 shard_size=images, out_dir=Path(tmp) / "inference", resume=False,
                                 num_workers=num_workers, channels_last=channels_last, progress=False)
        forward_rounds, pipeline_rounds, forward_mem, pipeline_mem = [], [], 0.0, 0.0
        for _ in range(repeats):
            forward_s, mem = _time_forward(model, spec, inputs, k, **timed)  # (a)
            forward_rounds.append(iters * batch_size / forward_s)
            forward_mem = max(forward_mem, mem)
            result = run_inference(spec, model, test_set, paths, config)  # (b)
            pipeline_rounds.append(result["timing"]["steady_images_per_s"])
            pipeline_mem = max(pipeline_mem, result["peak_memory_mb"])

    forward_ips, pipeline_ips = max(forward_rounds), max(pipeline_rounds)
    report = {
        "model_id": model_id,
        "device": device_type,
        "device_name": torch.cuda.get_device_name(0) if device_type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": result["settings"]["cpu_threads"],
        "batch_size": batch_size,
        "amp": amp,
        "channels_last": channels_last,
        "num_workers": num_workers,
        "flip_test": result["settings"]["flip_test"],
        "flip_test_mode": "one forward of 2B images per batch (batch + mirror)" if spec.kind == "pose"
                          else "none (RootNet's official test has no flip test)",
        "timed_batches": iters,
        "repeats": repeats,
        "forward_images_per_s": forward_ips,
        "pipeline_images_per_s": pipeline_ips,
        "pipeline_over_forward": pipeline_ips / forward_ips,
        "rounds": {"forward_images_per_s": forward_rounds, "pipeline_images_per_s": pipeline_rounds},
        "peak_memory_mb": {"forward": forward_mem, "pipeline": pipeline_mem, "kind": result["memory_kind"]},
        "num_params": num_params,
        "gmacs": spec.gmacs,
        "gmacs_note": "multiply-accumulates per image at the input size, from the model spec (papers call them GFLOPs)",
        "data": data_note,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    return report


def format_report(report: dict) -> pd.DataFrame:
    """Short table of a benchmark report."""
    rows = [
        ("forward alone (images/s)", f"{report['forward_images_per_s']:.1f}"),
        ("full pipeline (images/s)", f"{report['pipeline_images_per_s']:.1f}"),
        ("pipeline / forward", f"{report['pipeline_over_forward']:.3f}"),
        (f"peak memory, forward (MB, {report['peak_memory_mb']['kind']})", f"{report['peak_memory_mb']['forward']:.0f}"),
        (f"peak memory, pipeline (MB, {report['peak_memory_mb']['kind']})", f"{report['peak_memory_mb']['pipeline']:.0f}"),
        ("parameters", f"{report['num_params']:,}"),
        ("GMACs per image (spec)", "-" if report["gmacs"] is None else f"{report['gmacs']:.2f}"),
        ("device", f"{report['device']} ({report['device_name']}, {report['cpu_threads']} CPU threads)"),
        ("batch size / timed batches / rounds",
         f"{report['batch_size']} / {report['timed_batches']} / {report['repeats']} (best round reported)"),
        ("AMP fp16", str(report["amp"])),
        ("flip test", report["flip_test_mode"]),
    ]
    return pd.DataFrame(rows, columns=["quantity", report["model_id"]]).set_index("quantity")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model id, e.g. convnextpose_XS (see helpers.models.list_models)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=5, help="timed batches (one more is run as warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds of (a) and (b); the best counts")
    parser.add_argument("--json", type=Path, help="write the report here (atomically)")
    parser.add_argument("--data", type=Path, help="a Human3.6M folder (annotations + images); default: generated demo data")
    parser.add_argument("--workers", type=int, default=2, help="background JPEG reader/decoder processes")
    parser.add_argument("--no-channels-last", action="store_true")
    args = parser.parse_args(argv)
    from .h36m import DataError

    try:
        report = run_benchmark(args.model, device=args.device, batch_size=args.batch_size, iters=args.iters,
                               repeats=args.repeats,
                               data_dir=args.data, num_workers=args.workers,
                               channels_last=not args.no_channels_last)
    except (KeyError, ValueError, RuntimeError, DataError) as exc:
        print(f"benchmark failed: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    with pd.option_context("display.max_colwidth", 80):
        print(format_report(report).to_string())
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
