"""`python -m helpers <command> ...`: the command-line entry points.

Each command lives in the module that owns its concern and exposes `main(argv) -> int`.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "rescore": ("helpers.evaluate", "main", "evaluate a predictions.npz against the annotations"),
    "inspect": ("helpers.models.checkpoint", "inspect_main", "inspect a checkpoint file: format, model, keys"),
    "crop": ("helpers.pipeline", "crop_main", "write the exact uint8 crop a model sees for a box"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m helpers <command> [options]\n\ncommands:")
        for name, (_, _, doc) in COMMANDS.items():
            print(f"  {name:<10} {doc}")
        print("\nother entry points: python -m helpers.demo_data, helpers.demo_checkpoints, helpers.batch, "
              "helpers.benchmark, helpers.publish")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, fn, _ = COMMANDS[argv[0]]
    return int(getattr(importlib.import_module(module), fn)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
