"""Shared fixtures: small phantom data made on the fly (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-patient phantom project at reduced resolution, generated once per test session."""
    from annotation_tools.phantoms import generate_cohort

    out = tmp_path_factory.mktemp("cohort") / "project"
    generate_cohort(
        out, 3, seed=11, height=512, us_pairs=2, workers=1, progress=False, style="schematic"
    )
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a display Qt aborts the whole run; skip GUI tests and say how to run them."""
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("DISPLAY"):
        return
    skip = pytest.mark.skip(reason="no display: run `bash scripts/test.sh` (uses xvfb-run)")
    for item in items:
        if "gui" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cohort20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 20-patient phantom cohort of the export issue's acceptance check (small images)."""
    from annotation_tools.phantoms import generate_cohort

    out = tmp_path_factory.mktemp("cohort20") / "project"
    generate_cohort(
        out, 20, seed=4, height=384, us_pairs=1, workers=2, progress=False, style="schematic"
    )
    return out


@pytest.fixture(scope="session")
def full_res_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two phantom patients at the resolution the shipped weights were trained on."""
    from annotation_tools.phantoms import generate_cohort

    out = tmp_path_factory.mktemp("fullres") / "project"
    generate_cohort(
        out, 2, seed=21, height=1200, us_pairs=1, workers=2, progress=False, style="schematic"
    )
    return out


@pytest.fixture(scope="session")
def small_cohort_predicted(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ra-joints predict`` (radiographs and ultrasound, no explanations) on the small cohort,
    run once per session: the report and the torchrun comparison read the same predictions.
    Tests only read this folder."""
    from annotation_tools.cli import main

    out = tmp_path_factory.mktemp("predicted") / "predicted"
    status = main(
        [
            "predict",
            "--images", str(small_cohort / "radiographs"),
            "--ultrasound", str(small_cohort / "ultrasound_scores.csv"),
            "--out", str(out),
            "--no-explain", "--quiet",
        ]
    )  # fmt: skip
    assert status == 0
    return out
