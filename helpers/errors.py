"""Errors that a setting gets past, worded by whoever shows them.

The same check runs under a notebook (whose user sets `SKIP_MISSING_IMAGES = True`), a command (`--allow-partial`)
and the Python API (`allow_partial=True`). So the code that raises says what is wrong in neutral words and names
the setting in `setting`; the notebook runner and each command add the remedy in their own vocabulary
(`remedy`), so that nobody is told a flag inside a notebook or a keyword argument on the command line.
"""
from __future__ import annotations


class FixableError(Exception):
    """An error that the setting named `setting` (a neutral id such as "allow_partial") would get past."""

    def __init__(self, message: str, setting: str | None = None, value=None):
        super().__init__(message)
        self.setting, self.value = setting, value


def remedy(exc: BaseException, words: dict[str, str]) -> str:
    """`exc`'s message with the remedy in the caller's vocabulary: `words` maps a setting id to a phrase such as
    "set SKIP_MISSING_IMAGES = True" or "pass --aspect-ratio {value}"; the message alone when none applies."""
    setting = getattr(exc, "setting", None)
    if setting not in words:
        return str(exc)
    return f"{exc}; {words[setting].format(value=getattr(exc, 'value', None))}"
