"""RATING building blocks: ECOC grades, the MULTITUDE ensemble, jigsaw pretraining, networks.

Ultrasound synovitis is graded on the EULAR-OMERACT scale: synovial hypertrophy (SH) 0-3,
Doppler vascularity 0-3, combined = the larger of the two; vascularity > 0 with SH = 0 is not a
valid combination. RATING (Zhou et al., Patterns 2022) predicts each grade through
error-correcting output codes (binary networks for "> 0", "> 1", "> 2") and combines five
fold models with the MULTITUDE vote. These are the pieces the ``ra_us_rating`` bundle is built
from; each is a small function with a test.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "BASELINES",
    "DEFAULT_BASELINE",
    "DOPPLER_CHANNELS",
    "GRADES",
    "GRADE_KEYS",
    "GREYSCALE_CHANNELS",
    "OUTPUTS",
    "SPLITS",
    "STAGES",
    "JigsawNet",
    "Multitude",
    "RatingMember",
    "attribution_map",
    "backbone_features",
    "build_backbone",
    "codewords",
    "combined_grade",
    "ecoc_decode",
    "heatmap_overlay",
    "ig_baseline",
    "integrated_gradients",
    "integrated_gradients_heatmap",
    "is_valid_pair",
    "jigsaw_permutations",
    "jigsaw_puzzle",
    "majority_vote",
    "multitude",
    "normalise_heatmap",
    "split_member_output",
    "stage_branch",
    "stage_grade_key",
    "valid_pairs",
]

GRADES = 4  # 0-3
GRADE_KEYS = ("synovial_hypertrophy", "vascularity", "combined")  # the grades of a pair
SPLITS = (1, 2, 3)  # binary task k: "grade >= k"  (0|123, 01|23, 012|3)


# ------------------------------------------------------------------------------ grades


def is_valid_pair(sh: int, vascularity: int) -> bool:
    """EULAR-OMERACT: Doppler signal without synovial hypertrophy is not a valid pair."""
    return not (sh == 0 and vascularity > 0)


def combined_grade(sh: int, vascularity: int) -> int:
    """The combined EOSS grade of a valid pair: the larger of the two grades."""
    if not is_valid_pair(sh, vascularity):
        raise ValueError(f"SH {sh} with vascularity {vascularity} is not a valid EOSS pair")
    return max(int(sh), int(vascularity))


def valid_pairs() -> list[tuple[int, int]]:
    """All valid (SH, vascularity) pairs in the fixed order MULTITUDE breaks ties with."""
    return [(s, v) for s in range(GRADES) for v in range(GRADES) if is_valid_pair(s, v)]


def codewords(repeats: int = 1) -> np.ndarray:
    """(4, 3 x repeats) ordinal code words: grade g -> [g >= 1, g >= 2, g >= 3] per seed."""
    base = np.array([[int(g >= k) for k in SPLITS] for g in range(GRADES)], dtype=float)
    return np.repeat(base, repeats, axis=1)


def ecoc_decode(
    probabilities: np.ndarray, thresholds: Sequence[float] | None = None, repeats: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Binary outputs -> the grade of the nearest code word (L1), and all distances.

    ``probabilities``: (N, 3 x repeats), columns ordered split-major (``>=1`` seed 1, seed 2,
    ``>=2`` seed 1, ...). ``thresholds`` (one per column, default 0.5) shift each network's
    operating point, as RATING tuned per model: a probability ``p`` counts as
    ``p - t + 0.5``. Ties go to the lower grade. An inconsistent output such as "> 2 but not
    > 1" still decodes to the closest valid grade.
    """
    p = np.atleast_2d(np.asarray(probabilities, dtype=float))
    words = codewords(repeats)
    if p.shape[1] != words.shape[1]:
        raise ValueError(f"expected {words.shape[1]} binary outputs per case, got {p.shape[1]}")
    if thresholds is not None:
        p = np.clip(p - np.asarray(thresholds, dtype=float)[None, :] + 0.5, 0.0, 1.0)
    distances = np.abs(p[:, None, :] - words[None, :, :]).sum(-1)
    return distances.argmin(1), distances  # argmin returns the first (lowest) on ties


