"""The annotation store: one SQLite file per project, the single source of truth.

The plugin writes here, the exporters and bundles read here. Three rules shape the design:

* **Nothing is overwritten.** Every change to a joint centre, polygon, score or ROI appends a new
  *revision* with its provenance (``human`` annotator, ``model`` bundle + version + weights
  hash, or ``phantom`` generator). A deletion is a revision with status ``deleted``; "accept" is
  a human revision that ``confirms`` a model revision. Retraining and error analysis need the
  whole history of what a model said and what a person changed.
* **Committed means safe.** Writes happen in transactions (``BEGIN IMMEDIATE``) on a WAL
  database, so a process killed mid-write loses only the unfinished transaction, and readers in
  other processes keep reading while one writer writes.
* **Parameters only.** Values always travel as SQL parameters; table and column names come from
  this module's constants, never from callers.

Coordinates are image pixels of the original file as ``(x, y)`` = (column, row), pixel centres on
integers. (napari uses ``(row, column)``; the plugin converts.)
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .imageio import file_sha256
from .vocabulary import (
    DREAM_TOTAL_COLUMNS,
    Limb,
    ScoreType,
    dream_columns,
    dream_row,
    get_joint,
    parse_dream_column,
    write_dream_csv,
)

__all__ = [
    "SCHEMA_VERSION",
    "STORE_FILENAME",
    "AnnotationStore",
    "ImageRecord",
    "Provenance",
    "Resolved",
    "Revision",
    "StoreError",
    "StoreLockedError",
    "StoreVersionError",
]

SCHEMA_VERSION = 3
STORE_FILENAME = "ra_joints.sqlite"
IMAGE_JSON_FORMAT = "napari-ra-joints/image-annotations"
# 2: an ultrasound image's document carries its pair (both ROI boxes and the pair's grades,
# a model's with its grade sets); version 1 documents (no pair) still import.
IMAGE_JSON_VERSION = 2
SOURCES = ("human", "model", "phantom")
TRAINING_SOURCES = ("human", "phantom")
MODALITIES = ("radiograph", "us_greyscale", "us_doppler")
US_GRADES = ("synovial_hypertrophy", "vascularity", "combined")  # the outputs of a pair
# v3: a model's ultrasound grades keep one conformal set per output and the coverage asked.
US_SET_COLUMNS = (
    *(f"{grade}_set_{end}" for grade in US_GRADES for end in ("low", "high")),
    "coverage",
)


class StoreError(RuntimeError):
    """Something about the store file or a write to it is wrong; the message says what."""


class StoreVersionError(StoreError):
    """The store was written by a newer napari-ra-joints than this one."""


class StoreLockedError(StoreError):
    """Another process holds the write lock longer than we are willing to wait."""


@dataclass(frozen=True)
class Provenance:
    """Who or what produced an annotation."""

    source: str  # human | model | phantom
    author: str  # annotator id, bundle name or generator name
    version: str = ""  # bundle / generator version
    weights_hash: str = ""  # sha256 of the model weights (model only)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"provenance source must be one of {SOURCES}, got {self.source!r}")
        if not str(self.author).strip():
            raise ValueError("provenance needs an author (annotator id, bundle or generator name)")

    @classmethod
    def human(cls, annotator: str) -> Provenance:
        return cls("human", annotator)

    @classmethod
    def model(cls, bundle: str, version: str, weights_hash: str) -> Provenance:
        return cls("model", bundle, version, weights_hash)

    @classmethod
    def phantom(cls, generator: str = "annotation_tools.phantoms", version: str = "") -> Provenance:
        return cls("phantom", generator, version)


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: str
    sha256: str
    patient_id: str
    limb: str | None
    modality: str
    width: int | None
    height: int | None
    visit: str = ""


@dataclass(frozen=True)
class Revision:
    """One revision of one annotation, with its provenance. ``value`` depends on the kind."""

    id: int
    kind: str
    image_id: int
    key: str  # joint id, "narrowing:<joint id>", "roi" or "us_score"
    revision: int
    status: str  # present | not_visible | deleted
    value: dict[str, Any]
    source: str
    author: str
    version: str
    weights_hash: str
    created_at: str
    confirms: int | None = None

    @property
    def is_model(self) -> bool:
        return self.source == "model"

    @property
    def grade_sets(self) -> dict[str, tuple[int, int]]:
        """The model's conformal sets ``{output: (low, high)}`` at ``value["coverage"]``:
        per ultrasound output of a ``us_score``, under the score type of a ``score``; empty
        for a person's revision or a model without a calibration (readers need not know the
        column names)."""
        return _grade_sets(self.kind, self.value)


@dataclass(frozen=True)
class Resolved:
    """One annotation as a reader sees it: the committed revision and the model's proposal.

    The resolution rule (``docs/store.md``): the newest human or phantom-truth revision is
    the value when one exists; a model revision is a *proposal* and is the value only where no
    person (or truth) has said anything. A person accepts a proposal with a human revision that
    ``confirms`` it, so a model can never hide a person's work.
    """

    committed: Revision | None  # newest human / phantom revision, any status
    proposal: Revision | None  # newest model revision, any status

    @classmethod
    def of(cls, history: Sequence[Revision]) -> Resolved:
        """The resolution of one annotation from its revisions, oldest first."""
        return cls(
            next((r for r in reversed(history) if not r.is_model), None),
            next((r for r in reversed(history) if r.is_model), None),
        )

    @property
    def current(self) -> Revision | None:
        """The revision that counts (None when it is a deletion)."""
        rev = self.committed or self.proposal
        return None if rev is None or rev.status == "deleted" else rev

    @property
    def pending(self) -> Revision | None:
        """The proposal still waiting for a person: newer than the committed revision, not
        accepted, not a deletion."""
        prop, done = self.proposal, self.committed
        if prop is None or prop.status == "deleted":
            return None
        if done is not None and (done.revision > prop.revision or done.confirms == prop.id):
            return None
        return prop

    @property
    def state(self) -> str:
        """``committed`` (a person or the truth decided), ``proposed`` (only the model spoke),
        ``deleted`` or ``empty``."""
        if self.committed is not None:
            return "deleted" if self.committed.status == "deleted" else "committed"
        if self.proposal is not None and self.proposal.status != "deleted":
            return "proposed"
        return "empty"


# Each annotation kind: its table, the columns that identify *what* is annotated (the revision
# chain), and the columns holding the value.
@dataclass(frozen=True)
class _Kind:
    table: str
    owner: str  # image_id or pair_id
    key_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    statuses: tuple[str, ...] = ("present", "deleted")
    set_columns: tuple[str, ...] = ()  # a model's conformal set: never copied to a person's


_KINDS = {
    "centre": _Kind(
        "joint_centres",
        "image_id",
        ("joint_id",),
        ("x", "y", "confidence"),
        ("present", "not_visible", "deleted"),
    ),
    "polygon": _Kind("joint_space_polygons", "image_id", ("joint_id",), ("vertices",)),
    "score": _Kind(
        "joint_scores",
        "image_id",
        ("joint_id", "score_type"),
        ("value", "uncertainty", "set_low", "set_high", "coverage"),
        set_columns=("set_low", "set_high", "coverage"),
    ),
    "roi": _Kind("us_rois", "image_id", (), ("x0", "y0", "x1", "y1")),
    "us_score": _Kind(
        "us_scores",
        "pair_id",
        (),
        (*US_GRADES, "uncertainty", *US_SET_COLUMNS),
        set_columns=US_SET_COLUMNS,
    ),
}

_REVISION_COLUMNS = """
    revision INTEGER NOT NULL CHECK (revision >= 1),
    status TEXT NOT NULL,
    provenance_id INTEGER NOT NULL REFERENCES provenance(id),
    confirms INTEGER,
    created_at TEXT NOT NULL
