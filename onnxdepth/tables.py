"""Tables as data, rendered to HTML or Markdown: one renderer for the report and `bench --html`."""

from __future__ import annotations

import html
from dataclasses import dataclass

__all__ = ["Table", "bench_table", "html_table", "markdown_table", "md_escape", "ms"]


@dataclass
class Table:
    """Column names, rows of cell strings, an optional caption, table class and per-cell classes."""

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    css: str = ""  # table class
    cell_classes: list[list[str]] | None = None  # same shape as rows


def ms(value) -> str:
    """Milliseconds (and MB): two decimals, three below 1 so that tiny models do not all read 0.00."""
    if value is None:
        return ""
    return f"{float(value):.3f}" if abs(float(value)) < 1 else f"{float(value):.2f}"


def bench_table(rows: list[dict], caption: str = "") -> Table:
    """The latency table of `onnxdepth bench` rows (``BenchRow.to_json()`` dicts, as `bench --json` prints)."""
    return Table(["model", "params", "file MB", "batches", "median ms / batch", "p90 ms / batch", "total ms",
                  "vs first", "session RSS MB", "run RSS MB"],
                 [[r["model"], f"{int(r.get('params', 0)):,}", f"{r.get('file_mb', 0):.2f}", str(r.get("batches", 1)),
                   ms(r["median_ms"]), ms(r.get("p90_ms")), ms(r.get("total_ms")),
                   f"{r['vs_first']:.3f}" if r.get("vs_first") is not None else "",
                   f"{r.get('session_rss_mb', 0):.0f}", f"{r.get('run_rss_mb', 0):.0f}"] for r in rows], caption)


def html_table(table: Table) -> str:
    """TABLE as an HTML <table> (cells escaped) in a horizontally scrolling <div>."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for r, row in enumerate(table.rows):
        cells = []
        for c, value in enumerate(row):
            css = table.cell_classes[r][c] if table.cell_classes else ""
            cells.append(f"<td class=\"{css}\">{html.escape(value)}</td>" if css else f"<td>{html.escape(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    css = f" class=\"{table.css}\"" if table.css else ""
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    return f"<div class=\"scroll\"><table{css}>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}" \
           "</tbody></table></div>"


def md_escape(text: str) -> str:
    """TEXT safe in a Markdown table cell: pipes escaped, newlines as spaces."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    """TABLE as a Markdown pipe table (its caption in italics above); grid cells marked pruned in bold."""
    lines = [f"*{md_escape(table.caption)}*", ""] if table.caption else []
    lines.append("| " + " | ".join(md_escape(c) for c in table.columns) + " |")
    lines.append("| " + " | ".join("---" if k == 0 else "---:" for k in range(len(table.columns))) + " |")
    for r, row in enumerate(table.rows):
        cells = list(row)
        if table.cell_classes:  # the grid: mark pruned cells so they read without colour
            cells = [f"**{v or 'x'}**" if "pruned" in table.cell_classes[r][c] else (v or "·")
                     for c, v in enumerate(row)]
        lines.append("| " + " | ".join(md_escape(c) for c in cells) + " |")
    return "\n".join(lines)
