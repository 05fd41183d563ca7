"""Batched, flip-tested, multi-process, resumable inference over a Human3.6M test set, fp32 by default.

`run_inference(model_spec, checkpoint_or_model, test_set, image_paths, config)` works in two steps:

1. **Crops.** `crop_cache.ensure_crops` decodes each JPEG (on the CPU, in `num_workers` loader processes) and
   makes the official uint8 crop once per crop rule; the crops are cached memory-mapped, so every later model
   and notebook run with the same rule reads them instead of decoding again.
2. **Forward.** Batches of cached crops are normalised and flipped on the device and run through the model
   (the flip test is one forward of 2B images). On CUDA out-of-memory the batch is halved for the rest of the
   run. The model's `ModelSpec` alone decides input size, normalisation and output decoding.

**Precision** is `"fp32"` (the official setting) unless `"fp16"` or `"bf16"` is asked for (autocast, on CUDA
or CPU). A reduced-precision run is first compared with fp32 on a calibration sample of its own crops; the
deviation is recorded in `precision_check`, and beyond `precision_tolerance_mm` the run falls back to fp32
(or stops, with `precision_fallback=False`). A batch with a non-finite output is recomputed in fp32.

Work is cut into shards of `shard_size` consecutive samples. Shard k goes to rank k % world_size; each
shard is split into batches from its own start, so every sample is computed in the same batch whatever
the number of processes (1-process and 2-process CPU runs give identical numbers). Each finished shard
is written atomically to `out_dir/shards/shard_#####.npz` with a fingerprint of (model weights, spec,
settings, crops); a rerun with `resume=True` reuses matching shards and never mixes in stale ones.
With world_size > 1 one spawned process per device works through its shards inside a `torch.distributed`
process group (NCCL on CUDA, gloo on CPU): after its shards, each rank gathers to rank 0 what it computed
(its shard list and statistics), and rank 0 checks that every shard was done exactly once. The parent then
writes `out_dir/predictions.npz` atomically from the shards, in sample order:

pose models (`spec.kind == "pose"`): `image_id` (N,) int64, `coords` (N,J,3) float32 heatmap units after
    the flip merge, `output_shape` (2,) (H, W), `depth_dim` (), `bbox` (N,4) the crop boxes, and the
    extras `model_id`, `kind`, `flip_test`, `precision`.
RootNet (`spec.kind == "root"`): `image_id`, `root_output` (N,3) float32 raw network output (x, y
    heatmap pixels, z mm), `root_cam` (N,3) float64 camera mm, `bbox`, `output_shape`, `depth_dim`,
    `model_id`, `kind`, `flip_test` (always false: the official RootNet test runs no flip test), `precision`.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import geometry
from .atomic import save_npz, write_json
from .crop_cache import DECODERS, CropStore, ensure_crops
from .h36m import DataError
from .images import ImageReadError, short_error  # noqa: F401  (ImageReadError is part of this API)
from .pipeline import flip_images, flip_test_merge, normalize
from .protocol import EVAL_JOINTS
from .results import PREDICTIONS_FILE

SHARD_DIR = "shards"
_FINGERPRINT_VERSION = 2

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# A reduced-precision run is kept only if no calibration joint moved by more than this (root-relative mm;
# RootNet: the root position). 1 mm is well below any difference between published models.
PRECISION_TOLERANCE_MM = 1.0
CALIBRATION_SAMPLES = 64


class PrecisionError(RuntimeError):
    """Reduced precision deviated from fp32 beyond the tolerance and the run was asked to stop."""


@dataclass
class InferenceConfig:
    """Settings of one inference run. Defaults suit a Kaggle T4; every field is recorded in the result."""

    batch_size: int = 64
    flip_test: bool = True
    precision: str = "fp32"  # "fp32" (official) | "fp16" | "bf16": reduced precision is checked against fp32
    precision_tolerance_mm: float = PRECISION_TOLERANCE_MM
    precision_fallback: bool = True  # beyond the tolerance: True runs fp32 instead, False stops (PrecisionError)
    calibration_samples: int = CALIBRATION_SAMPLES
    channels_last: bool = True
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    world_size: int | None = None  # processes, one per device; None: number of CUDA GPUs, 1 on CPU
    num_workers: int = 2  # loader processes that decode and crop the JPEGs (cache misses only)
    decode: str = "cpu"  # "cpu" (exact) | "gpu" (nvjpeg on CUDA, checked against the CPU decoder and recorded)
    max_samples: int | None = None  # run the first K samples only (benchmarks); RunParams.image_limit spreads them
    shard_size: int = 1024  # samples per shard file (a multiple of batch_size avoids short batches)
    out_dir: str | os.PathLike = "outputs/inference"
    cache_dir: str | os.PathLike | None = None  # crop cache; None: environment.default_cache_dir()
    crop_rule: dict | None = None  # descriptive fields of the crop rule (box source, box rule), part of the key
    resume: bool = True
    seed: int = 0
    cpu_threads: int | None = None  # torch threads per process on CPU; None: the cores split over the ranks
    progress: bool = True


@dataclass
class _Job:
    """Everything a rank needs; picklable so `torch.multiprocessing.spawn` can hand it over."""

    model: torch.nn.Module
    kind: str
    output_shape: tuple[int, int]
    normalization: tuple  # (mean, std) of the spec, 0-255 units
    flip_pairs: tuple[tuple[int, int], ...]
    crops: CropStore
    bbox: np.ndarray  # (N, 4) float64
    f: np.ndarray  # (N, 2) float64
    shards: list[tuple[int, int, int]]  # (shard index, first sample, end sample)
    shard_dir: str
    fingerprint: str
    batch_size: int
    flip_test: bool
    precision: str  # the precision used (after the calibration check)
    channels_last: bool
    device_type: str
    world_size: int
    cpu_threads: int
    seed: int
    progress: bool
    output_width: tuple[int, ...] = ()  # per-image output shape: (J, 3) pose, (3,) root
    reuse: frozenset = frozenset()  # shard indices already complete on disk
    dist_init_method: str = ""  # rendezvous of the process group (world_size > 1), on the loopback interface


# ---------------------------------------------------------------- forward pass

def _autocast(device_type: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=PRECISIONS[precision])


def forward_batch(model: torch.nn.Module, x: torch.Tensor, *, kind: str, flip_test: bool, precision: str = "fp32",
                  output_width: int, flip_pairs, k: torch.Tensor | None = None) -> torch.Tensor:
    """Run the model on a normalised batch `x` (B,3,H,W), with the flip test as ONE forward of 2B images.

    `precision` "fp16"/"bf16" runs the forward under autocast on `x`'s device; "fp32" runs it plainly.
    Pose: returns (B,J,3) float32 heatmap units (flip-merged when `flip_test`). Root: `k` (B,1) is
    required, no flip test, returns (B,3) float32 (x, y heatmap pixels, z mm).
    """
    batch = x.shape[0]
    if flip_test and kind == "pose":
        x = torch.cat([x, flip_images(x)])
    with _autocast(x.device.type, precision):
        out = model(x, k) if kind == "root" else model(x)
    out = out.float()  # the soft-argmax runs in float32 inside the models; keep the coordinates float32
    if flip_test and kind == "pose":
        out = flip_test_merge(out[:batch], out[batch:], output_width, flip_pairs)
    return out


def prepare_inputs(crops, *, normalization: tuple, channels_last: bool, device=None) -> torch.Tensor:
    """Normalise a batch of uint8 crops (B,3,H,W) (array or tensor) on `device`: the network input, float32."""
    crops = torch.as_tensor(crops)
    if device is not None:
        crops = crops.to(device, non_blocking=True)
    x = normalize(crops, normalization)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class _BatchRunner:
    """Forward passes over cached crops at a batch size that halves on out-of-memory (timm validate's policy),
    with reduced-precision batches that come out non-finite recomputed in fp32."""

    def __init__(self, model, job_like, device: torch.device, batch_size: int, precision: str):
        self.model, self.job, self.device = model, job_like, device
        self.batch_size, self.precision = int(batch_size), precision
        self.nonfinite_batches = 0
        self.oom_events = 0

    def _k(self, positions: np.ndarray):
        if self.job.kind != "root":
            return None
        return torch.from_numpy(geometry.rootnet_k_value(self.job.bbox[positions], self.job.f[positions])).to(self.device)

    def forward(self, positions: np.ndarray, crops: np.ndarray, precision: str) -> torch.Tensor:
        job = self.job
        x = prepare_inputs(crops, normalization=job.normalization, channels_last=job.channels_last, device=self.device)
        return forward_batch(self.model, x, kind=job.kind, flip_test=job.flip_test, precision=precision,
                             output_width=job.output_shape[1], flip_pairs=job.flip_pairs, k=self._k(positions))

    def run(self, positions: np.ndarray, read, precision: str | None = None, recompute_nonfinite: bool = True
            ) -> np.ndarray:
        """Outputs for `positions` (consecutive or not); `read(sub_positions)` returns their uint8 crops.
        `recompute_nonfinite=False` keeps non-finite reduced-precision outputs (the calibration needs to see them)."""
        precision = precision or self.precision
        outputs, start = [], 0
        while start < len(positions):
            chunk = positions[start:start + self.batch_size]
            try:
                out = self.forward(chunk, read(chunk), precision)
                if recompute_nonfinite and precision != "fp32" and not torch.isfinite(out).all():
                    self.nonfinite_batches += 1
                    out = self.forward(chunk, read(chunk), "fp32")
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not _is_oom(exc) or self.batch_size == 1:
                    raise
                self.oom_events += 1
                self.batch_size = max(1, self.batch_size // 2)
                _note(f"out of memory at batch size {self.batch_size * 2}; continuing at {self.batch_size}")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            expected = (len(chunk),) + self.job.output_width
            if tuple(out.shape) != expected:
                raise ValueError(f"the model returned shape {tuple(out.shape)} for {len(chunk)} images; its spec "
                                 f"expects {expected} (pose: joint_num x 3, root: 3)")
            outputs.append(out.cpu().numpy())
            start += len(chunk)
        return np.concatenate(outputs)


def _note(text: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"note: {text}")


# ---------------------------------------------------------------- precision check

def _outputs_to_mm(spec, out: np.ndarray, positions: np.ndarray, test_set, bbox: np.ndarray) -> np.ndarray:
    """Pose: root-relative camera mm of the evaluated joints (n, 17, 3). Root: camera mm (n, 1, 3)."""
    f = np.asarray(test_set.f, dtype=np.float64)[positions]
    c = np.asarray(test_set.c, dtype=np.float64)[positions]
    if spec.kind == "root":
        return root_output_to_camera(out, bbox[positions], f, c, spec.output_shape)[:, None]
    root_z = np.asarray(test_set.root_cam, dtype=np.float64)[positions, 2]
    cam = geometry.heatmap_to_camera(out.astype(np.float64), bbox[positions], root_z, f, c, spec.output_shape,
                                     spec.depth_dim, spec.depth_extent_mm)
    return (cam - cam[:, :1])[:, :EVAL_JOINTS]


def check_precision(spec, runner: _BatchRunner | None, crops: CropStore, test_set, bbox: np.ndarray, n: int,
                    config: InferenceConfig) -> dict:
    """Compare the requested reduced precision with fp32 on an even sample of the run's own crops."""
    requested = config.precision
    record = {"requested": requested, "used": requested, "samples": 0, "max_abs_diff_heatmap": None,
              "max_abs_diff_mm": None, "mean_abs_diff_mm": None, "nonfinite_batches": 0, "fell_back": False,
              "tolerance_mm": float(config.precision_tolerance_mm)}
    if requested == "fp32":
        return record
    count = max(1, min(int(config.calibration_samples), n))
    positions = np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))
    read = crops.take
    reference = runner.run(positions, read, "fp32")
    # The raw reduced-precision outputs: the per-batch fp32 recompute would hide what it does.
    reduced = runner.run(positions, read, requested, recompute_nonfinite=False)
    finite = np.isfinite(reduced).all(axis=tuple(range(1, reduced.ndim)))
    record["samples"] = int(len(positions))
    record["calibration_nonfinite_samples"] = int((~finite).sum())
    if finite.any():
        diff_mm = np.linalg.norm(_outputs_to_mm(spec, reduced[finite], positions[finite], test_set, bbox)
                                 - _outputs_to_mm(spec, reference[finite], positions[finite], test_set, bbox), axis=-1)
        record["max_abs_diff_heatmap"] = float(np.abs(reduced[finite] - reference[finite]).max())
        record["max_abs_diff_mm"] = float(diff_mm.max())
        record["mean_abs_diff_mm"] = float(diff_mm.mean())
    ok = finite.all() and record["max_abs_diff_mm"] <= config.precision_tolerance_mm
    if not ok:
        why = (f"{record['calibration_nonfinite_samples']} of {len(positions)} calibration samples gave NaN/inf"
               if not finite.all() else
               f"joints moved by up to {record['max_abs_diff_mm']:.3f} mm (tolerance {config.precision_tolerance_mm} mm)")
        if not config.precision_fallback:
            raise PrecisionError(f"{requested} deviates from fp32 on this run's own crops: {why}. Run with "
                                 "PRECISION = \"fp32\" (the official setting), or allow the fallback.")
        _note(f"{requested} deviates from fp32 on this run's own crops ({why}); running in fp32 instead")
        record.update(used="fp32", fell_back=True)
    return record


