"""The one-network alternative (Maziarz et al., RA2-DREAM): locate and score in one pass.

Shared by the ``ra_multitask_unet`` bundle (its configs reference these names), by
``ra-joints predict --pipeline multitask``, the benchmark and the napari plugin.

* Input: the radiograph cropped to its Canny edges (``edge_crop_box``),
  windowed, right limbs mirrored to look like left ones, resized, plus CoordConv x/y channels.
* Network: MONAI ``FlexibleUNet`` with an EfficientNet encoder; the output's channels are three
  per-pixel heads side by side: joint type (:data:`~annotation_tools.targets.JOINT_TYPES`,
  23 classes with background; foot joints share the finger types), narrowing grade (0-4) and
  erosion grade (0-5; foot erosion is halved for training and doubled back here).
* Targets: discs around each joint with an ignored ring (the export module's
  :func:`~annotation_tools.targets.multitask_targets`); loss: cross-entropy with *local* label
  smoothing (part of the probability moved to the neighbouring grades, not to all grades).
* Decoding: the joint-type probabilities are laid out as the locator's union heatmaps and
  decoded by the locator's decoder (blob centroid, confidence, missing joints, wrong-limb
  check); a joint's grade is the softmax-weighted average grade over its blob
  (:func:`grade_from_pixels`), its uncertainty the weighted spread of the grade distribution.

Outputs are the two-stage pipeline's own types (:class:`~annotation_tools.locator.LocatorResult`
and :class:`~annotation_tools.scoring.ImageScores`), so every writer, the store, the plugin and
the benchmark take either pipeline.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.metrics import CumulativeIterationMetric
from monai.transforms import MapTransform

from .bundles import ENSEMBLE_MANIFEST, ensemble_manifest, load_weights
from .imageio import ImageData
from .joint_decoding import UNION_CHANNELS, LocatorResult, best_blob, decode_result
from .radiograph import decoder_args, network_input, prepare_input
from .targets import IGNORE, JOINT_TYPES, joint_type
from .vocabulary import Limb, get_joint

__all__ = [
    "BUNDLE_NAME",
    "GRADES",
    "DiscAgreement",
    "MultitaskLoss",
    "MultitaskModel",
    "build_network",
    "decode_multitask",
    "grade_from_pixels",
    "smoothed_grade_targets",
    "spatial_type_loss",
    "split_heads",
    "union_probabilities",
]

BUNDLE_NAME = "ra_multitask_unet"
GRADES = {"narrowing": 5, "erosion": 6}  # classes per grade head (foot erosion halved: 0-5)
N_TYPES = len(JOINT_TYPES)
N_OUT = N_TYPES + GRADES["narrowing"] + GRADES["erosion"]


def build_network(
    backbone: str = "efficientnet-b5",
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    coordconv: bool = True,
    dropout: float = 0.0,
    bn_momentum: float | None = 0.1,
) -> torch.nn.Module:
    """FlexibleUNet, EfficientNet encoder trained from scratch (no weights can be downloaded).

    Output channels: joint type (23) | narrowing (5) | erosion (6), all logits.
    ``bn_momentum``: MONAI's EfficientNet keeps TensorFlow's batch-norm momentum (0.01 in
    PyTorch terms), so its running statistics trail the weights by a few hundred steps - on
    a short CPU schedule the evaluation-mode network then called every pixel background
    while the training-mode one did not. 0.1 is PyTorch's default; None keeps MONAI's.
    """
    from monai.networks.nets import FlexibleUNet

    network = FlexibleUNet(
        in_channels=3 if coordconv else 1,
        out_channels=N_OUT,
        backbone=backbone,
        pretrained=False,
        decoder_channels=tuple(decoder_channels),
        spatial_dims=2,
        dropout=dropout,
    )
    if bn_momentum is not None:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    return network


def split_heads(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, 34, H, W)`` -> joint-type, narrowing and erosion logits (channel dim 1)."""
    n = GRADES["narrowing"]
    return logits[:, :N_TYPES], logits[:, N_TYPES : N_TYPES + n], logits[:, N_TYPES + n :]