# ------------------------------------------------------------------------------ ensembles


@dataclass(frozen=True)
class Multitude:
    sh: int
    vascularity: int
    combined: int
    weights: dict[tuple[int, int], float]  # every valid pair's vote product


def multitude(sh_votes: Sequence[int], vascularity_votes: Sequence[int]) -> Multitude:
    """RATING's MULTITUDE vote over fold models.

    Each valid (SH, vascularity) pair is weighted by (models voting that SH) x (models voting
    that vascularity); invalid pairs are excluded, so the result is always valid; ties go to the
    first pair in :func:`valid_pairs` order.
    """
    if len(sh_votes) != len(vascularity_votes) or not len(sh_votes):
        raise ValueError("MULTITUDE needs one SH and one vascularity vote per model")
    sh_count = np.bincount(np.asarray(sh_votes, int), minlength=GRADES)
    v_count = np.bincount(np.asarray(vascularity_votes, int), minlength=GRADES)
    weights = {pair: float(sh_count[pair[0]] * v_count[pair[1]]) for pair in valid_pairs()}
    best = max(weights.values())
    sh, v = next(pair for pair in valid_pairs() if weights[pair] == best)
    return Multitude(sh, v, combined_grade(sh, v), weights)


def majority_vote(votes: Sequence[int]) -> int:
    """Plain majority over models (ties to the lower grade); the ablation baseline."""
    return int(np.bincount(np.asarray(votes, int), minlength=GRADES).argmax())


# ------------------------------------------------------------------------------ jigsaw


def jigsaw_permutations(n: int, seed: int = 0, tiles: int = 9) -> np.ndarray:
    """``n`` permutations of ``tiles`` tiles chosen for a large minimum Hamming distance.

    Greedy maximin selection (Noroozi & Favaro): start from a random permutation, then keep
    adding the permutation whose smallest Hamming distance to those already chosen is largest.
    RATING used 1000 of 9! = 362 880; the puzzle is only learnable if the permutations differ.
    """
    everything = np.array(list(itertools.permutations(range(tiles))), dtype=np.int8)
    if not 1 <= n <= len(everything):
        raise ValueError(f"choose between 1 and {len(everything)} permutations, got {n}")
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(everything)))]
    nearest = (everything != everything[chosen[0]]).sum(1)
    for _ in range(n - 1):
        pick = int(nearest.argmax())
        chosen.append(pick)
        nearest = np.minimum(nearest, (everything != everything[pick]).sum(1))
    return everything[chosen].astype(np.int64)


def jigsaw_puzzle(
    image: torch.Tensor,
    permutations: np.ndarray,
    rng: np.random.Generator,
    cell: int = 75,
    tile: int = 64,
) -> tuple[torch.Tensor, int]:
    """(C, 3 x cell, 3 x cell) image -> (9, C, tile, tile) shuffled tiles and the permutation id.

    Each tile is a random ``tile``-px crop inside its ``cell`` (the gap stops the network from
    solving the puzzle by matching edges), as in RATING's 225 / 75 / 64 set-up.
    """
    _, h, w = image.shape
    if h != 3 * cell or w != 3 * cell:
        raise ValueError(f"a jigsaw input is {3 * cell}x{3 * cell}, got {h}x{w}")
    tiles = []
    for row in range(3):
        for col in range(3):
            dy, dx = rng.integers(0, cell - tile + 1, size=2)
            y, x = row * cell + dy, col * cell + dx
            tiles.append(image[:, y : y + tile, x : x + tile])
    label = int(rng.integers(len(permutations)))
    order = permutations[label]
    return torch.stack([tiles[i] for i in order]), label


# ------------------------------------------------------------------------------ networks


