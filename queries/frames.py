"""Results as data frames, the way DuckDB's own relations hand them out: ``.arrow()`` (a pyarrow Table),
``.df()`` (pandas), ``.pl()`` (polars), and ``_repr_html_`` so a notebook shows a table.

``Rows`` is the list every list-answering ``Lens`` method returns (a plain ``list`` of pydantic rows, plus
those methods); ``TokenHits`` adds how the token resolved per model. pyarrow, pandas and polars are imported
inside the methods that need them (pandas and polars are the optional extra ``lensdb[frames]``), so the read
path costs what it cost before.
"""

import html
from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

R = TypeVar("R", bound=BaseModel)
HTML_ROWS = 50  # rows a notebook shows; .df() has them all


def _need(module: str, extra: str = "frames") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        from schema.errors import LensdbError

        raise LensdbError(f"{module} is not installed; install it (pip install {module}, or lensdb[{extra}]).") \
            from None


def table_arrow(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Any:
    """A pyarrow Table from column names and row tuples (names may repeat, as SQL allows)."""
    pa = _need("pyarrow")
    data = list(rows)
    arrays = [pa.array([r[i] for r in data]) for i in range(len(columns))]
    return pa.Table.from_arrays(arrays, names=list(columns))


def table_html(columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> str:
    """A small HTML table (escaped; at most ``HTML_ROWS`` rows, with a note of how many more)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r) + "</tr>"
                   for r in rows[:HTML_ROWS])
    more = f"<p>… {len(rows) - HTML_ROWS} more rows (.df() has them all)</p>" if len(rows) > HTML_ROWS else ""
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(_cell(x.get("token", x) if isinstance(x, dict) else x) for x in v[:8]) + \
            (" …" if len(v) > 8 else "")
    return "" if v is None else str(v)


class Frames:
    """``arrow``/``df``/``pl`` for anything that can name its columns and rows (``_columns``, ``_records``)."""

    def _columns(self) -> list[str]:
        raise NotImplementedError

    def _records(self) -> list[Sequence[Any]]:
        raise NotImplementedError

    def arrow(self) -> Any:
        """A pyarrow Table: one column per field; nested rows (a vector's tokens) as lists of structs."""
        return table_arrow(self._columns(), self._records())

    def df(self) -> Any:
        """A pandas DataFrame (nullable integer columns with a null become floats, as in DuckDB's ``.df()``)."""
        _need("pandas")
        return self.arrow().to_pandas()

    def pl(self) -> Any:
        """A polars DataFrame."""
        return _need("polars").from_arrow(self.arrow())

    def _repr_html_(self) -> str:
        return table_html(self._columns(), self._records())


class Rows(list, Frames, Generic[R]):  # type: ignore[type-arg]
    """A list of result rows (pydantic models of one kind) that also converts to data frames."""

    def __init__(self, items: Iterable[R] = (), kind: type[R] | None = None) -> None:
        super().__init__(items)
        self.kind = kind or (type(self[0]) if self else None)

    def _columns(self) -> list[str]:
        return list(self.kind.model_fields) if self.kind is not None else []

    def _records(self) -> list[Sequence[Any]]:
        cols = self._columns()
        return [[getattr(r, c) if not isinstance(getattr(r, c), list) else
                 [x.model_dump() if isinstance(x, BaseModel) else x for x in getattr(r, c)] for c in cols]
                for r in self]


class TokenHits(Rows[R]):
    """Search hits with how the token resolved: ``matches`` (per model, the tokens and the form that matched) and
    ``missing`` (models searched whose vocabulary has no such token: "no token for 'paris' in: run")."""

    def __init__(self, items: Iterable[R] = (), kind: type[R] | None = None, matches: list | None = None,
                 missing: list[str] | None = None, token: str | int | None = None) -> None:
        super().__init__(items, kind)
        self.matches = matches or []
        self.missing = missing or []
        self.token = token

    def note(self) -> str:
        """One line naming the models left out, or empty."""
        return f"no token for {self.token!r} in: {', '.join(self.missing)}" if self.missing else ""

    def _repr_html_(self) -> str:
        note = self.note()
        return (f"<p>{html.escape(note)}</p>" if note else "") + super()._repr_html_()


def with_frames(cls: type) -> type:
    """Class decorator: every public method of ``cls`` annotated to return ``list[Row]`` returns a ``Rows`` of
    that row kind (so ``lens.models().df()`` works), on ``Lens`` and on every implementation of it."""
    import functools
    import typing

    for name, fn in list(vars(cls).items()):
        if name.startswith("_") or not callable(fn):
            continue
        returns = getattr(fn, "__annotations__", {}).get("return")  # quoted (lazily imported) kinds are not lists
        args = typing.get_args(returns)
        if typing.get_origin(returns) is not list or len(args) != 1 or not isinstance(args[0], type) \
                or not issubclass(args[0], BaseModel):
            continue

        def wrapped(*a: Any, __fn: Any = fn, __kind: type = args[0], **k: Any) -> Any:
            return Rows(__fn(*a, **k), __kind)

        setattr(cls, name, functools.wraps(fn)(wrapped))
    return cls
