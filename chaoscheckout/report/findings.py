"""The team's FINDINGS.md as HTML for the log: markdown-it-py (CommonMark + tables), raw HTML off.

Headings are shifted two levels down (``#`` becomes ``<h3>``, under the log's "Findings"
heading). Journal file names (or run ids) in text or in code spans link to that run's
section; a link to a rendered journal goes to its section too. markdown-it refuses
``javascript:``, ``vbscript:``, ``file:`` and ``data:`` links itself; raw HTML is shown
as text.
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.token import Token

__all__ = ["render_findings"]

HEADING_SHIFT = 2


def render_findings(text: str, anchors: dict[str, str] | None = None) -> str:
    """FINDINGS.md text as HTML. anchors maps a journal file name (or run id) to its section id."""
    anchors = anchors or {}
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    names = sorted(anchors, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(n) for n in names)) if names else None
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + HEADING_SHIFT)}"
        elif token.type == "inline" and token.children is not None:
            token.children = _link_journals(token.children, anchors, pattern)
    return md.renderer.render(tokens, md.options, {})


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _link(href: str, inner: list[Token]) -> list[Token]:
    opening = Token("link_open", "a", 1)
    opening.attrs = {"href": href}
    return [opening, *inner, Token("link_close", "a", -1)]


def _link_journals(children: list[Token], anchors: dict[str, str],
                   pattern: re.Pattern[str] | None) -> list[Token]:
    out: list[Token] = []
    depth = 0  # inside an existing link: leave the text alone
    for child in children:
        if child.type == "link_open":
            depth += 1
            href = str(child.attrs.get("href") or "")
            name = href.rsplit("/", 1)[-1]
            if name in anchors:
                child.attrs["href"] = "#" + anchors[name]
        elif child.type == "link_close":
            depth -= 1
        if depth == 0 and child.type == "code_inline" and child.content.strip() in anchors:
            out.extend(_link("#" + anchors[child.content.strip()], [child]))
            continue
        if depth == 0 and child.type == "text" and pattern is not None and pattern.search(child.content):
            pos = 0
            for match in pattern.finditer(child.content):
                if match.start() > pos:
                    out.append(_plain(child.content[pos:match.start()]))
                out.extend(_link("#" + anchors[match.group(0)], [_plain(match.group(0))]))
                pos = match.end()
            if pos < len(child.content):
                out.append(_plain(child.content[pos:]))
            continue
        out.append(child)
    return out


def _plain(content: str) -> Token:
    token = Token("text", "", 0)
    token.content = content
    return token
