"""Hostile files fed to helpers.models.checkpoint and helpers.acquire.

Every attack must end in a clear CheckpointError/AcquireError, run no pickled code (a payload would create a
marker file), write nothing outside the test's temp folder, and finish quickly (exhaustion attacks carry a time
bound that the unguarded code exceeds by orders of magnitude). Pickles are written opcode by opcode here, so the
tests do not depend on what `pickle` itself would emit."""
from __future__ import annotations

import io
import os
import pickle
import re
import struct
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.__main__ import main as cli_main
from helpers.acquire import AcquireError, acquire_checkpoint
from helpers.models import build_model
from helpers.models.checkpoint import CheckpointError, load_checkpoint, read_state_dict
from helpers.models.checkpoint_file import read_checkpoint, sniff_format
from helpers.models import safe_pickle

SMALL_MODEL = "convnextpose_XS"


# ---------------------------------------------------------------------------------------------- pickle writing
def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _int(n: int) -> bytes:
    return pickle.dumps(n, protocol=2)[2:-1]  # ints are never memoized, so this is just the opcode


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


PROTO = b"\x80\x02"


def _call(module: str, name: str, *args: bytes) -> bytes:
    return _global(module, name) + b"(" + b"".join(args) + b"tR"  # MARK args TUPLE REDUCE


def _storage_pid(key: str, storage: str = "FloatStorage", numel: int = 4) -> bytes:
    return b"(" + _str("storage") + _global("torch", storage) + _str(key) + _str("cpu") + _int(numel) + b"tQ"


def _tensor(key: str = "0", offset: int = 0, size=(4,), stride=(1,), numel: int = 4, storage="FloatStorage") -> bytes:
    def tup(values):
        return b"(" + b"".join(_int(v) for v in values) + b"t"
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + _storage_pid(key, storage, numel) + _int(offset)
            + tup(size) + tup(stride) + b"\x89" + _call("collections", "OrderedDict") + b"tR")


def _state_dict(*items: tuple[str, bytes]) -> bytes:
    return PROTO + b"}" + b"".join(_str(k) + v + b"s" for k, v in items) + b"."


class Marker:
    def __init__(self, folder: Path):
        self.path = folder / "PWNED"
        self.command = _str(f"touch '{self.path}'")


@pytest.fixture
def marker(tmp_path) -> Marker:
    return Marker(tmp_path)


@pytest.fixture(autouse=True)
def _nothing_written_outside(tmp_path):
    """Nothing may appear in the working directory or next to the test's temp folder."""
    cwd, parent = set(os.listdir(".")), set(os.listdir(tmp_path.parent))
    yield
    assert set(os.listdir(".")) == cwd and set(os.listdir(tmp_path.parent)) == parent


