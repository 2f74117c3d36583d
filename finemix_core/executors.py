"""Choosing an executor from the CLI's `--ray` value: the in-process one (executor.py) or Ray (ray_executor.py).

Its own module so neither executor module imports the other (ray_executor builds on executor; this picks between them).
"""

from __future__ import annotations

from finemix_core.executor import Executor, SequentialExecutor


def make_executor(ray: str | None, cpus_per_task: float = 1.0, retries: int = 2, ship: str = "path") -> Executor:
    """`--ray` as the CLI takes it: None/'' or 'off' → sequential; 'auto' → a local Ray with this machine's cores;
    anything else → the address of a running Ray cluster."""
    if ray is None or ray.strip().lower() in ("", "off", "none"):
        return SequentialExecutor()
    from finemix_core.ray_executor import RayExecutor

    return RayExecutor(ray.strip(), cpus_per_task=cpus_per_task, retries=retries, ship=ship)
