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


def heatmap_png(matrix: list[list[float]], marked: set[tuple[int, int]] | None = None, cell: int = 24) -> bytes:
    """An RGB PNG, ``cell`` pixels per entry; ``marked`` cells (matched pairs) get a white border."""
    lo, hi = _bounds(matrix)
    rows, cols = len(matrix), len(matrix[0])
    width, height = cols * cell, rows * cell
    raw = bytearray()
    for y in range(height):
        raw.append(0)  # filter: none
        i = y // cell
        for x in range(width):
            j = x // cell
            edge = (y % cell in (0, cell - 1)) or (x % cell in (0, cell - 1))
            rgb = (255, 255, 255) if marked and (i, j) in marked and edge else colour(matrix[i][j], lo, hi)
            raw.extend(rgb)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(
        b"IEND", b"")


def heatmap_svg(matrix: list[list[float]], marked: set[tuple[int, int]] | None = None, cell: int = 28,
                title: str = "") -> str:
    """An inline SVG with layer numbers on both axes and each cell's value in its tooltip."""
    lo, hi = _bounds(matrix)
    rows, cols = len(matrix), len(matrix[0])
    pad = 28
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{pad + cols * cell}" height="{pad + rows * cell}" '
             f'role="img" aria-label="{escape(title)}">']
    for j in range(cols):
        parts.append(f'<text x="{pad + j * cell + cell / 2}" y="18" font-size="11" text-anchor="middle">{j}</text>')
    for i in range(rows):
        parts.append(f'<text x="{pad - 6}" y="{pad + i * cell + cell / 2 + 4}" font-size="11" '
                     f'text-anchor="end">{i}</text>')
        for j in range(cols):
            r, g, b = colour(matrix[i][j], lo, hi)
            stroke = ' stroke="#fff" stroke-width="2"' if marked and (i, j) in marked else ""
            parts.append(f'<rect x="{pad + j * cell}" y="{pad + i * cell}" width="{cell}" height="{cell}" '
                         f'fill="rgb({r},{g},{b})"{stroke}><title>A {i} · B {j}: {matrix[i][j]:.3f}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)
