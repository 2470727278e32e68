"""Which phantom seeds train, which validate and which test: one registry, checked by the
commands that train, calibrate and benchmark.

A phantom cohort is fully determined by its seed (``ra-joints phantoms --seed N``), so a seed
*is* a data set. Figures mean something only if the seeds that report them were never used to
train the weights or to choose a setting:

* **train** - the cohorts the shipped weights were fitted on. ``ra-joints benchmark`` refuses
  them (and any seed a bundle's ``models/train_info.json`` or ``models/ensemble.json`` lists
  under ``"seeds"``).
* **validation** - cohorts on which settings were chosen: decoder settings, the multi-task
  member count, the scorer head, thresholds, the symmetry design, early stopping, the conformal
  calibration. Seeds 2000 and 2100 were used both to tune and to report figures before this
  registry existed, and 3400 reported the conformal coverage: they are burned for testing and
  are validation seeds now. The benchmark still accepts them (they stay its defaults, for
  comparing settings), but figures on them are validation figures.
* **test** - the seeds of the **reported figures only** (``docs/benchmarks.md``): radiographs
  5000-5099, ultrasound 5100-5199, and 7303 for the ultrasound ROI stream of
  :mod:`annotation_tools.roi_benchmark`. Nothing trains, calibrates or chooses a setting on
  them: ``ra-joints export`` (every training starts there), the symmetry fit and
  ``ra-joints calibrate`` refuse them plainly, with no flag to override.

Seeds are registered per modality (radiographs, ultrasound) because each cohort holds both and
a bundle sees only one; the test seeds are refused for training whatever the modality, since a
patient's radiograph and ultrasound grades come from the same disease activity. Seeds not in
the registry (tests' small fixtures, one-off measurements) are neither refused nor reported.

``python -m annotation_tools.seeds`` prints the registry as the table in docs/benchmarks.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MODALITIES",
    "PURPOSES",
    "RADIOGRAPH",
    "REGISTRY",
    "ROI_PAIR_SEEDS",
    "ULTRASOUND",
    "SeedUse",
    "check_benchmark_seed",
    "check_calibration_seed",
    "check_training_seed",
    "cohort_seed",
    "purpose_of",
    "registry_markdown",
    "seeds_for",
    "trained_seeds",
]

RADIOGRAPH = "radiograph"
ULTRASOUND = "ultrasound"
MODALITIES = (RADIOGRAPH, ULTRASOUND)
PURPOSES = ("train", "validation", "test")
TRAIN_INFO_FILES = ("train_info.json", "ensemble.json")


@dataclass(frozen=True)
class SeedUse:
    """Seeds with one purpose for one modality, and what they are used for."""

    seeds: tuple[int, ...] | range
    purpose: str
    modality: str
    use: str

    def __post_init__(self) -> None:
        if self.purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {self.purpose!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")

    def label(self) -> str:
        """``5000-5099`` for a range, ``300, 301`` for single seeds."""
        if isinstance(self.seeds, range) and len(self.seeds) > 2:
            return f"{self.seeds.start}-{self.seeds.stop - 1}"
        return ", ".join(str(s) for s in self.seeds)


# The ultrasound ROI calibration draws pairs from np.random.default_rng(seed) directly (a stream
# of pairs, not a cohort): fit on "train", choose the setting on "validation", report "test".
ROI_PAIR_SEEDS = {"train": 7301, "validation": 7302, "test": 7303}

REGISTRY: tuple[SeedUse, ...] = (
    SeedUse(
        (100,),
        "train",
        RADIOGRAPH,
        "locator, patch scorer and multi-task U-Net, 60 patients",
    ),
    SeedUse((300, 301), "train", RADIOGRAPH, "symmetry forests, 40 + 80 patients"),
    SeedUse((400,), "train", ULTRASOUND, "RATING ensemble, 100 patients x 4 pairs"),
    SeedUse((ROI_PAIR_SEEDS["train"],), "train", ULTRASOUND, "ROI calibration fit, pair stream"),
    SeedUse(
        (2000,),
        "validation",
        RADIOGRAPH,
        "decoder settings, multi-task member count, scorer head chosen here; benchmark default",
    ),
    SeedUse(
        (3300,),
        "validation",
        RADIOGRAPH,
        "conformal calibration of the grade sets, beta chosen on it (ra-joints calibrate)",
    ),
    SeedUse(
        (3400,),
        "validation",
        RADIOGRAPH,
        "conformal coverage reported before the registry; coverage benchmark default",
    ),
    SeedUse(
        (2100,),
        "validation",
        RADIOGRAPH,
        "locator decoder settings chosen on it together with 2000 (locator README)",
    ),
    SeedUse(
        (2100,),
        "validation",
        ULTRASOUND,
        "RATING figures reported and settings compared before the registry; benchmark default",
    ),
    SeedUse(
        (3500,),
        "validation",
        ULTRASOUND,
        "conformal calibration of RATING's grade sets, beta chosen on it "
        "(ra-joints calibrate --task ultrasound)",
    ),
    SeedUse(
        (ROI_PAIR_SEEDS["validation"],),
        "validation",
        ULTRASOUND,
        "ROI calibration setting chosen, pair stream",
    ),
    SeedUse(
        (1000,),
        "validation",
        RADIOGRAPH,
        "baselines benchmark (pixel baselines measured against the learned scorer)",
    ),
    SeedUse(
        (1100,),
        "validation",
        ULTRASOUND,
        "baselines benchmark (pixel baselines measured against RATING)",
    ),
    SeedUse(range(5000, 5100), "test", RADIOGRAPH, "reported figures only"),
    SeedUse(range(5100, 5200), "test", ULTRASOUND, "reported figures only"),
    SeedUse(
        (ROI_PAIR_SEEDS["test"],),
        "test",
        ULTRASOUND,
        "reported ROI proposal and colour box figures only, pair stream",
    ),
)


def _modality(modality: str | None) -> str | None:
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES} or None, got {modality!r}")
    return modality


def _entries(seed: int, modality: str | None) -> list[SeedUse]:
    return [
        e for e in REGISTRY if int(seed) in e.seeds and (modality is None or e.modality == modality)
    ]


def purpose_of(seed: int, modality: str | None = None) -> str | None:
    """``"train"``, ``"validation"`` or ``"test"`` for a registered seed of ``modality``
    (``None``: of either modality); ``None`` for a seed the registry does not list."""
    found = _entries(seed, _modality(modality))
    return found[0].purpose if found else None


def seeds_for(purpose: str, modality: str | None = None) -> list[SeedUse]:
    """The registry entries of one purpose (and modality)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    modality = _modality(modality)
    return [e for e in REGISTRY if e.purpose == purpose and (modality in (None, e.modality))]


