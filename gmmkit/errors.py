"""Errors a user can fix: bad flags, fields or files. The CLI prints them in one line and exits with 2.

Each message names what is wrong (flag, config field or file) and what was expected. An error about a
config field also carries the field's dotted name (``error.field``, e.g. ``"train.lr"``) and the message
without it (``error.detail``), which the command line shows with the field's flag.
"""

from __future__ import annotations


class InputError(ValueError):
    """Base class of every error caused by user input."""

    def __init__(self, message: str, field: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.field = field
        self.detail = detail


class ConfigError(InputError):
    """A configuration value is invalid; the message names the field."""


class DatasetError(InputError):
    """A data file is missing or malformed; the message names the file and what is wrong."""


class RunDirError(InputError):
    """The run directory cannot be used; the message names it."""


class LaunchError(InputError):
    """The launcher is missing or misconfigured; the message says what to install or set."""


class CLIError(InputError):
    """Bad command-line input; the message names the flag."""
