"""Batched, flip-tested, AMP, multi-process, resumable inference over a Human3.6M test set.

`run_inference(model_spec, checkpoint_or_model, test_set, image_paths, config)` streams the test
images, never holding more than a few batches: DataLoader workers read the JPEG bytes in the background.
On CUDA, nvjpeg decodes them batched on the GPU (or the workers decode, with `gpu_decode=False`), and
crop, normalisation, flip and forward run batched on the GPU with fp16 autocast. On CPU the workers also
decode, crop and normalise (batched), so that work overlaps the forward pass on the shared cores. The model's
`ModelSpec` alone decides input size, normalisation and output decoding.

Work is cut into shards of `shard_size` consecutive samples. Shard k goes to rank k % world_size; each
shard is split into batches from its own start, so every sample is computed in the same batch whatever
the number of processes (1-process and 2-process CPU runs give identical numbers). Each finished shard
is written atomically to `out_dir/shards/shard_#####.npz` with a fingerprint of (model weights, spec,
settings, samples); a rerun with `resume=True` reuses matching shards and never mixes in stale ones.
With world_size > 1 one spawned process per device works through its shards inside a `torch.distributed`
process group (NCCL on CUDA, gloo on CPU): after its shards, each rank gathers to rank 0 what it computed
(its shard list and statistics), and rank 0 checks that every shard was done exactly once. The shard files
are the data path, so an interrupted run keeps its finished shards. The parent then writes
`out_dir/predictions.npz` atomically from the shards, in sample order:

pose models (`spec.kind == "pose"`): `image_id` (N,) int64, `coords` (N,J,3) float32 heatmap units after
    the flip merge, `output_shape` (2,) (H, W), `depth_dim` (), `bbox` (N,4) the crop boxes, and the
    extras `model_id`, `kind`, `flip_test`.
RootNet (`spec.kind == "root"`): `image_id`, `root_output` (N,3) float32 raw network output (x, y
    heatmap pixels, z mm), `root_cam` (N,3) float64 camera mm, `bbox`, `output_shape`, `depth_dim`,
    `model_id`, `kind`, `flip_test` (always false: the official RootNet test runs no flip test).
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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import geometry
from .atomic import save_npz, write_json
from .h36m import DataError
from .pipeline import crop_images, flip_images, flip_test_merge, normalize, pad_batch

PREDICTIONS_FILE = "predictions.npz"
SHARD_DIR = "shards"
_FINGERPRINT_VERSION = 1


class ImageReadError(DataError):
    """A test image could not be read or decoded; the message names the file."""


@dataclass
class InferenceConfig:
    """Settings of one inference run. Defaults suit a Kaggle T4; every field is recorded in the result."""

    batch_size: int = 64
    flip_test: bool = True
    amp: bool | None = None  # fp16 autocast; None means on for CUDA. Always off on CPU.
    channels_last: bool = True
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    world_size: int | None = None  # processes, one per device; None: number of CUDA GPUs, 1 on CPU
    num_workers: int = 2  # background processes reading (and on CPU decoding) the JPEGs, per rank
    image_limit: int | None = None  # evaluate only the first K samples
    shard_size: int = 1024  # samples per shard file (a multiple of batch_size avoids short batches)
    out_dir: str | os.PathLike = "outputs/inference"
    resume: bool = True
    seed: int = 0
    cpu_threads: int | None = None  # torch threads per process on CPU; None: the cores split over the ranks
    gpu_decode: bool = True  # decode with nvjpeg on CUDA (batched); False decodes in the CPU workers
    progress: bool = True


@dataclass
class _Job:
    """Everything a rank needs; picklable so `torch.multiprocessing.spawn` can hand it over."""

    model: torch.nn.Module
    kind: str
    input_shape: tuple[int, int]
    output_shape: tuple[int, int]
    normalization: str
    flip_pairs: tuple[tuple[int, int], ...]
    paths: list[str]
    bbox: np.ndarray  # (N, 4) float64
    f: np.ndarray  # (N, 2) float64
    shards: list[tuple[int, int, int]]  # (shard index, first sample, end sample)
    shard_dir: str
    fingerprint: str
    batch_size: int
    flip_test: bool
    amp: bool
    channels_last: bool
    device_type: str
    world_size: int
    num_workers: int
    cpu_threads: int
    gpu_decode: bool
    seed: int
    progress: bool
    output_width: tuple[int, ...] = ()  # per-image output shape: (J, 3) pose, (3,) root
    reuse: set = field(default_factory=set)  # shard indices already complete on disk
    dist_init_method: str = ""  # rendezvous of the process group (world_size > 1), on the loopback interface


# ---------------------------------------------------------------- reading images

def _decode_rgb(data: torch.Tensor, device: str = "cpu"):
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 flags its image codecs as deprecated on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _short(exc: Exception) -> str:
    """The last line of a torchvision codec error, without the C++ source location."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.split(", ")[-1] if "decode_jpeg" in text else text


