"""Render Prometheus' config and rules into the state dir and build its command line."""

from __future__ import annotations

import shutil
from pathlib import Path
from string import Template

from stack.settings import StackSettings

__all__ = ["PROMETHEUS_BIN", "TEMPLATE_DIR", "render", "command", "config_file"]

PROMETHEUS_BIN = Path("/usr/bin/prometheus")
TEMPLATE_DIR = Path(__file__).resolve().parent / "prometheus"


def config_file(settings: StackSettings) -> Path:
    return settings.state_dir / "prometheus" / "prometheus.yml"


def render(settings: StackSettings) -> Path:
    """Write prometheus.yml and rules.yml under <state_dir>/prometheus; return the config path."""
    out = settings.state_dir / "prometheus"
    out.mkdir(parents=True, exist_ok=True)
    rules = out / "rules.yml"
    shutil.copyfile(TEMPLATE_DIR / "rules.yml", rules)
    template = Template((TEMPLATE_DIR / "prometheus.yml.tmpl").read_text())
    text = template.substitute(rules_file=str(rules), **{k: str(v) for k, v in settings.ports.items()})
    path = config_file(settings)
    path.write_text(text)
    return path


def command(settings: StackSettings) -> list[str]:
    data = settings.state_dir / "prometheus" / "data"
    return [
        str(PROMETHEUS_BIN),
        f"--config.file={config_file(settings)}",
        f"--storage.tsdb.path={data}",
        "--storage.tsdb.retention.time=6h",
        f"--web.listen-address=127.0.0.1:{settings.port('prometheus')}",
        "--log.level=warn",
    ]
