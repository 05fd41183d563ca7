"""Checkpoint reading, key cleaning, model detection and strict loading.

Checkpoints come from the internet, so nothing here ever runs pickled code:
- torch zip files (and legacy pickle files) go through `torch.load(weights_only=True)` with a narrow
  allow-list for the extras optimizer states may hold (numpy scalars, `defaultdict`);
- extracted torch-zip folders (`snapshot_83.pth/` with `data.pkl`, `data/`), and zips whose optimizer
  state torch's weights-only unpickler cannot build, go through our own restricted unpickler whose
  `find_class` knows only tensors, storages, plain containers and numpy scalars;
- before either unpickler runs, every pickle is pre-scanned opcode by opcode (`scan_pickle`): only allow-listed
  globals, no object-building opcodes, dict keys and set items must be plain scalars (a tuple key nested 60 deep
  would take 2^60 steps to hash), nesting and memo indices are bounded;
- tar archives are read in memory after refusing unsafe member names; nothing is extracted to disk;
- archives are refused before anything is inflated when their declared sizes are out of proportion to the file
  (zip bombs, compressed-tar bombs, sparse tar members), and non-regular paths (FIFOs, devices) are never opened.

Tensors must be dense, real-valued views that fit inside their storage. Loading refuses float/int kind mismatches
with the model and, unless `allow_nonfinite=True`, NaN/inf weights (then `CheckpointInfo.nonfinite_keys` lists them).

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
import pickletools
import re
import reprlib
import stat
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

# Hostile-input limits. A real data.pkl is well under 1 MB (ConvNeXtPose L with its Adam state: 77 kB, 800 tensors).
MAX_PICKLE_BYTES = 32 << 20
MAX_NESTING = 32  # a state dict with an optimizer state nests about 6 deep
MAX_TENSORS = 100_000
MAX_ARCHIVE_MEMBERS = 10_000
# torch.save stores members uncompressed; a re-zipped or gzipped checkpoint of float weights deflates by < 2x.
# Anything declaring more than this many times its compressed size (plus some slack) is refused as a bomb.
MAX_INFLATION_RATIO = 100
_INFLATION_SLACK = 16 << 20


def _short(obj, limit: int = 120) -> str:
    """Bounded repr for error messages: safe on huge, deep or shared-reference structures."""
    bounded = reprlib.Repr()  # attributes, not constructor arguments: Python 3.11 takes none
    bounded.maxlevel, bounded.maxstring, bounded.maxother = 3, limit, limit
    bounded.maxlist = bounded.maxtuple = bounded.maxdict = bounded.maxset = 6
    text = bounded.repr(obj)
    return text[:limit] + ("..." if len(text) > limit else "")


def show_key(key) -> str:
    """A key as it should appear in messages: plain if printable ASCII, escaped otherwise (look-alike Unicode,
    zero-width or control characters would otherwise print identically to the real key)."""
    if not isinstance(key, str):
        return _short(key, 160)
    text = key if key.isascii() and key.isprintable() else ascii(key)
    return text if len(text) <= 160 else text[:160] + "..."


def _require_regular_file(path: Path, where: str) -> None:
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise CheckpointError(f"{where} is {kind}, not a checkpoint file; it was not opened. Pass the path of the "
                              "checkpoint file or of its extracted folder.")

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

    One of "torch-zip", "torch-zip-folder", "tar", "torch-legacy", "html", "empty", "folder", "not-a-file",
    "numpy", "safetensors", "json", "unknown".
    """
    p = Path(path)
    if p.is_dir():
        return "torch-zip-folder" if _find_extracted_root(p) is not None else "folder"
    if not stat.S_ISREG(p.stat().st_mode):
        return "not-a-file"  # FIFOs and devices are never opened: a FIFO would block, /dev/zero never ends
    with open(p, "rb") as f:
        head = f.read(4096)
    return sniff_bytes(head, p)


def _is_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then the JSON header
    return len(head) >= 10 and head[8:10] == b'{"' and 2 <= int.from_bytes(head[:8], "little") < (100 << 20)


def sniff_bytes(head: bytes, path: Path | None = None) -> str:
    """Format from a file's first bytes (see `sniff_format`); `path` lets old-style tars be recognised.

    Besides the readable formats, recognises what is often saved by mistake: "numpy" (.npy), "safetensors",
    "json"; see `format_problem`."""
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
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if _is_safetensors(head):
        return "safetensors"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"{", b"[")):
        return "json"
    try:  # pre-POSIX tars have no "ustar" magic; tarfile checks the header checksum
        if path is not None and tarfile.is_tarfile(path):
            return "tar"
    except (OSError, tarfile.TarError):
        pass
    return "unknown"