def _image_error(path: str, reason: str) -> ImageReadError:
    return ImageReadError(f"test image {path} {reason}. Replace the file with the original JPEG (or remove it "
                          "and rerun with the skip-missing-images option, which records it as skipped).")


def _read_jpeg_bytes(path: str) -> torch.Tensor:
    try:
        data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    except OSError as exc:
        raise _image_error(path, f"cannot be read ({exc.strerror or exc})") from None
    if data.numel() == 0:
        raise _image_error(path, "is empty (0 bytes)")
    return data


def read_image(path: str | os.PathLike, decode: bool = True) -> torch.Tensor:
    """One JPEG as uint8 RGB (3, H, W), or its raw bytes with `decode=False`; ImageReadError names the file."""
    data = _read_jpeg_bytes(str(path))
    if not decode:
        return data
    try:
        return _decode_rgb(data)
    except RuntimeError as exc:
        raise _image_error(str(path), f"is not a readable JPEG ({_short(exc)})") from None


class _BatchReader(torch.utils.data.Dataset):
    """Item i = one batch of sample positions, read in a loader worker at one of three stages:

    "bytes": the raw JPEG bytes (nvjpeg decodes them on the GPU);
    "images": decoded into one zero-padded (B,3,H,W) uint8 tensor (`pipeline.pad_batch`): one transfer
        to the device, no concatenation in the device process;
    "inputs": also cropped and normalised: the network input (B,3,h,w) float32. Used on CPU, where the
        worker processes share the cores with the model: that work then overlaps the forward pass.
    Errors are returned as data, not raised, so the main process reports the path cleanly instead of a
    DataLoader worker traceback.
    """

    def __init__(self, paths: Sequence[str], batches: Sequence[np.ndarray], stage: str, bbox: np.ndarray,
                 input_shape: tuple[int, int], normalization: str, channels_last: bool):
        self.paths, self.batches, self.stage = paths, batches, stage
        self.bbox, self.input_shape, self.normalization = bbox, input_shape, normalization
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        positions = self.batches[i]
        try:
            images = [read_image(self.paths[pos], decode=self.stage != "bytes") for pos in positions]
        except ImageReadError as exc:
            return {"positions": positions, "error": str(exc)}
        if self.stage == "bytes":
            return {"positions": positions, "bytes": images, "error": None}
        padded = pad_batch(images)
        if self.stage == "images":
            return {"positions": positions, "images": padded, "error": None}
        inputs = prepare_inputs(padded, self.bbox[positions], input_shape=self.input_shape,
                                normalization=self.normalization, channels_last=self.channels_last)
        return {"positions": positions, "inputs": inputs, "error": None}


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding is single-threaded; leave the cores to the model


# ---------------------------------------------------------------- forward pass

# Mixed precision is float16: Kaggle's T4 (sm_75) has no bfloat16 support.
AMP_DTYPE = torch.float16


