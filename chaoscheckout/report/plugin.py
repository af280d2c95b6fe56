"""The `chaos report` command (entry point group ``chaostoolkit.cli_plugins``).

``chaos`` imports this module on every invocation (``chaos run`` included), so it imports
only click and the standard library; rendering is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["report"]


@click.command("report")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Output path stem (a .md/.html/.json suffix is replaced per format). "
                   "Default: experiment-log in the (first) input directory.")
@click.option("--format", "formats", type=click.Choice(["md", "html", "json"]), multiple=True,
              help="Format(s) to write; repeat the option for several. Default: md and html.")
@click.option("--verify", is_flag=True, default=False,
              help="Only check the journals: re-derive each verdict from the raw values and tolerances, "
                   "flag contradictions and inconsistent timestamps; write nothing; exit 1 when one is "
                   "flagged.")
def report(inputs: tuple[Path, ...], output: Path | None, formats: tuple[str, ...], verify: bool) -> None:
    """Write the experiment log from chaostoolkit journals.

    INPUTS are journal files or directories (every *.json in them). Writes
    experiment-log.md (with SVG charts in experiment-log-charts/) and experiment-log.html
    next to the journals. Unreadable or foreign files are skipped with a reason; nothing is
    written when no journal can be read; no input and no file the command did not generate
    is ever overwritten. Journals that contradict themselves are reported as warnings (and
    their runs are inconclusive); with --verify that is all it does, exiting 1 when any is.
    Both print each run's verdict with its load profile and rate, then baseline and peak
    verdicts side by side per experiment (re-derived from the journals).
    """
    from chaoscheckout.report.build import ReportError, load_runs, write_report
    from chaoscheckout.report.profiles import side_by_side

    try:
        result = load_runs(list(inputs)) if verify else write_report(list(inputs), output,
                                                                    formats or ("md", "html"))
    except ReportError as exc:
        raise click.ClickException(str(exc)) from exc
    for skipped in result.skipped:
        click.echo(f"skipped {skipped.path}: {skipped.reason}", err=True)
    flagged = 0
    for run in result.runs:
        load = run.load_profile
        at = f" [{load.name} {load.rate:g}/s]" if load is not None and load.rate is not None else ""
        click.echo(f"{run.verdict:12} {run.title} ({run.run_id}){at} — {run.reason}")
        for problem in run.problems:
            flagged += 1
            click.echo(f"warning: {run.path}: {problem}", err=True)
    for record in result.dead_runs:
        owner = record.get("run_id") or "library caller"
        click.echo(f"{'dead run':12} {owner}: {record.get('fault_id', '?')} reverted for it "
                   f"({record.get('cause', record.get('error', ''))})")
    for row in side_by_side(result.runs):
        cells = [f"{name} {cell.verdict.upper()} at {cell.load_text()} [{cell.run_id}]" if cell
                 else f"{name}: not run" for name, cell in row.cells.items()]
        click.echo(f"{'profiles':12} {row.title}: {' | '.join(cells)}")
    for path in result.written:
        click.echo(f"wrote {path}")
    if verify:
        click.echo(f"verified {len(result.runs)} journal(s): {flagged} contradiction(s)", err=True)
        if flagged:
            raise SystemExit(1)
