"""Measured segment tables: one row per merged segment (st, end] of a network's conv chain, with the shape of the
conv it merges into and its measured time. The format is the one Kim et al. (ICML 2023) released for their
planner (``../shared/data/measured-gpu/``): ``#`` comment lines, then a CSV header
``st,end,time_ms,stdev_ms,c_in,c_out,kernel,stride,padding,groups,h_in,w_in,h_out,w_out``.

:func:`load_table` reads and validates a table (every field, every row's shape: the output map its conv gives,
channels its groups divide, no duplicate segments); what a row is *of* (which network, device, runtime, batch)
the file does not say in its columns, so the importer (:mod:`dsa.measure.table_import`) is told and checks the
shapes against the network.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from dsa.errors import ArtifactError

COLUMNS: tuple[str, ...] = (
    "st",
    "end",
    "time_ms",
    "stdev_ms",
    "c_in",
    "c_out",
    "kernel",
    "stride",
    "padding",
    "groups",
    "h_in",
    "w_in",
    "h_out",
    "w_out",
)
_INT_COLUMNS = tuple(c for c in COLUMNS if c not in ("time_ms", "stdev_ms"))


@dataclass(frozen=True)
class TableRow:
    """One measured segment: convs st+1..end of the chain merged into one conv of this shape."""

    st: int
    end: int
    time_ms: float
    stdev_ms: float
    c_in: int
    c_out: int
    kernel: int
    stride: int
    padding: int
    groups: int
    h_in: int
    w_in: int
    h_out: int
    w_out: int

    @property
    def span(self) -> tuple[int, int]:
        return (self.st, self.end)

    @property
    def convs(self) -> int:
        return self.end - self.st

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.c_in == self.c_out


@dataclass(frozen=True)
class SegmentTable:
    """A validated table: its rows (in file order) and the comment lines above them (its provenance)."""

    path: str
    rows: tuple[TableRow, ...]
    comments: tuple[str, ...]

    @property
    def chain_length(self) -> int:
        return max(r.end for r in self.rows)

    def by_span(self) -> dict[tuple[int, int], TableRow]:
        return {r.span: r for r in self.rows}


def _row(raw: dict, line: int, path: str) -> TableRow:
    where = f"table {path}, line {line}"
    values: dict = {}
    for col in COLUMNS:
        text = (raw.get(col) or "").strip()
        try:
            values[col] = int(text) if col in _INT_COLUMNS else float(text)
        except ValueError:
            kind = "an integer" if col in _INT_COLUMNS else "a number"
            raise ArtifactError(f"{where}: column {col!r} is {text!r}, not {kind}") from None
    r = TableRow(**values)
    if not 0 <= r.st < r.end:
        raise ArtifactError(f"{where}: segment ({r.st}, {r.end}] is empty or negative; st must be < end")
    if not (math.isfinite(r.time_ms) and math.isfinite(r.stdev_ms) and r.time_ms > 0 and r.stdev_ms >= 0):
        raise ArtifactError(f"{where}: time_ms must be > 0 and stdev_ms >= 0 (got {r.time_ms}, {r.stdev_ms})")
    for col in ("c_in", "c_out", "kernel", "stride", "groups", "h_in", "w_in", "h_out", "w_out"):
        if getattr(r, col) < 1:
            raise ArtifactError(f"{where}: column {col!r} must be >= 1, got {getattr(r, col)}")
    if r.padding < 0:
        raise ArtifactError(f"{where}: column 'padding' must be >= 0, got {r.padding}")
    if r.c_in % r.groups or r.c_out % r.groups:
        raise ArtifactError(f"{where}: groups={r.groups} does not divide c_in={r.c_in} and c_out={r.c_out}")
    for side, n_in, n_out in (("h", r.h_in, r.h_out), ("w", r.w_in, r.w_out)):
        expected = (n_in + 2 * r.padding - r.kernel) // r.stride + 1
        if expected != n_out:
            raise ArtifactError(
                f"{where}: a {r.kernel}x{r.kernel} stride-{r.stride} conv with padding {r.padding} maps "
                f"{side}_in={n_in} to {expected}, but the row says {side}_out={n_out}; the shape columns disagree"
            )
    return r


def parse_table(text: str, path: str = "<memory>") -> SegmentTable:
    """A table from its text (see the module docstring); errors name the line and column."""
    comments, body, numbers = [], [], []  # numbers: the file's line number of each body line
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            comments.append(line[1:].strip())
        elif line.strip():
            body.append(line)
            numbers.append(i)
    if not body:
        raise ArtifactError(f"table {path}: no header and no rows; expected a CSV header {','.join(COLUMNS)}")
    try:
        header, *records = list(csv.reader(body))
    except csv.Error as e:
        raise ArtifactError(f"table {path}: not a readable CSV ({e}); expected {','.join(COLUMNS)}") from e
    header = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ArtifactError(
            f"table {path}: the header lacks column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}"
        )
    rows: list[TableRow] = []
    seen: dict[tuple[int, int], int] = {}
    for k, record in enumerate(records):
        line = numbers[k + 1]
        if len(record) != len(header):
            raise ArtifactError(f"table {path}, line {line}: {len(record)} fields, but the header has {len(header)}")
        r = _row(dict(zip(header, record, strict=True)), line, path)
        if r.span in seen:
            raise ArtifactError(f"table {path}, line {line}: segment ({r.st}, {r.end}] is also on line {seen[r.span]}")
        seen[r.span] = line
        rows.append(r)
    if not rows:
        raise ArtifactError(f"table {path}: a header but no rows")
    return SegmentTable(path, tuple(rows), tuple(comments))


def load_table(path: str | Path) -> SegmentTable:
    """Read and validate a measured segment table (:func:`parse_table`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ArtifactError(f"table {p}: cannot be read ({e.strerror or e}); give the path of a measured CSV") from e
    except UnicodeDecodeError as e:
        raise ArtifactError(f"table {p}: not a text file (byte {e.start} is not UTF-8); give a measured CSV") from e
    return parse_table(text, str(p))
