#!/usr/bin/env bash
# The quick tier (`make check`): no root, no apt, no BPF, under a minute once its venv is
# there. ruff and mypy over the code, the tests that need none of the kernel, sudo or
# dpkg (QUICK below), and `packs verify`. CI runs it before the full suite (`make test`).
#
# Its venv (.venv-check, or $CHECK_VENV) is its own: the project's dependencies and its
# test and lint extras from PyPI, with no bcc; the package is imported from the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CHECK_VENV:-.venv-check}
PYTHON=${PYTHON:-python3}
QUICK=(
  tests/test_catalog.py tests/test_safety.py tests/test_schema.py tests/kernel/test_contract.py
  tests/events/test_containers.py tests/events/test_ipargs.py tests/events/test_scripts.py tests/events/test_content.py tests/store/test_store.py
  tests/events/test_dns.py tests/events/test_socket_rows.py tests/events/test_listeners.py
  tests/host/test_host.py tests/host/test_stdregex.py
  tests/packs/test_cursor.py tests/packs/test_fleet_parsers.py tests/packs/test_jsonl.py
  tests/packs/test_packs.py tests/packs/test_resultlog.py
)

die() { echo "check: $*" >&2; exit 2; }

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" 2>/dev/null || die "cannot create $VENV with $PYTHON: install python3-venv (or set PYTHON)"
fi
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  echo "check: installing the dependencies and the test and lint tools into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test,lint]" \
    || die "pip install failed: check access to PyPI"
  touch "$stamp"
fi

"$VENV/bin/ruff" check extension bench scripts tests testkit
"$VENV/bin/mypy"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "${QUICK[@]}"
"$VENV/bin/python" -m osquery_netutil packs verify
