"""A self-contained HTML page: inline CSS, figures as base64 PNG data URIs, no script and no network."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from html import escape
from typing import Sequence

CSS = """
body{font:15px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2327;
     background:#f4f5f7;margin:0}
main{max-width:960px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh;
     box-shadow:0 0 0 1px #e3e5e8}
h1{font-size:24px;margin:4px 0 2px}
h2{font-size:18px;margin:32px 0 8px;padding-bottom:4px;border-bottom:1px solid #e3e5e8}
.sub{color:#5f6b76;margin:0 0 16px}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:8px 16px;margin:12px 0;
       padding:12px 14px;background:#f7f8fa;border-radius:6px}
.facts div{font-size:13px;color:#5f6b76}.facts b{display:block;font-size:15px;color:#1d2327;font-weight:600}
.score{font-size:28px;font-weight:700}
.good{color:#2e7d32}.bad{color:#c62828}
table{border-collapse:collapse;width:100%;font-size:13.5px;margin:8px 0}
th,td{padding:5px 9px;text-align:right;border-bottom:1px solid #eceef1;white-space:nowrap}
th{background:#f7f8fa;font-weight:600;color:#3c4650}
th:first-child,td:first-child,td.text,th.text{text-align:left}
td.neg{background:#fdecea;color:#b71c1c;font-weight:600}
td.pos{color:#2e7d32}
tr.front td:first-child{font-weight:600}
.callout{border-left:4px solid #c62828;background:#fdecea;padding:8px 12px;margin:12px 0;border-radius:0 6px 6px 0}
.callout.ok{border-color:#2e7d32;background:#edf7ee}
figure{margin:16px 0 8px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:13px;color:#5f6b76;margin-top:4px}
.note{font-size:13px;color:#5f6b76}
code{background:#f1f2f4;padding:1px 4px;border-radius:3px;font-size:12.5px}
footer{margin-top:36px;font-size:12px;color:#8a949e}
"""


@dataclass
class Block:
    """A piece of the page body: already-safe HTML."""

    html: str


def text(s: str, tag: str = "p", cls: str | None = None) -> Block:
    attr = f' class="{escape(cls)}"' if cls else ""
    return Block(f"<{tag}{attr}>{escape(s)}</{tag}>")


def heading(s: str) -> Block:
    return text(s, "h2")


def facts(items: Sequence[tuple[str, str]]) -> Block:
    """A grid of label / value pairs (what was trained)."""
    cells = "".join(f"<div>{escape(k)}<b>{escape(v)}</b></div>" for k, v in items)
    return Block(f'<div class="facts">{cells}</div>')


def callout(s: str, ok: bool = False) -> Block:
    return Block(f'<div class="callout{" ok" if ok else ""}">{escape(s)}</div>')


@dataclass
class Cell:
    """A table cell: its text and an optional class (neg, pos, text)."""

    value: str
    cls: str | None = None


def table(head: Sequence[str], rows: Sequence[Sequence[str | Cell]], row_classes: Sequence[str] | None = None,
          text_columns: int = 1) -> Block:
    """An HTML table; a Cell carries a class (negative transfer is `neg`); the first `text_columns` columns are
    text (left-aligned), the others numbers."""
    cells = "".join(f'<th class="text">{escape(h)}</th>' if k < text_columns else f"<th>{escape(h)}</th>"
                    for k, h in enumerate(head))
    out = ["<table><thead><tr>", cells, "</tr></thead><tbody>"]
    for k, row in enumerate(rows):
        rc = row_classes[k] if row_classes else ""
        out.append(f'<tr class="{escape(rc)}">' if rc else "<tr>")
        for c in row:
            c = c if isinstance(c, Cell) else Cell(str(c))
            out.append(f'<td class="{escape(c.cls)}">' if c.cls else "<td>")
            out.append(escape(c.value) + "</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return Block("".join(out))


def figure(png: bytes, caption: str, alt: str) -> Block:
    """An embedded PNG (data URI) with a one-line caption saying how to read it."""
    data = base64.b64encode(png).decode("ascii")
    return Block(f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{data}">'
                 f"<figcaption>{escape(caption)}</figcaption></figure>")


def page(title: str, subtitle: str, blocks: Sequence[Block], footer: str = "") -> str:
    """The whole document."""
    body = "\n".join(b.html for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body><main><h1>{escape(title)}</h1><p class=\"sub\">{escape(subtitle)}</p>\n{body}\n"
            f"<footer>{escape(footer)}</footer></main></body></html>\n")