# ---------------------------------------------------------------- one rank

def _memory_now_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:  # current RSS from /proc (Linux, incl. Kaggle); ru_maxrss would include everything before the run
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _shard_path(shard_dir: str | Path, index: int) -> Path:
    return Path(shard_dir) / f"shard_{index:05d}.npz"


def _write_shard(path: Path, fingerprint: str, first: int, image_output: np.ndarray) -> None:
    save_npz(path, fingerprint=np.array(fingerprint), first=np.array(first, dtype=np.int64),
             output=image_output)


class _RankStartError(RuntimeError):
    """A process could not take its GPU (busy, exclusive-process mode, out of memory, broken driver)."""


def _rank_device(rank: int, job: _Job) -> torch.device:
    """This rank's device, made current; the GPU is rank's index among the visible ones."""
    if job.device_type != "cuda":
        return torch.device("cpu")
    device = torch.device("cuda", rank)
    try:
        torch.cuda.set_device(device)  # also the device of the DataLoader's pin-memory thread
        torch.cuda.reset_peak_memory_stats(device)
    except RuntimeError as exc:
        raise _RankStartError(f"process {rank} could not use GPU {device} ({short_error(exc)})") from exc
    return device


def _run_rank(rank: int, job: _Job) -> dict:
    """Process this rank's shards; return its statistics. Runs in the caller's process when world_size is 1."""
    return _process_shards(rank, job, _rank_device(rank, job))


