"""Reading uploaded CSV text: UTF-8 decoding and ``csv`` errors as :class:`DataError`.

Both CSV readers of the core (point sets in ``data``, long-format series in ``series_io``) go
through here, so a file that is not UTF-8, or whose cell is over Python's ``csv.field_size_limit``
(131 072 characters, usually an unclosed quote swallowing the rest of the file), is a ``DataError``
naming the line and the fix, never an exception the service does not know.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from service.ml.errors import DataError

__all__ = ["csv_lines", "decode_csv"]


def decode_csv(data: bytes | str, field: str = "file") -> str:
    """``data`` as text (UTF-8, an optional BOM dropped); ``DataError`` naming the line otherwise."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"line {line} is not valid UTF-8 (byte {err.start})",
            value=err.start,
            fix="save the file as UTF-8 text",
            field=field,
        ) from None


def csv_lines(text: str, field: str = "file", *, strict: bool = False) -> Iterator[tuple[int, list[str]]]:
    """``(line number, cells)`` of each CSV record (1-based; a record's last line if it spans several).

    A malformed record (a cell over ``csv.field_size_limit()``, a stray quote with ``strict``)
    raises ``DataError`` naming its line and ``field``.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=strict)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise _malformed(reader.line_num, str(err), field) from None
        yield reader.line_num, cells


def _malformed(line: int, reason: str, field: str) -> DataError:
    limit = csv.field_size_limit()
    if "field larger than field limit" in reason:
        return DataError(
            f"line {line}: a cell is longer than {limit} characters",
            value=line,
            fix="keep every cell under that length; a quote opened and never closed makes the rest "
            "of the file one cell",
            field=field,
        )
    return DataError(
        f"line {line}: malformed CSV ({reason})",
        value=line,
        fix="use plain comma-separated cells, quoting a cell only around its whole text",
        field=field,
    )
