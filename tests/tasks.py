"""Counting the tasks of a Trio run: for tests that show a feature costs no task per user, and
for the pool benchmark's tasks-per-backend figure."""

from __future__ import annotations

import trio


def count_tasks() -> int:
    """Every task of the current Trio run, the root task included."""
    root = trio.lowlevel.current_root_task()
    assert root is not None  # called inside trio.run
    todo = [root]
    seen = 0
    while todo:
        task = todo.pop()
        seen += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return seen