def smoothed_grade_targets(grade: torch.Tensor, n_classes: int, smoothing: float) -> torch.Tensor:
    """Grades ``(B, H, W)`` (may be half grades) -> soft targets ``(B, K, H, W)``.

    Maziarz et al.'s local label smoothing: a grade gives ``smoothing / 2`` to each
    neighbouring grade it has, so an interior grade keeps ``1 - smoothing`` (2 ->
    [0, 0.05, 0.9, 0.05, 0] for 0.1) and an end grade, with one neighbour, keeps
    ``1 - smoothing / 2`` (0 -> [0.95, 0.05, 0, ...]): a rater's 2 is often a 1 or a 3,
    never a 0 against a 4, and a 0 is never a -1. A half grade (halved foot erosion, 3.5) is
    split evenly between 3 and 4 before smoothing. Ignored pixels (< 0) get all-zero targets.
    """
    valid = grade >= 0
    g = grade.clamp(0, n_classes - 1)
    low = g.floor().long()
    high = g.ceil().long()
    frac = (g - low.to(g.dtype)).unsqueeze(1)
    hard = torch.zeros((grade.shape[0], n_classes, *grade.shape[1:]), dtype=grade.dtype)
    hard = hard.to(grade.device)
    hard.scatter_(1, low.unsqueeze(1), 1 - frac)
    hard.scatter_add_(1, high.unsqueeze(1), frac)
    if smoothing and n_classes > 1:
        share = hard * (smoothing / 2)  # what class k gives to each of its neighbours
        moved = torch.zeros_like(hard)
        moved[:, :-1] += share[:, 1:]  # to k - 1
        moved[:, 1:] += share[:, :-1]  # to k + 1
        neighbours = torch.full((n_classes,), 2.0, dtype=hard.dtype, device=hard.device)
        neighbours[[0, -1]] = 1.0  # the ends have one neighbour and give only one share
        shape = (1, n_classes) + (1,) * (hard.ndim - 2)
        hard = hard - share * neighbours.view(shape) + moved
    return hard * valid.unsqueeze(1).to(hard.dtype)


def spatial_type_loss(type_logits: torch.Tensor, type_target: torch.Tensor) -> torch.Tensor:
    """Per joint type present in an image: cross-entropy between the softmax of its logits
    over *pixels* and its normalised disc (ignored pixels take no part).

    The per-pixel cross-entropy alone lets a from-scratch network call everything background
    for many epochs (each joint type covers < 1 % of the pixels); this term is satisfied only
    by putting a type's mass on its own joint, which is how the project's locator learned to
    name joints on a 2-core CPU (see the locator bundle's README).
    """
    types = torch.arange(1, type_logits.shape[1], device=type_logits.device)
    onehot = (type_target[:, None] == types[None, :, None, None]).to(type_logits.dtype)
    mass = onehot.sum((2, 3))
    present = mass > 0
    if not bool(present.any()):
        return type_logits.sum() * 0
    flat = type_logits[:, 1:].flatten(2)
    flat = flat.masked_fill((type_target < 0).flatten(1)[:, None], -1e4)
    log_p = torch.log_softmax(flat, dim=-1)
    ce = -(onehot.flatten(2) * log_p).sum(-1) / mass.clamp(min=1)
    return ce[present].mean()


class MultitaskLoss(torch.nn.Module):
    """Joint-type cross-entropy + locally smoothed grade cross-entropies, ignoring -1 pixels.

    The grade terms are averaged over disc pixels only (a few percent of the image), so they
    are not drowned by the background pixels of the joint-type term.

    Two additions for short CPU schedules (both off in the full configuration, which follows
    the paper): ``spatial_weight`` adds :func:`spatial_type_loss`, and ``background_weight``
    < 1 down-weights the background class (about nine pixels in ten). Without them the quick
    model called every pixel background for 6 epochs and named no joint (docs/README.md).
    """

    def __init__(
        self,
        smoothing: float = 0.1,
        narrowing_weight: float = 1.0,
        erosion_weight: float = 1.0,
        background_weight: float = 1.0,
        spatial_weight: float = 0.0,
    ):
        super().__init__()
        self.spatial_weight = float(spatial_weight)
        self.smoothing = float(smoothing)
        self.weights = {"narrowing": float(narrowing_weight), "erosion": float(erosion_weight)}
        class_weights = torch.ones(N_TYPES)
        class_weights[0] = float(background_weight)
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = torch.as_tensor(target, dtype=logits.dtype, device=logits.device)
        type_logits, *grade_logits = split_heads(logits)
        loss = torch.nn.functional.cross_entropy(
            type_logits,
            target[:, 0].long(),
            weight=self.class_weights.to(logits.dtype),
            ignore_index=IGNORE,
        )
        if self.spatial_weight:
            loss = loss + self.spatial_weight * spatial_type_loss(type_logits, target[:, 0])
        for (name, k), head, channel in zip(GRADES.items(), grade_logits, (1, 2), strict=True):
            soft = smoothed_grade_targets(target[:, channel], k, self.smoothing)
            valid = (target[:, channel] >= 0).to(logits.dtype)
            ce = -(soft * torch.log_softmax(head, dim=1)).sum(1)
            loss = loss + self.weights[name] * (ce * valid).sum() / valid.sum().clamp(min=1)
        return loss


