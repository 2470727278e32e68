"""Every keyboard shortcut of the RA joints dock, in one registry.

The dock binds these on its joint-centre layer and shows :func:`shortcuts_text` under the
annotation buttons, so what a person reads is what the keys do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["KEYBINDINGS", "KeyBinding", "bind_keys", "key_text", "shortcuts_text"]


@dataclass(frozen=True)
class KeyBinding:
    key: str  # napari key name (lower case letter, "Delete", "Control-z", ...)
    action: str  # name of the dock action it runs
    label: str  # what it does, for the help text


KEYBINDINGS: tuple[KeyBinding, ...] = (
    KeyBinding("n", "next_joint", "next joint"),
    KeyBinding("b", "previous_joint", "previous joint"),
    KeyBinding("v", "skip_joint", "not visible (skip)"),
    KeyBinding("a", "accept", "accept selected proposals (all if none selected)"),
    KeyBinding("r", "reject", "reject selected proposals"),
    KeyBinding("Control-z", "undo", "undo"),
    KeyBinding("Control-Shift-z", "redo", "redo"),
)
MOUSE_HINTS = (
    "drag a point or a proposal to correct it",
    "Delete removes the selected points (the guide returns to them)",
)


def shortcuts_text() -> str:
    """One line of help: every key, then the mouse gestures."""
    keys = [f"{key_text(b.key)} {b.label}" for b in KEYBINDINGS]
    return " · ".join([*keys, *MOUSE_HINTS])


def key_text(key: str) -> str:
    """``Control-Shift-z`` -> ``Control+Shift+Z``: how the help text writes a key."""
    return "+".join(part.capitalize() if len(part) > 1 else part.upper() for part in key.split("-"))


def bind_keys(layer: Any, actions: Mapping[str, Callable[[], Any]]) -> None:
    """Bind every registered key on ``layer`` to its action (napari's public ``bind_key``)."""
    for binding in KEYBINDINGS:
        action = actions[binding.action]
        layer.bind_key(binding.key, lambda _layer, run=action: run(), overwrite=True)
