"""Where the bundles are, what each one is, and how to open one safely.

* :func:`bundles_dir` - the shipped bundles travel inside the wheel (the ``monai_bundles``
  package data) and are found with :mod:`importlib.resources`; ``RA_JOINTS_BUNDLES`` (or the
  CLI's ``--bundles``) points at another folder of bundles.
* :func:`registry` / :func:`bundle_for` - what a bundle is (its task, runner, shipped weights
  or ensemble manifest, retraining recipe) is read from the bundle's own files: the
  ``ra_joints`` section of ``configs/metadata.json`` and the ``export`` item of
  ``configs/train.json`` (overridden by ``configs/quick.json`` for the quick configuration),
  which refers to the training config's own sizes so that export and training cannot disagree.
  Python holds no list of bundle names.
* :func:`load_weights` - the one safe weight loader (``torch.load(weights_only=True)``);
  :func:`weights_hash` - the one definition of a model's weights hash.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BUNDLES_ENV",
    "CLINICAL_NOTE",
    "ENSEMBLE_MANIFEST",
    "BundleInfo",
    "BundleNotFound",
    "BundleNotTrusted",
    "WeightsRefused",
    "bundle_for",
    "bundle_parser",
    "bundle_path",
    "bundles_dir",
    "check_device",
    "check_trusted",
    "ensemble_manifest",
    "is_shipped",
    "load_bundle_network",
    "load_weights",
    "registry",
    "save_rank_weights",
    "share_of_hits",
    "shipped_bundles_dir",
    "weights_hash",
]

BUNDLES_ENV = "RA_JOINTS_BUNDLES"
CLINICAL_NOTE = "phantom-trained weights: not for clinical use"  # on every prediction file


class BundleNotFound(LookupError):
    """No bundle of that task or name in the bundles folder."""


class BundleNotTrusted(BundleNotFound):
    """A bundle from a folder the person supplied, not trusted explicitly.

    A bundle's configs are code (MONAI ``_target_`` and ``$`` expressions run when parsed), so a
    bundle received from elsewhere runs only when the person says so (``--trust-bundle``,
    ``trusted=True``). A subclass of :class:`BundleNotFound`, so every caller that reports an
    unavailable bundle and goes on does the same here.
    """

    def __init__(self, message: str, root: str | Path | None = None):
        super().__init__(message)
        self.root = Path(root) if root is not None else None  # the dock names it when asking


_DEVICE = re.compile(r"cpu|cuda|cuda:\d{1,2}|mps")


def check_device(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, else ``ValueError``: a device name reaches
    torch only as a validated plain string."""
    value = str(text).strip()
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"device must be cpu, cuda, cuda:N or mps, got {text!r}")
    return value


def shipped_bundles_dir() -> Path:
    """The bundles installed with the package (trusted: they come with the code)."""
    from importlib.resources import files

    return Path(str(files("monai_bundles"))).resolve()


def is_shipped(root: str | Path) -> bool:
    """Whether a bundle folder is one of the shipped ones (not a copy elsewhere)."""
    return Path(root).resolve().parent == shipped_bundles_dir()


def check_trusted(root: str | Path, trusted: bool) -> None:
    """Raise :class:`BundleNotTrusted` for a user-supplied bundle unless ``trusted``.

    Called before any of the bundle's configs is parsed.
    """
    if trusted or is_shipped(root):
        return
    raise BundleNotTrusted(
        f"{Path(root)} is not a shipped bundle: its configs are executable code (MONAI "
        "_target_ and $ expressions run when they are read); run it only if you trust its "
        "source, with --trust-bundle (library: trusted=True)",
        root,
    )


def bundles_dir() -> Path:
    """The folder that holds the bundles: ``$RA_JOINTS_BUNDLES`` or the installed package data.

    Read at call time, so a ``--bundles`` option or a test can redirect it.
    """
    given = os.environ.get(BUNDLES_ENV)
    if given:
        return Path(given).expanduser().resolve()
    from importlib.resources import files

    return Path(str(files("monai_bundles")))


