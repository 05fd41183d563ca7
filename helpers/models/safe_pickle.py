"""Unpickling untrusted bytes without running code: the pickle layer under `checkpoint_file` and `checkpoint`.

PyTorch's own `torch.load(f, map_location="cpu", weights_only=True)` is the engine (`load_with_torch`): it
reads every serialisation PyTorch has written since 0.3 (zip, legacy pre-1.6, `_rebuild_tensor`,
`_rebuild_tensor_v2`, `_rebuild_parameter`, typed storages, storages saved on `cuda:N`, state dicts with their
`_metadata`), with a narrow extra allow-list for what training scripts store beside the weights (numpy scalars and
dtypes, `collections.defaultdict`, read as a plain dict).

`weights_only=True` had a code-execution bypass up to torch 2.5.1 (CVE-2025-32434) and memory corruption through
SETITEM(S) on non-dicts and mismatched storage sizes before 2.10 (CVE-2026-24747). So, whatever torch is installed,
every pickle is first pre-scanned here, opcode by opcode (`scan_pickle`), before torch sees it:
- only allow-listed globals (`SAFE_PICKLE_GLOBALS`), called only in the ways real checkpoints call them;
- no object-building opcodes; BUILD only where `torch.save` writes it: on an `OrderedDict` whose state is a plain
  dict holding exactly `_metadata` of plain values (what `Module.state_dict()` carries), and on numpy dtypes;
- SETITEM(S) only into dicts, APPEND(S) only into lists; dict keys and set items plain scalars (a tuple key
  nested 60 deep would take 2^60 steps to hash); nesting and memo indices bounded;
- every storage's persistent id well formed (type, plain key, element count), and every tensor a view whose
  elements lie inside its storage.
The scan returns the storages the pickle declares (`PickleScan.storages`), so that the file layer
(`checkpoint_file`) checks every storage record's size before anything is read.

Everything refused raises `CheckpointError` (defined here, in the lowest layer; `checkpoint_file` and
`checkpoint` re-export the same class). This module sees only pickle bytes and binary streams: files, archives
and their size limits are `checkpoint_file`'s job.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import re
import reprlib
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import FixableError


class CheckpointError(FixableError):
    """A checkpoint that cannot be read or does not match a model; the message says what to do (a setting that gets
    past it is named in `setting`: helpers.errors)."""


_REDOWNLOAD_ADVICE = (
    "Re-download it (the suite verifies its own downloads), check the Google Drive id, "
    "or mirror the file to a Kaggle dataset once and load it from /kaggle/input."
)

# Hostile-input limits. A real data.pkl is well under 1 MB (ConvNeXtPose L with its Adam state: 77 kB, 800 tensors).
MAX_PICKLE_BYTES = 32 << 20
MAX_NESTING = 32  # a state dict with an optimizer state nests about 6 deep
MAX_TENSORS = 100_000
MAX_PICKLE_OPS = 3_000_000  # ~20 per tensor: room for MAX_TENSORS; bounds the scan's time and memory
MAX_STORAGE_ELEMENTS = 1 << 40


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
# The allow-list: what real checkpoints reference, and nothing else
# --------------------------------------------------------------------------------------------------
# Legacy typed storages (the persistent ids of every format name them) -> element size in bytes.
STORAGE_ELEMENT_SIZES = {
    "FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
}
_ORDERED_DICT = ("collections", "OrderedDict")
_DEFAULT_DICT = ("collections", "defaultdict")
_COUNTER = ("collections", "Counter")
_REBUILD_TENSOR = ("torch._utils", "_rebuild_tensor")  # PyTorch 0.3
_REBUILD_TENSOR_V2 = ("torch._utils", "_rebuild_tensor_v2")  # PyTorch 0.4 on
_REBUILD_PARAMETER = ("torch._utils", "_rebuild_parameter")
_NUMPY_SCALARS = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}
_NUMPY_DTYPE = ("numpy", "dtype")
_CODECS_ENCODE = ("_codecs", "encode")
_BUILTIN_TYPES = {(m, n) for m in ("builtins", "__builtin__") for n in ("dict", "list", "set")}
SAFE_PICKLE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {_ORDERED_DICT, _DEFAULT_DICT, _COUNTER, _REBUILD_TENSOR, _REBUILD_TENSOR_V2, _REBUILD_PARAMETER,
     _NUMPY_DTYPE, _CODECS_ENCODE, *_NUMPY_SCALARS, *_BUILTIN_TYPES}
    | {("torch", name) for name in STORAGE_ELEMENT_SIZES})
_DICT_LIKE = {_ORDERED_DICT, _DEFAULT_DICT, _COUNTER}
_SET_TYPES = {("builtins", "set"), ("__builtin__", "set")}
# numpy dtypes a checkpoint may hold scalars of (no object, void, string or datetime dtypes)
_NUMPY_DTYPE_CODE = re.compile(r"^[<>|=]?(?:f[248]|i[1248]|u[1248]|b1|c(?:8|16)|\?)$")
_STORAGE_KEY = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_LOCATION = re.compile(r"^[a-z_]{1,16}(?::\d{1,4})?$")  # cpu, cuda:0, mps; map_location="cpu" maps them all


@dataclass(frozen=True)
class StorageDecl:
    """One storage a pickle declares in a persistent id: its record key, type, element count and device."""

    key: str
    type_name: str  # e.g. "FloatStorage"
    numel: int
    location: str

    @property
    def nbytes(self) -> int:
        return self.numel * STORAGE_ELEMENT_SIZES[self.type_name]


@dataclass
class PickleScan:
    """What `scan_pickle` learnt: the storages declared (record key -> declaration) and the top-level object."""

    storages: dict[str, StorageDecl] = field(default_factory=dict)
    top: Any = None  # the _Sym of the object the pickle builds


# --------------------------------------------------------------------------------------------------
# Pickle pre-scan: a symbolic run of the opcodes, before any unpickler builds anything
# --------------------------------------------------------------------------------------------------
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
_MAX_TRACKED_KEYS = 16  # dict keys remembered per dict (only BUILD states are checked by key)


class _Sym:
    """What an object on the symbolic stack is.

    kind: scalar / list / tuple / dict / set / frozenset / global / call / storage / other / mark. `value`: a
    scalar's Python value, a global's or call's (module, name), a storage's StorageDecl (numel of the view).
    `items`: a list's or tuple's item syms. `keys`: the first dict keys stored. `plain`: holds only scalars and
    plain containers (what `_metadata` may hold)."""

    __slots__ = ("kind", "value", "depth", "items", "keys", "plain")

    def __init__(self, kind: str, value=None, depth: int = 0, items=None, plain: bool = False):
        self.kind, self.value, self.depth, self.items, self.plain = kind, value, depth, items, plain
        self.keys = [] if kind == "dict" else None

    def name(self) -> str:
        if self.kind in ("global", "call"):
            return ".".join(map(show_key, self.value))
        return f"a {self.kind}"


_MARK = _Sym("mark")


def _refuse_global(module: str, name: str, where: str) -> CheckpointError:
    return CheckpointError(
        f"refused to read {where}: its pickle references {show_key(module)}.{show_key(name)}, which is not on the "
        "allow-list of safe types (tensors, storages, numbers, strings, containers). Loading it unsafely could run "
        "arbitrary code; do not. Use the checkpoint from its official source.")


def _int_literal(sym: _Sym) -> int | None:
    if sym.kind == "scalar" and isinstance(sym.value, int) and not isinstance(sym.value, bool):
        return sym.value
    return None


def _ints(sym: _Sym) -> tuple[int, ...] | None:
    """A tuple of literal integers (a tensor's size or stride), else None."""
    if sym.kind != "tuple":
        return None
    values = tuple(_int_literal(i) for i in sym.items)
    return None if any(v is None for v in values) else values


def scan_pickle(source, where: str) -> PickleScan:
    """Refuse a pickle (bytes or a binary file positioned at its start) that a checkpoint has no use for, before
    anything is unpickled; return the storages it declares. Reads exactly one pickle; a file is left just after
    its STOP opcode."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    stack: list[_Sym] = []
    memo: dict[int, _Sym] = {}
    result = PickleScan()

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

    def container(kind: str, items: list[_Sym], *, keep_items: bool = True) -> _Sym:
        depth = 1 + max((i.depth for i in items), default=0)
        if depth > MAX_NESTING:
            raise bad(f"nests containers more than {MAX_NESTING} deep")
        return _Sym(kind, None, depth, items if keep_items else None, all(i.plain for i in items))

    def grow(target: _Sym, items: list[_Sym]) -> None:
        target.depth = max(target.depth, 1 + max((i.depth for i in items), default=0))
        if target.depth > MAX_NESTING:
            raise bad(f"nests containers more than {MAX_NESTING} deep")
        target.plain = target.plain and all(i.plain for i in items)

    def check_keys(keys: list[_Sym], what: str) -> None:
        for key in keys:
            if key.kind != "scalar":
                raise bad(f"uses a {key.kind} as a {what}; only numbers and strings are accepted (hashing nested "
                          "tuples can take exponential time)")

    def remember_keys(target: _Sym, keys: list[_Sym]) -> None:
        """The first keys stored into a dict (a BUILD state must be exactly {'_metadata': ...})."""
        if target.keys is None:
            return
        for key in keys:
            if len(target.keys) > _MAX_TRACKED_KEYS:
                break
            target.keys.append(key.value)

    def dict_target() -> _Sym:
        if not stack or not (stack[-1].kind == "dict" or (stack[-1].kind == "call" and stack[-1].value in _DICT_LIKE)):
            raise bad("stores items into something that is not a dict")
        return stack[-1]

    def pairs_have_plain_keys(args: _Sym) -> bool:
        """`OrderedDict()`, `Counter({...})`, or `OrderedDict([[k, v], ...])` (how Python 2 pickled it) with
        every key a number or string."""
        if not args.items:
            return True
        if len(args.items) != 1:
            return False
        pairs = args.items[0]
        if pairs.kind == "dict":  # its keys were checked when they were stored
            return True
        return pairs.kind in ("list", "tuple") and all(
            p.kind in ("list", "tuple") and len(p.items) == 2 and p.items[0].kind == "scalar" for p in pairs.items)

    def storage(pid: _Sym) -> _Sym:
        items = pid.items if pid.kind == "tuple" else None
        if not items or len(items) not in (5, 6) or items[0].kind != "scalar" or items[0].value != "storage":
            raise bad("is malformed (a persistent id that is not a storage)")
        kind, key, location, numel = items[1], items[2], items[3], _int_literal(items[4])
        if kind.kind != "global" or kind.value[0] != "torch" or kind.value[1] not in STORAGE_ELEMENT_SIZES:
            raise bad(f"is malformed (a storage of type {kind.name()})")
        if key.kind != "scalar" or not isinstance(key.value, str) or not _STORAGE_KEY.match(key.value):
            raise bad(f"is malformed (storage key {show_key(key.value) if key.kind == 'scalar' else key.kind} is "
                      "not a plain file name)")
        if location.kind != "scalar" or not isinstance(location.value, str) or not _LOCATION.match(location.value):
            raise bad("is malformed (a storage location that is not a device name)")
        if numel is None or not 0 <= numel < MAX_STORAGE_ELEMENTS:
            raise bad(f"is malformed (storage data/{key.value} has element count "
                      f"{_short(items[4].value, 40) if items[4].kind == 'scalar' else items[4].kind})")
        decl = StorageDecl(key.value, kind.value[1], numel, location.value)
        known = result.storages.setdefault(decl.key, decl)
        if (known.type_name, known.numel) != (decl.type_name, decl.numel):
            raise bad(f"is malformed (storage data/{decl.key} is declared twice, with different types or sizes)")
        view_numel = numel
        if len(items) == 6 and not (items[5].kind == "scalar" and items[5].value is None):
            # legacy (pre-1.6) storage view: (view key, offset, size) inside the root storage
            view = items[5].items if items[5].kind == "tuple" else None
            offset, size = (_int_literal(view[1]), _int_literal(view[2])) if view and len(view) == 3 else (None, None)
            if offset is None or size is None or offset < 0 or size < 0 or offset + size > numel:
                raise bad(f"is malformed (a storage view reaches past the end of storage data/{decl.key})")
            view_numel = size
        return _Sym("storage", StorageDecl(decl.key, decl.type_name, view_numel, decl.location))

    def tensor(func: tuple[str, str], args: list[_Sym]) -> None:
        """`_rebuild_tensor(storage, offset, size, stride)` and `_rebuild_tensor_v2(..., requires_grad,
        backward_hooks[, metadata])`: a strided view that must fit inside its storage."""
        expected = (4,) if func == _REBUILD_TENSOR else (6, 7)
        if len(args) not in expected or args[0].kind != "storage":
            raise bad(f"calls {'.'.join(func)} with arguments that are not a storage and its view")
        offset, size, stride = _int_literal(args[1]), _ints(args[2]), _ints(args[3])
        if offset is None or size is None or stride is None or len(size) != len(stride):
            raise bad("is malformed (a tensor whose offset, size or stride is not integers)")
        if min((offset, *size, *stride), default=0) < 0:
            raise bad("is malformed (a tensor with a negative offset, size or stride)")
        if all(size) and offset + sum((s - 1) * st for s, st in zip(size, stride)) >= args[0].value.numel:
            raise bad(f"is malformed (a tensor reaches past the end of storage data/{args[0].value.key})")
        if len(args) > 4 and not (args[4].kind == "scalar" and isinstance(args[4].value, bool)):
            raise bad("is malformed (a tensor's requires_grad is not a bool)")
        for extra in args[5:]:  # backward hooks (an empty OrderedDict) and tensor metadata: plain values only
            if not extra.plain:
                raise bad(f"is malformed (a tensor carries {extra.name()} as hooks or metadata)")

    def call(func: _Sym, args: _Sym) -> _Sym:
        """The result of REDUCE: only the calls real checkpoints make, with the arguments they pass."""
        name = func.value
        items = args.items
        if name in (_REBUILD_TENSOR, _REBUILD_TENSOR_V2):
            tensor(name, items)
            return _Sym("call", name, args.depth)
        if name == _REBUILD_PARAMETER:
            if len(items) != 3 or not (items[0].kind == "call" and items[0].value in (_REBUILD_TENSOR,
                                                                                        _REBUILD_TENSOR_V2)):
                raise bad("calls torch._utils._rebuild_parameter on something that is not a tensor")
            return _Sym("call", name, args.depth)
        if name in (_ORDERED_DICT, _COUNTER):
            if not pairs_have_plain_keys(args):
                raise bad(f"builds {'.'.join(name)} from items whose keys are not numbers or strings")
            return _Sym("call", name, args.depth, plain=args.plain)
        if name == _DEFAULT_DICT:
            factory = items[0] if items else None
            if len(items) > 1 or not (factory is None or (factory.kind == "scalar" and factory.value is None)
                                      or (factory.kind == "global" and factory.value in _BUILTIN_TYPES)):
                raise bad("builds a defaultdict whose factory is not a plain container")
            return _Sym("call", name, args.depth)
        if name in _SET_TYPES:
            if len(items) != 1 or items[0].kind != "list" or any(i.kind != "scalar" for i in items[0].items):
                raise bad("builds a set from items that are not numbers or strings")
            return _Sym("call", name, args.depth, plain=True)
        if name == _NUMPY_DTYPE:
            code = items[0].value if items and items[0].kind == "scalar" else None
            if not (isinstance(code, str) and _NUMPY_DTYPE_CODE.match(code)) or not args.plain:
                raise bad(f"builds a numpy dtype {_short(code, 40)} (for a numpy scalar); only numeric dtypes are "
                          "accepted")
            return _Sym("call", name, args.depth)
        if name in _NUMPY_SCALARS:
            if len(items) != 2 or items[0].kind != "call" or items[0].value != _NUMPY_DTYPE or \
                    items[1].kind != "scalar":
                raise bad("builds a numpy scalar that is not a numeric dtype with raw bytes")
            return _Sym("call", name, args.depth, plain=True)
        if name == _CODECS_ENCODE:  # protocol-2 bytes: _codecs.encode(text, "latin1")
            if len(items) != 2 or items[0].kind != "scalar" or not isinstance(items[0].value, str) or \
                    items[1].kind != "scalar" or items[1].value not in ("latin1", "latin-1"):
                raise bad("calls _codecs.encode other than to store bytes")
            return _Sym("scalar", None, 1, plain=True)  # bytes: hashable in constant time per byte
        raise bad(f"calls {func.name()}, which a checkpoint never calls")

    def build(target: _Sym, state: _Sym) -> None:
        """BUILD where `torch.save` writes it: a state dict's `_metadata`, a numpy dtype's state."""
        if target.kind == "call" and target.value == _ORDERED_DICT:
            if state.kind != "dict" or state.keys != ["_metadata"] or not state.plain:
                raise bad("sets the state of collections.OrderedDict (BUILD) to something other than a plain "
                          "'_metadata' dict (the module versions a state dict carries)")
            return
        if target.kind == "call" and target.value == _NUMPY_DTYPE:
            if state.kind != "tuple" or any(i.kind != "scalar" for i in state.items):
                raise bad("sets the state of a numpy dtype to something other than numbers and strings")
            return
        raise bad(f"sets the state of {target.name()} (BUILD); only state dicts ('_metadata') and numpy dtypes "
                  "carry state in a checkpoint")

    ops = 0
    try:
        for opcode, arg, _pos in pickletools.genops(stream):
            ops += 1
            if ops > MAX_PICKLE_OPS:
                raise bad(f"has more than {MAX_PICKLE_OPS:,} opcodes; a checkpoint's has a few per tensor")
            name = opcode.name
            if name in _SCALAR_OPS:
                value = True if name == "NEWTRUE" else False if name == "NEWFALSE" else arg
                stack.append(_Sym("scalar", value, plain=True))
            elif name in ("PROTO", "FRAME"):
                pass
            elif name == "STOP":
                if len(stack) != 1:
                    raise bad(f"is malformed (STOP with a stack of {len(stack)} items)")
                result.top = stack[0]
                return result
            elif name == "MARK":
                stack.append(_MARK)
            elif name in ("EMPTY_LIST", "EMPTY_TUPLE"):
                stack.append(_Sym(name[6:].lower(), None, 1, [], plain=True))
            elif name in ("EMPTY_DICT", "EMPTY_SET"):
                stack.append(_Sym(name[6:].lower(), None, 1, plain=True))
            elif name == "BYTEARRAY8":
                stack.append(_Sym("other"))
            elif name in ("LIST", "TUPLE", "DICT", "FROZENSET"):
                items = pop_mark()
                if name == "DICT":
                    check_keys(items[0::2], "dict key")
                if name == "FROZENSET":
                    check_keys(items, "set item")
                sym = container(name.lower(), items, keep_items=name in ("LIST", "TUPLE"))
                if name == "DICT":
                    remember_keys(sym, items[0::2])
                stack.append(sym)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                items = [pop() for _ in range(int(name[-1]))][::-1]
                stack.append(container("tuple", items))
            elif name in ("APPEND", "APPENDS"):
                items = [pop()] if name == "APPEND" else pop_mark()
                if not stack or stack[-1].kind != "list":
                    raise bad("appends to something that is not a list")
                grow(stack[-1], items)
                stack[-1].items.extend(items)
            elif name in ("SETITEM", "SETITEMS"):
                items = [*reversed([pop(), pop()])] if name == "SETITEM" else pop_mark()
                if len(items) % 2:
                    raise bad("is malformed (SETITEMS with an odd number of items)")
                check_keys(items[0::2], "dict key")
                target = dict_target()
                grow(target, items[1::2])
                remember_keys(target, items[0::2])
            elif name == "ADDITEMS":
                items = pop_mark()
                check_keys(items, "set item")
                if not stack or not (stack[-1].kind == "set" or stack[-1].value in _SET_TYPES):
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
                stack.append(call(func, args))
            elif name == "BUILD":
                state = pop()
                build(stack[-1] if stack else pop(), state)
            elif name == "BINPERSID":
                stack.append(storage(pop()))
            elif name in _REFUSED_OPS:
                raise bad(f"{_REFUSED_OPS[name]} (opcode {name})")
            else:
                raise bad(f"uses the opcode {name}, which a checkpoint never needs")
    except ValueError as e:  # pickletools: unknown opcode, truncated argument
        raise bad(f"is malformed ({_short(str(e), 160)})") from None
    raise bad("is truncated (no STOP opcode)")


def load_plain(pickle_bytes: bytes, where: str):
    """Unpickle a small pickle that may hold only numbers, strings and plain containers (the header pickles of a
    legacy torch file), after `scan_pickle`; any global or persistent id is refused."""

    class _NoGlobals(pickle.Unpickler):
        def find_class(self, module, name):
            raise _refuse_global(module, name, where)

        def persistent_load(self, pid):
            raise CheckpointError(f"{where} is malformed: a storage where plain values were expected. "
                                  + _REDOWNLOAD_ADVICE)

    scan_pickle(pickle_bytes, where)
    try:
        return _NoGlobals(io.BytesIO(pickle_bytes), encoding="utf-8").load()
    except CheckpointError:
        raise
    except _READ_ERRORS as e:
        raise CheckpointError(f"{where} is corrupt or malformed ({type(e).__name__}: {_short(str(e), 200)}). "
                              + _REDOWNLOAD_ADVICE) from None


# --------------------------------------------------------------------------------------------------
# torch.load(weights_only=True), with the extras real checkpoints hold
# --------------------------------------------------------------------------------------------------
def _defaultdict_as_dict(factory=None, *args):
    """`collections.defaultdict` read as a plain dict: torch's weights-only unpickler stores items only into
    dict, OrderedDict and Counter; the factory is irrelevant to reading weights (the scan checked it)."""
    return dict(*args)


def _extra_safe_globals() -> list:
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    extra: list = [dict, list, np.dtype, (_defaultdict_as_dict, "collections.defaultdict"),
                   (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    # BUILD on a dtype checks the dtype's class (numpy >= 1.25 has one class per dtype)
    for code in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1", "c8", "c16"):
        dtype_class = type(np.dtype(code))
        if dtype_class is not np.dtype:
            extra.append(dtype_class)
    return extra


_EXTRA_SAFE_GLOBALS = _extra_safe_globals()
# What a hostile file can make torch's loader raise; all mean "not a sane checkpoint".
_READ_ERRORS = (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError, IndexError,
                OverflowError, MemoryError, RecursionError, NotImplementedError, AssertionError, zipfile.BadZipFile,
                pickle.UnpicklingError)


def load_with_torch(source, where: str, map_location="cpu"):
    """`torch.load(source, map_location, weights_only=True)` of a file whose pickles `scan_pickle` passed and
    whose storage records the file layer checked. `source`: a path (torch zips) or a binary file object without
    `fileno` (legacy files: torch then never tries its old tar reader on them)."""
    if hasattr(source, "seek"):
        source.seek(0)
    if not hasattr(torch.serialization, "safe_globals"):
        raise CheckpointError(f"reading {where} needs torch >= 2.5 (torch.serialization.safe_globals); this is torch "
                              f"{torch.__version__}. Upgrade torch (pip install -U torch).")
    try:
        with torch.serialization.safe_globals(_EXTRA_SAFE_GLOBALS):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        match = re.search(r"GLOBAL (\S+)", str(e))
        what = f"references {match.group(1)}" if match else f"holds something it refuses ({_first_reason(e)})"
        raise CheckpointError(
            f"refused to read {where}: PyTorch's weights-only loader says its pickle {what}. Loading it unsafely "
            "could run arbitrary code; do not. Use the checkpoint from its official source.") from None
    except _READ_ERRORS as e:
        raise CheckpointError(f"{where} is corrupt or malformed ({type(e).__name__}: {_short(str(e), 200)}). "
                              + _REDOWNLOAD_ADVICE) from None


def _first_reason(error: Exception) -> str:
    """The line of torch's weights-only message that says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = next((line for line in lines if not line.startswith(("Weights only load failed", "(1)", "(2)",
                                                                  "In PyTorch", "Please file"))), lines[-1:] or [""])
    return _short(reason if isinstance(reason, str) else reason[0], 160)


class NoFileno(io.RawIOBase):
    """A read-only view of a binary file without `fileno`: `torch.load` reads a legacy file through it with Python
    reads, and never tries to open it as one of the pre-0.1.10 tar checkpoints first."""

    def __init__(self, raw):
        super().__init__()
        self._raw = raw

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._raw.readinto(buffer)

    def read(self, size: int = -1) -> bytes:
        return self._raw.read(size)

    def readline(self, size: int = -1) -> bytes:
        return self._raw.readline(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def fileno(self):
        raise AttributeError("fileno")  # torch._should_read_directly catches AttributeError: read through Python