_OTHER_FORMATS = {
    "numpy": "a numpy .npy array, not a torch checkpoint",
    "safetensors": ("a safetensors file; this loader reads the official torch checkpoints only (torch zip, tar, "
                    "legacy torch file, extracted folder). Use the released .pth/.tar file"),
    "json": "a JSON or text file, not a checkpoint (an API error message or a config saved in its place?)",
}


def format_problem(fmt: str, head: bytes, where: str) -> CheckpointError:
    """The error for a file whose sniffed format (`sniff_bytes`) cannot be read as a checkpoint."""
    if fmt == "empty":
        return CheckpointError(f"{where} is empty (0 bytes): the download failed or was interrupted. "
                               + _REDOWNLOAD_ADVICE)
    if fmt == "html":
        return CheckpointError(f"{where}: {html_page_problem(head)}. " + _REDOWNLOAD_ADVICE)
    if fmt in _OTHER_FORMATS:
        return CheckpointError(f"{where} is {_OTHER_FORMATS[fmt]}. " + _REDOWNLOAD_ADVICE)
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
# What a hostile pickle can make torch's loader or our unpickler raise; all mean "not a sane checkpoint".
_READ_ERRORS = (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError, IndexError,
                OverflowError, MemoryError, RecursionError, NotImplementedError, zipfile.BadZipFile,
                pickle.UnpicklingError)
_LEGACY_PICKLES = 5  # magic number, protocol version, sys info, the object, the storage keys


def _scan_legacy(path: str, where: str) -> None:
    with open(path, "rb") as f:
        for _ in range(_LEGACY_PICKLES):
            scan_pickle(f, where)


def _torch_load_safely(source, map_location, where: str, zip_root: str | None = None):
    """Pre-scan the pickle(s), then `torch.load(weights_only=True)`; for torch zips whose optimizer state holds
    what that unpickler cannot build (e.g. a `defaultdict`), fall back to our own restricted unpickler."""
    if zip_root is None:
        if hasattr(source, "seek"):
            for _ in range(_LEGACY_PICKLES):
                scan_pickle(source, where)
            source.seek(0)
        else:
            _scan_legacy(source, where)
    else:
        with _open_zip(source, where) as zf:
            scan_pickle(_read_zip_member(zf, f"{zip_root}/data.pkl", where, limit=MAX_PICKLE_BYTES), where)
        if hasattr(source, "seek"):
            source.seek(0)
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
    except _READ_ERRORS as e:
        raise CheckpointError(f"{where} is corrupt or malformed ({type(e).__name__}: {_short(str(e), 200)}). "
                              + _REDOWNLOAD_ADVICE) from None


def _open_zip(source, where: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{where} is a truncated or corrupt zip ({_short(str(e), 200)}). "
                              + _REDOWNLOAD_ADVICE) from None


