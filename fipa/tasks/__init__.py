"""Task families. Modules register themselves; heavy ones (DeepXDE, torchvision) load lazily."""

from fipa.tasks.base import TASKS, Task

__all__ = ["TASKS", "Task", "build_task"]


def build_task(name: str, params, seed: int, dtype):
    """Instantiate a registered task with validated params."""
    return TASKS.get(name, key="task.name")(params, seed=seed, dtype=dtype)
