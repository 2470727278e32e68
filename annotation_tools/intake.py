"""Bring a clinician's cohort into a project: ``ra-joints import --project DIR SOURCE...``.

A cohort arrives as nested DICOM folders (files with or without extension, a DICOMDIR), PNG,
JPEG or TIFF exports, ultrasound frames mixed with radiographs and the odd broken file.
:func:`import_sources` walks every source recursively and registers each usable image in the
project's store (created when missing). Images are **referenced, not copied** - the store keeps
a path relative to the project root when the file lies inside it, else the absolute path (the
convention of ``AnnotationStore.add_image`` and of ``ra-joints phantoms``).

For each file, first match wins:

* **modality**: the cases table's ``modality`` > DICOM Modality ``US`` > an ultrasound file
  name (``radiograph.ultrasound_hint``: ``_US1_``, ``doppler``, ``gs``, an ``ultrasound``
  folder); ultrasound frames are registered as ``us_greyscale`` / ``us_doppler`` (by the table,
  a ``doppler``/``gs`` name token, else a colour box or flow on the screen = Doppler: an RGB
  grey-scale screen with coloured icons stays grey-scale) and never as radiographs. Anything
  else must pass ``radiograph.radiograph_refusal`` (Modality CR/DX/DR/unknown, grey-scale, one
  frame, sane size) or it is skipped with the reason;
* **patient**: the table > DICOM PatientID > the file name (``P001_LH.png`` -> ``P001``,
  ``P001_US1_mcp_2_gs.png`` -> ``P001``) > the file's stem;
* **limb**: the table > DICOM laterality + BodyPartExamined > an ``LH/RH/LF/RF`` file-name
  token > (opt-in, ``decide=``) the locator's own decision (:func:`decide_limb`) when its
  confidence reaches ``limb_threshold``. Otherwise the file is *not* registered and is reported
  as "limb unknown - needs a decision" (with the locator's guess when it was asked), so that a
  person picks the limb (``limbs={path: "RH"}`` on a second call, or the dock's combo box);
* **visit**: the table > DICOM StudyDate > AccessionNumber > none;
* **ultrasound pairs**: the table's ``pair`` column > the file name without its ``gs``/
  ``doppler`` token (the phantom naming) > the DICOM series; a key with exactly one grey-scale
  and one Doppler frame becomes a pair (``AnnotationStore.add_us_pair``) with its ``site``
  (table, file name, or the series description).

Idempotent: a file whose content (SHA-256) is already in the project, or was seen earlier in
the same run, is a duplicate and adds nothing, so importing a folder twice changes nothing.

:func:`iter_import_sources` is the same import as a job that yields one
:class:`~annotation_tools.jobs.Progress` per file (the dock runs it in a worker thread).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .imageio import (
    ImageData,
    ImageReadError,
    file_sha256,
    is_dicomdir,
    read_image,
    sniff_format,
)
from .progress import CancelToken, Progress, run_job
from .radiograph import (
    LIMB_TOKEN,
    image_files,
    radiograph_refusal,
    resolve_limb,
    ultrasound_hint,
)
from .vocabulary import Limb

__all__ = [
    "LIMB_THRESHOLD",
    "LIMB_UNKNOWN",
    "ImportReport",
    "decide_limb",
    "describe",
    "import_sources",
    "iter_import_sources",
    "read_cases",
]

LIMB_UNKNOWN = "limb unknown - needs a decision"
# below this the locator's limb call is a suggestion a person confirms (see docs: measured
# accuracy of decide_limb on held-out phantoms)
LIMB_THRESHOLD = 0.3
_US_MODALITIES = {"us_greyscale", "us_doppler", "us", "ultrasound"}
_US_PATIENT = re.compile(r"^(?P<patient>.+?)[_\-. ]US\d*(?:$|[^A-Za-z0-9])", re.IGNORECASE)
_KIND_TOKEN = re.compile(
    r"(?:^|[_\-. ])(?P<kind>doppler|cdi|pdi|gs|greyscale|grayscale|b-?mode)(?=$|[_\-. ])",
    re.IGNORECASE,
)


@dataclass
class CaseRow:
    patient_id: str | None = None
    limb: str | None = None
    visit: str | None = None
    modality: str | None = None
    site: str | None = None
    pair: str | None = None


@dataclass
class ImportReport:
    """What an import did, file by file (``ra-joints import --json`` prints it)."""

    project: str
    imported: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    unpaired: list[dict[str, str]] = field(default_factory=list)
    # Files found but not looked at because the person cancelled (what came before is kept).
    not_reached: list[str] = field(default_factory=list)

    @property
    def needs_limb(self) -> list[dict[str, Any]]:
        """Skipped only because no source said the limb: a person decides (with the locator's
        ``suggested_limb`` and ``confidence`` when it was asked)."""
        return [item for item in self.skipped if item["reason"].startswith(LIMB_UNKNOWN)]

    @property
    def exit_code(self) -> int:
        """0: every file imported (or already there); 3: some files were skipped or, after a
        cancel, not reached."""
        return 3 if self.skipped or self.not_reached else 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "needs_limb": self.needs_limb, "exit_code": self.exit_code}


def read_cases(path: str | Path) -> dict[str, CaseRow]:
    """A cases table (``path`` or ``file``, ``patient_id``, ``limb``, ``visit``, ``modality``,
    ``site``, ``pair``; all but the path optional), keyed by resolved file path."""
    path = Path(path)
    rows: dict[str, CaseRow] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        key = "path" if "path" in columns else "file" if "file" in columns else None
        if key is None:
            raise ValueError(f"{path}: the cases table needs a 'path' (or 'file') column")
        for line, row in enumerate(reader, start=2):
            values = {k: (row.get(k) or "").strip() or None for k in asdict(CaseRow())}
            if values["limb"]:
                try:
                    values["limb"] = Limb.parse(values["limb"]).value
                except ValueError as exc:
                    raise ValueError(f"{path}, line {line}: {exc}") from exc
            if values["modality"]:
                values["modality"] = values["modality"].lower()
                if values["modality"] not in _US_MODALITIES | {"radiograph"}:
                    raise ValueError(
                        f"{path}, line {line}: modality {values['modality']!r} is not "
                        "radiograph, us_greyscale or us_doppler"
                    )
            target = Path((row.get(key) or "").strip())
            resolved = target if target.is_absolute() else path.parent / target
            rows[str(resolved.resolve())] = CaseRow(**values)
    return rows


def _walk(sources: Iterable[str | Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Every image file under the sources (a DICOMDIR stands for its folder)."""
    found: list[Path] = []
    skipped: list[dict[str, str]] = []
    for source in sources:
        source = Path(source).expanduser()
        if source.is_file() and is_dicomdir(source):
            source = source.parent
        if source.is_dir():
            found += image_files(source)
        elif source.is_file():
            found.append(source)
        else:
            skipped.append({"path": str(source), "reason": "does not exist"})
    unique = sorted({p.resolve() for p in found})
    return unique, skipped