class DiscAgreement(CumulativeIterationMetric):
    """Validation key metric: mean agreement of the three heads on labelled disc pixels.

    Per image: share of disc pixels with the right joint type, and of disc pixels whose
    expected narrowing / erosion grade rounds to the target (half grades rounded up). The
    mean of the three is cheap to compute on every validation round and rises only when
    naming and grading both improve.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = torch.as_tensor(y, device=y_pred.device).float()
        type_l, *grade_l = split_heads(y_pred.detach().float())
        disc = target[:, 0] > 0
        parts = [((type_l.argmax(1) == target[:, 0].long()) & disc).sum((1, 2)), disc.sum((1, 2))]
        for head, channel in zip(grade_l, (1, 2), strict=True):
            grades = torch.arange(head.shape[1], device=head.device, dtype=head.dtype)
            expected = (head.softmax(1) * grades[None, :, None, None]).sum(1)
            valid = target[:, channel] >= 0
            # halves up on both sides (metrics.round_grade's rule; torch.round goes to even)
            right = (torch.floor(expected + 0.5) == torch.floor(target[:, channel] + 0.5)) & valid
            parts += [right.sum((1, 2)), valid.sum((1, 2))]
        return torch.stack(parts, dim=1).float()  # (B, 6): hits, totals per head

    def aggregate(self) -> torch.Tensor:
        from .bundles import share_of_hits

        counts = self.get_buffer().sum(0)
        shares = [share_of_hits(int(counts[i]), int(counts[i + 1])) for i in (0, 2, 4)]
        return torch.tensor(float(np.mean(shares)))


# ------------------------------------------------------------------------------ decoding


def union_probabilities(type_prob: np.ndarray) -> np.ndarray:
    """Joint-type softmax ``(23, H, W)`` -> the locator's 28 union heatmaps ``(28, H, W)``.

    The foot channels read the finger types the foot joints were mapped onto, so the
    locator's decoder (and its hand-or-foot check) works on this network's output unchanged.
    """
    channels = []
    for name in UNION_CHANNELS:
        kind, site = name.split(":")
        channels.append(type_prob[joint_type(site, kind)])
    return np.stack(channels)


def grade_from_pixels(grade_prob: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Softmax-weighted average grade over a joint's pixels, and its spread.

    ``grade_prob`` is ``(K, H, W)`` (softmax over grades), ``weights`` ``(H, W)`` (the joint's
    type probability on its blob, 0 elsewhere). The spread is the weighted mean of each
    pixel's grade standard deviation: high when the network hesitates between grades.
    """
    total = float(weights.sum())
    if total <= 0:
        raise ValueError("a joint needs at least one pixel with positive weight")
    grades = np.arange(grade_prob.shape[0], dtype=np.float64)[:, None, None]
    mean_px = (grade_prob * grades).sum(0)
    var_px = (grade_prob * (grades - mean_px) ** 2).sum(0)
    mean = float((mean_px * weights).sum() / total)
    sd = float((np.sqrt(var_px) * weights).sum() / total)
    return mean, sd


@dataclass
class MultitaskPrediction:
    """One radiograph: the located joints and their scores (original image pixels)."""

    located: LocatorResult
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)


