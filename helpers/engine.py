"""Batched, flip-tested, multi-process, resumable inference over a Human3.6M test set, strict fp32 by default.

`run_inference(model_spec, checkpoint_or_model, test_set, image_paths, config)` works in two steps:

1. **Crops.** `crop_cache.ensure_crops` decodes each JPEG (on the CPU, in `num_workers` loader processes) and
   makes the official uint8 crop once per crop rule; the crops are cached memory-mapped, so every later model
   and notebook run with the same rule reads them instead of decoding again. Where OpenCV 4.x imports, a few of
   the run's crops are compared with the official OpenCV crop (`crop_check.check_crops`, `crop_check`).
2. **Forward.** Batches of cached crops are normalised and flipped on the device and run through the model
   (the flip test is one forward of 2B images). On CUDA the next batch is read into a pinned host buffer and
   copied while the GPU computes the current one. On CUDA out-of-memory the batch is halved for the rest of the
   run. The model's `ModelSpec` alone decides input size, normalisation and output decoding.

**Numerics** (`torch_settings`, `forward_batch`): strict fp32 on every device. TF32 is off for cuDNN
convolutions and for matmuls (torch turns it on for convolutions by default on Ampere and newer GPUs),
`cudnn.benchmark` is off and `cudnn.deterministic` on; the caller's values come back afterwards. The settings
are recorded in `settings` (`tf32`, `cudnn_benchmark`, `cudnn_deterministic`).

**Precision** is `"fp32"` (the official setting) unless `"tf32"` (TF32 convolutions and matmuls, on GPUs of
compute capability 8.0 and newer), `"fp16"` or `"bf16"` (autocast, on CUDA or CPU) is asked for. Such a run is
first compared with strict fp32 on a calibration sample of its own crops; the deviation is recorded in
`precision_check`, and beyond `precision_tolerance_mm` the run falls back to fp32 (or stops, with
`precision_fallback=False`). A batch with a non-finite output is recomputed in fp32.

**Device check** (`device_check`, "auto": on for a non-CPU device): before the run, `device_check_samples` of
the run's own crops go through the model on the run's device and on the CPU, both in strict fp32, with the run's
flip setting; the deviation in mm is compared with a tolerance derived from float32 arithmetic
(`device_check_tolerance_mm`) and recorded in `device_check`. A failure warns, or stops the run with "strict".

Work is cut into shards of `shard_size` consecutive samples. Shard k goes to rank k % world_size; each
shard is split into batches from its own start, so every sample is computed in the same batch whatever
the number of processes (1-process and 2-process CPU runs give identical numbers). Each finished shard
is written atomically to `out_dir/shards/shard_#####.npz` with a fingerprint of (model weights, spec,
settings, crops, device names); a rerun with `resume=True` reuses matching shards and never mixes in stale ones.
With world_size > 1 one spawned process per device works through its shards inside a `torch.distributed`
process group (NCCL on CUDA, gloo on CPU): after its shards, each rank gathers to rank 0 what it computed
(its shard list and statistics), and rank 0 checks that every shard was done exactly once. Before the ranks
start, the parent releases what its own GPU work (calibration, device check, GPU decoding) left on GPU 0. The
parent then writes `out_dir/predictions.npz` atomically from the shards, in sample order:

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
import gc
import hashlib
import json
import math
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
from .crop_check import CROP_CHECK_IMAGES, check_crops, crop_check_failed
from .h36m import DataError
from .images import ImageReadError, short_error  # noqa: F401  (ImageReadError is part of this API)
from .pipeline import flip_images, flip_test_merge, normalize
from .protocol import EVAL_JOINTS
from .results import PREDICTIONS_FILE

SHARD_DIR = "shards"
_FINGERPRINT_VERSION = 3  # 3: device names and the numerics settings joined the fingerprint

# "tf32" computes in float32 tensors, with TF32 tensor-core convolutions and matmuls (compute capability >= 8.0).
PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# A reduced-precision run is kept only if no calibration joint moved by more than this (root-relative mm;
# RootNet: the root position). 1 mm is well below any difference between published models.
PRECISION_TOLERANCE_MM = 1.0
CALIBRATION_SAMPLES = 64
TF32_MIN_CAPABILITY = (8, 0)  # Ampere: the first GPUs with TF32 tensor cores (A100, RTX 30, L4, H100, ...)

# Device check tolerance (helpers/README.md, "Device check"): between the error of fp32 sums in another order
# (growing like sqrt(K) unit roundoffs for a dot product of length K) and TF32's rounding of every operand to 11
# significant bits, relative to the mm span of the model's output grid; at most 0.1 mm.
FP32_UNIT_ROUNDOFF = 2.0 ** -24
TF32_UNIT_ROUNDOFF = 2.0 ** -11
REDUCTION_LENGTH = 2 ** 10  # a typical dot-product length of these layers (3x3x128, 1x1x1024, 7x7 depthwise x ...)
DEVICE_CHECK_MAX_TOLERANCE_MM = 0.1
DEVICE_CHECK_SAMPLES = 8


class PrecisionError(RuntimeError):
    """Reduced precision deviated from fp32 beyond the tolerance and the run was asked to stop."""


class DeviceCheckError(RuntimeError):
    """The run's device deviated from the CPU in strict fp32 beyond the tolerance, with device_check="strict"."""


