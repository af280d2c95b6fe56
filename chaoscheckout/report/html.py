"""Render the experiment log as one self-contained HTML page with inline SVG charts.

Every text from a journal is escaped; the team's FINDINGS.md goes through markdown-it-py
with raw HTML off (:mod:`findings`).
"""

from __future__ import annotations

from html import escape

from chaoscheckout.report import blocks as kinds
from chaoscheckout.report.document import GENERATED_COMMENT, Document
from chaoscheckout.report.findings import render_findings
from chaoscheckout.report.svg import sli_chart

__all__ = ["render_html", "GENERATED_MARK"]

GENERATED_MARK = GENERATED_COMMENT

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
.inconclusive{background:#f3eefc;color:#4b2a7a;border:1px solid #b9a3e3}
.warnings{background:#fff4e5;border-left:4px solid #d9822b;padding:4px 16px;margin:8px 0}
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
    return ("<!DOCTYPE html>\n" + GENERATED_MARK + "\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(doc.title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _cell(text: str) -> str:
    return f'<td class="NO">{escape(text)}</td>' if text.startswith("NO") else f"<td>{escape(text)}</td>"


def _link(run_id: str) -> str:
    return f'<td><a href="#{escape(run_id)}">{escape(run_id)}</a></td>'


def _table(headers: tuple[str, ...] | list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _block(block: kinds.Block, anchors: dict[str, str]) -> str:
    match block:
        case kinds.Heading(text=text, level=level, anchor=anchor):
            ident = f' id="{escape(anchor)}"' if anchor else ""
            return f"<h{level}{ident}>{escape(text)}</h{level}>"
        case kinds.Paragraph(text=text):
            return f"<p>{escape(text)}</p>"
        case kinds.Findings(text=text):
            return f'<div class="findings">{render_findings(text, anchors)}</div>'
        case kinds.KeyValues(rows=rows):
            return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows) + "</dl>"
        case kinds.Verdict(verdict=verdict, reason=reason):
            return (f'<div class="verdict {escape(verdict)}">Verdict: {escape(verdict.upper())} '
                    f'<span class="why">— {escape(reason)}</span></div>')
        case kinds.Warnings(title=title, items=items):
            return (f'<div class="warnings"><strong>⚠ {escape(title)}</strong> (chaos report --verify)<ul>'
                    + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul></div>")
        case kinds.Table(headers=headers, rows=rows):
            return _table(headers, ["<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows])
        case kinds.RunsAtAGlance(rows=rows, headers=headers):
            return _table(headers, [f'<tr class="glance {escape(r.verdict)}">{_link(r.run_id)}'
                                    f"{_cell(r.title)}{_cell(r.verdict)}{_cell(r.why)}</tr>" for r in rows])
        case kinds.SummaryTable(rows=rows, headers=headers):
            return _table(headers, [f'<tr class="{escape(r.verdict)}">{_cell(r.title)}{_link(r.run_id)}'
                                    + "".join(_cell(c) for c in r.cells()[2:]) + "</tr>" for r in rows])
        case kinds.Chart(run=run):
            return f"<figure>{sli_chart(run)}</figure>"
    return ""