def _read_zip_member(zf: zipfile.ZipFile, name: str, where: str, *, expected: int | None = None,
                     limit: int | None = None) -> bytes:
    """One member's bytes, its declared size checked BEFORE inflating (`expected` exact, or at most `limit`)."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{where} lacks {name}: the file is incomplete. " + _REDOWNLOAD_ADVICE) from None
    if expected is not None and info.file_size != expected:
        raise CheckpointError(f"{where}: {name} holds {info.file_size} bytes, expected {expected}: the file is "
                              "truncated or corrupt. " + _REDOWNLOAD_ADVICE)
    if limit is not None and info.file_size > limit:
        raise CheckpointError(f"{where}: {name} declares {info.file_size:,} bytes, over the {limit:,}-byte limit for "
                              "it; refused without inflating it. This is not a checkpoint.")
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError, NotImplementedError) as e:
        # RuntimeError: encrypted member; NotImplementedError: unknown compression method
        raise CheckpointError(f"{where}: cannot read {name} ({type(e).__name__}: {_short(str(e), 160)}). "
                              + _REDOWNLOAD_ADVICE) from None


def _read_zip_restricted(source, zip_root: str, where: str):
    with _open_zip(source, where) as zf:
        def read_record(key: str, nbytes: int) -> bytes:
            return _read_zip_member(zf, f"{zip_root}/data/{key}", where, expected=nbytes)

        return _unpickle_restricted(_read_zip_member(zf, f"{zip_root}/data.pkl", where, limit=MAX_PICKLE_BYTES),
                                    read_record, where)


def _is_unsafe_member(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return (p.is_absolute() or ".." in p.parts or bool(re.match(r"^[A-Za-z]:", name))
            or any(ord(c) < 32 for c in name))


def _check_inflation(declared: int, stored: int, where: str, what: str) -> None:
    if declared > MAX_INFLATION_RATIO * stored + _INFLATION_SLACK:
        raise CheckpointError(
            f"{where}: {what} declares {declared:,} bytes from {stored:,} stored, more than {MAX_INFLATION_RATIO}x; "
            "refused as a decompression bomb before inflating it. This is not a checkpoint (torch.save does not "
            "compress).")


def check_torch_zip(source, where: str) -> str:
    """Validate a torch zip's directory and return its root folder (e.g. 'snapshot_83.pth', 'archive').

    Refuses unsafe, duplicate or link members, encrypted members, bombs, TorchScript archives and other zips."""
    with _open_zip(source, where) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    if len(names) > MAX_ARCHIVE_MEMBERS:
        raise CheckpointError(f"{where} is a zip with {len(names):,} members (over {MAX_ARCHIVE_MEMBERS:,}); "
                              "this is not a torch checkpoint.")
    bad = [n for n in names if _is_unsafe_member(n)]
    if bad:
        raise CheckpointError(f"{where} has unsafe member names ({', '.join(show_key(n) for n in bad[:3])}): absolute "
                              "paths, '..' or control characters are refused. This is not a torch checkpoint.")
    duplicates = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
    if duplicates:
        raise CheckpointError(f"{where} has duplicate member names ({', '.join(map(show_key, duplicates[:3]))}); "
                              "which copy a reader takes is ambiguous, so the file is refused. "
                              + _REDOWNLOAD_ADVICE)
    links = [i.filename for i in infos if stat.S_ISLNK(i.external_attr >> 16)]
    if links:
        raise CheckpointError(f"{where} holds symbolic-link entries ({', '.join(map(show_key, links[:3]))}); "
                              "a torch checkpoint has none. Refused.")
    encrypted = [i.filename for i in infos if i.flag_bits & 0x1]
    if encrypted:
        raise CheckpointError(f"{where} has encrypted members ({', '.join(map(show_key, encrypted[:3]))}); "
                              "a torch checkpoint has none. " + _REDOWNLOAD_ADVICE)
    for info in infos:
        _check_inflation(info.file_size, info.compress_size, where, f"member {show_key(info.filename)}")
    roots = {n.split("/", 1)[0] for n in names}
    root = next(iter(roots)) if len(roots) == 1 else None
    if root is not None and any(n.startswith((f"{root}/code/", f"{root}/constants.pkl")) for n in names):
        raise CheckpointError(f"{where} is a TorchScript archive (torch.jit.save): it contains code, which this "
                              "loader never runs. Use the released state-dict checkpoint, or export one with "
                              "torch.save(model.state_dict(), path) where you trust the archive.")
    if root is None or f"{root}/data.pkl" not in names:
        if names and all(n.endswith(".npy") and "/" not in n for n in names):
            kind = "a numpy .npz archive"
        elif "[Content_Types].xml" in names:
            kind = "an Office document (docx/xlsx/pptx)"
        else:
            kind = f"a zip but not a torch checkpoint: expected one root folder holding data.pkl, found roots " \
                   f"{[show_key(r) for r in sorted(roots)[:5]]}"
        raise CheckpointError(f"{where} is {kind}. " + _REDOWNLOAD_ADVICE)
    return root


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
            raise CheckpointError(f"malformed data.pkl: unexpected persistent id {_short(pid, 80)}")
        _, storage_type, key, _location, numel = pid
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", key):
            raise CheckpointError(f"malformed data.pkl: storage key {show_key(key)} is not a plain file name")
        if key not in self._storages:
            if isinstance(numel, bool) or not isinstance(numel, int) or not 0 <= numel < (1 << 40):
                raise CheckpointError(f"malformed data.pkl: storage data/{key} has element count {_short(numel, 40)}")
            nbytes = numel * torch.empty((), dtype=storage_type.dtype).element_size()
            buffer = bytearray(self._read_record(key, nbytes))  # the reader checks the size before reading
            if len(buffer) != nbytes:
                raise CheckpointError(f"storage data/{key} holds {len(buffer)} bytes, expected {nbytes}: "
                                      "the checkpoint is truncated or corrupt. " + _REDOWNLOAD_ADVICE)
            self._storages[key] = (torch.frombuffer(buffer, dtype=storage_type.dtype) if buffer
                                   else torch.empty(0, dtype=storage_type.dtype))
        return self._storages[key]


# --------------------------------------------------------------------------------------------------
# Pickle pre-scan: a symbolic run of the opcodes, before any unpickler builds anything
# --------------------------------------------------------------------------------------------------
SAFE_PICKLE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {k for k in _RestrictedUnpickler._ALLOWED} | {("__builtin__", n) for m, n in _RestrictedUnpickler._ALLOWED
                                                  if m == "builtins"} | {("torch", n) for n in _STORAGE_DTYPES})
_SCALAR_OPS = frozenset({
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING", "SHORT_BINSTRING",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "NONE",
    "NEWTRUE", "NEWFALSE", "FLOAT", "BINFLOAT"})
_REFUSED_OPS = {  # opcode -> why a checkpoint never needs it
    "INST": "builds an arbitrary object", "OBJ": "builds an arbitrary object", "NEWOBJ": "builds an arbitrary object",
    "NEWOBJ_EX": "builds an arbitrary object", "EXT1": "uses the copyreg extension registry",
    "EXT2": "uses the copyreg extension registry", "EXT4": "uses the copyreg extension registry",
    "PERSID": "uses a text persistent id", "NEXT_BUFFER": "uses out-of-band buffers",
    "READONLY_BUFFER": "uses out-of-band buffers"}
_DICT_LIKE = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "dict"),
              ("__builtin__", "dict")}
_SET_LIKE = {("builtins", "set"), ("__builtin__", "set")}
_DTYPE_CALLS = {("numpy", "dtype")}


class _Sym:
    """What an object on the symbolic stack is: kind in scalar/list/dict/set/tuple/frozenset/global/call/storage/
    other; `value` for strings (STACK_GLOBAL needs them) and for globals/calls (module, name)."""

    __slots__ = ("kind", "value", "depth")

    def __init__(self, kind: str, value=None, depth: int = 0):
        self.kind, self.value, self.depth = kind, value, depth


_MARK = _Sym("mark")


def _refuse_global(module: str, name: str, where: str) -> CheckpointError:
    return CheckpointError(
        f"refused to read {where}: its pickle references {show_key(module)}.{show_key(name)}, which is not on the "
        "allow-list of safe types (tensors, storages, numbers, strings, containers). Loading it unsafely could run "
        "arbitrary code; do not. Use the checkpoint from its official source.")


def scan_pickle(source, where: str) -> None:
    """Refuse a pickle (bytes or a binary file positioned at its start) that a checkpoint has no use for, before
    anything is unpickled. Reads exactly one pickle; a file is left just after its STOP opcode."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    stack: list[_Sym] = []
    memo: dict[int, _Sym] = {}

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"refused to read {where}: its pickle {problem}. A checkpoint holds only tensors, "
                               "numbers, strings and plain containers. " + _REDOWNLOAD_ADVICE)

    def pop() -> _Sym:
        if not stack or stack[-1] is _MARK:
            raise bad("is malformed (stack underflow)")
        return stack.pop()

    def pop_mark() -> list[_Sym]:
        items = []
        while stack and stack[-1] is not _MARK:
            items.append(stack.pop())
        if not stack:
            raise bad("is malformed (missing MARK)")
        stack.pop()
        return items[::-1]

    def container(kind: str, items: list[_Sym], value=None) -> _Sym:
        depth = 1 + max((i.depth for i in items), default=0)
        if depth > MAX_NESTING:
            raise bad(f"nests containers more than {MAX_NESTING} deep")
        return _Sym(kind, value, depth)

    def grow(target: _Sym, items: list[_Sym]) -> None:
        target.depth = max(target.depth, 1 + max((i.depth for i in items), default=0))
        if target.depth > MAX_NESTING:
            raise bad(f"nests containers more than {MAX_NESTING} deep")

    def check_keys(keys: list[_Sym], what: str) -> None:
        for key in keys:
            if key.kind != "scalar":
                raise bad(f"uses a {key.kind} as a {what}; only numbers and strings are accepted (hashing nested "
                          "tuples can take exponential time)")

    def dict_target() -> _Sym:
        if not stack or not (stack[-1].kind == "dict" or (stack[-1].kind == "call" and stack[-1].value in _DICT_LIKE)):
            raise bad("stores items into something that is not a dict")
        return stack[-1]

    ops = 0
    try:
        for opcode, arg, _pos in pickletools.genops(stream):
            ops += 1
            name = opcode.name
            if name in _SCALAR_OPS:
                stack.append(_Sym("scalar", arg if isinstance(arg, str) else None))
            elif name in ("PROTO", "FRAME"):
                pass
            elif name == "STOP":
                if len(stack) != 1:
                    raise bad(f"is malformed (STOP with a stack of {len(stack)} items)")
                return
            elif name == "MARK":
                stack.append(_MARK)
            elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"):
                stack.append(_Sym(name[6:].lower(), None, 1))
            elif name == "BYTEARRAY8":
                stack.append(_Sym("other"))
            elif name in ("LIST", "TUPLE", "DICT", "FROZENSET"):
                items = pop_mark()
                if name == "DICT":
                    check_keys(items[0::2], "dict key")
                if name == "FROZENSET":
                    check_keys(items, "set item")
                stack.append(container(name.lower(), items))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                items = [pop() for _ in range(int(name[-1]))][::-1]
                stack.append(container("tuple", items))
            elif name == "APPEND":
                item = pop()
                if not stack or stack[-1].kind != "list":
                    raise bad("appends to something that is not a list")
                grow(stack[-1], [item])
            elif name == "APPENDS":
                items = pop_mark()
                if not stack or stack[-1].kind != "list":
                    raise bad("appends to something that is not a list")
                grow(stack[-1], items)
            elif name == "SETITEM":
                value, key = pop(), pop()
                check_keys([key], "dict key")
                grow(dict_target(), [value])
            elif name == "SETITEMS":
                items = pop_mark()
                check_keys(items[0::2], "dict key")
                grow(dict_target(), items[1::2])
            elif name == "ADDITEMS":
                items = pop_mark()
                check_keys(items, "set item")
                if not stack or not (stack[-1].kind == "set" or stack[-1].value in _SET_LIKE):
                    raise bad("adds items to something that is not a set")
            elif name == "POP":
                if not stack:
                    raise bad("is malformed (stack underflow)")
                stack.pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1] if stack else pop())
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise bad(f"refers to memo entry {arg} that was never stored")
                stack.append(memo[arg])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                index = len(memo) if name == "MEMOIZE" else arg
                if not isinstance(index, int) or not 0 <= index <= ops:  # huge indices make the C unpickler allocate
                    raise bad(f"uses memo index {_short(index)}")
                if not stack or stack[-1] is _MARK:
                    raise bad("is malformed (memoizes nothing)")
                memo[index] = stack[-1]
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, attr = str(arg).partition(" ")
                else:
                    attr_sym, module_sym = pop(), pop()
                    if not (isinstance(module_sym.value, str) and isinstance(attr_sym.value, str)):
                        raise bad("names a global with something other than two strings")
                    module, attr = module_sym.value, attr_sym.value
                if (module, attr) not in SAFE_PICKLE_GLOBALS:
                    raise _refuse_global(module, attr, where)
                stack.append(_Sym("global", (module, attr)))
            elif name == "REDUCE":
                args, func = pop(), pop()
                if func.kind != "global" or args.kind != "tuple":
                    raise bad(f"calls a {func.kind} (only allow-listed globals may be called, with a tuple)")
                stack.append(_Sym("call", func.value, args.depth))
            elif name == "BUILD":
                state = pop()
                target = stack[-1] if stack else pop()
                if target.kind != "call" or target.value not in _DTYPE_CALLS:
                    what = ".".join(target.value) if target.kind == "call" else f"a {target.kind}"
                    raise bad(f"sets the state of {what} (BUILD); only numpy dtypes carry state in a checkpoint")
                grow(target, [state])
            elif name == "BINPERSID":
                pop()
                stack.append(_Sym("storage"))
            elif name in _REFUSED_OPS:
                raise bad(f"{_REFUSED_OPS[name]} (opcode {name})")
            else:
                raise bad(f"uses the opcode {name}, which a checkpoint never needs")
    except ValueError as e:  # pickletools: unknown opcode, truncated argument
        raise bad(f"is malformed ({_short(str(e), 160)})") from None
    raise bad("is truncated (no STOP opcode)")


