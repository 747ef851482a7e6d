"""Class tables: the list of classes a job annotates, kept in a spreadsheet people can edit.

Annotators and project leads maintain classes in Excel or a CSV file, not in code. This module reads
such a table (``.xlsx`` through openpyxl, ``.csv``/``.tsv`` through the standard ``csv`` module),
checks it row by row and turns it into :class:`ClassTable`: ids, colours, superclasses, synonyms for
text-prompted detectors, and :class:`~dl_utils.annotations.Label` objects for the store and CVAT.

Every problem raises :class:`~dl_utils.errors.ClassTableError` naming the file, the sheet and the
row as a spreadsheet shows it (header = row 1), the offending value and what to do.

Columns (header row, case-insensitive; ``_``/``-`` count as spaces):

========================  ===============================================================
``name``                  required; aliases ``class``, ``label``, ``category``
``id``                    whole number >= 0; missing ids are assigned after the largest one
``color``                 ``#rrggbb``, ``rrggbb``, ``#rgb`` or ``r,g,b``; missing -> palette
``superclass``            name of another class row; aliases ``parent``, ``supercategory``
``synonyms``              phrases separated by ``;`` or ``|``; aliases ``alias``, ``prompt``
``type``                  CVAT label type (``any`` when empty)
``description``           free text
anything else             kept per class in :attr:`ClassInfo.extra` (strings)
========================  ===============================================================
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from importlib.resources import files
from pathlib import Path
from typing import Any

from .annotations import Label, normalize_color
from .cv_utils.colors import palette
from .errors import ClassTableError, InputError

#: CVAT label types a ``type`` cell may hold.
LABEL_TYPES: tuple[str, ...] = (
    "any",
    "mask",
    "polygon",
    "rectangle",
    "polyline",
    "points",
    "ellipse",
    "cuboid",
    "skeleton",
    "tag",
)

#: The standard columns, in the order :meth:`ClassTable.to_csv` / ``to_xlsx`` write them.
COLUMNS: tuple[str, ...] = ("name", "id", "color", "superclass", "synonyms", "type", "description")

# header text (normalised by _key) -> standard column
_ALIASES: dict[str, str] = {
    "name": "name",
    "class": "name",
    "class name": "name",
    "label": "name",
    "label name": "name",
    "category": "name",
    "id": "id",
    "class id": "id",
    "label id": "id",
    "category id": "id",
    "color": "color",
    "colour": "color",
    "superclass": "superclass",
    "super class": "superclass",
    "super": "superclass",
    "parent": "superclass",
    "supercategory": "superclass",
    "synonyms": "synonyms",
    "synonym": "synonyms",
    "alias": "synonyms",
    "aliases": "synonyms",
    "prompt": "synonyms",
    "prompts": "synonyms",
    "type": "type",
    "label type": "type",
    "description": "description",
}

_TEXT_SUFFIXES = {".csv": None, ".tsv": "\t", ".txt": None}
_XLSX_SUFFIXES = {".xlsx", ".xlsm", ".xltx", ".xltm"}
_SYNONYM_SPLIT = re.compile(r"[;|]")
_DELIMITERS = (",", ";", "\t")
_TEMPLATE_FILES = {"csv": "classes_template.csv", "xlsx": "classes_template.xlsx"}


def _key(text: str) -> str:
    """Identity of a class name or phrase: case, ``-``/``_`` and runs of spaces do not matter.

    Used for duplicate detection and for :meth:`ClassTable.resolve`, so two names that a detector
    could not tell apart ("Traffic-light", "traffic light") are the same class.
    """
    return " ".join(text.casefold().replace("-", " ").replace("_", " ").split())


def _text(value: object) -> str:
    """A cell as text: spreadsheets hand back ints, floats, dates; CSV always strings."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # Excel stores 3 as 3.0
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return str(value).strip()


def _closest(word: str, choices: Iterable[str]) -> str | None:
    by_key = {_key(c): c for c in choices}
    match = difflib.get_close_matches(_key(word), list(by_key), n=1, cutoff=0.6)
    return by_key[match[0]] if match else None


