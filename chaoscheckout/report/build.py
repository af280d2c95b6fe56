"""Collect journals, render the experiment log and write it (atomically, never empty)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaoscheckout.report import keys
from chaoscheckout.report.analysis import analyse
from chaoscheckout.report.document import SUMMARY_HEADERS, Document, build_document
from chaoscheckout.report.model import Run, Skipped, load_journal

__all__ = ["FORMATS", "OUTPUT_STEM", "ReportError", "ReportResult", "collect", "write_report"]

FORMATS = ("md", "html", "json")
OUTPUT_STEM = "experiment-log"


class ReportError(Exception):
    """The log cannot be written (no readable journal, bad output path)."""


@dataclass
class ReportResult:
    written: list[Path] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def collect(inputs: list[Path]) -> tuple[list[Path], list[Skipped]]:
    """Journal files from the inputs: directories give their *.json files (not recursive, minus the
    log's own outputs); files are taken as given."""
    files: list[Path] = []
    missing: list[Skipped] = []
    for item in inputs:
        if item.is_dir():
            files.extend(p for p in sorted(item.glob("*.json"))
                         if p.is_file() and not p.name.startswith(OUTPUT_STEM))
        elif item.is_file():
            files.append(item)
        else:
            missing.append(Skipped(str(item), "no such file or directory"))
    seen: set[Path] = set()
    unique = []
    for path in files:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique, missing


def default_output(inputs: list[Path]) -> Path:
    first = inputs[0]
    folder = first if first.is_dir() else first.parent
    return folder / OUTPUT_STEM


def write_report(inputs: list[Path], output: Path | None, formats: tuple[str, ...]) -> ReportResult:
    """Render the journals in inputs to output (a stem: each format gets its own suffix)."""
    bad = [f for f in formats if f not in FORMATS]
    if not formats or bad:
        raise ReportError(f"unknown format(s) {bad or formats}; choose from {', '.join(FORMATS)}")
    if not inputs:
        raise ReportError("give a journals directory or journal files")
    files, skipped = collect(inputs)
    runs: list[Run] = []
    for path in files:
        loaded = load_journal(path)
        if isinstance(loaded, Skipped):
            skipped.append(loaded)
        else:
            runs.append(analyse(loaded))
    result = ReportResult(runs=runs, skipped=skipped)
    if not runs:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped) or "no *.json file found"
        raise ReportError(f"no readable journal, nothing written ({reasons})")
    stem = _stem(output) if output is not None else default_output(inputs)
    if not stem.parent.is_dir():
        raise ReportError(f"output directory {stem.parent} does not exist")
    _unique_ids(runs)
    doc = build_document(runs, skipped, findings=_findings(inputs, skipped))
    for fmt in formats:
        target = stem.with_name(stem.name + "." + fmt)
        if fmt == "md":
            from chaoscheckout.report.markdown import render_markdown

            links = _write_charts(runs, stem)
            _atomic_write(target, render_markdown(doc, links))
        elif fmt == "html":
            from chaoscheckout.report.html import render_html

            _atomic_write(target, render_html(doc))
        else:
            _atomic_write(target, json.dumps(_json_doc(doc), indent=2, default=str) + "\n")
        result.written.append(target)
    return result


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _stem(output: Path) -> Path:
    return output.with_suffix("") if output.suffix in {"." + f for f in FORMATS} else output


def _findings(inputs: list[Path], skipped: list[Skipped]) -> list[tuple[str, str]]:
    """(path, text) of the FINDINGS.md in each input directory; an unreadable one is listed as skipped."""
    found = []
    for folder in dict.fromkeys(item for item in inputs if item.is_dir()):
        path = folder / keys.FINDINGS_FILE
        if not path.is_file():
            continue
        try:
            if path.stat().st_size > keys.MAX_FINDINGS_BYTES:
                raise ValueError(f"larger than {keys.MAX_FINDINGS_BYTES} bytes")
            found.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            skipped.append(Skipped(str(path), f"findings not included: {exc}"))
    return found


def _unique_ids(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", run.run_id).strip("-") or "run"
        count = seen.get(base, 0)
        seen[base] = count + 1
        run.run_id = base if count == 0 else f"{base}-{count + 1}"


def _write_charts(runs: list[Run], stem: Path) -> dict[str, str]:
    from chaoscheckout.report.svg import sli_chart

    folder = stem.with_name(stem.name + "-charts")
    folder.mkdir(exist_ok=True)
    links = {}
    for run in runs:
        name = f"{run.run_id}.svg"
        _atomic_write(folder / name, '<?xml version="1.0" encoding="UTF-8"?>\n' + sli_chart(run) + "\n")
        links[run.run_id] = f"{folder.name}/{name}"
    return links


def _atomic_write(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_doc(doc: Document) -> dict[str, Any]:
    return {
        "title": doc.title,
        "generated_at": doc.generated_at,
        "runs": [asdict(run) for run in doc.runs],
        "skipped": [asdict(s) for s in doc.skipped],
        "findings": [{"path": path, "text": text} for path, text in doc.findings],
        "summary": {"headers": SUMMARY_HEADERS, "rows": doc.summary_rows},
        "history": [{"title": h.title, "runs": [{"run_id": r.run_id, "start": r.start, "verdict": r.verdict}
                                                for r in h.runs]} for h in doc.histories],
    }