def _patient_from_name(path: Path, ultrasound: bool) -> str:
    stem = path.stem
    match = (_US_PATIENT if ultrasound else LIMB_TOKEN).search(stem)
    if ultrasound and match:
        return match.group("patient")
    if match and match.start() > 0:
        return stem[: match.start()].rstrip("_- .")
    return stem


def _us_kind_from_pixels(image: ImageData) -> str:
    """Doppler only when the screen has a colour box or flow inside its scan area: scanners save
    grey-scale frames as RGB too, with coloured icons and colour bars around the image."""
    if not image.is_colour:
        return "us_greyscale"
    from .us_roi import find_colour_box

    return "us_doppler" if find_colour_box(image.pixels) is not None else "us_greyscale"


def _us_name_parts(path: Path) -> tuple[str | None, str | None, str | None]:
    """(kind, site, pair key) from a phantom-style name ``P001_US1_mcp_2_gs``."""
    stem = path.stem
    kind_match = _KIND_TOKEN.search(stem)
    kind = None
    if kind_match:
        kind = (
            "us_doppler"
            if kind_match.group("kind").lower() in ("doppler", "cdi", "pdi")
            else ("us_greyscale")
        )
        stem = stem[: kind_match.start()] + stem[kind_match.end() :]
    site = None
    us = re.search(r"(?:^|[_\-. ])US\d*[_\-. ](?P<site>.+)$", stem, re.IGNORECASE)
    if us:
        site = us.group("site").strip("_- .") or None
    return kind, site, stem if kind_match else None


def decide_limb(image: str | Path | ImageData, locator: Any) -> tuple[Limb, float, str]:
    """The locator's own hand/foot and left/right call for a radiograph no tag, table or file
    name labels: ``(limb, confidence 0..1, reason)``.

    ``locator``: a :class:`~annotation_tools.locator.JointLocator` or a
    :class:`~annotation_tools.predict.PredictionService` (its locator is loaded once). It costs
    two network passes (as given and mirrored, see ``JointLocator.decide_limb``).
    """
    if hasattr(locator, "models"):  # a prediction service
        found = locator.locator()
        if found is None:
            raise ValueError("the locator bundle is not available: " + "; ".join(locator.skipped))
        locator = found
    if not isinstance(image, ImageData):
        image = read_image(image)
    decision = locator.decide_limb(image)
    return decision.limb, decision.confidence, decision.reason


