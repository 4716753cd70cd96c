"""Errors users see: one line that names the file, the row and the field."""

from __future__ import annotations

from pathlib import Path


class BearrecError(Exception):
    """Base class for errors the CLI prints as one line (no traceback)."""


class ConfigError(BearrecError, ValueError):
    """A configuration file or override is invalid."""


class DataError(BearrecError, ValueError):
    """Input data is malformed. The message names the file, the row (1-based line) and the field."""

    def __init__(self, path: str | Path, message: str, *, row: int | None = None, field: str | None = None):
        self.path, self.row, self.field = str(path), row, field
        where = self.path
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
