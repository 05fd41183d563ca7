"""Benchmark `load_checkpoint` on a ~100 MB checkpoint like the released ConvNeXtPose_L.tar (a script, not a test).

    python3 tests/bench_checkpoint_load.py [--repeat 3] [--budget-s 3]

Builds ConvNeXtPose L with a real AdamW state after one step (exp_avg, exp_avg_sq: the released files hold
such a state too), saves it as `ConvNeXtPose_L.tar` with the `snapshot_83.pth/` root folder, then times
`load_checkpoint` in this process: the first call (detection builds every registry model's shapes once) and
the following ones, with and without `model_id`, and from the extracted folder. Exits 1 over the budget.
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
from helpers.models import build_model, load_checkpoint  # noqa: E402


def make_checkpoint(folder: Path) -> Path:
    model = build_model("convnextpose_L").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    network = {f"module.{k}": v for k, v in model.state_dict().items()}
    staged = folder / "snapshot_83.pth.tar"  # torch.save names the zip root after the file: snapshot_83.pth/
    torch.save({"epoch": 83, "network": network, "optimizer": optimizer.state_dict()}, staged)
    final = folder / "ConvNeXtPose_L.tar"
    os.replace(staged, final)
    return final


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=3.0)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        path = make_checkpoint(Path(tmp))
        size_mb = path.stat().st_size / 1e6
        rows.append({"case": "first call, detect (cold shape cache)",
                     "seconds": timed(lambda: load_checkpoint(path))})
        for i in range(args.repeat):
            rows.append({"case": "detect", "seconds": timed(lambda: load_checkpoint(path))})
            rows.append({"case": "model_id given", "seconds": timed(lambda: load_checkpoint(path, "convnextpose_L"))})
        with zipfile.ZipFile(path) as zf:
            zf.extractall(Path(tmp) / "unpacked")
        folder = Path(tmp) / "unpacked" / "snapshot_83.pth"
        for i in range(args.repeat):
            rows.append({"case": "extracted folder, detect", "seconds": timed(lambda: load_checkpoint(folder))})
    table = pd.DataFrame(rows).groupby("case", sort=False)["seconds"].agg(["min", "median", "max", "count"])
    print(f"checkpoint: ConvNeXtPose L + AdamW state, {size_mb:.1f} MB; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(table.round(3).to_string())
    worst = table["max"].max()
    verdict = "OK" if worst < args.budget_s else "OVER BUDGET"
    print(f"worst {worst:.2f} s vs budget {args.budget_s:.1f} s: {verdict}")
    return 0 if worst < args.budget_s else 1


if __name__ == "__main__":
    raise SystemExit(main())