def _process_shards(rank: int, job: _Job, device: torch.device) -> dict:
    torch.manual_seed(job.seed)
    try:
        model = job.model.to(device).eval()
    except RuntimeError as exc:  # the first real allocation on the GPU
        if device.type != "cuda":
            raise
        raise _RankStartError(f"process {rank} could not move the model to {device} ({short_error(exc)})") from exc
    if job.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mine = [s for s in job.shards if s[0] % job.world_size == rank]
    to_compute = [s for s in mine if s[0] not in job.reuse]
    runner = _BatchRunner(model, job, device, job.batch_size, job.precision)

    from tqdm.auto import tqdm

    done_before = sum(end - first for index, first, end in mine if index in job.reuse)
    bar = tqdm(total=sum(end - first for _, first, end in mine), initial=done_before, unit="img",
               desc=f"inference rank {rank}/{job.world_size}" if job.world_size > 1 else "inference",
               disable=not job.progress or rank != 0, dynamic_ncols=True)
    images_done, peak_mb = 0, _memory_now_mb(device)
    start_time = time.perf_counter()
    with torch.inference_mode():
        for index, first, end in to_compute:
            outputs = []
            # Batches start at the shard's own start, so the batching does not depend on the world size.
            for start in range(first, end, job.batch_size):
                positions = np.arange(start, min(start + job.batch_size, end))
                out = runner.run(positions, lambda p: job.crops.read(int(p[0]), int(p[-1]) + 1))
                outputs.append(out)
                images_done += len(positions)
                peak_mb = max(peak_mb, _memory_now_mb(device))
                bar.update(len(positions))
            _write_shard(_shard_path(job.shard_dir, index), job.fingerprint, first, np.concatenate(outputs))
    bar.close()
    elapsed = time.perf_counter() - start_time
    return {"rank": rank, "images": images_done, "inference_s": elapsed,
            "images_per_s": images_done / elapsed if elapsed > 0 and images_done else None,
            "peak_memory_mb": peak_mb, "shards_computed": len(to_compute), "shards_reused": len(mine) - len(to_compute),
            "shards_done": [s[0] for s in mine], "batch_size_used": runner.batch_size,
            "oom_events": runner.oom_events, "nonfinite_batches": runner.nonfinite_batches}