"""

_SCHEMA_V1 = f"""
CREATE TABLE provenance (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL CHECK (source IN ('human', 'model', 'phantom')),
    author TEXT NOT NULL,
    version TEXT NOT NULL DEFAULT '',
    weights_hash TEXT NOT NULL DEFAULT '',
    UNIQUE (source, author, version, weights_hash)
);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    visit TEXT NOT NULL DEFAULT '',
    limb TEXT CHECK (limb IN ('LH', 'RH', 'LF', 'RF')),
    modality TEXT NOT NULL CHECK (modality IN ('radiograph', 'us_greyscale', 'us_doppler')),
    width INTEGER,
    height INTEGER,
    added_at TEXT NOT NULL,
    CHECK (modality != 'radiograph' OR limb IS NOT NULL)
);
CREATE UNIQUE INDEX one_radiograph_per_limb ON images (patient_id, visit, limb)
    WHERE modality = 'radiograph';
CREATE TABLE us_pairs (
    id INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL,
    site TEXT NOT NULL,
    greyscale_image_id INTEGER NOT NULL UNIQUE REFERENCES images(id),
    doppler_image_id INTEGER NOT NULL UNIQUE REFERENCES images(id)
);
CREATE TABLE joint_centres (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id),
    joint_id TEXT NOT NULL,
    x REAL, y REAL, confidence REAL,
    {_REVISION_COLUMNS},
    UNIQUE (image_id, joint_id, revision)
);
CREATE TABLE joint_space_polygons (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id),
    joint_id TEXT NOT NULL,
    vertices TEXT,
    {_REVISION_COLUMNS},
    UNIQUE (image_id, joint_id, revision)
);
CREATE TABLE joint_scores (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id),
    joint_id TEXT NOT NULL,
    score_type TEXT NOT NULL CHECK (score_type IN ('narrowing', 'erosion')),
    value REAL, uncertainty REAL,
    {_REVISION_COLUMNS},
    UNIQUE (image_id, joint_id, score_type, revision)
);
CREATE TABLE us_rois (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id),
    x0 REAL, y0 REAL, x1 REAL, y1 REAL,
    {_REVISION_COLUMNS},
    UNIQUE (image_id, revision)
);
CREATE TABLE us_scores (
    id INTEGER PRIMARY KEY,
    pair_id INTEGER NOT NULL REFERENCES us_pairs(id),
    synovial_hypertrophy INTEGER, vascularity INTEGER, combined INTEGER, uncertainty REAL,
    {_REVISION_COLUMNS},
    UNIQUE (pair_id, revision)
);
"""

# v2: a model grade keeps its conformal grade set (set_low..set_high at ``coverage``) in its
# own revision, so a set always belongs to the model version that made it (issue #24).
_SCHEMA_V2 = """
ALTER TABLE joint_scores ADD COLUMN set_low INTEGER;
ALTER TABLE joint_scores ADD COLUMN set_high INTEGER;
ALTER TABLE joint_scores ADD COLUMN coverage REAL;
"""

# v3: the same for ultrasound grades - one set per output (SH, vascularity, combined) and the
# coverage, on the model revision that made them (issue #24). NULL on every older row.
_SCHEMA_V3 = """
ALTER TABLE us_scores ADD COLUMN synovial_hypertrophy_set_low INTEGER;
ALTER TABLE us_scores ADD COLUMN synovial_hypertrophy_set_high INTEGER;
ALTER TABLE us_scores ADD COLUMN vascularity_set_low INTEGER;
ALTER TABLE us_scores ADD COLUMN vascularity_set_high INTEGER;
ALTER TABLE us_scores ADD COLUMN combined_set_low INTEGER;
ALTER TABLE us_scores ADD COLUMN combined_set_high INTEGER;
ALTER TABLE us_scores ADD COLUMN coverage REAL;
"""

# MIGRATIONS[n] upgrades a store from schema n to n + 1. Append, never edit.
MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1, 1: _SCHEMA_V2, 2: _SCHEMA_V3}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class AnnotationStore:
    """Read and write one project's annotations.

    Open with :meth:`open` (a project folder or a ``.sqlite`` file). One object may be shared
    between threads; writes are serialised, and each process should hold its own object.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = True,
        timeout: float = 10.0,
        synchronous: str | None = None,
    ):
        path = Path(path).expanduser().resolve()
        if path.is_dir() or (not path.suffix and not path.exists()):
            path = path / STORE_FILENAME
        self.path = path
        self.root = path.parent  # absolute, so resolve() gives paths valid from any cwd
        self._lock = threading.RLock()
        self._depth = 0
        self._content: dict[int, tuple[tuple[int, int], str | None]] = {}
        self._imported_at: str | None = None  # an imported revision keeps its recorded time
        sync = _synchronous(synchronous)
        if not path.exists() and not create:
            raise StoreError(f"no annotation store at {path}")
        if path.exists() and path.stat().st_size > 0:
            _inspect(path)  # read-only: a foreign, newer or damaged file is refused unchanged
        elif path.exists() and not create:
            raise StoreError(
                f"{path} is an empty file, not an annotation store (it was left as it is)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(
                str(path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            # NORMAL in WAL mode: a killed process loses nothing committed; a power cut may
            # lose the last commits (never corrupts). FULL also survives a power cut.
            level = sync or ("NORMAL" if mode == "wal" else "FULL")
            self._conn.execute(f"PRAGMA synchronous = {level}")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(Exception):
                self._conn.close()
            raise self._translate(exc, "open") from exc

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        create: bool = True,
        synchronous: str | None = None,
        timeout: float = 10.0,
    ) -> AnnotationStore:
        """``timeout``: how long a write waits for another process's lock before
        :class:`StoreLockedError` (the dock waits briefly and retries on its own)."""
        return cls(path, create=create, synchronous=synchronous, timeout=timeout)

    @classmethod
    @contextlib.contextmanager
    def using(cls, store: AnnotationStore | str | Path) -> Iterator[AnnotationStore]:
        """An open store as it is (left open), or a project path opened for this block only.

        Lets one caller (the prediction service) open the store once and hand it to every
        writer, while scripts can still pass a path.
        """
        if isinstance(store, AnnotationStore):
            yield store
            return
        with cls.open(store, create=False) as opened:
            yield opened

    # ------------------------------------------------------------------ plumbing

    def set_lock_wait(self, seconds: float) -> None:
        """How long writes wait for another process's lock from now on (see ``timeout``)."""
        with self._lock:
            self._conn.execute(f"PRAGMA busy_timeout = {int(float(seconds) * 1000)}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _translate(self, exc: sqlite3.DatabaseError, action: str) -> StoreError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return StoreLockedError(
                f"{self.path} is locked by another process ({action}); "
                "close the other napari/ra-joints session or try again"
            )
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return StoreError(
                f"{self.path} is damaged ({text}); restore it from a backup "
                "(or try: sqlite3 <file> .recover)"
            )
        return StoreError(f"{self.path}: {action} failed ({text})")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside commit together or not at all. Nested calls join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise self._translate(exc, "begin write") from exc
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.OperationalError as exc:
                    self._conn.execute("ROLLBACK")
                    raise self._translate(exc, "commit") from exc
            finally:
                self._depth = 0

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:  # locked, or a damaged page met while reading
                raise self._translate(exc, "read") from exc

    @property
    def schema_version(self) -> int:
        rows = self._query("SELECT MAX(version) AS v FROM schema_version")
        return int(rows[0]["v"] or 0)

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER NOT NULL, applied_at TEXT NOT NULL)"
        )
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{self.path} has schema version {current}, but this napari-ra-joints "
                f"understands up to {SCHEMA_VERSION}; upgrade napari-ra-joints to open it "
                "(the file was not changed)"
            )
        if current == SCHEMA_VERSION:
            return
        if current > 0:  # keep a copy of the old store before changing it
            backup = self.path.with_name(f"{self.path.name}.v{current}.bak")
            with sqlite3.connect(str(backup)) as target:
                conn.backup(target)
        with self.transaction():
            for version in range(current, SCHEMA_VERSION):
                for statement in _split_sql(MIGRATIONS[version]):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version + 1, _now()),
                )

    # ------------------------------------------------------------------ images

    def _relative(self, path: str | Path) -> str:
        path = Path(path)
        if not path.is_absolute():
            path = (self.root / path).resolve()
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return path.resolve().as_posix()

    def resolve(self, image: ImageRecord | str) -> Path:
        """Absolute path of an image on disk."""
        rel = image.path if isinstance(image, ImageRecord) else image
        path = Path(rel)
        return path if path.is_absolute() else self.root / path

    def add_image(
        self,
        path: str | Path,
        *,
        patient_id: str,
        modality: str = "radiograph",
        limb: Limb | str | None = None,
        visit: str = "",
        width: int | None = None,
        height: int | None = None,
        sha256: str | None = None,
    ) -> int:
        """Register an image (idempotent for the same file); returns its id.

        A file whose content changed since it was registered is refused: its annotations
        would no longer match the pixels.
        """
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        limb_value = Limb.parse(limb).value if limb is not None else None
        if modality == "radiograph" and limb_value is None:
            raise ValueError(f"radiograph {path} needs a limb (LH, RH, LF or RF)")
        if not str(patient_id).strip():
            raise ValueError(f"image {path} needs a patient id")
        rel = self._relative(path)
        digest = sha256 or file_sha256(self.resolve(rel))
        existing = self._query("SELECT * FROM images WHERE path = ?", (rel,))
        if existing:
            row = existing[0]
            if row["sha256"] != digest:
                raise StoreError(
                    f"{rel} is already in the store with different content "
                    "(the file changed on disk); register the new file under a new name"
                )
            return int(row["id"])
        with self.transaction() as conn:
            try:
                cursor = conn.execute(
                    "INSERT INTO images (path, sha256, patient_id, visit, limb, modality, "
                    "width, height, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (rel, digest, patient_id, visit, limb_value, modality, width, height, _now()),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(
                    f"cannot add {rel}: patient {patient_id!r} visit {visit!r} already has a "
                    f"{limb_value} radiograph ({exc})"
                ) from exc
            return int(cursor.lastrowid)

    def add_us_pair(self, greyscale_image_id: int, doppler_image_id: int, *, site: str) -> int:
        """Link a grey-scale and a Doppler image of the same joint; returns the pair id."""
        grey, doppler = self.image(greyscale_image_id), self.image(doppler_image_id)
        if grey.modality != "us_greyscale" or doppler.modality != "us_doppler":
            raise ValueError(
                f"a pair needs a us_greyscale and a us_doppler image, got {grey.modality} "
                f"({grey.path}) and {doppler.modality} ({doppler.path})"
            )
        if grey.patient_id != doppler.patient_id:
            raise ValueError(f"{grey.path} and {doppler.path} belong to different patients")
        rows = self._query(
            "SELECT id FROM us_pairs WHERE greyscale_image_id = ? AND doppler_image_id = ?",
            (greyscale_image_id, doppler_image_id),
        )
        if rows:
            return int(rows[0]["id"])
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO us_pairs (patient_id, site, greyscale_image_id, doppler_image_id) "
                "VALUES (?, ?, ?, ?)",
                (grey.patient_id, site, greyscale_image_id, doppler_image_id),
            )
            return int(cursor.lastrowid)

    def image(self, image_id: int) -> ImageRecord:
        rows = self._query("SELECT * FROM images WHERE id = ?", (int(image_id),))
        if not rows:
            raise KeyError(f"no image with id {image_id} in {self.path}")
        return _image_record(rows[0])

    def find_image(self, path: str | Path) -> ImageRecord | None:
        rows = self._query("SELECT * FROM images WHERE path = ?", (self._relative(path),))
        return _image_record(rows[0]) if rows else None

    def images(
        self,
        *,
        patient_id: str | None = None,
        limb: Limb | str | None = None,
        modality: str | None = None,
    ) -> list[ImageRecord]:
        sql, params = "SELECT * FROM images WHERE 1 = 1", []
        if patient_id is not None:
            sql += " AND patient_id = ?"
            params.append(patient_id)
        if limb is not None:
            sql += " AND limb = ?"
            params.append(Limb.parse(limb).value)
        if modality is not None:
            sql += " AND modality = ?"
            params.append(modality)
        return [_image_record(r) for r in self._query(sql + " ORDER BY patient_id, id", params)]

    def patients(self) -> list[str]:
        return [
            r["patient_id"]
            for r in self._query("SELECT DISTINCT patient_id FROM images ORDER BY patient_id")
        ]

    def us_pairs(self, patient_id: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM us_pairs", []
        if patient_id is not None:
            sql, params = sql + " WHERE patient_id = ?", [patient_id]
        return [dict(r) for r in self._query(sql + " ORDER BY patient_id, id", params)]

    def content_problem(self, image: ImageRecord | int) -> str | None:
        """Why an image's file no longer matches the store (missing, or other content), else None.

        The sha256 recorded at registration is compared with the file; annotations of a file
        whose pixels were swapped would train or score the wrong patient. Hashed once per
        image per open store (again only if the file's size or mtime changes).
        """
        record = image if isinstance(image, ImageRecord) else self.image(image)
        path = self.resolve(record)
        try:
            stat = path.stat()
        except OSError:
            return f"{path} is missing on disk (registered as {record.path})"
        key = (stat.st_size, stat.st_mtime_ns)
        cached = self._content.get(record.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        problem = None
        if file_sha256(path) != record.sha256:
            problem = (
                f"{path} changed since it was registered (sha256 differs): left out until it "
                f"is re-registered (AnnotationStore.reregister_image({record.id}) or "
                f"ra-joints reregister --project {self.root} --image {record.path})"
            )
        self._content[record.id] = (key, problem)
        return problem

    def reregister_image(self, image_id: int) -> ImageRecord:
        """Accept an image's current content: record its new sha256 (annotations are kept).

        For a file that was re-saved or re-exported with the same pixels, or whose annotations
        a person has checked against the new content; until then it is left out of export and
        prediction.
        """
        record = self.image(image_id)
        digest = file_sha256(self.resolve(record))
        with self.transaction() as conn:
            conn.execute("UPDATE images SET sha256 = ? WHERE id = ?", (digest, record.id))
        self._content.pop(record.id, None)
        return self.image(record.id)

    # ------------------------------------------------------------------ revisions (generic)

    def _provenance_id(self, conn: sqlite3.Connection, prov: Provenance) -> int:
        conn.execute(
            "INSERT OR IGNORE INTO provenance (source, author, version, weights_hash) "
            "VALUES (?, ?, ?, ?)",
            (prov.source, prov.author, prov.version, prov.weights_hash),
        )
        row = conn.execute(
            "SELECT id FROM provenance WHERE source = ? AND author = ? AND version = ? "
            "AND weights_hash = ?",
            (prov.source, prov.author, prov.version, prov.weights_hash),
        ).fetchone()
        return int(row[0])

    def _append(
        self,
        kind: str,
        owner_id: int,
        key: dict[str, Any],
        values: dict[str, Any],
        provenance: Provenance,
        status: str = "present",
        confirms: int | None = None,
    ) -> int:
        spec = _KINDS[kind]
        if status not in spec.statuses:
            raise ValueError(f"status of a {kind} must be one of {spec.statuses}, got {status!r}")
        where = " AND ".join(f"{c} = ?" for c in (spec.owner, *spec.key_columns))
        key_values = [owner_id, *(key[c] for c in spec.key_columns)]
        columns = [spec.owner, *spec.key_columns, *spec.value_columns]
        columns += ["revision", "status", "provenance_id", "confirms", "created_at"]
        with self.transaction() as conn:
            revision = conn.execute(
                f"SELECT COALESCE(MAX(revision), 0) + 1 FROM {spec.table} WHERE {where}",
                key_values,
            ).fetchone()[0]
            row = [
                *key_values,
                *(values.get(c) for c in spec.value_columns),
                revision,
                status,
                self._provenance_id(conn, provenance),
                confirms,
                self._imported_at or _now(),
            ]
            conn.execute(
                f"INSERT INTO {spec.table} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                row,
            )
            return int(revision)

    def _revisions(
        self,
        kind: str,
        owner_id: int,
        *,
        key: dict[str, Any] | None = None,
        sources: Iterable[str] | None = None,
        latest_only: bool = True,
        include_deleted: bool = False,
        authors: Iterable[str] | None = None,
    ) -> list[Revision]:
        spec = _KINDS[kind]
        sql = (
            f"SELECT t.*, p.source, p.author, p.version, p.weights_hash FROM {spec.table} t "
            f"JOIN provenance p ON p.id = t.provenance_id WHERE t.{spec.owner} = ?"
        )
        params: list[Any] = [int(owner_id)]
        for column, value in (key or {}).items():
            if column not in spec.key_columns:
                raise ValueError(f"{column!r} is not a key of {kind}")
            sql += f" AND t.{column} = ?"
            params.append(value)
        if sources is not None:
            sources = list(sources)
            bad = set(sources) - set(SOURCES)
            if bad:
                raise ValueError(f"unknown provenance source(s) {sorted(bad)}")
            sql += f" AND p.source IN ({', '.join('?' * len(sources))})"
            params += sources
        if authors is not None:
            authors = _authors(authors)
            sql += f" AND p.author IN ({', '.join('?' * len(authors))})"
            params += authors
        if latest_only:
            # The resolution rule: a human / phantom revision outranks every model revision,
            # then the newest wins (see Resolved).
            partition = ", ".join(f"q.{c}" for c in spec.key_columns) or f"q.{spec.owner}"
            sql = (
                f"SELECT * FROM (SELECT q.*, ROW_NUMBER() OVER (PARTITION BY {partition} "
                "ORDER BY CASE q.source WHEN 'model' THEN 1 ELSE 0 END, q.revision DESC) "
                f"AS rn FROM ({sql}) q) WHERE rn = 1"
            )
        order = ", ".join((*spec.key_columns, "revision"))
        rows = self._query(f"{sql} ORDER BY {order}", params)
        out = [_revision(kind, spec, r) for r in rows]
        if not include_deleted:
            out = [r for r in out if r.status != "deleted"]
        return out

    # ------------------------------------------------------------------ joint centres

    def _check_joint(self, image_id: int, joint_id: str) -> None:
        image = self.image(image_id)
        joint = get_joint(joint_id)
        if image.modality != "radiograph":
            raise ValueError(f"{image.path} is {image.modality}, not a radiograph")
        if joint.limb.value != image.limb:
            raise ValueError(
                f"joint {joint_id} belongs to {joint.limb.value} but {image.path} is a "
                f"{image.limb} radiograph"
            )

    def set_centre(
        self,
        image_id: int,
        joint_id: str,
        xy: tuple[float, float] | None,
        provenance: Provenance,
        *,
        confidence: float | None = None,
        status: str = "present",
        confirms: int | None = None,
    ) -> int:
        """Record a joint centre (a new revision); ``status="not_visible"`` needs no point."""
        self._check_joint(image_id, joint_id)
        if status == "present":
            if xy is None or not all(math.isfinite(float(v)) for v in xy):
                raise ValueError(f"{joint_id}: a present joint needs finite (x, y), got {xy}")
            values = {"x": float(xy[0]), "y": float(xy[1]), "confidence": confidence}
        else:
            values = {"confidence": confidence}
        return self._append(
            "centre", image_id, {"joint_id": joint_id}, values, provenance, status, confirms
        )

    def delete_centre(self, image_id: int, joint_id: str, provenance: Provenance) -> int:
        self._check_joint(image_id, joint_id)
        return self._append("centre", image_id, {"joint_id": joint_id}, {}, provenance, "deleted")

    def centres(
        self, image_id: int, *, sources: Iterable[str] | None = None
    ) -> dict[str, Revision]:
        """The resolved centre of every joint: the newest human or phantom revision, else the
        newest model proposal (see :class:`Resolved`); with ``sources``, the newest of those."""
        return {r.key: r for r in self._revisions("centre", image_id, sources=sources)}

    def centre_history(self, image_id: int, joint_id: str) -> list[Revision]:
        return self._revisions(
            "centre", image_id, key={"joint_id": joint_id}, latest_only=False, include_deleted=True
        )

    def resolved(self, kind: str, owner_id: int) -> dict[Any, Resolved]:
        """Committed revision and model proposal of every annotation of one image (or pair).

        Keys as in :meth:`centres` (joint id), :meth:`scores` (``(joint_id, score_type)``);
        ``None`` for the single ROI of an image and the single grade of a pair.
        """
        committed = {
            _key_of(r): r
            for r in self._revisions(kind, owner_id, sources=TRAINING_SOURCES, include_deleted=True)
        }
        proposals = {
            _key_of(r): r
            for r in self._revisions(kind, owner_id, sources=["model"], include_deleted=True)
        }
        return {
            key: Resolved(committed.get(key), proposals.get(key))
            for key in sorted({*committed, *proposals}, key=str)
        }

    def proposals(self, kind: str, owner_id: int) -> dict[Any, Revision]:
        """Model proposals still waiting for a person (see :attr:`Resolved.pending`)."""
        out = {}
        for key, res in self.resolved(kind, owner_id).items():
            if res.pending is not None:
                out[key] = res.pending
        return out

    def history(
        self, kind: str, owner_id: int, key: dict[str, Any] | None = None
    ) -> list[Revision]:
        """Every revision of one annotation (or of all of an image's), oldest first."""
        return self._revisions(kind, owner_id, key=key, latest_only=False, include_deleted=True)

    def confirm(
        self,
        kind: str,
        owner_id: int,
        key: dict[str, Any],
        annotator: str,
        *,
        revision_id: int | None = None,
    ) -> int:
        """Accept a model proposal: a human revision copying it, that ``confirms`` it.

        ``revision_id`` (a :attr:`Revision.id`) names the proposal; without it, the pending
        proposal of that annotation. Refused unless the id exists and is a model revision of the
        same kind and key - accepting must never copy a person's row or another joint's.
        """
        history = self.history(kind, owner_id, key)
        if revision_id is None:
            rev = Resolved.of(history).pending
            if rev is None:
                raise StoreError(f"no model proposal to accept for {kind} {key} of {owner_id}")
        else:
            rev = next((r for r in history if r.id == int(revision_id)), None)
            if rev is None:
                raise StoreError(
                    f"revision {revision_id} is not a {kind} revision of {key} on {owner_id}"
                )
            if not rev.is_model:
                raise StoreError(
                    f"revision {revision_id} of {kind} {key} is a {rev.source} revision; only "
                    "model proposals are accepted"
                )
        return self._copy_revision(kind, owner_id, key, rev, annotator, confirms=rev.id)

    def reject(self, kind: str, owner_id: int, key: dict[str, Any], annotator: str) -> int:
        """Turn down the pending proposal: the committed value is restated by the person (it
        stays what counts), or, where nobody had committed anything, a human deletion."""
        resolved = Resolved.of(self.history(kind, owner_id, key))
        committed, proposal = resolved.committed, resolved.proposal
        if resolved.pending is None:
            raise StoreError(f"no model proposal to reject for {kind} {key} of {owner_id}")
        if committed is not None:
            return self._copy_revision(
                kind, owner_id, key, committed, annotator, confirms=committed.id
            )
        return self._append(
            kind, owner_id, key, {}, Provenance.human(annotator), "deleted", proposal.id
        )

    def _copy_revision(
        self,
        kind: str,
        owner_id: int,
        key: dict[str, Any],
        rev: Revision,
        annotator: str,
        *,
        confirms: int,
    ) -> int:
        spec = _KINDS[kind]
        values = {c: rev.value.get(c) for c in spec.value_columns}
        for column in spec.set_columns:  # a person's grade has no set
            values.pop(column, None)
        if kind == "polygon" and values["vertices"] is not None:
            values["vertices"] = json.dumps(values["vertices"])
        return self._append(
            kind, owner_id, key, values, Provenance.human(annotator), rev.status, confirms
        )

    # ------------------------------------------------------------------ polygons

    def set_polygon(
        self,
        image_id: int,
        joint_id: str,
        vertices: Sequence[Sequence[float]],
        provenance: Provenance,
    ) -> int:
        """Record a joint-space polygon as ``[(x, y), ...]`` (a new revision)."""
        self._check_joint(image_id, joint_id)
        if not get_joint(joint_id).narrowing:
            raise ValueError(f"{joint_id} is not a narrowing joint: it has no joint-space polygon")
        points = [[float(x), float(y)] for x, y in vertices]
        if not all(math.isfinite(v) for p in points for v in p):
            raise ValueError(f"{joint_id}: polygon vertices must be finite")
        return self._append(
            "polygon",
            image_id,
            {"joint_id": joint_id},
            {"vertices": json.dumps(points)},
            provenance,
        )

    def delete_polygon(self, image_id: int, joint_id: str, provenance: Provenance) -> int:
        self._check_joint(image_id, joint_id)
        return self._append("polygon", image_id, {"joint_id": joint_id}, {}, provenance, "deleted")

    def polygons(
        self, image_id: int, *, sources: Iterable[str] | None = None
    ) -> dict[str, Revision]:
        return {r.key: r for r in self._revisions("polygon", image_id, sources=sources)}

    # ------------------------------------------------------------------ scores

    def set_score(
        self,
        image_id: int,
        joint_id: str,
        score_type: ScoreType | str,
        value: float,
        provenance: Provenance,
        *,
        uncertainty: float | None = None,
        grade_set: tuple[int, int] | None = None,
        coverage: float | None = None,
    ) -> int:
        """Record a narrowing or erosion grade (validated against the joint's scale).

        A model grade can carry its conformal ``grade_set`` (``low, high``: the grades
        ``low..high`` hold the truth with probability ``coverage``); it is kept in the same
        revision so the set always belongs to the model version that made it.
        """
        self._check_joint(image_id, joint_id)
        score_type = ScoreType(score_type)
        joint = get_joint(joint_id)
        joint.validate_score(score_type, value)
        value_doc: dict[str, Any] = {"value": float(value), "uncertainty": uncertainty}
        if grade_set is not None:
            low, high = (int(g) for g in grade_set)
            if not 0 <= low <= high <= joint.max_score(score_type):
                raise ValueError(
                    f"grade set {low}..{high} for {joint_id} {score_type.value} is not inside "
                    f"0-{joint.max_score(score_type)} (or low > high)"
                )
            if coverage is None or not 0 < coverage < 1:
                raise ValueError(f"a grade set needs its coverage in (0, 1), got {coverage!r}")
            value_doc.update({"set_low": low, "set_high": high, "coverage": float(coverage)})
        return self._append(
            "score",
            image_id,
            {"joint_id": joint_id, "score_type": score_type.value},
            value_doc,
            provenance,
        )

    def delete_score(
        self, image_id: int, joint_id: str, score_type: ScoreType | str, provenance: Provenance
    ) -> int:
        """A grade withdrawn (undo of a first grade): a ``deleted`` revision, history kept."""
        self._check_joint(image_id, joint_id)
        key = {"joint_id": joint_id, "score_type": ScoreType(score_type).value}
        return self._append("score", image_id, key, {}, provenance, "deleted")

    def scores(
        self,
        image_id: int,
        *,
        sources: Iterable[str] | None = None,
        authors: Iterable[str] | None = None,
    ) -> dict[tuple[str, str], Revision]:
        """Newest score per ``(joint_id, score_type)``; with ``authors``, only the revisions of
        those annotators (or bundles, generators): one reader's grades, e.g. ``["rater_a"]``."""
        return {
            (r.value["joint_id"], r.value["score_type"]): r
            for r in self._revisions("score", image_id, sources=sources, authors=authors)
        }

    # ------------------------------------------------------------------ ultrasound

    def set_roi(
        self,
        image_id: int,
        box: tuple[float, float, float, float],
        provenance: Provenance,
    ) -> int:
        """Record an ultrasound ROI box ``(x0, y0, x1, y1)`` on one image."""
        image = self.image(image_id)
        if image.modality not in ("us_greyscale", "us_doppler"):
            raise ValueError(f"ROI boxes belong on ultrasound images; {image.path} is a radiograph")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise ValueError(f"ROI box must be finite, got {box}")
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        return self._append(
            "roi", image_id, {}, {"x0": x0, "y0": y0, "x1": x1, "y1": y1}, provenance
        )

    def roi(self, image_id: int, *, sources: Iterable[str] | None = None) -> Revision | None:
        found = self._revisions("roi", image_id, sources=sources)
        return found[0] if found else None

    def set_us_score(
        self,
        pair_id: int,
        synovial_hypertrophy: int,
        vascularity: int,
        provenance: Provenance,
        *,
        uncertainty: float | None = None,
        grade_sets: Mapping[str, tuple[int, int]] | None = None,
        coverage: float | None = None,
    ) -> int:
        """Record EULAR-OMERACT grades; the combined grade is derived, never typed in.

        A model's grades can carry conformal ``grade_sets`` (``{output: (low, high)}`` for
        ``synovial_hypertrophy``, ``vascularity``, ``combined``: ``low..high`` holds the truth
        with probability ``coverage``), kept in the same revision so each set belongs to the
        model version that made it. A person's grades carry none.
        """
        for name, grade in (
            ("synovial hypertrophy", synovial_hypertrophy),
            ("vascularity", vascularity),
        ):
            if int(grade) != grade or not 0 <= grade <= 3:
                raise ValueError(f"{name} grade must be an integer 0-3, got {grade}")
        if synovial_hypertrophy == 0 and vascularity > 0:
            raise ValueError(
                "vascularity > 0 with synovial hypertrophy 0 is not a valid EULAR-OMERACT "
                "combination"
            )
        combined = max(int(synovial_hypertrophy), int(vascularity))
        values = {
            "synovial_hypertrophy": int(synovial_hypertrophy),
            "vascularity": int(vascularity),
            "combined": combined,
            "uncertainty": uncertainty,
        }
        if grade_sets:
            if provenance.source != "model":
                raise ValueError("only a model's grades carry grade sets; a person's carry none")
            unknown = set(grade_sets) - set(US_GRADES)
            if unknown:
                raise ValueError(f"grade sets for unknown outputs {sorted(unknown)}")
            for name, grade_set in grade_sets.items():
                low, high = (int(g) for g in grade_set)
                if not 0 <= low <= high <= 3:
                    raise ValueError(
                        f"{name} grade set {low}..{high} is not inside 0-3 (or low > high)"
                    )
                values.update({f"{name}_set_low": low, f"{name}_set_high": high})
            if coverage is None or not 0 < coverage < 1:
                raise ValueError(f"a grade set needs its coverage in (0, 1), got {coverage!r}")
            values["coverage"] = float(coverage)
        return self._append("us_score", pair_id, {}, values, provenance)

    def us_score(
        self,
        pair_id: int,
        *,
        sources: Iterable[str] | None = None,
        authors: Iterable[str] | None = None,
    ) -> Revision | None:
        """The resolved grades of a pair; with ``authors``, those annotators' newest."""
        found = self._revisions("us_score", pair_id, sources=sources, authors=authors)
        return found[0] if found else None

    # ------------------------------------------------------------------ JSON per image

    def export_image_json(
        self, image_id: int, *, sources: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """The newest annotations of one image as plain JSON (what the plugin's writer saves).

        A radiograph's document holds its centres, polygons and scores; an ultrasound image's
        its ROI box and, when it belongs to a pair, ``us_pair``: both images, both boxes and
        the pair's grades (a model's with its conformal grade sets), so the pair travels whole.
        Every entry carries its provenance, revision and time.
        """
        image = self.image(image_id)
        sources = list(sources) if sources is not None else None
        out: dict[str, Any] = {
            "format": IMAGE_JSON_FORMAT,
            "version": IMAGE_JSON_VERSION,
            "image": _image_document(image),
            "joint_centres": [],
            "joint_space_polygons": [],
            "joint_scores": [],
            "roi": None,
            "us_pair": None,
        }
        if image.modality == "radiograph":
            out["joint_centres"] = [
                _image_json_entry(r) for r in self.centres(image_id, sources=sources).values()
            ]
            out["joint_space_polygons"] = [
                _image_json_entry(r) for r in self.polygons(image_id, sources=sources).values()
            ]
            out["joint_scores"] = [
                _image_json_entry(r) for r in self.scores(image_id, sources=sources).values()
            ]
            return out
        roi = self.roi(image_id, sources=sources)
        out["roi"] = _image_json_entry(roi) if roi else None
        rows = self._query(
            "SELECT * FROM us_pairs WHERE greyscale_image_id = ? OR doppler_image_id = ?",
            (image.id, image.id),
        )
        if rows:
            pair = rows[0]
            out["us_pair"] = {"site": pair["site"]}
            for side, column in (
                ("greyscale", "greyscale_image_id"),
                ("doppler", "doppler_image_id"),
            ):
                member = self.image(pair[column])
                box = self.roi(member.id, sources=sources)
                out["us_pair"][side] = {
                    "image": _image_document(member),
                    "roi": _image_json_entry(box) if box else None,
                }
            grades = self.us_score(pair["id"], sources=sources)
            out["us_pair"]["us_score"] = _image_json_entry(grades) if grades else None
        return out

    def import_image_json(
        self, data: dict[str, Any] | str | Path, provenance: Provenance | None = None
    ) -> int:
        """Add the annotations of an exported JSON as new revisions; returns the image id.

        Each entry keeps the provenance and the time recorded in the file unless ``provenance``
        is given. Imported revisions are appended like any other - nothing is overwritten, and
        an imported model revision stays a proposal under a person's (see :class:`Resolved`).
        An entry the store already holds (same value, status, provenance and time: the same
        document imported again) is skipped, so a second import adds nothing.
        """
        where = "the image annotation document"
        if isinstance(data, str | Path):
            where = str(data)
            try:
                data = json.loads(Path(data).read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise StoreError(f"cannot read the image annotation file {where}: {exc}") from exc
        _check_image_document(data, where)
        with self.transaction():
            image_id = self._import_image(data["image"], where)
            for e in data.get("joint_centres", []):
                key = {"joint_id": e["joint_id"]}

                def write(prov: Provenance, e: dict[str, Any] = e) -> None:
                    xy = (e["x"], e["y"]) if e["status"] == "present" else None
                    self.set_centre(
                        image_id,
                        e["joint_id"],
                        xy,
                        prov,
                        confidence=e.get("confidence"),
                        status=e["status"],
                    )

                self._import_entry("centre", image_id, key, e, provenance, write)
            for e in data.get("joint_space_polygons", []):
                key = {"joint_id": e["joint_id"]}

                def write(prov: Provenance, e: dict[str, Any] = e) -> None:
                    self.set_polygon(image_id, e["joint_id"], e["vertices"], prov)

                self._import_entry("polygon", image_id, key, e, provenance, write)
            for e in data.get("joint_scores", []):
                key = {"joint_id": e["joint_id"], "score_type": e["score_type"]}

                def write(prov: Provenance, e: dict[str, Any] = e) -> None:
                    sets = _grade_sets("score", e) if prov.source == "model" else {}
                    self.set_score(
                        image_id,
                        e["joint_id"],
                        e["score_type"],
                        e["value"],
                        prov,
                        uncertainty=e.get("uncertainty"),
                        grade_set=sets.get(e["score_type"]),
                        coverage=e.get("coverage") if sets else None,
                    )

                self._import_entry("score", image_id, key, e, provenance, write)
            boxes = [(image_id, data.get("roi"))]
            pair_doc = data.get("us_pair")
            if pair_doc:
                members = {
                    side: self._import_image(pair_doc[side]["image"], where)
                    for side in ("greyscale", "doppler")
                }
                pair_id = self._import_us_pair(
                    members["greyscale"], members["doppler"], pair_doc["site"], where
                )
                boxes += [(members[side], pair_doc[side].get("roi")) for side in members]
                grades = pair_doc.get("us_score")
                if grades:

                    def write(prov: Provenance, e: dict[str, Any] = grades) -> None:
                        sets = _grade_sets("us_score", e) if prov.source == "model" else {}
                        self.set_us_score(
                            pair_id,
                            e["synovial_hypertrophy"],
                            e["vascularity"],
                            prov,
                            uncertainty=e.get("uncertainty"),
                            grade_sets=sets or None,
                            coverage=e.get("coverage") if sets else None,
                        )

                    self._import_entry("us_score", pair_id, {}, grades, provenance, write)
            for owner_id, e in boxes:  # this image's box comes twice: the second is a no-op
                if not e:
                    continue

                def write(prov: Provenance, owner_id: int = owner_id, e: dict = e) -> None:
                    self.set_roi(owner_id, (e["x0"], e["y0"], e["x1"], e["y1"]), prov)

                self._import_entry("roi", owner_id, {}, e, provenance, write)
        return image_id

    def _import_image(self, info: Mapping[str, Any], where: str) -> int:
        """Register an image a document annotates; refused when the file here is another."""
        image_id = self.add_image(
            info["path"],
            patient_id=info["patient_id"],
            modality=info["modality"],
            limb=info.get("limb"),
            visit=info.get("visit", ""),
            width=info.get("width"),
            height=info.get("height"),
        )
        record = self.image(image_id)
        if info.get("sha256") and record.sha256 != info["sha256"]:
            raise StoreError(
                f"{self.resolve(record)} is not the image {where} annotates: its sha256 is "
                f"{record.sha256[:12]}..., the document's {str(info['sha256'])[:12]}..."
            )
        return image_id

    def _import_us_pair(self, greyscale_id: int, doppler_id: int, site: str, where: str) -> int:
        """The pair of a document's two images; refused when either is paired otherwise here."""
        for pair in self.us_pairs(self.image(greyscale_id).patient_id):
            same = (pair["greyscale_image_id"], pair["doppler_image_id"]) == (
                greyscale_id,
                doppler_id,
            )
            if same and pair["site"] != site:
                raise StoreError(
                    f"{where} pairs its images at site {site!r}, this store at {pair['site']!r}"
                )
            if not same and (
                pair["greyscale_image_id"] == greyscale_id or pair["doppler_image_id"] == doppler_id
            ):
                raise StoreError(
                    f"an image of {where} already belongs to another ultrasound pair "
                    f"(pair {pair['id']}, site {pair['site']!r}) in {self.path}"
                )
        return self.add_us_pair(greyscale_id, doppler_id, site=site)

    def _import_entry(
        self,
        kind: str,
        owner_id: int,
        key: dict[str, Any],
        entry: Mapping[str, Any],
        provenance: Provenance | None,
        write: Callable[[Provenance], None],
    ) -> None:
        """Append one document entry through ``write(provenance)`` (the validating setter),
        with the entry's recorded time - unless the store already holds that very revision."""
        prov = provenance or Provenance(**entry["provenance"])
        spec = _KINDS[kind]
        expected = {c: entry.get(c) for c in spec.value_columns}
        if prov.source != "model":  # a person's revision carries no grade set
            expected.update(dict.fromkeys(spec.set_columns))
        status = entry.get("status", "present")
        created_at = entry.get("created_at")
        if created_at is not None and not isinstance(created_at, str):
            raise StoreError(
                f"a {kind} entry's created_at must be a time string, got {created_at!r}"
            )
        for rev in self.history(kind, owner_id, key):
            if (
                (rev.source, rev.author, rev.version, rev.weights_hash)
                == (prov.source, prov.author, prov.version, prov.weights_hash)
                and rev.status == status
                and (created_at is None or rev.created_at == created_at)
                and all(rev.value.get(c) == v for c, v in expected.items())
            ):
                return
        self._imported_at = created_at
        try:
            write(prov)
        finally:
            self._imported_at = None

    # ------------------------------------------------------------------ RA2-DREAM CSV

    def patient_scores(
        self,
        *,
        sources: Iterable[str] | None = TRAINING_SOURCES,
        per_visit: bool = True,
        authors: Iterable[str] | None = None,
    ) -> dict[str, dict[tuple[str, str], float]]:
        """Newest grade per ``(joint_id, score_type)`` of every patient with a radiograph.

        Keys are ``<patient>_<visit>`` for images with a visit unless ``per_visit`` is False;
        patients without any score map to an empty dict. ``authors`` keeps only the grades of
        those annotators (one reader's table, e.g. a simulated rater's).
        """
        sources = list(sources) if sources is not None else None
        authors = _authors(authors) if authors is not None else None
        scores: dict[str, dict[tuple[str, str], float]] = {}
        for image in self.images(modality="radiograph"):
            pid = image.patient_id
            if per_visit and image.visit:
                pid = f"{pid}_{image.visit}"
            patient = scores.setdefault(pid, {})
            for key, rev in self.scores(image.id, sources=sources, authors=authors).items():
                patient[key] = rev.value["value"]
        return scores

    def dream_rows(
        self,
        *,
        sources: Iterable[str] | None = TRAINING_SOURCES,
        authors: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """One RA2-DREAM row per patient (and visit): joint scores and, when complete, totals."""
        scores = self.patient_scores(sources=sources, authors=authors)
        return [dream_row(pid, scores[pid]) for pid in sorted(scores)]

    def export_dream_csv(
        self,
        path: str | Path,
        *,
        sources: Iterable[str] | None = TRAINING_SOURCES,
        authors: Iterable[str] | None = None,
    ) -> Path:
        """Write the RA2-DREAM score table; missing scores (and incomplete totals) stay empty.

        ``authors``: only those annotators' grades (``["rater_a"]``: one reader's table)."""
        return write_dream_csv(self.dream_rows(sources=sources, authors=authors), path)

    def authors(self, source: str | None = None) -> list[str]:
        """Every annotator, bundle or generator that wrote to the store (of one source)."""
        sql, params = "SELECT DISTINCT author FROM provenance", []
        if source is not None:
            sql, params = sql + " WHERE source = ?", [source]
        return [r["author"] for r in self._query(sql + " ORDER BY author", params)]

    def check_authors(self, names: Iterable[str]) -> None:
        """Refuse readers the store has never heard of (a typo would export nothing)."""
        known = self.authors()
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(
                f"no annotator {', '.join(map(repr, unknown))} in {self.path}; "
                f"known: {', '.join(known) or 'none'}"
            )

    def import_dream_csv(self, path: str | Path, provenance: Provenance) -> list[str]:
        """Read an RA2-DREAM table into the store; returns the problems found (never silent).

        Scores are attached to the patient's radiograph of that limb; a row whose patient or
        limb has no radiograph in the store is reported, the rest is imported.
        """
        path = Path(path)
        problems: list[str] = []
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "Patient_ID" not in reader.fieldnames:
                raise StoreError(f"{path} has no Patient_ID column: not an RA2-DREAM score table")
            unknown = [c for c in reader.fieldnames if c not in dream_columns()]
            problems += [f"{path}: unknown column {c!r} ignored" for c in unknown]
            with self.transaction():
                for line, row in enumerate(reader, start=2):
                    problems += self._import_dream_row(path, line, row, provenance)
        return problems

    def _import_dream_row(
        self, path: Path, line: int, row: dict[str, str], provenance: Provenance
    ) -> list[str]:
        problems = []
        pid = row["Patient_ID"].strip()
        images = {im.limb: im for im in self.images(patient_id=pid, modality="radiograph")}
        for column, text in row.items():
            if column in DREAM_TOTAL_COLUMNS or column not in dream_columns():
                continue
            if text is None or not text.strip():
                continue
            joint, score_type = parse_dream_column(column)
            image = images.get(joint.limb.value)
            where = f"{path}:{line} {column}"
            if image is None:
                problems.append(f"{where}: patient {pid!r} has no {joint.limb.value} radiograph")
                continue
            try:
                self.set_score(image.id, joint.id, score_type, float(text), provenance)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
        return problems

    # ------------------------------------------------------------------ summaries

    def summary(self) -> dict[str, Any]:
        """Counts a person wants after opening a project."""
        count = lambda sql: int(self._query(sql)[0][0])  # noqa: E731
        return {
            "path": str(self.path),
            "schema_version": self.schema_version,
            "patients": count("SELECT COUNT(DISTINCT patient_id) FROM images"),
            "radiographs": count("SELECT COUNT(*) FROM images WHERE modality = 'radiograph'"),
            "ultrasound_pairs": count("SELECT COUNT(*) FROM us_pairs"),
            "joint_centre_revisions": count("SELECT COUNT(*) FROM joint_centres"),
            "polygon_revisions": count("SELECT COUNT(*) FROM joint_space_polygons"),
            "score_revisions": count("SELECT COUNT(*) FROM joint_scores"),
            "roi_revisions": count("SELECT COUNT(*) FROM us_rois"),
            "us_score_revisions": count("SELECT COUNT(*) FROM us_scores"),
        }

    def integrity_check(self) -> str:
        return str(self._query("PRAGMA integrity_check")[0][0])


SYNCHRONOUS_ENV = "RA_JOINTS_SYNCHRONOUS"
_SYNCHRONOUS_LEVELS = ("NORMAL", "FULL", "EXTRA")
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _synchronous(given: str | None) -> str | None:
    """The ``PRAGMA synchronous`` level asked for (argument, else ``$RA_JOINTS_SYNCHRONOUS``)."""
    import os

    value = (given or os.environ.get(SYNCHRONOUS_ENV, "")).strip().upper()
    if not value:
        return None
    if value not in _SYNCHRONOUS_LEVELS:
        raise StoreError(
            f"synchronous must be one of {', '.join(_SYNCHRONOUS_LEVELS)}, got {value!r} "
            f"(argument or {SYNCHRONOUS_ENV})"
        )
    return value


def _inspect(path: Path) -> int:
    """Schema version of an existing store, read without changing a byte of it.

    Refuses (with the file named) what is not ours: not SQLite at all, someone else's SQLite
    database, a store of a newer napari-ra-joints, a damaged file. Opening read-only keeps a
    rollback-journal store in its mode; only a store we may write is switched to WAL later.
    """
    from urllib.parse import quote

    with open(path, "rb") as handle:
        header = handle.read(len(_SQLITE_MAGIC))
    if header != _SQLITE_MAGIC:
        raise StoreError(
            f"{path} is not a readable annotation store (not an SQLite file); it was not changed"
        )
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} cannot be opened ({exc}); it was not changed") from exc
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables or (
            tables - {"schema_version"} and "images" not in tables
        ):
            raise StoreError(
                f"{path} is an SQLite database but not a napari-ra-joints annotation store "
                "(no schema_version/images tables); it was not changed"
            )
        version = int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StoreLockedError(f"{path} is locked by another process (open)") from exc
        raise StoreError(
            f"{path} is damaged ({text}); restore it from a backup (or try: sqlite3 <file> "
            ".recover); it was not changed"
        ) from exc
    finally:
        conn.close()
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"{path} has schema version {version}, but this napari-ra-joints understands up "
            f"to {SCHEMA_VERSION}; upgrade napari-ra-joints to open it (the file was not changed)"
        )
    return version


def _authors(authors: Iterable[str]) -> list[str]:
    """An author filter as a list; a bare string would be read letter by letter."""
    if isinstance(authors, str):
        raise TypeError(f"authors must be a list of names, e.g. [{authors!r}], not a string")
    out = [str(a) for a in authors]
    if not out:
        raise ValueError("an author filter needs at least one name")
    return out


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script (executescript would commit our transaction)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def _image_record(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(
        id=int(row["id"]),
        path=row["path"],
        sha256=row["sha256"],
        patient_id=row["patient_id"],
        limb=row["limb"],
        modality=row["modality"],
        width=row["width"],
        height=row["height"],
        visit=row["visit"],
    )


def _revision(kind: str, spec: _Kind, row: sqlite3.Row) -> Revision:
    value = {c: row[c] for c in (*spec.key_columns, *spec.value_columns)}
    if kind == "polygon" and value.get("vertices") is not None:
        value["vertices"] = json.loads(value["vertices"])
    key = ":".join(str(row[c]) for c in reversed(spec.key_columns)) or kind
    return Revision(
        id=int(row["id"]),
        kind=kind,
        image_id=int(row[spec.owner]),
        key=key,
        revision=int(row["revision"]),
        status=row["status"],
        value=value,
        source=row["source"],
        author=row["author"],
        version=row["version"],
        weights_hash=row["weights_hash"],
        created_at=row["created_at"],
        confirms=row["confirms"],
    )


def _grade_sets(kind: str, value: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """The conformal sets ``{output: (low, high)}`` held in a revision's value (or an image
    JSON entry): one per ultrasound output of a ``us_score``, one for a ``score``."""
    if kind == "us_score":
        pairs = {g: (f"{g}_set_low", f"{g}_set_high") for g in US_GRADES}
    elif kind == "score":
        pairs = {str(value.get("score_type")): ("set_low", "set_high")}
    else:
        return {}
    return {
        name: (int(value[low]), int(value[high]))
        for name, (low, high) in pairs.items()
        if value.get(low) is not None and value.get(high) is not None
    }


def _image_document(image: ImageRecord) -> dict[str, Any]:
    """An image as the per-image JSON describes it (the store's id stays in the store)."""
    return {k: v for k, v in asdict(image).items() if k != "id"}


def _image_json_entry(rev: Revision) -> dict[str, Any]:
    """One revision as a per-image JSON entry: its value, status, revision and provenance."""
    return {
        **rev.value,
        "status": rev.status,
        "revision": rev.revision,
        "provenance": {
            "source": rev.source,
            "author": rev.author,
            "version": rev.version,
            "weights_hash": rev.weights_hash,
        },
        "created_at": rev.created_at,
    }


_RADIOGRAPH_ENTRIES = ("joint_centres", "joint_space_polygons", "joint_scores")


def _check_image_document(data: Any, where: str) -> None:
    """Refuse a per-image JSON of another kind or version, saying what is wrong and where."""
    if not isinstance(data, dict) or data.get("format") != IMAGE_JSON_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise StoreError(
            f"{where} is not a napari-ra-joints image annotation file (format={found!r}, "
            f"expected {IMAGE_JSON_FORMAT!r})"
        )
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreError(f"{where} has no valid version ({version!r}); expected 1..")
    if version > IMAGE_JSON_VERSION:
        raise StoreError(
            f"{where} is image annotation version {version}, but this napari-ra-joints reads "
            f"up to {IMAGE_JSON_VERSION}; upgrade napari-ra-joints to import it"
        )
    info = data.get("image")
    if not isinstance(info, dict) or not {"path", "patient_id", "modality"} <= set(info):
        raise StoreError(f"{where} has no image (path, patient_id, modality) to annotate")
    if info["modality"] == "radiograph":
        if data.get("roi") or data.get("us_pair"):
            raise StoreError(
                f"{where} describes a radiograph ({info['path']}) but carries ultrasound ROI "
                "boxes or grades"
            )
        return
    joints = [name for name in _RADIOGRAPH_ENTRIES if data.get(name)]
    if joints:
        raise StoreError(
            f"{where} describes a {info['modality']} image ({info['path']}) but carries "
            f"radiograph entries ({', '.join(joints)})"
        )
    pair = data.get("us_pair")
    if not pair:
        return
    sides = {"greyscale": "us_greyscale", "doppler": "us_doppler"}
    for side, modality in sides.items():
        member = (pair.get(side) or {}).get("image") if isinstance(pair, dict) else None
        if not isinstance(member, dict) or member.get("modality") != modality:
            raise StoreError(f"{where}: its us_pair needs a {side} image of modality {modality}")
    if info["path"] not in {pair[side]["image"]["path"] for side in sides}:
        raise StoreError(f"{where}: its us_pair does not contain its own image {info['path']}")
    if not pair.get("site"):
        raise StoreError(f"{where}: its us_pair has no site")


def _key_of(rev: Revision) -> Any:
    """The key :meth:`AnnotationStore.resolved` files a revision under (as the readers do)."""
    if rev.kind == "score":
        return (rev.value["joint_id"], rev.value["score_type"])
    if rev.kind in ("centre", "polygon"):
        return rev.key
    return None
