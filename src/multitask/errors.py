"""Errors a user of the library may want to catch, with messages that name what is at fault."""
from __future__ import annotations


def message(e: BaseException) -> str:
    """An exception's message as its raiser wrote it (a KeyError's without the quotes str() adds)."""
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or infinite; `tasks` names the tasks whose losses were not finite."""

    def __init__(self, message: str, tasks: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.tasks = tuple(tasks)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, truncated, foreign, or not matching the model."""


class DistributedError(RuntimeError):
    """A distributed run lost a rank (crashed, killed, or stopped by an error of its own) during a collective."""
