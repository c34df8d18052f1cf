"""Errors that carry a one-line message a user can act on."""

from __future__ import annotations

from typing import Any


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
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")

    def with_prefix(self, prefix: str) -> "ConfigError":
        """The same error with the key qualified, e.g. ``data.`` + ``batch_size``."""
        if self.key.startswith(prefix):
            return self
        return ConfigError(prefix + self.key, self.value, self.allowed)


class DataFileError(LightningEchoError, FileNotFoundError):
    """A dataset file is missing, unreadable, or has the wrong checksum or shape."""


class IncompatibleDataError(LightningEchoError, ValueError):
    """A model cannot be trained on a dataset (e.g. a CNN on plain feature vectors)."""
