"""The patch scorer: joint-space narrowing and erosion scores from a patch around each joint.

Shared by the ``ra_joint_scorer`` MONAI bundle (its configs reference these names), by
``ra-joints predict``/``benchmark`` and by the napari plugin.

Network variants (``build_scorer(variant=...)``):

* ``seg_guided`` (RA2-DREAM winner, Li & Guan): a U-Net segments the joint space; its mask
  and decoder features go, with the patch, into a second encoder and the score head.
* ``plain``: the same second encoder and head on the patch alone (no segmentation branch).
* ``hirano``: the small CNN of Hirano et al. (48x48 input, two 3x3 conv + max-pool stages,
  dense 512, dropout 0.5), the literature baseline.

Score heads (``head=...``): ``classes`` - one class per grade (5 narrowing, 11 erosion; hand
erosion stops at 5, so grades above a joint's maximum are masked), the score is the expected
grade and the uncertainty the standard deviation of the class distribution; ``regression`` -
sigmoid of score / maximum (the reference), trained with MSE.

Output layout (one tensor, so MONAI engines, TorchScript and ``verify_net_in_out`` take it
unchanged): ``(B, 1 + K, S, S)`` - channel 0 the joint-space logit (zeros for variants
without a segmentation branch), channels 1..K the score logits, constant over the patch.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from torch import nn
from torch.nn import functional as F

from .metrics import round_grade
from .targets import MASK_IGNORE

__all__ = [
    "HEADS",
    "VARIANTS",
    "HiranoCNN",
    "PatchScorer",
    "PrepareScorerBatch",
    "ScoreAgreement",
    "ScorerLoss",
    "build_scorer",
    "decode_scores",
    "oversampling_weights",
    "score_channels",
    "split_output",
]

VARIANTS = ("seg_guided", "plain", "hirano")
HEADS = ("classes", "regression", "both")
NARROWING_CLASSES = 5  # 0..4
EROSION_CLASSES = 11  # 0..10 (feet); hands stop at 5


def score_channels(head: str) -> int:
    """Number of score logits a head produces."""
    _check_head(head)
    return {"classes": 0, "regression": 2, "both": 2}[head] + (
        NARROWING_CLASSES + EROSION_CLASSES if head != "regression" else 0
    )


def _head_parts(logits: torch.Tensor, head: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Split score logits into (regression logits (B, 2), class logits (B, 16)) of a head."""
    if head == "classes":
        return None, logits
    if head == "regression":
        return logits, None
    return logits[:, :2], logits[:, 2:]


def _check_head(head: str) -> None:
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
    from monai.networks.blocks import Convolution

    return Convolution(
        2, c_in, c_out, strides=stride, kernel_size=3, norm="batch", act="relu", bias=False
    )