def forward_batch(model: torch.nn.Module, x: torch.Tensor, *, kind: str, flip_test: bool, amp: bool,
                  output_width: int, flip_pairs, k: torch.Tensor | None = None) -> torch.Tensor:
    """Run the model on a normalised batch `x` (B,3,H,W), with the flip test as ONE forward of 2B images.

    `amp` runs the forward under float16 autocast on `x`'s device (the engine enables it on CUDA only).
    Pose: returns (B,J,3) float32 heatmap units (flip-merged when `flip_test`). Root: `k` (B,1) is
    required, no flip test, returns (B,3) float32 (x, y heatmap pixels, z mm).
    """
    batch = x.shape[0]
    if flip_test and kind == "pose":
        x = torch.cat([x, flip_images(x)])
    autocast = torch.autocast(device_type=x.device.type, dtype=AMP_DTYPE) if amp else contextlib.nullcontext()
    with autocast:
        out = model(x, k) if kind == "root" else model(x)
    out = out.float()  # the soft-argmax runs in float32 inside the models; keep the coordinates float32
    if flip_test and kind == "pose":
        out = flip_test_merge(out[:batch], out[batch:], output_width, flip_pairs)
    return out


def prepare_inputs(images, bboxes, *, input_shape, normalization: str, channels_last: bool) -> torch.Tensor:
    """Crop and normalise a batch of decoded images (one device): the network input (B,3,H,W) float32."""
    x = normalize(crop_images(images, bboxes, input_shape), normalization)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


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
        raise _RankStartError(f"process {rank} could not use GPU {device} ({_short(exc)})") from exc
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
        raise _RankStartError(f"process {rank} could not move the model to {device} ({_short(exc)})") from exc
    if job.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mine = [s for s in job.shards if s[0] % job.world_size == rank]
    to_compute = [s for s in mine if s[0] not in job.reuse]
    batches, batch_shard = [], []
    for index, first, end in to_compute:
        for start in range(first, end, job.batch_size):
            batches.append(np.arange(start, min(start + job.batch_size, end)))
            batch_shard.append(index)
    shard_bounds = {index: (first, end) for index, first, end in to_compute}

    if job.gpu_decode:  # nvjpeg on the device (run_inference sets it on CUDA only; tests force it on CPU)
        stage = "bytes"
    elif device.type == "cuda":
        stage = "images"
    else:  # crop in the workers only when there are workers: with none, everything runs here anyway
        stage = "inputs" if job.num_workers > 0 else "images"
    decoder = _DeviceDecoder(device, rank)
    reader = _BatchReader(job.paths, batches, stage, job.bbox, job.input_shape, job.normalization,
                          job.channels_last)
    loader = torch.utils.data.DataLoader(
        reader, batch_size=None, shuffle=False, num_workers=job.num_workers,
        pin_memory=device.type == "cuda" and stage != "bytes", worker_init_fn=_worker_init,
        prefetch_factor=4 if job.num_workers else None, persistent_workers=False)

    from tqdm.auto import tqdm

    done_before = sum(end - first for index, first, end in mine if index in job.reuse)
    bar = tqdm(total=sum(end - first for _, first, end in mine), initial=done_before, unit="img",
               desc=f"inference rank {rank}/{job.world_size}" if job.world_size > 1 else "inference",
               disable=not job.progress or rank != 0, dynamic_ncols=True)
    out_w = job.output_shape[1]
    pending: dict[int, list[np.ndarray]] = {}
    images_done, peak_mb, batch_end_times = 0, _memory_now_mb(device), []
    start_time = time.perf_counter()
    with torch.inference_mode():
        for item, shard in zip(loader, batch_shard):
            if item["error"] is not None:
                raise ImageReadError(item["error"])
            positions = item["positions"].numpy() if torch.is_tensor(item["positions"]) else item["positions"]
            if stage == "inputs":
                x = item["inputs"]
            else:
                images = (decoder(item["bytes"], [job.paths[p] for p in positions])
                          if stage == "bytes" else item["images"].to(device, non_blocking=True))
                x = prepare_inputs(images, job.bbox[positions], input_shape=job.input_shape,
                                   normalization=job.normalization, channels_last=job.channels_last)
            k = None
            if job.kind == "root":
                k = torch.from_numpy(geometry.rootnet_k_value(job.bbox[positions], job.f[positions])).to(device)
            out = forward_batch(model, x, kind=job.kind, flip_test=job.flip_test, amp=job.amp,
                                output_width=out_w, flip_pairs=job.flip_pairs, k=k)
            if tuple(out.shape) != (len(positions),) + job.output_width:
                raise ValueError(f"the model returned shape {tuple(out.shape)} for {len(positions)} images; its spec "
                                 f"expects {(len(positions),) + job.output_width} (pose: joint_num x 3, root: 3)")
            pending.setdefault(shard, []).append(out.cpu().numpy())
            images_done += len(positions)
            batch_end_times.append(time.perf_counter())
            peak_mb = max(peak_mb, _memory_now_mb(device))
            bar.update(len(positions))
            first, end = shard_bounds[shard]
            if positions[-1] == end - 1:  # the shard's last batch: write it, free its memory
                _write_shard(_shard_path(job.shard_dir, shard), job.fingerprint, first,
                             np.concatenate(pending.pop(shard)))
    bar.close()
    elapsed = time.perf_counter() - start_time
    # Throughput without the first batch, which also pays for starting the loader workers.
    steady = ((images_done - len(batches[0])) / (batch_end_times[-1] - batch_end_times[0])
              if len(batch_end_times) > 1 and batch_end_times[-1] > batch_end_times[0] else None)
    return {"rank": rank, "images": images_done, "inference_s": elapsed, "steady_images_per_s": steady,
            "peak_memory_mb": peak_mb, "shards_computed": len(to_compute), "shards_reused": len(mine) - len(to_compute),
            "shards_done": [s[0] for s in mine],
            "gpu_decode_fallback_batches": decoder.fallback_batches}


