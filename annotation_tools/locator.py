"""The joint locator: one U-Net for hands and feet, its loss, transforms and runner.

Shared by the ``ra_joint_locator`` MONAI bundle (its configs reference these names), by
``ra-joints predict``/``benchmark`` and by the napari plugin, so that training, inference and
review see the same geometry.

Design (see the bundle's docs/README.md): one network whose output has one channel per joint
of *both* limb kinds (22 hand + 6 foot = 28 "union" channels). Training sets the other kind's
channels to 0, so the network also learns which limb it is looking at: a foot given as a hand
is caught instead of getting hand joint names. Right limbs are mirrored to look like left ones.
The heatmaps are decoded into named joints by :mod:`annotation_tools.joint_decoding` (shared
with the multi-task U-Net); the input is prepared by :mod:`annotation_tools.radiograph` (shared
with the training export).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.metrics import CumulativeIterationMetric
from monai.transforms import MapTransform

from .imageio import ImageData, ImageReadError, file_sha256, read_image
from .joint_decoding import (
    UNION_CHANNELS,
    LocatorResult,
    assign_joints,
    decode_heatmaps,
    decode_result,
    kind_slice,
    looks_like_hand,
    write_to_store,
)
from .radiograph import (
    decoder_args,
    network_input,
    prepare_input,
    prepare_radiograph,
)
from .shape_prior import SHAPE_PRIOR_FILE, ShapePrior, load_shape_priors
from .targets import (
    IGNORE,
)
from .vocabulary import Limb

__all__ = [
    "BUNDLE_NAME",
    "DecodeJointsd",
    "JointHitRate",
    "JointLocator",
    "LimbDecision",
    "LocatorLoss",
    "ResultCollector",
    "SaveJointsJSONd",
    "UnionLabeld",
    "build_network",
    "evaluate_results",
    "project_datalist",
    "shape_prior_path",
    "write_evaluation",
]

BUNDLE_NAME = "ra_joint_locator"


def build_network(
    channels: Sequence[int] = (16, 32, 64, 128, 128, 128, 128),
    strides: Sequence[int] = (2, 2, 2, 2, 2, 2),
    kernel_size: int = 3,
    num_res_units: int = 0,
    coordconv: bool = True,
    dropout: float = 0.0,
) -> torch.nn.Module:
    """MONAI U-Net with one output channel per union joint (logits; sigmoid outside).

    Naming a joint needs context from the whole limb (MCP 2 and MCP 3 look alike), so the
    default has six down-sampling levels: its receptive field (~380 px) covers a 256-px input.
    With four levels (~60 px) the quick model fired at joints but named them wrongly.
    """
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=3 if coordconv else 1,
        out_channels=len(UNION_CHANNELS),
        channels=tuple(channels),
        strides=tuple(strides),
        kernel_size=kernel_size,
        up_kernel_size=kernel_size,
        num_res_units=num_res_units,
        norm="batch",
        dropout=dropout,
    )


class LocatorLoss(torch.nn.Module):
    """Per-pixel binary cross-entropy + per-channel spatial cross-entropy, skipping -1 pixels.

    * BCE (the RA2-DREAM choice) makes each pixel's sigmoid a calibrated "joint here"
      probability, which the decoder thresholds to find blobs and missing joints.
    * The spatial term is a cross-entropy between each channel's softmax over *pixels* and its
      normalised target square: a channel can only do well by putting its mass on one place,
      so it must learn *which* joint it stands for. Without it (BCE alone, or BCE with a large
      positive weight and Dice) the quick model lit every channel up at all 15 finger joints.

    The fused BCE kernel is used whenever nothing is ignored; a pixel mask only for batches
    with ignored pixels. ``dice_weight`` adds an optional soft Dice term.
    """

    def __init__(
        self, pos_weight: float = 3.0, spatial_weight: float = 0.2, dice_weight: float = 0.0
    ):
        super().__init__()
        self.pos_weight = float(pos_weight)
        self.spatial_weight = float(spatial_weight)
        self.dice_weight = float(dice_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = torch.as_tensor(target, dtype=logits.dtype, device=logits.device)
        ignore = target == IGNORE
        y = target.clamp(min=0)
        pos_weight = torch.tensor(self.pos_weight, dtype=logits.dtype, device=logits.device)
        bce_loss = torch.nn.functional.binary_cross_entropy_with_logits
        valid = None
        if bool(ignore.any()):
            valid = (~ignore).to(logits.dtype)
            loss = bce_loss(logits, y, weight=valid, pos_weight=pos_weight, reduction="sum")
            loss = loss / valid.sum().clamp(min=1)
        else:
            loss = bce_loss(logits, y, pos_weight=pos_weight)
        mass = y.sum((2, 3))
        has_target = (mass > 0).to(logits.dtype)
        n_targets = has_target.sum().clamp(min=1)
        if self.spatial_weight:
            flat = logits.flatten(2)
            if valid is not None:  # ignored pixels take no part in the softmax
                flat = flat.masked_fill(valid.flatten(2) == 0, -1e4)
            log_p = torch.log_softmax(flat, dim=-1)
            ce = -(y.flatten(2) * log_p).sum(-1) / mass.clamp(min=1)
            loss = loss + self.spatial_weight * (ce * has_target).sum() / n_targets
        if self.dice_weight:
            prob = torch.sigmoid(logits) if valid is None else torch.sigmoid(logits) * valid
            inter = (prob * y).sum((2, 3))
            total = prob.sum((2, 3)) + mass
            dice = ((1 - (2 * inter + 1) / (total + 1)) * has_target).sum()
            loss = loss + self.dice_weight * dice / n_targets
        return loss


# ------------------------------------------------------------------------------ transforms


class UnionLabeld(MapTransform):
    """Place a limb kind's target channels into the 28 union channels (the others 0)."""

    def __init__(self, keys: KeysCollection, limb_key: str = "limb"):
        super().__init__(keys)
        self.limb_key = limb_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        kind = Limb.parse(d[self.limb_key]).kind
        for key in self.key_iterator(d):
            label = d[key]
            shape = (len(UNION_CHANNELS), *label.shape[-2:])
            out = (
                torch.zeros(shape, dtype=torch.float32)
                if isinstance(label, torch.Tensor)
                else (np.zeros(shape, np.float32))
            )
            out[kind_slice(kind)] = label
            d[key] = out
        return d