@dataclass(frozen=True)
class BundleInfo:
    """One bundle as its own files describe it (see the module docstring)."""

    name: str  # the folder name, also the provenance name of its predictions
    root: Path
    task: str  # "locator", "scorer", "ultrasound" or "multitask": export/benchmark task
    runner: str  # "module:Class" with a ``from_bundle`` that loads it for prediction
    weights: str  # shipped weights file or ensemble manifest, relative to the bundle root
    version_weights: str  # what a retrained version folder holds for prediction
    companions: tuple[str, ...] = ()  # files training writes next to the weights, kept with them
    ensemble: bool = False  # trained as several members, then packed (``ensemble.json``)
    retrainable: bool = True
    version: str = ""  # the bundle's version (metadata.json)

    @property
    def weights_path(self) -> Path:
        return self.root / self.weights

    def weights_sha256(self) -> str:
        """The hash its predictions record (:func:`weights_hash`): of the weights file, or of
        the members an ensemble manifest lists."""
        if self.ensemble:
            return weights_hash(ensemble_manifest(self.weights_path.parent)[0])
        return weights_hash([self.weights_path])

    def available(self) -> tuple[bool, str]:
        """(ready, reason): a bundle without its weights is "not available"."""
        if not (self.root / "configs" / "inference.json").exists():
            return False, f"{self.name}: not available (no configs/inference.json in {self.root})"
        if not self.weights_path.exists():
            return False, f"{self.name}: not available (no {self.weights}; train it first)"
        return True, f"{self.name}: ready"

    def training_configs(self, quick: bool = True) -> list[str]:
        """The config files of one training run, relative to the bundle root."""
        return ["configs/train.json"] + (["configs/quick.json"] if quick else [])

    def export_options(self, quick: bool = True) -> dict[str, Any]:
        """``export_dataset`` keyword arguments that match the quick or the full training
        configuration (its ``export`` item, references resolved by MONAI's parser)."""
        parser = bundle_parser(self.root, self.training_configs(quick))
        if "export" not in parser.get():
            return {}
        options = dict(parser.get_parsed_content("export"))
        if "shape" in options:
            options["shape"] = tuple(int(v) for v in options["shape"])
        return options

    def runner_object(self) -> Any:
        """What ``runner`` names: a class with ``from_bundle`` or a bundle-running function."""
        module, _, attr = self.runner.partition(":")
        return getattr(importlib.import_module(module), attr)

    @classmethod
    def read(cls, root: str | Path) -> BundleInfo:
        root = Path(root)
        meta_file = root / "configs" / "metadata.json"
        try:
            meta = json.loads(meta_file.read_text())
            section = meta["ra_joints"]
        except (OSError, ValueError, KeyError) as exc:
            raise BundleNotFound(
                f"{root} is not a napari-ra-joints bundle (no 'ra_joints' section in "
                f"{meta_file}: {exc})"
            ) from exc
        return cls(
            name=root.name,
            root=root,
            task=section["task"],
            runner=section["runner"],
            weights=section["weights"],
            version_weights=section.get("version_weights", Path(section["weights"]).name),
            companions=tuple(section.get("companions", ())),
            ensemble=bool(section.get("ensemble", False)),
            retrainable=bool(section.get("retrainable", True)),
            version=str(meta.get("version", "")),
        )


def registry(root: str | Path | None = None) -> dict[str, BundleInfo]:
    """Every bundle in ``root`` (default :func:`bundles_dir`), by name, sorted."""
    return dict(_registry(str(Path(root) if root else bundles_dir())))


@cache
def _registry(root: str) -> tuple[tuple[str, BundleInfo], ...]:
    found = []
    for meta in sorted(Path(root).glob("*/configs/metadata.json")):
        try:
            info = BundleInfo.read(meta.parents[1])
        except BundleNotFound:
            continue
        found.append((info.name, info))
    return tuple(found)


def bundle_for(task_or_name: str, root: str | Path | None = None) -> BundleInfo:
    """The bundle of a task (``"locator"``) or with a folder name, or a bundle folder path."""
    candidate = Path(task_or_name)
    if candidate.is_dir() and (candidate / "configs" / "metadata.json").is_file():
        return BundleInfo.read(candidate)
    bundles = registry(root)
    if task_or_name in bundles:
        return bundles[task_or_name]
    for info in bundles.values():
        if info.task == task_or_name:
            return info
    where = Path(root) if root else bundles_dir()
    raise BundleNotFound(
        f"no bundle for {task_or_name!r} in {where} (found: {', '.join(bundles) or 'none'}); "
        f"set {BUNDLES_ENV} or --bundles to a folder of bundles"
    )