# ---------------------------------------------------------------- parent

def _resolve_device(name: str) -> str:
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda'; got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    return name


def check_cuda_devices(world_size: int) -> None:
    """Fail before any work when a GPU this run would use has no kernels in this torch build (e.g. a P100,
    sm_60, under a build for sm_70 and newer): otherwise the first CUDA call fails with a cryptic message.
    The capability test is `environment.environment_report`'s."""
    from .environment import RECOMMENDED_KAGGLE_ACCELERATOR, environment_report

    report = environment_report()
    unusable = [gpu for gpu in report["gpus"][:world_size] if not gpu["supported"]]
    if unusable:
        names = ", ".join(f"GPU {g['index']} ({g['name']}, {g['capability']})" for g in unusable)
        raise RuntimeError(
            f"{names} cannot run this torch {report['torch']} build, which has GPU kernels only for "
            f"{' '.join(report['torch_arch_list']) or 'no architecture'}. On Kaggle open Settings > Accelerator and "
            f"choose \"{RECOMMENDED_KAGGLE_ACCELERATOR}\"; elsewhere install a torch build for this GPU, or run with "
            "device='cpu'.")


def _resolve_model(spec, checkpoint_or_model) -> tuple[torch.nn.Module, dict]:
    if isinstance(checkpoint_or_model, torch.nn.Module):
        return checkpoint_or_model, {"source": "model object"}
    if checkpoint_or_model is None:
        from .models import build_model

        return build_model(spec.model_id), {"source": "random initialisation (no checkpoint)"}
    if isinstance(checkpoint_or_model, (str, os.PathLike, dict)):
        from .models import load_checkpoint

        model, info = load_checkpoint(checkpoint_or_model, spec.model_id)
        return model, info.to_dict()
    raise TypeError(f"checkpoint_or_model must be a checkpoint path, a state dict, an nn.Module or None; got "
                    f"{type(checkpoint_or_model).__name__}")