# ---------------------------------------------------------------------------------------------- containers
def _zip(path: Path, pickle_bytes: bytes, records: dict[str, bytes] | None = None, root: str = "archive",
         extra: tuple = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/data.pkl", pickle_bytes)
        zf.writestr(f"{root}/version", "3\n")
        for key, data in (records or {}).items():
            zf.writestr(f"{root}/data/{key}", data)
        for name, data in extra:
            zf.writestr(name, data)
    return path


def _folder(path: Path, pickle_bytes: bytes, records: dict[str, bytes] | None = None) -> Path:
    (path / "data").mkdir(parents=True)
    (path / "data.pkl").write_bytes(pickle_bytes)
    for key, data in (records or {}).items():
        (path / "data" / key).write_bytes(data)
    return path


def _legacy(path: Path, pickle_bytes: bytes) -> Path:
    """Pre-1.6 layout: magic, protocol, sys info, the object, storage keys (all pickles), then raw storages."""
    head = io.BytesIO()
    for value in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                 "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(value, head, protocol=2)
    path.write_bytes(head.getvalue() + pickle_bytes + pickle.dumps([], protocol=2))
    return path


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _all_forms(tmp_path: Path, pickle_bytes: bytes, records: dict[str, bytes] | None = None) -> list[Path]:
    """The same pickle as a torch zip, an extracted folder, a tar of that folder and a legacy file."""
    folder = _folder(tmp_path / "unpacked" / "snapshot_1.pth", pickle_bytes, records)
    tar_members = [_file_member("snapshot_1.pth/data.pkl", pickle_bytes)]
    tar_members += [_file_member(f"snapshot_1.pth/data/{k}", v) for k, v in (records or {}).items()]
    return [_zip(tmp_path / "snapshot_1.pth.tar", pickle_bytes, records), folder,
            _tar(tmp_path / "bundle.tar", tar_members), _legacy(tmp_path / "legacy.pth", pickle_bytes)]


def _refused(source, *patterns: str, model_id=None, seconds: float = 5.0, **kwargs) -> str:
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(source, model_id, **kwargs)
    elapsed = time.perf_counter() - start
    message = str(exc.value)
    for pattern in patterns:
        assert re.search(pattern, message, re.IGNORECASE | re.DOTALL), (pattern, message)
    assert elapsed < seconds, f"took {elapsed:.1f} s: {message[:200]}"
    assert len(message) < 3000, "error messages stay readable"
    return message


# ---------------------------------------------------------------------------------------------- code execution
DANGEROUS = [("builtins", "eval"), ("builtins", "exec"), ("__builtin__", "eval"), ("builtins", "getattr"),
             ("builtins", "__import__"), ("os", "system"), ("posix", "system"), ("nt", "system"),
             ("subprocess", "Popen"), ("torch", "load"), ("torch.serialization", "load"),
             ("torch._utils", "_rebuild_device_tensor_from_numpy"), ("torch._utils", "_rebuild_qtensor"),
             ("torch._utils", "_rebuild_sparse_tensor"), ("numpy.core.multiarray", "_reconstruct"),
             ("functools", "partial"), ("operator", "attrgetter"), ("operator", "methodcaller"),
             ("copyreg", "_reconstructor"), ("torch.nn.modules.module", "Module"),
             ("collections", "OrderedDict.fromkeys"), ("torch._utils", "_rebuild_tensor_v2.__globals__"),
             ("torch", "FloatStorage.__class__"),
             # classes with __setstate__ (a BUILD on them runs it) that torch's own weights-only loader allows
             ("torch.nn.parameter", "Parameter"), ("torch", "Size"), ("torch", "Tensor"), ("torch", "device"),
             ("torch._utils", "_rebuild_parameter_with_state"), ("torch._utils", "_rebuild_tensor_v3"),
             ("torch._tensor", "_rebuild_from_type_v2"), ("builtins", "bytearray"), ("builtins", "complex"),
             ("collections", "deque"), ("argparse", "Namespace"), ("numpy", "ndarray"), ("torch.cuda", "FloatStorage")]


@pytest.mark.parametrize("module, name", DANGEROUS, ids=[f"{m}.{n}" for m, n in DANGEROUS])
def test_dangerous_globals_are_refused_in_every_container(module, name, marker, tmp_path):
    payload = _state_dict(("w", _call(module, name, marker.command)))
    for source in _all_forms(tmp_path, payload):
        _refused(source, "refused", re.escape(f"{module}.{name}"), "arbitrary code")
    assert not marker.path.exists()


def test_other_ways_to_reach_a_callable_are_refused(marker, tmp_path):
    stack_global = b"\x80\x04" + _str("posix") + _str("system") + b"\x93(" + marker.command + b"tR."
    attacks = {
        "STACK_GLOBAL": (stack_global, r"posix\.system"),
        "INST": (b"(" + marker.command + b"ios\nsystem\n.", "INST|os.system"),
        "OBJ": (PROTO + b"(" + _global("os", "system") + marker.command + b"o.", r"os\.system"),
        "NEWOBJ on an allowed class": (PROTO + _global("collections", "OrderedDict") + b")\x81.", "NEWOBJ"),
        "NEWOBJ_EX": (b"\x80\x04" + _global("collections", "OrderedDict") + b")}\x92.", "NEWOBJ_EX"),
        "EXT1": (PROTO + b"\x82\x01.", "extension registry"),
        "text PERSID": (b"P../../etc/passwd\n.", "persistent id"),
        "NEXT_BUFFER": (b"\x80\x05\x97.", "out-of-band"),
        "defaultdict factory": (PROTO + _call("collections", "defaultdict", _global("os", "system")) + b".",
                                r"os\.system"),
        "BUILD on an OrderedDict": (PROTO + _call("collections", "OrderedDict") + b"(N}" + _str("x") + _int(1)
                                    + b"stb.", r"BUILD|sets the state of collections\.OrderedDict"),
        "BUILD setting __class__": (PROTO + _call("collections", "OrderedDict") + b"}" + _str("__class__")
                                    + _global("os", "system") + b"sb.", r"os\.system"),
        "BUILD (Tensor.__setstate__ -> set_) on a tensor": (
            _state_dict(("w", _tensor() + b"(" + _global("torch", "FloatStorage") + _int(0) + b"(" + _int(64)
                         + b"t(" + _int(1) + b"ttb")), "sets the state of torch._utils._rebuild_tensor_v2"),
        "a global named by a non-string": (b"\x80\x04" + _int(1) + _int(2) + b"\x93.", "two strings"),
    }
    for what, (payload, pattern) in attacks.items():
        for source in _all_forms(tmp_path / what.replace(" ", "_"), payload, {"0": bytes(16)}):
            message = _refused(source, "refused", pattern)
            assert "Traceback" not in message, what
    assert not marker.path.exists()


# ---------------------------------------------------------------------------------------------- the new allowances
def _metadata(value: bytes) -> bytes:
    """A state dict's BUILD state: {'_metadata': value}."""
    return b"}" + _str("_metadata") + value + b"s"


def _versions(*prefixes: str) -> bytes:
    """OrderedDict([(prefix, {'version': 1}), ...]), as Module.state_dict() writes _metadata."""
    items = b"".join(_str(p) + b"}" + _str("version") + _int(1) + b"s" for p in prefixes)
    return _call("collections", "OrderedDict") + (b"(" + items + b"u" if items else b"")


def _state_dict_with(state: bytes, target: bytes | None = None) -> bytes:
    """OrderedDict({'w': tensor}) whose state is set by BUILD (what torch.save writes for model.state_dict())."""
    target = target if target is not None else _call("collections", "OrderedDict")
    return PROTO + target + b"(" + _str("w") + _tensor() + b"u" + state + b"b."


def _legacy_with_records(path: Path, pickle_bytes: bytes, records: dict[str, bytes], itemsize: int = 4) -> Path:
    """A legacy file as torch.save writes it: header pickles, the object, the storage keys, then per storage its
    element count (8 bytes) and its bytes."""
    head = io.BytesIO()
    for value in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                 "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(value, head, protocol=2)
    body = b"".join(struct.pack("<q", len(d) // itemsize) + d for d in records.values())
    path.write_bytes(head.getvalue() + pickle_bytes + pickle.dumps(list(records), protocol=2) + body)
    return path


def _legacy_tensor(key: str = "0", numel: int = 4, view: bytes = b"N", size=(4,), offset: int = 0) -> bytes:
    """_rebuild_tensor_v2 over a legacy persistent id (6 items: the last is a storage view or None)."""
    pid = b"(" + _str("storage") + _global("torch", "FloatStorage") + _str(key) + _str("cuda:0") + _int(numel) \
        + view + b"tQ"
    dims = b"(" + b"".join(_int(v) for v in size) + b"t"
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + _int(offset) + dims + b"(" + _int(1) + b"t"
            + b"\x89" + _call("collections", "OrderedDict") + b"tR")


def test_a_state_dicts_metadata_is_read_in_every_container(tmp_path):
    """The allowance itself: BUILD on an OrderedDict with {'_metadata': plain versions}, in a zip, an extracted
    folder, a tar of that folder and a legacy file (with its storages on cuda:0), read as torch.load reads it."""
    payload = _state_dict_with(_metadata(_versions("", "module", "module.0")))
    weights = struct.pack("<4f", 1, 2, 3, 4)
    legacy_payload = PROTO + _call("collections", "OrderedDict") + b"(" + _str("w") + _legacy_tensor() + b"u" \
        + _metadata(_versions("")) + b"b."
    sources = _all_forms(tmp_path, payload, {"0": weights})[:3]
    sources.append(_legacy_with_records(tmp_path / "legacy_real.pth", legacy_payload, {"0": weights}))
    for source in sources:
        obj = read_checkpoint(source).obj
        assert list(obj) == ["w"] and obj["w"].tolist() == [1, 2, 3, 4] and obj["w"].device.type == "cpu"
        assert list(obj._metadata) == (["", "module", "module.0"] if source != sources[-1] else [""])
        assert obj._metadata[""] == {"version": 1}


BUILD_ABUSES = {
    "state that is a list": (_state_dict_with(b"](" + _str("_metadata") + b"e"), "other than a plain '_metadata'"),
    "state that is a tuple": (_state_dict_with(_str("_metadata") + b"}\x86"), "other than a plain '_metadata'"),
    "state that is a tensor": (_state_dict_with(_tensor()), "other than a plain '_metadata'"),
    "_metadata holding a tensor": (_state_dict_with(_metadata(_tensor())), "other than a plain '_metadata'"),
    "_metadata holding a global": (_state_dict_with(_metadata(_global("collections", "OrderedDict"))),
                                   "other than a plain '_metadata'"),
    "_metadata holding a numpy dtype": (_state_dict_with(_metadata(_call("numpy", "dtype", _str("f8"), b"\x89\x88"))),
                                        "other than a plain '_metadata'"),
    "_metadata holding a nested tensor": (
        _state_dict_with(_metadata(_call("collections", "OrderedDict") + b"(" + _str("") + b"}" + _str("version")
                                   + _tensor() + b"su")), "other than a plain '_metadata'"),
    "a key beside _metadata": (_state_dict_with(b"}(" + _str("_metadata") + _versions("") + _str("__class__")
                                                + _str("x") + b"u"), "other than a plain '_metadata'"),
    "another key": (_state_dict_with(b"}" + _str("_forward_hooks") + _versions("") + b"s"),
                    "other than a plain '_metadata'"),
    "_metadata twice, then more keys": (
        _state_dict_with(b"}(" + b"".join(_str(f"k{i}") + _int(i) for i in range(20)) + b"u"),
        "other than a plain '_metadata'"),
    "BUILD on a defaultdict": (_state_dict_with(_metadata(_versions("")), _call("collections", "defaultdict", b"N")),
                               "sets the state of collections.defaultdict"),
    "BUILD on a Counter": (PROTO + _call("collections", "Counter") + _metadata(_versions("")) + b"b.",
                           "sets the state of collections.Counter"),
    "BUILD on a set": (PROTO + _call("builtins", "set", b"]") + _metadata(_versions("")) + b"b.",
                       "sets the state of builtins.set"),
    "BUILD on a dict": (PROTO + b"}" + _metadata(_versions("")) + b"b.", "sets the state of a dict"),
    "BUILD on a list": (PROTO + b"]" + _metadata(_versions("")) + b"b.", "sets the state of a list"),
    "BUILD on a 0.3-era tensor (set_)": (
        _state_dict(("w", _global("torch._utils", "_rebuild_tensor") + b"(" + _storage_pid("0") + _int(0) + b"("
                     + _int(4) + b"t(" + _int(1) + b"ttR" + b"(" + _int(0) + b"tb")),
        "sets the state of torch._utils._rebuild_tensor"),
    "BUILD on a Parameter (__setstate__)": (
        _state_dict(("w", _global("torch._utils", "_rebuild_parameter") + b"(" + _tensor() + b"\x89"
                     + _call("collections", "OrderedDict") + b"tR" + b"}b")),
        "sets the state of torch._utils._rebuild_parameter"),
    "BUILD on a numpy scalar": (
        PROTO + _global("numpy.core.multiarray", "scalar") + b"(" + _call("numpy", "dtype", _str("f8"), b"\x89\x88")
        + _call("_codecs", "encode", _str("\x00" * 8), _str("latin1")) + b"tR}b.", "sets the state of numpy"),
    "BUILD on a dtype with a container state": (
        PROTO + _call("numpy", "dtype", _str("f8"), b"\x89\x88") + b"(" + _int(3) + b"]tb.", "numpy dtype"),
    "BUILD on a storage": (PROTO + _storage_pid("0") + b"}b.", "sets the state of a storage"),
}


OTHER_ABUSES = {
    "SETITEMS into a list (CVE-2026-24747)": (PROTO + b"](" + _str("k") + _int(1) + b"u.", "not a dict"),
    "SETITEM into a tensor": (PROTO + _tensor() + _str("k") + _int(1) + b"s.", "not a dict"),
    "SETITEM into a numpy scalar": (PROTO + _global("numpy.core.multiarray", "scalar") + b"(" + _call(
        "numpy", "dtype", _str("f8"), b"\x89\x88") + _call("_codecs", "encode", _str("\x00" * 8), _str("latin1"))
        + b"tR" + _str("k") + _int(1) + b"s.", "not a dict"),
    "APPEND into a dict": (PROTO + b"}" + _int(1) + b"a.", "not a list"),
    "OrderedDict from pairs with a tuple key (hash bomb)": (
        PROTO + _call("collections", "OrderedDict", b"](" + _int(0) + _int(0) + b"\x86" + _int(1) + b"\x86e"),
        "keys are not numbers or strings"),
    "a set of tuples": (PROTO + _call("builtins", "set", b"](" + _int(0) + _int(0) + b"\x86e"),
                        "not numbers or strings"),
    "a defaultdict with os.system as factory": (PROTO + _call("collections", "defaultdict", _global("os", "system"))
                                                + b".", r"os\.system"),
    "a defaultdict with OrderedDict as factory": (
        PROTO + _call("collections", "defaultdict", _global("collections", "OrderedDict")) + b".",
        "factory is not a plain container"),
    "calling builtins.dict": (PROTO + _call("builtins", "dict") + b".", "never calls"),
    "calling a storage type": (PROTO + _call("torch", "FloatStorage", _int(4)) + b".", "never calls"),
    "a storage on a location that is not a device": (
        _state_dict(("w", _global("torch._utils", "_rebuild_tensor_v2") + b"((" + _str("storage")
                     + _global("torch", "FloatStorage") + _str("0") + _str("../../etc/passwd") + _int(4) + b"tQ"
                     + _int(0) + b"(" + _int(4) + b"t(" + _int(1) + b"t\x89" + _call("collections", "OrderedDict")
                     + b"tR")), "not a device name"),
    "a storage declared twice with different sizes": (
        _state_dict(("w", _tensor(numel=4)), ("v", _tensor(size=(2,), numel=2))), "declared twice"),
    "a storage declared twice with different types": (
        _state_dict(("w", _tensor()), ("v", _tensor(storage="DoubleStorage"))), "declared twice"),
    "a 0.3-era tensor past its storage": (
        _state_dict(("w", _global("torch._utils", "_rebuild_tensor") + b"(" + _storage_pid("0") + _int(0) + b"("
                     + _int(5) + b"t(" + _int(1) + b"ttR")), "past the end"),
    "a 0.3-era tensor with a size that is not integers": (
        _state_dict(("w", _global("torch._utils", "_rebuild_tensor") + b"(" + _storage_pid("0") + _int(0) + b"("
                     + _str("4") + b"t(" + _int(1) + b"ttR")), "not integers"),
    "a tensor whose hooks are a tensor": (
        _state_dict(("w", _global("torch._utils", "_rebuild_tensor_v2") + b"(" + _storage_pid("0") + _int(0) + b"("
                     + _int(4) + b"t(" + _int(1) + b"t\x89" + _tensor() + b"tR")), "as hooks or metadata"),
    "a Parameter of something that is not a tensor": (
        _state_dict(("w", _call("torch._utils", "_rebuild_parameter", _str("x"), b"\x89", b"N"))), "not a tensor"),
    "a numpy scalar without a dtype": (
        PROTO + _global("numpy.core.multiarray", "scalar") + b"(" + _str("f8") + _str("x") + b"tR.", "numpy scalar"),
}


ABUSES = {**BUILD_ABUSES, **OTHER_ABUSES}


@pytest.mark.parametrize("what", list(ABUSES))
def test_abuses_of_the_new_allowances_are_refused(what, tmp_path, marker):
    """BUILD only for a state dict's plain _metadata, and every call, storage and container rule around it."""
    payload, pattern = ABUSES[what]
    for source in _all_forms(tmp_path, payload, {"0": bytes(16)}):
        _refused(source, "refused", pattern, seconds=3)
    assert not marker.path.exists()


def test_legacy_storage_records_are_checked(tmp_path, monkeypatch):
    """A legacy file's storages follow its pickles: each key of the list, an element count, the bytes. Every one
    must be what the pickle declared, and inside the file."""
    weights = struct.pack("<4f", 1, 2, 3, 4)
    good = _state_dict(("w", _legacy_tensor()))
    assert read_checkpoint(_legacy_with_records(tmp_path / "good.pth", good, {"0": weights})).obj["w"].sum() == 10
    data = (tmp_path / "good.pth").read_bytes()
    for cut in (1, 4, 16, 23):
        (tmp_path / f"cut{cut}.pth").write_bytes(data[:-cut])
        _refused(tmp_path / f"cut{cut}.pth", "truncated")
    _refused(_legacy_with_records(tmp_path / "count.pth", good, {"0": weights + bytes(4)}), "holds 5 elements")
    _refused(_legacy_with_records(tmp_path / "keys.pth", good, {}), "list of storages does not match")
    _refused(_legacy_with_records(tmp_path / "extra.pth", good, {"0": weights, "1": weights}),
             "list of storages does not match")
    view = b"(" + _str("1") + _int(2) + _int(4) + b"t"  # view of 4 elements at offset 2 in a root of 4
    _refused(_legacy_with_records(tmp_path / "view.pth", _state_dict(("w", _legacy_tensor(view=view))),
                                  {"0": weights}), "view reaches past the end")
    bad_magic = data.replace(b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19", b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x18", 1)
    (tmp_path / "magic.pth").write_bytes(bad_magic)
    _refused(tmp_path / "magic.pth", "magic number")
    monkeypatch.setattr(safe_pickle, "MAX_PICKLE_OPS", 100_000)  # the same rule, quicker to reach
    endless = tmp_path / "endless.pth"  # more opcodes than any checkpoint has: refused at the limit
    endless.write_bytes(data[:data.index(good)] + PROTO + b"N" * (safe_pickle.MAX_PICKLE_OPS + 2))
    _refused(endless, "more than 100,000 opcodes")
    huge_string = tmp_path / "string.pth"  # a string declaring 4 GB: never read into memory
    huge_string.write_bytes(data[:data.index(good)] + PROTO + b"X\xff\xff\xff\xff" + b"x" * 64)
    _refused(huge_string, "malformed|longer than", seconds=3)


def test_numpy_object_scalars_and_bad_dtype_states(tmp_path):
    dtype_o = _call("numpy", "dtype", _str("O"), b"\x89\x88")
    obj_scalar = PROTO + _global("numpy._core.multiarray", "scalar") + b"(" + dtype_o + _str("x") + b"tR."
    for source in _all_forms(tmp_path / "obj", obj_scalar):
        _refused(source, "scalar|malformed")
    bad_state = (PROTO + _call("numpy", "dtype", _str("f8"), b"\x89\x88") + b"(" + _int(99) + _str("|") + b"NNN"
                 + _int(-1) + _int(-1) + _int(0) + b"tb.")
    for source in _all_forms(tmp_path / "state", bad_state):
        _refused(source, "malformed|corrupt")


# ---------------------------------------------------------------------------------------------- exhaustion
def _nested_tuple_key(depth: int) -> bytes:
    """A dict whose key is t_depth with t_i = (t_{i-1}, t_{i-1}): 2^depth steps to hash, a few bytes to store."""
    body = _int(0) + _int(0) + b"\x86q\x000"  # (0, 0), memo 0, POP
    for i in range(1, depth):
        body += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i]) + b"0"
    return PROTO + b"}" + body + b"h" + bytes([depth - 1]) + _int(1) + b"s."


