"""Unpickling untrusted bytes without running code: the pickle layer under `checkpoint_file` and `checkpoint`.

Checkpoints come from the internet, so nothing here ever runs pickled code:
- torch zip files (and legacy pickle files) go through `torch.load(weights_only=True)` with a narrow
  allow-list for the extras optimizer states may hold (numpy scalars, `defaultdict`): `_torch_load_safely`;
- extracted torch-zip folders (`snapshot_83.pth/` with `data.pkl`, `data/`), and zips whose optimizer
  state torch's weights-only unpickler cannot build, go through our own restricted unpickler whose
  `find_class` knows only tensors, storages, plain containers and numpy scalars: `_unpickle_restricted`;
- before either unpickler runs, every pickle is pre-scanned opcode by opcode (`scan_pickle`): only allow-listed
  globals, no object-building opcodes, dict keys and set items must be plain scalars (a tuple key nested 60 deep
  would take 2^60 steps to hash), nesting and memo indices are bounded;
- the restricted unpickler rebuilds tensors as bounds-checked views that fit inside their storage, and checks
  each storage's byte count before it is read.

Everything refused raises `CheckpointError` (defined here, in the lowest layer, so that this module needs
nothing from the file layer; `checkpoint_file` and `checkpoint` re-export the same class). This module sees
only pickle bytes, binary streams and a `read_record(key, nbytes)` callback: files, archives and their size
limits are `checkpoint_file`'s job.
"""
from __future__ import annotations

import collections
import io
import pickle
import pickletools
import re
import reprlib
import zipfile
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not match a model; the message says what to do."""


_REDOWNLOAD_ADVICE = (
    "Re-download it (helpers.acquire.acquire_checkpoint verifies downloads), check the Google Drive id, "
    "or mirror the file to a Kaggle dataset once and load it from /kaggle/input."
)

# Hostile-input limits. A real data.pkl is well under 1 MB (ConvNeXtPose L with its Adam state: 77 kB, 800 tensors).
MAX_PICKLE_BYTES = 32 << 20
MAX_NESTING = 32  # a state dict with an optimizer state nests about 6 deep
MAX_TENSORS = 100_000


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


# --------------------------------------------------------------------------------------------------
# The restricted unpickler: allow-listed globals, bounds-checked tensors
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# torch.load(weights_only=True) with the allow-list
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


def _scan_legacy(source, where: str) -> None:
    """Scan the pickles a legacy torch file starts with; `source` is a path or a binary file at its start."""
    if hasattr(source, "read"):
        for _ in range(_LEGACY_PICKLES):
            scan_pickle(source, where)
    else:
        with open(source, "rb") as f:
            _scan_legacy(f, where)


def _rewind(source) -> None:
    if hasattr(source, "seek"):
        source.seek(0)


def _torch_load_safely(source, map_location, where: str, *, zip_pickle: bytes | None = None,
                       restricted: Callable[[], Any] | None = None):
    """Pre-scan the pickle(s), then `torch.load(weights_only=True)` of `source` (a path or a seekable binary file).

    For a torch zip the caller passes its `data.pkl` bytes as `zip_pickle` (read size-checked; scanned here instead
    of a legacy file's pickles) and `restricted()`, which reads the zip with `_unpickle_restricted`: the fallback for
    optimizer states that torch's weights-only unpickler cannot build (e.g. a `defaultdict`)."""
    if zip_pickle is None:
        _scan_legacy(source, where)
    else:
        scan_pickle(zip_pickle, where)
    _rewind(source)
    try:
        with torch.serialization.safe_globals(_EXTRA_SAFE_GLOBALS):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if restricted is not None:
            _rewind(source)
            return restricted()
        match = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"references {match.group(1)}" if match else "contains objects"
        raise CheckpointError(
            f"refused to read {where}: its pickle {what}, which is not on the allow-list of safe types "
            "(tensors, numbers, strings, containers). Loading it unsafely could run arbitrary code; do not. "
            "Use the checkpoint from its official source.") from None
    except _READ_ERRORS as e:
        raise CheckpointError(f"{where} is corrupt or malformed ({type(e).__name__}: {_short(str(e), 200)}). "
                              + _REDOWNLOAD_ADVICE) from None
