#!/usr/bin/env bash
# The benchmark (docs/benchmarks.md): installs what it needs into the checkout's .venv (tests/requirements.txt,
# for the suite and the tests' throwaway servers, and benchmarks/requirements.txt), then runs it.
# `--quick`: a smoke run (2 repetitions, a 30-model app). Results in benchmarks/results/.
# Needs mariadb-server and openssh-server as the tests do (bash tests/run.sh installs them);
# it starts its own MariaDB and sshd on free loopback ports and never touches a running service.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in /usr/sbin/mariadbd /usr/sbin/sshd; do
    [ -x "$tool" ] || { echo "error: $tool is missing: run bash tests/run.sh once (it installs it)" >&2; exit 1; }
done
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt -r benchmarks/requirements.txt
exec .venv/bin/python -m benchmarks "$@"