def backbone_features(widen_factor: float = 1.0) -> int:
    """Feature length of :func:`build_backbone`: 512 for the paper's ResNet-18."""
    return int(512 * widen_factor)


def build_backbone(in_channels: int = 3, widen_factor: float = 1.0) -> nn.Module:
    """MONAI ResNet-18 (2D, stride-2 7x7 stem as in the paper) returning its pooled features.

    ``widen_factor`` scales every block's channels (1.0 = the paper's 11 M parameters and 512
    features; the quick CPU configuration uses 0.25: 0.7 M parameters, 128 features).
    """
    from monai.networks.nets import resnet18

    return resnet18(
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        widen_factor=widen_factor,
        feed_forward=False,
    )


class JigsawNet(nn.Module):
    """Context-free network: one shared backbone per tile, features concatenated, classified
    into the permutation that shuffled them (self-supervised pretraining of F and G)."""

    def __init__(self, backbone: nn.Module, n_permutations: int, features: int = 512):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Sequential(
            nn.Linear(9 * features, 1024), nn.ReLU(inplace=True), nn.Linear(1024, n_permutations)
        )

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        b, n, c, h, w = tiles.shape
        feats = self.backbone(tiles.reshape(b * n, c, h, w)).reshape(b, -1)
        return self.classifier(feats)


STAGES = ("grey", "doppler", "fusion")
OUTPUTS = ("sh", "vascularity", "sh_grey")  # the three logit groups of a member, in order


