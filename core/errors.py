"""diskwatch's own exceptions: one base, so the CLI can turn every user mistake into one line.

Library code (core, models, stream, training) raises these, never typer/rich types; the CLI's
entry point catches :class:`DiskwatchError` once, prints ``error: <message>`` and exits with
:attr:`DiskwatchError.exit_code` (2: the user can fix it). Subclasses that replace a builtin the
code raised before (``ValueError``, ``FileNotFoundError``) also inherit it, so callers that
caught the builtin keep working.
"""

from __future__ import annotations


class DiskwatchError(Exception):
    """Base of every error diskwatch raises on purpose; the message is meant for a person."""

    exit_code: int = 2


class UsageError(DiskwatchError, ValueError):
    """A bad option or argument value (e.g. an unknown model architecture, a malformed date)."""


class ConfigError(DiskwatchError, ValueError):
    """A bad setting; the message names the ``DISKWATCH_*`` variable that fixes it."""


class DataError(DiskwatchError, ValueError):
    """Input data that cannot be used: empty, unreadable, or not in the expected layout."""


class DataNotFound(DiskwatchError, FileNotFoundError):
    """A path the user gave does not exist."""


class ServiceUnavailable(DiskwatchError):
    """Kafka or Redis cannot be reached (or refuses us); the message says where and which setting."""


class PortInUse(ConfigError):
    """A port diskwatch must listen on is taken by another process."""
