"""One self-contained HTML file per run: sections of text, tables and plotly figures.

plotly.js is inlined once at the top of the file, so the report opens with no network.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from unweave.artifacts import write_text

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222;
       overflow-wrap: break-word; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
.table-wrap { overflow-x: auto; max-width: 100%; margin: 1em 0; }
table { border-collapse: separate; border-spacing: 0; border-top: 1px solid #ccc; }
td, th { border: solid #ccc; border-width: 0 1px 1px 0; padding: 4px 10px; text-align: right; vertical-align: top; }
td:first-child, th:first-child { border-left-width: 1px; }
td { white-space: nowrap; } td.num { font-variant-numeric: tabular-nums; }
td.long { white-space: normal; min-width: 12em; max-width: 28em; overflow-wrap: anywhere; text-align: left; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
td:first-child, th:first-child { position: sticky; left: 0; }  /* stays in sight when a table scrolls */
td:first-child { background: #fff; }
.summary { background: #f6f8fa; border-left: 4px solid #4a7; padding: 0.5em 1em; }
.headline { display: flex; flex-wrap: wrap; gap: 0.5em 2em; margin: 1em 0; }
.headline div { display: flex; flex-direction: column; }
.headline .value { font-size: 1.6em; font-weight: 600; white-space: nowrap; }
.headline .label { color: #555; font-size: 0.9em; }
"""

# a table with more columns than this and at most TRANSPOSE_ROWS rows is shown transposed
TRANSPOSE_COLUMNS = 8
TRANSPOSE_ROWS = 6
# a text cell longer than this wraps anywhere (within a bounded width) instead of widening its table
LONG_TEXT = 40


# click a header of a sortable table: sort by that column (numbers as numbers), again to reverse
_SORT = """
document.addEventListener("click", (e) => {
  const th = e.target.closest("table.sortable thead th");
  if (!th) return;
  const table = th.closest("table"), col = th.cellIndex, body = table.tBodies[0];
  const dir = th.dataset.dir === "asc" ? -1 : 1;
  th.dataset.dir = dir === 1 ? "asc" : "desc";
  const key = (tr) => tr.cells[col].textContent.trim();
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
    return dir * (isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny);
  });
  rows.forEach((tr) => body.appendChild(tr));
});
"""


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _td(value: object, inner: str) -> str:
    """A data cell: numbers and short text never wrap; long text wraps anywhere, within a
    bounded width, so that it does not widen its table."""
    if _is_number(value):
        return f'<td class="num">{inner}</td>'
    if len(str(value)) > LONG_TEXT:
        return f'<td class="long">{inner}</td>'
    return f"<td>{inner}</td>"


class Section:
    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def text(self, paragraph: str, summary: bool = False) -> Section:
        cls = ' class="summary"' if summary else ""
        self.parts.append(f"<p{cls}>{html.escape(paragraph)}</p>")
        return self

    def table(
        self,
        rows: list[dict],
        links: dict[str, str] | None = None,
        sortable: bool = False,
        transpose: bool | None = None,
    ) -> Section:
        """Rows of a table (keys are the headers). `links` maps a column to the key holding
        each row's address (not shown); `sortable` sorts by a column when its header is clicked.

        The table sits in a box that scrolls sideways when the table is wider than the page,
        so the page itself never does. `transpose` shows one row per column and one column
        per row, the first column's values as the header row; None (the default) transposes a
        wide table with few rows (more than TRANSPOSE_COLUMNS columns, at most TRANSPOSE_ROWS
        rows) unless it is sortable."""
        if not rows:
            return self
        links = links or {}
        hidden = set(links.values())
        headers = [h for h in rows[0] if h not in hidden]
        if transpose is None:
            transpose = not sortable and len(headers) > TRANSPOSE_COLUMNS and len(rows) <= TRANSPOSE_ROWS
        if transpose and sortable:
            raise ValueError("a transposed table cannot be sortable")

        def cell(row: dict, h: str) -> str:
            text = _cell(row.get(h, ""))
            if h in links and row.get(links[h]):
                return f'<a href="{html.escape(str(row[links[h]]))}">{text}</a>'
            return text

        if transpose:
            first, rest = headers[0], headers[1:]
            head = f'<th scope="col">{html.escape(str(first))}</th>' + "".join(
                f'<th scope="col">{cell(r, first)}</th>' for r in rows
            )
            body = "".join(
                f'<tr><th scope="row">{html.escape(str(h))}</th>'
                + "".join(_td(r.get(h, ""), cell(r, h)) for r in rows)
                + "</tr>"
                for h in rest
            )
            table = f'<table class="transposed"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        else:
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
            body = "".join("<tr>" + "".join(_td(r.get(h, ""), cell(r, h)) for h in headers) + "</tr>" for r in rows)
            cls = ' class="sortable"' if sortable else ""
            table = f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        self.parts.append(f'<div class="table-wrap">{table}</div>')
        return self

    def headline(self, figures: dict[str, object]) -> Section:
        """The key figures of a run, large, side by side (name -> value), for the summary."""
        if figures:
            items = "".join(
                f'<div><span class="value">{_cell(v)}</span><span class="label">{html.escape(str(k))}</span></div>'
                for k, v in figures.items()
            )
            self.parts.append(f'<div class="headline">{items}</div>')
        return self

    def figure(self, fig: go.Figure) -> Section:
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
        return self

    def html(self) -> str:
        return f"<section><h2>{html.escape(self.title)}</h2>\n" + "\n".join(self.parts) + "</section>"


class Report:
    """Sections in the order they are added, except the summary, which always comes first."""

    def __init__(self, title: str):
        self.title = title
        self.sections: list[Section] = []
        self._summary: Section | None = None

    def section(self, title: str) -> Section:
        self.sections.append(Section(title))
        return self.sections[-1]

    def summary(self, title: str = "Summary") -> Section:
        """The section shown first, whenever it is filled in (the headline figures)."""
        if self._summary is None:
            self._summary = Section(title)
        return self._summary

    def html(self) -> str:
        ordered = ([self._summary] if self._summary is not None else []) + self.sections
        body = "\n".join(s.html() for s in ordered)
        return (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
            f'<style>{_STYLE}</style><script type="text/javascript">{get_plotlyjs()}</script>'
            f"<script>{_SORT}</script></head>"
            f"<body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>"
        )

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, self.html())
        return path


def overlaid_histograms(
    groups: dict[str, np.ndarray], title: str, xaxis_title: str, yaxis_title: str, nbins: int, height: int
) -> go.Figure:
    """One probability histogram per group on shared axes, overlaid (detector scores of normal
    vs anomalous inputs, per-example KL of each hypothesis)."""
    fig = go.Figure()
    for name, values in groups.items():
        fig.add_histogram(x=values, name=name, opacity=0.6, histnorm="probability", nbinsx=nbins)
    fig.update_layout(barmode="overlay", title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title, height=height)
    return fig