class RatingMember(nn.Module):
    """One ensemble member of RATING: F, G and H of one fold and seed.

    - F (``grey``): ResNet-18 on the grey-scale crop, fine-tuned with ``grey_head`` on SH;
      its SH output is the "grey-scale only" ablation.
    - G (``doppler``): ResNet-18 on the transformed Doppler crop, fine-tuned with
      ``vascularity_head`` on vascularity: this is the vascularity network.
    - H (``fusion_head``): 2-layer MLP on the concatenated features of the frozen F and G
      (512 + 512 at full width); predicts SH.

    Each head has one logit per ECOC split it carries (``splits``, e.g. ``(1, 2, 3)`` for a
    shared-backbone code word, ``(2,)`` for the paper's one-network-per-split). Input: (B, 4, S,
    S) = grey-scale + transformed Doppler (RGB), scaled to [0, 1]. Output: (B, 3 x len(splits))
    logits, grouped as :data:`OUTPUTS`. One module, so one file per member, TorchScript export
    and ``verify_net_in_out`` work on the whole thing.
    """

    def __init__(
        self,
        splits: Sequence[int] = SPLITS,
        widen_factor: float = 1.0,
        hidden: int = 256,
        dropout: float = 0.2,
    ):
        super().__init__()
        if not splits or any(k not in SPLITS for k in splits):
            raise ValueError(f"splits must be drawn from {SPLITS}, got {splits}")
        self.splits = tuple(int(k) for k in splits)
        n, features = len(self.splits), backbone_features(widen_factor)
        self.grey = build_backbone(1, widen_factor)
        self.doppler = build_backbone(3, widen_factor)
        self.grey_head = nn.Linear(features, n)
        self.vascularity_head = nn.Linear(features, n)
        self.fusion_head = nn.Sequential(
            nn.Linear(2 * features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.grey(x[:, :1])
        g = self.doppler(x[:, 1:4])
        return torch.cat(
            [self.fusion_head(torch.cat([f, g], 1)), self.vascularity_head(g), self.grey_head(f)],
            dim=1,
        )


class _GreyBranch(nn.Module):
    def __init__(self, member: RatingMember):
        super().__init__()
        self.member = member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.member.grey_head(self.member.grey(x[:, :1]))


class _DopplerBranch(_GreyBranch):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.member.vascularity_head(self.member.doppler(x[:, 1:4]))


class _FusionBranch(_GreyBranch):
    """Stage 3: F and G frozen (eval mode, no gradients) while H trains."""

    def train(self, mode: bool = True) -> _FusionBranch:
        super().train(mode)
        self.member.grey.eval()
        self.member.doppler.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = torch.cat([self.member.grey(x[:, :1]), self.member.doppler(x[:, 1:4])], 1)
        return self.member.fusion_head(features)


def stage_branch(member: RatingMember, stage: str) -> nn.Module:
    """The part of a member one training stage fits: its logits are that stage's target.

    ``grey``: F + SH head on grey-scale; ``doppler``: G + vascularity head; ``fusion``: H on the
    frozen F and G features. The branch shares parameters with the member, so training it
    trains the member, and the checkpoint is always the whole member.
    """
    branches = {"grey": _GreyBranch, "doppler": _DopplerBranch, "fusion": _FusionBranch}
    if stage not in branches:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    branch = branches[stage](member)
    if stage == "fusion":
        for name, p in member.named_parameters():
            p.requires_grad_(name.startswith("fusion_head."))
    return branch


def stage_grade_key(stage: str) -> str:
    """Which grade a stage learns: vascularity for G, synovial hypertrophy otherwise."""
    return "vascularity" if stage == "doppler" else "synovial_hypertrophy"


def split_member_output(logits: torch.Tensor, n_splits: int) -> dict[str, torch.Tensor]:
    """(B, 3 x n) member logits -> probabilities per output group (:data:`OUTPUTS`)."""
    if logits.shape[1] != 3 * n_splits:
        raise ValueError(f"expected {3 * n_splits} logits per case, got {logits.shape[1]}")
    probs = torch.sigmoid(logits)
    return {name: probs[:, i * n_splits : (i + 1) * n_splits] for i, name in enumerate(OUTPUTS)}


# ------------------------------------------------------------------------------ explanations


BASELINES = ("zero", "mean", "blur")
DEFAULT_BASELINE = "mean"  # chosen on validation phantoms: docs/README.md of ra_us_rating
DEFAULT_BLUR_SIGMA = 20.0  # px at 224 px
GREYSCALE_CHANNELS = slice(0, 1)  # channel groups of a RatingMember input
DOPPLER_CHANNELS = slice(1, 4)


def ig_baseline(
    inputs: torch.Tensor, kind: str = DEFAULT_BASELINE, *, sigma: float = DEFAULT_BLUR_SIGMA
) -> torch.Tensor:
    """The reference image integrated gradients walk from, per case and channel.

    ``zero``: black, which on [0, 1] inputs *is* the hypoechoic synovium's intensity, so a dark
    region differs from it by almost nothing and gets almost no attribution; ``mean``: every
    pixel at the crop's mean of that channel (RATING's zero baseline after its ImageNet
    normalisation is such a mid grey); ``blur``: the crop Gaussian-blurred with ``sigma`` px
    (skimage), which keeps the coarse layout and removes the structure a reader grades.
    """
    if kind not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")
    if kind == "zero":
        return torch.zeros_like(inputs)
    if kind == "mean":
        return inputs.mean(dim=(-2, -1), keepdim=True).expand_as(inputs).clone()
    from skimage.filters import gaussian

    arr = inputs.detach().cpu().numpy()
    blurred = [gaussian(case, sigma=sigma, channel_axis=0, mode="reflect") for case in arr]
    return torch.as_tensor(np.stack(blurred), dtype=inputs.dtype, device=inputs.device)


def integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    target: int | None = None,
    baseline: str | torch.Tensor = DEFAULT_BASELINE,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    steps: int = 64,
    method: str = "gausslegendre",
    noisy_copies: int = 1,
    noise_sd: float = 0.0,
    batch_size: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """Signed integrated gradients (captum) of one case (1, C, H, W), averaged over
    ``noisy_copies`` inputs with Gaussian noise of sd ``noise_sd`` (SmoothGrad; the baseline is
    the clean input's). The noise is drawn here from ``seed``, so a run with more steps sees the
    same noisy copies (the quadrature error can be measured alone). ``batch_size``: network
    passes per batch (copies x steps are batched together).
    """
    from captum.attr import IntegratedGradients

    if inputs.ndim != 4 or inputs.shape[0] != 1:
        raise ValueError(f"explain one case (1, C, H, W) at a time, got {tuple(inputs.shape)}")
    if noisy_copies < 1 or steps < 1:
        raise ValueError(f"steps and noisy_copies must be >= 1, got {steps}, {noisy_copies}")
    model.eval()
    base = baseline if isinstance(baseline, torch.Tensor) else None
    if base is None:
        base = ig_baseline(inputs, baseline, sigma=blur_sigma)
    x = inputs.repeat(noisy_copies, 1, 1, 1)
    if noise_sd > 0:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        x = x + noise_sd * torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():  # gradients of the input only: a third less work
        p.requires_grad_(False)
    try:
        attribution = IntegratedGradients(model).attribute(
            x,
            baselines=base.expand_as(x),
            target=target,
            n_steps=steps,
            method=method,
            internal_batch_size=max(int(batch_size), noisy_copies),
        )
    finally:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)
    return attribution.detach().mean(0, keepdim=True)


def attribution_map(attribution: torch.Tensor, channels: slice | None = None) -> np.ndarray:
    """(1, C, H, W) attributions -> (H, W) absolute attribution summed over ``channels``
    (e.g. :data:`GREYSCALE_CHANNELS`: the grey-scale input alone)."""
    a = attribution[0] if channels is None else attribution[0, channels]
    return a.abs().sum(0).cpu().numpy().astype(np.float32)


def normalise_heatmap(heat: np.ndarray, floor: float = 0.2, top: float | None = None):
    """Scale to [0, 1] by ``top`` (default the map's maximum) and zero what is below
    ``floor``."""
    top = float(heat.max()) if top is None else float(top)
    if top <= 0:
        return np.zeros_like(heat, dtype=np.float32)
    out = np.clip(heat / top, 0, 1)
    out[out < floor] = 0.0
    return out.astype(np.float32)


def integrated_gradients_heatmap(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    target: int | None = None,
    steps: int = 64,
    noisy_copies: int = 1,
    noise_sd: float = 0.0,
    floor: float = 0.2,
    seed: int = 0,
    baseline: str | torch.Tensor = DEFAULT_BASELINE,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    channels: slice | None = None,
) -> np.ndarray:
    """RATING's explanation as a map: :func:`integrated_gradients` (Gauss-Legendre ``steps``,
    the measured default baseline), absolute values summed over ``channels`` (all by default),
    normalised to [0, 1], values below ``floor`` set to 0.

    ``inputs``: one case (1, C, H, W); returns (H, W). The model is put in eval mode.
    """
    attribution = integrated_gradients(
        model,
        inputs,
        target=target,
        baseline=baseline,
        blur_sigma=blur_sigma,
        steps=steps,
        noisy_copies=noisy_copies,
        noise_sd=noise_sd,
        seed=seed,
    )
    return normalise_heatmap(attribution_map(attribution, channels), floor)


def heatmap_overlay(grey: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Grey-scale image (H, W) with the heatmap painted in yellow: (H, W, 3) uint8."""
    base = np.asarray(grey, dtype=np.float32)
    if base.max() > 1.0:
        base = base / 255.0
    if base.shape != heat.shape:
        raise ValueError(f"image {base.shape} and heatmap {heat.shape} differ in size")
    rgb = np.repeat(base[..., None], 3, axis=-1)
    weight = (alpha * np.clip(heat, 0, 1))[..., None]
    yellow = np.array([1.0, 1.0, 0.0], dtype=np.float32)
    return (np.clip(rgb * (1 - weight) + yellow * weight, 0, 1) * 255).astype(np.uint8)