# ------------------------------------------------------------------------------ decoding


class DecodeJointsd(MapTransform):
    """Post-processing: sigmoid heatmaps in ``pred`` -> a :class:`LocatorResult` in ``joints``."""

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_key: str = "joints",
        threshold: float = 0.5,
        shape_priors: Mapping[str, ShapePrior] | None = None,
    ):
        super().__init__(keys)
        self.output_key = output_key
        self.threshold = threshold
        self.shape_priors = dict(shape_priors or {})

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            prob = torch.as_tensor(d[key]).detach().float().cpu().numpy()
            d[self.output_key] = decode_result(
                prob, **decoder_args(d), threshold=self.threshold, shape_priors=self.shape_priors
            )
        return d


class SaveJointsJSONd(MapTransform):
    """Write one ``<stem>.json`` per image, and optionally the centres into a project store."""

    def __init__(
        self,
        keys: KeysCollection = "joints",
        output_dir: str | Path = "out",
        bundle_version: str = "",
        weights_file: str | Path | None = None,
        store: str | Path | None = None,
    ):
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.model = {"bundle": BUNDLE_NAME, "version": bundle_version}
        if weights_file and Path(weights_file).exists():
            self.model["weights_sha256"] = file_sha256(weights_file)
        self.store = store

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for key in self.key_iterator(d):
            result: LocatorResult = d[key]
            if self.store:
                try:
                    write_to_store(self.store, result, self.model)
                except (ValueError, KeyError) as exc:  # say so in the output, keep going
                    result.warnings.append(f"not written to the store: {exc}")
            path = self.output_dir / f"{Path(result.path).stem}.json"
            path.write_text(json.dumps(result.to_json(self.model), indent=1))
        return d


# ------------------------------------------------------------------------------ metric


