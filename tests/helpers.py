"""Geometry checks shared by the tests (scikit-image only: no plotting library needed)."""

import struct
import zlib

import numpy as np
from skimage.measure import points_in_poly


def inside_or_near(polygon, points, tol):
    """Inside the polygon or within ``tol`` of its outline, whatever the polygon's orientation."""
    polygon = np.asarray(polygon, dtype=float)
    points = np.asarray(points, dtype=float)
    inside = points_in_poly(points, polygon)
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab = b - a
    t = np.clip(((points[:, None] - a) * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)
    nearest = a + t[..., None] * ab
    dist = np.linalg.norm(points[:, None] - nearest, axis=-1).min(axis=1)
    return inside | (dist <= tol)


# MONAI bundle arguments that point at a bundle's inference network (run from its folder)
INFERENCE_CONFIG = (
    "--meta_file",
    "configs/metadata.json",
    "--config_file",
    "configs/inference.json",
    "--bundle_root",
    ".",
)


def bundle_cmd(*args):
    """``python -m monai.bundle ...`` with this interpreter."""
    import sys

    return [sys.executable, "-m", "monai.bundle", *args]


def run_in(bundle, cmd, timeout=600):
    """Run a command in a bundle folder as a user would; fail with its output when it fails."""
    import os
    import subprocess

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run_here(bundle, cmd):
    """A ``python -m monai.bundle ...`` command line run in this process from the bundle folder.

    MONAI's own entry point parses it, so it means what typing it would; it spares the ~10 s
    import of torch and MONAI a new process pays (the inference tests still run subprocesses).
    """
    import contextlib

    from annotation_tools.bundle_steps import run_command

    with contextlib.chdir(bundle):
        run_command(cmd)


def export_torchscript(bundle, target):
    """The bundle's network_def and shipped weights as TorchScript, through MONAI's tooling."""
    run_here(
        bundle,
        bundle_cmd(
            "ckpt_export",
            "network_def",
            "--filepath",
            str(target),
            "--ckpt_file",
            "models/model.pt",
            *INFERENCE_CONFIG,
        ),
    )


def check_bundle_layout(bundle, files):
    """The model-zoo files exist and the metadata carries a changelogged version and says the
    phantom-trained weights are not for clinical use; returns the metadata."""
    import json

    for rel in files:
        assert (bundle / rel).exists(), rel
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert "not for clinical use" in meta["intended_use"].lower()
    for key in ("monai_version", "pytorch_version", "numpy_version", "task", "description"):
        assert meta[key], key
    return meta


def unannotated_project(cohort, dest, patients=1):
    """The cohort's files for ``patients`` patients in a new project with no annotations."""
    import shutil

    from annotation_tools.store import AnnotationStore

    with AnnotationStore.open(cohort, create=False) as source:
        keep = source.patients()[:patients]
        new_ids = {}
        with AnnotationStore.open(dest) as store:
            for record in source.images():
                if record.patient_id not in keep:
                    continue
                target = dest / record.path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(cohort / record.path, target)
                new_ids[record.id] = store.add_image(
                    target,
                    patient_id=record.patient_id,
                    modality=record.modality,
                    limb=record.limb,
                    width=record.width,
                    height=record.height,
                )
            for pair in source.us_pairs():
                if pair["patient_id"] in keep:
                    store.add_us_pair(
                        new_ids[pair["greyscale_image_id"]],
                        new_ids[pair["doppler_image_id"]],
                        site=pair["site"],
                    )
    return dest


def pacs_export(root):
    """Two phantom patients as a PACS export: nested folders, numbered files without
    extension, DICOM US frames and PNG ultrasound frames, plus what must be skipped
    (a DICOMDIR, a text file, a truncated DICOM, a PNG no table, tag or name labels)."""
    import shutil

    import pydicom

    from annotation_tools.imageio import write_dicom, write_png
    from annotation_tools.phantoms import generate_patient

    expected = {}
    for index in range(2):
        patient = generate_patient(5, index, height=256, us_pairs=1, style="schematic")
        pid = patient.patient_id
        study = root / pid / "STUDY1"
        for k, (limb, phantom) in enumerate(sorted(patient.limbs.items())):
            series = study / f"SE{k}"
            series.mkdir(parents=True)
            name = f"IM{k:05d}" if k % 2 == 0 else f"{pid}_{limb}.dcm"
            write_dicom(
                series / name, phantom.image, patient_id=pid, modality="DX",
                laterality=limb[0], body_part="HAND" if limb[1] == "H" else "FOOT",
                bits_stored=12, uid_seed=f"{pid}-{limb}",
            )  # fmt: skip
            ds = pydicom.dcmread(series / name)
            ds.StudyDate = "20240131"
            ds.save_as(series / name)
            expected[(pid, limb)] = series / name
        us = patient.ultrasound[0]
        if index == 0:  # DICOM US, no extension, one series per frame
            (study / "US").mkdir()
            write_dicom(study / "US" / "IM1", us.greyscale, patient_id=pid, modality="US",
                        uid_seed=f"{pid}-g")  # fmt: skip
            write_dicom(study / "US" / "IM2", us.doppler, patient_id=pid, modality="US",
                        uid_seed=f"{pid}-d")  # fmt: skip
        else:  # phantom-named PNG frames
            (root / "ultrasound").mkdir()
            write_png(root / "ultrasound" / f"{pid}_US1_{us.site}_gs.png", us.greyscale)
            write_png(root / "ultrasound" / f"{pid}_US1_{us.site}_doppler.png", us.doppler)
    first = expected[sorted(expected)[0]]
    shutil.copy(first, root / "DICOMDIR")  # an index by name: never read as an image
    (root / "README.txt").write_text("export notes")
    data = first.read_bytes()
    (root / "broken.dcm").write_bytes(data[: len(data) // 2])
    nolimb = (np.ones((128, 96)) * 500).astype(np.uint16)
    write_png(root / "scan0001.png", nolimb)  # no table, no tags, no token: needs a decision
    return expected


def huge_png(path, side: int = 20000):
    """A side x side 1-bit PNG written row by row: a few hundred KB on disk, 400 MB decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path
