"""A tiny, safe Markdown subset to HTML, for the hand-written FINDINGS.md in the HTML log.

Supported: ATX headings (``#`` … ``######``, shifted under the log's "Findings" heading),
paragraphs, bullet lists (``-``, ``*``, ``+``; indented continuation lines), fenced code
blocks (shown verbatim), ``**bold**``, ```code```, and ``[text](url)`` links whose URL is
http(s), mailto, a relative path or an ``#anchor``. Everything else, raw HTML included, is
escaped. Journal file names that match a rendered run link to that run's section.
"""

from __future__ import annotations

import re
from html import escape

__all__ = ["render_findings"]

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
BULLET = re.compile(r"^\s{0,3}[-*+]\s+(.*)$")
FENCE = re.compile(r"^\s{0,3}(```|~~~)")
INLINE = re.compile(r"`([^`\n]+)`|\*\*(?=\S)(.+?)(?<=\S)\*\*|\[([^\]\n]+)\]\(([^)\s]+)\)")
SAFE_SCHEMES = ("http", "https", "mailto")
HEADING_SHIFT = 2  # "# x" in FINDINGS.md becomes <h3>, under the log's <h2>Findings</h2>
MAX_LINES = 5000


def render_findings(text: str, anchors: dict[str, str] | None = None) -> str:
    """FINDINGS.md text as HTML. anchors maps a journal file name (or run id) to its section id."""
    anchors = anchors or {}
    names = sorted(anchors, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(n) for n in names)) if names else None
    out: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []
    fence: list[str] | None = None

    def inline(raw: str) -> str:
        return _inline(raw, anchors, pattern)

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in text.splitlines()[:MAX_LINES]:
        if fence is not None:
            if FENCE.match(line):
                out.append(f"<pre><code>{escape(chr(10).join(fence))}</code></pre>")
                fence = None
            else:
                fence.append(line)
            continue
        if FENCE.match(line):
            flush()
            fence = []
            continue
        if not line.strip():
            flush()
            continue
        heading = HEADING.match(line)
        bullet = BULLET.match(line)
        if heading:
            flush()
            level = min(6, len(heading.group(1)) + HEADING_SHIFT)
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif bullet:
            if paragraph:
                flush()
            items.append(bullet.group(1))
        elif items and line[:1].isspace():
            items[-1] += " " + line.strip()
        else:
            if items:
                flush()
            paragraph.append(line.strip())
    if fence is not None:  # unclosed fence: still shown, escaped
        out.append(f"<pre><code>{escape(chr(10).join(fence))}</code></pre>")
    flush()
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _inline(raw: str, anchors: dict[str, str], pattern: re.Pattern[str] | None) -> str:
    parts: list[str] = []
    pos = 0
    for match in INLINE.finditer(raw):
        parts.append(_text(raw[pos:match.start()], anchors, pattern))
        code, bold, label, url = match.groups()
        if code is not None:
            anchor = anchors.get(code.strip())
            html = f"<code>{escape(code)}</code>"
            parts.append(f'<a href="#{escape(anchor)}">{html}</a>' if anchor else html)
        elif bold is not None:
            parts.append(f"<strong>{_inline(bold, anchors, pattern)}</strong>")
        else:
            href = _href(url, anchors)
            parts.append(f'<a href="{escape(href)}">{escape(label)}</a>' if href else escape(match.group(0)))
        pos = match.end()
    parts.append(_text(raw[pos:], anchors, pattern))
    return "".join(parts)


def _text(raw: str, anchors: dict[str, str], pattern: re.Pattern[str] | None) -> str:
    """Plain text, escaped; known journal file names become links to their run sections."""
    if pattern is None:
        return escape(raw)
    out, pos = [], 0
    for match in pattern.finditer(raw):
        out.append(escape(raw[pos:match.start()]))
        name = match.group(0)
        out.append(f'<a href="#{escape(anchors[name])}">{escape(name)}</a>')
        pos = match.end()
    out.append(escape(raw[pos:]))
    return "".join(out)


def _href(url: str, anchors: dict[str, str]) -> str:
    """A safe href for url ("" when unsafe); a link to a rendered journal goes to its section."""
    name = url.rsplit("/", 1)[-1]
    if name in anchors:
        return "#" + anchors[name]
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", url)
    if scheme and scheme.group(1).lower() not in SAFE_SCHEMES:
        return ""
    return url
