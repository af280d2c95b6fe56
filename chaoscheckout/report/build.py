"""Collect journals, render the experiment log and write it (atomically, never over data).

Writing rules: every file is rendered in memory first, then written to a temporary file in
the target directory and renamed over the target (0644), so a full disk or an unwritable
directory leaves nothing half-written and gives one :class:`ReportError` line. A target
that is an input (a journal, FINDINGS.md) or an existing file without the generated marker
(``GENERATED_MARK`` in Markdown/HTML/SVG, ``"generated_by"`` in JSON) is refused: the
report only ever replaces files it wrote itself. Charts of journals no longer rendered are
removed only when they carry the marker.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaoscheckout.report import keys
from chaoscheckout.report.analysis import analyse
from chaoscheckout.report.blocks import SummaryTable
from chaoscheckout.report.document import GENERATED_MARK, Document, build_document
from chaoscheckout.report.model import Run, Skipped, load_journal

__all__ = ["FORMATS", "GENERATED_MARK", "OUTPUT_STEM", "ReportError", "ReportResult", "collect", "load_runs",
           "write_report"]

FORMATS = ("md", "html", "json")
OUTPUT_STEM = "experiment-log"
JSON_MARK_KEY = "generated_by"
MARK_PROBE_BYTES = 4096
FILE_MODE = 0o644


class ReportError(Exception):
    """The log cannot be written (no readable journal, bad output path)."""


@dataclass
class ReportResult:
    written: list[Path] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    dead_runs: list[dict] = field(default_factory=list)


def dead_run_records(inputs: list[Path]) -> list[dict]:
    """The dead-run records among the inputs: a ``dead-runs.jsonl`` file given as such, or the
    one in an input directory (e.g. the state dir)."""
    from chaoscheckout.faults.deadruns import RECORD_FILE, read_records

    records: list[dict] = []
    for item in inputs:
        if item.is_file() and item.suffix == ".jsonl":
            records.extend(read_records(item))
        elif item.is_dir() and (item / RECORD_FILE).is_file():
            records.extend(read_records(item / RECORD_FILE))
    return records


def collect(inputs: list[Path]) -> tuple[list[Path], list[Skipped]]:
    """Journal files from the inputs: directories give their *.json files (not recursive, minus the
    log's own outputs); files are taken as given."""
    files: list[Path] = []
    missing: list[Skipped] = []
    for item in inputs:
        if item.is_dir():
            files.extend(p for p in sorted(item.glob("*.json"))
                         if p.is_file() and not p.name.startswith(OUTPUT_STEM) and not _generated(p))
        elif item.is_file() and item.suffix == ".jsonl":
            continue  # a dead-run record (dead_run_records), not a journal
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


def load_runs(inputs: list[Path]) -> ReportResult:
    """Read and analyse every journal of the inputs (nothing is written)."""
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
    return ReportResult(runs=runs, skipped=skipped, dead_runs=dead_run_records(inputs))


def write_report(inputs: list[Path], output: Path | None, formats: tuple[str, ...]) -> ReportResult:
    """Render the journals in inputs to output (a stem: each format gets its own suffix)."""
    bad = [f for f in formats if f not in FORMATS]
    if not formats or bad:
        raise ReportError(f"unknown format(s) {bad or formats}; choose from {', '.join(FORMATS)}")
    if output is not None and output.is_dir():
        raise ReportError(f"output {output} is a directory; give a file stem such as {output / OUTPUT_STEM}")
    result = load_runs(inputs)
    runs, skipped = result.runs, result.skipped
    if not runs and not result.dead_runs:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped) or "no *.json file found"
        raise ReportError(f"no readable journal, nothing written ({reasons})")
    stem = _stem(output) if output is not None else default_output(inputs)
    if not stem.parent.is_dir():
        raise ReportError(f"output directory {stem.parent} does not exist")
    _unique_ids(runs)
    findings = _findings(inputs, skipped)
    protected = _inputs_of(inputs)
    doc = build_document(runs, skipped, findings=findings, dead_runs=result.dead_runs)
    planned: dict[Path, str] = {}
    charts: Path | None = None
    for fmt in formats:
        target = stem.with_name(stem.name + "." + fmt)
        if fmt == "md":
            from chaoscheckout.report.markdown import render_markdown

            charts = stem.with_name(stem.name + "-charts")
            links, svgs = _charts(runs, charts)
            planned.update(svgs)
            planned[target] = render_markdown(doc, links)
        elif fmt == "html":
            from chaoscheckout.report.html import render_html

            planned[target] = render_html(doc)
        else:
            planned[target] = json.dumps(_json_doc(doc), indent=2, default=str) + "\n"
    for target in planned:
        _check_target(target, protected)
    try:
        if charts is not None:
            if charts.exists() and not charts.is_dir():
                raise ReportError(f"cannot write charts: {charts} exists and is not a directory")
            charts.mkdir(exist_ok=True)
        for target, text in planned.items():
            _atomic_write(target, text)
    except OSError as exc:
        raise ReportError(_os_error_text(exc)) from None
    if charts is not None:
        _remove_stale_charts(charts, set(planned))
    result.written = [t for t in planned if t.suffix != ".svg"]
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