class JointHitRate(CumulativeIterationMetric):
    """Share of annotated joints whose decoded point lies within ``tolerance`` x grid diagonal.

    Works on union heatmaps (logits or probabilities) and union targets in the training grid;
    used as the validation key metric.
    """

    def __init__(self, tolerance: float = 0.02, threshold: float = 0.5, logits: bool = True):
        super().__init__()
        self.tolerance = tolerance
        self.threshold = threshold
        self.logits = logits

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(y_pred) if self.logits else y_pred
        prob = prob.detach().float().cpu().numpy()
        target = torch.as_tensor(y).detach().float().cpu().numpy()
        hits = np.full(prob.shape[:2], np.nan, np.float32)
        diag = float(np.hypot(*prob.shape[-2:]))
        for b in range(prob.shape[0]):
            decoded = {}
            for kind in ("hand", "foot"):
                if (target[b, kind_slice(kind)] == 1).any():
                    decoded.update(
                        {
                            f"{kind}:{k}": v
                            for k, v in decode_heatmaps(prob[b], kind, self.threshold).items()
                        }
                    )
            for c, name in enumerate(UNION_CHANNELS):
                square = target[b, c] == 1
                if not square.any():
                    continue
                ys, xs = np.nonzero(square)
                x, y, _ = decoded[name]
                if x is None:
                    hits[b, c] = 0.0
                else:
                    err = np.hypot(x - xs.mean(), y - ys.mean()) / diag
                    hits[b, c] = float(err <= self.tolerance)
        return torch.from_numpy(hits)

    def aggregate(self) -> torch.Tensor:
        data = self.get_buffer()
        values = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        return torch.tensor(float(np.nanmean(values)) if np.isfinite(values).any() else 0.0)


# ------------------------------------------------------------------------------ runtime


def shape_prior_path(weights_path: str | Path) -> Path | None:
    """The shape prior fitted with these weights (kept next to them), or None: a prior of
    another cohort would judge the joints by the wrong anatomy."""
    path = Path(weights_path).parent / SHAPE_PRIOR_FILE
    return path if path.is_file() else None


@dataclass(frozen=True)
class LimbDecision:
    """The locator's own limb call for an untagged radiograph (:meth:`JointLocator.decide_limb`)."""

    limb: Limb
    confidence: float  # 0..1: how much better the winning orientation fits than the other
    reason: str


