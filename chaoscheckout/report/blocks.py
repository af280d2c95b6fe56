"""The experiment log's building blocks: one dataclass per kind; renderers dispatch on type."""

from __future__ import annotations

from dataclasses import dataclass, field

from chaoscheckout.report.model import Run

__all__ = ["Block", "Chart", "Findings", "GlanceRow", "Heading", "KeyValues", "Paragraph", "RunsAtAGlance",
           "SummaryRow", "SummaryTable", "Table", "Verdict", "Warnings"]


@dataclass
class Heading:
    text: str
    level: int = 2
    anchor: str = ""


@dataclass
class Paragraph:
    text: str


@dataclass
class Findings:
    """The team's FINDINGS.md (Markdown source), shown near the top."""
    source: str
    text: str


@dataclass
class KeyValues:
    rows: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Verdict:
    verdict: str  # held | broke | aborted | failed | inconclusive
    reason: str


@dataclass
class Warnings:
    """Contradictions found in a journal (or in all of them)."""
    title: str
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class GlanceRow:
    run_id: str
    title: str
    verdict: str
    why: str


@dataclass
class RunsAtAGlance:
    rows: list[GlanceRow]
    headers: tuple[str, ...] = ("run", "experiment", "verdict", "why")


@dataclass
class SummaryRow:
    title: str
    run_id: str
    date: str
    verdict: str
    availability: str
    latency: str
    build: str
    evidence: str

    def cells(self) -> list[str]:
        return [self.title, self.run_id, self.date, self.verdict, self.availability, self.latency, self.build,
                self.evidence]


@dataclass
class SummaryTable:
    rows: list[SummaryRow]
    headers: tuple[str, ...] = ("experiment", "run", "date (UTC)", "verdict",
                                "availability before / worst during / after",
                                "p95 before / worst during / after", "system tested", "fault evidence")


@dataclass
class Chart:
    run: Run


Block = (Heading | Paragraph | Findings | KeyValues | Verdict | Warnings | Table | RunsAtAGlance
         | SummaryTable | Chart)
