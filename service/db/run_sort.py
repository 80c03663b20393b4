"""``GET /runs`` ordering: by a column or a JSON path, the same on SQLite and PostgreSQL.

A sort key is a column (``created_at``, ``name``, ``wall_s``, …), ``metrics.<key>`` (any key the
worker records) or a setting: ``solver.<field>``, ``training.<field>``, ``model_config.<field>``,
``dataset.<field>``. Settings are checked against the config classes of the core, so a typo is an
error listing the valid forms, and each field sorts by its type: numbers numerically, text by code
point (``COLLATE "C"`` on PostgreSQL, SQLite's binary order), booleans false before true.

A JSON value that is missing, null or of another type than the key's sorts as *missing*: missing
values come last in both orders. Ties (and missing values) are broken by run id in the direction of
the sort, so the order is total and keyset pagination is exact: the cursor of a page is the sort
value and id of its last row, and the next page holds the rows strictly after it.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import Select, and_, case, func, or_
from sqlalchemy.sql.elements import ColumnElement

from service.db.models import RunRow
from service.ml.errors import UnknownNameError
from service.ml.models import MODELS
from service.ml.ode import SolverConfig
from service.ml.training import TrainConfig

__all__ = ["DEFAULT_SORT", "RunSort", "parse_sort", "sort_forms"]

Kind = Literal["number", "string", "boolean", "datetime"]

DEFAULT_SORT = "created_at"

_COLUMNS: dict[str, tuple[Any, Kind]] = {
    "created_at": (RunRow.created_at, "datetime"),
    "updated_at": (RunRow.updated_at, "datetime"),
    "started_at": (RunRow.started_at, "datetime"),
    "finished_at": (RunRow.finished_at, "datetime"),
    "name": (RunRow.name, "string"),
    "status": (RunRow.status, "string"),
    "model": (RunRow.model, "string"),
    "dataset": (RunRow.dataset_name, "string"),
    "wall_s": (RunRow.wall_s, "number"),
    "iteration": (RunRow.iteration, "number"),
    "attempt": (RunRow.attempt, "number"),
}
_METRIC_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _kind(annotation: Any) -> Kind | None:
    """The sort kind of a pydantic field annotation; None for lists, dicts and other shapes."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = {_kind(a) for a in args}
        return kinds.pop() if len(kinds) == 1 else None
    if origin is Literal:
        return "string" if all(isinstance(a, str) for a in args) else None
    if annotation is bool:
        return "boolean"
    if annotation in (int, float):
        return "number"
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return "string"
    return None


def _fields(*classes: type[BaseModel]) -> dict[str, Kind]:
    out: dict[str, Kind] = {}
    for cls in classes:
        for name, info in cls.model_fields.items():
            if (kind := _kind(info.annotation)) is not None:
                out.setdefault(name, kind)
    return dict(sorted(out.items()))


_SETTINGS: dict[str, dict[str, Kind]] = {
    "solver": _fields(SolverConfig),
    "training": _fields(TrainConfig),
    "model_config": _fields(*(cls.config_class for cls in MODELS.values())),
    "dataset": {"n_test": "number", "n_train": "number", "name": "string"},
}


def sort_forms() -> list[str]:
    """Every valid ``sort`` value (``metrics.<key>`` stands for any metric key)."""
    settings = [f"{section}.{name}" for section, names in _SETTINGS.items() for name in names]
    return [*_COLUMNS, "metrics.<key>", *settings]


@dataclass(frozen=True)
class RunSort:
    """A parsed sort key and direction; builds the ORDER BY and the keyset condition."""

    key: str
    descending: bool
    kind: Kind

    @property
    def order(self) -> str:
        return "desc" if self.descending else "asc"

    def value_of(self, dialect: str) -> ColumnElement[Any]:
        """The SQL value rows are ordered by (NULL where the row has none of this kind)."""
        section, _, name = self.key.partition(".")
        if not name:
            column = _COLUMNS[self.key][0]
            return column.collate("C") if self.kind == "string" and dialect == "postgresql" else column
        document = getattr(RunRow, section)
        if dialect == "postgresql":
            is_type = func.json_typeof(document[name])
            names = {"number": "number", "string": "string", "boolean": "boolean"}
        else:
            is_type = func.json_type(document, f'$."{name}"')
            names = {"number": ("integer", "real"), "string": "text", "boolean": ("true", "false")}
        wanted = names[self.kind]  # type: ignore[index]
        matches = is_type.in_(wanted) if isinstance(wanted, tuple) else is_type == wanted
        if self.kind == "number":
            return case((matches, document[name].as_float()))
        if self.kind == "string":
            text = document[name].as_string()
            return case((matches, text.collate("C") if dialect == "postgresql" else text))
        if dialect == "postgresql":  # ->> gives 'true' / 'false'
            return case((matches, case((document[name].as_string() == "true", 1), else_=0)))
        return case((is_type == "true", 1), (is_type == "false", 0))

    def apply(self, query: Select, dialect: str, after: tuple[Any, str] | None = None) -> Select:
        """``query`` ordered by this sort (missing values last, then id), from after ``after``."""
        value = self.value_of(dialect)
        missing = case((value.is_(None), 1), else_=0)
        direction = (lambda c: c.desc()) if self.descending else (lambda c: c.asc())
        query = query.order_by(missing.asc(), direction(value), direction(RunRow.id))
        if after is None:
            return query
        last, last_id = after
        beyond = (lambda a, b: a < b) if self.descending else (lambda a, b: a > b)
        if last is None:  # the previous page ended among the rows without a value
            return query.where(value.is_(None), beyond(RunRow.id, last_id))
        return query.where(
            or_(value.is_(None), beyond(value, last), and_(value == last, beyond(RunRow.id, last_id)))
        )

    def row_value(self, row: RunRow) -> Any:
        """This sort's value for ``row``, as the database compares it (None when missing)."""
        section, _, name = self.key.partition(".")
        if not name:
            return getattr(row, _COLUMNS[self.key][0].key)
        value = (getattr(row, section) or {}).get(name)
        if self.kind == "boolean":
            return int(value) if isinstance(value, bool) else None
        if self.kind == "string":
            return value if isinstance(value, str) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    def encode_value(self, value: Any) -> Any:
        return value.isoformat() if isinstance(value, datetime) else value

    def decode_value(self, value: Any) -> Any:
        """A cursor's value back in its SQL type; raises ValueError when it cannot be one."""
        if value is None:
            return None
        if self.kind == "datetime":
            return datetime.fromisoformat(value)
        if self.kind == "string" and isinstance(value, str):
            return value
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if self.kind in ("number", "boolean") and numeric:
            return value
        raise ValueError(f"cursor value {value!r} does not fit sort {self.key}")


def parse_sort(key: str | None, order: Literal["asc", "desc"] | None) -> RunSort:
    """The ``RunSort`` for ``?sort=key&order=order``.

    ``order`` defaults to ``desc`` for times (newest first) and ``asc`` for everything else (the
    lowest NLL first). Raises ``UnknownNameError`` (field ``sort``) listing ``sort_forms()``.
    """
    key = key or DEFAULT_SORT
    section, dot, name = key.partition(".")
    kind: Kind | None = None
    if not dot:
        kind = _COLUMNS[key][1] if key in _COLUMNS else None
    elif section == "metrics":
        kind = "number" if _METRIC_KEY.fullmatch(name) else None
    elif section in _SETTINGS:
        kind = _SETTINGS[section].get(name)
    if kind is None:
        raise UnknownNameError("sort", key, sort_forms())
    descending = order == "desc" if order is not None else kind == "datetime"
    return RunSort(key, descending, kind)
