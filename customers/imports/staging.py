"""Streaming an uploaded CSV into the database, where every worker can read it.

The file is never held in memory: its first bytes give the header (and the delimiter), and
the rest goes to PostgreSQL in 1 MB chunks through ``COPY … FROM STDIN (FORMAT csv)``, which
parses the CSV itself. A staging table of text columns, one per header column, plus the line
number, holds the file until its import finishes. A broken file (not text, not UTF-8, no
header, a row with more or fewer values than the header, an unclosed quote) stops the COPY
at its first bad line, and that becomes one error naming the line.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable

import psycopg
from django.db import connection

from core.errors import FieldError, InputError

CHUNK = 1 << 20
HEAD = 64 * 1024
MAX_COLUMNS = 200
BOM = b"\xef\xbb\xbf"


def broken(message: str) -> InputError:
    return InputError([FieldError("file", message)], message=f"The file was not accepted: {message}")


def read_header(head: bytes) -> tuple[list[str], str]:
    """The column names and the delimiter, from the first bytes of the file."""
    head = head.removeprefix(BOM)
    if not head.strip():
        raise broken("the file is empty; the first line must name the columns")
    if b"\x00" in head:
        raise broken("line 1 holds binary data: this is not a CSV text file")
    end = head.find(b"\n")
    if end < 0 and len(head) >= HEAD:
        raise broken("line 1 is longer than 64 KB: this is not a CSV header")
    first = head[: end if end >= 0 else len(head)].rstrip(b"\r")
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError:
        raise broken("line 1 is not UTF-8 text; save the file as CSV UTF-8") from None
    delimiter = max(",;\t", key=text.count)
    try:
        names = next(csv.reader(io.StringIO(text), delimiter=delimiter))
    except (csv.Error, StopIteration):
        raise broken("line 1 could not be read as CSV") from None
    names = [name.strip() for name in names]
    if not any(names):
        raise broken("line 1 is empty; the first line must name the columns")
    if len(names) > MAX_COLUMNS:
        raise broken(f"line 1 has {len(names)} columns; at most {MAX_COLUMNS} are read")
    names = [name or f"Column {index + 1}" for index, name in enumerate(names)]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise broken(f"line 1 names the column '{name}' twice; each column needs its own name")
        seen.add(name)
    return names, delimiter


def column(index: int) -> str:
    return f"c{int(index)}"


def create(table: str, width: int) -> None:
    """An unlogged table (no WAL: it is rebuilt from the file if lost) of ``width`` text
    columns and the line number each row came from."""
    columns = ", ".join(f"{column(i)} text" for i in range(width))
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE UNLOGGED TABLE {table} (line bigint GENERATED ALWAYS AS IDENTITY (START 2), {columns})")


def copy(table: str, width: int, delimiter: str, chunks: Iterable[bytes]) -> int:
    """COPY the file (header included, skipped by PostgreSQL) into ``table``; returns the rows
    written. Raises :class:`InputError` naming the first bad line. Call inside a transaction."""
    columns = ", ".join(column(i) for i in range(width))
    statement = (f"COPY {table} ({columns}) FROM STDIN "
                 f"(FORMAT csv, HEADER true, DELIMITER {_literal(delimiter)}, ENCODING 'UTF8')")
    with connection.cursor() as cursor:
        try:
            # A savepoint, so a refused file leaves the caller's transaction usable.
            cursor.execute("SAVEPOINT import_copy")
            with cursor.cursor.copy(statement) as stream:
                for chunk in chunks:
                    stream.write(chunk)
            rows = cursor.cursor.rowcount
        except psycopg.Error as exc:
            cursor.execute("ROLLBACK TO SAVEPOINT import_copy")
            raise _explain(exc, width) from None
        cursor.execute("RELEASE SAVEPOINT import_copy")
    return rows


def _literal(delimiter: str) -> str:
    return {"\t": "E'\\t'", ",": "','", ";": "';'"}[delimiter]


def _explain(exc: psycopg.Error, width: int) -> InputError:
    primary = exc.diag.message_primary or str(exc)
    context = exc.diag.context or ""
    found = re.search(r"line (\d+)", context)
    where = f"line {found.group(1)}" if found else "the file"
    if "extra data after last expected column" in primary:
        return broken(f"{where} has more values than the header's {width} columns")
    if "missing data for column" in primary:
        return broken(f"{where} has fewer values than the header's {width} columns")
    if "invalid byte sequence" in primary or "character with byte sequence" in primary:
        return broken(f"{where} is not UTF-8 text; save the file as CSV UTF-8")
    if "unterminated CSV quoted field" in primary:
        # PostgreSQL notices at the end of the file, so the line is where the file ends.
        return broken(f"a quoted value is never closed: the file ends inside it, at {where}")
    return broken(f"{where} could not be read: {primary}")


def preview(table: str, width: int, rows: int = 5) -> list[list]:
    columns = ", ".join(column(i) for i in range(width))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM {table} ORDER BY line LIMIT %s", [rows])
        return [list(row) for row in cursor.fetchall()]


def drop(*tables: str) -> None:
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
