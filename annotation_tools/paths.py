"""File names made from patient data: the one place that turns ids, sites and stems into names.

A DICOM PatientID, an ultrasound table's ``site`` or a file stem is data from outside; pasted
into a path it can climb out of the output folder (``../../x``), replace it (``/abs/path``),
hit a Windows device name (``CON``) or collide with another image's output. Every writer builds
its file names with :func:`safe_name` (one component, nothing else), :func:`unique_name`
(a suffix when two inputs give the same name) or :func:`path_name` (a name unique to an image's
path, so ``siteA/X_LH.dcm`` and ``siteB/X_LH.png`` get two outputs).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, MutableSet
from pathlib import Path, PurePath

__all__ = [
    "path_name",
    "path_names",
    "safe_name",
    "short_hash",
    "unique_name",
    "write_text_atomic",
]

MAX_NAME = 120  # characters; long enough for ids, short of every file system's limit
_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    "CONIN$",
    "CONOUT$",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
}
_UNSAFE = re.compile(r"[^\w.\-]+")  # \w: unicode letters and digits, and "_"


def short_hash(text: str, length: int = 8) -> str:
    """A few hex digits of the SHA-1 of ``text``: a stable suffix, not a security measure."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def safe_name(text: object, *, default: str = "unnamed") -> str:
    """``text`` as one file-name component that stays where it is put.

    Separators, control characters, spaces and anything but letters, digits, ``_ - .`` become
    ``_``; runs of dots (``..``) become ``_``; a leading dot, a Windows device name (``CON``,
    ``com1.txt``) or an empty result gets a ``_`` in front. Too long a name is cut and ends in a
    hash of the whole text, so two long ids stay different.
    """
    raw = str(text)
    name = _UNSAFE.sub("_", raw)
    name = re.sub(r"\.{2,}", "_", name).strip(" ")
    name = name.rstrip(".")  # Windows drops trailing dots: "a." and "a" would collide
    if not name or name.strip("_") == "":
        name = f"_{name}" if name else default
    if name.startswith("."):
        name = f"_{name}"
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        name = f"_{name}"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}_{short_hash(raw)}"
    return name


def unique_name(name: str, taken: MutableSet[str], key: str | None = None) -> str:
    """``name``, or with a suffix when another input already took it; records the result.

    With ``key`` (e.g. the input's path) the suffix is a hash of it, so the same input gets the
    same name whatever else is in the run; otherwise ``_2``, ``_3``, ...
    Case-insensitive, as macOS and Windows file systems are.
    """
    lowered = {t.lower() for t in taken}
    candidate = name
    if candidate.lower() in lowered:
        if key is not None:
            candidate = f"{name}_{short_hash(key)}"
        n = 2
        while candidate.lower() in lowered:
            candidate = f"{name}_{n}"
            n += 1
    taken.add(candidate)
    return candidate


def path_name(path: str | PurePath, root: str | PurePath | None = None) -> str:
    """A file name (no extension) for one input image, from its path relative to ``root``.

    ``root/P001_LH.dcm`` -> ``P001_LH`` (the plain stem, as before); ``root/siteA/X_LH.dcm`` ->
    ``siteA__X_LH``; a path outside ``root`` -> its stem and a hash of the whole path.
    """
    path = PurePath(path)
    rel: PurePath | None = None
    if root is not None:
        try:
            rel = PurePath(Path(path).absolute()).relative_to(PurePath(Path(root).absolute()))
        except ValueError:
            rel = None
    elif not path.is_absolute() and ".." not in path.parts:
        rel = path
    if rel is None:
        return f"{safe_name(path.stem)}_{short_hash(str(path))}"
    parts = [*rel.parent.parts, rel.stem] if rel.parts else [path.stem]
    return "__".join(safe_name(p) for p in parts if p not in ("", "."))


def path_names(
    paths: Iterable[str | PurePath], root: str | PurePath | None = None
) -> dict[str, str]:
    """``str(path) -> name`` for every input, all names different (see :func:`path_name`).

    ``root`` defaults to the folder all inputs share (a flat folder keeps its plain stems).
    Two inputs that still give one name (``X_LH.dcm`` and ``X_LH.png`` in one folder) get a
    hash of their path as a suffix.
    """
    unique = sorted({str(p) for p in paths})
    if root is None and unique:
        try:
            root = os.path.commonpath([str(Path(p).absolute().parent) for p in unique])
        except ValueError:  # different drives
            root = None
    taken: set[str] = set()
    out: dict[str, str] = {}
    for path in unique:
        out[path] = unique_name(path_name(path, root), taken, key=path)
    return out


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so
    a reader (or a job killed mid-write) never leaves or sees half a file: the old file stays
    whole until the new one replaces it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
