"""User-facing errors: one line that names the key or file at fault and the fix.

A leaf module (it imports nothing from the package), so every module can raise these
without importing the config machinery. The CLI turns them into ``fipa <cmd>: error: ...``
and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FipaError(Exception):
    """Base of every user-facing error."""


class ConfigError(FipaError, ValueError):
    """Bad input, found before any training; the message names the key and the fix."""


class UnreadableFileError(FipaError):
    """A file the run needs (checkpoint, warm-up state, partition) exists but cannot be read;
    the message names the file and what to do (delete it, rerun its producing step)."""


class RunDirBusy(FipaError):
    """Another process holds the run directory's lock (fipa.io.RunDirLock)."""