def _unpickle_restricted(pickle_bytes: bytes, read_record: Callable[[str, int], bytes], where: str):
    """Scan, then unpickle with `_RestrictedUnpickler`; `read_record(key, nbytes)` returns storage data/<key>."""
    scan_pickle(pickle_bytes, where)
    try:
        return _RestrictedUnpickler(io.BytesIO(pickle_bytes), read_record).load()
    except CheckpointError:
        raise
    except _READ_ERRORS as e:
        raise CheckpointError(f"{where}: data.pkl is malformed ({type(e).__name__}: {_short(str(e), 200)}). "
                              + _REDOWNLOAD_ADVICE) from None


def _find_extracted_root(folder: Path) -> Path | None:
    """`folder` itself or its only sub-folder holding `data.pkl` (Kaggle may unpack `X.tar` to `X/snapshot_N.pth/`)."""
    def holds_pickle(d: Path) -> bool:  # a linked data.pkl counts, so that it is refused by name, not ignored
        return (d / "data.pkl").is_file() or (d / "data.pkl").is_symlink()

    if holds_pickle(folder):
        return folder
    roots = [d for d in sorted(folder.iterdir()) if d.is_dir() and holds_pickle(d)]
    return roots[0] if len(roots) == 1 else None


def _folder_file(path: Path, where: str, *, expected: int | None = None, limit: int | None = None) -> bytes:
    """A file of an extracted folder: a regular file, not a link (a link could pull any file of this machine into
    the weights), its size checked before reading."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{where} lacks {path.name}: the extracted folder is incomplete. "
                              + _REDOWNLOAD_ADVICE) from None
    if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
        raise CheckpointError(f"{where}: {path.name} is {'a symbolic link' if stat.S_ISLNK(mode) else 'not a file'}; "
                              "an extracted checkpoint holds regular files only. Refused.")
    size = path.stat().st_size
    if expected is not None and size != expected:
        raise CheckpointError(f"storage {path.parent.name}/{path.name} holds {size} bytes, expected {expected}: the "
                              "folder is truncated or corrupt. " + _REDOWNLOAD_ADVICE)
    if limit is not None and size > limit:
        raise CheckpointError(f"{where}: {path.name} has {size:,} bytes, over the {limit:,}-byte limit; refused.")
    return path.read_bytes()


def _read_extracted_folder(folder: Path, where: str):
    byteorder = folder / "byteorder"
    if byteorder.exists() or byteorder.is_symlink():
        order = _folder_file(byteorder, where, limit=16).decode("ascii", "replace").strip()
        if order not in ("", "little"):
            raise CheckpointError(f"{where} was saved on a big-endian machine; this loader reads little-endian only")
    data_dir = folder / "data"

    def read_record(key: str, nbytes: int) -> bytes:
        return _folder_file(data_dir / key, where, expected=nbytes)

    return _unpickle_restricted(_folder_file(folder / "data.pkl", where, limit=MAX_PICKLE_BYTES), read_record, where)


def _tar_members(tf: tarfile.TarFile, file_size: int, where: str) -> list[tarfile.TarInfo]:
    """Every member, read header by header so that a bomb (a small compressed file declaring huge members) or an
    endless member list is refused before it is decompressed; unsafe names, links, devices, FIFOs, sparse and
    duplicate members are refused."""
    budget = MAX_INFLATION_RATIO * file_size + _INFLATION_SLACK
    members: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    try:
        while (member := tf.next()) is not None:
            members.append(member)
            name = PurePosixPath(member.name).as_posix()
            if _is_unsafe_member(member.name) or not (member.isfile() or member.isdir()):
                raise CheckpointError(f"{where} has unsafe members ({show_key(member.name)}): absolute paths, '..', "
                                      "links, devices and FIFOs are refused; nothing was extracted.")
            if member.issparse():
                raise CheckpointError(f"{where} has a sparse member ({show_key(member.name)}, {member.size:,} bytes "
                                      "declared); a checkpoint archive has none. Refused.")
            if member.isfile() and name in seen:
                raise CheckpointError(f"{where} holds {show_key(member.name)} twice; which copy is meant is "
                                      "ambiguous, so the archive is refused. " + _REDOWNLOAD_ADVICE)
            seen.add(name)
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise CheckpointError(f"{where} has over {MAX_ARCHIVE_MEMBERS:,} members; this is not a checkpoint "
                                      "archive.")
            _check_inflation(member.offset_data + member.size, file_size, where, "the archive")
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{where} is a truncated or corrupt archive ({_short(str(e), 200)}). "
                              + _REDOWNLOAD_ADVICE) from None
    if tf.offset > budget:
        _check_inflation(tf.offset, file_size, where, "the archive")
    return members


def open_tar(path: Path, where: str) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
    """Open a (possibly compressed) tar and check every member header; see `_tar_members`."""
    try:
        tf = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{where} is a truncated or corrupt archive ({_short(str(e), 200)}). "
                              + _REDOWNLOAD_ADVICE) from None
    try:
        return tf, _tar_members(tf, path.stat().st_size, where)
    except BaseException:
        tf.close()
        raise


def _read_tar(path: Path, map_location, where: str) -> tuple[Any, str, str | None]:
    """Read the one checkpoint inside a tar in memory: (object, inner format, zip root). Archives nested in the
    tar are not opened (one level only)."""
    tf, members = open_tar(path, where)

    def member_bytes(member: tarfile.TarInfo, inner_where: str, *, expected: int | None = None,
                     limit: int | None = None) -> bytes:
        if expected is not None and member.size != expected:
            raise CheckpointError(f"{inner_where}: {show_key(member.name)} holds {member.size} bytes, expected "
                                  f"{expected}: the archive is truncated or corrupt. " + _REDOWNLOAD_ADVICE)
        if limit is not None and member.size > limit:
            raise CheckpointError(f"{inner_where}: {show_key(member.name)} has {member.size:,} bytes, over the "
                                  f"{limit:,}-byte limit; refused.")
        try:
            return tf.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            raise CheckpointError(f"{inner_where} is truncated or corrupt ({_short(str(e), 160)}). "
                                  + _REDOWNLOAD_ADVICE) from None

    with tf:
        files = {PurePosixPath(m.name).as_posix(): m for m in members if m.isfile()}
        folder_roots = sorted(str(PurePosixPath(n).parent) for n in files if PurePosixPath(n).name == "data.pkl")
        candidates: list[tuple[str, str]] = [(r, "torch-zip-folder") for r in folder_roots]
        nested: list[str] = []
        for name, member in files.items():
            if any(r == "." or name.startswith(f"{r}/") for r in folder_roots):
                continue  # part of an extracted folder
            try:
                fmt = sniff_bytes(tf.extractfile(member).read(4096))
            except (tarfile.TarError, OSError, EOFError, ValueError) as e:
                raise CheckpointError(f"{where} is truncated or corrupt ({_short(str(e), 160)}). "
                                      + _REDOWNLOAD_ADVICE) from None
            if fmt in ("torch-zip", "torch-legacy"):
                candidates.append((name, fmt))
            elif fmt == "tar":
                nested.append(name)
        if len(candidates) != 1:
            listing = ", ".join(show_key(m.name) for m in members[:8])
            found = ", ".join(show_key(c) for c, _ in candidates[:8])
            problem = f"{len(candidates)} checkpoints ({found})" if candidates else "no checkpoint"
            hint = (f" It holds a nested archive ({', '.join(map(show_key, nested[:3]))}); archives inside archives "
                    "are not opened: extract the inner one and pass it." if nested and not candidates else "")
            raise CheckpointError(f"{where} is a tar holding {problem}; expected exactly one torch zip, legacy torch "
                                  f"file or extracted folder.{hint} Members: {listing}")
        name, fmt = candidates[0]
        inner_where = f"{where} > {name}"
        if fmt == "torch-zip-folder":
            prefix = "" if name == "." else f"{name}/"

            def read_record(key: str, nbytes: int) -> bytes:
                member = files.get(f"{prefix}data/{key}")
                if member is None:
                    raise CheckpointError(f"{inner_where} lacks data/{key}: the archive is incomplete. "
                                          + _REDOWNLOAD_ADVICE)
                return member_bytes(member, inner_where, expected=nbytes)

            pickle_bytes = member_bytes(files[f"{prefix}data.pkl"], inner_where, limit=MAX_PICKLE_BYTES)
            obj = _unpickle_restricted(pickle_bytes, read_record, inner_where)
            return obj, fmt, PurePosixPath(name).name if name != "." else None
        buffer = io.BytesIO(member_bytes(files[name], inner_where))
    root = check_torch_zip(buffer, inner_where) if fmt == "torch-zip" else None
    buffer.seek(0)
    return _torch_load_safely(buffer, map_location, inner_where, root), fmt, root


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (streamed in 1 MB chunks); of a folder: of its files' relative paths and bytes, sorted."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_symlink() or q.is_file()) if p.is_dir() else [p]
    for q in files:
        if p.is_dir():
            h.update(q.relative_to(p).as_posix().encode() + b"\0")
            if q.is_symlink():  # hash where it points, never what: it may point at a device or a huge file
                h.update(b"-> " + os.readlink(q).encode("utf-8", "surrogateescape") + b"\0")
                continue
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
        if path.is_symlink():
            raise CheckpointError(f"{where} is a symbolic link to a path that does not exist ({os.readlink(path)}).")
        raise CheckpointError(f"checkpoint not found: {path}. Check the path, or fetch it with "
                              "helpers.acquire.acquire_checkpoint (it also searches /kaggle/input).")
    if path.is_dir():
        root = _find_extracted_root(path)
        if root is None:
            raise CheckpointError(f"{where} is a folder without data.pkl: pass a checkpoint file, or the extracted "
                                  "torch-zip folder (e.g. snapshot_83.pth/ holding data.pkl, data/, version).")
        obj = _read_extracted_folder(root, where)
        return RawCheckpoint(obj, "torch-zip-folder", str(path), root.name, file_sha256(root))
    _require_regular_file(path, where)
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
        raise format_problem(fmt, head, where)
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
    if len(obj) > MAX_TENSORS:
        raise CheckpointError(f"the state dict has {len(obj):,} entries (over {MAX_TENSORS:,}); no model here has "
                              "more than a few thousand. This is not one of the supported checkpoints.")
    not_str = [k for k in obj if not isinstance(k, str)]
    if not_str:
        raise CheckpointError(f"the state dict has {len(not_str)} keys that are not strings: "
                              f"{', '.join(_short(k, 60) for k in not_str[:5])}")
    bad = [(k, type(v).__name__) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        listing = ", ".join(f"{show_key(k)} ({t})" for k, t in bad[:5])
        raise CheckpointError(f"the state dict has {len(bad)} entries that are not tensors: {listing}")
    _check_tensors(obj)
    return dict(obj), notes


_READABLE_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8,
                              torch.int16, torch.int32, torch.int64, torch.bool})


def _check_tensors(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Dense, real-valued tensors whose elements all lie in their own storage (no sparse, quantized, complex,
    meta or subclass tensors; no stride-0 or overlapping views claiming more elements than were stored)."""
    problems = []
    for key, t in state_dict.items():
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            problems.append(f"{show_key(key)} is a {type(t).__name__}, a tensor subclass")
        elif t.layout != torch.strided or t.is_quantized or t.is_meta or t.dtype not in _READABLE_DTYPES:
            problems.append(f"{show_key(key)} is a {t.layout} {t.dtype} tensor{' (quantized)' if t.is_quantized else ''}"
                            f"{' on the meta device' if t.is_meta else ''}")
        elif t.numel() > t.untyped_storage().nbytes() // t.element_size():
            problems.append(f"{show_key(key)} claims {t.numel():,} elements but its storage holds "
                            f"{t.untyped_storage().nbytes() // t.element_size():,}")
    if problems:
        raise CheckpointError(f"the state dict has {len(problems)} tensors this loader refuses: "
                              f"{'; '.join(problems[:5])}. Model weights are dense real tensors, each stored in "
                              "full. " + _REDOWNLOAD_ADVICE)


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
            raise CheckpointError(f"key {show_key(key)} collides with another key once prefixes are removed")
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
            lines.append(f"  missing keys ({len(self.missing)}): {_truncated(map(show_key, self.missing), limit)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): "
                         f"{_truncated(map(show_key, self.unexpected), limit)}")
        if self.mismatched:
            items = [f"{show_key(k)} checkpoint {list(c)} vs model {list(m)}" for k, c, m in self.mismatched]
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
    nonfinite_keys: list[str] = field(default_factory=list)  # NaN/inf tensors, loaded only with allow_nonfinite=True

    def __getitem__(self, key: str):
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self):
        return self.__dataclass_fields__.keys()

    def to_dict(self) -> dict:
        return asdict(self)