@dataclass
class InferenceConfig:
    """Settings of one inference run. Defaults suit a Kaggle T4; every field is recorded in the result."""

    batch_size: int = 64
    flip_test: bool = True
    precision: str = "fp32"  # "fp32" (official) | "tf32" | "fp16" | "bf16": the others are checked against fp32
    precision_tolerance_mm: float = PRECISION_TOLERANCE_MM
    precision_fallback: bool = True  # beyond the tolerance: True runs fp32 instead, False stops (PrecisionError)
    calibration_samples: int = CALIBRATION_SAMPLES
    device_check: bool | str = "auto"  # "auto": on for a non-CPU device | True: also on a CPU | False | "strict"
    device_check_samples: int = DEVICE_CHECK_SAMPLES
    crop_check_images: int = CROP_CHECK_IMAGES  # run's images compared with OpenCV 4.x where it imports; 0: off
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
class _Forward:
    """What a forward pass needs to know about the model and the samples (`_BatchRunner`)."""

    kind: str
    output_shape: tuple[int, int]
    normalization: str
    flip_pairs: tuple[tuple[int, int], ...]
    flip_test: bool
    channels_last: bool
    bbox: np.ndarray  # (N, 4) float64
    f: np.ndarray  # (N, 2) float64 (RootNet's k)
    output_width: tuple[int, ...] = ()  # per-image output shape: (J, 3) pose, (3,) root
    input_shape: tuple[int, ...] = ()  # (H, W) of the crops


@dataclass
class _Job(_Forward):
    """Everything a rank needs; picklable so `torch.multiprocessing.spawn` can hand it over."""

    model: torch.nn.Module = None
    crops: CropStore = None
    shards: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)  # (index, first, end sample)
    shard_dir: str = ""
    fingerprint: str = ""
    batch_size: int = 1
    precision: str = "fp32"  # the precision used (after the calibration check)
    device_type: str = "cpu"
    world_size: int = 1
    cpu_threads: int = 1
    seed: int = 0
    progress: bool = True
    reuse: frozenset = frozenset()  # shard indices already complete on disk
    dist_init_method: str = ""  # rendezvous of the process group (world_size > 1), on the loopback interface


# ---------------------------------------------------------------- numerics: strict fp32, TF32, cuDNN

def _fp32_precision_flags() -> list | None:
    """The backends' `fp32_precision` settings (torch 2.9 and newer), or None on a torch with only the legacy
    `allow_tf32` flags. One API is used throughout: once flags were set through both, torch's legacy getters raise."""
    backends = torch.backends
    conv = getattr(getattr(backends.cudnn, "conv", None), "fp32_precision", None)
    if conv is None:
        return None
    owners = [backends.cudnn.conv, getattr(backends.cudnn, "rnn", None), backends.cuda.matmul]
    # The CPU's oneDNN kernels: `set_float32_matmul_precision("medium")` would let them run matmuls in bf16.
    mkldnn = getattr(backends, "mkldnn", None)
    owners += [getattr(mkldnn, name, None) for name in ("conv", "matmul", "rnn")] if mkldnn is not None else []
    return [o for o in owners if o is not None and hasattr(o, "fp32_precision")]


def _numerics_state() -> tuple:
    """The caller's TF32 and cuDNN settings, as `_restore_numerics` puts them back (read through one API)."""
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    owners = _fp32_precision_flags()
    if owners is not None:
        return cudnn, "fp32_precision", [(o, o.fp32_precision) for o in owners]
    return cudnn, "legacy", (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())


def _restore_numerics(state: tuple) -> None:
    (benchmark, deterministic), api, values = state
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, deterministic
    if api == "fp32_precision":
        for owner, value in values:
            owner.fp32_precision = value
    else:
        torch.backends.cudnn.allow_tf32 = values[0]
        torch.set_float32_matmul_precision(values[1])


