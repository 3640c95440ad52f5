"""Tables: Markdown for the report, fixed-width text for terminals.

:func:`markdown_table` and :func:`text_table` take headers and rows of strings; every row must
have one cell per header; :func:`fig`, :func:`num` and :func:`verdict` format one cell. The
sections of BENCHMARKS.md are in :mod:`trustvlm.benchmarks.report_sections`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from trustvlm.benchmarks.stats import Figure

ALIGNMENTS = {"l": "---", "r": "---:", "c": ":---:"}


def _check_rows(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    for index, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {index} has {len(row)} cells, but there are {len(headers)} headers: {list(row)}")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub Markdown table; `align` has one of l, r, c per column (default: first left, others right).

    Raises:
        ValueError: A row with the wrong number of cells, or a bad `align`.
    """
    _check_rows(headers, rows)
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or any(a not in ALIGNMENTS for a in align):
        raise ValueError(f"align should have one of {sorted(ALIGNMENTS)} per column ({len(headers)}), "
                         f"but got {align!r}")

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(headers), "| " + " | ".join(ALIGNMENTS[a] for a in align) + " |",
                      *(line(row) for row in rows)])


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width table for a terminal (columns padded to their widest cell).

    Raises:
        ValueError: A row with the wrong number of cells.
    """
    _check_rows(headers, rows)
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in (headers, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def fig(data: dict | Figure | None, digits: int = 1) -> str:
    """``median (min-max)`` of a figure or its dict; ``n/a`` for None or NaN."""
    if data is None:
        return "n/a"
    figure = data if isinstance(data, Figure) else Figure.from_dict(data)
    return "n/a" if math.isnan(figure.median) else figure.format(digits)


def num(value, digits: int = 1, suffix: str = "") -> str:
    """A number with `digits` decimals, ``n/a`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def write_marked_section(output: Path, section: str, begin: str, end: str) -> None:
    """Put `section` (which starts with `begin` and ends with `end`) in place of the marked one of `output`, or at
    its end: the sections measured by their own commands, which ``make bench`` keeps."""
    text = output.read_text() if output.exists() else ""
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    output.write_text(text.rstrip() + "\n")


def emit_section(section: str, output: Path | None, begin: str, end: str) -> int:
    """Print a hand-run benchmark's section, and put it into `output` between its markers when given; 0."""
    if output is not None:
        write_marked_section(output, section, begin, end)
    print(section)
    return 0
