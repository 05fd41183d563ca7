"""`python -m helpers <command> ...`: every command-line entry point, in one style.

Each command lives in the module that owns its concern and exposes `main(argv) -> int`; `python -m helpers
--help` lists them all, `python -m helpers <command> --help` explains one. The older spellings
`python -m helpers.<module>` still work as aliases.
"""
from __future__ import annotations

import importlib
import sys

# command -> (module, function, one line)
COMMANDS = {
    "batch": ("helpers.batch", "main", "run the model notebooks headless with papermill, then the report"),
    "rescore": ("helpers.results", "rescore_main", "evaluate a predictions.npz (pose or root) against the annotations"),
    "inspect": ("helpers.models.checkpoint", "inspect_main", "inspect a checkpoint file: format, model, keys"),
    "crop": ("helpers.pipeline", "crop_main", "write the exact uint8 crop a model sees for a box"),
    "consolidate": ("helpers.consolidate", "main", "merge result.json files into the leaderboard and REPORT.md"),
    "benchmark": ("helpers.benchmark", "main", "time the pipeline (cold/warm crop cache, forward alone); --gpu-check"),
    "demo-data": ("helpers.demo_data", "main", "write the generated Human3.6M-format demo dataset"),
    "demo-checkpoints": ("helpers.demo_checkpoints", "main",
                         "write random-initialised checkpoints in the official layouts"),
    "publish": ("helpers.publish", "main", "stage results as a Kaggle dataset folder"),
}
ALIASES = {"demo_data": "demo-data", "demo_checkpoints": "demo-checkpoints"}


def usage() -> str:
    lines = ["usage: python -m helpers <command> [options]", "", "commands:"]
    lines += [f"  {name:<17} {doc}" for name, (_, _, doc) in COMMANDS.items()]
    lines += ["", "python -m helpers <command> --help explains a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = ALIASES.get(argv[0], argv[0]) if argv else None
    if command not in COMMANDS:
        print(usage())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, fn, _ = COMMANDS[command]
    return int(getattr(importlib.import_module(module), fn)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