def _set_tf32(enabled: bool) -> None:
    """TF32 for cuDNN convolutions and CUDA matmuls on (the "tf32" precision) or off (strict fp32); the CPU's
    oneDNN kernels always strict."""
    owners = _fp32_precision_flags()
    if owners is not None:
        gpu = {id(torch.backends.cudnn.conv), id(getattr(torch.backends.cudnn, "rnn", None)),
               id(torch.backends.cuda.matmul)}
        for owner in owners:
            owner.fp32_precision = "tf32" if enabled and id(owner) in gpu else "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled  # also sets float32_matmul_precision "high"/"highest"


def _resolved_fp32_precision(owner, parents) -> str:
    """An `fp32_precision` value with "none" resolved through its parents (all "none": strict, "ieee")."""
    for level in (owner, *parents):
        value = getattr(level, "fp32_precision", "none")
        if value != "none":
            return value
    return "ieee"


def tf32_flags() -> dict:
    """Whether torch would now use TF32 for cuDNN convolutions and for CUDA matmuls (read through one API)."""
    backends = torch.backends
    if _fp32_precision_flags() is not None:
        conv = _resolved_fp32_precision(backends.cudnn.conv, (backends.cudnn, backends))
        matmul = _resolved_fp32_precision(backends.cuda.matmul, (backends.cuda, backends))
        return {"conv": conv == "tf32", "matmul": matmul == "tf32"}
    return {"conv": bool(backends.cudnn.allow_tf32), "matmul": bool(backends.cuda.matmul.allow_tf32)}


def numerics_settings() -> dict:
    """The flags that decide fp32 arithmetic right now: {tf32 (convolutions or matmuls), cudnn_benchmark,
    cudnn_deterministic}; what a run records in `settings` (tf32 only where the device has TF32)."""
    flags = tf32_flags()
    return {"tf32": bool(flags["conv"] or flags["matmul"]), "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic)}


@contextlib.contextmanager
def torch_settings(device_type: str, cpu_threads: int, *, cudnn_benchmark: bool = False):
    """Threads and strict fp32 numerics for a run, restored afterwards (a notebook session keeps its settings).

    TF32 off, `cudnn.benchmark` off and `cudnn.deterministic` on, on every device (they are global flags and
    change nothing on a CPU, so the tests can see them). `cudnn_benchmark=True` (the official test scripts' speed
    setting, measured by `--gpu-check`) turns autotuning on and determinism off instead."""
    threads, state = torch.get_num_threads(), _numerics_state()
    torch.set_num_threads(cpu_threads)
    _set_tf32(False)
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    torch.backends.cudnn.deterministic = not cudnn_benchmark
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _restore_numerics(state)


@contextlib.contextmanager
def _tf32(enabled: bool):
    state = _numerics_state()
    _set_tf32(enabled)
    try:
        yield
    finally:
        _restore_numerics(state)


def tf32_available(device_type: str, gpus: Sequence[int] = (0,)) -> bool:
    """Whether every GPU of `gpus` has TF32 tensor cores (compute capability 8.0 or newer); never on a CPU."""
    if device_type != "cuda":
        return False
    return all(tuple(torch.cuda.get_device_capability(i)) >= TF32_MIN_CAPABILITY for i in gpus)


# ---------------------------------------------------------------- forward pass

@contextlib.contextmanager
def _math_mode(device_type: str, precision: str):
    """The arithmetic of one forward: strict fp32 ("fp32"), TF32 convolutions and matmuls ("tf32"), or autocast
    to fp16/bf16 with its float32 operations strict."""
    with _tf32(precision == "tf32"):
        if precision in ("fp16", "bf16"):
            with torch.autocast(device_type=device_type, dtype=PRECISIONS[precision]):
                yield
        else:
            yield


def forward_batch(model: torch.nn.Module, x: torch.Tensor, *, kind: str, flip_test: bool, precision: str = "fp32",
                  output_width: int, flip_pairs, k: torch.Tensor | None = None) -> torch.Tensor:
    """Run the model on a normalised batch `x` (B,3,H,W), with the flip test as ONE forward of 2B images.

    `precision` "fp32" runs it in strict fp32 (TF32 off), "tf32" with TF32 convolutions and matmuls, "fp16"/"bf16"
    under autocast on `x`'s device. Pose: returns (B,J,3) float32 heatmap units (flip-merged when `flip_test`).
    Root: `k` (B,1) is required, no flip test, returns (B,3) float32 (x, y heatmap pixels, z mm).
    """
    batch = x.shape[0]
    if flip_test and kind == "pose":
        x = torch.cat([x, flip_images(x)])
    with _math_mode(x.device.type, precision):
        out = model(x, k) if kind == "root" else model(x)
    out = out.float()  # the soft-argmax runs in float32 inside the models; keep the coordinates float32
    if flip_test and kind == "pose":
        out = flip_test_merge(out[:batch], out[batch:], output_width, flip_pairs)
    return out


def prepare_inputs(crops, *, normalization: str, channels_last: bool, device=None) -> torch.Tensor:
    """Normalise a batch of uint8 crops (B,3,H,W) (array or tensor) on `device`: the network input, float32."""
    crops = torch.as_tensor(crops)
    if device is not None:
        crops = crops.to(device, non_blocking=True)
    x = normalize(crops, normalization)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _is_oom(exc: BaseException) -> bool:
    """CUDA out-of-memory. `torch.cuda.OutOfMemoryError` (a RuntimeError) exists since torch 1.13, the top-level
    `torch.OutOfMemoryError` only since 2.4; the message covers every version."""
    oom_class = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom_class is not None and isinstance(exc, oom_class)) or "out of memory" in str(exc).lower()