def model_sha256(model: torch.nn.Module) -> str:
    """Hash of every state-dict entry (name, dtype, shape, bytes): identifies the weights actually run."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _array_sha(*arrays) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _shard_ok(path: Path, fingerprint: str, first: int, rows: int, width: tuple[int, ...]) -> bool:
    """True when `path` is a complete shard of this very run (same fingerprint and sample range)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return (str(z["fingerprint"]) == fingerprint and int(z["first"]) == first
                    and z["output"].shape == (rows,) + width)
    except (OSError, KeyError, ValueError, EOFError):  # absent, or unreadable: recompute it
        return False


def _check_inputs(spec, test_set, image_paths, config: InferenceConfig) -> int:
    n = len(test_set.image_id)
    if len(image_paths) != n:
        raise ValueError(f"image_paths has {len(image_paths)} entries for {n} test samples; build it with "
                         "h36m.resolve_image_paths(test_set, image_root)")
    if n == 0:
        raise ValueError("the test set is empty; nothing to run")
    if config.batch_size < 1 or config.shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1; got {config.batch_size} and {config.shard_size}")
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {config.precision!r}")
    if config.decode not in DECODERS:
        raise ValueError(f"decode must be one of {', '.join(DECODERS)}; got {config.decode!r}")
    if config.num_workers < 0:
        raise ValueError(f"num_workers must be >= 0; got {config.num_workers}")
    if config.max_samples is not None:
        if int(config.max_samples) < 1:
            raise ValueError(f"max_samples must be None or a positive number of samples; got {config.max_samples}")
        n = min(n, int(config.max_samples))
    bbox = np.asarray(test_set.bbox[:n], dtype=np.float64)
    if bbox.shape != (n, 4) or not np.isfinite(bbox).all() or (bbox[:, 2:] <= 0).any():
        raise ValueError("test_set.bbox must be finite (N, 4) [x, y, w, h] boxes with positive width and height")
    if spec.kind not in ("pose", "root"):
        raise ValueError(f"model spec {spec.model_id} has kind {spec.kind!r}; the engine runs 'pose' and 'root'")
    return n


