"""Error types. A :class:`UserError` is the user's mistake: the CLI prints it, no traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GanPipeError(Exception):
    """Base of every error gan-pipe raises on purpose."""


class UserError(GanPipeError):
    """A mistake the user can fix (bad recipe, missing data file). CLI exit code 2."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe that does not validate. ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid recipe {source}:\n{lines}")


class DataNotFoundError(UserError):
    """A dataset's files are missing and could not be downloaded."""


class PluginError(GanPipeError):
    """A plugin broke the contract (duplicate component name, bad registration)."""


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Names from ``choices`` that look like ``word`` (for 'did you mean' hints)."""
    choices = list(choices)
    found = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    if not found:
        found = [c for c in choices if word and (word in c or c in word)][:n]
    return found


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    matches = close_matches(word, choices)
    return f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