def release_cached_memory(device: torch.device) -> None:
    """Give the CUDA caching allocator's free blocks back (called outside any `except` block: while an exception
    is being handled, its traceback still holds the failed frame's tensors). Waits for the device first, so no
    queued copy still reads a host buffer that is about to be refilled. A process that has not used CUDA has
    nothing to release, and no CUDA context is created for it."""
    if device.type == "cuda" and torch.cuda.is_initialized():
        gc.collect()  # models dropped by the caller may sit in reference cycles
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


class _BatchRunner:
    """Forward passes over cached crops at a batch size that halves on out-of-memory (timm validate's policy),
    with reduced-precision batches that come out non-finite recomputed in fp32.

    Overlap: the next batch is read (CUDA: into one of two pinned host buffers, then copied asynchronously) while
    the device computes the current one; each batch's output is fetched only after that."""

    def __init__(self, model, job_like: _Forward, device: torch.device, batch_size: int, precision: str):
        self.model, self.job, self.device = model, job_like, device
        self.batch_size, self.precision = int(batch_size), precision
        self.nonfinite_batches = 0
        self.oom_events = 0
        self._pinned: list[torch.Tensor] = []  # CUDA only: two host buffers, used in turn
        self._turn = 0

    def _k(self, positions: np.ndarray):
        if self.job.kind != "root":
            return None
        k = torch.from_numpy(geometry.rootnet_k_value(self.job.bbox[positions], self.job.f[positions]))
        return k.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else k.to(self.device)

    def _host_buffer(self, rows: int, shape: tuple) -> torch.Tensor:
        if not self._pinned or self._pinned[0].shape[0] < rows or tuple(self._pinned[0].shape[1:]) != shape:
            self._pinned = [torch.empty((max(rows, self.batch_size), *shape), dtype=torch.uint8, pin_memory=True)
                            for _ in range(2)]
        self._turn ^= 1
        return self._pinned[self._turn][:rows]

    def _stage(self, positions: np.ndarray, read) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's uint8 crops on the device, and RootNet's k. On CUDA the copy is queued, not awaited."""
        if self.device.type != "cuda":
            return torch.as_tensor(read(positions)), self._k(positions)
        host = self._host_buffer(len(positions), (3, *self.job.input_shape))
        read(positions, out=host.numpy())
        return host.to(self.device, non_blocking=True), self._k(positions)

    def _forward(self, staged, precision: str) -> torch.Tensor:
        job = self.job
        crops, k = staged
        x = prepare_inputs(crops, normalization=job.normalization, channels_last=job.channels_last)
        return forward_batch(self.model, x, kind=job.kind, flip_test=job.flip_test, precision=precision,
                             output_width=job.output_shape[1], flip_pairs=job.flip_pairs, k=k)

    def _chunk_end(self, start: int, total: int, group: int) -> int:
        group_end = min((start // group + 1) * group, total)
        return min(start + self.batch_size, group_end)

    def run(self, positions: np.ndarray, read, precision: str | None = None, recompute_nonfinite: bool = True,
            group_size: int | None = None, on_batch=None) -> np.ndarray:
        """Outputs for `positions` (consecutive or not); `read(sub_positions, out=None)` returns their uint8 crops
        (into `out` when given). `positions` are cut into groups of `group_size` (default: one group), each group
        into batches of the current batch size. `on_batch(count)` is called after each batch.
        `recompute_nonfinite=False` keeps non-finite reduced-precision outputs (the calibration needs to see them)."""
        precision = precision or self.precision
        positions = np.asarray(positions)
        total = len(positions)
        group = int(group_size or total) or 1
        outputs, start, staged = [], 0, None
        while start < total:
            end = self._chunk_end(start, total, group)
            chunk = positions[start:end]
            out_of_memory = False
            try:
                staged = staged or self._stage(chunk, read)
                out, nonfinite = self._forward(staged, precision), False
                if recompute_nonfinite and precision != "fp32" and not torch.isfinite(out).all():
                    out, nonfinite = self._forward(staged, "fp32"), True
                # While the device computes this batch, read and queue the next one.
                after = self._chunk_end(end, total, group) if end < total else None
                staged = self._stage(positions[end:after], read) if after is not None else None
                result = out.cpu().numpy()
            except RuntimeError as exc:
                if not _is_oom(exc) or self.batch_size == 1:
                    raise
                out_of_memory = True
            if out_of_memory:  # outside the except block: the exception no longer holds the batch's tensors
                staged = out = None
                self.oom_events += 1
                self.batch_size = max(1, self.batch_size // 2)
                _note(f"out of memory at batch size {self.batch_size * 2}; continuing at {self.batch_size}")
                release_cached_memory(self.device)
                continue
            expected = (len(chunk),) + tuple(self.job.output_width)
            if result.shape != expected:
                raise ValueError(f"the model returned shape {result.shape} for {len(chunk)} images; its spec "
                                 f"expects {expected} (pose: joint_num x 3, root: 3)")
            self.nonfinite_batches += nonfinite  # counted once the batch is done (a retried batch is not)
            outputs.append(result)
            start = end
            if on_batch is not None:
                on_batch(len(chunk))
        return np.concatenate(outputs)


def _note(text: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"note: {text}")


# ---------------------------------------------------------------- precision check and device check

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


def _spread_positions(n: int, count: int) -> np.ndarray:
    """`count` sample positions of 0..n-1 spread evenly from first to last."""
    return np.unique(np.linspace(0, n - 1, max(1, min(int(count), n))).round().astype(np.int64))


def check_precision(spec, runner: _BatchRunner | None, crops: CropStore, test_set, bbox: np.ndarray, n: int,
                    config: InferenceConfig, tf32_ok: bool = False) -> dict:
    """Compare the requested precision with strict fp32 on an even sample of the run's own crops.

    "tf32" on a device without TF32 (`tf32_ok` False: a CPU, a T4) runs strict fp32 and says so in `note`."""
    requested = config.precision
    record = {"requested": requested, "used": requested, "samples": 0, "max_abs_diff_heatmap": None,
              "max_abs_diff_mm": None, "mean_abs_diff_mm": None, "nonfinite_batches": 0, "fell_back": False,
              "tolerance_mm": float(config.precision_tolerance_mm)}
    if requested == "fp32":
        return record
    if requested == "tf32" and not tf32_ok:
        record.update(used="fp32", note="this device has no TF32 (it needs compute capability 8.0 or newer): "
                                        "the run is strict fp32")
        return record
    positions = _spread_positions(n, config.calibration_samples)
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


def device_check_enabled(mode, device_type: str) -> bool:
    """DEVICE_CHECK: "auto" on any non-CPU device, True or "strict" everywhere, False never."""
    if isinstance(mode, (bool, np.bool_)):
        return bool(mode)
    if mode not in ("auto", "strict"):
        raise ValueError(f"device_check must be \"auto\", True, False or \"strict\"; got {mode!r}")
    return device_type != "cpu" if mode == "auto" else True


def output_span_mm(spec, positions: np.ndarray, test_set, bbox: np.ndarray, reference_mm: np.ndarray) -> float:
    """The mm extent of what the model's output can express on these samples: the heatmap grid spans the crop box
    (w·Z/fx by h·Z/fy at the root depth Z) and the depth extent; RootNet's output also holds its absolute depth."""
    f = np.asarray(test_set.f, dtype=np.float64)[positions]
    if spec.kind == "root":
        depth = np.abs(reference_mm[:, 0, 2])
    else:
        depth = np.abs(np.asarray(test_set.root_cam, dtype=np.float64)[positions, 2])
    box = np.asarray(bbox, dtype=np.float64)[positions]
    span = np.maximum(box[:, 2] * depth / f[:, 0], box[:, 3] * depth / f[:, 1])
    extent = depth if spec.kind == "root" else np.full(len(positions), float(spec.depth_extent_mm))
    return float(np.max(np.maximum(span, extent)))


