"""Checkpoint reading, key cleaning, model detection and strict loading.

Checkpoints come from the internet, so nothing here ever runs pickled code:
- torch zip files (and legacy pickle files) go through `torch.load(weights_only=True)` with a narrow
  allow-list for the extras optimizer states may hold (numpy scalars, `defaultdict`);
- extracted torch-zip folders (`snapshot_83.pth/` with `data.pkl`, `data/`), and zips whose optimizer
  state torch's weights-only unpickler cannot build, go through our own restricted unpickler whose
  `find_class` knows only tensors, storages, plain containers and numpy scalars;
- tar archives are read in memory after refusing unsafe member names; nothing is extracted to disk.

Keys are cleaned timm-style (`module.`/`_orig_mod.` prefixes, wrapper dicts, one key filter per
family), the model is identified from tensor shapes alone by comparing with every registry model's
own `state_dict()` shapes, and the weights are loaded with `strict=True` only.
"""
from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import io
import math
import os
import pickle
import re
import tarfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .registry import MODEL_REGISTRY, get_spec


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not match a model; the message says what to do."""


_REDOWNLOAD_ADVICE = (
    "Re-download it (helpers.acquire.acquire_checkpoint verifies downloads), check the Google Drive id, "
    "or mirror the file to a Kaggle dataset once and load it from /kaggle/input."
)

_SHA_CHUNK = 1 << 20  # 1 MB

# --------------------------------------------------------------------------------------------------
# Format sniffing
# --------------------------------------------------------------------------------------------------
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_PICKLE_PROTO = b"\x80"
DRIVE_QUOTA_PHRASES = (
    "too many users have viewed or downloaded this file recently",
    "quota exceeded",
    "download quota",
)
_DRIVE_SCAN_PHRASES = ("virus scan warning", "can't scan this file for viruses", "download_warning")


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text[:2048]


def html_page_problem(head: bytes) -> str:
    """Explain an HTML page saved in place of a checkpoint (Drive quota, virus-scan page, error page)."""
    text = head.decode("utf-8", "replace").lower()
    if any(p in text for p in DRIVE_QUOTA_PHRASES):
        what = ("a Google Drive quota page (\"Too many users have viewed or downloaded this file recently\"; "
                "it clears within 24 h)")
    elif any(p in text for p in _DRIVE_SCAN_PHRASES):
        what = "Google Drive's 'cannot scan this file for viruses' confirmation page"
    elif "accounts.google.com" in text or "sign in" in text:
        what = "a Google sign-in page (the file is not shared publicly, or the Drive id is wrong)"
    else:
        what = "an HTML page"
    return f"this is {what}, not a checkpoint"


def sniff_format(path: str | os.PathLike) -> str:
    """Content-based format of a checkpoint path, whatever its extension.

    One of "torch-zip", "torch-zip-folder", "tar", "torch-legacy", "html", "empty", "folder", "unknown".
    """
    p = Path(path)
    if p.is_dir():
        return "torch-zip-folder" if _find_extracted_root(p) is not None else "folder"
    with open(p, "rb") as f:
        head = f.read(4096)
    return sniff_bytes(head, p)


def sniff_bytes(head: bytes, path: Path | None = None) -> str:
    """Format from a file's first bytes (see `sniff_format`); `path` lets old-style tars be recognised."""
    if not head:
        return "empty"
    if head.startswith(_ZIP_MAGIC) or head.startswith(_EMPTY_ZIP_MAGIC):
        return "torch-zip"
    if _looks_like_html(head):
        return "html"
    if head.startswith((_GZIP_MAGIC, _BZIP2_MAGIC, _XZ_MAGIC)):
        return "tar"  # compressed; whether it really holds a tar is checked when it is opened
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(_PICKLE_PROTO):
        return "torch-legacy"
    try:  # pre-POSIX tars have no "ustar" magic; tarfile checks the header checksum
        if path is not None and tarfile.is_tarfile(path):
            return "tar"
    except (OSError, tarfile.TarError):
        pass
    return "unknown"