def decode_multitask(
    probs: np.ndarray,
    *,
    limb: str,
    limb_source: str,
    original_shape: Sequence[int],
    crop_box: Sequence[int],
    mirrored: bool,
    path: str,
    warnings: Sequence[str] = (),
    threshold: float = 0.5,
) -> MultitaskPrediction:
    """Softmax output ``(34, H, W)`` of one image -> named centres and joint scores.

    Centres come from the locator's decoder on the joint-type head (so conflicts, missing
    joints and a wrong limb label are handled exactly as in the two-stage pipeline); each
    joint found gets the grades of :func:`grade_from_pixels` over its blob.
    """
    type_prob = probs[:N_TYPES]
    n = GRADES["narrowing"]
    narrowing_prob, erosion_prob = probs[N_TYPES : N_TYPES + n], probs[N_TYPES + n :]
    y0, y1, x0, x1 = (int(v) for v in crop_box)
    located = decode_result(
        union_probabilities(type_prob),
        limb=limb,
        limb_source=limb_source,
        original_shape=(y1 - y0, x1 - x0),
        mirrored=mirrored,
        path=path,
        warnings=warnings,
        threshold=threshold,
    )
    located.image_shape = (int(original_shape[0]), int(original_shape[1]))
    kind = Limb.parse(located.limb).kind
    scores: dict[str, dict[str, float | None]] = {}
    for joint_id, joint_pred in located.joints.items():
        if joint_pred.missing:
            continue
        joint_pred.x = float(joint_pred.x) + x0
        joint_pred.y = float(joint_pred.y) + y0
        joint = get_joint(joint_id)
        channel = type_prob[joint_type(joint.site, kind)]
        blob = best_blob(channel, threshold)
        if blob is None:  # cannot happen for a joint the decoder found; be safe
            continue
        weights = channel * blob
        entry: dict[str, float | None] = {}
        if joint.narrowing:
            entry["narrowing"], entry["narrowing_sd"] = grade_from_pixels(narrowing_prob, weights)
        if joint.erosion:
            mean, sd = grade_from_pixels(erosion_prob, weights)
            factor = 2.0 if kind == "foot" else 1.0  # foot erosion was halved for training
            entry["erosion"], entry["erosion_sd"] = mean * factor, sd * factor
        scores[joint_id] = entry
    return MultitaskPrediction(located, scores)


# ------------------------------------------------------------------------------ ensemble