class _Encoder(nn.Module):
    """Conv encoder (two 3x3 convs per level, the second strided) + dense score head."""

    def __init__(self, in_channels: int, channels: Sequence[int], outputs: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            layers += [_conv(c_in, c), _conv(c, c, stride=2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * 16, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


class PatchScorer(nn.Module):
    """``seg_guided`` and ``plain`` variants (see the module docstring)."""

    def __init__(
        self,
        head: str = "classes",
        segmentation: bool = True,
        in_channels: int = 1,
        unet_channels: Sequence[int] = (16, 32, 64, 128),
        unet_strides: Sequence[int] = (2, 2, 2),
        decoder_features: int = 8,
        encoder_channels: Sequence[int] = (32, 64, 96, 128),
        dropout: float = 0.3,
    ):
        super().__init__()
        self.segmentation = segmentation
        self.n_scores = score_channels(head)
        encoder_in = in_channels
        self.unet: nn.Module | None = None
        if segmentation:
            from monai.networks.nets import UNet

            self.unet = UNet(
                spatial_dims=2,
                in_channels=in_channels,
                out_channels=1 + decoder_features,
                channels=tuple(unet_channels),
                strides=tuple(unet_strides),
                num_res_units=1,
                norm="batch",
            )
            encoder_in += 1 + decoder_features
        self.encoder = _Encoder(encoder_in, encoder_channels, self.n_scores, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unet is not None:
            seg = self.unet(x)
            mask_logit = seg[:, :1]
            guided = torch.cat([x, torch.sigmoid(mask_logit), F.relu(seg[:, 1:])], dim=1)
            scores = self.encoder(guided)
        else:
            mask_logit = torch.zeros_like(x[:, :1])
            scores = self.encoder(x)
        return pack_output(scores, mask_logit)


class HiranoCNN(nn.Module):
    """Hirano et al.: 48x48 input, conv3x3-pool x2, dense 512, dropout 0.5, class per grade.

    Patches of any size are area-resampled to ``input_size`` first, so all variants share the
    bundle's data pipeline (the field of view stays the same).
    """

    def __init__(
        self,
        head: str = "classes",
        in_channels: int = 1,
        input_size: int = 48,
        channels: Sequence[int] = (32, 64),
        dropout: float = 0.5,
    ):
        super().__init__()
        self.input_size = int(input_size)
        self.n_scores = score_channels(head)
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = self.input_size // 4
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, self.n_scores),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(x, size=(self.input_size, self.input_size), mode="area")
        scores = self.head(self.features(small))
        return pack_output(scores, torch.zeros_like(x[:, :1]))


def build_scorer(variant: str = "seg_guided", head: str = "classes", **kwargs: Any) -> nn.Module:
    """The network of a variant; ``kwargs`` go to its constructor (channels, dropout...)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    _check_head(head)
    if variant == "hirano":
        allowed = {"in_channels", "input_size", "channels", "dropout"}
        return HiranoCNN(head=head, **{k: v for k, v in kwargs.items() if k in allowed})
    return PatchScorer(head=head, segmentation=variant == "seg_guided", **kwargs)


def pack_output(scores: torch.Tensor, mask_logit: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` scores + ``(B, 1, S, S)`` mask -> ``(B, 1 + K, S, S)``."""
    b, _, h, w = mask_logit.shape
    return torch.cat([mask_logit, scores[:, :, None, None].expand(b, -1, h, w)], dim=1)


def split_output(pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_output`: ``(scores (B, K), mask_logit (B, 1, S, S))``."""
    return pred[:, 1:, 0, 0], pred[:, :1]


# ------------------------------------------------------------------------------ decoding


def _erosion_logits(logits: torch.Tensor, erosion_max: torch.Tensor) -> torch.Tensor:
    """Erosion class logits with grades above each joint's maximum masked out."""
    grades = torch.arange(EROSION_CLASSES, device=logits.device)
    top = erosion_max.to(logits.device).reshape(-1, 1).clamp(min=0)
    return logits.masked_fill(grades[None, :] > top, float("-inf"))


@dataclass
class DecodedScores:
    """Per-patch scores in grade units (NaN where the joint carries no such score)."""

    narrowing: np.ndarray
    erosion: np.ndarray
    narrowing_sd: np.ndarray
    erosion_sd: np.ndarray
    narrowing_prob: np.ndarray | None  # (B, 5) class probabilities (classes head)
    erosion_prob: np.ndarray | None  # (B, 11)


def decode_scores(
    score_logits: torch.Tensor,
    head: str,
    erosion_max: Sequence[int] | torch.Tensor,
    carries_narrowing: Sequence[bool] | torch.Tensor | None = None,
) -> DecodedScores:
    """Score logits ``(B, K)`` -> expected grades and their uncertainty.

    ``classes``: expected grade and the standard deviation of the class distribution.
    ``regression``: sigmoid x maximum; the uncertainty is not known (NaN) - use an ensemble.
    ``both``: the regression value with the class distribution's standard deviation.
    A joint with ``erosion_max`` 0 (no erosion score) or ``carries_narrowing`` False gets NaN.
    """
    _check_head(head)
    reg, cls = _head_parts(score_logits.detach().float().cpu(), head)
    top = torch.as_tensor(erosion_max, dtype=torch.float32).reshape(-1)
    probs: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    if cls is not None:
        p_n = torch.softmax(cls[:, :NARROWING_CLASSES], dim=1)
        p_e = torch.softmax(_erosion_logits(cls[:, NARROWING_CLASSES:], top), dim=1)
        g_n = torch.arange(NARROWING_CLASSES, dtype=torch.float32)
        g_e = torch.arange(EROSION_CLASSES, dtype=torch.float32)
        n = (p_n * g_n).sum(1)
        e = (p_e * g_e).sum(1)
        n_sd = ((p_n * (g_n - n[:, None]) ** 2).sum(1)).sqrt()
        e_sd = ((p_e * (g_e - e[:, None]) ** 2).sum(1)).sqrt()
        probs = (p_n.numpy(), p_e.numpy())
    if reg is not None:
        n = torch.sigmoid(reg[:, 0]) * 4.0
        e = torch.sigmoid(reg[:, 1]) * top
        if cls is None:
            n_sd = torch.full_like(n, float("nan"))
            e_sd = torch.full_like(e, float("nan"))
    out = DecodedScores(n.numpy(), e.numpy(), n_sd.numpy(), e_sd.numpy(), *probs)
    no_erosion = top.numpy() <= 0
    out.erosion[no_erosion] = np.nan
    out.erosion_sd[no_erosion] = np.nan
    if carries_narrowing is not None:
        no_narrowing = ~np.asarray(torch.as_tensor(carries_narrowing).cpu(), dtype=bool)
        out.narrowing[no_narrowing] = np.nan
        out.narrowing_sd[no_narrowing] = np.nan
    return out


# ------------------------------------------------------------------------------ training


class ScorerLoss(nn.Module):
    """Score loss + ``mask_weight`` x masked BCE on the joint-space mask.

    Score loss: cross-entropy per score type (``classes``), MSE on score / maximum
    (``regression``) or both (``both``); scores a joint does not carry (target -1) are skipped,
    as are mask pixels marked 255 (no or invalid polygon). Use ``mask_weight=0`` for variants
    without a segmentation branch.
    """

    def __init__(self, head: str = "classes", mask_weight: float = 1.0):
        super().__init__()
        _check_head(head)
        self.head = head
        self.mask_weight = float(mask_weight)

    def forward(self, pred: torch.Tensor, target: Mapping[str, torch.Tensor]) -> torch.Tensor:
        scores, mask_logit = split_output(pred)
        device = scores.device
        t_n = torch.as_tensor(target["narrowing"], device=device).float().reshape(-1)
        t_e = torch.as_tensor(target["erosion"], device=device).float().reshape(-1)
        top = torch.as_tensor(target["erosion_max"], device=device).float().reshape(-1)
        has_n, has_e = t_n >= 0, (t_e >= 0) & (top > 0)
        loss = scores.new_zeros(())
        reg, cls = _head_parts(scores, self.head)
        if cls is not None:
            if has_n.any():
                loss = loss + F.cross_entropy(
                    cls[has_n, :NARROWING_CLASSES], t_n[has_n].round().long()
                )
            if has_e.any():
                logits = _erosion_logits(cls[has_e, NARROWING_CLASSES:], top[has_e])
                loss = loss + F.cross_entropy(logits, t_e[has_e].round().long())
        if reg is not None:
            if has_n.any():
                loss = loss + F.mse_loss(torch.sigmoid(reg[has_n, 0]), t_n[has_n] / 4.0)
            if has_e.any():
                loss = loss + F.mse_loss(torch.sigmoid(reg[has_e, 1]), t_e[has_e] / top[has_e])
        if self.mask_weight and "mask" in target:
            mask = torch.as_tensor(target["mask"], device=device).float()
            valid = mask != MASK_IGNORE
            if valid.any():
                loss = loss + self.mask_weight * F.binary_cross_entropy_with_logits(
                    mask_logit[valid], mask[valid]
                )
        return loss


TARGET_KEYS = ("mask", "narrowing", "erosion", "erosion_max")


class PrepareScorerBatch:
    """``prepare_batch`` for MONAI engines: the patch as input, a dict of targets as label."""

    def __call__(
        self,
        batchdata: Mapping[Hashable, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = torch.as_tensor(batchdata["image"]).to(device, non_blocking=non_blocking)
        target = {
            k: torch.as_tensor(batchdata[k]).to(device, non_blocking=non_blocking)
            for k in TARGET_KEYS
            if k in batchdata
        }
        return image, target


def oversampling_weights(
    items: Sequence[Mapping[str, Any]], positive_factor: float = 2.0
) -> list[float]:
    """Sampling weight per training patch: damaged joints ``positive_factor`` x as likely.

    The RA2-DREAM winner oversampled positives; most phantom (and real) joints score 0.
    """
    weights = []
    for item in items:
        damaged = float(item.get("narrowing", 0)) > 0 or float(item.get("erosion", 0)) > 0
        weights.append(positive_factor if damaged else 1.0)
    return weights


class ScoreAgreement(Metric):
    """Validation metric: share of scores whose prediction, rounded half up
    (:func:`annotation_tools.metrics.round_grade`), equals the true grade.

    Averages narrowing and erosion scores together (each carried score counts once). Works on
    batched ``(pred, target)`` as the engines give them with ``decollate=False``.
    """

    def __init__(self, head: str = "classes", output_transform: Any = lambda x: x):
        _check_head(head)
        self.head = head
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self._hits = 0
        self._total = 0

    def update(self, output: tuple[torch.Tensor, Mapping[str, torch.Tensor]]) -> None:
        pred, target = output
        scores, _ = split_output(pred)
        top = torch.as_tensor(target["erosion_max"]).reshape(-1)
        decoded = decode_scores(scores, self.head, top)
        for key, values in (("narrowing", decoded.narrowing), ("erosion", decoded.erosion)):
            truth = torch.as_tensor(target[key]).float().reshape(-1).cpu().numpy()
            keep = (truth >= 0) & np.isfinite(values)
            if key == "erosion":
                keep &= top.cpu().numpy() > 0
            self._hits += int((round_grade(values[keep]) == truth[keep]).sum())
            self._total += int(keep.sum())

    def compute(self) -> float:
        from .bundles import share_of_hits

        return share_of_hits(self._hits, self._total)
