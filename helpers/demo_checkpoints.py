"""Random-initialised checkpoints written by each family's official save call (demos and tests, no downloads).

`python -m helpers demo-checkpoints OUT_DIR [--models ID ...] [--seed N] [--model-file FILE]`

Every file is written the way the family's training code writes its snapshots (`Family.release`):
`torch.save({'epoch': e, 'network': nn.DataParallel(model).state_dict(), 'optimizer': optimizer.state_dict()},
path)` with the family's optimizer (3DMPPE: Adam; ConvNeXtPose: AdamW) after one real step, so the file holds the
real pickle: an `OrderedDict` state dict with its `_metadata`, `module.` keys, and the optimizer's state tensors.
The serialisation is the release's: a torch zip (ConvNeXtPose: named like its released `.tar` file, with the root
folder `snapshot_<epoch>.pth/` that torch.save gives a file named `snapshot_<epoch>.pth.tar`), the legacy pre-1.6
format for the 2019 releases, and for Integral Human Pose a PyTorch 0.4.0-style state dict (no `_metadata`, no
BatchNorm `num_batches_tracked`) with its scheduler state and loss lists. Keys are the official ones: each
family's `official_keys` (the inverse of its key filter) renames them.

One extra entry, `demo_note`, marks the weights as random so that every report says so loudly. A file depends
only on the model id and the seed (the one optimizer step's gradients are derived from the seeded weights).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .atomic import write_text
from .models.checkpoint import DEMO_MARKER_KEY
from .models.checkpoint_file import file_sha256
from .models.registry import MODEL_FILE_HELP, MODEL_REGISTRY, get_family, get_spec, list_models, load_model_files

DEMO_EPOCH = 0  # never trained
DEMO_VERSION = 2  # the files' layout; bumped when it changes, so that cached demo files are written anew
DEMO_NOTE = "random-initialised weights written by helpers.demo_checkpoints; NOT trained, results are meaningless"
_LEARNING_RATE = 1e-3
_MILESTONES = (90, 120)  # Integral Human Pose's MultiStepLR steps (any will do: only the state's layout matters)


def demo_file_name(model_id: str) -> str:
    """The released file name where one is known (e.g. `ConvNeXtPose_L.tar`), else `snapshot_<epoch>.pth.tar`."""
    spec = get_spec(model_id)
    return spec.checkpoints[0].file_name if spec.checkpoints else f"snapshot_{DEMO_EPOCH}.pth.tar"


def _seed(seed: int, model_id: str) -> int:
    # one seed per (seed, model) so each file is reproducible on its own, without touching the global RNG
    return zlib.crc32(f"{seed}:{model_id}".encode())


def _random_model(model_id: str, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(seed, model_id))
        return get_spec(model_id).build()


def _one_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """One real optimizer step. The gradients are 1e-3 x the (seeded) weights: deterministic and free, where a
    forward and backward pass would cost seconds per model and change nothing in the file's layout."""
    for p in model.parameters():
        p.grad = p.detach() * 1e-3
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _official_network(model_id: str, model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """`nn.DataParallel(model).state_dict()` (an OrderedDict with `_metadata`, `module.` keys) in the family's
    official layout: `official_keys` renames keys, and the `_metadata` entries of the renamed modules follow."""
    spec = get_spec(model_id)
    family = get_family(spec.family)
    network = nn.DataParallel(model).state_dict()
    if family.official_keys is not None:
        plain = OrderedDict((k[len("module."):], v) for k, v in network.items())
        renamed = family.official_keys(spec, plain)
        if list(renamed) != list(plain):
            prefixes = {f"module.{old.rpartition('.')[0]}": f"module.{new.rpartition('.')[0]}"
                        for old, new in zip(plain, renamed)}
            metadata = OrderedDict((prefixes.get(k, k), v) for k, v in network._metadata.items())
            network = OrderedDict((f"module.{k}", v) for k, v in renamed.items())
            network._metadata = metadata
    if not family.release.versioned:  # PyTorch 0.4.0: no module versions, no BatchNorm num_batches_tracked
        network = OrderedDict((k, v) for k, v in network.items() if not k.endswith(".num_batches_tracked"))
    return network


def official_payload(model_id: str, seed: int = 0) -> dict:
    """What the family's training code passes to `torch.save`, for a random model (plus the `demo_note` marker)."""
    model = _random_model(model_id, seed).train()
    release = get_family(get_spec(model_id).family).release
    optimizer = getattr(torch.optim, release.optimizer)(model.parameters(), lr=_LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(_MILESTONES), gamma=0.1) \
        if "scheduler" in release.extras else None
    _one_step(model, optimizer)
    if scheduler is not None:
        scheduler.step()
    payload = {"epoch": DEMO_EPOCH, "network": _official_network(model_id, model.eval()),
               "optimizer": optimizer.state_dict()}
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    for extra in ("train_loss", "valid_loss"):
        if extra in release.extras:
            payload[extra] = [1.0]
    payload[DEMO_MARKER_KEY] = DEMO_NOTE
    return payload


def save_official(payload: dict, final_path: Path, serialization: str, epoch: int = DEMO_EPOCH) -> None:
    """`torch.save` in the release's serialisation, written atomically. A zip's root folder is named after the
    file it is saved to (minus its last suffix): save as `snapshot_<epoch>.pth.tar` in a private folder beside the
    target, then rename, so that the root is `snapshot_<epoch>.pth/` whatever the final name."""
    final_path = Path(final_path)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=final_path.parent))
    try:
        tmp = staging / f"snapshot_{epoch}.pth.tar"
        if serialization == "legacy":
            torch.save(payload, tmp, _use_new_zipfile_serialization=False)
        elif serialization == "zip":
            torch.save(payload, tmp)
        else:
            raise ValueError(f"unknown serialization {serialization!r}; expected 'zip' or 'legacy'")
        os.replace(tmp, final_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_demo_checkpoints(out_dir, model_ids=None, seed: int = 0) -> dict[str, Path]:
    """Write one random checkpoint per model to `out_dir/<model_id>/<file>`; returns model id → path."""
    out_dir = Path(out_dir)
    model_ids = list(model_ids) if model_ids is not None else list_models()
    unknown = [m for m in model_ids if m not in MODEL_REGISTRY]
    if unknown:
        raise KeyError(f"unknown model ids {unknown}; known: {', '.join(MODEL_REGISTRY)}")
    written: dict[str, Path] = {}
    for model_id in model_ids:
        release = get_family(get_spec(model_id).family).release
        target = out_dir / model_id / demo_file_name(model_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_official(official_payload(model_id, seed), target, release.serialization)
        written[model_id] = target
    _write_readme(out_dir, written, seed)
    return written


def _describe(model_id: str) -> str:
    release = get_family(get_spec(model_id).family).release
    text = "torch zip" if release.serialization == "zip" else "legacy (pre-1.6)"
    return f"{text}, {release.optimizer}" + ("" if release.versioned else ", PyTorch 0.4.0 state dict")


def _write_readme(out_dir: Path, written: dict[str, Path], seed: int) -> None:
    rows = "\n".join(f"| `{m}` | `{p.relative_to(out_dir).as_posix()}` | {_describe(m)} | `{file_sha256(p)[:16]}` |"
                     for m, p in written.items())
    write_text(out_dir / "DEMO_CHECKPOINTS.md", f"""# Demo checkpoints: RANDOM WEIGHTS

These files hold **random-initialised weights** (seed {seed}), written by `python -m helpers demo-checkpoints`.
They are **not trained**: any accuracy computed with them is meaningless. They exist to exercise the
loading and inference pipeline without downloading the released checkpoints.

Each is written by its family's official save call, `torch.save({{'epoch': {DEMO_EPOCH}, 'network':
nn.DataParallel(model).state_dict(), 'optimizer': optimizer.state_dict()}}, path)` after one optimizer step, in the
release's format, with an extra `{DEMO_MARKER_KEY}` entry that makes `load_checkpoint` report them as random.
Files are named like the released ones, zips have the root folder `snapshot_{DEMO_EPOCH}.pth/`, and keys are each
family's official ones (older layouts included, where the released files have them).

| model id | file | format | sha256 (first 16) |
|---|---|---|---|
{rows}
""")


def main(argv: list[str] | None = None) -> int:
    load_model_files(argv)
    parser = argparse.ArgumentParser(prog="python -m helpers demo-checkpoints", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--models", nargs="+", choices=list_models(), help="model ids (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-file", action="append", default=[], metavar="FILE", help=MODEL_FILE_HELP)
    args = parser.parse_args(argv)
    written = write_demo_checkpoints(args.out_dir, args.models, args.seed)
    for model_id, path in written.items():
        print(f"{model_id:<28} {path}")
    print(f"wrote {len(written)} RANDOM-WEIGHT checkpoints and {args.out_dir / 'DEMO_CHECKPOINTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
