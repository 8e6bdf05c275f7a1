"""Errors a user of the library may want to catch, with messages that name what is at fault."""
from __future__ import annotations


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or infinite; `tasks` names the tasks whose losses were not finite."""

    def __init__(self, message: str, tasks: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.tasks = tuple(tasks)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, truncated, foreign, or not matching the model."""
