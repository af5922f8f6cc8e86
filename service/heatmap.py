"""Heat maps of a similarity matrix, without plotting libraries: a PNG (zlib + struct) for files, an inline SVG
for the pages. Rows are model A's layers (top to bottom), columns model B's (left to right)."""

import struct
import zlib
from html import escape

# a short perceptual ramp (viridis stops): low = dark purple, high = yellow
_STOPS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def colour(value: float, lo: float = 0.0, hi: float = 1.0) -> tuple[int, int, int]:
    """The ramp's colour for ``value`` scaled from [lo, hi] (clamped)."""
    t = 0.0 if hi <= lo else min(1.0, max(0.0, (value - lo) / (hi - lo)))
    pos = t * (len(_STOPS) - 1)
    i = min(int(pos), len(_STOPS) - 2)
    f = pos - i
    a, b = _STOPS[i], _STOPS[i + 1]
    return (round(a[0] + (b[0] - a[0]) * f), round(a[1] + (b[1] - a[1]) * f), round(a[2] + (b[2] - a[2]) * f))


def _bounds(matrix: list[list[float]]) -> tuple[float, float]:
    values = [v for row in matrix for v in row]
    return min(values + [0.0]), max(values + [1e-9])


# A 3×5 bitmap font for the PNG's labels (digits, sign, point and the two axis letters), one string per row.
_GLYPHS = {
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"), "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"), "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "111"),
    "-": ("000", "000", "111", "000", "000"), ".": ("000", "000", "000", "000", "010"),
    "A": ("010", "101", "111", "101", "101"), "B": ("110", "101", "110", "101", "110"), " ": ("000",) * 5,
}
_DOT = 2  # pixels per font dot: glyphs 6×10 px, 8 px apart


def _text(canvas: list[bytearray], x: int, y: int, text: str, rgb: tuple[int, int, int] = (40, 40, 40)) -> None:
    """Draw ``text`` (characters of ``_GLYPHS``) with its top-left corner at (x, y)."""
    for n, ch in enumerate(text):
        for r, bits in enumerate(_GLYPHS.get(ch, _GLYPHS[" "])):
            for c, bit in enumerate(bits):
                if bit == "1":
                    for dy in range(_DOT):
                        for dx in range(_DOT):
                            px, py = x + n * 4 * _DOT + c * _DOT + dx, y + r * _DOT + dy
                            if 0 <= py < len(canvas) and 0 <= px * 3 < len(canvas[py]):
                                canvas[py][px * 3:px * 3 + 3] = bytes(rgb)


def _text_width(text: str) -> int:
    return len(text) * 4 * _DOT - _DOT


