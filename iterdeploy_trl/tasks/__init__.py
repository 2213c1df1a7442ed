"""Seeded task generation (the generators live in ``domains/<name>/``) and task sets in the IPC layout.

Every task carries a reference plan that VAL accepts, so the pool is solvable by construction.
"""

from iterdeploy_trl.tasks.generate import (
    CPU_SIZES,
    DEFAULT_SIZES,
    SIZE_LIMITS,
    build_task_set,
    draw_distinct,
    generate_task,
    generate_tasks,
    problem_key,
    task_id,
)
from iterdeploy_trl.tasks.taskset import Task, TaskSet, TaskSetError, load_task_set, read_plan, write_task_set

__all__ = [
    "CPU_SIZES",
    "DEFAULT_SIZES",
    "SIZE_LIMITS",
    "Task",
    "TaskSet",
    "TaskSetError",
    "build_task_set",
    "draw_distinct",
    "generate_task",
    "generate_tasks",
    "load_task_set",
    "problem_key",
    "read_plan",
    "task_id",
    "write_task_set",
]