def _list_names(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@dataclass(frozen=True)
class ClassInfo:
    """One class of a table. ``row`` is where it was defined (not part of equality)."""

    name: str
    id: int
    color: str
    superclass: str | None = None
    synonyms: tuple[str, ...] = ()
    type: str = "any"
    description: str = ""
    row: int | None = field(default=None, compare=False)
    extra: dict[str, str] = field(default_factory=dict, hash=False)

    def label(self) -> Label:
        """The class as a CVAT/store :class:`Label` (superclass carried as ``Label.superclass``)."""
        return Label(
            name=self.name, color=self.color, id=self.id, superclass=self.superclass, type=self.type
        )

    def to_record(self) -> dict[str, Any]:
        """A plain dict that :meth:`ClassTable.from_records` reads back to an equal class."""
        rec: dict[str, Any] = {
            "name": self.name,
            "id": self.id,
            "color": self.color,
            "superclass": self.superclass or "",
            "synonyms": "; ".join(self.synonyms),
            "type": self.type,
            "description": self.description,
        }
        rec.update(self.extra)
        return rec


class UnknownClassError(ClassTableError, KeyError):
    """Raised by ``table[name]`` for a missing class: a ClassTableError that is also a KeyError."""

    # KeyError.__str__ would print the message in quotes; keep it readable like every other error.
    __str__ = BaseException.__str__


class _Where:
    """Formats "file, sheet 'x', row 7" prefixes so every message points at the same place."""

    def __init__(self, source: str, sheet: str | None = None, unit: str = "row"):
        self.source = source
        self.sheet = sheet
        self.unit = unit

    @property
    def table(self) -> str:
        return f"{self.source}, sheet {self.sheet!r}" if self.sheet else self.source

    def at(self, row: int) -> str:
        return f"{self.table}, {self.unit} {row}"

    def error(self, row: int | None, message: str) -> ClassTableError:
        return ClassTableError(f"{self.at(row) if row is not None else self.table}: {message}")


# ------------------------------------------------------------------------------------ parsing
def _parse_id(raw: Any, where: _Where, row: int, name: str) -> int | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    bad = where.error(
        row,
        f"id {_text(raw)!r} of class {name!r} is not a whole number >= 0; write an integer such as"
        " 3 or leave the cell empty to have an id assigned",
    )
    if isinstance(raw, bool):
        raise bad
    if isinstance(raw, int):
        value = raw
    else:
        try:
            f = float(raw) if not isinstance(raw, str) else float(raw.strip())
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(f) or not f.is_integer():
            raise bad
        value = int(f)
    if value < 0:
        raise bad
    return value


def _parse_color(raw: object, where: _Where, row: int, name: str) -> str | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        if isinstance(raw, str) and "," in raw:  # "255, 0, 0" or "(255, 0, 0)"
            parts = raw.strip().strip("()[]").split(",")
            return normalize_color([int(p.strip()) for p in parts])
        if isinstance(raw, (tuple, list)):
            return normalize_color([int(v) for v in raw])
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 999_999:
            return normalize_color(f"{raw:06d}")  # Excel turned '000080' into the number 80
        return normalize_color(_text(raw))
    except (InputError, ValueError, TypeError):
        shown = raw if isinstance(raw, (tuple, list)) else _text(raw)
        raise where.error(
            row,
            f"colour {shown!r} of class {name!r}"
            " is not '#rrggbb', 'rrggbb', '#rgb' or 'r,g,b' (0..255); fix it or leave the cell"
            " empty to get a palette colour",
        ) from None


def _parse_synonyms(raw: object, name: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    parts = (
        [_text(p) for p in raw]
        if isinstance(raw, (list, tuple))
        else _SYNONYM_SPLIT.split(_text(raw))
    )
    out: list[str] = []
    seen = {_key(name)}
    for p in parts:
        p = " ".join(p.split())
        if p and _key(p) not in seen:
            seen.add(_key(p))
            out.append(p)
    return tuple(out)


def _parse_type(raw: object, where: _Where, row: int, name: str) -> str:
    t = _text(raw).lower()
    if not t:
        return "any"
    if t not in LABEL_TYPES:
        raise where.error(
            row,
            f"type {_text(raw)!r} of class {name!r} is not a CVAT label type; use one of "
            + ", ".join(LABEL_TYPES)
            + " (or leave it empty for 'any')",
        )
    return t


def _columns(
    header: Sequence[Any], where: _Where, row: int | None, *, require_name: bool = True
) -> dict[str, int]:
    """Map each header cell to a standard column (or to itself for extra columns)."""
    cols: dict[str, int] = {}
    shown: dict[str, str] = {}
    found: list[str] = []
    for i, cell in enumerate(header):
        text = _text(cell)
        if not text:
            continue  # an unnamed column holds nothing we can name; ignored
        found.append(text)
        col = _ALIASES.get(_key(text), text)
        if col in cols:
            raise where.error(
                row,
                f"columns {shown[col]!r} and {text!r} both mean {col!r}; keep one of them",
            )
        cols[col] = i
        shown[col] = text
    if require_name and "name" not in cols:
        got = _list_names(found) if found else "no column names"
        fix = (
            "give each record a 'name' key"
            if where.unit == "record"
            else "the first row must name the columns, e.g. name,id,color,superclass"
        )
        raise where.error(
            row,
            f"no 'name' column (found {got}); {fix} (aliases for name: class, label, category)",
        )
    return cols


def _is_blank(cells: Sequence[Any]) -> bool:
    return all(not _text(c) for c in cells)


def _is_comment(cells: Sequence[Any], first: int | None = None, colour: bool = False) -> bool:
    """A row whose first cell starts with '#'.

    ``first`` is the table's leftmost named column once the header is known (before it: the first
    non-empty cell), so a table that starts in column C still has comments. When that column is
    ``color`` (``colour=True``), a cell that is a valid colour such as ``#ff0000`` is data.
    """
    if first is None:
        t = next((_text(c) for c in cells if _text(c)), "")
    else:
        t = _text(cells[first]) if first < len(cells) else ""
    if not t.startswith("#"):
        return False
    if colour:
        try:
            normalize_color(t)
            return False
        except InputError:
            pass
    return True


@dataclass
class _ClassRow:
    """One checked row on its way to a :class:`ClassInfo`.

    Mutable because the table-wide steps finish it: the superclass is re-spelled as its target row
    spells its name, and a missing id or colour is filled in once every row is known.
    """

    row: int
    name: str
    id: int | None
    color: str | None
    superclass: str | None
    synonyms: tuple[str, ...]
    type: str
    description: str
    extra: dict[str, str]


@dataclass
class _TableRows:
    """What the row-by-row pass yields; the indexes let each row be checked against earlier ones."""

    cols: dict[str, int] | None = None
    header_row: int | None = None
    first: int = 0  # the column whose "#" marks a comment
    parsed: list[_ClassRow] = field(default_factory=list)
    by_key: dict[str, _ClassRow] = field(default_factory=dict)
    by_id: dict[int, _ClassRow] = field(default_factory=dict)

    def add(self, rec: _ClassRow) -> None:
        self.parsed.append(rec)
        self.by_key[_key(rec.name)] = rec
        if rec.id is not None:
            self.by_id[rec.id] = rec


def _build(
    rows: Iterable[tuple[int, Sequence[Any]]], where: _Where, *, records: bool = False
) -> list[ClassInfo]:
    """Check the rows of one table (header first) and return its classes sorted by id.

    ``records``: rows come from :meth:`ClassTable.from_records`; the first is the synthetic header
    (no row number) and no record is skipped, since an empty dict is a mistake worth reporting.
    The checks that need the whole table (superclasses, cycles, shared synonyms) run after every
    row is read, so a row may name a superclass defined further down.
    """
    table = _read_rows(rows, where, records)
    _resolve_superclasses(table, where)
    _check_superclass_cycles(table, where)
    _check_synonyms(table.parsed, where)
    _fill_ids_and_colours(table)
    classes = [_class_info(r) for r in table.parsed]
    return sorted(classes, key=lambda c: c.id)


def _read_rows(
    rows: Iterable[tuple[int, Sequence[Any]]], where: _Where, records: bool
) -> _TableRows:
    """Find the header, skip blank and comment rows, and check each class row on its own."""
    table = _TableRows()
    for rowno, cells in rows:
        if table.cols is None:
            if records:
                table.cols = _columns(cells, where, None)
                continue
            if _is_blank(cells) or _is_comment(cells):
                continue
            table.cols, table.header_row = _columns(cells, where, rowno), rowno
            table.first = min(table.cols.values())
            continue
        if not records and (
            _is_blank(cells)
            or _is_comment(cells, table.first, colour=table.cols.get("color") == table.first)
        ):
            continue
        table.add(_parse_row(rowno, cells, table.cols, table, where))

    if table.cols is None:
        raise where.error(
            None,
            "the table is empty: no header row; put the column names (name,id,color,superclass,"
            "...) in the first row and one class per row below",
        )
    if not table.parsed:
        below = (
            f" below the header (row {table.header_row})" if table.header_row is not None else ""
        )
        raise where.error(None, f"the table has no classes{below}; add one {where.unit} per class")
    return table


def _parse_row(
    rowno: int, cells: Sequence[Any], cols: dict[str, int], seen: _TableRows, where: _Where
) -> _ClassRow:
    """One class row, checked cell by cell and against the rows ``seen`` before it (name, id)."""
    values = {c: cells[i] if i < len(cells) else None for c, i in cols.items()}
    cell = values.get

    name = " ".join(_text(cell("name")).split())
    if not name:
        filled = ", ".join(
            f"{c}={_text(cell(c))!r}" for c in cols if c != "name" and _text(cell(c))
        )
        raise where.error(
            rowno, f"the name is empty ({filled}); fill in the class name or delete the row"
        )
    dup = seen.by_key.get(_key(name))
    if dup is not None:
        spelled = f" as {dup.name!r}" if dup.name != name else ""
        raise where.error(
            rowno,
            f"class {name!r} is defined twice (first on {where.unit} {dup.row}{spelled});"
            " rename or remove one",
        )
    cid = _parse_id(cell("id"), where, rowno, name)
    if cid is not None and cid in seen.by_id:
        other = seen.by_id[cid]
        raise where.error(
            rowno,
            f"id {cid} of class {name!r} is already used by {other.name!r} ({where.unit}"
            f" {other.row}); give each class its own id or leave the cell empty",
        )
    superclass = " ".join(_text(cell("superclass")).split()) or None
    return _ClassRow(
        row=rowno,
        name=name,
        id=cid,
        color=_parse_color(cell("color"), where, rowno, name),
        superclass=superclass,
        synonyms=_parse_synonyms(cell("synonyms"), name),
        type=_parse_type(cell("type"), where, rowno, name),
        description=_text(cell("description")),
        extra={c: _text(cell(c)) for c in cols if c not in COLUMNS and _text(cell(c))},
    )


def _resolve_superclasses(table: _TableRows, where: _Where) -> None:
    """A superclass must be another row of the table; it is re-spelled as that row spells its name."""
    names = [r.name for r in table.parsed]
    for r in table.parsed:
        sup = r.superclass
        if sup is None:
            continue
        if _key(sup) == _key(r.name):
            raise where.error(
                r.row,
                f"class {r.name!r} names itself as its superclass; leave superclass empty or"
                " name another class",
            )
        target = table.by_key.get(_key(sup))
        if target is None:
            close = _closest(sup, names)
            hint = f"did you mean {close!r}?" if close else f"known classes: {_list_names(names)}"
            raise where.error(
                r.row,
                f"superclass {sup!r} of class {r.name!r} is not a class of this table; {hint}"
                " (a superclass needs its own row)",
            )
        r.superclass = target.name


def _check_superclass_cycles(table: _TableRows, where: _Where) -> None:
    """Walk up from every class; the cycle is reported at the first of its rows that is walked."""
    for r in table.parsed:
        path = [r.name]
        cur = r
        while cur.superclass is not None:
            cur = table.by_key[_key(cur.superclass)]
            path.append(cur.name)
            if cur is r:
                raise where.error(
                    r.row,
                    f"superclasses form a cycle ({' -> '.join(path)}); clear the superclass of one"
                    " of these classes",
                )
            if len(path) > len(table.parsed) + 1:  # a cycle above r; reported at its own members
                break


def _check_synonyms(parsed: list[_ClassRow], where: _Where) -> None:
    """One phrase, one class: a synonym must not be another class's name or synonym.

    A detector's output phrase is mapped back through these, so a shared phrase would be ambiguous.
    """
    phrases: dict[str, tuple[str, _ClassRow]] = {_key(r.name): ("name", r) for r in parsed}
    for r in parsed:
        for s in r.synonyms:
            k = _key(s)
            hit = phrases.get(k)
            if hit is not None and hit[1] is not r:
                what = "the name" if hit[0] == "name" else "also a synonym"
                raise where.error(
                    r.row,
                    f"synonym {s!r} of class {r.name!r} is {what} of class {hit[1].name!r}"
                    f" ({where.unit} {hit[1].row}); a phrase can map to one class only, remove"
                    " it from one of them",
                )
            phrases[k] = ("synonym", r)


def _fill_ids_and_colours(table: _TableRows) -> None:
    """Ids after the largest given id, in row order; colours from the palette, avoiding given ones.

    Done last so that a given id or colour anywhere in the table is never handed out twice.
    """
    next_id = max(table.by_id, default=-1) + 1
    for r in table.parsed:
        if r.id is None:
            r.id = next_id
            next_id += 1
    missing = [r for r in table.parsed if r.color is None]
    if missing:
        used = {r.color for r in table.parsed if r.color is not None}
        for r, c in zip(missing, palette(len(missing), avoid=used), strict=True):
            r.color = c


def _class_info(r: _ClassRow) -> ClassInfo:
    """The finished row as a ClassInfo (after :func:`_fill_ids_and_colours`)."""
    assert r.id is not None and r.color is not None  # filled in by _fill_ids_and_colours
    return ClassInfo(
        name=r.name,
        id=r.id,
        color=r.color,
        superclass=r.superclass,
        synonyms=r.synonyms,
        type=r.type,
        description=r.description,
        row=r.row,
        extra=r.extra,
    )


# ------------------------------------------------------------------------------------ readers
def _read_text_rows(path: Path, delimiter: str | None) -> list[tuple[int, list[str]]]:
    try:
        # utf-8-sig: Excel's "CSV UTF-8" starts with a BOM that would otherwise stick to 'name'
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ClassTableError(
            f"{path}: not UTF-8 text (byte {e.start}); save it as 'CSV UTF-8' or use .xlsx"
        ) from None
    except OSError as e:
        raise ClassTableError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if delimiter is None:
        delimiter = _guess_delimiter(text)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        # record number = the row a spreadsheet shows, even when a quoted cell spans lines
        return [(i, row) for i, row in enumerate(reader, 1)]
    except csv.Error as e:
        raise ClassTableError(
            f"{path}: not a readable CSV file ({e}); save it again as CSV"
        ) from None


def _guess_delimiter(text: str) -> str:
    """The delimiter that splits the header line into the most cells (',' on a tie).

    Hand-written rather than csv.Sniffer: the sniffer weighs every line, so colours written
    "255,0,0" or descriptions with commas in a ';' file mislead it, and it gives up on
    one-column tables. Column names never contain the delimiter, so the header decides.
    """
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            counts = {d: len(next(csv.reader([line], delimiter=d), [])) for d in _DELIMITERS}
            return max(_DELIMITERS, key=lambda d: counts[d])  # max keeps the first on a tie
    return ","


def _read_xlsx_rows(path: Path) -> tuple[str, list[tuple[int, tuple[Any, ...]]]]:
    import openpyxl  # imported here: reading a CSV should not pay for openpyxl

    # openpyxl raises zipfile, XML, KeyError and ValueError flavours for damaged or foreign files;
    # all mean "this is not a workbook we can read", so they are caught together.
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:
        raise ClassTableError(
            f"{path}: cannot be read as an Excel workbook ({type(e).__name__}: {e}); open it in"
            " Excel/LibreOffice and save it again as .xlsx, or export it as .csv"
        ) from None
    try:
        sheets = wb.worksheets
        if not sheets:
            raise ClassTableError(f"{path}: the workbook has no worksheet; add a sheet 'classes'")
        ws = next((s for s in sheets if s.title.strip().lower() == "classes"), sheets[0])
        ws.reset_dimensions()  # some writers store a wrong used range; read every row there is
        try:
            rows = [(i, r) for i, r in enumerate(ws.iter_rows(values_only=True), 1)]
        except Exception as e:
            raise ClassTableError(
                f"{path}, sheet {ws.title!r}: cannot be read ({type(e).__name__}: {e}); save the"
                " workbook again as .xlsx"
            ) from None
        return ws.title, rows
    finally:
        wb.close()


# ------------------------------------------------------------------------------------ table
class ClassTable:
    """The classes of a job, in id order, with lookups by name, id and detector phrase.

    Build one with :meth:`load`, :meth:`from_records` or :meth:`from_names`; the constructor takes
    :class:`ClassInfo` objects and checks them like a file.
    """

    def __init__(
        self, classes: Iterable[ClassInfo | Mapping[str, Any]], *, source: str = "<table>"
    ) -> None:
        self._set(_records_to_classes(classes, source), source)

    def _set(self, classes: list[ClassInfo], source: str) -> None:
        self.source = source
        self._classes = classes
        self._by_id = {c.id: c for c in classes}
        self._by_key = {_key(c.name): c for c in classes}
        self._phrases = dict(self._by_key)
        for c in classes:
            for s in c.synonyms:
                self._phrases[_key(s)] = c

    @classmethod
    def _of(cls, classes: list[ClassInfo], source: str) -> ClassTable:
        t = cls.__new__(cls)
        t._set(classes, source)
        return t

    # ---------------------------------------------------------------- constructors
    @classmethod
    def load(cls, path: str | Path) -> ClassTable:
        """Read a ``.xlsx`` (sheet "classes", else the first) or ``.csv``/``.tsv`` class table."""
        p = Path(path)
        if not p.exists():
            raise ClassTableError(f"{p}: class table not found; check the path")
        if p.is_dir():
            raise ClassTableError(
                f"{p}: is a folder; give the .csv or .xlsx file of the class table"
            )
        suffix = p.suffix.lower()
        if suffix in _XLSX_SUFFIXES:
            sheet, rows = _read_xlsx_rows(p)
            return cls._of(_build(rows, _Where(str(p), sheet)), str(p))
        if suffix in _TEXT_SUFFIXES:
            text_rows = _read_text_rows(p, _TEXT_SUFFIXES[suffix])
            return cls._of(_build(text_rows, _Where(str(p))), str(p))
        hint = " (old Excel format: save it as .xlsx)" if suffix == ".xls" else ""
        raise ClassTableError(
            f"{p}: unsupported class table type {suffix or '(no extension)'!r}{hint}; use .xlsx or"
            " .csv"
        )

    @classmethod
    def from_records(
        cls, records: Iterable[Mapping[str, Any] | ClassInfo], source: str = "<records>"
    ) -> ClassTable:
        """A table from dicts keyed like the columns (aliases allowed); errors name the record.

        Values may be typed: ``id`` an int, ``color`` an ``(r, g, b)`` tuple, ``synonyms`` a list.
        """
        return cls._of(_records_to_classes(records, source), source)

    @classmethod
    def from_names(cls, names: Iterable[str], source: str = "<names>") -> ClassTable:
        """Ids 0, 1, ... in the given order and palette colours: the quick table for a prompt."""
        if isinstance(names, str):  # a lone string would become one class per letter
            names = [names]
        return cls.from_records([{"name": n} for n in names], source=source)

    # ---------------------------------------------------------------- container protocol
    def __len__(self) -> int:
        return len(self._classes)

    def __iter__(self) -> Iterator[ClassInfo]:
        return iter(self._classes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClassTable):
            return NotImplemented
        return self._classes == other._classes

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ClassTable({self.source!r}, {len(self)} classes: {_list_names(self.names, 8)})"

    def _find(self, key: str | int) -> ClassInfo | None:
        if isinstance(key, ClassInfo):
            key = key.name
        if isinstance(key, bool):
            return None
        if isinstance(key, int):
            return self._by_id.get(key)
        if isinstance(key, str):
            return self._by_key.get(_key(key))
        return None

    def __getitem__(self, key: str | int) -> ClassInfo:
        """A class by name (case-insensitive) or by id."""
        c = self._find(key)
        if c is None:
            if isinstance(key, int) and not isinstance(key, bool):
                ids = sorted(self._by_id)
                raise UnknownClassError(
                    f"{self.source}: no class has id {key} (ids {ids[0]}..{ids[-1]}); use one of"
                    " the ids of the table"
                )
            close = _closest(str(key), self.names)
            hint = (
                f"did you mean {close!r}?" if close else f"known classes: {_list_names(self.names)}"
            )
            raise UnknownClassError(f"{self.source}: no class named {key!r}; {hint}")
        return c

    def __contains__(self, key: object) -> bool:
        return self._find(key) is not None  # type: ignore[arg-type]

    def get(self, key: str | int, default: ClassInfo | None = None) -> ClassInfo | None:
        c = self._find(key)
        return default if c is None else c

    @property
    def names(self) -> list[str]:
        """Class names in id order."""
        return [c.name for c in self._classes]

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self._classes]

    def labels(self) -> list[Label]:
        """Labels for :meth:`AnnotationStore.set_labels` and CVAT task creation, in id order."""
        return [c.label() for c in self._classes]

    # ---------------------------------------------------------------- hierarchy
    def superclasses(self) -> list[str]:
        """Names of the classes that some class names as its superclass, in id order."""
        used = {c.superclass for c in self._classes if c.superclass}
        return [c.name for c in self._classes if c.name in used]

    def children(self, name: str) -> list[str]:
        """Direct subclasses of ``name``, in id order."""
        parent = self[name].name
        return [c.name for c in self._classes if c.superclass == parent]

    def descendants(self, name: str) -> list[str]:
        """All classes below ``name`` (children, their children, ...), in id order."""
        below: set[str] = set()
        todo = [self[name].name]
        while todo:
            cur = todo.pop()
            for child in self.children(cur):
                if child not in below:
                    below.add(child)
                    todo.append(child)
        return [c.name for c in self._classes if c.name in below]

    def ancestors(self, name: str) -> list[str]:
        """Superclass, its superclass, ... (nearest first); empty for a top-level class."""
        out: list[str] = []
        cur = self[name]
        while cur.superclass is not None:
            cur = self[cur.superclass]
            out.append(cur.name)
        return out

    def leaves(self) -> list[str]:
        """Classes nothing names as superclass: the ones a detector should be asked for."""
        used = {c.superclass for c in self._classes if c.superclass}
        return [c.name for c in self._classes if c.name not in used]

    # ---------------------------------------------------------------- text detectors
    def resolve(self, phrase: str) -> ClassInfo | None:
        """The class a detector phrase means (name or synonym), or ``None``.

        Case, surrounding punctuation, ``-``/``_`` and extra spaces are ignored. When nothing
        matches exactly, an English plural ending is dropped ("trucks", "buses", "batteries"),
        because GroundingDINO echoes the prompt but people and other detectors write plurals.
        """
        k = _key(str(phrase).strip().strip(".,;:!?'\"()[]{}"))
        if not k:
            return None
        hit = self._phrases.get(k)
        if hit is not None:
            return hit
        for suffix, repl in (("ies", "y"), ("es", ""), ("s", "")):
            if k.endswith(suffix) and len(k) > len(suffix):
                hit = self._phrases.get(k[: -len(suffix)] + repl)
                if hit is not None:
                    return hit
        return None

    def prompt(self, names: Iterable[str] | None = None, *, synonyms: bool = False) -> str:
        """A GroundingDINO text prompt: ``"car. person. traffic light."``.

        ``names`` picks classes (default: every class, in id order; pass :meth:`leaves` to leave
        out superclasses); ``synonyms=True`` adds each class's synonyms, which :meth:`resolve`
        maps back to the class.
        """
        if isinstance(names, str):
            names = [names]
        chosen = self._classes if names is None else [self[n] for n in names]
        phrases: list[str] = []
        seen: set[str] = set()
        for c in chosen:
            for p in (c.name, *(c.synonyms if synonyms else ())):
                if "." in p:
                    raise ClassTableError(
                        f"{self.source}: {p!r} (class {c.name!r}) contains '.', which separates"
                        " classes in a GroundingDINO prompt; rename it or remove the '.'"
                    )
                p = " ".join(p.lower().split())
                if p not in seen:
                    seen.add(p)
                    phrases.append(p + ".")
        return " ".join(phrases)

    # ---------------------------------------------------------------- writers
    def to_records(self) -> list[dict[str, Any]]:
        """One dict per class, standard columns then extras; ``from_records`` reads it back."""
        return [c.to_record() for c in self._classes]

    def _columns_out(self) -> list[str]:
        cols = list(COLUMNS)
        for c in self._classes:
            for k in c.extra:
                if k not in cols:
                    cols.append(k)
        return cols

    def to_csv(self, path: str | Path) -> Path:
        """Write comma-separated UTF-8 with a BOM (so Excel shows accents); returns the path."""
        p = Path(path)
        cols = self._columns_out()
        buf = io.StringIO(newline="")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for rec in self.to_records():
            w.writerow([rec.get(c, "") for c in cols])
        try:
            p.write_text(buf.getvalue(), encoding="utf-8-sig", newline="")
        except OSError as e:
            raise InputError(f"{p}: cannot write the class table ({e.strerror or e})") from None
        return p

    def to_xlsx(self, path: str | Path, *, readme: bool = True) -> Path:
        """Write a workbook: sheet "classes" (bold header, colour swatches) and a "README" sheet."""
        from openpyxl import Workbook
        from openpyxl.styles import Alignment, Font, PatternFill

        p = Path(path)
        cols = self._columns_out()
        wb = Workbook()
        ws = wb.active
        ws.title = "classes"
        ws.append(cols)
        for cell in ws[1]:
            cell.font = Font(bold=True)
        color_col = cols.index("color") + 1
        for rec in self.to_records():
            ws.append([rec.get(c, "") if rec.get(c, "") != "" else None for c in cols])
            for cell in ws[ws.max_row]:
                if isinstance(cell.value, str) and cell.value.startswith("="):
                    cell.data_type = "s"  # text such as "=> see wiki", not a formula
            swatch = ws.cell(row=ws.max_row, column=color_col)
            # a fill in the class colour lets people see the colour they typed
            swatch.fill = PatternFill("solid", fgColor=rec["color"][1:].upper())
            r, g, b = (int(rec["color"][i : i + 2], 16) for i in (1, 3, 5))
            swatch.font = Font(
                color="FFFFFF" if 0.299 * r + 0.587 * g + 0.114 * b < 128 else "000000"
            )
        ws.freeze_panes = "A2"
        widths = {
            "name": 18,
            "id": 6,
            "color": 10,
            "superclass": 14,
            "synonyms": 36,
            "type": 10,
            "description": 60,
        }
        for i, c in enumerate(cols, 1):
            ws.column_dimensions[ws.cell(row=1, column=i).column_letter].width = widths.get(c, 16)
        if readme:
            rs = wb.create_sheet("README")
            rs.append(["column", "required", "what to write"])
            for cell in rs[1]:
                cell.font = Font(bold=True)
            for row in _README_ROWS:
                rs.append(list(row))
            rs.column_dimensions["A"].width = 14
            rs.column_dimensions["B"].width = 10
            rs.column_dimensions["C"].width = 110
            for row in rs.iter_rows(min_row=2):
                row[2].alignment = Alignment(wrap_text=True, vertical="top")
        try:
            wb.save(p)
        except OSError as e:
            raise InputError(f"{p}: cannot write the class table ({e.strerror or e})") from None
        return p


def _records_to_classes(
    records: Iterable[Mapping[str, Any] | ClassInfo], source: str
) -> list[ClassInfo]:
    """Records as a header row plus value rows, so they go through the same checks as a file.

    Keys are mapped to standard columns per record, so records may spell them differently
    ("class" in one, "name" in the next).
    """
    where = _Where(source, unit="record")
    rows: list[tuple[int, dict[str, Any]]] = []
    header: list[str] = []
    for i, r in enumerate(records, 1):
        if isinstance(r, ClassInfo):
            r = r.to_record()
        if not isinstance(r, Mapping):
            raise ClassTableError(
                f"{source}, record {i}: {type(r).__name__} {r!r} is not a dict of column -> value"
            )
        cols = _columns(list(r), where, i, require_name=False)
        keys = list(r)
        rec = {c: r[keys[j]] for c, j in cols.items()}
        rows.append((i, rec))
        for k in rec:
            if k not in header:
                header.append(k)
    if not rows:
        raise ClassTableError(f"{source}: no classes given; pass at least one class")
    table = [(0, header)] + [(i, [r.get(h) for h in header]) for i, r in rows]
    return _build(table, where, records=True)


_README_ROWS: tuple[tuple[str, str, str], ...] = (
    (
        "name",
        "yes",
        "Class name as annotators and CVAT show it, e.g. 'traffic light'. Unique "
        "(case-insensitive). Also accepted as header: class, label, category.",
    ),
    (
        "id",
        "no",
        "Whole number >= 0, unique. Empty ids get numbers after the largest id in the "
        "table, in row order. It is the label id (COCO: category id).",
    ),
    (
        "color",
        "no",
        "'#rrggbb', 'rrggbb', '#rgb' or 'r,g,b' (0..255). Empty colours are filled "
        "from a palette that avoids the colours already given. Header 'colour' also works.",
    ),
    (
        "superclass",
        "no",
        "Name of another class in this table (it needs its own row), e.g. 'vehicle' "
        "for car (COCO: supercategory). No cycles, not the class itself. Also accepted as "
        "header: parent, supercategory.",
    ),
    (
        "synonyms",
        "no",
        "Other phrases a text detector may output for this class, separated by ';' or '|', "
        "e.g. 'automobile; sedan'. A phrase may belong to one class only. Also: alias, prompt.",
    ),
    ("type", "no", "CVAT label type: " + ", ".join(LABEL_TYPES) + ". Empty means any."),
    ("description", "no", "Free text for annotators (what belongs in the class, edge cases)."),
    ("(other)", "no", "Any other column is kept as extra information per class and written back."),
    (
        "",
        "",
        "Rows that are empty or whose first cell starts with '#' are ignored. The sheet named "
        "'classes' is read (or the first sheet if there is none).",
    ),
)

_TEMPLATE_RECORDS: tuple[dict[str, Any], ...] = (
    {
        "name": "vehicle",
        "id": 0,
        "color": "#7f7f7f",
        "description": "Superclass of car, truck, bus, motorcycle and bicycle; also for vehicles "
        "that fit none of them (tractor, tram).",
    },
    {
        "name": "car",
        "id": 1,
        "color": "#e6194b",
        "superclass": "vehicle",
        "synonyms": "automobile; sedan; hatchback; suv",
    },
    {
        "name": "truck",
        "id": 2,
        "color": "#f58231",
        "superclass": "vehicle",
        "synonyms": "lorry; pickup truck",
    },
    {
        "name": "bus",
        "id": 3,
        "color": "#ffe119",
        "superclass": "vehicle",
        "synonyms": "coach; minibus",
    },
    {
        "name": "motorcycle",
        "id": 4,
        "color": "#911eb4",
        "superclass": "vehicle",
        "synonyms": "motorbike; scooter",
    },
    {"name": "bicycle", "id": 5, "color": "#42d4f4", "superclass": "vehicle", "synonyms": "bike"},
    {
        "name": "person",
        "id": 6,
        "color": "#3cb44b",
        "synonyms": "pedestrian; cyclist; man; woman; child",
        "type": "mask",
    },
    {
        "name": "traffic light",
        "id": 7,
        "color": "#4363d8",
        "synonyms": "traffic signal",
        "type": "rectangle",
    },
    {"name": "stop sign", "id": 8, "color": "#f032e6", "type": "rectangle"},
)


def template_table() -> ClassTable:
    """The example table the shipped templates hold."""
    return ClassTable.from_records(_TEMPLATE_RECORDS, source="<template>")


def template_path(kind: str = "xlsx") -> Path:
    """Path of the template shipped with the package (``kind`` = ``"xlsx"`` or ``"csv"``)."""
    k = kind.lower().lstrip(".")
    if k not in _TEMPLATE_FILES:
        raise InputError(f"template kind {kind!r} is not 'xlsx' or 'csv'")
    # dl_utils is installed as plain files (not zip-safe), so the resource is a real path
    return Path(str(files("dl_utils").joinpath("templates", _TEMPLATE_FILES[k])))


def write_template(path: str | Path) -> Path:
    """Write the example class table as ``.csv`` or ``.xlsx`` (by extension) to start a new one."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return template_table().to_csv(p)
    if suffix == ".xlsx":
        return template_table().to_xlsx(p)
    raise InputError(f"{p}: write the template as .xlsx or .csv (got {suffix or 'no extension'!r})")


__all__ = [
    "COLUMNS",
    "LABEL_TYPES",
    "ClassInfo",
    "ClassTable",
    "UnknownClassError",
    "template_path",
    "template_table",
    "write_template",
]
