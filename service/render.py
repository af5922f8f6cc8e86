"""Plain-text rendering for the terminal: aligned tables, nothing clever."""

from collections.abc import Sequence


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        # quote tokens whose edges are spaces (' paris') or that hold unprintable characters
        return repr(value) if value != value.strip() or not value.isprintable() or not value else value
    return str(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns left-aligned, numbers right-aligned; leading/trailing spaces in tokens shown as quotes."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        parts = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(columns)), line(["-" * w for w in widths]), *(line(r) for r in cells)])