def test_hash_and_memory_exhaustion_pickles_are_refused_quickly(tmp_path):
    # depth 30: ~10^9 hash steps unguarded; within the nesting limit, so the dict-key rule must catch it
    for source in _all_forms(tmp_path / "hash", _nested_tuple_key(30)):
        _refused(source, "tuple as a dict key", seconds=2)
    deep = PROTO + b"}" + _str("k") + b"N" + b"\x85" * 200_000 + b"s."  # 200k nested 1-tuples
    for source in _all_forms(tmp_path / "deep", deep):
        _refused(source, "nests containers more than", seconds=2)
    memo = PROTO + b"N" + b"r\xf0\xff\xff\xff."  # LONG_BINPUT 4294967280: a 32 GB memo table in the C unpickler
    for source in _all_forms(tmp_path / "memo", memo):
        _refused(source, "memo index", seconds=2)
    # a persistent id of 10^10 shared-reference elements: printing it in an error message never ends
    shared = b"](" + _int(0) * 100 + b"eq\x000"
    for level in range(1, 6):
        shared += b"](" + (b"h" + bytes([level - 1])) * 100 + b"eq" + bytes([level]) + b"0"
    huge_pid = PROTO + b"(" + _str("storage") + b"h\x05" + _str("0") + _str("cpu") + _int(4) + b"tQ."
    for source in _all_forms(tmp_path / "repr", huge_pid[:2] + shared + huge_pid[2:], {"0": bytes(16)}):
        _refused(source, "persistent id|malformed|corrupt|refused", seconds=2)
    for source in _all_forms(tmp_path / "trunc", PROTO + b"}" + _str("w")):
        _refused(source, "truncated|malformed|STOP", seconds=2)


