"""Open a MONAI bundle in-process: its own configs build the network, weights load safely."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["BUNDLES_DIR", "bundle_parser", "load_bundle_network", "share_of_hits"]

# the repository's bundles (shipped weights); every default bundle path starts here
BUNDLES_DIR = Path(__file__).resolve().parents[1] / "monai_bundles"


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
    (plus ``overrides``), never rebuilt by hand. ``torch.load(weights_only=True)`` refuses
    pickled code, so weights received from another site cannot run anything.
    """
    root = Path(bundle_root)
    parser = bundle_parser(root, config_files, overrides)
    weights_path = Path(weights) if weights else root / "models" / "model.pt"
    if not weights_path.exists():
        raise FileNotFoundError(
            f"no weights at {weights_path}: train the bundle first (see {root}/docs/README.md)"
        )
    network = parser.get_parsed_content("network_def")
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return parser, network, weights_path
