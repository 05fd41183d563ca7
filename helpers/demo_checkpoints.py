"""Random-initialised checkpoints in the official on-disk layouts, for demos and tests without downloads.

`python -m helpers demo-checkpoints OUT_DIR [--models ID ...] [--seed N] [--model-file FILE]`

Every file is what the official training code writes (`torch.save` zip of `{'epoch', 'network',
'optimizer'}` with DataParallel `module.` keys), plus a `demo_note` entry that marks the weights as
random so reports can say so loudly. A file is named like the family's first released file (else
`snapshot_<epoch>.pth.tar`), with the internal root folder `snapshot_<epoch>.pth/`, and its keys are the
official ones: each family's `official_keys` (the inverse of its key filter) writes them.
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

from .atomic import write_text
from .models.checkpoint import DEMO_MARKER_KEY
from .models.checkpoint_file import file_sha256
from .models.registry import MODEL_FILE_HELP, MODEL_REGISTRY, get_family, get_spec, list_models, load_model_files

DEMO_EPOCH = 0  # never trained
DEMO_NOTE = "random-initialised weights written by helpers.demo_checkpoints; NOT trained, results are meaningless"


def demo_file_name(model_id: str) -> str:
    """The released file name where one is known (e.g. `ConvNeXtPose_L.tar`), else `snapshot_<epoch>.pth.tar`."""
    spec = get_spec(model_id)
    return spec.checkpoints[0].file_name if spec.checkpoints else f"snapshot_{DEMO_EPOCH}.pth.tar"


def _official_network(model_id: str, model: torch.nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The model's state dict in the family's official layout, with DataParallel `module.` keys."""
    spec = get_spec(model_id)
    official_keys = get_family(spec.family).official_keys
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if official_keys is not None:
        state = official_keys(spec, state)
    return OrderedDict((f"module.{key}", value) for key, value in state.items())


def _random_model(model_id: str, seed: int) -> torch.nn.Module:
    # one seed per (seed, model) so each file is reproducible on its own, without touching the global RNG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{seed}:{model_id}".encode()))
        return get_spec(model_id).build()


def _save_with_root(obj, final_path: Path, root_name: str) -> None:
    """torch.save names the zip's root folder after the file (minus its last suffix): save under
    `<root_name>.tar` in a private folder beside the target, then rename atomically."""
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=final_path.parent))
    try:
        tmp = staging / f"{root_name}.tar"
        torch.save(obj, tmp)
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
        model = _random_model(model_id, seed)
        network = _official_network(model_id, model)
        optimizer = torch.optim.AdamW(model.parameters()).state_dict()
        payload = {"epoch": DEMO_EPOCH, "network": network, "optimizer": optimizer, DEMO_MARKER_KEY: DEMO_NOTE}
        target = out_dir / model_id / demo_file_name(model_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        _save_with_root(payload, target, f"snapshot_{DEMO_EPOCH}.pth")
        written[model_id] = target
    _write_readme(out_dir, written, seed)
    return written


def _write_readme(out_dir: Path, written: dict[str, Path], seed: int) -> None:
    rows = "\n".join(f"| `{m}` | `{p.relative_to(out_dir).as_posix()}` | `{file_sha256(p)[:16]}` |"
                     for m, p in written.items())
    write_text(out_dir / "DEMO_CHECKPOINTS.md", f"""# Demo checkpoints: RANDOM WEIGHTS

These files hold **random-initialised weights** (seed {seed}), written by `python -m helpers demo-checkpoints`.
They are **not trained**: any accuracy computed with them is meaningless. They exist to exercise the
loading and inference pipeline without downloading the released checkpoints.

Layout: the official one, a `torch.save` zip of `{{'epoch': {DEMO_EPOCH}, 'network', 'optimizer'}}` with
`module.` keys and an extra `{DEMO_MARKER_KEY}` entry that makes `load_checkpoint` report them as random.
Files are named like the released ones, use the internal root folder `snapshot_{DEMO_EPOCH}.pth/` and the
official key names of each family (older layouts included, where the released files have them).

| model id | file | sha256 (first 16) |
|---|---|---|
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