def _format_problem(fmt: str, head: bytes, where: str) -> CheckpointError:
    if fmt == "empty":
        return CheckpointError(f"{where} is empty (0 bytes): the download failed or was interrupted. "
                               + _REDOWNLOAD_ADVICE)
    if fmt == "html":
        return CheckpointError(f"{where}: {html_page_problem(head)}. " + _REDOWNLOAD_ADVICE)
    return CheckpointError(f"{where} is not a checkpoint format this loader knows (first bytes {head[:16]!r}); "
                           "expected a torch zip (PK\\x03\\x04), a tar, or an extracted torch-zip folder "
                           "holding data.pkl. " + _REDOWNLOAD_ADVICE)


# --------------------------------------------------------------------------------------------------
# Safe reading
# --------------------------------------------------------------------------------------------------
def _numpy_safe_globals() -> list:
    core = getattr(np, "_core", None) or np.core
    out = [core.multiarray.scalar, np.dtype]
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, name):
            out.append(getattr(np.dtypes, name))
    return out


# What optimizer states in these files may hold besides tensors; none of these can run code.
_EXTRA_SAFE_GLOBALS = [collections.defaultdict, dict, list, *_numpy_safe_globals()]


def _torch_load_safely(source, map_location, where: str, zip_root: str | None = None):
    """`torch.load(weights_only=True)`; for torch zips whose optimizer state holds what that unpickler cannot
    build (e.g. a `defaultdict`), fall back to our own restricted unpickler, which refuses code just the same."""
    try:
        with torch.serialization.safe_globals(_EXTRA_SAFE_GLOBALS):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if zip_root is not None:
            if hasattr(source, "seek"):
                source.seek(0)
            return _read_zip_restricted(source, zip_root, where)
        match = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"references {match.group(1)}" if match else "contains objects"
        raise CheckpointError(
            f"refused to read {where}: its pickle {what}, which is not on the allow-list of safe types "
            "(tensors, numbers, strings, containers). Loading it unsafely could run arbitrary code; do not. "
            "Use the checkpoint from its official source.") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{where} is corrupt or truncated ({type(e).__name__}: {str(e)[:200]}). "
                              + _REDOWNLOAD_ADVICE) from None


def _read_zip_restricted(source, zip_root: str, where: str):
    try:
        with zipfile.ZipFile(source) as zf:
            def read_record(key: str) -> bytes:
                try:
                    return zf.read(f"{zip_root}/data/{key}")
                except KeyError:
                    raise CheckpointError(f"{where} lacks {zip_root}/data/{key}: the file is incomplete. "
                                          + _REDOWNLOAD_ADVICE) from None

            return _unpickle_restricted(zf.read(f"{zip_root}/data.pkl"), read_record, where)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{where} is corrupt or truncated ({e}). " + _REDOWNLOAD_ADVICE) from None


