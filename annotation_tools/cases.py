"""Which patient and which limb a radiograph shows, for folders of files outside a project.

Sources, first match wins:

1. a CSV table with columns ``file``, ``patient_id``, ``limb`` (``file`` relative to the image
   folder or absolute; either of the other two may be blank);
2. DICOM tags: ``PatientID``; ``ImageLaterality``/``Laterality`` + ``BodyPartExamined``;
3. the file name: ``<patient>_<limb>.<ext>`` or ``<patient>-<limb>.<ext>`` where the limb
   token is LH, RH, LF or RF (any case), e.g. ``P001_LH.dcm``, ``p001-rf.png``;
4. otherwise the patient is the file's stem and the limb is left for the locator to decide.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .imageio import ImageData
from .radiograph import LIMB_TOKEN, resolve_limb
from .vocabulary import Limb

__all__ = [
    "Case",
    "CaseTable",
    "identify",
    "patient_groups",
    "patient_of_file",
    "shard_by_patient",
]


@dataclass(frozen=True)
class Case:
    patient_id: str
    limb: str | None
    patient_source: str  # table | dicom | filename | stem
    limb_source: str  # given | dicom | filename | unknown


class CaseTable:
    """Patient and limb per file from a CSV (``file,patient_id,limb``)."""

    def __init__(self, rows: dict[str, tuple[str | None, str | None]]):
        self.rows = rows

    @classmethod
    def read(cls, path: str | Path, image_root: str | Path | None = None) -> CaseTable:
        path = Path(path)
        root = Path(image_root) if image_root else path.parent
        rows: dict[str, tuple[str | None, str | None]] = {}
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"file"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path}: the case table needs a 'file' column")
            for line, row in enumerate(reader, start=2):
                limb = (row.get("limb") or "").strip() or None
                if limb:
                    try:
                        limb = Limb.parse(limb).value
                    except ValueError as exc:
                        raise ValueError(f"{path}, line {line}: {exc}") from exc
                target = Path(row["file"].strip())
                key = str((target if target.is_absolute() else root / target).resolve())
                rows[key] = ((row.get("patient_id") or "").strip() or None, limb)
        return cls(rows)

    def lookup(self, path: str | Path) -> tuple[str | None, str | None]:
        return self.rows.get(str(Path(path).resolve()), (None, None))


def identify(path: str | Path, image: ImageData, table: CaseTable | None = None) -> Case:
    """Patient and limb of one radiograph (see the module docstring for the order)."""
    patient, limb = table.lookup(path) if table else (None, None)
    patient_source = "table" if patient else ""
    if not patient and image.patient_id:
        patient, patient_source = image.patient_id, "dicom"
    if not patient:
        stem = Path(path).stem
        match = LIMB_TOKEN.search(stem)
        if match and match.start() > 0:
            patient, patient_source = stem[: match.start()].rstrip("_- ."), "filename"
        else:
            patient, patient_source = stem, "stem"
    resolved, limb_source = resolve_limb(path, image, limb)
    return Case(patient, resolved.value if resolved else None, patient_source, limb_source)


def patient_of_file(path: str | Path, table: CaseTable | None = None) -> str:
    """The patient of a file without decoding its pixels (table, DICOM header, file name,
    stem - the order of :func:`identify`), so a cohort can be split before it is read."""
    patient = table.lookup(path)[0] if table else None
    if patient:
        return patient
    if Path(path).suffix.lower() in (".dcm", ".dicom") or _is_dicom(path):
        import pydicom

        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True)
            if str(getattr(header, "PatientID", "")).strip():
                return str(header.PatientID).strip()
        except Exception:  # unreadable here: the reader reports it properly later
            pass
    stem = Path(path).stem
    match = LIMB_TOKEN.search(stem)
    return stem[: match.start()].rstrip("_- .") if match and match.start() > 0 else stem


def _is_dicom(path: str | Path) -> bool:
    """A DICOM by its bytes (PACS exports often have no extension)."""
    from .imageio import sniff_format

    try:
        return sniff_format(path) == "dicom"
    except OSError:
        return False


def patient_groups(
    paths: list[Path], table: CaseTable | None = None
) -> list[tuple[str, list[Path]]]:
    """The files by patient (:func:`patient_of_file`, no pixels decoded), in sorted patient
    order; each patient's files in their given order. A folder is predicted patient by
    patient in this order, so its RA2-DREAM table comes out sorted by patient id."""
    by_patient: dict[str, list[Path]] = {}
    for path in paths:
        by_patient.setdefault(patient_of_file(path, table), []).append(Path(path))
    return sorted(by_patient.items())


def shard_by_patient(
    paths: list[Path], rank: int, world_size: int, table: CaseTable | None = None
) -> list[Path]:
    """The files of process ``rank`` of ``world_size``: whole patients (the symmetry stage needs
    all four limbs of a patient in one process), dealt round-robin in sorted patient order."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    patients = {path: patient_of_file(path, table) for path in paths}
    mine = set(sorted(set(patients.values()))[rank::world_size])
    return [path for path in paths if patients[path] in mine]