class SoftmaxEnsemble(torch.nn.Module):
    """Members averaged in probability space: ``(B, 34, H, W)`` softmax per head.

    Averaging probabilities (not logits) keeps each member's confidence meaningful: a joint
    one member misses and another finds gets half the probability, not a cancelled logit.
    """

    def __init__(self, members: Sequence[torch.nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            probs = torch.cat([t.softmax(1) for t in split_heads(member(x))], dim=1)
            total = probs if total is None else total + probs
        return total / len(self.members)


def load_member(network: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Weights into ``network``, loaded safely; float16 members come back as float32."""
    state = load_weights(path)
    network.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    )
    return network.eval()


def ensemble_files(root: str | Path, members: int | None = None) -> list[Path]:
    """Member weight files listed in ``models/ensemble.json`` (else ``models/model.pt``).

    ``members=None`` takes the listing's ``default_members`` (all when it has none): the
    shipped listing names the measured best choice, and ``--members N`` asks for others.
    """
    models = Path(root) / "models"
    if (models / ENSEMBLE_MANIFEST).is_file():
        files, document = ensemble_manifest(models)
        members = members or document.get("default_members")
    else:
        files = [models / "model.pt"]
    return files[:members] if members else files


def load_ensemble(
    factory: Callable[[], torch.nn.Module], files: Sequence[str | Path]
) -> SoftmaxEnsemble:
    """One fresh network per weight file (``factory`` is the config's ``network_factory``)."""
    return SoftmaxEnsemble([load_member(factory(), f) for f in files])


# ------------------------------------------------------------------------------ outputs


def calibration_for_weights(
    weights_files: Sequence[str | Path], model_info: Mapping[str, Any]
) -> tuple[Any, str]:
    """``(calibration, "")`` from ``conformal.json`` next to the (first) member file when it
    was made with these members (``weights_sha256`` of the members in use), else
    ``(None, why not)``: another member count or a retrained ensemble gets no grade sets."""
    from .conformal import matching_calibration

    if not weights_files:
        return None, "no weights files: no grade sets"
    return matching_calibration(
        Path(weights_files[0]).parent,
        model_info,
        ("weights_sha256",),
        "ra-joints calibrate --task multitask",
    )


def image_scores(pred: MultitaskPrediction, patient_id: str, image_id: int | None = None) -> Any:
    """A prediction as the two-stage pipeline's :class:`~annotation_tools.scoring.ImageScores`
    (no symmetry stage: pre- and post-symmetry scores are the same)."""
    from .scoring import ImageScores, JointScore, RadiographCase

    located = pred.located
    case = RadiographCase(
        path=located.path,
        patient_id=patient_id,
        limb=located.limb,
        image_shape=located.image_shape,
        centres={k: (None if j.missing else (j.x, j.y)) for k, j in located.joints.items()},
        centre_source="multitask",
        image_id=image_id,
        warnings=list(located.warnings),
    )
    joints = {}
    for joint_id, joint_pred in located.joints.items():
        score = JointScore(joint_id, joint_pred.name)
        entry = pred.scores.get(joint_id)
        if entry is not None:
            for name in ("narrowing", "erosion"):
                setattr(score, name, entry.get(name))
                setattr(score, f"patch_{name}", entry.get(name))
                setattr(score, f"{name}_sd", entry.get(f"{name}_sd"))
            score.stage = "multitask"
        joints[joint_id] = score
    return ImageScores(case, joints)


def patients_of(
    predictions: Sequence[MultitaskPrediction], patient_ids: Sequence[str]
) -> list[Any]:
    """Predictions grouped into :class:`~annotation_tools.scoring.PatientScores`."""
    from .scoring import group_patients

    patients = group_patients(
        image_scores(p, pid) for p, pid in zip(predictions, patient_ids, strict=True)
    )
    for patient in patients:
        patient.note = "multi-task network: located and scored in one pass (no symmetry stage)"
    return patients


class DecodeMultitaskd(MapTransform):
    """Post-processing: ensemble probabilities in ``pred`` -> a :class:`MultitaskPrediction`."""

    def __init__(
        self, keys: KeysCollection = "pred", output_key: str = "prediction", threshold: float = 0.5
    ):
        super().__init__(keys)
        self.output_key = output_key
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = decode_multitask(
                torch.as_tensor(d[key]).detach().float().cpu().numpy(),
                **decoder_args(d),
                crop_box=[int(v) for v in torch.as_tensor(d["crop_box"]).flatten()],
                threshold=self.threshold,
            )
        return d


class PredictionWriter(MapTransform):
    """Keeps every prediction; :meth:`write` writes them like the two-stage pipeline does.

    Outputs in ``output_dir``: ``joints/<stem>.json`` (the locator's format),
    ``scores/<stem>.json``, ``scores_ra2dream.csv``, ``joint_scores.csv`` (grade sets at
    ``coverage`` when ``conformal.json`` beside ``weights_files`` was made with them),
    ``summary.json``; with ``store`` also the centres and scores as new ``model`` revisions
    of this bundle.
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        key: str = "prediction",
        model_info: Mapping[str, str] | None = None,
        store: str | Path | None = None,
        case_table: str | Path | None = None,
        weights_files: Sequence[str | Path] = (),
        coverage: float = 0.9,
    ):
        super().__init__(key)
        self.output_dir = Path(output_dir)
        self.model_info = dict(model_info or {})
        self.store = store
        self.case_table = case_table
        self.coverage = float(coverage)
        self.calibration, self.calibration_note = calibration_for_weights(
            list(weights_files), self.model_info
        )
        self.predictions: list[MultitaskPrediction] = []

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        for key in self.key_iterator(dict(data)):
            self.predictions.append(data[key])
        return dict(data)

    def write(self, failures: Sequence[tuple[str, str]] = ()) -> list[Any]:
        from .cases import CaseTable, patient_of_file

        table = CaseTable.read(self.case_table) if self.case_table else None
        ids = [patient_of_file(p.located.path, table) for p in self.predictions]
        return write_predictions(
            self.predictions,
            ids,
            self.output_dir,
            self.model_info,
            self.store,
            failures,
            calibration=self.calibration,
            calibration_note=self.calibration_note,
            coverage=self.coverage,
        )


def write_predictions(
    predictions: Sequence[MultitaskPrediction],
    patient_ids: Sequence[str],
    out: str | Path,
    model_info: Mapping[str, str],
    store: str | Path | None = None,
    failures: Sequence[tuple[str, str]] = (),
    suffix: str = "",
    names: Mapping[str, str] | None = None,
    write_scores: bool = True,
    *,
    calibration: Any = None,
    calibration_note: str = "",
    coverage: float = 0.9,
) -> list[Any]:
    """Joints JSON per image, then the scorer's writers (and the store) for the scores.

    ``names``: image path -> output name (default: :func:`annotation_tools.paths.path_names`
    of the predictions' paths). ``write_scores=False`` stops before the score files: the
    caller hands the returned patients to its own :class:`~annotation_tools.scoring.OutputWriter`
    (a folder predicted patient by patient). ``calibration`` (the ensemble's conformal
    calibration, :func:`calibration_for_weights`) gives every grade its set at ``coverage``
    in ``joint_scores.csv`` and in the store; ``calibration_note`` says why there is none."""
    from .joint_decoding import write_to_store
    from .paths import path_names
    from .scoring import write_outputs, write_scores_to_store

    out = Path(out)
    (out / "joints").mkdir(parents=True, exist_ok=True)
    failures = list(failures)
    names = names or path_names(p.located.path for p in predictions)
    for pred in predictions:
        doc = pred.located.to_json(model_info)
        (out / "joints" / f"{names[pred.located.path]}.json").write_text(json.dumps(doc, indent=1))
    patients = patients_of(predictions, patient_ids)
    if store:
        for pred in predictions:
            try:
                write_to_store(store, pred.located, model_info)
            except (ValueError, KeyError) as exc:  # that image only; say so in the outputs
                pred.located.warnings.append(f"not written to the store: {exc}")
        write_scores_to_store(
            store, patients, model_info, calibration=calibration, coverage=coverage
        )
    if write_scores:
        write_outputs(
            patients,
            failures,
            out,
            model_info,
            suffix=suffix,
            names=names,
            calibration=calibration,
            coverage=coverage,
            calibration_note=calibration_note,
        )
    return patients


# ------------------------------------------------------------------------------ in-process


class MultitaskModel:
    """The bundle's ensemble in-process, built by its own ``inference.json``.

    ``predict_images`` returns located joints and scores in the two-stage pipeline's types.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        spatial_size: Sequence[int],
        coordconv: bool = True,
        threshold: float = 0.5,
        device: str | torch.device = "cpu",
        model_info: Mapping[str, str] | None = None,
    ):
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.coordconv = coordconv
        self.threshold = float(threshold)
        self.model_info = dict(model_info or {})
        self.weights_files: list[Path] = []  # the members' files (from_bundle)
        self.calibration: Any = None  # conformal grade sets (annotation_tools.conformal)
        self.calibration_note = "no conformal calibration loaded"  # why there is none

    @property
    def calibration_folder(self) -> Path | None:
        """Where this ensemble's ``conformal.json`` lives: next to its (first) weights file,
        the bundle's ``models/`` for the shipped members."""
        return Path(self.weights_files[0]).parent if self.weights_files else None

    @classmethod
    def from_bundle(
        cls,
        bundle_root: str | Path,
        *,
        device: str | None = None,
        members: int | None = None,
        weights: Sequence[str | Path] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> MultitaskModel:
        """The bundle's ensemble (``models/ensemble.json``), its first ``members``, or the
        given weight files."""
        from .bundles import bundle_parser

        root = Path(bundle_root)
        chosen: dict[str, Any] = {"members": members}
        if weights:
            chosen["weights_files"] = [str(w) for w in weights]
        parser = bundle_parser(root, overrides={**chosen, **dict(overrides or {})})
        files = parser.get_parsed_content("weights_files")
        missing = [str(f) for f in files if not Path(f).is_file()]
        if not files or missing:
            raise FileNotFoundError(
                f"no weights at {', '.join(missing) or root / 'models'}: train the bundle "
                f"first ({root / 'docs' / 'README.md'})"
            )
        model = cls(
            parser.get_parsed_content("network_cpu"),
            spatial_size=parser.get_parsed_content("spatial_size"),
            coordconv=bool(parser.get_parsed_content("coordconv")),
            threshold=float(parser.get_parsed_content("threshold")),
            device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
            model_info=parser.get_parsed_content("model_info"),
        )
        model.weights_files = [Path(f) for f in files]
        # grade sets only when the calibration was made with exactly these member weights
        model.calibration, model.calibration_note = calibration_for_weights(
            model.weights_files, model.model_info
        )
        return model

    @torch.no_grad()
    def predict_images(
        self,
        items: Sequence[tuple[str, ImageData, str | None]],
        batch_size: int = 4,
        report: Callable[[int], None] = lambda done: None,
        failures: list[tuple[str, str]] | None = None,
    ) -> list[MultitaskPrediction]:
        """``(path, image, limb or None)`` -> one prediction per item, in order.

        With ``failures`` an image that cannot be prepared or decoded is left out and listed
        there as ``(path, reason)``; the others are predicted as if it were not there.
        """
        from .isolation import isolated

        def guard(path: Any) -> Any:
            return isolated(failures, path) if failures is not None else contextlib.nullcontext()

        out: list[MultitaskPrediction] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            started = time.perf_counter()
            prepared = []
            for path, image, limb in chunk:
                with guard(path):
                    prepared.append(
                        prepare_input(image, limb, self.spatial_size, path, crop_edges=True)
                    )
            if not prepared:
                continue
            inputs = [network_input(p["pixels"], self.coordconv) for p in prepared]
            batch = torch.stack(inputs).to(self.device)
            probs = self.network(batch).float().cpu().numpy()
            for prob, prep in zip(probs, prepared, strict=True):
                with guard(prep["path"]):
                    pred = decode_multitask(
                        prob,
                        limb=prep["limb"],
                        limb_source=prep["limb_source"],
                        original_shape=prep["original_shape"],
                        crop_box=prep["crop_box"],
                        mirrored=prep["mirrored"],
                        path=prep["path"],
                        warnings=json.loads(prep["warnings"]),
                        threshold=self.threshold,
                    )
                    pred.located.seconds = (time.perf_counter() - started) / len(chunk)
                    out.append(pred)
            report(len(out))
        return out


def pack_ensemble(
    members: Sequence[Mapping[str, Any]], out_dir: str | Path, info: Mapping[str, Any]
) -> Path:
    """Copy trained members (``{"ckpt": path, "seed": .., "val_fold": .., ...}``) to
    ``out_dir/member_<k>.pt`` in float16 (half the size, the same decoded joints) and write
    ``ensemble.json``, the list :class:`MultitaskModel` reads its members from."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    listed = []
    for k, member in enumerate(members):
        state = torch.load(member["ckpt"], map_location="cpu", weights_only=True)
        state = state.get("model", state)
        state = {n: t.half() if t.is_floating_point() else t for n, t in state.items()}
        name = f"member_{k}.pt"
        torch.save(state, out_dir / name)
        listed.append({"file": name, **{k2: v for k2, v in member.items() if k2 != "ckpt"}})
    manifest = out_dir / "ensemble.json"
    manifest.write_text(json.dumps({"members": listed, **dict(info)}, indent=1))
    return manifest


def evaluate_predictions(
    predictions: Sequence[MultitaskPrediction], project: str | Path, n_resamples: int = 1000
) -> dict[str, Any]:
    """Locator figures and score figures of predictions against a project's human/phantom
    annotations (the figures of the locator and scorer bundles, so the pipelines compare)."""
    from .evaluation import PHANTOM_NOTE, score_figures
    from .locator import evaluate_results
    from .scoring import true_scores
    from .store import AnnotationStore
    from .vocabulary import dream_row

    located = evaluate_results([p.located for p in predictions], project)
    with AnnotationStore.open(project, create=False) as store:
        ids = []
        for pred in predictions:
            record = store.find_image(pred.located.path)
            if record is None:
                raise ValueError(f"{pred.located.path} is not registered in {store.path}")
            ids.append(record.patient_id)
    table = {
        p.patient_id: dream_row(p.patient_id, p.scores()) for p in patients_of(predictions, ids)
    }
    truth = {pid: dream_row(pid, s) for pid, s in true_scores(project).items() if pid in table}
    try:
        scores = score_figures(truth, table, n_resamples=n_resamples)
    except ValueError as exc:  # e.g. no joint found at all: say so, keep the locator figures
        scores = {"error": str(exc)}
    return {"locator": located, "scores": scores, "note": PHANTOM_NOTE}


def write_evaluation(
    predictions: Sequence[MultitaskPrediction],
    project: str | Path,
    output: str | Path,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    report = evaluate_predictions(predictions, project, n_resamples)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    return report
