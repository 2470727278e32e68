"""Every keyboard shortcut of the RA joints dock, in one registry.

The dock binds these on its joint-centre layer and shows :func:`shortcuts_text` under the
annotation buttons, so what a person reads is what the keys do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["KEYBINDINGS", "KeyBinding", "bind_keys", "shortcuts_text"]


@dataclass(frozen=True)
class KeyBinding:
    key: str  # napari key name (lower case letter, "Delete", "Control-z", ...)
    action: str  # name of the dock action it runs
    label: str  # what it does, for the help text


KEYBINDINGS: tuple[KeyBinding, ...] = (
    KeyBinding("n", "next_joint", "next joint"),
    KeyBinding("b", "previous_joint", "previous joint"),
    KeyBinding("v", "skip_joint", "not visible (skip)"),
    KeyBinding("a", "accept", "accept selected predictions"),
)
MOUSE_HINTS = ("drag a point to correct it", "Delete removes the selected points")


def shortcuts_text() -> str:
    """One line of help: every key, then the mouse gestures."""
    keys = [f"{b.key.upper()} {b.label}" for b in KEYBINDINGS]
    return " · ".join([*keys, *MOUSE_HINTS])


def bind_keys(layer: Any, actions: Mapping[str, Callable[[], Any]]) -> None:
    """Bind every registered key on ``layer`` to its action (napari's public ``bind_key``)."""
    for binding in KEYBINDINGS:
        action = actions[binding.action]
        layer.bind_key(binding.key, lambda _layer, run=action: run(), overwrite=True)
