"""Errors that carry a one-line message a user can act on."""

from __future__ import annotations

from typing import Any, Optional


class LightningEchoError(Exception):
    """Base class for errors whose message is meant for the user as is (one line)."""


class ConfigError(LightningEchoError, ValueError):
    """A setting has a value that is not allowed.

    The message names the setting, the value and what is allowed, e.g.
    ``batch_size=0 is not allowed: must be a positive integer``.
    """

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}={shown_value(value)} is not allowed: {allowed}")

    def with_prefix(self, prefix: str) -> "ConfigError":
        """The same error with the key qualified, e.g. ``data.`` + ``batch_size``."""
        if self.key.startswith(prefix):
            return self
        return ConfigError(prefix + self.key, self.value, self.allowed)


class DataFileError(LightningEchoError, FileNotFoundError):
    """A dataset file is missing, unreadable, or has the wrong checksum or shape."""


class IncompatibleDataError(LightningEchoError, ValueError):
    """A model cannot be trained on a dataset (e.g. a CNN on plain feature vectors)."""


MAX_SHOWN_CHARS = 300  # long paths stay whole; a 5000-digit number does not fill the terminal


def shown_value(value: Any) -> str:
    """``repr(value)`` for a message, its middle cut out when it is very long (a 5000-digit
    number stays one readable line): ``'99999999...99999' (5002 characters)``."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's limit for converting integers to text
        return f"<an integer of about {len(format(value, 'x')) * 1.204:.0f} digits>"
    if len(text) <= MAX_SHOWN_CHARS:
        return text
    return f"{text[:40]}...{text[-20:]} ({len(text)} characters)"


def one_line(text: object, max_lines: Optional[int] = None) -> str:
    r"""``text`` folded into one line for an error message: its non-empty lines (the first
    ``max_lines`` of them when given), whitespace collapsed, joined by ``"; "``.

    Example::

        assert one_line("bad value\n  expected   an int\n") == "bad value; expected an int"
        assert one_line("first\nsecond", max_lines=1) == "first"
    """
    lines = [" ".join(line.split()) for line in str(text).splitlines()]
    lines = [line for line in lines if line]
    return "; ".join(lines[:max_lines] if max_lines is not None else lines)


def describe_error(error: BaseException) -> str:
    """``TypeName: first line of the message`` (just the type name when the message is empty)."""
    first = one_line(error, max_lines=1)
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