def run_inference(model_spec, checkpoint_or_model, test_set, image_paths: Sequence[str | os.PathLike],
                  config: InferenceConfig | None = None) -> dict:
    """Run a model over `test_set` and write `config.out_dir/predictions.npz` (see the module docstring).

    model_spec: a `ModelSpec` or a model id. checkpoint_or_model: a checkpoint path (or state dict) loaded
        strictly with `helpers.models.load_checkpoint`, an `nn.Module` (its class must be importable when
        world_size > 1), or None for random weights (demo runs only).
    test_set: an `h36m.TestSet` (uses image_id, bbox, f, c, and root_cam for the precision check).
    image_paths: one JPEG path per sample, e.g. `h36m.resolve_image_paths(test_set, root)`.
    A model run in this process (world_size 1) is moved to the device in place and put in eval mode.

    Returns a dict: `predictions_path`, `predictions` (the arrays written), `num_samples`, `timing`
    {inference_s, images, images_per_s, images_decoded, wall_s}, `peak_memory_mb` and `memory_kind` ("rss" on
    CPU, "cuda_max_allocated" on CUDA), `settings` (result.json block, incl. precision and batch_size_used),
    `precision_check`, `crop_cache` {key, hits, misses, decode}, `decode_check`, `shards` {total, computed,
    reused}, `fingerprint`, `model_sha256`, `checkpoint` (loader info), `rank_stats`.
    """
    from .models import get_spec

    config = config or InferenceConfig()
    spec = get_spec(model_spec) if isinstance(model_spec, str) else model_spec
    wall_start = time.perf_counter()
    n = _check_inputs(spec, test_set, image_paths, config)
    device_type = _resolve_device(config.device)
    world_size = int(config.world_size or (torch.cuda.device_count() if device_type == "cuda" else 1))
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1; got {world_size}")
    if device_type == "cuda":
        if world_size > torch.cuda.device_count():
            raise ValueError(f"world_size {world_size} exceeds the {torch.cuda.device_count()} visible CUDA GPUs; "
                             "set WORLD_SIZE to at most that number (or None for all of them)")
        check_cuda_devices(world_size)
    flip_test = bool(config.flip_test and spec.kind == "pose")  # RootNet's official test has no flip test
    cpu_threads = int(config.cpu_threads or max(1, torch.get_num_threads() // world_size))
    main_device = torch.device("cuda", 0) if device_type == "cuda" else torch.device("cpu")

    model, checkpoint_info = _resolve_model(spec, checkpoint_or_model)
    image_id = np.asarray(test_set.image_id[:n], dtype=np.int64)
    bbox = np.asarray(test_set.bbox[:n], dtype=np.float64)
    f = np.asarray(test_set.f[:n], dtype=np.float64) if spec.kind == "root" else np.zeros((n, 2))
    paths = [str(p) for p in image_paths[:n]]

    if config.cache_dir is None:
        from .environment import default_cache_dir

        cache_dir = default_cache_dir()
    else:
        cache_dir = Path(config.cache_dir)
    with torch_settings(device_type, cpu_threads):
        crops = ensure_crops(paths, bbox, spec.input_shape, cache_dir=cache_dir, rule=config.crop_rule,
                             decode=config.decode, device=main_device, num_workers=int(config.num_workers),
                             progress=bool(config.progress),
                             image_sizes=np.stack([test_set.height[:n], test_set.width[:n]], axis=1))

    weights_sha = model_sha256(model)
    width = (3,) if spec.kind == "root" else (spec.joint_num, 3)
    job = _Job(model=model, kind=spec.kind, output_shape=tuple(spec.output_shape), normalization=spec.normalization,
               flip_pairs=tuple(tuple(p) for p in spec.flip_pairs), crops=crops, bbox=bbox, f=f, shards=[],
               shard_dir="", fingerprint="", batch_size=int(config.batch_size), flip_test=flip_test,
               precision=config.precision, channels_last=bool(config.channels_last), device_type=device_type,
               world_size=world_size, cpu_threads=cpu_threads, seed=int(config.seed), progress=bool(config.progress),
               output_width=width)
    if config.precision == "fp32":
        precision_check = check_precision(spec, None, crops, test_set, bbox, n, config)
    else:  # compare with fp32 on this run's own crops, on the first device
        with torch_settings(device_type, cpu_threads), torch.inference_mode():
            calib_model = model.to(main_device).eval()
            if config.channels_last:
                calib_model = calib_model.to(memory_format=torch.channels_last)
            runner = _BatchRunner(calib_model, job, main_device, config.batch_size, config.precision)
            precision_check = check_precision(spec, runner, crops, test_set, bbox, n, config)
    precision = precision_check["used"]

    numerics = {  # everything that can change a predicted number; world_size and threads deliberately not
        "version": _FINGERPRINT_VERSION, "model_sha256": weights_sha, "model_id": spec.model_id, "kind": spec.kind,
        "input_shape": list(spec.input_shape), "output_shape": list(spec.output_shape),
        "depth_dim": spec.depth_dim, "normalization": spec.normalization,
        "flip_pairs": [list(p) for p in spec.flip_pairs], "flip_test": flip_test, "precision": precision,
        "channels_last": bool(config.channels_last), "device": device_type, "crops": crops.key,
        "batch_size": int(config.batch_size), "shard_size": int(config.shard_size),
        "samples_sha256": _array_sha(image_id, bbox, f),
    }
    fingerprint = hashlib.sha256(json.dumps(numerics, sort_keys=True).encode()).hexdigest()

    out_dir = Path(config.out_dir)
    shard_dir = out_dir / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards = [(i, first, min(first + config.shard_size, n)) for i, first in enumerate(range(0, n, config.shard_size))]
    reuse = frozenset(i for i, first, end in shards
                      if config.resume and _shard_ok(_shard_path(shard_dir, i), fingerprint, first, end - first, width))
    job = dataclasses.replace(job, shards=shards, shard_dir=str(shard_dir), fingerprint=fingerprint,
                              precision=precision, reuse=reuse)
    if len(reuse) == len(shards):
        stats = {"ranks": []}
    elif world_size == 1:
        stats = _run_in_this_process(job)
    else:
        stats = _run_spawned(job)

    outputs = []
    for i, first, end in shards:
        path = _shard_path(shard_dir, i)
        if not _shard_ok(path, fingerprint, first, end - first, width):
            raise RuntimeError(f"shard {path} is missing or belongs to another run after inference; "
                               "rerun with resume=True to compute it again")
        with np.load(path, allow_pickle=False) as z:
            outputs.append(z["output"])
    output = np.concatenate(outputs).astype(np.float32)
    predictions = _predictions_arrays(spec, output, image_id, bbox, test_set, n, flip_test, precision)
    predictions_path = save_npz(out_dir / PREDICTIONS_FILE, **predictions)

    ranks = stats["ranks"]
    images = sum(r["images"] for r in ranks)
    inference_s = max((r["inference_s"] for r in ranks), default=0.0)
    precision_check["nonfinite_batches"] += sum(r["nonfinite_batches"] for r in ranks)
    batch_used = min((r["batch_size_used"] for r in ranks), default=int(config.batch_size))
    return {
        "predictions_path": str(predictions_path),
        "predictions": predictions,
        "num_samples": n,
        "timing": {"inference_s": inference_s, "images": images,
                   "images_per_s": images / inference_s if inference_s > 0 else None,
                   "images_decoded": crops.images_decoded, "wall_s": time.perf_counter() - wall_start},
        "peak_memory_mb": max((r["peak_memory_mb"] for r in ranks), default=None),
        "memory_kind": "cuda_max_allocated" if device_type == "cuda" else "rss",
        "settings": {"batch_size": int(config.batch_size), "batch_size_used": batch_used, "precision": precision,
                     "device": device_type, "world_size": world_size, "flip_test": flip_test,
                     "max_samples": config.max_samples, "channels_last": bool(config.channels_last),
                     "num_workers": int(config.num_workers), "shard_size": int(config.shard_size),
                     "decode": config.decode, "cpu_threads": cpu_threads, "seed": int(config.seed)},
        "precision_check": precision_check,
        "crop_cache": crops.summary(),
        "decode_check": crops.decode_check,
        "shards": {"total": len(shards), "reused": len(reuse), "computed": len(shards) - len(reuse)},
        "fingerprint": fingerprint,
        "model_sha256": weights_sha,
        "checkpoint": checkpoint_info,
        "rank_stats": ranks,
    }


def root_output_to_camera(output: np.ndarray, bbox: np.ndarray, f: np.ndarray, c: np.ndarray, output_shape) -> np.ndarray:
    """RootNet output (x, y heatmap pixels, z mm) -> camera mm (N, 3), through the crop box."""
    out_h, out_w = output_shape
    u = output[:, 0].astype(np.float64) / out_w * bbox[:, 2] + bbox[:, 0]
    v = output[:, 1].astype(np.float64) / out_h * bbox[:, 3] + bbox[:, 1]
    return geometry.pixel_to_camera(np.stack([u, v, output[:, 2].astype(np.float64)], axis=1), f, c)


def _predictions_arrays(spec, output, image_id, bbox, test_set, n, flip_test, precision) -> dict:
    # input_shape and depth_extent_mm make the file self-describing for `rescore` (crop aspect, depth range).
    common = {"output_shape": np.array(spec.output_shape, dtype=np.int64),
              "depth_dim": np.array(spec.depth_dim, dtype=np.int64), "bbox": bbox,
              "input_shape": np.array(spec.input_shape, dtype=np.int64),
              "depth_extent_mm": np.array(spec.depth_extent_mm, dtype=np.float64),
              "model_id": np.array(spec.model_id), "kind": np.array(spec.kind), "flip_test": np.array(flip_test),
              "precision": np.array(precision)}
    if spec.kind == "pose":
        return {"image_id": image_id, "coords": output, **common}
    root_cam = root_output_to_camera(output, bbox, np.asarray(test_set.f[:n], dtype=np.float64),
                                     np.asarray(test_set.c[:n], dtype=np.float64), spec.output_shape)
    return {"image_id": image_id, "root_output": output, "root_cam": root_cam, **common}


@contextlib.contextmanager
def torch_settings(device_type: str, cpu_threads: int):
    """Threads and cuDNN autotuning for a run, restored afterwards (a notebook session keeps its settings).

    cuDNN benchmark mode suits the engine's fixed input size. TF32 is left at torch's defaults (T4 has no
    TF32 anyway; torch refuses to read its TF32 flags once they were set through both of its two APIs)."""
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    torch.set_num_threads(cpu_threads)
    torch.backends.cudnn.benchmark = device_type == "cuda"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark


def _run_in_this_process(job: _Job) -> dict:
    with torch_settings(job.device_type, job.cpu_threads):
        return {"ranks": [_run_rank(0, job)]}


_MESSAGE_LIMIT = 4000  # characters of a child's error message sent back (the queue is a pipe)
_WORLD_SIZE_HINT = "Set WORLD_SIZE = 1 (world_size=1) to run in this process on one device."


def _spawned_rank(rank: int, job: _Job, queue) -> None:
    """Entry point of each spawned process (importable from helpers, so spawning works from a notebook).

    Every outcome goes to the parent through `queue`: ("stats", rank, stats) or ("error", rank, type name,
    message); spawn itself would only show a traceback."""
    import torch.distributed as dist

    try:
        with torch_settings(job.device_type, job.cpu_threads):
            device = _rank_device(rank, job)
            _init_process_group(rank, job, device)
            try:
                stats = _process_shards(rank, job, device)
                # Gather what every rank did on rank 0 (a collective: NCCL on CUDA, gloo on CPU).
                gathered = [None] * job.world_size if rank == 0 else None
                dist.gather_object(stats, gathered, dst=0)
            finally:
                dist.destroy_process_group()
    except BaseException as exc:
        queue.put(("error", rank, type(exc).__name__, str(exc)[:_MESSAGE_LIMIT]))
        raise
    if rank == 0:
        queue.put(("gathered", rank, gathered))


def _init_process_group(rank: int, job: _Job, device: torch.device) -> None:
    import datetime

    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    try:
        dist.init_process_group(backend, init_method=job.dist_init_method, rank=rank, world_size=job.world_size,
                                timeout=datetime.timedelta(minutes=30), **kwargs)
    except Exception as exc:
        raise _RankStartError(f"process {rank} could not join the {backend} process group ({short_error(exc)})") from exc


def _free_loopback_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _model_on_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """The model as handed to spawned processes: on the CPU, so each process loads it onto its own GPU.
    (CUDA tensors would travel as CUDA IPC handles, and every process would open a context on GPU 0.)
    A model already on the CPU is passed as is; a GPU model is copied, the caller's copy stays put."""
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).to("cpu")


def _rank_failure(message: tuple) -> Exception:
    """The exception the parent raises for a child's ("error", rank, type name, text) message."""
    _, rank, kind, text = message
    if kind == "ImageReadError":
        return ImageReadError(text)
    if kind == "DataError":
        return DataError(text)
    if kind == "ValueError":
        return ValueError(text)
    if kind == "_RankStartError":
        return RuntimeError(f"multi-GPU inference could not start: {text}. Every GPU must be free for this "
                            f"notebook (not in exclusive-process mode, not used by another session). {_WORLD_SIZE_HINT}")
    return RuntimeError(f"inference process {rank} failed with {kind}: {text}")


def _run_spawned(job: _Job) -> dict:
    import torch.multiprocessing as mp

    job = dataclasses.replace(job, model=_model_on_cpu(job.model),
                              dist_init_method=f"tcp://127.0.0.1:{_free_loopback_port()}")
    # spawn, never fork: a forked child cannot use CUDA once the parent has initialised it.
    queue = mp.get_context("spawn").SimpleQueue()
    try:
        mp.start_processes(_spawned_rank, args=(job, queue), nprocs=job.world_size, join=True, start_method="spawn")
    except (pickle.PicklingError, AttributeError, TypeError) as exc:  # raised here, while handing the job over
        raise RuntimeError(f"the model cannot be handed to the inference processes ({exc}). Its class must be "
                           f"importable (defined in a module, not in a notebook cell). {_WORLD_SIZE_HINT}") from exc
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        errors = [m for m in _drain(queue) if m[0] == "error"]
        if errors:  # the first error is the cause; the others are processes stopped because of it
            raise _rank_failure(errors[0]) from None
        raise RuntimeError(f"inference process {exc.error_index} stopped before it could report ({exc}). Either it "
                           "was killed (out of host memory), or it could not import the model's class: a class defined "
                           f"in a notebook cannot be imported by a spawned process. {_WORLD_SIZE_HINT}") from exc
    gathered = [m[2] for m in _drain(queue) if m[0] == "gathered"]
    if len(gathered) != 1 or len(gathered[0]) != job.world_size:
        raise RuntimeError(f"the {job.world_size} inference processes finished, but rank 0 did not gather "
                           "every rank's results")
    ranks = gathered[0]
    done = sorted(i for r in ranks for i in r["shards_done"])
    if done != sorted(i for i, _, _ in job.shards):
        raise RuntimeError(f"the inference processes did not cover every shard exactly once: {done}")
    return {"ranks": ranks}


def _drain(queue) -> list:
    messages = []
    while not queue.empty():
        messages.append(queue.get())
    return messages


def write_bbox_root_file(path: str | os.PathLike, image_ids, bboxes, root_cams) -> Path:
    """Write RootNet output in its JSON format `[{"image_id", "bbox": [x,y,w,h], "root_cam": [X,Y,Z]}]`,
    sorted by image id (what `h36m.load_bbox_root` reads). Written atomically."""
    ids = np.asarray(image_ids)
    boxes = np.asarray(bboxes, dtype=np.float64)
    roots = np.asarray(root_cams, dtype=np.float64)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"image_ids must be a 1-D integer array; got dtype {ids.dtype}, shape {ids.shape}")
    if boxes.shape != (len(ids), 4) or roots.shape != (len(ids), 3):
        raise ValueError(f"need bboxes ({len(ids)}, 4) and root_cams ({len(ids)}, 3); got {boxes.shape} and {roots.shape}")
    if not (np.isfinite(boxes).all() and np.isfinite(roots).all()):
        raise ValueError("bboxes and root_cams must be finite; a NaN root means the model output is broken")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("image_ids contain duplicates; one RootNet entry per image")
    order = np.argsort(ids, kind="stable")
    entries = [{"image_id": int(ids[i]), "bbox": [float(v) for v in boxes[i]], "root_cam": [float(v) for v in roots[i]]}
               for i in order]
    return write_json(path, entries, indent=None)

