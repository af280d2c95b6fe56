"""Render the experiment log as Markdown; SLI charts are written as SVG files next to it.

Text that comes from journals (titles, activity names, outputs, reasons) is escaped: ``<``
and ``>`` become entities, so no raw HTML from a journal reaches a Markdown viewer; table
cells also escape ``|``. The team's FINDINGS.md is included as Markdown source.
"""

from __future__ import annotations

from chaoscheckout.report import blocks as kinds
from chaoscheckout.report.document import GENERATED_COMMENT, Document

__all__ = ["render_markdown", "GENERATED_MARK"]

GENERATED_MARK = GENERATED_COMMENT
VERDICT_MARK = {"held": "✅ HELD", "broke": "❌ BROKE", "aborted": "⛔ ABORTED", "failed": "⚠️ FAILED",
                "inconclusive": "❔ INCONCLUSIVE"}


def render_markdown(doc: Document, chart_links: dict[str, str]) -> str:
    """The log as Markdown. chart_links maps a run id to the relative path of its SVG file."""
    lines: list[str] = [GENERATED_MARK, ""]
    for block in doc.blocks:
        lines.extend(_block(block, chart_links))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _text(text: str) -> str:
    return str(text).replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:
    return " ".join(_text(text).split()).replace("|", "\\|") or " "


def _table(headers: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(_cell(h) for h in headers) + " |",
             "|" + "|".join(" --- " for _ in headers) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def _block(block: kinds.Block, chart_links: dict[str, str]) -> list[str]:
    match block:
        case kinds.Heading(text=text, level=level, anchor=anchor):
            link = f' <a id="{_cell(anchor)}"></a>' if anchor and level == 2 else ""
            return ["#" * level + " " + _cell(text) + link]
        case kinds.Paragraph(text=text):
            return [_text(text)]
        case kinds.Findings(text=text):  # the team's FINDINGS.md, as written
            return [text.rstrip("\n")]
        case kinds.KeyValues(rows=rows):
            return [f"- **{_cell(k)}**: {_cell(v)}" for k, v in rows]
        case kinds.Verdict(verdict=verdict, reason=reason):
            mark = VERDICT_MARK.get(verdict, _cell(verdict.upper()))
            return [f"**Verdict: {mark}** — {_cell(reason)}"]
        case kinds.Warnings(title=title, items=items):
            return ([f"> **⚠ {_cell(title)}** (chaos report --verify)", ">"]
                    + [f"> - {_cell(i)}" for i in items])
        case kinds.Table(headers=headers, rows=rows):
            return _table(headers, [[_cell(c) for c in row] for row in rows])
        case kinds.RunsAtAGlance(rows=rows, headers=headers):
            return _table(headers, [[f"[{_cell(r.run_id)}](#{_cell(r.run_id)})", _cell(r.title),
                                     _cell(r.verdict), _cell(r.why)] for r in rows])
        case kinds.SummaryTable(rows=rows, headers=headers):
            return _table(headers, [[_cell(c) for c in r.cells()] for r in rows])
        case kinds.Chart(run=run):
            link = chart_links.get(run.run_id)
            if link:
                return [f"![SLI timeline: {_cell(run.title)}]({link})", "",
                        f"[SLI timeline (SVG)]({link}) — availability, p95 latency and (when guarded) "
                        "charges without an order; shaded red: fault window; shaded grey: the before/after "
                        "checks' windows; dashed orange: SLO; dashed red: abort threshold; hatched: samples "
                        "that still measure the previous run."]
            return ["_No SLI timeline chart._"]
    return []
