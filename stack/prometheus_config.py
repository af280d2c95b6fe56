"""Prometheus' config, one template for both runtimes (stack/prometheus/prometheus.yml.tmpl,
scrape targets from stack/topology.py): rendered into the state dir for the local stack, and
into stack/docker/prometheus.yml for the docker image; its local command line."""

from __future__ import annotations

import shutil
from pathlib import Path
from string import Template

from stack import topology
from stack.settings import StackSettings

__all__ = ["PROMETHEUS_BIN", "TEMPLATE_DIR", "DOCKER_CONFIG", "render", "render_text", "command",
           "config_file", "write_docker_config"]

PROMETHEUS_BIN = Path("/usr/bin/prometheus")
TEMPLATE_DIR = Path(__file__).resolve().parent / "prometheus"
DOCKER_CONFIG = Path(__file__).resolve().parent / "docker" / "prometheus.yml"
DOCKER_RULES_FILE = "/etc/cc/rules.yml"  # where Dockerfile.prometheus puts rules.yml


def render_text(runtime: str, rules_file: str, targets: dict[str, str]) -> str:
    """The config text: one scrape job per ``targets`` entry (job -> host:port)."""
    jobs = "".join(f"  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n"
                   for job, target in targets.items())
    header = (f"Rendered by stack/prometheus_config.py for the {runtime} stack "
              "(template stack/prometheus/prometheus.yml.tmpl).")
    if runtime == "docker":
        header += "\n# Do not edit: `python -m stack.topology prometheus` writes it; a test checks it."
    template = Template((TEMPLATE_DIR / "prometheus.yml.tmpl").read_text())
    return template.substitute(header=header, rules_file=rules_file, scrape_configs=jobs.rstrip("\n"))


def docker_config_text() -> str:
    """stack/docker/prometheus.yml as the topology says it must be."""
    return render_text("docker", DOCKER_RULES_FILE, topology.scrape_targets("docker"))


def write_docker_config() -> Path:
    DOCKER_CONFIG.write_text(docker_config_text())
    return DOCKER_CONFIG


def config_file(settings: StackSettings) -> Path:
    return settings.state_dir / "prometheus" / "prometheus.yml"


def render(settings: StackSettings) -> Path:
    """Write prometheus.yml and rules.yml under <state_dir>/prometheus; return the config path."""
    out = settings.state_dir / "prometheus"
    out.mkdir(parents=True, exist_ok=True)
    rules = out / "rules.yml"
    shutil.copyfile(TEMPLATE_DIR / "rules.yml", rules)
    text = render_text("local", str(rules), topology.scrape_targets("local", settings.port))
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
