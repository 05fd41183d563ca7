"""Decode and crop each test image once per crop rule; every model and notebook run reuses the uint8 crops.

A crop rule is what decides the pixels a model sees: the images (paths, file sizes and times), their
processed boxes (which follow from the annotations, the box source and the box rule), the crop size, the
decoder and the crop algorithm. Its fingerprint is the cache key. The crops are stored under
`<cache_dir>/crops/<key>/` as uint8 `(n, 3, H, W)` chunk files (`.npy`, read memory-mapped), each written
atomically, so an interrupted build resumes with the chunks it finished. A `manifest.json` says what the
folder holds. Cached and freshly computed crops are the same bytes, so predictions do not depend on the cache.

Decoding is on the CPU by default (the exact path: the same pixels as `cv2.imread`). `decode="gpu"` decodes
with nvjpeg on CUDA; it is checked against the CPU decoder on a sample of the run's own images first, and the
deviation is recorded in `decode_check`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .atomic import atomic_path, write_json
from .images import ImageReadError, decode_rgb, image_error, read_image, short_error
from .pipeline import crop_images, pad_batch

CROP_CACHE_VERSION = 1  # bump when the crop arithmetic or the file layout changes
CHUNK_SIZE = 256  # crops per chunk file: 48 MB at 256x256
DECODE_CHECK_IMAGES = 8  # images decoded by both decoders before a GPU-decoded build
DECODERS = ("cpu", "gpu")


@dataclass
class CropStore:
    """The cached crops of one rule: `read(start, end)` returns `(end-start, 3, H, W)` uint8 (a copy).

    Picklable (paths and numbers only), so spawned inference processes open the same files."""

    key: str
    folder: str
    count: int
    input_shape: tuple[int, int]
    chunk_size: int = CHUNK_SIZE
    hits: int = 0  # crops this build found in the cache
    misses: int = 0  # crops this build computed
    images_decoded: int = 0  # JPEG decodes this build did
    decode: str = "cpu"
    decode_check: dict | None = None
    _maps: dict = field(default_factory=dict, repr=False, compare=False)

    def _chunk(self, index: int) -> np.ndarray:
        if index not in self._maps:
            self._maps[index] = np.load(_chunk_path(self.folder, index), mmap_mode="r", allow_pickle=False)
        return self._maps[index]

    def read(self, start: int, end: int, out: np.ndarray | None = None) -> np.ndarray:
        """Crops `start:end`; copied into `out` (e.g. a pinned host buffer) when given, which is returned."""
        if not 0 <= start <= end <= self.count:
            raise IndexError(f"crop range {start}:{end} is outside 0:{self.count}")
        if out is None:
            out = np.empty((end - start, 3, *self.input_shape), np.uint8)
        pos = start
        while pos < end:
            index, offset = divmod(pos, self.chunk_size)
            take = min(end - pos, self.chunk_size - offset)
            out[pos - start:pos - start + take] = self._chunk(index)[offset:offset + take]
            pos += take
        return out

    def take(self, positions: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """Crops at arbitrary positions (sorted or not), `(len, 3, H, W)` uint8; into `out` when given."""
        if out is None:
            out = np.empty((len(positions), 3, *self.input_shape), np.uint8)
        for row, p in enumerate(positions):
            out[row] = self._chunk(p // self.chunk_size)[p % self.chunk_size]
        return out

    def summary(self) -> dict:
        """The `crop_cache` block of result.json."""
        return {"key": self.key, "hits": int(self.hits), "misses": int(self.misses), "decode": self.decode}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = {}  # memory maps are reopened in each process
        return state


def _chunk_path(folder: str | Path, index: int) -> Path:
    return Path(folder) / f"chunk_{index:05d}.npy"


def crop_cache_key(paths: Sequence[str], bbox: np.ndarray, input_shape: Sequence[int], decode: str = "cpu",
                   rule: dict | None = None) -> str:
    """Fingerprint of a crop rule (see the module docstring). `rule` adds descriptive fields (box source, box
    rule) so two rules that happen to give the same boxes still get their own folder name in the manifest."""
    digest = hashlib.sha256()
    header = {"version": CROP_CACHE_VERSION, "input_shape": [int(v) for v in input_shape], "decode": decode,
              "rule": rule or {}, "count": len(paths)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    boxes = np.ascontiguousarray(np.asarray(bbox, dtype=np.float64))
    digest.update(boxes.tobytes())
    for path in paths:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{path}|{stamp}\n".encode())
    return digest.hexdigest()


def _chunk_ok(path: Path, rows: int, input_shape: tuple[int, int]) -> bool:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        return arr.dtype == np.uint8 and arr.shape == (rows, 3, *input_shape)
    except (OSError, ValueError, EOFError):
        return False


class _ChunkReader(torch.utils.data.Dataset):
    """Item i = one batch of sample positions: decoded and cropped on the CPU (or the raw JPEG bytes for GPU
    decoding). Errors come back as data, so the main process reports the file instead of a worker traceback."""

    def __init__(self, paths, bbox, batches, input_shape, gpu: bool):
        self.paths, self.bbox, self.batches, self.input_shape, self.gpu = paths, bbox, batches, input_shape, gpu

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        positions = self.batches[i]
        try:
            images = [read_image(self.paths[p], decode=not self.gpu) for p in positions]
        except ImageReadError as exc:
            return {"positions": positions, "error": str(exc)}
        if self.gpu:
            return {"positions": positions, "bytes": images, "error": None}
        return {"positions": positions, "error": None,
                "crops": crop_images(pad_batch(images), self.bbox[positions], self.input_shape)}


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding is single-threaded; leave the cores to the other workers


def _require_cuda(device: torch.device) -> None:
    if device.type != "cuda":
        raise ValueError("decode=\"gpu\" decodes with nvjpeg and needs a CUDA device; use decode=\"cpu\"")


def _gpu_decode(data: list[torch.Tensor], paths: list[str], device: torch.device) -> list[torch.Tensor]:
    try:
        return decode_rgb(data, device=device)
    except RuntimeError as exc:
        raise ImageReadError(f"GPU JPEG decoding (nvjpeg) failed for the batch starting at {paths[0]} "
                             f"({short_error(exc)}); rerun with DECODE = \"cpu\" (the exact path)") from None


def check_gpu_decoder(paths: Sequence[str], bbox: np.ndarray, input_shape, device: torch.device,
                      count: int = DECODE_CHECK_IMAGES) -> dict:
    """Decode `count` of the run's images (spread evenly) with nvjpeg and on the CPU; compare pixels and crops."""
    picks = np.unique(np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(np.int64))
    data = [read_image(paths[p], decode=False) for p in picks]
    gpu = _gpu_decode(data, [paths[p] for p in picks], device)
    pixel_diff, crop_diff, identical = 0, 0, True
    for k, p in enumerate(picks):
        try:
            cpu = decode_rgb(data[k])
        except RuntimeError as exc:
            raise image_error(paths[p], f"is not a readable JPEG ({short_error(exc)})") from None
        other = gpu[k].cpu()
        if other.shape != cpu.shape:
            raise ImageReadError(f"nvjpeg decoded {paths[p]} to {tuple(other.shape)}, the CPU to {tuple(cpu.shape)}")
        pixel_diff = max(pixel_diff, int((other.int() - cpu.int()).abs().max()))
        crops = crop_images(torch.stack([cpu, other]), np.repeat(bbox[p:p + 1], 2, 0), input_shape)
        crop_diff = max(crop_diff, int((crops[0].int() - crops[1].int()).abs().max()))
        identical &= bool(torch.equal(other, cpu))
    return {"decoder": "nvjpeg", "images_compared": int(len(picks)), "max_abs_diff_pixels": pixel_diff,
            "max_abs_diff_crop": crop_diff, "identical": identical}


