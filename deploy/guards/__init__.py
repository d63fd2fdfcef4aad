"""The guards: what stops or guards a command that changes a database.

refusals   checks that stop a command before it changes anything
lock       one migration at a time per database (the dialect says how: GET_LOCK, an advisory lock, a file lock)
timeouts   short lock waits with retries, and the open transactions that would block us
runlog     the log of every run, shown by db.status; a half-applied revision blocks migrations until resolved
Beside them: the questions and Ctrl-C (deploy/console.py), backups and restore (deploy/backups.py), the
lint and the half-applied diagnosis (deploy/review/).
What differs by database kind is not here: each guard asks the database's dialect (deploy/dialects).
"""
