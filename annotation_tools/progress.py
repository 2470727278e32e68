"""Progress shared by long library calls (predict, import) and the dock's worker threads.

A job is a generator that yields :class:`Progress` and returns its result, so that the dock
can run it in a napari worker (each yield moves the progress bar) and the CLI can drive it
with :func:`run_job`. Kept free of torch so that light modules (``intake``) can use it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

from .isolation import Cancelled

__all__ = ["CancelToken", "Progress", "run_job"]

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of a job: ``done`` of ``total`` units (images, pairs) and what is happening."""

    done: int
    total: int
    message: str


class CancelToken:
    """Set by the person (the dock's Cancel, Ctrl+C); jobs check it between images."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("prediction cancelled; results written so far are kept")


def run_job(
    job: Generator[Progress, None, T], on_progress: Callable[[Progress], None] | None = None
) -> T:
    """Drive an ``iter_*`` job to its end, handing each :class:`Progress` to ``on_progress``."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(event)