def _listed(purpose: str, modality: str | None) -> str:
    return ", ".join(e.label() for e in seeds_for(purpose, modality)) or "none"


def _allowed_for_measuring(modality: str | None) -> str:
    return (
        f"use a test seed ({_listed('test', modality)}: for the reported figures) or a "
        f"validation seed ({_listed('validation', modality)}: for choosing settings); "
        "see annotation_tools/seeds.py"
    )


def cohort_seed(project: str | Path | None) -> int | None:
    """The seed a phantom project was generated with (its ``cohort.json``), else ``None``
    (real data, or a folder that is not a project)."""
    if project is None:
        return None
    cohort = Path(project) / "cohort.json"
    if not cohort.is_file():
        return None
    try:
        seed = json.loads(cohort.read_text()).get("seed")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{cohort} cannot be read to find the cohort's seed: {exc}") from exc
    return None if seed is None else int(seed)


def _seeds_in(info: Any) -> set[int]:
    """Every ``"seeds"`` list of ints at any depth of a train_info document."""
    found: set[int] = set()
    if isinstance(info, Mapping):
        for key, value in info.items():
            if key == "seeds" and isinstance(value, list):
                found |= {int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)}
            else:
                found |= _seeds_in(value)
    elif isinstance(info, list):
        for item in info:
            found |= _seeds_in(item)
    return found


def trained_seeds(bundle_or_models: str | Path) -> dict[int, str]:
    """Seed -> the file that says the weights were trained on it.

    Reads the ``"seeds"`` lists of ``models/train_info.json`` and ``models/ensemble.json`` of a
    bundle folder (or of a ``models`` folder given directly), nested ones included (the
    scorer's ``"symmetry": {"seeds": [...]}``). Member entries' ``"seed"`` (a training random
    seed, not a cohort) is not read.
    """
    root = Path(bundle_or_models)
    found: dict[int, str] = {}
    for folder in (root / "models", root):
        for name in TRAIN_INFO_FILES:
            path = folder / name
            if not path.is_file():
                continue
            try:
                info = json.loads(path.read_text())
            except ValueError as exc:
                raise ValueError(f"{path} is not valid JSON: {exc}") from exc
            for seed in sorted(_seeds_in(info)):
                found.setdefault(seed, str(path))
    return found


