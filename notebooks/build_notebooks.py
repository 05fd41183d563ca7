"""Write the notebooks of this folder from the template: `python notebooks/build_notebooks.py [--check]`.

The template is `helpers/notebook_template.py` (one model notebook per built-in family, from the family's
own file, plus the consolidation notebook). `--check` exits 1 when a committed notebook differs from it.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from helpers.notebook_template import build  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    notebooks = build()
    if "--check" in argv:
        stale = [name for name, text in notebooks.items()
                 if not (HERE / name).is_file() or (HERE / name).read_text(encoding="utf-8") != text]
        for name in stale:
            print(f"{name} differs from the template; run python notebooks/build_notebooks.py")
        return 1 if stale else 0
    from helpers.atomic import write_text

    for name, text in notebooks.items():
        write_text(HERE / name, text)
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
