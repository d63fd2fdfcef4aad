"""What reads revisions and failed runs, without changing anything.

lint       risky operations in pending revisions, read from Alembic's operation objects
diagnosis  what a revision that failed part way left, told from the run
"""