def bundle_path(task_or_name: str, given: str | Path | None = None) -> Path:
    """``given`` when set, else the root of the registered bundle of that task."""
    return Path(given) if given else bundle_for(task_or_name).root


def share_of_hits(hits: int, total: int) -> float:
    """``hits / total`` over all processes of a distributed run (one process: as is).

    Validation metrics of the bundles count hits per rank; without this each rank would
    report (and checkpoint on) only its own shard of the validation set.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        counts = torch.tensor([hits, total], dtype=torch.float64)
        torch.distributed.all_reduce(counts)
        hits, total = int(counts[0]), int(counts[1])
    return hits / total if total else 0.0


class WeightsRefused(ValueError):
    """A weights file that is not a plain state dict (pickled code or objects)."""


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file, never running pickled code (``weights_only=True``).

    Weights received from another site cannot execute anything; a checkpoint that wraps the
    state dict under ``"model"`` (MONAI's ``CheckpointSaver``) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a pickle with code or objects: never run it
        raise WeightsRefused(
            f"{path} is not a plain weights file (it holds pickled objects that "
            "weights_only loading refuses); it was not loaded"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return state


ENSEMBLE_MANIFEST = "ensemble.json"


def ensemble_manifest(models_dir: str | Path) -> tuple[list[Path], dict[str, Any]]:
    """``(member files, manifest)`` of ``models_dir/ensemble.json``: the one ensemble schema.

    The manifest is ``{"members": [{"file": ..., <training facts>}, ...], ...}``; optional keys
    are ``default_members`` (how many members inference uses unless told) and ``network`` (the
    arguments the members were built with). A bad manifest raises a ``ValueError`` naming it.
    """
    manifest = Path(models_dir) / ENSEMBLE_MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"no {ENSEMBLE_MANIFEST} in {models_dir}: train the bundle first")
    try:
        document = json.loads(manifest.read_text())
        files = [manifest.parent / str(m["file"]) for m in document["members"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{manifest} is not an ensemble manifest: {exc}") from exc
    if not files:
        raise ValueError(f"{manifest} lists no members")
    return files, document


def weights_hash(files: Sequence[str | Path]) -> str:
    """SHA-256 of the one weights file, or of the members' hashes in order (an ensemble).

    Every bundle records this in its predictions' provenance, so a revision in the store
    names the exact weights that made it.
    """
    from .imageio import file_sha256

    hashes = [file_sha256(f) for f in files]
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


def bundle_parser(
    bundle_root: str | Path,
    config_files: Sequence[str] = ("configs/inference.json",),
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """MONAI ``ConfigParser`` of a bundle's configs and metadata, rooted at the bundle."""
    from monai.bundle import ConfigParser

    root = Path(bundle_root)
    parser = ConfigParser()
    parser.read_config([str(root / c) for c in config_files])
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(root)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def load_bundle_network(
    bundle_root: str | Path,
    *,
    config_files: Sequence[str] = ("configs/inference.json",),
    weights: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Any, torch.nn.Module, Path]:
    """``(parser, network, weights path)`` of a bundle, weights loaded with ``weights_only``.

    The configs stay the single description of the network: ``network_def`` is parsed from them
    (plus ``overrides``), never rebuilt by hand.
    """
    root = Path(bundle_root)
    parser = bundle_parser(root, config_files, overrides)
    weights_path = Path(weights) if weights else root / "models" / "model.pt"
    if not weights_path.exists():
        raise FileNotFoundError(
            f"no weights at {weights_path}: train the bundle first (see {root}/docs/README.md)"
        )
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(load_weights(weights_path))
    return parser, network, weights_path


def save_rank_weights(network: torch.nn.Module, folder: str | Path | None) -> None:
    """Multi-process test hook: each rank writes its final weights (DDP keeps them equal)."""
    if not folder:
        return
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    module = getattr(network, "module", network)
    Path(folder).mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), Path(folder) / f"rank{rank}.pt")