def ensure_crops(paths: Sequence[str], bbox, input_shape: Sequence[int], *, cache_dir: str | os.PathLike,
                 rule: dict | None = None, decode: str = "cpu", device: str | torch.device = "cpu",
                 num_workers: int = 2, batch_size: int = 32, progress: bool = True) -> CropStore:
    """The crops of `paths` with `bbox` at `input_shape`, from the cache where present, else decoded and cropped
    (then cached). Returns a `CropStore` with this build's hits, misses and decodes."""
    if decode not in DECODERS:
        raise ValueError(f"decode must be one of {', '.join(DECODERS)}; got {decode!r}")
    paths = [str(p) for p in paths]
    bbox = np.asarray(bbox, dtype=np.float64)
    input_shape = tuple(int(v) for v in input_shape)
    if bbox.shape != (len(paths), 4):
        raise ValueError(f"need one box per image: {len(paths)} paths, boxes of shape {bbox.shape}")
    device = torch.device(device)
    if decode == "gpu":
        _require_cuda(device)
    key = crop_cache_key(paths, bbox, input_shape, decode, rule)
    folder = Path(cache_dir) / "crops" / key[:32]
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"key": key, "version": CROP_CACHE_VERSION, "count": len(paths), "input_shape": list(input_shape),
                "chunk_size": CHUNK_SIZE, "decode": decode, "rule": rule or {}, "dtype": "uint8",
                "layout": "(n, 3, H, W) RGB per chunk_#####.npy"}
    if not (folder / "manifest.json").is_file():
        write_json(folder / "manifest.json", manifest)
    store = CropStore(key=key, folder=str(folder), count=len(paths), input_shape=input_shape, decode=decode,
                      chunk_size=CHUNK_SIZE)

    chunks = [(i, first, min(first + CHUNK_SIZE, len(paths))) for i, first in enumerate(range(0, len(paths), CHUNK_SIZE))]
    missing_chunks = [c for c in chunks if not _chunk_ok(_chunk_path(folder, c[0]), c[2] - c[1], input_shape)]
    store.misses = sum(end - first for _, first, end in missing_chunks)
    store.hits = len(paths) - store.misses
    if not missing_chunks:
        return store
    if decode == "gpu":
        store.decode_check = check_gpu_decoder(paths, bbox, input_shape, device)
        store.images_decoded += 2 * store.decode_check["images_compared"]

    batches, owner = [], []
    for index, first, end in missing_chunks:
        for start in range(first, end, batch_size):
            batches.append(np.arange(start, min(start + batch_size, end)))
            owner.append(index)
    reader = _ChunkReader(paths, bbox, batches, input_shape, gpu=decode == "gpu")
    loader = torch.utils.data.DataLoader(reader, batch_size=None, shuffle=False, num_workers=num_workers,
                                         worker_init_fn=_worker_init, prefetch_factor=4 if num_workers else None)
    from tqdm.auto import tqdm

    bar = tqdm(total=store.misses, unit="img", desc="decode + crop (cached for later runs)",
               disable=not progress, dynamic_ncols=True)
    bounds = {index: (first, end) for index, first, end in missing_chunks}
    pending: dict[int, list[np.ndarray]] = {}
    for item, index in zip(loader, owner):
        if item["error"] is not None:
            raise ImageReadError(item["error"])
        positions = np.asarray(item["positions"])
        if decode == "gpu":
            images = _gpu_decode(item["bytes"], [paths[p] for p in positions], device)
            crops = crop_images(images, bbox[positions], input_shape).cpu()
        else:
            crops = item["crops"]
        pending.setdefault(index, []).append(crops.numpy())
        store.images_decoded += len(positions)
        bar.update(len(positions))
        first, end = bounds[index]
        if positions[-1] == end - 1:  # the chunk's last batch: write it whole, atomically
            with atomic_path(_chunk_path(folder, index), suffix=".npy") as tmp:
                np.save(tmp, np.concatenate(pending.pop(index)))
    bar.close()
    return store