def _charts(runs: list[Run], folder: Path) -> tuple[dict[str, str], dict[Path, str]]:
    from chaoscheckout.report.svg import sli_chart

    links, files = {}, {}
    for run in runs:
        name = f"{run.run_id}.svg"
        files[folder / name] = (f'<?xml version="1.0" encoding="UTF-8"?>\n<!-- {GENERATED_MARK} -->\n'
                                + sli_chart(run) + "\n")
        links[run.run_id] = f"{folder.name}/{name}"
    return links, files


def _generated(path: Path) -> bool:
    """Whether a file carries the marker of a file this command generated."""
    try:
        with path.open("rb") as handle:
            head = handle.read(MARK_PROBE_BYTES).decode("utf-8", "replace")
    except OSError:
        return False
    return GENERATED_MARK in head or f'"{JSON_MARK_KEY}": "{GENERATED_MARK}"' in head


def _inputs_of(inputs: list[Path]) -> set[Path]:
    """Every file the report reads: journals, and FINDINGS.md of input directories."""
    found: set[Path] = set()
    for item in inputs:
        if item.is_dir():
            found.update(p.resolve() for p in item.glob("*.json") if not _generated(p))
            found.add((item / keys.FINDINGS_FILE).resolve())
        else:
            found.add(item.resolve())
    return found


def _check_target(target: Path, protected: set[Path]) -> None:
    if target.resolve() in protected:
        raise ReportError(f"refusing to write {target}: it is one of the report's inputs; "
                          "choose another --output")
    if target.is_dir():
        raise ReportError(f"refusing to write {target}: it is a directory")
    if target.exists() and not _generated(target):
        raise ReportError(f"refusing to overwrite {target}: it was not generated by chaos report "
                          "(no generated marker); move it away or choose another --output")


def _remove_stale_charts(folder: Path, current: set[Path]) -> None:
    """Remove charts this command generated for journals it no longer renders (others are kept)."""
    for path in folder.glob("*.svg"):
        if path not in current and _generated(path):
            path.unlink(missing_ok=True)


def _os_error_text(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"no space left on device writing{where}; nothing was replaced"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write{where}: {exc.strerror}; nothing was replaced"
    return f"cannot write{where}: {exc.strerror or exc}"


def _atomic_write(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    """A dataclass as JSON-ready data, without the raw journal values kept for analysis."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            shown = f.metadata.get("json", True)  # False: left out; a name: that attribute instead
            if shown:
                name = shown if isinstance(shown, str) else f.name
                out[name] = _plain(getattr(value, name))
        return out
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _json_doc(doc: Document) -> dict[str, Any]:
    return {
        JSON_MARK_KEY: GENERATED_MARK,
        "title": doc.title,
        "generated_at": doc.generated_at,
        "runs": [_plain(run) for run in doc.runs],
        "skipped": [_plain(s) for s in doc.skipped],
        "findings": [{"path": path, "text": text} for path, text in doc.findings],
        "dead_runs": doc.dead_runs,
        "profiles": [row.to_dict() for row in doc.profile_rows],
        "summary": {"headers": list(SummaryTable([]).headers), "rows": [r.cells() for r in doc.summary_rows]},
        "history": [{"title": h.title, "experiment_digest": h.experiment_digest,
                     "system_build": h.system_build, "system_label": h.system_label,
                     "runs": [{"run_id": r.run_id, "start": r.start, "verdict": r.verdict} for r in h.runs]}
                    for h in doc.histories],
    }
