"""Render the experiment log as Markdown; SLI charts are written as SVG files next to it."""

from __future__ import annotations

from chaoscheckout.report.document import Block, Document

__all__ = ["render_markdown"]

VERDICT_MARK = {"held": "✅ HELD", "broke": "❌ BROKE", "aborted": "⛔ ABORTED", "failed": "⚠️ FAILED"}


def render_markdown(doc: Document, chart_links: dict[str, str]) -> str:
    """The log as Markdown. chart_links maps a run id to the relative path of its SVG file."""
    lines: list[str] = []
    for block in doc.blocks:
        lines.extend(_block(block, chart_links))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or " "


def _block(block: Block, chart_links: dict[str, str]) -> list[str]:
    if block.kind == "h":
        anchor = f' <a id="{block.anchor}"></a>' if block.anchor and block.level == 2 else ""
        return ["#" * block.level + " " + _cell(block.text) + anchor]
    if block.kind == "p":
        return [block.text]
    if block.kind == "findings":  # the team's FINDINGS.md, verbatim
        return [block.text.rstrip("\n")]
    if block.kind == "kv":
        return [f"- **{_cell(k)}**: {_cell(v)}" for k, v in block.rows]
    if block.kind == "verdict":
        mark = VERDICT_MARK.get(block.anchor, block.anchor.upper())
        return [f"**Verdict: {mark}** — {_cell(block.text)}"]
    if block.kind == "table":
        out = ["| " + " | ".join(_cell(h) for h in block.headers) + " |",
               "|" + "|".join(" --- " for _ in block.headers) + "|"]
        glance = block.headers[:1] == ["run"]  # runs at a glance: the run id links to its section
        out += ["| " + " | ".join(f"[{_cell(c)}](#{c})" if glance and i == 0 else _cell(c)
                                  for i, c in enumerate(row)) + " |" for row in block.rows]
        return out
    if block.kind == "chart" and block.run is not None:
        link = chart_links.get(block.run.run_id)
        if link:
            return [f"![SLI timeline: {_cell(block.run.title)}]({link})", "",
                    f"[SLI timeline (SVG)]({link}) — availability and p95 latency; shaded: fault window; "
                    "dashed orange: SLO; dashed red: abort."]
        return ["_No SLI timeline chart._"]
    return []
