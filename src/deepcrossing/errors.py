"""Errors meant for people: they say what was wrong, where (file, line, field), and what to do.

The CLI prints ``str(error)`` and exits with status 2 for any :class:`DeepCrossingError`; everything else
is a bug and gets a traceback.
"""

from __future__ import annotations

from pathlib import Path


class DeepCrossingError(Exception):
    """Base class of every error that the CLI reports without a traceback."""


class InputError(DeepCrossingError):
    """Bad input data or configuration, located as precisely as we can.

    Args:
        message: what is wrong and, where useful, what to do about it.
        path: the file (or folder) at fault.
        line: 1-based line number in ``path`` (header is line 1 for CSV files).
        field: the column, key or field name at fault.

    Example:
        >>> str(InputError("rating 7.0 is outside 0.5..5.0", path="ratings.csv", line=12, field="rating"))
        'ratings.csv:12: field rating: rating 7.0 is outside 0.5..5.0'
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path + (f":{self.line}" if self.line is not None else "")
        if self.field is not None:
            where = f"{where}: field {self.field}" if where else f"field {self.field}"
        return f"{where}: {self.message}" if where else self.message
