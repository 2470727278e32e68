"""The seed registry, and the commands that must refuse a seed for what it is."""

import json
from pathlib import Path

import pytest

from annotation_tools import seeds
from annotation_tools.benchmarking import heldout_cohort, heldout_seed
from annotation_tools.bundles import bundle_for
from annotation_tools.cli import main
from annotation_tools.export import export_dataset
from annotation_tools.store import AnnotationStore


def _project(folder: Path, seed: int) -> Path:
    """An empty phantom project that records its seed (nothing to export or score)."""
    with AnnotationStore.open(folder):
        pass
    (folder / "cohort.json").write_text(json.dumps({"seed": seed, "patients": 0}))
    return folder


def test_every_seed_has_one_purpose_and_the_test_seeds_are_fresh():
    used: dict[tuple[int, str], str] = {}
    purposes: dict[int, set[str]] = {}
    for entry in seeds.REGISTRY:
        for seed in entry.seeds:
            key = (seed, entry.modality)
            assert key not in used, f"seed {key} is both {used[key]} and {entry.purpose}"
            used[key] = entry.purpose
            purposes.setdefault(seed, set()).add(entry.purpose)
    # a test seed is a test seed for every modality (a cohort holds both)
    assert all(p == {"test"} for p in purposes.values() if "test" in p)
    assert seeds.purpose_of(100, "radiograph") == "train"
    assert {seeds.purpose_of(s) for s in (300, 301, 400)} == {"train"}
    assert {seeds.purpose_of(s) for s in (2000, 2100, 3300, 3400)} == {"validation"}
    assert seeds.purpose_of(5000, "radiograph") == seeds.purpose_of(5199, "ultrasound") == "test"
    assert seeds.purpose_of(5150, "radiograph") is None  # registered for ultrasound only
    assert seeds.purpose_of(11) is None  # a test fixture: not registered
    assert seeds.ROI_PAIR_SEEDS == {"train": 7301, "validation": 7302, "test": 7303}
    with pytest.raises(ValueError, match="modality"):
        seeds.purpose_of(100, "mri")
    assert "| test | radiograph | 5000-5099 | reported figures only |" in seeds.registry_markdown()


def test_the_shipped_weights_list_the_cohorts_they_were_trained_on():
    expected = {
        "locator": {100},
        "scorer": {100, 300, 301},
        "multitask": {100},
        "ultrasound": {400},
    }
    for task, trained in expected.items():
        listed = set(seeds.trained_seeds(bundle_for(task).root))
        assert listed == trained, task
        assert all(seeds.purpose_of(s) == "train" for s in listed)
    # ensemble members' own "seed" (a training random seed, 0 and 1) is not a cohort
    assert 0 not in seeds.trained_seeds(bundle_for("multitask").root)


def test_a_benchmark_refuses_training_seeds_and_says_which_seeds_are_allowed(tmp_path):
    with pytest.raises(ValueError, match=r"seed 100 is a training seed.*5000-5099.*2000"):
        seeds.check_benchmark_seed(100, "radiograph")
    with pytest.raises(ValueError, match="seed 400 is a training seed for ultrasounds"):
        seeds.check_benchmark_seed(400, "ultrasound")
    # a seed only a bundle's train_info names (e.g. a retrained version)
    mine = tmp_path / "my_bundle" / "models"
    mine.mkdir(parents=True)
    (mine / "train_info.json").write_text(json.dumps({"data": "x", "seeds": [777]}))
    with pytest.raises(ValueError, match=r"seed 777 .*train_info\.json lists it"):
        seeds.check_benchmark_seed(777, bundles=[mine.parent])
    with pytest.raises(ValueError, match="seed 12 is one the weights were trained on"):
        seeds.check_benchmark_seed(12, train_info={"symmetry": {"seeds": [12]}})
    with pytest.raises(ValueError, match="calibrated on"):
        seeds.check_benchmark_seed(3300, calibration_seeds=[3300])
    assert seeds.check_benchmark_seed(5000, bundles=[mine.parent]) == "test"
    assert seeds.check_benchmark_seed(2000) == "validation"
    assert seeds.check_benchmark_seed(777) is None and seeds.check_benchmark_seed(None) is None


def test_benchmark_command_refuses_a_training_seed_before_generating_anything(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "--task", "locator", "--seed", "100", "--patients", "2"]) == 2
    assert "seed 100 is a training seed" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # no cohort was generated
    # an existing project: its own seed (cohort.json) counts, not --seed
    project = _project(tmp_path / "trees", 301)
    status = main(["benchmark", "--task", "scorer", "--heldout", str(project), "--seed", "5000"])
    assert status == 2 and "seed 301" in capsys.readouterr().err
    with pytest.raises(ValueError, match="seed 100"):
        heldout_cohort(None, 2, 100, modality="ultrasound", bundles=[bundle_for("multitask").root])
    assert heldout_seed(_project(tmp_path / "val", 2000), 5000) == 2000


def test_training_and_calibration_refuse_a_test_seed_plainly(tmp_path, capsys):
    for seed in (5000, 5150, 7303):
        with pytest.raises(ValueError, match=f"seed {seed} is a test seed"):
            seeds.check_training_seed(seed)
    seeds.check_training_seed(100)  # training seeds, validation seeds, real data: fine
    seeds.check_training_seed(2000)
    seeds.check_training_seed(None)
    project = _project(tmp_path / "test_cohort", 5042)
    out = tmp_path / "data"
    with (
        AnnotationStore.open(project, create=False) as store,
        pytest.raises(ValueError, match="seed 5042 is a test seed"),
    ):
        export_dataset(store, "scorer", out, folds=2)
    assert not out.exists()  # refused before anything was written
    status = main(["export", "--store", str(project), "--task", "locator", "--out", str(out)])
    assert status == 2 and "test seed" in capsys.readouterr().err
    # calibration is a choice made on validation data
    from annotation_tools.calibration import calibrate_scorer
    from annotation_tools.scoring import fit_symmetry

    with pytest.raises(ValueError, match="calibration on it.*calibrate on a validation seed"):
        calibrate_scorer(project)
    with pytest.raises(ValueError, match="seed 100 is a training seed"):
        calibrate_scorer(_project(tmp_path / "train_cohort", 100))
    with pytest.raises(ValueError, match="symmetry fit"):
        fit_symmetry(None, [project])  # refused before the scorer is used