def _dtype_kind(dtype: torch.dtype) -> str:
    return "bool" if dtype == torch.bool else "float" if dtype.is_floating_point else "integer"


def nonfinite_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of floating-point tensors holding NaN or inf."""
    return [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_checkpoint(path_or_state_dict, model_id: str | None = None, *, map_location="cpu",
                    allow_nonfinite: bool = False):
    """Read, clean, identify and strictly load a checkpoint. Returns `(model in eval mode on CPU, CheckpointInfo)`.

    With `model_id`, the checkpoint must match that model exactly; without, the one registry model whose
    shapes match exactly is used. Any mismatch raises `CheckpointError` listing missing, unexpected and
    mis-shaped keys and the model the shapes match best. Tensors must also match the model's dtype kind
    (float, integer, bool: an integer tensor in a float slot is not a weight). NaN/inf weights raise
    `CheckpointError` (they would silently turn every prediction into NaN or garbage) unless
    `allow_nonfinite=True`; then `info.nonfinite_keys` lists them.
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
    model_dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    wrong = [f"{show_key(k)} is {v.dtype} where the model has {model_dtypes[k]}"
             for k, v in contents.state_dict.items() if _dtype_kind(v.dtype) != _dtype_kind(model_dtypes[k])]
    if wrong:
        raise CheckpointError(f"the checkpoint matches {model_id} by shape but {len(wrong)} tensors have the wrong "
                              f"kind of dtype: {_truncated(wrong, 5)}. Nothing was loaded. " + _REDOWNLOAD_ADVICE)
    nonfinite = nonfinite_keys(contents.state_dict)  # shapes match the model here, so this is bounded
    if nonfinite and not allow_nonfinite:
        raise CheckpointError(f"{len(nonfinite)} tensors of the checkpoint hold NaN or inf: "
                              f"{_truncated(map(show_key, nonfinite), 5)}. Every prediction would be NaN or "
                              "garbage, so nothing was loaded. Use an intact checkpoint (or pass "
                              "allow_nonfinite=True / --allow-nonfinite to load it anyway; it is then reported in "
                              "info.nonfinite_keys).")
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
        path=contents.path, zip_root=contents.zip_root, is_random_demo=contents.is_random_demo,
        nonfinite_keys=nonfinite)
    return model, info


# --------------------------------------------------------------------------------------------------
# `python -m helpers inspect PATH [--model-id ID]`
# --------------------------------------------------------------------------------------------------
def inspect_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers inspect",
                                     description="Inspect a checkpoint: format, model, epoch, params, sha256, keys.")
    parser.add_argument("path", help="checkpoint file, extracted torch-zip folder, or tar")
    parser.add_argument("--model-id", choices=sorted(MODEL_REGISTRY), help="load as this model (default: detect)")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="load even if some weights are NaN/inf (they are listed)")
    args = parser.parse_args(argv)
    path = Path(args.path)
    print(f"path:      {show_key(str(path))}")
    if path.exists():
        print(f"content:   {sniff_format(path)}")
    try:
        _, info = load_checkpoint(path, args.model_id, allow_nonfinite=args.allow_nonfinite)
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
    if info.nonfinite_keys:
        print(f"NON-FINITE: {len(info.nonfinite_keys)} tensors hold NaN/inf: "
              f"{_truncated(map(show_key, info.nonfinite_keys), 8)}; results from these weights are not meaningful")
    print("keys:      all match; strict load OK")
    return 0
