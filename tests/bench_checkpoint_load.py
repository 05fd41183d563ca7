"""Benchmark `load_checkpoint` on a ConvNeXtPose-L-sized checkpoint, as the release is (a script, not a test).

    python3 tests/bench_checkpoint_load.py [--repeat 3] [--budget-s 2]

Writes ConvNeXtPose L the way its official training code does (`helpers.demo_checkpoints.official_payload`:
`nn.DataParallel(model).state_dict()` with its `_metadata`, and AdamW's state after a real step, about 101 MB
like the released `ConvNeXtPose_L.tar`), as the released file is: a torch zip named `ConvNeXtPose_L.tar` with the
`snapshot_83.pth/` root folder. Then times `load_checkpoint` in this process (every check, the sha256, torch.load,
detection and the strict load): the first call (detection builds every registry model's shapes once) and the
following ones, with and without `model_id`, from the folder Kaggle unpacks the file into, and the same payload in
the legacy pre-1.6 format (the 2019 releases). Exits 1 over the budget.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.demo_checkpoints import official_payload, save_official  # noqa: E402
from helpers.models import load_checkpoint  # noqa: E402
from helpers.models.checkpoint import DEMO_MARKER_KEY  # noqa: E402

EPOCH = 83


def make_checkpoints(folder: Path) -> dict[str, Path]:
    payload = official_payload("convnextpose_L")
    payload["epoch"] = EPOCH
    payload.pop(DEMO_MARKER_KEY)
    released = folder / "ConvNeXtPose_L.tar"
    save_official(payload, released, "zip", epoch=EPOCH)
    legacy = folder / f"snapshot_{EPOCH}.pth.tar"
    save_official(payload, legacy, "legacy", epoch=EPOCH)
    with zipfile.ZipFile(released) as zf:
        zf.extractall(folder / "unpacked")
    return {"zip": released, "legacy": legacy, "folder": folder / "unpacked" / f"snapshot_{EPOCH}.pth"}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=2.0)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        paths = make_checkpoints(Path(tmp))
        size_mb = paths["zip"].stat().st_size / 1e6
        rows.append({"case": "released zip, first call, detect (cold shape cache)",
                     "seconds": timed(lambda: load_checkpoint(paths["zip"]))})
        for _ in range(args.repeat):
            rows.append({"case": "released zip, detect", "seconds": timed(lambda: load_checkpoint(paths["zip"]))})
            rows.append({"case": "released zip, model_id given",
                         "seconds": timed(lambda: load_checkpoint(paths["zip"], "convnextpose_L"))})
            rows.append({"case": "extracted folder, detect", "seconds": timed(lambda: load_checkpoint(paths["folder"]))})
            rows.append({"case": "legacy format, detect", "seconds": timed(lambda: load_checkpoint(paths["legacy"]))})
    table = pd.DataFrame(rows).groupby("case", sort=False)["seconds"].agg(["min", "median", "max", "count"])
    print(f"checkpoint: ConvNeXtPose L + AdamW state (official save call), {size_mb:.1f} MB; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(table.round(3).to_string())
    worst = table["median"].max()
    verdict = "OK" if worst < args.budget_s else "OVER BUDGET"
    print(f"worst median {worst:.2f} s vs budget {args.budget_s:.1f} s: {verdict}")
    return 0 if worst < args.budget_s else 1


if __name__ == "__main__":
    raise SystemExit(main())
