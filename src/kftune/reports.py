"""Small HTML report building blocks: tables and embedded matplotlib figures.

Reports are single self-contained HTML files (images inlined as base64 PNG) so that the
KFP UI can show them from an ``HTML`` artifact without fetching anything else.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence

_STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.pass { color: #0a7d27; font-weight: bold; } .fail { color: #b00020; font-weight: bold; }
"""


def figure_html(fig) -> str:
    """A matplotlib figure as an inline <img>; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{encoded}"/>'


def format_float(value: float) -> str:
    """4 decimals, or 3 significant digits for small magnitudes (learning rates: 6.11e-05)."""
    return f"{value:.3g}" if value and abs(value) < 1e-3 else f"{value:.4f}"


def _cell(value) -> str:
    if isinstance(value, float):
        return format_float(value)
    return html.escape(str(value))


def table_html(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """An HTML table; floats shown with 4 decimals (small ones with 3 significant digits)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A GitHub-flavoured Markdown table; floats shown with 4 decimals."""
    def cell(v):
        return format_float(v) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def page(title: str, *sections: str) -> str:
    """A complete HTML document."""
    body = "\n".join(sections)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>"
    )


def new_figure(width: float = 7, height: float = 3.5, ncols: int = 1):
    """A matplotlib figure and its axes (``ncols`` side by side), on the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height))
