"""Render the experiment log as one self-contained HTML page with inline SVG charts."""

from __future__ import annotations

from html import escape

from chaoscheckout.report.document import Block, Document
from chaoscheckout.report.mdlite import render_findings
from chaoscheckout.report.svg import sli_chart

__all__ = ["render_html"]

STYLE = """
body{font-family:Helvetica,Arial,sans-serif;max-width:960px;margin:24px auto;padding:0 16px;color:#1d1d1f;
line-height:1.45}
h1{font-size:26px;border-bottom:2px solid #333;padding-bottom:6px}
h2{font-size:20px;margin-top:40px;border-top:1px solid #ccc;padding-top:18px}
h3{font-size:15px;margin:18px 0 6px;color:#333}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{border:1px solid #d0d4d9;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f1f3f5}
td.NO{color:#b3001b;font-weight:bold}
dl{display:grid;grid-template-columns:minmax(170px,max-content) 1fr;gap:3px 12px;margin:6px 0;font-size:14px}
dt{font-weight:bold;color:#444}dd{margin:0}
.verdict{display:inline-block;padding:6px 12px;border-radius:4px;font-weight:bold;margin:10px 0}
.verdict .why{font-weight:normal}
.held{background:#e3f5e6;color:#14602a;border:1px solid #8fd19e}
.broke{background:#fde8e8;color:#8a1c1c;border:1px solid #f1a1a1}
.aborted{background:#fff0d9;color:#7a4b00;border:1px solid #f3c27a}
.failed{background:#eceff3;color:#3b4552;border:1px solid #b8c0cc}
tr.held td:nth-child(4){color:#14602a;font-weight:bold}
tr.broke td:nth-child(4){color:#8a1c1c;font-weight:bold}
tr.aborted td:nth-child(4){color:#7a4b00;font-weight:bold}
figure{margin:12px 0}svg.sli-chart{width:100%;height:auto;border:1px solid #e1e4e8}
.meta{color:#555;font-size:13px}
tr.glance.held td:nth-child(3){color:#14602a;font-weight:bold}
tr.glance.broke td:nth-child(3){color:#8a1c1c;font-weight:bold}
tr.glance.aborted td:nth-child(3){color:#7a4b00;font-weight:bold}
tr.glance td:nth-child(4){color:#1d1d1f;font-weight:normal}
.findings{background:#f7f9fc;border-left:4px solid #1f5fa8;padding:4px 16px;margin:8px 0}
.findings h3,.findings h4{margin-top:12px}
code{background:#eef1f4;padding:0 3px;border-radius:3px;font-size:90%}
"""


def render_html(doc: Document) -> str:
    anchors = doc.anchors()
    body = [_block(b, anchors) for b in doc.blocks]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(doc.title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _cell(text: str) -> str:
    return f'<td class="NO">{escape(text)}</td>' if text == "NO" else f"<td>{escape(text)}</td>"


def _block(block: Block, anchors: dict[str, str]) -> str:
    if block.kind == "h":
        anchor = f' id="{escape(block.anchor)}"' if block.anchor else ""
        return f"<h{block.level}{anchor}>{escape(block.text)}</h{block.level}>"
    if block.kind == "p":
        return f"<p>{escape(block.text)}</p>"
    if block.kind == "findings":
        return f'<div class="findings">{render_findings(block.text, anchors)}</div>'
    if block.kind == "kv":
        items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in block.rows)
        return f"<dl>{items}</dl>"
    if block.kind == "verdict":
        verdict = escape(block.anchor)
        return (f'<div class="verdict {verdict}">Verdict: {verdict.upper()} '
                f'<span class="why">— {escape(block.text)}</span></div>')
    if block.kind == "table":
        head = "".join(f"<th>{escape(h)}</th>" for h in block.headers)
        rows = []
        for row in block.rows:
            summary = block.headers[:1] == ["experiment"] and len(row) > 3
            cls = f' class="{escape(row[3])}"' if summary else ""
            cells = "".join(_cell(c) for c in row)
            if summary:  # the run id links to its section
                link = f'<td><a href="#{escape(row[1])}">{escape(row[1])}</a></td>'
                cells = _cell(row[0]) + link + "".join(_cell(c) for c in row[2:])
            elif block.headers[:1] == ["run"] and len(row) > 2:  # runs at a glance
                cls = f' class="glance {escape(row[2])}"'
                link = f'<td><a href="#{escape(row[0])}">{escape(row[0])}</a></td>'
                cells = link + "".join(_cell(c) for c in row[1:])
            rows.append(f"<tr{cls}>{cells}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    if block.kind == "chart" and block.run is not None:
        return f"<figure>{sli_chart(block.run)}</figure>"
    return ""
