"""The building blocks of a report page: a `Page` that collects sections and embedded
figures, escaping (`esc`), value formatting (`fmt`) and tables. Every string that comes
from a run (names, config values, messages, file names) is escaped before it enters
the page; figures are embedded as base64 PNG data URIs, and the style and the sorting
script are inline, so the file opens anywhere, offline."""

from __future__ import annotations

import base64
import html
import math

from rnnscope.figures.canvas import figure_png
from rnnscope.figures.grid import param_text

# Marks a file as an rnnscope report: `rnnscope report --out` replaces only such files.
GENERATOR = '<meta name="generator" content="rnnscope report">'


class Page:
    """The body of a report, built section by section; counts the figures it embeds."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures = 0

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def heading(self, level: int, text: str, anchor: str | None = None) -> None:
        # anchors are made by the report (run-3), never from names in the data
        ident = f' id="{anchor}"' if anchor else ""
        self.add(f"<h{level}{ident}>{esc(text)}</h{level}>")

    def skip(self, what: str, needs: str) -> None:
        """The visible note of a section that lacks its data."""
        self.add(f'<p class="skip">{esc(what)} skipped: needs {esc(needs)}.</p>')

    def figure(self, what: str, needs: str, available: bool, draw) -> None:
        """Embed `draw()` (a matplotlib Figure) when its data is `available`, else a
        note naming the data; a figure that fails to draw is a note too, not a crash."""
        if not available:
            self.skip(what, needs)
            return
        try:
            png = figure_png(draw())
        except Exception as error:  # noqa: BLE001 - one figure failing is a note, not a lost report
            self.add(f'<p class="skip">{esc(what)} could not be drawn from {esc(needs)}: '
                     f'{esc(type(error).__name__)}: {esc(error)}</p>')
            return
        data = base64.b64encode(png).decode("ascii")
        self.figures += 1
        self.add(f'<figure><img alt="{esc(what)}" src="data:image/png;base64,{data}">'
                 f"<figcaption>{esc(what)}</figcaption></figure>")

    def render(self, title: str) -> str:
        body = "\n".join(self.parts)
        return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                f'{GENERATOR}\n'
                f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
                f'<body data-figures="{self.figures}">\n<h1>{esc(title)}</h1>\n{body}\n'
                f'<footer>{self.figures} figures embedded. Written by rnnscope report.'
                f"</footer>\n<script>{SORT_SCRIPT}</script>\n</body>\n</html>\n")


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 4) -> str:
    """A table value as text: '-' for missing or non-finite, yes/no for booleans."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else "-"
    if isinstance(value, (dict, list)):
        return param_text(value)
    return str(value)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table(headers: list[str], rows: list[list], *, sortable: bool = False,
          numeric: set[int] = frozenset(), cls: str = "") -> str:
    """A table whose cells are values, escaped here, or (markup, sort_value) pairs where
    markup is HTML the report built and escaped itself. Numeric columns sort by number."""
    classes = " ".join(c for c in (cls, "sortable" if sortable else "") if c)
    head = []
    for i, header in enumerate(headers):
        attributes = ' data-type="num"' if i in numeric else ""
        attributes += ' title="click to sort"' if sortable else ""
        head.append(f"<th{attributes}>{esc(header)}</th>")
    body = []
    for row in rows:
        cells = []
        for cell in row:
            markup, sort = cell if isinstance(cell, tuple) else (esc(fmt(cell)), cell)
            attribute = ""
            if is_number(sort) and math.isfinite(sort):
                attribute = f' data-sort="{float(sort)!r}"'
            cells.append(f"<td{attribute}>{markup}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<table class="{classes}"><thead><tr>{"".join(head)}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       max-width: 1150px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #d5d5d5; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
table.sortable th { cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
td[data-sort] { text-align: right; font-variant-numeric: tabular-nums; }
.wide { overflow-x: auto; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.85em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
code { background: #f3f3f3; padding: 0 0.25em; }
.skip { color: #8a5a00; background: #fff6e0; padding: 0.4em 0.7em;
        border-left: 3px solid #e0a000; }
.verdict { font-weight: 600; padding: 0 0.4em; border-radius: 3px; }
.verdict-vanishing { background: #ffe3c2; } .verdict-exploding { background: #ffc9c9; }
.verdict-healthy { background: #cdf0cd; } .verdict-nonfinite { background: #f7c6ef; }
.status { font-size: 1.05em; } .error { color: #a00000; }
footer { margin-top: 3em; color: #777; font-size: 0.85em; }
"""

# Sorts a table.sortable by the clicked column: by data-sort (numbers) where the
# column is numeric, else by text; cells without a number go last either way.
SORT_SCRIPT = """
(function () {
  function key(cell, numeric) {
    if (!numeric) { return cell.textContent.trim().toLowerCase(); }
    var value = parseFloat(cell.getAttribute("data-sort"));
    return isNaN(value) ? null : value;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (header, column) {
      header.addEventListener("click", function () {
        var numeric = header.getAttribute("data-type") === "num";
        var direction = header.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
        header.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[column], numeric), y = key(b.cells[column], numeric);
          if (x === y) { return 0; }
          if (x === null) { return 1; }
          if (y === null) { return -1; }
          return (x < y ? -1 : 1) * direction;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
})();
"""
