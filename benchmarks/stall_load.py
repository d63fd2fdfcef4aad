"""The application's load for the write-stall benchmark (benchmarks/stall.py), run as a process of its own:
`python -m benchmarks.stall_load` with its settings as one JSON line on standard input (the password
among them, so never on its command line).

Every PERIOD seconds it makes one single-row write to the table, an INSERT and an UPDATE of a random row
in turn, each in its own transaction, and writes one line per write to the settings' `out` file: the
write's start (time.monotonic, which every process on the machine shares), its latency in seconds, and
what it was. A write that waits longer than a period delays the next, which starts at once after it (no
burst to catch up). It says `ready` on standard output after its first write, and stops on SIGTERM or
after the settings' `seconds`, whichever comes first.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time

PERIOD = 0.005
LONG_WAIT = 3600  # seconds a write may wait for a lock: it must wait out a copy, not give up first


def connect(settings: dict):
    """An autocommit connection as the application's user, its lock waits long."""
    if settings["kind"] == "mariadb":
        import pymysql

        connection = pymysql.connect(
            host=settings["host"],
            port=settings["port"],
            user=settings["user"],
            password=settings["password"],
            database=settings["database"],
            autocommit=True,
        )
        with connection.cursor() as cursor:
            cursor.execute(f"SET SESSION lock_wait_timeout = {LONG_WAIT}, innodb_lock_wait_timeout = {LONG_WAIT}")
        return connection
    import psycopg

    connection = psycopg.connect(
        host=settings["host"],
        port=settings["port"],
        user=settings["user"],
        password=settings["password"],
        dbname=settings["database"],
        autocommit=True,
        prepare_threshold=None,  # no server-side plans: a type change would invalidate them
    )
    connection.execute("SET lock_timeout = 0")
    connection.execute("SET statement_timeout = 0")
    return connection


def main() -> int:
    settings = json.loads(sys.stdin.readline())
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    table, rows = settings["table"], settings["rows"]
    insert = f"INSERT INTO {table} (customer_id, total, note, created) VALUES (%s, %s, 'written by the load', now())"
    update = f"UPDATE {table} SET total = total + 1 WHERE id = %s"
    connection = connect(settings)
    deadline = time.monotonic() + settings["seconds"]
    written = 0
    with open(settings["out"], "w") as out:
        next_start = time.monotonic()
        while not stopping and time.monotonic() < deadline:
            pause = next_start - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            started = time.monotonic()
            kind = "insert" if written % 2 == 0 else "update"
            try:
                with connection.cursor() as cursor:
                    if kind == "insert":
                        cursor.execute(insert, (random.randint(1, 1000), random.randint(0, 996)))
                    else:
                        cursor.execute(update, (random.randint(1, rows),))
            except Exception as error:  # noqa: BLE001 (recorded and counted; the load goes on)
                kind = f"error {type(error).__name__}: {str(error).splitlines()[0][:200]}"
                connection.close()
                connection = connect(settings)
            latency = time.monotonic() - started
            out.write(f"{started:.6f} {latency:.6f} {kind}\n")
            written += 1
            if written == 1:
                out.flush()
                print("ready", flush=True)
            elif written % 200 == 0:
                out.flush()
            next_start = max(started + PERIOD, time.monotonic())
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
