# Developer and CI entry points. `make test` works on a fresh Debian machine as root with
# only Python 3.11: it makes the venv (installing python3-venv if the venv module is
# missing), installs the project with its test extras, then lints and runs the tests.

PYTHON ?= python3
VENV ?= .venv
DURATION ?=

BIN := $(VENV)/bin
# Reinstalled when pyproject.toml changes; lives in the venv so a new venv starts clean.
STAMP := $(VENV)/.installed-stamp
LINT_PATHS := $(wildcard agent central protocol simulators tests benchmarks packaging)
# benchmarks/_*.py are shared helpers, not benchmarks.
BENCHES := $(filter-out benchmarks/_%,$(wildcard benchmarks/*.py))

# System packages the card stack needs: pcscd and the vpcd driver (the virtual reader the tests and
# the demo use), and libpcsclite-dev + swig because pyscard is published as source only; systemd
# for systemd-analyze, which checks the packaged units (tests/packaging); Debian's chromium for the
# page tests (tests/browser: Playwright drives it, never a browser of its own download); Debian's
# python3-venv, which the yibao-edge package needs to make /opt/yibao-edge (tests/packaging/test_deb);
# a CJK font (WenQuanYi Micro Hei, 5 MB) so the pages' Chinese labels render in the screenshots;
# Java 17 for Spark local (the screen on Spark, tests/central/test_engines.py); Debian's postgresql for
# the scratch servers tests/pg start with initdb (simulators/pgserver.py).
SYSDEPS := pcscd vsmartcard-vpcd libpcsclite-dev swig systemd curl chromium python3-venv fonts-wqy-microhei \
	openjdk-17-jre-headless postgresql
SYSDEPS_OK := command -v swig >/dev/null && command -v systemd-analyze >/dev/null && command -v curl >/dev/null \
	&& test -x /usr/sbin/pcscd && test -x /usr/bin/chromium && /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null \
	&& test -f /usr/lib/pcsc/drivers/serial/libifdvpcd.so && test -f /usr/include/PCSC/winscard.h \
	&& test -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc && command -v java >/dev/null \
	&& ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1

.PHONY: all test lint pytest demo bench venv clean-venv sysdeps

all: test

$(BIN)/python:
	@if ! $(PYTHON) -m venv $(VENV); then \
		echo "venv module missing: installing python3-venv"; \
		rm -rf $(VENV); \
		apt-get update && apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); \
	fi

sysdeps:
	@if ! ( $(SYSDEPS_OK) ); then \
		echo "installing $(SYSDEPS)"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(SYSDEPS); \
		if [ -d /run/systemd/system ]; then systemctl disable --now pcscd.socket pcscd.service || true; fi; \
	fi

$(STAMP): pyproject.toml | sysdeps $(BIN)/python
	$(BIN)/python -m pip install -e '.[test]'
	@touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)

pytest: $(STAMP)
	$(BIN)/pytest -q --durations=25 -n auto --maxprocesses 4 --dist loadscope tests

test: lint pytest

demo: $(STAMP)
	$(BIN)/python -m simulators.demo $(if $(DURATION),--duration $(DURATION))

bench: $(STAMP)
	@set -e; $(if $(BENCHES),,echo "no benchmarks in benchmarks/";) \
	for f in $(BENCHES); do echo "== $$f"; $(BIN)/python "$$f"; done

clean-venv:
	rm -rf $(VENV)
