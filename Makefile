# osquery-netutil: every target runs the idempotent set-up first (root, Debian/Ubuntu).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup watch test check bench ext deb

setup:
	bash scripts/setup.sh

# The main job: attach the probe and print network utility execs as they happen.
watch: setup
	$(VENV)/bin/osquery-netutil watch

test: setup
	$(PY) -m pytest tests

# The quick tier: no root, no apt, no BPF (lint, types, the tests that need no kernel, packs verify).
check:
	bash scripts/check.sh

# Benchmarks against bpftrace and auditd, with plots: bench/results/REPORT.md
bench:
	bash scripts/setup.sh --bench
	$(PY) bench/overhead.py
	$(PY) bench/kernel_cost.py
	$(PY) bench/storm.py
	$(PY) bench/extension_bench.py
	$(PY) bench/syscall_tax.py
	$(PY) bench/judge_rate.py
	$(PY) bench/pack_cost.py
	$(PY) bench/verdicts.py
	$(PY) bench/sockets.py
	$(PY) bench/report.py

# The osquery extension as one autoloadable file: dist/osquery-netutil.ext
ext: setup
	$(PY) scripts/build_ext.py

# The Debian package: dist/osquery-netutil_<version>_all.deb (install: apt install ./dist/osquery-netutil_*.deb)
deb: setup
	$(PY) scripts/build_deb.py
