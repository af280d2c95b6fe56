# chaoscheckout: one-command set-up, tests, demo and benchmark on Debian 12 (as root).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the stack needs, as "command-or-path:package" pairs (a path may be a glob).
APT_NEEDS := /usr/lib/postgresql/*/bin/initdb:postgresql /usr/bin/prometheus:prometheus \
             /usr/bin/promtool:prometheus ip:iproute2 mount:util-linux curl:curl
# ... and what only the tests need: the Docker engine (docker runtime tests), debootstrap (local
# base image, VM image), QEMU and a Debian kernel with sch_netem (the netem VM tests).
TEST_APT_NEEDS := dockerd:docker.io docker-compose:docker-compose debootstrap:debootstrap \
                  qemu-system-x86_64:qemu-system-x86 depmod:kmod mkfs.ext4:e2fsprogs \
                  /boot/vmlinuz-*:linux-image-amd64 /usr/sbin/sshd:openssh-server
# $(call apt_install,PAIRS): apt-get install the packages of PAIRS whose command/path is missing.
define apt_install
	@set -euo pipefail; missing=""; \
	for pair in $(1); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  if [ "$${cmd:0:1}" = / ]; then ls $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	  else command -v "$$cmd" >/dev/null || missing="$$missing $$pkg"; fi; done; \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$${missing// /}" ]; then \
	  echo "apt-get install:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "system packages: all present"; fi
endef
# The newest Chaos Toolkit the registry serves needs Python >= 3.12 (pyenv's, or python3.12).
CTK_LATEST := .venv-ctk-latest
PY312 := $(shell for c in python3.12 $$(ls -d $$HOME/.pyenv/versions/3.12*/bin/python 2>/dev/null | sort -V); do \
  $$c -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { command -v $$c; break; }; done)
.PHONY: setup setup-test-tools setup-ctk-latest test check demo down bench status

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: setup.cfg pyproject.toml
	@python3 -c 'import ensurepip, venv' 2>/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv; }
	$(call apt_install,$(APT_NEEDS))
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[stack,dev]'
	touch $@

# A second virtualenv with Python 3.12 and the newest chaostoolkit / -lib / -addons, used by
# the compatibility tests (tests/test_ctk_compat.py and the newest-CTK abort runs). Without a
# Python 3.12 those tests are skipped and say why.
setup-ctk-latest: setup $(CTK_LATEST)/.setup-done

$(CTK_LATEST)/.setup-done: setup.cfg pyproject.toml
	@if [ -z "$(PY312)" ]; then echo "no Python 3.12 found: newest-Chaos-Toolkit tests will be skipped"; exit 0; fi; \
	set -euo pipefail; echo "newest Chaos Toolkit under $$($(PY312) --version)"; \
	test -x $(CTK_LATEST)/bin/python || $(PY312) -m venv $(CTK_LATEST); \
	$(CTK_LATEST)/bin/python -m pip install -q --upgrade pip; \
	$(CTK_LATEST)/bin/python -m pip install -q --upgrade -e '.[stack,dev]' chaostoolkit chaostoolkit-lib \
	  chaostoolkit-addons chaostoolkit-prometheus; \
	$(CTK_LATEST)/bin/python -m pip list 2>/dev/null | grep -i '^chaostoolkit'; touch $@

setup-test-tools:
	$(call apt_install,$(TEST_APT_NEEDS))

test: setup setup-test-tools setup-ctk-latest
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

# The fast tier: pure logic, no root, no stack, no network (well under a minute).
check: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -m fast

# stack up -> the four experiments under load -> the experiment log. Verdicts are results:
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
