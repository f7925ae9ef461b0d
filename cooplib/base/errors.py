"""Exceptions with messages that say what to do, and the one did-you-mean helper."""
from __future__ import annotations

import difflib
from typing import Iterable


def suggest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class CooplibError(Exception):
    """Base class of cooplib's own errors."""


class ConfigError(CooplibError, ValueError):
    """A parameter is unknown, mistyped or out of range."""


class RunDirError(CooplibError):
    """A run directory cannot be used as asked (different config, corrupt checkpoint, ...)."""


class DivergedError(CooplibError, FloatingPointError):
    """The loss became non-finite; the last good checkpoint is kept."""


class RunLockedError(RunDirError):
    """Another live process holds the run directory's lock (it is training that run)."""


class DatasetNotFoundError(CooplibError, FileNotFoundError):
    """A dataset's files are missing; the message says what to download and where to put it."""


class SweepError(CooplibError):
    """Some runs of a sweep failed; the others finished and are on disk."""