def import_sources(
    project: str | Path,
    sources: Sequence[str | Path],
    *,
    cases: str | Path | None = None,
    limbs: Mapping[str | Path, str] | None = None,
    decide: Any = None,
    limb_threshold: float = LIMB_THRESHOLD,
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelToken | None = None,
) -> ImportReport:
    """Register every usable image under ``sources`` in the project (module docstring);
    ``progress`` gets one :class:`~annotation_tools.jobs.Progress` per file."""
    job = iter_import_sources(
        project,
        sources,
        cases=cases,
        limbs=limbs,
        decide=decide,
        limb_threshold=limb_threshold,
        cancel=cancel,
    )
    return run_job(job, progress)


def iter_import_sources(
    project: str | Path,
    sources: Sequence[str | Path],
    *,
    cases: str | Path | None = None,
    limbs: Mapping[str | Path, str] | None = None,
    decide: Any = None,
    limb_threshold: float = LIMB_THRESHOLD,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, ImportReport]:
    """:func:`import_sources` as a job: yields before each file, returns the report.

    ``cancel``: checked before each file; a cancelled import keeps every file registered so
    far (each is committed on its own), still pairs their ultrasound frames, and lists the
    files it did not reach in ``not_reached``.

    ``limbs``: a person's limb per file (path -> ``LH``...), as a cases table's limb column
    would say; ``decide``: a locator or prediction service whose :func:`decide_limb` is asked
    for files nothing else labels (opt-in: two network passes per such file).
    """
    from .store import AnnotationStore, StoreError

    table = read_cases(cases) if cases else {}
    for given, limb in (limbs or {}).items():
        key = str(Path(given).expanduser().resolve())
        values = asdict(table.get(key, CaseRow()))
        table[key] = CaseRow(**{**values, "limb": Limb.parse(limb).value})
    with AnnotationStore.open(project, create=True) as store:
        report = ImportReport(project=str(store.root))
        known = {r.sha256: r.path for r in store.images()}
        yield Progress(0, 0, f"looking for images in {len(sources)} source(s)")
        files, report.skipped = _walk(sources)
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for done, path in enumerate(files):
            if cancel is not None and cancel.cancelled:
                report.not_reached = [str(p) for p in files[done:]]
                break
            yield Progress(done, len(files), f"importing {path.name} ({done + 1}/{len(files)})")
            row = table.get(str(path), CaseRow())
            try:
                digest = file_sha256(path)
            except OSError as exc:
                report.skipped.append({"path": str(path), "reason": f"unreadable ({exc})"})
                continue
            if digest in known:
                report.duplicates.append({"path": str(path), "same_as": known[digest]})
                continue
            outcome = _register(store, path, row, digest, groups, decide, limb_threshold)
            if "image_id" not in outcome:
                report.skipped.append({"path": str(path), **outcome})
                continue
            known[digest] = store.image(outcome["image_id"]).path
            report.imported.append(outcome)
        reached = len(files) - len(report.not_reached)
        yield Progress(reached, len(files), "pairing ultrasound frames")
        for (patient, key), group in sorted(groups.items()):
            grey, doppler = group.get("us_greyscale", []), group.get("us_doppler", [])
            if len(grey) == 1 and len(doppler) == 1:
                site = group.get("site") or key
                try:
                    pair_id = store.add_us_pair(grey[0], doppler[0], site=site)
                except (StoreError, ValueError) as exc:
                    report.unpaired.append({"key": key, "reason": str(exc)})
                    continue
                report.pairs.append(
                    {"pair_id": pair_id, "patient_id": patient, "site": site, "key": key}
                )
            else:
                report.unpaired.append(
                    {
                        "key": key,
                        "reason": f"{len(grey)} grey-scale and {len(doppler)} Doppler frame(s) "
                        "share this key; pair them in a cases table (column 'pair')",
                    }
                )
    return report


