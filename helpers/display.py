"""Showing a table, figure or image: rich display in a notebook, printed elsewhere (scripts, tests)."""
from __future__ import annotations


def show(obj) -> None:
    """Show `obj` in a notebook (rich display); print it elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        print(obj)
        return
    if get_ipython() is None:
        print(obj)
    else:
        display(obj)


def number(value: float) -> str:
    """How tables show a float: 2 decimals (mm), small non-zero values (p-values) with 2 significant digits."""
    return f"{value:.2g}" if value != 0 and abs(value) < 0.01 else f"{value:.2f}"
