#!/usr/bin/env bash
# Sets up everything the tests need on a Debian/Ubuntu machine, then runs them.
# Installs what is missing with apt (sudo when not root): mariadb-server, mariadb-client (the backups'
# dump and load tools), postgresql (initdb, postgres, pg_dump and pg_restore; its own service is never
# used), openssh-server, percona-toolkit (pt-online-schema-change), iproute2 (a second host in a network namespace), git (the
# branch workflow), locales (localedef, for a PostgreSQL speaking German), python3-venv; then the Python packages into .venv. The tests start their own
# servers on loopback and in namespaces of their own.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
[ -x /usr/bin/mariadb-dump ] || missing+=(mariadb-client)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ip >/dev/null || missing+=(iproute2)
command -v git >/dev/null || missing+=(git)
# pt-online-schema-change: the copy of a MariaDB table that cannot be altered online.
command -v pt-online-schema-change >/dev/null || missing+=(percona-toolkit)
# localedef and its sources: a PostgreSQL that answers in German, compiled into its own directory.
{ command -v localedef >/dev/null && [ -e /usr/share/i18n/locales/de_DE ]; } || missing+=(locales)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]}"
    $sudo apt-get update -qq
    # policy-rc.d on most images keeps the packaged services from starting; we never need them.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt

# Any non-zero status fails, including pytest's 5 (no test collected). Two workers (pytest-xdist),
# each with its own throwaway servers; pass -n 0 to run in one process.
exec .venv/bin/python -m pytest -p no:cacheprovider -n 2 "$@" tests
