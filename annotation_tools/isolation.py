"""One bad file costs only its own result: the per-image / per-patient guard of batch jobs.

A batch of a clinical cohort meets files no test foresaw (an image that is no hand or foot, a
broken DICOM, a decoder bug). :func:`isolated` turns any error inside its block into one
``(file, reason)`` entry and lets the batch go on; only a person's stop (``KeyboardInterrupt``,
:class:`Cancelled`) and ``BaseException``s such as ``SystemExit`` end the job. A
``MemoryError`` is caught: numpy raises it for one image too large to allocate, which is that
image's problem.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["Cancelled", "isolated", "reason_of"]


class Cancelled(Exception):
    """The job was cancelled between two images; what was written before stays.

    Not a ``RuntimeError``: Qt workers (superqt) take those for a deleted worker and drop
    them silently."""


def reason_of(exc: BaseException) -> str:
    """One line for a summary: the library's own errors as they are, others with their type."""
    from .imageio import ImageReadError

    if isinstance(exc, ImageReadError):
        return exc.reason
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def isolated(
    failures: list[tuple[str, str]] | None, item: str | Path | Any, what: str = ""
) -> Iterator[None]:
    """Run the block; on an error append ``(str(item), reason)`` to ``failures`` and go on.

    ``failures=None`` lets errors through (a caller that wants the old, strict behaviour).
    """
    try:
        yield
    except Cancelled:
        raise
    except Exception as exc:
        if failures is None:
            raise
        reason = reason_of(exc)
        failures.append((str(item), f"{what}: {reason}" if what else reason))