def _is_unsafe_member(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or bool(re.match(r"^[A-Za-z]:", name))


def check_torch_zip(source, where: str) -> str:
    """Validate a torch zip's directory and return its root folder (e.g. 'snapshot_83.pth', 'archive')."""
    try:
        with zipfile.ZipFile(source) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{where} is a truncated or corrupt zip ({e}). " + _REDOWNLOAD_ADVICE) from None
    bad = [n for n in names if _is_unsafe_member(n)]
    if bad:
        raise CheckpointError(f"{where} has unsafe member names ({', '.join(bad[:3])}): absolute paths or '..' "
                              "are refused. This is not a torch checkpoint.")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or f"{next(iter(roots))}/data.pkl" not in names:
        raise CheckpointError(f"{where} is a zip but not a torch checkpoint: expected one root folder holding "
                              f"data.pkl, found roots {sorted(roots)[:5]}. " + _REDOWNLOAD_ADVICE)
    return next(iter(roots))


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """Our own `_rebuild_tensor_v2`: a strided view into the storage, bounds-checked."""
    if not isinstance(storage, torch.Tensor):
        raise CheckpointError("malformed data.pkl: a tensor refers to something that is not a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or min((*size, *stride, int(storage_offset), 0)) < 0:
        raise CheckpointError("malformed data.pkl: negative or inconsistent tensor size/stride")
    last = int(storage_offset) + sum((s - 1) * st for s, st in zip(size, stride)) if all(size) else -1
    if last >= storage.numel():
        raise CheckpointError("malformed data.pkl: a tensor reaches past the end of its storage file")
    return storage.as_strided(size, stride, int(storage_offset))


def _rebuild_parameter(data, requires_grad, backward_hooks, *state):
    return data


def _numpy_scalar(dtype, data=None):
    dtype = np.dtype(dtype)
    if dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("malformed pickle: a numpy scalar without raw bytes")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _bytes_from_text(text, encoding="utf-8"):
    """Protocol-2 pickles store bytes as `_codecs.encode(str, 'latin1')`; only that use is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError("malformed pickle: unexpected _codecs.encode call")
    return text.encode("latin1")


def _safe_defaultdict(factory=None, *args):
    if factory not in (None, dict, list, set, int, float):
        raise CheckpointError("refused a defaultdict whose factory is not a plain container")
    return collections.defaultdict(factory, *args)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for `data.pkl` of an extracted torch-zip folder: allow-listed globals only."""

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): _safe_defaultdict,
        ("builtins", "dict"): dict,
        ("builtins", "list"): list,
        ("builtins", "set"): set,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _bytes_from_text,
    }

    def __init__(self, file, read_record: Callable[[str], bytes]):
        super().__init__(file)
        self._read_record = read_record
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "__builtin__":  # protocol-2 pickles use the Python 2 name
            module = "builtins"
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refused to unpickle {module}.{name}: not on the allow-list of safe types (tensors, storages, "
                "containers). A checkpoint that needs it could run arbitrary code; use the official file.") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise CheckpointError(f"malformed data.pkl: unexpected persistent id {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid
        if not re.fullmatch(r"[A-Za-z0-9_]+", key):
            raise CheckpointError(f"malformed data.pkl: storage key {key!r} is not a plain file name")
        if key not in self._storages:
            raw = self._read_record(key)
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if len(raw) != int(numel) * itemsize:
                raise CheckpointError(f"storage data/{key} holds {len(raw)} bytes, expected {int(numel) * itemsize}: "
                                      "the folder is truncated or corrupt. " + _REDOWNLOAD_ADVICE)
            buffer = bytearray(raw)
            self._storages[key] = (torch.frombuffer(buffer, dtype=storage_type.dtype) if buffer
                                   else torch.empty(0, dtype=storage_type.dtype))
        return self._storages[key]


def _unpickle_restricted(pickle_bytes: bytes, read_record: Callable[[str], bytes], where: str):
    try:
        return _RestrictedUnpickler(io.BytesIO(pickle_bytes), read_record).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{where}: data.pkl is malformed ({type(e).__name__}: {str(e)[:200]}). "
                              + _REDOWNLOAD_ADVICE) from None


def _find_extracted_root(folder: Path) -> Path | None:
    """`folder` itself or its only sub-folder holding `data.pkl` (Kaggle may unpack `X.tar` to `X/snapshot_N.pth/`)."""
    if (folder / "data.pkl").is_file():
        return folder
    roots = [d for d in sorted(folder.iterdir()) if d.is_dir() and (d / "data.pkl").is_file()]
    return roots[0] if len(roots) == 1 else None


def _read_extracted_folder(folder: Path, where: str):
    byteorder = folder / "byteorder"
    if byteorder.is_file() and byteorder.read_text().strip() not in ("", "little"):
        raise CheckpointError(f"{where} was saved on a big-endian machine; this loader reads little-endian only")
    data_dir = folder / "data"

    def read_record(key: str) -> bytes:
        record = data_dir / key
        if not record.is_file():
            raise CheckpointError(f"{where} lacks data/{key}: the extracted folder is incomplete. "
                                  + _REDOWNLOAD_ADVICE)
        return record.read_bytes()

    return _unpickle_restricted((folder / "data.pkl").read_bytes(), read_record, where)