class JointLocator:
    """Run the locator bundle in-process, with the bundle's own inference config.

    ``JointLocator.from_bundle(path)`` parses ``configs/inference.json`` (plus overrides) with
    MONAI's ``ConfigParser``, builds ``network_def`` and loads ``models/model.pt`` with
    ``weights_only=True``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        spatial_size: Sequence[int],
        coordconv: bool,
        device: str | torch.device = "cpu",
        threshold: float = 0.5,
        model_info: Mapping[str, str] | None = None,
        shape_priors: Mapping[str, ShapePrior] | None = None,
    ):
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.coordconv = coordconv
        self.threshold = threshold
        self.model_info = dict(model_info or {})
        self.shape_priors = dict(shape_priors or {})
        # position radius and probability of being right (locator_calibration.py), when a
        # calibration was made for exactly these weights; ``coverage`` sets the radius
        self.calibration: Any = None
        self.coverage = 0.9

    @classmethod
    def from_bundle(
        cls,
        bundle_root: str | Path,
        *,
        device: str | None = None,
        config_files: Sequence[str] = ("configs/inference.json",),
        weights: str | None = None,
    ) -> JointLocator:
        from .bundles import load_bundle_network, weights_hash

        parser, network, weights_path = load_bundle_network(
            bundle_root, config_files=config_files, weights=weights
        )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        info = {
            "bundle": BUNDLE_NAME,
            "version": str(parser.get("_meta_#version", "")),
            "weights_sha256": weights_hash([weights_path]),
        }
        locator = cls(
            network,
            parser.get_parsed_content("spatial_size"),
            bool(parser.get_parsed_content("coordconv")),
            device=device,
            threshold=float(parser.get_parsed_content("threshold")),
            model_info=info,
            shape_priors=load_shape_priors(shape_prior_path(weights_path)),
        )
        locator.calibration = _calibration_for(Path(weights_path).parent, info)
        return locator

    @torch.no_grad()
    def predict_images(
        self,
        items: Iterable[tuple[str | Path, ImageData, str | None]],
        batch_size: int = 8,
        failures: list[tuple[str, str]] | None = None,
    ) -> list[LocatorResult]:
        """``(path, image, limb or None)`` triples -> one result each, in order.

        With ``failures`` an image that cannot be prepared or decoded (e.g. the shape prior
        refuses an image that is no hand or foot) is left out and listed there as
        ``(path, reason)``, so one odd image costs only its own result.
        """
        from .isolation import isolated

        def guard(path: Any) -> Any:
            return isolated(failures, path) if failures is not None else contextlib.nullcontext()

        results: list[LocatorResult] = []
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            if not batch:
                return
            started = time.perf_counter()
            inputs = [network_input(b["pixels"], self.coordconv) for b in batch]
            x = torch.stack(inputs).to(self.device)
            prob = torch.sigmoid(self.network(x)).float().cpu().numpy()
            per_item = (time.perf_counter() - started) / len(batch)
            for b, p in zip(batch, prob, strict=True):
                with guard(b["path"]):
                    res = decode_result(
                        p,
                        limb=b["limb"],
                        limb_source=b["limb_source"],
                        original_shape=b["original_shape"],
                        mirrored=b["mirrored"],
                        path=b["path"],
                        warnings=json.loads(b["warnings"]),
                        threshold=self.threshold,
                        shape_priors=self.shape_priors,
                    )
                    res.seconds = b["prep_seconds"] + per_item
                    if self.calibration is not None:
                        self.calibration.annotate(res, self.coverage)
                    results.append(res)
            batch.clear()

        for path, image, limb in items:
            started = time.perf_counter()
            with guard(path):
                prepared = prepare_input(image, limb, self.spatial_size, path)
                prepared["prep_seconds"] = (
                    time.perf_counter() - started + float(image.metadata.get("read_seconds", 0.0))
                )
                batch.append(prepared)
            if len(batch) >= batch_size:
                flush()
        flush()
        return results

    @torch.no_grad()
    def decide_limb(self, image: ImageData) -> LimbDecision:
        """Which limb an untagged radiograph shows, from the network itself.

        The locator only ever saw left-looking limbs (right ones are mirrored at input), so a
        right limb fed as it is - or a left one fed mirrored - gives joints that do not sit
        where the limb's shape prior puts them. The image is run twice (as given = left,
        mirrored = right); in each orientation the hand channels say hand or foot
        (:func:`~annotation_tools.joint_decoding.looks_like_hand`) and the decoded joints get
        the median shape-prior residual of that kind. The orientation that fits better wins;
        the confidence is ``1 - best / other`` (0 when even the best fit is implausible).
        """
        if not {"hand", "foot"} <= set(self.shape_priors):
            raise ValueError(
                "this locator has no hand and foot shape prior (shape_prior.json next to its "
                "weights), so it cannot decide a limb's side"
            )
        prepared = [
            prepare_radiograph(image, self.spatial_size, mirror=mirror) for mirror in (False, True)
        ]
        x = torch.stack([network_input(p.pixels, self.coordconv) for p in prepared])
        prob = torch.sigmoid(self.network(x.to(self.device))).float().cpu().numpy()
        fits = []
        for side, p in zip(("left", "right"), prob, strict=True):
            kind = "hand" if looks_like_hand(p, self.threshold) else "foot"
            decoded, _ = assign_joints(p, kind, self.threshold)
            points = np.array(
                [[np.nan, np.nan] if x is None else [x, y] for x, y, _ in decoded.values()]
            )
            try:
                residual = float(np.nanmedian(self.shape_priors[kind].residuals(points)))
            except ValueError:  # fewer than 4 joints found: nothing to fit
                residual = float("inf")
            fits.append((residual, side, kind))
        (best, side, kind), (other, _, other_kind) = sorted(fits)
        limb = Limb.parse(("L" if side == "left" else "R") + ("H" if kind == "hand" else "F"))
        tau = self.shape_priors[kind].tau
        if not np.isfinite(best) or best > tau:
            confidence = 0.0
            reason = (
                f"fits no hand or foot (median shape residual {best:.1f} > {tau:.1f}); "
                f"best guess {limb.value}"
            )
        else:
            confidence = 1.0 - best / other if np.isfinite(other) else 1.0
            reason = (
                f"{'as given' if side == 'left' else 'mirrored'} it fits the {kind} shape "
                f"prior (median residual {best:.1f}) better than "
                f"{'mirrored' if side == 'left' else 'as given'} as a {other_kind} "
                f"({other:.1f})"
            )
        return LimbDecision(limb, round(float(confidence), 3), reason)

    def predict_files(
        self,
        paths: Iterable[str | Path],
        limbs: Mapping[str, str] | None = None,
        batch_size: int = 8,
    ) -> tuple[list[LocatorResult], list[tuple[str, str]]]:
        """Locate joints in files; unreadable files are returned as ``(path, reason)``."""
        limbs = limbs or {}
        failed: list[tuple[str, str]] = []

        def readable() -> Iterable[tuple[str, ImageData, str | None]]:
            for p in paths:
                started = time.perf_counter()
                try:
                    image = read_image(p)
                except ImageReadError as exc:
                    failed.append((str(p), exc.reason))
                    continue
                image.metadata["read_seconds"] = time.perf_counter() - started
                yield str(p), image, limbs.get(str(p))

        results = self.predict_images(readable(), batch_size=batch_size, failures=failed)
        return results, failed


def _calibration_for(folder: Path, info: Mapping[str, str]) -> Any:
    """The bundle's locator calibration when it was made with exactly these weights."""
    from .locator_calibration import LOCATOR_CALIBRATION_FILE, LocatorCalibration

    path = folder / LOCATOR_CALIBRATION_FILE
    if not path.is_file():
        return None
    calibration = LocatorCalibration.load(path)
    if calibration.source.get("weights_sha256") != info.get("weights_sha256"):
        return None  # calibrated for other weights: no radius rather than a wrong one
    return calibration


