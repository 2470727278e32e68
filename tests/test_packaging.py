"""The core distribution: a library, a CLI and the bundles, with no napari; bundles found in
the installed package or wherever RA_JOINTS_BUNDLES points."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"locator", "scorer", "ultrasound", "multitask"}


def test_every_bundle_describes_itself_and_its_quick_recipe_matches_its_weights():
    from annotation_tools.bundles import bundle_for, bundle_parser, registry

    bundles = registry()
    assert {info.task for info in bundles.values()} == TASKS
    for info in bundles.values():
        assert info.available()[0], info.available()[1]
        assert info.runner_object() is not None
    # the scorer's quick export used to be 128 px in the CLI while the shipped weights see 64
    scorer = bundle_for("scorer")
    served = bundle_parser(scorer.root).get_parsed_content("patch_size")
    assert scorer.export_options(quick=True)["patch_size"] == served == 64
    locator = bundle_for("locator")
    served = bundle_parser(locator.root).get_parsed_content("spatial_size")
    assert locator.export_options(quick=True)["size"] == served[0]
    assert bundle_for("ultrasound").export_options(quick=True)["folds"] == 3  # shipped: 3 folds
    assert bundle_for("multitask").export_options(quick=False)["shape"] == (864, 928)


def test_bundles_folder_can_be_redirected(tmp_path, monkeypatch):
    from annotation_tools.bundles import BUNDLES_ENV, BundleNotFound, bundle_for, bundles_dir

    shipped = bundle_for("locator").root
    copy = tmp_path / "site_bundles" / "my_locator"
    shutil.copytree(shipped / "configs", copy / "configs")
    monkeypatch.setenv(BUNDLES_ENV, str(tmp_path / "site_bundles"))
    assert bundles_dir() == (tmp_path / "site_bundles").resolve()
    info = bundle_for("locator")
    assert info.root == copy.resolve() and info.name == "my_locator"
    assert not info.available()[0] and "train it first" in info.available()[1]
    with pytest.raises(BundleNotFound, match="RA_JOINTS_BUNDLES"):
        bundle_for("ultrasound")


def test_cli_lists_the_bundles_it_uses(tmp_path):
    run = [sys.executable, "-m", "annotation_tools.cli", "bundles", "--json"]
    listed = json.loads(subprocess.run(run, capture_output=True, text=True, check=True).stdout)
    assert {b["task"] for b in listed["bundles"]} == TASKS
    assert all(b["ready"] and Path(b["root"]).is_dir() for b in listed["bundles"])
    empty = subprocess.run(
        [sys.executable, "-m", "annotation_tools.cli", "--bundles", str(tmp_path), "bundles"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert empty.returncode == 1 and "none found" in empty.stderr


def test_cli_bundles_option_points_predict_at_another_folder(tmp_path):
    (tmp_path / "images").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "annotation_tools.cli", "--bundles", str(tmp_path / "none"),
         "predict", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no bundle for 'locator'" in proc.stderr and str(tmp_path / "none") in proc.stderr


def test_the_library_and_cli_need_no_napari_or_qt(tmp_path):
    """Every annotation_tools module imports, and the CLI runs, with napari/Qt unimportable."""
    modules = sorted(p.stem for p in (ROOT / "annotation_tools").glob("*.py"))
    script = (
        "import sys\n"
        "for name in ('napari', 'qtpy', 'PyQt5', 'PySide2', 'PySide6', 'magicgui', 'vispy'):\n"
        "    sys.modules[name] = None\n"
        f"for m in {modules!r}:\n"
        "    __import__('annotation_tools.' + m)\n"
        "from annotation_tools.cli import main\n"
        "from annotation_tools.bundles import registry\n"
        "assert len(registry()) == 4\n"
        "sys.exit(main(['summary', '--help']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr


def test_no_import_cycles_and_no_private_names_across_modules():
    """The library's modules form a DAG, and none takes another's ``_private`` names."""
    import ast

    imports: dict[str, set[str]] = {}
    private = []
    for path in sorted((ROOT / "annotation_tools").glob("*.py")):
        tree = ast.parse(path.read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                found.add(node.module)
                private += [(path.stem, a.name) for a in node.names if a.name.startswith("_")]
        imports[path.stem] = found
    assert private == []

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(imports.get(start, ()))
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo += imports.get(module, ())
        return seen

    assert [m for m in imports if m in reach(m)] == []


@pytest.mark.slow
def test_wheel_carries_the_bundles_and_keeps_napari_optional(tmp_path):
    source = tmp_path / "src"  # build from a copy: the checkout gets no build/ folder
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "runs", "cohort", "results", "*.egg-info",
            "__pycache__", ".pytest_cache", ".ruff_cache",
        ),
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("napari_ra_joints-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [
            line.split(":", 1)[1].strip()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
        manifest = next(n for n in names if n.endswith("napari_ra_joints/napari.yaml"))
        assert manifest
        for bundle in ("ra_joint_locator", "ra_joint_scorer", "ra_us_rating", "ra_multitask_unet"):
            meta = json.loads(archive.read(f"monai_bundles/{bundle}/configs/metadata.json"))
            assert meta["ra_joints"]["task"] in TASKS
            weights = f"monai_bundles/{bundle}/{meta['ra_joints']['weights']}"
            assert weights in names, weights
            for needed in ("configs/inference.json", "configs/train.json", "LICENSE"):
                assert f"monai_bundles/{bundle}/{needed}" in names, (bundle, needed)
    core = [r for r in requires if "extra ==" not in r]
    assert core and not any(
        r.split(">")[0].split("[")[0].strip() in {"napari", "magicgui", "npe2"} for r in core
    )
    assert any(r.startswith("napari") and 'extra == "napari"' in r for r in requires)


# the config combinations the bundles are run with (docs, scripts, retraining, tests)
CONFIG_SETS = (
    ("inference.json",),
    ("inference.json", "evaluate.json"),
    ("train.json", "quick.json"),
    ("train.json", "quick.json", "multi_gpu_train.json"),
    ("train_jigsaw.json", "quick.json"),
    ("train_symmetry.json", "quick.json"),
)


def test_every_module_alias_a_bundle_config_uses_is_imported():
    """MONAI replaces a top-level key of an earlier config file by a later file's, so an alias
    (``ra_locator.``) is usable only if the last ``imports`` of the set imports it."""
    import re

    from annotation_tools.bundles import registry

    checked = 0
    for info in registry().values():
        for names in CONFIG_SETS:
            paths = [info.root / "configs" / n for n in names]
            if not all(p.is_file() for p in paths):
                continue
            merged: dict = {}
            for path in paths:
                merged.update(json.loads(path.read_text()))
            aliases = {i.split(" as ")[1] for i in merged.get("imports", []) if " as " in i}
            text = json.dumps({k: v for k, v in merged.items() if k != "imports"})
            used = set(re.findall(r"\b(ra_\w+)\.", text))
            assert used <= aliases, (info.name, names, used - aliases)
            checked += 1
    assert checked >= 12
