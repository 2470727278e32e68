"""Training pieces of the ``ra_us_rating`` bundle that MONAI does not ship.

The bundle's configs describe the pipeline (datalists, MONAI transforms, engines, handlers);
these are the few parts they reference: the ECOC target, the jigsaw puzzle as a random MONAI
transform, the permutation set on disk, class-balanced sampling weights, the validation metric
and how a stage starts from the previous stage's (or the jigsaw) weights.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from monai.transforms import MapTransform, Randomizable

from .bundles import load_weights
from .rating import GRADES, STAGES, RatingMember, jigsaw_permutations, jigsaw_puzzle

__all__ = [
    "EcocTargetd",
    "JigsawPuzzled",
    "SplitAccuracy",
    "balanced_weights",
    "initialise_member",
    "network_settings",
    "pack_members",
    "permutation_set",
]


def ecoc_target(grade: int, splits: Sequence[int]) -> np.ndarray:
    """Grade -> binary targets ``[grade >= k for k in splits]``."""
    if not 0 <= int(grade) < GRADES:
        raise ValueError(f"grade must be 0-{GRADES - 1}, got {grade}")
    return np.array([float(int(grade) >= k) for k in splits], dtype=np.float32)


class EcocTargetd(MapTransform):
    """Adds ``label``: the ECOC binary targets of the grade under ``keys`` (one key)."""

    def __init__(self, keys: str, splits: Sequence[int], label_key: str = "label"):
        super().__init__(keys)
        self.splits = tuple(splits)
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        (key,) = self.keys
        d[self.label_key] = torch.as_tensor(ecoc_target(int(d[key]), self.splits))
        return d


class JigsawPuzzled(Randomizable, MapTransform):
    """Replaces ``image`` (C, 3 x cell, 3 x cell) by its shuffled tiles (9, C, tile, tile) and
    adds ``label`` = the permutation's index.

    Every tile is normalised on its own (zero mean, unit variance), so the network cannot solve
    the puzzle from brightness gradients across the image instead of learning anatomy.
    """

    def __init__(
        self,
        keys: str,
        permutations: np.ndarray,
        cell: int = 75,
        tile: int = 64,
        label_key: str = "label",
    ):
        MapTransform.__init__(self, keys)
        self.permutations = np.asarray(permutations)
        self.cell, self.tile, self.label_key = int(cell), int(tile), label_key
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        d = dict(data)
        (key,) = self.keys
        image = torch.as_tensor(d[key], dtype=torch.float32)
        tiles, label = jigsaw_puzzle(
            image, self.permutations, np.random.default_rng(self._seed), self.cell, self.tile
        )
        mean = tiles.mean(dim=(1, 2, 3), keepdim=True)
        std = tiles.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        d[key] = (tiles - mean) / std
        d[self.label_key] = torch.tensor(label, dtype=torch.long)
        return d


def permutation_set(path: str | Path, n: int, seed: int = 0) -> np.ndarray:
    """The jigsaw permutation set, generated once (deterministically) and kept with the bundle.

    The network's classes are indices into this set, so inference-time users of the
    pretrained weights need exactly the same file; an existing file that does not match ``n``
    is an error rather than silently regenerated.
    """
    path = Path(path)
    if path.exists():
        stored = json.loads(path.read_text())
        perms = np.asarray(stored["permutations"], dtype=np.int64)
        if len(perms) != n:
            raise ValueError(
                f"{path} holds {len(perms)} permutations but the config asks for {n}; "
                "delete the file to regenerate it, or set n_permutations to match"
            )
        return perms
    perms = jigsaw_permutations(n, seed=seed)
    hamming = (perms[:, None] != perms[None]).sum(-1)
    np.fill_diagonal(hamming, perms.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "n": int(n),
        "seed": int(seed),
        "min_hamming_distance": int(hamming.min()),
        "permutations": perms.tolist(),
    }
    path.write_text(json.dumps(document))
    return perms


def balanced_weights(items: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """Sampling weight per item, 1 / (items of its grade): every grade is drawn equally often."""
    grades = np.array([int(item[key]) for item in items])
    if grades.size == 0:
        raise ValueError("no training items: check the datalist and the validation fold")
    counts = np.bincount(grades, minlength=GRADES)
    return [1.0 / counts[g] for g in grades]


class SplitAccuracy(Metric):
    """Validation metric: share of binary split decisions (probability > 0.5) that are right.

    Works for one-split and all-split networks alike; takes batched ``(logits, targets)``.
    """

    def reset(self) -> None:
        self._hits = 0
        self._total = 0

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        logits, target = output
        decided = (torch.as_tensor(logits) > 0).float()
        target = torch.as_tensor(target).float().reshape(decided.shape)
        self._hits += int((decided == target).sum())
        self._total += int(target.numel())

    def compute(self) -> float:
        from .bundles import share_of_hits

        return share_of_hits(self._hits, self._total)


def initialise_member(
    member: RatingMember,
    stage: str,
    member_file: str | Path,
    jigsaw_dir: str | Path | None = None,
) -> RatingMember:
    """Start a stage where the previous one ended.

    ``grey``: F from the grey-scale jigsaw weights (if ``jigsaw_dir``), the rest fresh.
    ``doppler``: the member so far (F trained), G from the Doppler jigsaw weights.
    ``fusion``: the member after both fine-tuning stages; only H will change.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    member_file = Path(member_file)
    if stage != "grey":
        if not member_file.exists():
            previous = STAGES[STAGES.index(stage) - 1]
            raise FileNotFoundError(
                f"stage {stage!r} continues from {member_file}, which does not exist: "
                f"run stage {previous!r} first"
            )
        member.load_state_dict(load_weights(member_file))
    if jigsaw_dir is not None and stage in ("grey", "doppler"):
        name = "greyscale" if stage == "grey" else "doppler_transformed"
        path = Path(jigsaw_dir) / f"jigsaw_{name}.pt"
        if not path.exists():
            raise FileNotFoundError(f"no jigsaw weights at {path}: run configs/train_jigsaw.json")
        backbone = member.grey if stage == "grey" else member.doppler
        backbone.load_state_dict(load_weights(path))
    return member


def pack_members(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    *,
    half: bool = True,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Copy the trained members to ``out_dir`` (float16 by default: half the size, the same
    grades) and write ``ensemble.json``, the list inference reads its members from."""
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    files = sorted(ckpt_dir.glob("member_f*_s*_k*.pt"))
    if not files:
        raise FileNotFoundError(f"no trained members (member_f*_s*_k*.pt) in {ckpt_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    members = []
    for path in files:
        fold, seed, splits = path.stem.removeprefix("member_").split("_")
        state = load_weights(path)
        if half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        torch.save(state, out_dir / path.name)
        members.append(
            {
                "file": path.name,
                "fold": int(fold[1:]),
                "seed": int(seed[1:]),
                "splits": [int(c) for c in splits[1:]],
            }
        )
    network = network_settings(load_weights(files[0]))
    manifest = out_dir / "ensemble.json"
    document = {"members": members, "network": network, **dict(info or {})}
    manifest.write_text(json.dumps(document, indent=1))
    return manifest


def network_settings(state: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The :class:`RatingMember` arguments a state dict was trained with, read off its shapes
    (the first stem convolution has 64 x widen_factor channels), so inference never has to be
    told them separately from the weights."""
    try:
        stem = state["grey.conv1.weight"].shape[0]
        hidden = state["fusion_head.0.weight"].shape[0]
    except KeyError as exc:
        raise ValueError(f"not a RatingMember state dict (no {exc.args[0]})") from exc
    return {"widen_factor": stem / 64, "hidden": int(hidden)}
