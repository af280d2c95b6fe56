# chaoscheckout: one-command set-up, tests, demo and benchmark on Debian 12 (as root).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the stack needs, as "command-or-path:package" pairs.
APT_NEEDS := /usr/bin/prometheus:prometheus /usr/bin/promtool:prometheus ip:iproute2 mount:util-linux \
             curl:curl
.PHONY: setup test demo down bench status

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: setup.cfg pyproject.toml
	@set -euo pipefail; missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	for pair in $(APT_NEEDS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  if [ "$${cmd:0:1}" = / ]; then [ -x "$$cmd" ] || missing="$$missing $$pkg"; \
	  else command -v "$$cmd" >/dev/null || missing="$$missing $$pkg"; fi; done; \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$${missing// /}" ]; then \
	  echo "apt-get install:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "system packages: all present"; fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[stack,dev]'
	touch $@

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

# stack up -> the three experiments under load -> the experiment log. Verdicts are results:
# a broken experiment (exit 3) does not fail the demo; an error (exit 1) does.
demo: setup
	$(PY) -m stack.manage up
	$(VENV)/bin/chaoscheckout experiments run || test $$? -eq 3

down:
	$(PY) -m stack.manage down

status:
	$(PY) -m stack.manage status

# Every benchmark in one go (bench/run.py): starts its own stack on CHAOSCHECKOUT_PORT_BASE /
# CHAOSCHECKOUT_STATE_DIR (the defaults of stack.manage when unset), stops it, prints one table
# and writes bench/RESULTS.md.
bench: setup
	CHAOSCHECKOUT_PORT_BASE=$${CHAOSCHECKOUT_PORT_BASE:-18100} \
	CHAOSCHECKOUT_STATE_DIR=$${CHAOSCHECKOUT_STATE_DIR:-/var/lib/chaoscheckout} $(PY) bench/run.py
