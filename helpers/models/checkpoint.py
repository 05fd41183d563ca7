"""Checkpoint key cleaning, model detection and strict loading; `python -m helpers inspect`.

Reading a file safely is `checkpoint_file`'s job, and unpickling it without running code `safe_pickle`'s. This
module takes what they read (or a state dict already in memory) and:
- cleans keys timm-style (`module.`/`_orig_mod.` prefixes, wrapper dicts, one key filter per family);
- requires dense, real-valued tensors, each a view that fits inside its storage;
- identifies the model from tensor shapes alone by comparing with every registry model's own `state_dict()`
  shapes;
- loads the weights with `strict=True` only, refusing float/int kind mismatches with the model and, unless
  `allow_nonfinite=True`, NaN/inf weights (then `CheckpointInfo.nonfinite_keys` lists them).

`CheckpointError`, raised by every layer, is re-exported here: `from helpers.models.checkpoint import
CheckpointError` is the same class as `helpers.models.checkpoint_file.CheckpointError`.
"""
from __future__ import annotations

import argparse
import collections
import functools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import remedy
from .checkpoint_file import read_checkpoint, sniff_format
from .registry import MODEL_FILE_HELP, MODEL_REGISTRY, clean_family_keys, get_spec, load_model_files, own_model_ids
from .safe_pickle import _REDOWNLOAD_ADVICE, MAX_TENSORS, CheckpointError, _short, show_key


# --------------------------------------------------------------------------------------------------
# Key cleaning: wrapper dicts, prefixes, one filter per family
# --------------------------------------------------------------------------------------------------
_WRAPPER_KEYS = ("network", "state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")
DEMO_MARKER_KEY = "demo_note"  # written by helpers.demo_checkpoints next to 'network'


def unwrap_state_dict(obj: Any) -> tuple[dict, list[str], bool]:
    """The tensor dict inside `{'network': ...}` / `{'state_dict': ...}` / `{'model': ...}` wrappers, the notes on
    what was unwrapped, and whether it is versioned (carries the `_metadata` that `Module.state_dict()` has written
    since PyTorch 0.4.1)."""
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
    return dict(obj), notes, getattr(obj, "_metadata", None) is not None


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


def clean_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """Unwrap, strip prefixes and apply every family filter; returns the state dict, the remaps applied and
    whether the state dict is versioned (see `unwrap_state_dict`)."""
    state_dict, notes, versioned = unwrap_state_dict(obj)
    state_dict, prefix_notes = strip_prefixes(state_dict)
    remaps = notes + prefix_notes
    state_dict, applied = clean_family_keys(state_dict)  # each family's key filter (its own file)
    return state_dict, remaps + applied, versioned


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
    versioned: bool = True  # the state dict carries `_metadata` (PyTorch >= 0.4.1); see `compare_shapes`


def read_state_dict(path_or_state_dict, *, map_location="cpu") -> CheckpointContents:
    """Read a checkpoint safely and clean its keys (no model involved)."""
    raw = read_checkpoint(path_or_state_dict, map_location=map_location)
    state_dict, remaps, versioned = clean_state_dict(raw.obj)
    epoch = raw.obj.get("epoch") if isinstance(raw.obj, Mapping) else None
    epoch = int(epoch) if isinstance(epoch, (int, np.integer)) and not isinstance(epoch, bool) else None
    is_demo = isinstance(raw.obj, Mapping) and bool(raw.obj.get(DEMO_MARKER_KEY))
    return CheckpointContents(state_dict, raw.format, epoch, remaps, raw.path, raw.zip_root, raw.sha256, is_demo,
                              versioned)


# --------------------------------------------------------------------------------------------------
# Detection from shapes
# --------------------------------------------------------------------------------------------------
Shapes = dict[str, tuple[int, ...]]


def _build_on_meta(spec) -> torch.nn.Module | None:
    """The spec's model on the meta device (allocates nothing, skips weight init); None where it cannot be built
    there."""
    try:
        with torch.device("meta"):
            return spec.build()
    except (RuntimeError, NotImplementedError, TypeError):
        return None