def _trained(train_info: Any, bundles: Iterable[str | Path]) -> dict[int, str]:
    trained: dict[int, str] = {}
    if train_info is not None:
        docs = train_info if isinstance(train_info, list | tuple) else [train_info]
        for doc in docs:
            for seed in _seeds_in(doc):
                trained.setdefault(seed, "the given train_info")
    for bundle in bundles:
        if bundle is not None:
            for seed, where in trained_seeds(bundle).items():
                trained.setdefault(seed, where)
    return trained


def _check_not_trained(
    seed: int,
    modality: str,
    trained: Mapping[int, str],
    calibration_seeds: Iterable[int],
    step: str,
    advice: str,
) -> list[SeedUse]:
    entries = _entries(seed, modality)
    if entries and entries[0].purpose == "train":
        raise ValueError(
            f"seed {seed} is a training seed for {modality}s ({entries[0].use}); "
            f"{step} on it uses the data the weights were fitted on; {advice}"
        )
    if seed in trained:
        raise ValueError(
            f"seed {seed} is one the weights were trained on ({trained[seed]} lists it under "
            f'"seeds"): {step} on it is not held out; {advice}'
        )
    if seed in {int(s) for s in calibration_seeds}:
        raise ValueError(
            f"seed {seed} is the cohort the grade sets were calibrated on: their coverage "
            f"must be measured on other patients; {advice}"
        )
    return entries


def check_benchmark_seed(
    seed: int | None,
    modality: str = RADIOGRAPH,
    *,
    train_info: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    bundles: Iterable[str | Path] = (),
    calibration_seeds: Iterable[int] = (),
) -> str | None:
    """Refuse to measure on a seed the weights were trained (or calibrated) on.

    Refused: a registered training seed of ``modality``, any seed listed under ``"seeds"`` in
    ``train_info`` (a dict or several) or in the train_info/ensemble files of ``bundles``, and
    ``calibration_seeds`` (e.g. the conformal calibration's cohort, for a coverage figure).
    ``seed=None`` (a real project, no cohort.json) passes. Returns the seed's purpose
    (``None`` for an unregistered seed).
    """
    if seed is None:
        return None
    modality = _modality(modality) or RADIOGRAPH
    entries = _check_not_trained(
        int(seed),
        modality,
        _trained(train_info, bundles),
        calibration_seeds,
        "a benchmark",
        _allowed_for_measuring(modality),
    )
    return entries[0].purpose if entries else None


def _test_entry(seed: int) -> SeedUse | None:
    found = [e for e in _entries(seed, None) if e.purpose == "test"]
    return found[0] if found else None


def check_training_seed(
    seed: int | None, what: str = "training", advice: str | None = None
) -> None:
    """Refuse to train on a test seed (of either modality; there is no override).

    ``what`` names the step in the message (``"training"``, ``"the symmetry fit"``, ...) and
    ``advice`` replaces the default "train on another seed". ``seed=None`` (a project without
    cohort.json) passes.
    """
    if seed is None:
        return
    entry = _test_entry(int(seed))
    if entry is not None:
        advice = advice or (
            f"train on another seed (registered training seeds: {_listed('train', None)}; "
            "annotation_tools/seeds.py)"
        )
        raise ValueError(
            f"seed {int(seed)} is a test seed ({entry.modality}s, {entry.use}); {what} on it "
            f"would put the reported figures' patients into the model; {advice}"
        )


def check_calibration_seed(
    seed: int | None,
    modality: str = RADIOGRAPH,
    *,
    train_info: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    bundles: Iterable[str | Path] = (),
) -> None:
    """Calibration is a choice made on validation data: refuse a test seed (no override) and
    a seed the weights were trained on (their residuals there are too small to calibrate on)."""
    modality = _modality(modality) or RADIOGRAPH
    advice = (
        f"calibrate on a validation seed ({_listed('validation', modality)}) or another "
        "cohort the weights never saw (annotation_tools/seeds.py)"
    )
    check_training_seed(seed, "calibration", advice)
    if seed is None:
        return
    _check_not_trained(
        int(seed), modality, _trained(train_info, bundles), (), "calibration", advice
    )


def registry_markdown() -> str:
    """The registry as the markdown table of docs/benchmarks.md ("Seeds by purpose")."""
    lines = ["| purpose | modality | seeds | used for |", "| --- | --- | --- | --- |"]
    for purpose in PURPOSES:
        for e in seeds_for(purpose):
            lines.append(f"| {purpose} | {e.modality} | {e.label()} | {e.use} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(registry_markdown())