def _read_tar(path: Path, map_location, where: str) -> tuple[Any, str, str | None]:
    """Read the one checkpoint inside a tar in memory: (object, inner format, zip root)."""
    try:
        tf = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CheckpointError(f"{where} is a truncated or corrupt archive ({e}). " + _REDOWNLOAD_ADVICE) from None
    with tf:
        try:
            members = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise CheckpointError(f"{where} is a truncated tar ({e}). " + _REDOWNLOAD_ADVICE) from None
        unsafe = [m.name for m in members if _is_unsafe_member(m.name) or not (m.isfile() or m.isdir())]
        if unsafe:
            raise CheckpointError(f"{where} has unsafe members ({', '.join(unsafe[:3])}): absolute paths, '..', "
                                  "links and devices are refused; nothing was extracted.")
        files = {PurePosixPath(m.name).as_posix(): m for m in members if m.isfile()}
        folder_roots = sorted(str(PurePosixPath(n).parent) for n in files if PurePosixPath(n).name == "data.pkl")
        candidates: list[tuple[str, str]] = [(r, "torch-zip-folder") for r in folder_roots]
        for name, member in files.items():
            if any(r == "." or name.startswith(f"{r}/") for r in folder_roots):
                continue  # part of an extracted folder
            fmt = sniff_bytes(tf.extractfile(member).read(4096))
            if fmt in ("torch-zip", "torch-legacy"):
                candidates.append((name, fmt))
        if len(candidates) != 1:
            listing = ", ".join(m.name for m in members[:8])
            found = ", ".join(c for c, _ in candidates)
            problem = f"{len(candidates)} checkpoints ({found})" if candidates else "no checkpoint"
            raise CheckpointError(f"{where} is a tar holding {problem}; expected exactly one torch zip, legacy torch "
                                  f"file or extracted folder. Members: {listing}")
        name, fmt = candidates[0]
        inner_where = f"{where} > {name}"
        if fmt == "torch-zip-folder":
            prefix = "" if name == "." else f"{name}/"

            def read_record(key: str) -> bytes:
                member = files.get(f"{prefix}data/{key}")
                if member is None:
                    raise CheckpointError(f"{inner_where} lacks data/{key}: the archive is incomplete. "
                                          + _REDOWNLOAD_ADVICE)
                return tf.extractfile(member).read()

            obj = _unpickle_restricted(tf.extractfile(files[f"{prefix}data.pkl"]).read(), read_record, inner_where)
            return obj, fmt, PurePosixPath(name).name if name != "." else None
        buffer = io.BytesIO(tf.extractfile(files[name]).read())
    root = check_torch_zip(buffer, inner_where) if fmt == "torch-zip" else None
    buffer.seek(0)
    return _torch_load_safely(buffer, map_location, inner_where, root), fmt, root


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (streamed in 1 MB chunks); of a folder: of its files' relative paths and bytes, sorted."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        if p.is_dir():
            h.update(q.relative_to(p).as_posix().encode() + b"\0")
        with open(q, "rb") as f:
            for chunk in iter(lambda: f.read(_SHA_CHUNK), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class RawCheckpoint:
    """What `read_checkpoint` found: the unpickled top-level object and where it came from."""

    obj: Any
    format: str
    path: str | None = None
    zip_root: str | None = None
    sha256: str | None = None


def read_checkpoint(path_or_state_dict, *, map_location="cpu") -> RawCheckpoint:
    """Read any supported checkpoint safely; no pickled code ever runs."""
    if isinstance(path_or_state_dict, Mapping):
        return RawCheckpoint(obj=path_or_state_dict, format="state-dict")
    path = Path(path_or_state_dict)
    where = str(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}. Check the path, or fetch it with "
                              "helpers.acquire.acquire_checkpoint (it also searches /kaggle/input).")
    if path.is_dir():
        root = _find_extracted_root(path)
        if root is None:
            raise CheckpointError(f"{where} is a folder without data.pkl: pass a checkpoint file, or the extracted "
                                  "torch-zip folder (e.g. snapshot_83.pth/ holding data.pkl, data/, version).")
        obj = _read_extracted_folder(root, where)
        return RawCheckpoint(obj, "torch-zip-folder", str(path), root.name, file_sha256(root))
    with open(path, "rb") as f:
        head = f.read(4096)
    fmt = sniff_bytes(head, path)
    if fmt == "torch-zip":
        root = check_torch_zip(path, where)
        obj = _torch_load_safely(str(path), map_location, where, root)
    elif fmt == "torch-legacy":
        root = None
        obj = _torch_load_safely(str(path), map_location, where)
    elif fmt == "tar":
        obj, inner, root = _read_tar(path, map_location, where)
        fmt = f"tar>{inner}"
    else:
        raise _format_problem(fmt, head, where)
    return RawCheckpoint(obj, fmt, str(path), root, file_sha256(path))