def _register(
    store: Any,
    path: Path,
    row: CaseRow,
    digest: str,
    groups: dict[tuple[str, str], dict],
    decide: Any = None,
    limb_threshold: float = LIMB_THRESHOLD,
) -> dict[str, Any]:
    """Register one file: its record (with ``image_id``), or ``{"reason": ...}`` (and the
    locator's suggestion when the limb is what is missing)."""
    from .store import StoreError

    header = _dicom_header(path)
    modality_tag = str(header.get("Modality", "")).strip().upper() if header is not None else ""
    name_hint = ultrasound_hint(path)
    if row.modality:
        ultrasound = row.modality in _US_MODALITIES
        why = "cases table"
    elif modality_tag == "US":
        ultrasound, why = True, "DICOM Modality US"
    elif not modality_tag and name_hint:
        ultrasound, why = True, name_hint
    else:
        ultrasound, why = False, ""
    if not ultrasound:
        refusal = radiograph_refusal(path)
        if refusal:
            return {"reason": refusal}
    try:
        image = read_image(path)
    except ImageReadError as exc:
        return {"reason": exc.reason}
    patient = row.patient_id or image.patient_id or _patient_from_name(path, ultrasound)
    visit = (
        row.visit
        or image.metadata.get("study_date")
        or image.metadata.get("accession_number")
        or ""
    )
    height, width = image.shape
    record: dict[str, Any] = {"path": str(path), "patient_id": patient, "visit": visit}
    try:
        if ultrasound:
            kind, site, key = _us_name_parts(path)
            if row.modality in ("us_greyscale", "us_doppler"):
                kind = row.modality
            kind = kind or _us_kind_from_pixels(image)
            site = row.site or site or image.metadata.get("series_description") or ""
            key = row.pair or key or image.metadata.get("series_uid") or path.stem
            image_id = store.add_image(
                path, patient_id=patient, modality=kind, visit=visit, width=width,
                height=height, sha256=digest,
            )  # fmt: skip
            group = groups.setdefault((patient, key), {})
            group.setdefault(kind, []).append(image_id)
            group["site"] = group.get("site") or site
            record.update(modality=kind, image_id=image_id, why=why, site=site)
            return record
        limb, source = resolve_limb(path, image, row.limb)
        if limb is None:
            why_not = (
                f"{LIMB_UNKNOWN} (no cases-table limb, no DICOM laterality + body part, "
                "no LH/RH/LF/RF token in the file name)"
            )
            if decide is None:
                return {"reason": why_not}
            try:
                guess, confidence, because = decide_limb(image, decide)
            except Exception as exc:  # the model's failure on one file costs only that file
                return {"reason": f"{why_not}; the locator could not decide ({exc})"}
            if confidence < limb_threshold:
                return {
                    "reason": f"{why_not}; the locator suggests {guess.value} with confidence "
                    f"{confidence:.2f} < {limb_threshold:.2f}: {because}",
                    "suggested_limb": guess.value,
                    "confidence": confidence,
                }
            limb, source = guess, f"locator (confidence {confidence:.2f}: {because})"
        image_id = store.add_image(
            path, patient_id=patient, limb=limb, visit=visit, width=width, height=height,
            sha256=digest,
        )  # fmt: skip
    except (StoreError, ValueError) as exc:
        return {"reason": f"not registered: {exc}"}
    record.update(modality="radiograph", image_id=image_id, limb=limb.value, limb_source=source)
    return record


def _dicom_header(path: Path) -> Any:
    """The DICOM header without pixels, or None for other files and unreadable headers."""
    try:
        if sniff_format(path) != "dicom" and path.suffix.lower() not in (".dcm", ".dicom"):
            return None
        import pydicom

        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None


def describe(report: ImportReport, details: bool = False) -> str:
    """A short human summary (the CLI prints it); ``details`` adds one line per skipped file
    with its reason and per duplicate (the dock's report a person reads and copies)."""
    lines = [
        f"project {report.project}: imported {len(report.imported)} image(s), "
        f"{len(report.pairs)} ultrasound pair(s); {len(report.duplicates)} already there "
        f"(same content); {len(report.skipped)} skipped"
    ]
    radiographs = [r for r in report.imported if r["modality"] == "radiograph"]
    if radiographs:
        patients = sorted({r["patient_id"] for r in radiographs})
        lines.append(f"  radiographs of {len(patients)} patient(s): {', '.join(patients[:10])}")
    by_model = [r for r in radiographs if r.get("limb_source", "").startswith("locator")]
    if by_model:
        lines.append(f"  {len(by_model)} limb(s) decided by the locator (see limb_source)")
    if report.needs_limb:
        lines.append(
            f"  {len(report.needs_limb)} file(s) need a limb decision: give it in a cases table "
            "(column 'limb'), or let the locator suggest one (--decide-limbs)"
        )
    if report.not_reached:
        lines.append(
            f"  cancelled: {len(report.not_reached)} file(s) not reached (import them again "
            "later: the files already imported are recognised and not added twice)"
        )
    if not report.imported and report.duplicates:
        lines.append(
            f"  nothing new: all {len(report.duplicates)} image(s) found are already in the project"
        )
    for item in report.unpaired:
        lines.append(f"  ultrasound not paired ({item['key']}): {item['reason']}")
    if details:
        lines += [f"skipped {item['path']}: {item['reason']}" for item in report.skipped]
        lines += [
            f"already there {item['path']} (same content as {item['same_as']})"
            for item in report.duplicates
        ]
    return "\n".join(lines)