def heatmap_png(matrix: list[list[float]], marked: set[tuple[int, int]] | None = None, cell: int = 48) -> bytes:
    """An RGB PNG, ``cell`` pixels per entry, model A's layers down the left (``A``), model B's along the top
    (``B``), a colour scale with its lowest and highest values on the right; ``marked`` cells (matched pairs) get
    a white border."""
    lo, hi = _bounds(matrix)
    rows, cols = len(matrix), len(matrix[0])
    left, top, gap, bar = 44, 40, 24, 20
    labels = [f"{hi:.2f}", f"{lo:.2f}"]
    width = left + cols * cell + gap + bar + 8 + max(_text_width(t) for t in labels) + 10
    height = max(top + rows * cell + 10, top + 160)
    canvas = [bytearray(b"\xff" * (width * 3)) for _ in range(height)]
    for i in range(rows):
        for j in range(cols):
            rgb = bytes(colour(matrix[i][j], lo, hi))
            border = marked is not None and (i, j) in marked
            for y in range(cell):
                line = canvas[top + i * cell + y]
                for x in range(cell):
                    edge = border and (y in (0, 1, cell - 2, cell - 1) or x in (0, 1, cell - 2, cell - 1))
                    at = (left + j * cell + x) * 3
                    line[at:at + 3] = b"\xff\xff\xff" if edge else rgb
    _text(canvas, 6, top + (rows * cell) // 2 - 5, "A")
    _text(canvas, left + (cols * cell) // 2 - 3, 4, "B")
    for i in range(rows):
        _text(canvas, left - 6 - _text_width(str(i)), top + i * cell + cell // 2 - 5, str(i))
    for j in range(cols):
        _text(canvas, left + j * cell + cell // 2 - _text_width(str(j)) // 2, top - 16, str(j))
    bar_x, bar_h = left + cols * cell + gap, max(rows * cell, 150)
    for y in range(bar_h):
        rgb = bytes(colour(hi - (hi - lo) * y / max(bar_h - 1, 1), lo, hi))
        line = canvas[top + y]
        for x in range(bar):
            line[(bar_x + x) * 3:(bar_x + x) * 3 + 3] = rgb
    _text(canvas, bar_x + bar + 6, top, labels[0])
    _text(canvas, bar_x + bar + 6, top + bar_h - 10, labels[1])
    raw = b"".join(b"\x00" + bytes(line) for line in canvas)  # filter byte: none

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(
        b"IEND", b"")


def heatmap_svg(matrix: list[list[float]], marked: set[tuple[int, int]] | None = None, cell: int | None = None,
                title: str = "", rows_label: str = "model A layer", cols_label: str = "model B layer") -> str:
    """An inline SVG: cells large enough to read (values printed in them where they fit), layer numbers and axis
    titles on both axes, a colour scale with its range, and each cell's value in its tooltip."""
    lo, hi = _bounds(matrix)
    rows, cols = len(matrix), len(matrix[0])
    cell = cell or max(22, min(64, 448 // max(rows, cols)))
    left, top, gap, bar = 56, 48, 18, 14
    width, height = left + cols * cell + gap + bar + 56, top + max(rows * cell, 120) + 12
    grad = f"scale{abs(hash((title, rows, cols, lo, hi))) % 10**8}"
    stops = "".join(f'<stop offset="{k / (len(_STOPS) - 1):.2f}" stop-color="rgb{_STOPS[-1 - k]}"/>'
                    for k in range(len(_STOPS)))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}" class="heatmap"><defs><linearGradient id="{grad}" x1="0" y1="0" x2="0" '
             f'y2="1">{stops}</linearGradient></defs>',
             f'<text x="{left + cols * cell / 2}" y="14" font-size="12" text-anchor="middle">{escape(cols_label)} '
             '→</text>',
             f'<text x="14" y="{top + rows * cell / 2}" font-size="12" text-anchor="middle" '
             f'transform="rotate(-90 14 {top + rows * cell / 2})">{escape(rows_label)} →</text>']
    for j in range(cols):
        parts.append(f'<text x="{left + j * cell + cell / 2}" y="{top - 8}" font-size="11" '
                     f'text-anchor="middle">{j}</text>')
    for i in range(rows):
        parts.append(f'<text x="{left - 6}" y="{top + i * cell + cell / 2 + 4}" font-size="11" '
                     f'text-anchor="end">{i}</text>')
        for j in range(cols):
            r, g, b = colour(matrix[i][j], lo, hi)
            stroke = ' stroke="#fff" stroke-width="3"' if marked and (i, j) in marked else ""
            parts.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" '
                         f'fill="rgb({r},{g},{b})"{stroke}><title>A {i} · B {j}: {matrix[i][j]:.3f}</title></rect>')
            if cell >= 40:
                ink = "#000" if (r * 299 + g * 587 + b * 114) / 1000 > 140 else "#fff"
                parts.append(f'<text x="{left + j * cell + cell / 2}" y="{top + i * cell + cell / 2 + 4}" '
                             f'font-size="11" text-anchor="middle" fill="{ink}" pointer-events="none">'
                             f'{matrix[i][j]:.2f}</text>')
    bx, bh = left + cols * cell + gap, max(rows * cell, 120)
    parts.append(f'<rect x="{bx}" y="{top}" width="{bar}" height="{bh}" fill="url(#{grad})" stroke="#999"/>'
                 f'<text x="{bx + bar + 4}" y="{top + 10}" font-size="11">{hi:.3f}</text>'
                 f'<text x="{bx + bar + 4}" y="{top + bh}" font-size="11">{lo:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)
