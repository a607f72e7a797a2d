"""Benchmark tables as plain text and as markdown sections of docs/benchmarks.md.

Each benchmark owns one section of the file, between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->``; ``--markdown PATH`` replaces that section (appends it where absent) and
leaves the rest of the file as it is, so the three benchmarks refresh the page one by one.
"""

from __future__ import annotations

from pathlib import Path


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for i, row in enumerate([headers, *rows]):
        cells = [str(c).ljust(w) if j == 0 else str(c).rjust(w)
                 for j, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(path: str | Path, name: str, body: str) -> None:
    """Replace the ``name`` section of the markdown file at ``path`` by ``body``."""
    path = Path(path)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + block + tail
    else:
        text = text.rstrip() + ("\n\n" if text.strip() else "") + block + "\n"
    path.write_text(text)


def ratio(theirs: float | None, ours: float) -> str:
    """Their time over ours (> 1: byzsgd faster), or '-'."""
    return "-" if theirs is None or ours <= 0 else f"{theirs / ours:.1f}x"


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def section(title: str, command: str, how: str, header: list[str], about_libraries: list[str],
            load: tuple[object, object], took: str, high: bool, table: str,
            notes: list[str]) -> str:
    """A benchmark's markdown section: its title, the command and how it measured, the
    machine (``header`` lines), the other libraries (versions, or what is quoted), the load
    and run time (flagged when high), the table and notes."""
    return "\n".join([
        f"### {title}", "", f"`{command.strip()}` ({how})", "",
        *[f"- {line}" for line in [*header, *about_libraries]],
        f"- load average before / after: {load[0]} / {load[1]}; run time {took}"
        + (" -- **measured at high load**" if high else ""), "",
        table, "", *[f"- {note}" for note in notes]])