# Consecutive batches nvjpeg must fail before a rank stops trying it: then it cannot decode these files at all.
GPU_DECODE_ATTEMPTS = 3


class _DeviceDecoder:
    """Batched nvjpeg decoding onto `device`, falling back to the CPU decoder for a batch nvjpeg rejects
    (an unsupported JPEG variant, a torchvision built without nvjpeg, no GPU memory left). A file that the
    CPU decoder cannot read either is corrupt: ImageReadError names it. Notes are printed, and the number
    of batches decoded on the CPU is part of the rank's statistics."""

    def __init__(self, device: torch.device, rank: int = 0):
        self.device, self.rank = device, rank
        self.gpu_enabled = True
        self.fallback_batches = 0  # batches decoded on the CPU
        self._failures_in_a_row = 0

    def __call__(self, data: list[torch.Tensor], paths: list[str]):
        reason = None
        if self.gpu_enabled:
            try:
                images = _decode_rgb(data, device=self.device)  # a list in, a list of (3,H,W) uint8 out
                self._failures_in_a_row = 0
                return images
            except RuntimeError as exc:
                reason = _short(exc)
        images = []
        for blob, path in zip(data, paths):
            try:
                images.append(_decode_rgb(blob))
            except RuntimeError as exc:
                raise _image_error(path, f"is not a readable JPEG ({_short(exc)})") from None
        self.fallback_batches += 1
        if reason is not None:
            self._note_gpu_failure(reason, paths[0])
        return pad_batch(images).to(self.device)  # one transfer for the batch

    def _note_gpu_failure(self, reason: str, first_path: str) -> None:
        from tqdm.auto import tqdm

        self._failures_in_a_row += 1
        where = f"rank {self.rank}: " if self.rank else ""
        if self.fallback_batches == 1:
            tqdm.write(f"note: {where}GPU JPEG decoding (nvjpeg) failed for the batch starting at {first_path} "
                       f"({reason}); that batch was decoded on the CPU instead (slower; the two decoders may differ by "
                       "about one grey level).")
        if self._failures_in_a_row >= GPU_DECODE_ATTEMPTS:
            self.gpu_enabled = False
            tqdm.write(f"note: {where}GPU JPEG decoding failed for {GPU_DECODE_ATTEMPTS} batches in a row; the "
                       "rest of this run decodes on the CPU. Pass gpu_decode=False to skip the attempt next time.")


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
        info = info if isinstance(info, dict) else {"info": str(info)}
        return model, info
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
    if config.num_workers < 0:
        raise ValueError(f"num_workers must be >= 0; got {config.num_workers}")
    if config.image_limit is not None:
        if int(config.image_limit) < 1:
            raise ValueError(f"image_limit must be None or a positive number of samples; got {config.image_limit}")
        n = min(n, int(config.image_limit))
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
    test_set: an `h36m.TestSet` (uses image_id, bbox and, for RootNet, f and c).
    image_paths: one JPEG path per sample, e.g. `h36m.resolve_image_paths(test_set, root)`.
    A model run in this process (world_size 1) is moved to the device in place and put in eval mode.

    Returns a dict: `predictions_path`, `predictions` (the arrays written), `num_samples`, `timing`
    {inference_s, images, images_per_s, steady_images_per_s, wall_s}, `peak_memory_mb` and
    `memory_kind` ("rss" on CPU, "cuda_max_allocated" on CUDA), `settings` (result.json block),
    `shards` {total, computed, reused}, `fingerprint`, `model_sha256`, `checkpoint` (loader info).
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
    amp = bool(device_type == "cuda" and (config.amp if config.amp is not None else True))
    flip_test = bool(config.flip_test and spec.kind == "pose")  # RootNet's official test has no flip test
    gpu_decode = bool(config.gpu_decode and device_type == "cuda")
    cpu_threads = int(config.cpu_threads or max(1, torch.get_num_threads() // world_size))

    model, checkpoint_info = _resolve_model(spec, checkpoint_or_model)
    image_id = np.asarray(test_set.image_id[:n], dtype=np.int64)
    bbox = np.asarray(test_set.bbox[:n], dtype=np.float64)
    f = np.asarray(test_set.f[:n], dtype=np.float64) if spec.kind == "root" else np.zeros((n, 2))
    paths = [str(p) for p in image_paths[:n]]

    weights_sha = model_sha256(model)
    numerics = {  # everything that can change a predicted number; world_size and threads deliberately not
        "version": _FINGERPRINT_VERSION, "model_sha256": weights_sha, "model_id": spec.model_id, "kind": spec.kind,
        "input_shape": list(spec.input_shape), "output_shape": list(spec.output_shape),
        "depth_dim": spec.depth_dim, "normalization": spec.normalization,
        "flip_pairs": [list(p) for p in spec.flip_pairs], "flip_test": flip_test, "amp": amp,
        "channels_last": bool(config.channels_last), "device": device_type, "gpu_decode": gpu_decode,
        "batch_size": int(config.batch_size), "shard_size": int(config.shard_size),
        "samples_sha256": _array_sha(image_id, bbox, f), "paths_sha256": hashlib.sha256("\n".join(paths).encode()).hexdigest(),
    }
    fingerprint = hashlib.sha256(json.dumps(numerics, sort_keys=True).encode()).hexdigest()

    out_dir = Path(config.out_dir)
    shard_dir = out_dir / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards = [(i, first, min(first + config.shard_size, n)) for i, first in enumerate(range(0, n, config.shard_size))]
    width = (3,) if spec.kind == "root" else (spec.joint_num, 3)
    reuse = ({i for i, first, end in shards if _shard_ok(_shard_path(shard_dir, i), fingerprint, first, end - first, width)}
             if config.resume else set())

    job = _Job(model=model, kind=spec.kind, input_shape=tuple(spec.input_shape),
               output_shape=tuple(spec.output_shape), normalization=spec.normalization,
               flip_pairs=tuple(tuple(p) for p in spec.flip_pairs), paths=paths, bbox=bbox, f=f, shards=shards,
               shard_dir=str(shard_dir), fingerprint=fingerprint, batch_size=int(config.batch_size),
               flip_test=flip_test, amp=amp, channels_last=bool(config.channels_last), device_type=device_type,
               world_size=world_size, num_workers=int(config.num_workers), cpu_threads=cpu_threads,
               gpu_decode=gpu_decode, seed=int(config.seed), progress=bool(config.progress), output_width=width,
               reuse=reuse)
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
    predictions = _predictions_arrays(spec, output, image_id, bbox, test_set, n, flip_test)
    predictions_path = save_npz(out_dir / PREDICTIONS_FILE, **predictions)

    ranks = stats["ranks"]
    images = sum(r["images"] for r in ranks)
    inference_s = max((r["inference_s"] for r in ranks), default=0.0)
    steadies = [r["steady_images_per_s"] for r in ranks if r["steady_images_per_s"]]
    return {
        "predictions_path": str(predictions_path),
        "predictions": predictions,
        "num_samples": n,
        "timing": {"inference_s": inference_s, "images": images,
                   "images_per_s": images / inference_s if inference_s > 0 else None,
                   "steady_images_per_s": sum(steadies) if len(steadies) == len(ranks) and ranks else None,
                   "wall_s": time.perf_counter() - wall_start},
        "peak_memory_mb": max((r["peak_memory_mb"] for r in ranks), default=None),
        "memory_kind": "cuda_max_allocated" if device_type == "cuda" else "rss",
        "settings": {"batch_size": int(config.batch_size), "amp": amp, "device": device_type,
                     "world_size": world_size, "flip_test": flip_test, "image_limit": config.image_limit,
                     "channels_last": bool(config.channels_last), "num_workers": int(config.num_workers),
                     "shard_size": int(config.shard_size), "gpu_decode": gpu_decode, "cpu_threads": cpu_threads,
                     "seed": int(config.seed)},
        "shards": {"total": len(shards), "reused": len(reuse), "computed": len(shards) - len(reuse)},
        "fingerprint": fingerprint,
        "model_sha256": weights_sha,
        "checkpoint": checkpoint_info,
        "rank_stats": ranks,
    }


def _predictions_arrays(spec, output, image_id, bbox, test_set, n, flip_test) -> dict:
    # input_shape and depth_extent_mm make the file self-describing for `rescore` (crop aspect, depth range).
    common = {"output_shape": np.array(spec.output_shape, dtype=np.int64),
              "depth_dim": np.array(spec.depth_dim, dtype=np.int64), "bbox": bbox,
              "input_shape": np.array(spec.input_shape, dtype=np.int64),
              "depth_extent_mm": np.array(spec.depth_extent_mm, dtype=np.float64),
              "model_id": np.array(spec.model_id), "kind": np.array(spec.kind), "flip_test": np.array(flip_test)}
    if spec.kind == "pose":
        return {"image_id": image_id, "coords": output, **common}
    out_h, out_w = spec.output_shape
    u = output[:, 0].astype(np.float64) / out_w * bbox[:, 2] + bbox[:, 0]
    v = output[:, 1].astype(np.float64) / out_h * bbox[:, 3] + bbox[:, 1]
    root_cam = geometry.pixel_to_camera(np.stack([u, v, output[:, 2].astype(np.float64)], axis=1),
                                        np.asarray(test_set.f[:n], dtype=np.float64),
                                        np.asarray(test_set.c[:n], dtype=np.float64))
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
        raise _RankStartError(f"process {rank} could not join the {backend} process group ({_short(exc)})") from exc


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
    fallbacks = sum(r["gpu_decode_fallback_batches"] for r in ranks)
    if fallbacks:  # the processes' own notes go to the server's terminal, not to the notebook
        print(f"note: {fallbacks} batches were decoded on the CPU because GPU JPEG decoding (nvjpeg) failed "
              "for them (slower; the two decoders may differ by about one grey level).")
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

