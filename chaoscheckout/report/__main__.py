"""`python -m chaoscheckout.report journals/`: the same command, reachable even when another
plugin (chaostoolkit-reporting) has taken the `chaos report` name."""

from chaoscheckout.report.plugin import report

if __name__ == "__main__":
    report(prog_name="python -m chaoscheckout.report")
