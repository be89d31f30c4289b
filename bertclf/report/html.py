"""A self-contained HTML page: inline CSS, figures as files beside it, no network, no script from elsewhere.

The one inline script marks each figure that failed to load, for the reader (a visible note) and for tests
(`data-figures-loaded` / `data-figures-broken` on <body>).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0.5rem; vertical-align: top; } figcaption { font-size: 0.85rem; color: #555; }
img { max-width: 100%; border: 1px solid #eee; } .muted { color: #666; } pre { background: #f7f7f7; padding: 0.6rem;
overflow-x: auto; font-size: 0.8rem; } .broken { color: #b00; font-weight: bold; } .alert { color: #b00; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images), broken = 0;
  imgs.forEach(function (img) {
    if (!(img.complete && img.naturalWidth > 0)) {
      broken += 1;
      var note = document.createElement("p");
      note.className = "broken";
      note.textContent = "figure missing: " + img.getAttribute("src");
      img.parentNode.insertBefore(note, img);
    }
  });
  document.body.setAttribute("data-figures-loaded", String(imgs.length - broken));
  document.body.setAttribute("data-figures-broken", String(broken));
});
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def number(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


class Raw(str):
    """A table cell that is already HTML (e.g. an explanation view), inserted as is."""


def table(header: Sequence[str], rows: Iterable[Sequence[object]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for v in row:
            numeric = isinstance(v, int | float) and not isinstance(v, bool) or v is None
            if isinstance(v, Raw):
                cells.append(f"<td>{v}</td>")
            else:
                cells.append(f'<td class="num">{number(v)}</td>' if numeric else f"<td>{esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def figure(src: str, caption: str) -> str:
    img = f'<img src="figures/{esc(src)}" alt="{esc(caption)}">'
    return f"<figure>{img}<figcaption>{esc(caption)}</figcaption></figure>"


def section(title: str, *parts: str, anchor: str | None = None) -> str:
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2>{''.join(parts)}</section>"


def paragraph(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def code_block(obj: object) -> str:
    return f"<pre>{esc(json.dumps(obj, indent=2, sort_keys=True, default=str))}</pre>"


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>"
            f'<h1>{esc(title)}</h1><p class="muted">{esc(subtitle)}</p>{"".join(sections)}</body></html>\n')