class ResultCollector(MapTransform):
    """Post-processing step of ``evaluate.json``: keep every decoded result for the report."""

    def __init__(self, key: str = "joints"):
        super().__init__(key)
        self.results: list[LocatorResult] = []

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        for key in self.key_iterator(dict(data)):
            self.results.append(data[key])
        return dict(data)


def project_datalist(project: str | Path) -> list[dict[str, str]]:
    """Every radiograph of a project with the limb the store knows (for evaluate.json)."""
    from .store import AnnotationStore

    with AnnotationStore.open(project, create=False) as store:
        return [
            {"image": str(store.resolve(im)), "limb": im.limb}
            for im in store.images(modality="radiograph")
        ]


def evaluate_results(
    results: Sequence[LocatorResult],
    project: str | Path,
    tolerance: float = 0.02,
    failed: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Locator figures of results against a project's human/phantom centres.

    The figures come from :func:`annotation_tools.evaluation.locator_figures`; a result located
    as another limb than the stored one counts as a wrong name too. A registered radiograph in
    ``failed`` (``(path, reason)``: it could not be located at all) counts with every joint
    missed, so a locator that gives up on hard films does not look better for it.
    """
    from .evaluation import PHANTOM_NOTE, locator_figures, present_centres
    from .store import TRAINING_SOURCES, AnnotationStore

    cases, wrong = [], []
    with AnnotationStore.open(project, create=False) as store:
        for result in results:
            record = store.find_image(result.path)
            if record is None:
                raise ValueError(f"{result.path} is not registered in {store.path}")
            if result.limb != record.limb:
                wrong.append(f"{record.path}: located as {result.limb}, is {record.limb}")
            truth = present_centres(store.centres(record.id, sources=TRAINING_SOURCES))
            cases.append((record.path, truth, result.present(), result.image_shape))
        for path, _reason in failed:
            record = store.find_image(path)
            if record is not None:
                truth = present_centres(store.centres(record.id, sources=TRAINING_SOURCES))
                cases.append((record.path, truth, {}, (record.height, record.width)))
    report = locator_figures(cases, tolerance=tolerance, wrong=wrong)
    report["not_located"] = [f"{path}: {reason}" for path, reason in failed]
    seconds = [r.seconds for r in results if r.seconds is not None]
    report["conflicts_flagged_missing"] = sum(
        1 for r in results for w in r.warnings if "claimed the same point" in w
    )
    report["seconds_per_image_mean"] = float(np.mean(seconds)) if seconds else None
    report["note"] = PHANTOM_NOTE
    return report


def write_evaluation(
    results: Sequence[LocatorResult], project: str | Path, output: str | Path
) -> dict[str, Any]:
    report = evaluate_results(results, project)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    return report
