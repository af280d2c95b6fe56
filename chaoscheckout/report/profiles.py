"""Baseline and peak verdicts side by side, per hypothesis, from the journals alone.

One row per experiment (its title; the hypothesis it states), one cell per load profile:
the latest run at that profile (its verdict, the rate k6 held, for peak the share of which
capacity record, and the journal's key), and how many runs there were at that profile.
A journal older than load profiles ran the baseline at its k6 record's rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chaoscheckout.load.profile import PROFILES
from chaoscheckout.report.model import Run

__all__ = ["ProfileCell", "ProfileRow", "side_by_side", "HEADERS", "NOTE"]

HEADERS = ["experiment", "hypothesis", "baseline: verdict", "baseline: load", "baseline: journal",
           "peak: verdict", "peak: load", "peak: journal"]
NOTE = ("Latest run of each experiment at each load profile (chaoscheckout_load.profile in the journal; "
        "journals older than profiles ran the baseline). Peak: the rate k6 held after its ramp, derived "
        "from the capacity record the journal carries (share x capacity, measured when and on which "
        "build).")


@dataclass
class ProfileCell:
    verdict: str
    rate: float | None
    run_id: str
    journal: str
    start: float | None
    runs: int = 1
    ramp_s: float | None = None
    share: float | None = None
    capacity_per_s: float | None = None
    capacity_measured_at: str = ""
    capacity_build: str = ""
    recorded: bool = True

    def load_text(self) -> str:
        rate = "?/s" if self.rate is None else f"{self.rate:g}/s"
        if self.capacity_per_s is None:
            return rate + ("" if self.recorded else " (before profiles)")
        ramp = f", ramp {self.ramp_s:g} s" if self.ramp_s else ""
        build = f", build {self.capacity_build}" if self.capacity_build else ""
        return (f"{rate} = {self.share:g} x {self.capacity_per_s:g}/s capacity "
                f"(measured {self.capacity_measured_at}{build}){ramp}")

    def verdict_text(self) -> str:
        more = f" (latest of {self.runs} runs)" if self.runs > 1 else ""
        return self.verdict.upper() + more


@dataclass
class ProfileRow:
    title: str
    hypothesis: str
    cells: dict[str, ProfileCell | None] = field(default_factory=dict)

    def cells_text(self) -> list[str]:
        out = [self.title, self.hypothesis or "not stated"]
        for name in PROFILES:
            cell = self.cells.get(name)
            out += ([cell.verdict_text(), cell.load_text(), cell.journal] if cell
                    else [f"not run at {name}", "—", "—"])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "hypothesis": self.hypothesis,
                "profiles": {name: (vars(cell) if cell else None) for name, cell in self.cells.items()}}


def side_by_side(runs: list[Run]) -> list[ProfileRow]:
    """One row per experiment title, in order of first appearance (oldest run first)."""
    rows: dict[str, ProfileRow] = {}
    for run in sorted(runs, key=lambda r: (r.start or 0.0, r.run_id)):
        profile = run.load_profile
        name = profile.name if profile is not None else "baseline"
        if name not in PROFILES:
            continue  # verify flags it; the comparison shows known profiles only
        row = rows.setdefault(run.title, ProfileRow(run.title, run.hypothesis,
                                                    {n: None for n in PROFILES}))
        row.hypothesis = run.hypothesis or row.hypothesis
        earlier = row.cells.get(name)
        row.cells[name] = ProfileCell(
            verdict=run.verdict, rate=profile.rate if profile else None, run_id=run.run_id,
            journal=run.path.replace("\\", "/").rsplit("/", 1)[-1], start=run.start,
            runs=(earlier.runs + 1) if earlier else 1,
            ramp_s=profile.ramp_s if profile else None, share=profile.share if profile else None,
            capacity_per_s=profile.capacity_per_s if profile else None,
            capacity_measured_at=profile.capacity_measured_at if profile else "",
            capacity_build=profile.capacity_build if profile else "",
            recorded=bool(profile and profile.recorded))
    return list(rows.values())