# ---------------------------------------------------------------------------------------------- storages
STORAGE_ATTACKS = {
    "path traversal key": (_tensor("../../../../etc/passwd"), {}, "plain file name|locating file|not found"),
    "missing storage": (_tensor("7"), {"0": bytes(16)}, "lacks|locating file|not found"),
    "negative offset": (_tensor(offset=-1), {"0": bytes(16)}, "negative|invalid storage offset"),
    "huge size": (_tensor(size=(1 << 62,)), {"0": bytes(16)}, "past the end|overflow"),
    "stride overflow": (_tensor(size=(2, 2), stride=(1 << 62, 1 << 62)), {"0": bytes(16)}, "past the end|overflow"),
    "view past the storage": (_tensor(offset=1), {"0": bytes(16)}, "past the end|not resizable|out of bounds"),
    "record shorter than numel": (_tensor(), {"0": bytes(15)}, "15 bytes|record size"),
    "float storage with 15 bytes": (_tensor(storage="FloatStorage"), {"0": bytes(15)}, "15 bytes|record size"),
    "huge numel": (_tensor(numel=1 << 62), {"0": bytes(16)}, "element count|corrupt|malformed"),
    "negative numel": (_tensor(numel=-1), {"0": bytes(16)}, "element count|corrupt|malformed"),
    "stride-0 view claiming more than was stored": (_tensor(size=(10_000,), stride=(0,)), {"0": bytes(16)},
                                                   "claims 10,000 elements"),
}