def device_check_tolerance_mm(span_mm: float) -> float:
    """2^-15 of the output span, at most 0.1 mm (helpers/README.md, "Device check").

    To first order a rounding error is e ≈ κ·ε·span, with ε the relative error of one layer's arithmetic and κ
    the network's amplification. The same fp32 sums in another order (another device, algorithm, batch or memory
    format) give ε ≈ sqrt(K)·u_fp32 = 2^-19 for K = 2^10 terms; TF32 rounds every operand to 11 significant bits,
    ε ≈ u_tf32 = 2^-11 whatever the order. The two regimes are 2^8 apart; the tolerance is their geometric mean,
    2^-15·span, so it separates them for every κ within a factor 16 of their own either way."""
    fp32_order = math.sqrt(REDUCTION_LENGTH) * FP32_UNIT_ROUNDOFF
    return min(DEVICE_CHECK_MAX_TOLERANCE_MM, math.sqrt(fp32_order * TF32_UNIT_ROUNDOFF) * float(span_mm))


def _cpu_reference_model(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of the model in the default memory format (the caller's model is left as it is)."""
    return copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()


def check_device(spec, model: torch.nn.Module, crops: CropStore, test_set, bbox: np.ndarray, n: int, *,
                 device: torch.device, flip_test: bool, channels_last: bool = True,
                 samples: int = DEVICE_CHECK_SAMPLES, batch_size: int | None = None, precisions=("fp32",),
                 reference_model: torch.nn.Module | None = None, cpu_threads: int | None = None) -> dict:
    """The run's device against the CPU on `samples` of the run's own crops (spread evenly), with the run's flip
    setting: {precision: device_check record}.

    The device side runs `model` (on `device`, as the run does: its batch, its memory format) in each of
    `precisions` ("fp32": strict; "tf32": TF32 convolutions and matmuls, for `--gpu-check`); the reference is a
    CPU copy in strict fp32, one sample at a time in the default memory format, so a CPU run compares two
    orders of the same arithmetic. `passed`: the mean deviation over every evaluated joint (RootNet: root) of
    every sample is within `device_check_tolerance_mm`; the max is recorded beside it (a joint with a flat or
    two-peaked heatmap amplifies any rounding, fp32 summation order included, far beyond the others).
    Record: {device, reference: "cpu", precision, samples, max_abs_diff_mm, mean_abs_diff_mm,
    max_abs_diff_heatmap, span_mm, tolerance_mm, passed}."""
    positions = _spread_positions(n, samples)
    width = (3,) if spec.kind == "root" else (spec.joint_num, 3)
    f = np.asarray(test_set.f, dtype=np.float64)
    forward = _Forward(kind=spec.kind, output_shape=tuple(spec.output_shape), normalization=spec.normalization,
                       flip_pairs=tuple(tuple(p) for p in spec.flip_pairs), flip_test=flip_test and spec.kind == "pose",
                       channels_last=channels_last, bbox=np.asarray(bbox, dtype=np.float64), f=f, output_width=width,
                       input_shape=tuple(spec.input_shape))
    threads = int(cpu_threads or torch.get_num_threads())
    reference_model = reference_model if reference_model is not None else _cpu_reference_model(model)
    cpu = torch.device("cpu")
    with torch_settings("cpu", threads), torch.inference_mode():
        reference = _BatchRunner(reference_model, dataclasses.replace(forward, channels_last=False), cpu, 1,
                                 "fp32").run(positions, crops.take)
    reference_mm = _outputs_to_mm(spec, reference, positions, test_set, bbox)
    span = output_span_mm(spec, positions, test_set, bbox, reference_mm)
    tolerance = device_check_tolerance_mm(span)
    records = {}
    with torch_settings(device.type, threads), torch.inference_mode():
        runner = _BatchRunner(model, forward, device, int(batch_size or len(positions)), "fp32")
        for precision in precisions:
            out = runner.run(positions, crops.take, precision, recompute_nonfinite=False)
            finite = bool(np.isfinite(out).all())
            diff = (np.linalg.norm(_outputs_to_mm(spec, out, positions, test_set, bbox) - reference_mm, axis=-1)
                    if finite else None)
            records[precision] = {
                "device": str(device), "reference": "cpu", "precision": precision, "samples": int(len(positions)),
                "flip_test": forward.flip_test,
                "max_abs_diff_mm": float(diff.max()) if finite else None,
                "mean_abs_diff_mm": float(diff.mean()) if finite else None,
                "max_abs_diff_heatmap": float(np.abs(out - reference).max()) if finite else None,
                "span_mm": span, "tolerance_mm": tolerance,
                "passed": bool(finite and diff.mean() <= tolerance)}
    return records


def device_check_failure(record: dict) -> str:
    """One sentence on a failed device check, for warnings and errors."""
    found = ("non-finite outputs" if record["mean_abs_diff_mm"] is None else
             f"joints {record['mean_abs_diff_mm']:.4f} mm apart on average (max {record['max_abs_diff_mm']:.4f} mm; "
             f"tolerance {record['tolerance_mm']:.4f} mm)")
    return (f"the device check found {found} between {record['device']} and the CPU, both in strict fp32, on "
            f"{record['samples']} of this run's crops: this GPU (or its driver, CUDA or cuDNN) does not reproduce "
            "the CPU's arithmetic, so its numbers may not be the official ones")


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

    def batch_done(count: int) -> None:
        nonlocal images_done, peak_mb
        images_done += count
        peak_mb = max(peak_mb, _memory_now_mb(device))
        bar.update(count)

    def read(positions, out=None):
        return job.crops.read(int(positions[0]), int(positions[-1]) + 1, out=out)

    start_time = time.perf_counter()
    with torch.inference_mode():
        for index, first, end in to_compute:
            # Batches start at the shard's own start, so the batching does not depend on the world size.
            output = runner.run(np.arange(first, end), read, group_size=job.batch_size, on_batch=batch_done)
            _write_shard(_shard_path(job.shard_dir, index), job.fingerprint, first, output)
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


def _main_device(device_type: str) -> torch.device:
    """The device of this process's own work (calibration, device check, GPU decoding): GPU 0 or the CPU."""
    return torch.device("cuda", 0) if device_type == "cuda" else torch.device("cpu")


def _device_names(device_type: str, world_size: int) -> list[str]:
    """The hardware in the shard fingerprint: every GPU the run uses, by name, or the CPU's model name."""
    if device_type == "cuda":
        return [torch.cuda.get_device_name(i) for i in range(world_size)]
    from .environment import cpu_name

    return [cpu_name()]


def _checks_on_the_device(spec, model, job: _Job, crops: CropStore, test_set, bbox, n: int, config: InferenceConfig,
                          device: torch.device, *, tf32_ok: bool, device_check_on: bool,
                          reference_model) -> tuple[dict, dict | None]:
    """The precision calibration and the device check, in this process on the run's first device.

    With several processes they run on a copy of the model that is dropped afterwards, and the caching allocator's
    blocks are given back, so GPU 0 holds nothing of this process's work when the ranks start (only its CUDA
    context). One process moves the model itself, which the rank then runs."""
    if config.precision == "fp32" and not device_check_on:
        return check_precision(spec, None, crops, test_set, bbox, n, config), None
    work = copy.deepcopy(_model_on_cpu(model)) if job.world_size > 1 else model
    with torch_settings(device.type, job.cpu_threads), torch.inference_mode():
        work = work.to(device).eval()
        if job.channels_last:
            work = work.to(memory_format=torch.channels_last)
        runner = _BatchRunner(work, job, device, job.batch_size, config.precision)
        precision_check = check_precision(spec, runner if config.precision != "fp32" else None, crops, test_set, bbox,
                                          n, config, tf32_ok)
        device_check = None
        if device_check_on:
            device_check = check_device(spec, work, crops, test_set, bbox, n, device=device, flip_test=job.flip_test,
                                        channels_last=job.channels_last, samples=config.device_check_samples,
                                        batch_size=job.batch_size, reference_model=reference_model,
                                        cpu_threads=job.cpu_threads)["fp32"]
    del runner, work
    return precision_check, device_check


def run_inference(model_spec, checkpoint_or_model, test_set, image_paths: Sequence[str | os.PathLike],
                  config: InferenceConfig | None = None) -> dict:
    """Run a model over `test_set` and write `config.out_dir/predictions.npz` (see the module docstring).

    model_spec: a `ModelSpec` or a model id. checkpoint_or_model: a checkpoint path (or state dict) loaded
        strictly with `helpers.models.load_checkpoint`, an `nn.Module` (its class must be importable when
        world_size > 1), or None for random weights (demo runs only).
    test_set: an `h36m.TestSet` (uses image_id, bbox, f, c, and root_cam for the precision and device checks).
    image_paths: one JPEG path per sample, e.g. `h36m.resolve_image_paths(test_set, root)`.
    A model run in this process (world_size 1) is moved to the device in place and put in eval mode.

    Returns a dict: `predictions_path`, `predictions` (the arrays written), `num_samples`, `timing`
    {inference_s, images, images_per_s, images_decoded, wall_s}, `peak_memory_mb` and `memory_kind` ("rss" on
    CPU, "cuda_max_allocated" on CUDA), `settings` (result.json block, incl. precision, batch_size_used, tf32,
    cudnn_benchmark, cudnn_deterministic), `precision_check`, `device_check` (None when off), `crop_check`,
    `crop_cache` {key, hits, misses, decode}, `decode_check`, `shards` {total, computed, reused}, `fingerprint`,
    `model_sha256`, `checkpoint` (loader info), `rank_stats`.
    """
    from .models import get_spec

    config = config or InferenceConfig()
    spec = get_spec(model_spec) if isinstance(model_spec, str) else model_spec
    wall_start = time.perf_counter()
    n = _check_inputs(spec, test_set, image_paths, config)
    device_type = _resolve_device(config.device)
    device_check_on = device_check_enabled(config.device_check, device_type)
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
    main_device = _main_device(device_type)

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
                             progress=bool(config.progress))
    crop_check = check_crops(paths, bbox, spec.input_shape, crops.take, count=int(config.crop_check_images))
    if crop_check_failed(crop_check):
        _note(f"WARNING: the crop check found crops that differ from OpenCV 4.x's official crop (max "
              f"{crop_check['max_abs_diff']} grey levels; decode identical: {crop_check['decode_identical']}); "
              "recorded in crop_check")

    weights_sha = model_sha256(model)
    width = (3,) if spec.kind == "root" else (spec.joint_num, 3)
    job = _Job(model=model, kind=spec.kind, output_shape=tuple(spec.output_shape), normalization=spec.normalization,
               flip_pairs=tuple(tuple(p) for p in spec.flip_pairs), crops=crops, bbox=bbox, f=f, shards=[],
               shard_dir="", fingerprint="", batch_size=int(config.batch_size), flip_test=flip_test,
               precision=config.precision, channels_last=bool(config.channels_last), device_type=device_type,
               world_size=world_size, cpu_threads=cpu_threads, seed=int(config.seed), progress=bool(config.progress),
               output_width=width, input_shape=tuple(spec.input_shape))
    tf32_ok = tf32_available(device_type, range(world_size))
    reference_model = _cpu_reference_model(model) if device_check_on else None  # before the model moves
    precision_check, device_check = _checks_on_the_device(
        spec, model, job, crops, test_set, bbox, n, config, main_device, tf32_ok=tf32_ok,
        device_check_on=device_check_on, reference_model=reference_model)
    del reference_model
    release_cached_memory(main_device)  # calibration, device check and GPU decoding leave GPU 0 empty
    if device_check is not None and not device_check["passed"]:
        message = device_check_failure(device_check)
        if config.device_check == "strict":
            raise DeviceCheckError(f"{message}. DEVICE_CHECK = \"strict\" stops the run here; set DEVICE_CHECK = "
                                   "True to run anyway (the result records the failed check), or run on another "
                                   "GPU or on the CPU.")
        _note(f"WARNING: {message}; recorded in device_check")
    precision = precision_check["used"]
    with torch_settings(device_type, cpu_threads), _tf32(precision == "tf32"):
        numerics_used = numerics_settings()  # what the forward passes run with
    numerics_used["tf32"] = bool(numerics_used["tf32"] and tf32_ok)

    numerics = {  # everything that can change a predicted number; world_size and threads deliberately not
        "version": _FINGERPRINT_VERSION, "model_sha256": weights_sha, "model_id": spec.model_id, "kind": spec.kind,
        "input_shape": list(spec.input_shape), "output_shape": list(spec.output_shape),
        "depth_dim": spec.depth_dim, "normalization": spec.normalization,
        "flip_pairs": [list(p) for p in spec.flip_pairs], "flip_test": flip_test, "precision": precision,
        "channels_last": bool(config.channels_last), "device": device_type, "crops": crops.key,
        "batch_size": int(config.batch_size), "shard_size": int(config.shard_size),
        "samples_sha256": _array_sha(image_id, bbox, f),
        # Another GPU kind, or TF32 / cuDNN autotuning, can change the last bits: never mix their shards.
        "device_names": _device_names(device_type, world_size), **numerics_used,
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
                     "decode": config.decode, "cpu_threads": cpu_threads, "seed": int(config.seed),
                     **numerics_used, "device_check": config.device_check},
        "precision_check": precision_check,
        "device_check": device_check,
        "crop_check": crop_check,
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