@functools.lru_cache(maxsize=None)
def _model_shapes_cached(model_id: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    spec = get_spec(model_id)
    model = _build_on_meta(spec)  # shapes only
    if model is None:
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
    filled: tuple[str, ...] = ()  # missing BatchNorm `num_batches_tracked` of an unversioned state dict

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
        return (not self.exact, -self.score, self._shape_distance, self.model_id)

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


_NUM_BATCHES_TRACKED = ".num_batches_tracked"


def compare_shapes(checkpoint_shapes: Mapping[str, tuple], model_id: str, *, versioned: bool = True) -> KeyComparison:
    """How the checkpoint's key -> shape map compares with the model's.

    An unversioned state dict (no `_metadata`: what PyTorch 0.4.0 saved, before BatchNorm had the
    `num_batches_tracked` buffer) may lack exactly those buffers: `BatchNorm` itself fills them when it loads a
    state dict without version metadata, so they are `filled`, not missing. Nothing else is forgiven."""
    expected = model_shapes(model_id)
    missing = tuple(k for k in expected if k not in checkpoint_shapes)
    filled = () if versioned else tuple(k for k in missing if k.endswith(_NUM_BATCHES_TRACKED) and expected[k] == ())
    missing = tuple(k for k in missing if k not in filled)
    unexpected = tuple(k for k in checkpoint_shapes if k not in expected)
    mismatched = tuple((k, tuple(checkpoint_shapes[k]), s) for k, s in expected.items()
                       if k in checkpoint_shapes and not _shapes_agree(tuple(checkpoint_shapes[k]), s))
    matched = len(expected) - len(missing) - len(mismatched) - len(filled)  # filled buffers agree with nothing
    return KeyComparison(model_id, matched, len(expected), missing, unexpected, mismatched, filled)


@dataclass(frozen=True)
class Detection:
    model_id: str | None  # the one exact match, or None
    ranking: tuple[KeyComparison, ...]  # best first

    @property
    def best(self) -> KeyComparison:
        return self.ranking[0]


def _shapes_of(state_dict_or_shapes: Mapping) -> Shapes:
    return {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in state_dict_or_shapes.items()}


def detect_model(state_dict_or_shapes: Mapping, candidates: list[str] | None = None, *,
                 versioned: bool = True) -> Detection:
    """Identify the registry model whose `state_dict()` shapes equal the (cleaned) checkpoint's exactly
    (`versioned`: see `compare_shapes`)."""
    shapes = _shapes_of(state_dict_or_shapes)
    ranking = sorted((compare_shapes(shapes, m, versioned=versioned) for m in (candidates or list(MODEL_REGISTRY))),
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
    model = _build_on_meta(spec)
    if model is None:
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
    `allow_nonfinite=True`; then `info.nonfinite_keys` lists them. The only keys that may be missing are the
    BatchNorm `num_batches_tracked` buffers of an unversioned (PyTorch 0.4.0) state dict: they are filled with 0,
    as `BatchNorm` itself does, and `info.remaps` says so.
    """
    if model_id is not None:
        get_spec(model_id)  # unknown ids fail before any reading
    contents = read_state_dict(path_or_state_dict, map_location=map_location)
    return load_contents(contents, model_id, allow_nonfinite=allow_nonfinite)


def load_contents(contents: CheckpointContents, model_id: str | None = None, *, allow_nonfinite: bool = False):
    """Identify and strictly load what `read_state_dict` read; see `load_checkpoint`."""
    shapes = _shapes_of(contents.state_dict)
    if model_id is None:
        detection = detect_model(shapes, versioned=contents.versioned)
        if detection.model_id is None:
            raise CheckpointError(_mismatch_message(None, detection))
        model_id = detection.model_id
    target = compare_shapes(shapes, model_id, versioned=contents.versioned)
    if not target.exact:  # only now every registry model's shapes are needed: to name the closest
        raise CheckpointError(_mismatch_message(target, detect_model(shapes, versioned=contents.versioned)))
    state_dict, remaps = dict(contents.state_dict), list(contents.remaps)
    if target.filled:
        state_dict.update({k: torch.zeros((), dtype=torch.long) for k in target.filled})
        remaps.append(f"filled {len(target.filled)} missing BatchNorm num_batches_tracked buffers with 0 (an "
                      "unversioned state dict, as PyTorch 0.4.0 saved them; BatchNorm's own loader does the same)")
    spec = get_spec(model_id)
    model = _build_uninitialised(spec)
    model_dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    wrong = [f"{show_key(k)} is {v.dtype} where the model has {model_dtypes[k]}"
             for k, v in state_dict.items() if _dtype_kind(v.dtype) != _dtype_kind(model_dtypes[k])]
    if wrong:
        raise CheckpointError(f"the checkpoint matches {model_id} by shape but {len(wrong)} tensors have the wrong "
                              f"kind of dtype: {_truncated(wrong, 5)}. Nothing was loaded. " + _REDOWNLOAD_ADVICE)
    nonfinite = nonfinite_keys(state_dict)  # shapes match the model here, so this is bounded
    if nonfinite and not allow_nonfinite:
        raise CheckpointError(f"{len(nonfinite)} tensors of the checkpoint hold NaN or inf: "
                              f"{_truncated(map(show_key, nonfinite), 5)}. Every prediction would be NaN or "
                              "garbage, so nothing was loaded. Use an intact checkpoint", setting="allow_nonfinite")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"strict loading into {model_id} failed: {e}") from None
    model = model.to("cpu").eval()
    info = CheckpointInfo(
        model_id=model_id, family=spec.family, variant=spec.variant, epoch=contents.epoch, sha256=contents.sha256,
        format=contents.format, remaps=remaps,
        num_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        num_params_incl_buffers=sum(t.numel() for t in model.state_dict().values()),
        path=contents.path, zip_root=contents.zip_root, is_random_demo=contents.is_random_demo,
        nonfinite_keys=nonfinite)
    return model, info


# --------------------------------------------------------------------------------------------------
# `python -m helpers inspect PATH [--model-id ID]`
# --------------------------------------------------------------------------------------------------
INSPECT_EPILOG = """exit status: 0 loads strictly; 1 read OK but no known model matches (or it holds NaN/inf);
3 refused to read (not a checkpoint, truncated, corrupt, or unsafe to unpickle); 2 bad arguments."""


def _one_line(error: Exception) -> tuple[str, list[str]]:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__), lines[1:]


def inspect_main(argv: list[str] | None = None) -> int:
    load_model_files(argv)
    parser = argparse.ArgumentParser(prog="python -m helpers inspect", epilog=INSPECT_EPILOG,
                                     description="Inspect a checkpoint: format, model, epoch, params, sha256, keys.")
    parser.add_argument("path", help="checkpoint file, extracted torch-zip folder, or tar")
    parser.add_argument("--model-file", action="append", default=[], metavar="FILE", help=MODEL_FILE_HELP)
    parser.add_argument("--model-id", choices=sorted(MODEL_REGISTRY), metavar="ID",
                        help="load as this model (default: detect from the shapes): a built-in id "
                             f"({', '.join(sorted(set(MODEL_REGISTRY) - set(own_model_ids())))}) or an id of a "
                             "family given with --model-file"
                             + (f" (given: {', '.join(own_model_ids())})" if own_model_ids() else ""))
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="load even if some weights are NaN/inf (they are listed)")
    args = parser.parse_args(argv)
    path = Path(args.path)
    print(f"path:      {show_key(str(path))}")
    if path.exists():
        print(f"content:   {sniff_format(path)}")
    try:
        contents = read_state_dict(path)
    except CheckpointError as e:
        reason, details = _one_line(e)
        print(f"refused to read: {reason}")
        for line in details:
            print(f"  {line}")
        return 3
    print(f"format:    {contents.format}" + (f" (root folder {contents.zip_root}/)" if contents.zip_root else "")
          + f"; {len(contents.state_dict)} tensors")
    print(f"epoch:     {contents.epoch if contents.epoch is not None else 'not stored'}")
    print(f"sha256:    {contents.sha256}")
    try:
        _, info = load_contents(contents, args.model_id, allow_nonfinite=args.allow_nonfinite)
    except CheckpointError as e:
        detection = detect_model(contents.state_dict, versioned=contents.versioned)
        closest = detection.model_id or detection.best.model_id
        if detection.model_id is not None and args.model_id in (None, detection.model_id):
            verdict = f"it matches {closest} but does not load"  # dtypes or NaN/inf
        elif args.model_id is not None:
            verdict = f"it does not match {args.model_id} (closest: {closest})"
        else:
            verdict = f"no known model matches (closest: {closest})"
        print(f"read OK: {len(contents.state_dict)} tensors; {verdict}")
        print(remedy(e, {"allow_nonfinite": "pass --allow-nonfinite to inspect it anyway"}))
        return 1
    print(f"read OK: {len(contents.state_dict)} tensors; they load strictly into {info.model_id}")
    print(f"model:     {info.model_id} (family {info.family}, variant {info.variant})")
    print(f"params:    {info.num_params:,} trainable; {info.num_params_incl_buffers:,} incl. buffers")
    print(f"remaps:    {'; '.join(info.remaps) if info.remaps else 'none'}")
    if info.is_random_demo:
        print("WEIGHTS:   random demo weights (helpers.demo_checkpoints), not trained")
    if info.nonfinite_keys:
        print(f"NON-FINITE: {len(info.nonfinite_keys)} tensors hold NaN/inf: "
              f"{_truncated(map(show_key, info.nonfinite_keys), 8)}; results from these weights are not meaningful")
    print("keys:      all match; strict load OK")
    return 0