@pytest.mark.parametrize("what", list(STORAGE_ATTACKS))
def test_storage_and_view_attacks(what, tmp_path):
    tensor, records, pattern = STORAGE_ATTACKS[what]
    for source in _all_forms(tmp_path, _state_dict(("w", tensor)), records)[:3]:  # legacy files use other pids
        _refused(source, pattern, seconds=2)


def test_folder_with_links_or_devices_in_place_of_records(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(16))
    linked = _folder(tmp_path / "linked", _state_dict(("w", _tensor())))
    (linked / "data" / "0").symlink_to(secret)
    _refused(linked, "symbolic link")
    linked_pickle = tmp_path / "linked_pickle"
    (linked_pickle / "data").mkdir(parents=True)
    (linked_pickle / "data.pkl").symlink_to("/dev/zero")
    _refused(linked_pickle, "symbolic link")
    fifo_record = _folder(tmp_path / "fifo", _state_dict(("w", _tensor())))
    os.mkfifo(fifo_record / "data" / "0")
    _refused(fifo_record, "not a file")


# ---------------------------------------------------------------------------------------------- zips
def test_zip_attacks(tmp_path, marker):
    good = _state_dict(("w", _tensor()))
    zeros = bytes(64 << 20)
    bomb = tmp_path / "bomb.tar"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", good)
        zf.writestr("archive/data/0", zeros)
    assert bomb.stat().st_size < 1 << 20
    _refused(bomb, "decompression bomb", seconds=2)

    cases = {
        "dotdot": (_zip(tmp_path / "dotdot.tar", good, {"0": bytes(16)}, extra=[("../escaped.txt", b"x")]), "unsafe"),
        "absolute": (_zip(tmp_path / "abs.tar", good, {"0": bytes(16)}, extra=[("/tmp/abs.txt", b"x")]), "unsafe"),
        "drive letter": (_zip(tmp_path / "drive.tar", good, {"0": bytes(16)}, extra=[("C:/x.txt", b"x")]), "unsafe"),
        "two roots": (_zip(tmp_path / "roots.tar", good, {"0": bytes(16)}, extra=[("other/data.pkl", b"x")]),
                      "one root folder"),
        "no data.pkl": (tmp_path / "nopkl.tar", "one root folder"),
    }
    with pytest.warns(UserWarning, match="Duplicate name"):  # zipfile writes it, with a warning
        cases["duplicate names"] = (_zip(tmp_path / "dup.tar", good, {"0": bytes(16)},
                                         extra=[("archive/data.pkl", b"\x80\x02}.")]), "duplicate member")
    with zipfile.ZipFile(tmp_path / "nopkl.tar", "w") as zf:
        zf.writestr("archive/version", "3\n")
    for what, (path, pattern) in cases.items():
        _refused(path, pattern)

    link = tmp_path / "link.tar"
    with zipfile.ZipFile(link, "w") as zf:
        zf.writestr("archive/data.pkl", good)
        info = zipfile.ZipInfo("archive/data/0")
        info.external_attr = (0o120777 << 16)  # S_IFLNK: a symlink entry pointing at /etc/passwd
        zf.writestr(info, "/etc/passwd")
    _refused(link, "symbolic-link")

    encrypted = tmp_path / "encrypted.tar"
    with zipfile.ZipFile(encrypted, "w") as zf:
        info = zipfile.ZipInfo("archive/data.pkl")
        info.flag_bits |= 0x1
        zf.writestr(info, good)
    _refused(encrypted, "encrypted")

    inner = _zip(tmp_path / "inner.tar", good, {"0": bytes(16)})
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as zf:
        zf.write(inner, "level1/inner.tar")
    _refused(nested, "not a torch checkpoint|one root folder")

    big_pickle = tmp_path / "bigpickle.tar"
    with zipfile.ZipFile(big_pickle, "w") as zf:  # stored: the size limit, not the bomb check, must refuse it
        zf.writestr("archive/data.pkl", PROTO + b"N" + b"0N" * (20 << 20) + b".")
    _refused(big_pickle, "limit", seconds=3)
    assert not marker.path.exists()
    assert not (tmp_path.parent / "escaped.txt").exists() and not Path("/tmp/abs.txt").exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.* deprecation notices