# --------------------------------------------------------------------------------------------------
# Key cleaning: wrapper dicts, prefixes, one filter per family
# --------------------------------------------------------------------------------------------------
_WRAPPER_KEYS = ("network", "state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")
DEMO_MARKER_KEY = "demo_note"  # written by helpers.demo_checkpoints next to 'network'


def unwrap_state_dict(obj: Any) -> tuple[dict, list[str]]:
    """The tensor dict inside `{'network': ...}` / `{'state_dict': ...}` / `{'model': ...}` wrappers."""
    notes: list[str] = []
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapper is None or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        notes.append(f"unwrapped '{wrapper}'")
        obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"no state dict found: the checkpoint holds a {type(obj).__name__}, not a dict of "
                              f"tensors (nor one under {', '.join(repr(k) for k in _WRAPPER_KEYS)})")
    bad = [(k, type(v).__name__) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        listing = ", ".join(f"{k} ({t})" for k, t in bad[:5])
        raise CheckpointError(f"the state dict has {len(bad)} entries that are not tensors: {listing}")
    return dict(obj), notes


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Remove DataParallel `module.` and torch.compile `_orig_mod.` prefixes."""
    counts = collections.Counter()
    out = {}
    for key, value in state_dict.items():
        new = key
        while new.startswith(_PREFIXES):
            prefix = next(p for p in _PREFIXES if new.startswith(p))
            counts[prefix] += 1
            new = new[len(prefix):]
        if new in out:
            raise CheckpointError(f"key {key!r} collides with another key once prefixes are removed")
        out[new] = value
    return out, [f"stripped '{p}' prefix ({n} keys)" for p, n in counts.items()]


_CNP_LEGACY_HEAD = re.compile(r"^(head\.deconv_layers_\d+)\.([012])\.(.+)$")
_CNP_LEGACY_NAMES = {"0": "dwconv", "1": "norm", "2": "pwconv"}


def filter_convnextpose(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """ConvNeXtPose: legacy head keys `head.deconv_layers_N.0/.1/.2` → `.dwconv/.norm/.pwconv`."""
    is_convnextpose = any(k.startswith("backbone.downsample_layers.") for k in state_dict)
    if not is_convnextpose or not any(_CNP_LEGACY_HEAD.match(k) for k in state_dict):
        return dict(state_dict), []
    out, renamed = {}, 0
    for key, value in state_dict.items():
        m = _CNP_LEGACY_HEAD.match(key)
        if m:
            key = f"{m.group(1)}.{_CNP_LEGACY_NAMES[m.group(2)]}.{m.group(3)}"
            renamed += 1
        out[key] = value
    return out, [f"ConvNeXtPose legacy head keys deconv_layers_N.0/.1/.2 -> dwconv/norm/pwconv ({renamed} keys)"]


# One key filter per family (timm's checkpoint_filter_fn pattern). Each acts only on its own sentinel keys,
# so all are applied before detection; families whose official keys equal ours need none.
FAMILY_KEY_FILTERS: dict[str, Callable[[Mapping[str, torch.Tensor]], tuple[dict, list[str]]]] = {
    "convnextpose": filter_convnextpose,
}


def clean_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Unwrap, strip prefixes and apply every family filter; returns the state dict and the remaps applied."""
    state_dict, notes = unwrap_state_dict(obj)
    state_dict, prefix_notes = strip_prefixes(state_dict)
    remaps = notes + prefix_notes
    for family_filter in FAMILY_KEY_FILTERS.values():
        state_dict, applied = family_filter(state_dict)
        remaps += applied
    return state_dict, remaps


@dataclass
class CheckpointContents:
    """A cleaned state dict plus what is known about its file."""

    state_dict: dict[str, torch.Tensor]
    format: str
    epoch: int | None
    remaps: list[str]
    path: str | None
    zip_root: str | None
    sha256: str | None
    is_random_demo: bool = False


def read_state_dict(path_or_state_dict, *, map_location="cpu") -> CheckpointContents:
    """Read a checkpoint safely and clean its keys (no model involved)."""
    raw = read_checkpoint(path_or_state_dict, map_location=map_location)
    state_dict, remaps = clean_state_dict(raw.obj)
    epoch = raw.obj.get("epoch") if isinstance(raw.obj, Mapping) else None
    epoch = int(epoch) if isinstance(epoch, (int, np.integer)) and not isinstance(epoch, bool) else None
    is_demo = isinstance(raw.obj, Mapping) and bool(raw.obj.get(DEMO_MARKER_KEY))
    return CheckpointContents(state_dict, raw.format, epoch, remaps, raw.path, raw.zip_root, raw.sha256, is_demo)


# --------------------------------------------------------------------------------------------------
# Detection from shapes
# --------------------------------------------------------------------------------------------------
Shapes = dict[str, tuple[int, ...]]


@functools.lru_cache(maxsize=None)
def _model_shapes_cached(model_id: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    spec = get_spec(model_id)
    try:  # shapes only: the meta device allocates nothing and skips weight init
        with torch.device("meta"):
            model = spec.build()
    except (RuntimeError, NotImplementedError, TypeError):
        model = spec.build()
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def model_shapes(model_id: str) -> Shapes:
    """key → shape of the registry model's own `state_dict()` (cached)."""
    return dict(_model_shapes_cached(model_id))


@dataclass(frozen=True)
class KeyComparison:
    """How a checkpoint's key→shape map compares with one model's."""

    model_id: str
    matched: int
    num_model_keys: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # key, checkpoint shape, model shape

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def score(self) -> float:
        """Share of keys that agree in name and shape, over the union of both key sets."""
        return self.matched / max(1, self.num_model_keys + len(self.unexpected))

    @property
    def _shape_distance(self) -> float:
        # breaks ties between models that differ only in mis-shaped tensors (e.g. a 17-joint final layer)
        return sum(abs(math.log(max(1, math.prod(c)) / max(1, math.prod(m)))) for _, c, m in self.mismatched)

    def sort_key(self):
        return (-self.score, self._shape_distance, self.model_id)

    def summary(self) -> str:
        return (f"{self.model_id}: {self.matched}/{self.num_model_keys} model tensors agree; "
                f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.mismatched)} mis-shaped")

    def describe(self, limit: int = 8) -> str:
        lines = []
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {_truncated(self.missing, limit)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {_truncated(self.unexpected, limit)}")
        if self.mismatched:
            items = [f"{k} checkpoint {list(c)} vs model {list(m)}" for k, c, m in self.mismatched]
            lines.append(f"  mis-shaped keys ({len(self.mismatched)}): {_truncated(items, limit)}")
        return "\n".join(lines)


def _truncated(items, limit: int) -> str:
    items = list(items)
    text = ", ".join(items[:limit])
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _shapes_agree(checkpoint_shape: tuple, model_shape: tuple) -> bool:
    # load_state_dict accepts a 1-element tensor for a 0-d one (old checkpoints stored scalars that way)
    return checkpoint_shape == model_shape or (model_shape == () and checkpoint_shape == (1,))


def compare_shapes(checkpoint_shapes: Mapping[str, tuple], model_id: str) -> KeyComparison:
    expected = model_shapes(model_id)
    missing = tuple(k for k in expected if k not in checkpoint_shapes)
    unexpected = tuple(k for k in checkpoint_shapes if k not in expected)
    mismatched = tuple((k, tuple(checkpoint_shapes[k]), s) for k, s in expected.items()
                       if k in checkpoint_shapes and not _shapes_agree(tuple(checkpoint_shapes[k]), s))
    matched = len(expected) - len(missing) - len(mismatched)
    return KeyComparison(model_id, matched, len(expected), missing, unexpected, mismatched)


@dataclass(frozen=True)
class Detection:
    model_id: str | None  # the one exact match, or None
    ranking: tuple[KeyComparison, ...]  # best first

    @property
    def best(self) -> KeyComparison:
        return self.ranking[0]


def _shapes_of(state_dict_or_shapes: Mapping) -> Shapes:
    return {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in state_dict_or_shapes.items()}


def detect_model(state_dict_or_shapes: Mapping, candidates: list[str] | None = None) -> Detection:
    """Identify the registry model whose `state_dict()` shapes equal the (cleaned) checkpoint's exactly."""
    shapes = _shapes_of(state_dict_or_shapes)
    ranking = sorted((compare_shapes(shapes, m) for m in (candidates or list(MODEL_REGISTRY))),
                     key=KeyComparison.sort_key)
    exact = [c.model_id for c in ranking if c.exact]
    if len(exact) > 1:
        raise CheckpointError(f"the checkpoint's shapes match several models exactly ({', '.join(exact)}); "
                              "pass model_id to choose")
    return Detection(exact[0] if exact else None, tuple(ranking))


def _joint_count(comparison: KeyComparison) -> tuple[str, int, int, int] | None:
    """(layer, joints, depth_dim, outputs) when the ONLY difference from this model is a heatmap layer with
    J·depth_dim outputs for a J other than the model's joint count."""
    spec = get_spec(comparison.model_id)
    if spec.kind != "pose" or not comparison.mismatched or comparison.missing or comparison.unexpected:
        return None
    outputs = spec.joint_num * spec.depth_dim
    found = set()
    for key, ck_shape, model_shape in comparison.mismatched:
        if (not ck_shape or len(ck_shape) != len(model_shape) or model_shape[0] != outputs
                or ck_shape[1:] != model_shape[1:] or ck_shape[0] % spec.depth_dim):
            return None
        found.add((key.rsplit(".", 1)[0], ck_shape[0] // spec.depth_dim, spec.depth_dim, ck_shape[0]))
    return found.pop() if len(found) == 1 else None


def _joint_count_hint(comparisons) -> str | None:
    for comparison in comparisons:
        count = _joint_count(comparison)
        if count:
            layer, joints, depth, outputs = count
            needed = get_spec(comparison.model_id).joint_num
            return (f"{layer} has {joints}·{depth} = {outputs} outputs: this checkpoint predicts {joints} joints "
                    f"(MuCo-3DHP has 21); this suite needs {needed} (the Human3.6M joint set); otherwise it matches "
                    f"{comparison.model_id}. Use a checkpoint trained on Human3.6M.")
    return None


def _mismatch_message(target: KeyComparison | None, detection: Detection) -> str:
    focus = target or detection.best
    lines = [f"the checkpoint does not match {target.model_id}:" if target is not None else
             f"the checkpoint matches no registry model exactly; closest is {focus.model_id}:", focus.describe()]
    if detection.model_id is not None:  # only possible with a target: another model fits exactly
        lines.append(f"its shapes match {detection.model_id} exactly: load it as model_id={detection.model_id!r} "
                     "(or omit model_id to detect it).")
    else:
        hint = _joint_count_hint([focus, *detection.ranking[:3]])
        if hint:
            lines.append(hint)
        lines.append("best matches by shape: " + "; ".join(c.summary() for c in detection.ranking[:3]))
    lines.append("Nothing was loaded (loading is strict: a partial load would give meaningless numbers).")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------------
def _build_uninitialised(spec):
    """The model with uninitialised CPU memory: strict loading overwrites every entry, so random init is wasted time.

    Falls back to a normal build when the model holds tensors that loading would not fill (non-persistent
    buffers, plain tensor attributes).
    """
    try:
        with torch.device("meta"):
            model = spec.build()
    except (RuntimeError, NotImplementedError, TypeError):
        return spec.build()
    unfilled = set(dict(model.named_buffers())) - set(model.state_dict())
    plain_tensors = any(isinstance(v, torch.Tensor) for m in model.modules() for v in vars(m).values())
    if unfilled or plain_tensors:
        return spec.build()
    return model.to_empty(device="cpu").eval()


@dataclass
class CheckpointInfo:
    """What was loaded. Supports `info["model_id"]` as well as `info.model_id`."""

    model_id: str
    family: str
    variant: str
    epoch: int | None
    sha256: str | None
    format: str
    remaps: list[str] = field(default_factory=list)
    num_params: int = 0
    num_params_incl_buffers: int = 0
    path: str | None = None
    zip_root: str | None = None
    is_random_demo: bool = False

    def __getitem__(self, key: str):
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self):
        return self.__dataclass_fields__.keys()

    def to_dict(self) -> dict:
        return asdict(self)


def load_checkpoint(path_or_state_dict, model_id: str | None = None, *, map_location="cpu"):
    """Read, clean, identify and strictly load a checkpoint. Returns `(model in eval mode on CPU, CheckpointInfo)`.

    With `model_id`, the checkpoint must match that model exactly; without, the one registry model whose
    shapes match exactly is used. Any mismatch raises `CheckpointError` listing missing, unexpected and
    mis-shaped keys and the model the shapes match best.
    """
    if model_id is not None:
        get_spec(model_id)  # unknown ids fail before any reading
    contents = read_state_dict(path_or_state_dict, map_location=map_location)
    shapes = _shapes_of(contents.state_dict)
    detection = detect_model(shapes)
    if model_id is None:
        if detection.model_id is None:
            raise CheckpointError(_mismatch_message(None, detection))
        model_id = detection.model_id
    else:
        target = compare_shapes(shapes, model_id)
        if not target.exact:
            raise CheckpointError(_mismatch_message(target, detection))
    spec = get_spec(model_id)
    model = _build_uninitialised(spec)
    try:
        model.load_state_dict(contents.state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"strict loading into {model_id} failed: {e}") from None
    model = model.to("cpu").eval()
    info = CheckpointInfo(
        model_id=model_id, family=spec.family, variant=spec.variant, epoch=contents.epoch, sha256=contents.sha256,
        format=contents.format, remaps=contents.remaps,
        num_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        num_params_incl_buffers=sum(t.numel() for t in model.state_dict().values()),
        path=contents.path, zip_root=contents.zip_root, is_random_demo=contents.is_random_demo)
    return model, info


# --------------------------------------------------------------------------------------------------
# `python -m helpers inspect PATH [--model-id ID]`
# --------------------------------------------------------------------------------------------------
def inspect_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers inspect",
                                     description="Inspect a checkpoint: format, model, epoch, params, sha256, keys.")
    parser.add_argument("path", help="checkpoint file, extracted torch-zip folder, or tar")
    parser.add_argument("--model-id", choices=sorted(MODEL_REGISTRY), help="load as this model (default: detect)")
    args = parser.parse_args(argv)
    path = Path(args.path)
    print(f"path:      {path}")
    if path.exists():
        print(f"content:   {sniff_format(path)}")
    try:
        _, info = load_checkpoint(path, args.model_id)
    except CheckpointError as e:
        print(f"PROBLEM:   {e}")
        return 1
    print(f"format:    {info.format}" + (f" (root folder {info.zip_root}/)" if info.zip_root else ""))
    print(f"model:     {info.model_id} (family {info.family}, variant {info.variant})")
    print(f"epoch:     {info.epoch if info.epoch is not None else 'not stored'}")
    print(f"params:    {info.num_params:,} trainable; {info.num_params_incl_buffers:,} incl. buffers")
    print(f"sha256:    {info.sha256}")
    print(f"remaps:    {'; '.join(info.remaps) if info.remaps else 'none'}")
    if info.is_random_demo:
        print("WEIGHTS:   random demo weights (helpers.demo_checkpoints), not trained")
    print("keys:      all match; strict load OK")
    return 0