def test_zip_files_that_are_not_checkpoints(tmp_path):
    scripted = tmp_path / "model_scripted.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(scripted))
    _refused(scripted, "TorchScript", "never runs")
    npz = tmp_path / "weights.npz"
    np.savez(npz, a=np.zeros(3))
    _refused(npz, r"numpy \.npz")
    docx = tmp_path / "ConvNeXtPose_XS.tar"
    with zipfile.ZipFile(docx, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("word/document.xml", "<w:document/>")
    _refused(docx, "Office document")


# ---------------------------------------------------------------------------------------------- tars
def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def test_tar_attacks(tmp_path, marker):
    good = _zip(tmp_path / "inner.tar", _state_dict(("w", _tensor())), {"0": bytes(16)}).read_bytes()
    cases = {
        "hard link": ([_file_member("a.tar", good), _special("b.tar", tarfile.LNKTYPE, "/etc/passwd")], "unsafe"),
        "symlink": ([_special("snapshot_0.pth", tarfile.SYMTYPE, "/etc")], "unsafe"),
        "char device": ([_special("zero", tarfile.CHRTYPE)], "unsafe"),
        "fifo": ([_special("pipe", tarfile.FIFOTYPE)], "unsafe"),
        "absolute": ([_file_member("/tmp/evil.tar", good)], "unsafe"),
        "control characters": ([_file_member("a\nb.tar", good)], "unsafe"),
        "duplicates": ([_file_member("a.tar", good), _file_member("a.tar", good)], "twice"),
        "two checkpoints": ([_file_member("a.tar", good), _file_member("b.tar", good)], "2 checkpoints"),
    }
    for what, (members, pattern) in cases.items():
        _refused(_tar(tmp_path / f"{what.replace(' ', '_')}.tar", members), pattern)

    sparse = tarfile.TarInfo("weights.tar")
    sparse.pax_headers = {"GNU.sparse.size": str(10 ** 12), "GNU.sparse.map": "0,0", "GNU.sparse.name": "w.tar"}
    _refused(_tar(tmp_path / "sparse.tar", [(sparse, b"")]), "sparse")

    gz_bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(gz_bomb, "w:gz") as tf:
        info = tarfile.TarInfo("weights.tar")
        info.size = 256 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    assert gz_bomb.stat().st_size < 1 << 20
    _refused(gz_bomb, "decompression bomb", seconds=3)

    many = _tar(tmp_path / "many.tar", [_file_member(f"f{i}", b"") for i in range(10_001)])
    _refused(many, "over 10,000 members", seconds=5)

    # a tar holding a tar holding a zip: archives inside archives are not opened
    inner_tar = _tar(tmp_path / "level2.tar", [_file_member("ConvNeXtPose_XS.tar", good)]).read_bytes()
    outer = _tar(tmp_path / "level1.tar.gz", [_file_member("level2.tar", inner_tar)], mode="w:gz")
    _refused(outer, "nested archive", "extract the inner one")
    _refused(_tar(tmp_path / "empty_tar.tar", [_file_member("readme.txt", b"hello")]), "no checkpoint")
    assert not marker.path.exists() and not Path("/tmp/evil.tar").exists()


# ---------------------------------------------------------------------------------------------- format confusion
def test_format_confusion(tmp_path):
    page = tmp_path / "ConvNeXtPose_L.tar"
    page.write_bytes(b"\xef\xbb\xbf  \r\n\t<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning"
                     b"</title></head><body>Google Drive can't scan this file for viruses.</body></html>")
    _refused(page, "virus", "not a checkpoint")
    cases = {
        "error.json": (b'  {"error": {"code": 403, "message": "rate limited"}}', "JSON"),
        "array.npy": (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }" + bytes(12),
                      r"numpy \.npy"),
        "model.safetensors": (struct.pack("<Q", 2) + b'{}', "safetensors"),
        "random.bin": (os.urandom(64).replace(b"\x80", b"\x00").replace(b"\x1f", b"\x00").lstrip(b"{[ \t\r\n<") or b"?",
                       "not a checkpoint format"),
    }
    header = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    cases["model.safetensors"] = (struct.pack("<Q", len(header)) + header + bytes(8), "safetensors")
    for name, (data, pattern) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        _refused(path, pattern)
    random_dir = tmp_path / "random_dir"
    (random_dir / "sub").mkdir(parents=True)
    (random_dir / "sub" / "notes.txt").write_text("hello")
    _refused(random_dir, "folder without data.pkl")
    _refused(tmp_path / "does_not_exist.pth", "not found")
    dangling = tmp_path / "dangling.pth"
    dangling.symlink_to(tmp_path / "gone.pth")
    _refused(dangling, "symbolic link to a path that does not exist")
    _refused(Path("/dev/null"), "a device")
    assert sniff_format("/dev/null") == "not-a-file"


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "ConvNeXtPose_XS.tar"
    os.mkfifo(fifo)

    def unblock():  # if the loader ever opened the FIFO, this writer releases it so the test fails, not hangs
        time.sleep(5)
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass

    threading.Thread(target=unblock, daemon=True).start()
    _refused(fifo, "FIFO", "not opened", seconds=3)
    with pytest.raises(AcquireError, match="FIFO"):
        acquire_checkpoint(str(fifo), cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------- content
@pytest.fixture(scope="module")
def network() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(SMALL_MODEL).state_dict()


def _first_float_key(network) -> str:
    return next(k for k, v in network.items() if v.is_floating_point() and v.numel() > 1)


@pytest.mark.filterwarnings("ignore:.*quantize:UserWarning")  # deprecation of quantized tensors
def test_state_dict_content_attacks(network):
    key = _first_float_key(network)
    _refused({**network, key: network[key].to(torch.int64)}, "wrong kind of dtype", re.escape(key))
    _refused({**network, key: network[key] > 0}, "wrong kind of dtype", "torch.bool")
    _refused({**network, key: "not a tensor"}, "not tensors", re.escape(key))
    _refused({**network, 7: torch.zeros(1)}, "not strings")
    _refused({**network, key: network[key].to(torch.complex64)}, "refuses", "complex64")
    _refused({**network, key: network[key].to_sparse()}, "refuses", "sparse")
    q = torch.quantize_per_tensor(network[key].float(), 0.1, 0, torch.qint8)
    _refused({**network, key: q}, "refuses", "quantized|qint8")
    many = {f"k{i}": torch.zeros(1) for i in range(100_001)}
    _refused(many, "over 100,000", seconds=5)


def test_lookalike_keys_are_shown_escaped(network):
    key = _first_float_key(network)
    lookalike = key.replace("e", "\u0435", 1)  # Cyrillic e: prints exactly like the real key
    zero_width = key + "\u200b"
    for fake in (lookalike, zero_width):
        tricked = {(fake if k == key else k): v for k, v in network.items()}
        message = _refused(tricked, "missing keys", "unexpected keys")
        assert ascii(fake) in message and fake not in message


def test_nonfinite_weights_are_refused_unless_allowed(network, tmp_path, capsys):
    key = _first_float_key(network)
    poisoned = dict(network)
    poisoned[key] = network[key].clone()
    poisoned[key].view(-1)[0] = float("nan")
    poisoned["head.final_layer.bias"] = network["head.final_layer.bias"].clone().fill_(float("inf"))
    _refused(poisoned, "2 tensors", "NaN or inf", re.escape(key))
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(poisoned)
    assert refused.value.setting == "allow_nonfinite"  # the command words it: --allow-nonfinite
    model, info = load_checkpoint(poisoned, allow_nonfinite=True)
    assert sorted(info.nonfinite_keys) == sorted([key, "head.final_layer.bias"])
    assert info.to_dict()["nonfinite_keys"] == info.nonfinite_keys
    assert torch.isnan(model.state_dict()[key]).any()
    path = tmp_path / "poisoned.pth"
    torch.save({"network": poisoned}, path)
    assert cli_main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "NaN or inf" in out and "pass --allow-nonfinite to inspect it anyway" in out and "=True" not in out
    assert cli_main(["inspect", str(path), "--allow-nonfinite"]) == 0
    out = capsys.readouterr().out
    assert "NON-FINITE: 2 tensors" in out and key in out
    _, clean_info = load_checkpoint(network)
    assert clean_info.nonfinite_keys == []


def test_prefix_and_wrapper_combinations_still_load(network):
    variants = {
        "module.module.": {f"module.module.{k}": v for k, v in network.items()},
        "_orig_mod.module.": {f"_orig_mod.module.{k}": v for k, v in network.items()},
        "state_dict>network": {"state_dict": {"network": {f"module.{k}": v for k, v in network.items()}}},
    }
    for what, obj in variants.items():
        model, info = load_checkpoint(obj)
        assert info.model_id == SMALL_MODEL, what
        assert all(torch.equal(model.state_dict()[k], v) for k, v in network.items()), what
    collision = {**{f"module.{k}": v for k, v in network.items()}, _first_float_key(network): torch.zeros(1)}
    _refused(collision, "collides")


def test_legitimate_optimizer_extras_still_read(network, tmp_path):
    """The pre-scan must not refuse what real checkpoints hold: numpy scalars/dtypes, defaultdict, bfloat16."""
    model = build_model(SMALL_MODEL)
    optimizer = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    state = {"epoch": np.int64(5), "network": {f"module.{k}": v for k, v in network.items()},
             "optimizer": optimizer.state_dict(), "dtype": np.dtype("f8"), "scale": np.float32(0.5),
             "extra": {"bf16": torch.ones(2, dtype=torch.bfloat16)}}
    path = tmp_path / "snapshot_5.pth.tar"
    torch.save(state, path)
    legacy = tmp_path / "legacy.pth"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    for source in (path, legacy):
        contents = read_state_dict(source)
        assert contents.epoch == 5 and set(contents.state_dict) == set(network)


# ---------------------------------------------------------------------------------------------- acquire
def test_acquire_refuses_hostile_local_files(tmp_path):
    gz_bomb = tmp_path / "ConvNeXtPose_XS.tar"
    with tarfile.open(gz_bomb, "w:gz") as tf:
        info = tarfile.TarInfo("weights.tar")
        info.size = 256 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    start = time.perf_counter()
    with pytest.raises(AcquireError, match="decompression bomb"):
        acquire_checkpoint(str(gz_bomb), cache_dir=tmp_path / "cache")
    assert time.perf_counter() - start < 3
    link_tar = _tar(tmp_path / "links.tar", [_special("x", tarfile.LNKTYPE, "/etc/passwd")])
    with pytest.raises(AcquireError, match="unsafe"):
        acquire_checkpoint(str(link_tar), cache_dir=tmp_path / "cache")
    page = tmp_path / "error.pth"
    page.write_text('{"error": "quota"}')
    with pytest.raises(AcquireError, match="JSON"):
        acquire_checkpoint(str(page), cache_dir=tmp_path / "cache")
    with pytest.raises(AcquireError, match="not a regular file|device"):
        acquire_checkpoint("/dev/null", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))
