"""Ultrasound synovitis grading with the ``ra_us_rating`` ensemble: cases in, grades out.

Cases come from a pairs table (the ``ultrasound_scores.csv`` layout of a phantom cohort:
``patient_id, site, greyscale, doppler, roi_x0, roi_y0, roi_x1, roi_y1`` and optionally
``doppler_roi_*`` and the true grades) or from a project's annotation store. A pair that cannot
be used is reported with the reason and the rest is graded. The ensemble's members vote per
fold through ECOC decoding; MULTITUDE combines the folds; integrated gradients explain them.
"""

from __future__ import annotations

import csv
import json
import time
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from torch import nn

from .bundles import ensemble_manifest, load_weights, weights_hash
from .conformal import check_coverage
from .imageio import ImageReadError, read_image
from .isolation import Cancelled, reason_of
from .paths import safe_name, unique_name
from .rating import (
    DEFAULT_BASELINE,
    DOPPLER_CHANNELS,
    GRADE_KEYS,
    GRADES,
    GREYSCALE_CHANNELS,
    OUTPUTS,
    SPLITS,
    RatingMember,
    attribution_map,
    ecoc_decode,
    heatmap_overlay,
    ig_baseline,
    integrated_gradients,
    is_valid_pair,
    majority_vote,
    multitude,
    normalise_heatmap,
)
from .store import TRAINING_SOURCES, AnnotationStore, Provenance
from .ultrasound import RATING_SIZE, UltrasoundInputError, prepare_pair
from .us_conformal import UsGradeCalibration, set_columns, us_calibration_for

__all__ = [
    "EXPLAIN_DEFAULTS",
    "HEATMAPS",
    "CollectRatingsd",
    "RatingCollector",
    "RatingEnsemble",
    "RatingWriter",
    "UsCase",
    "UsCaseSet",
    "decide_cases",
    "ensemble_hash",
    "evaluate_rating",
    "explain_case",
    "load_ensemble",
    "load_us_cases",
    "rating_figures",
    "record_proposed_roi",
    "run_bundle_inference",
]

ROI_COLUMNS = ("roi_x0", "roi_y0", "roi_x1", "roi_y1")


# ------------------------------------------------------------------------------ cases


@dataclass
class UsCase:
    """One grey-scale/Doppler pair ready for the networks (``image``: (4, S, S) uint8)."""

    case_id: str
    patient_id: str
    site: str
    greyscale: str
    doppler: str
    roi: list[float]
    image: np.ndarray
    doppler_roi: list[float] | None = None
    pair_id: int | None = None  # the store's pair id, when the case came from a store
    truth: dict[str, int] | None = None
    roi_source: str = "drawn"  # "drawn" (table / store) or "proposed" (--auto-roi)


@dataclass
class UsCaseSet:
    cases: list[UsCase] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)  # {"case", "file", "reason"}
    store: Path | None = None

    @property
    def items(self) -> list[dict[str, Any]]:
        """MONAI dataset items: the network input and the case's index."""
        return [{"image": c.image, "index": i} for i, c in enumerate(self.cases)]


def _box(row: Mapping[str, str], prefix: str) -> list[float] | None:
    columns = [f"{prefix}{c[4:]}" for c in ROI_COLUMNS] if prefix != "roi_" else ROI_COLUMNS
    texts = [(row.get(c) or "").strip() for c in columns]
    if not any(texts):
        return None
    if not all(texts):
        raise UltrasoundInputError(f"ROI box incomplete: {dict(zip(columns, texts, strict=True))}")
    try:
        return [float(t) for t in texts]
    except ValueError as exc:
        raise UltrasoundInputError(f"ROI box is not numeric: {texts}") from exc


def _truth(row: Mapping[str, Any]) -> dict[str, int] | None:
    try:
        sh, vasc = int(row["synovial_hypertrophy"]), int(row["vascularity"])
    except (KeyError, TypeError, ValueError):
        return None
    return {"synovial_hypertrophy": sh, "vascularity": vasc, "combined": max(sh, vasc)}


def _prepare(
    grey_path: Path,
    doppler_path: Path,
    roi: Sequence[float] | None,
    doppler_roi: Sequence[float] | None,
    size: int,
    *,
    auto_roi: bool = False,
    site: str | None = None,
) -> tuple[np.ndarray, list[float], str]:
    """The network input, the ROI it was cut with, and where that ROI came from."""
    if roi is None and not auto_roi:
        raise UltrasoundInputError(
            "no ROI box: draw one on the grey-scale or Doppler image (or let the joint-recess "
            "proposal stand in: --auto-roi, auto_roi=True)"
        )
    grey = read_image(grey_path).pixels
    dop = read_image(doppler_path).pixels
    source = "drawn"
    if roi is None:
        from .us_roi import propose_roi

        roi, source = list(propose_roi(grey, site)), "proposed"
    return prepare_pair(grey, dop, roi, doppler_roi, size).network_input(), list(roi), source


def _reason(exc: BaseException) -> str:
    """Our own errors as they are; anything else with its type (a decoder bug, say)."""
    if isinstance(exc, (ImageReadError, UltrasoundInputError)):
        return str(exc)
    return reason_of(exc)


def load_us_cases(
    dataset_dir: str | Path | None = None,
    *,
    pairs_table: str | Path | None = None,
    store: str | Path | None = None,
    sources: Iterable[str] | None = TRAINING_SOURCES,
    size: int = RATING_SIZE,
    patient_id: str | None = None,
    pair_id: int | None = None,
    auto_roi: bool = False,
) -> UsCaseSet:
    """Read and crop every pair; pairs that cannot be used go to ``failed`` with the reason.

    ``auto_roi``: a pair without a drawn ROI (none in the table, none from ``sources`` in the
    store) is cut with the proposed joint-recess box
    (:func:`annotation_tools.us_roi.propose_roi`) instead of failing; the case says so
    (``roi_source="proposed"``). A drawn box is always used as it is.

    With ``store`` (a project folder or its ``.sqlite``) the pairs, ROI boxes (from ``sources``)
    and any annotated grades come from the store; otherwise from ``pairs_table`` (default:
    ``dataset_dir/ultrasound_pairs.json``, else ``dataset_dir/ultrasound_scores.csv``), paths
    relative to the table's folder. ``patient_id`` keeps one patient's pairs; ``pair_id`` one
    pair of the store (the dock grades the pair that is open, not the whole patient).
    """
    out = UsCaseSet()
    if store is not None:
        return _cases_from_store(
            Path(store), sources, size, out, patient_id, pair_id, auto_roi=auto_roi
        )
    table = Path(pairs_table) if pairs_table else _default_table(Path(dataset_dir or "."))
    rows = _read_pairs_table(table)
    taken: set[str] = set()
    for line, row in enumerate(rows, start=2):
        if patient_id is not None and row.get("patient_id") != patient_id:
            continue
        case_id = unique_name(  # a file name: no id or site may climb out of the output folder
            safe_name(f"{row.get('patient_id') or 'unknown'}_{row.get('site') or f'row{line}'}"),
            taken,
        )
        try:
            roi, doppler_roi = _box(row, "roi_"), _box(row, "doppler_roi_")
            image, roi, roi_source = _prepare(
                table.parent / row["greyscale"],
                table.parent / row["doppler"],
                roi,
                doppler_roi,
                size,
                auto_roi=auto_roi,
                site=row.get("site") or None,
            )
        except Cancelled:
            raise
        except Exception as exc:  # any error in one pair costs that pair only
            where = f"{table} pairs[{line - 2}]" if table.suffix == ".json" else f"{table}:{line}"
            out.failed.append({"case": case_id, "file": where, "reason": _reason(exc)})
            continue
        out.cases.append(
            UsCase(
                case_id,
                row.get("patient_id") or "",
                row.get("site") or "",
                row["greyscale"],
                row["doppler"],
                roi or [],
                image,
                doppler_roi=doppler_roi,
                truth=_truth(row),
                roi_source=roi_source,
            )
        )
    return out


def _default_table(folder: Path) -> Path:
    for name in ("ultrasound_pairs.json", "ultrasound_scores.csv"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(
        f"no pairs table in {folder}: give ultrasound_scores.csv (columns patient_id, site, "
        "greyscale, doppler, roi_x0, roi_y0, roi_x1, roi_y1) or ultrasound_pairs.json (see the "
        "bundle's docs/README.md)"
    )


def _read_pairs_table(table: Path) -> list[dict[str, str]]:
    """Rows of a pairs CSV, or of a JSON ``{"pairs": [{..., "roi": [x0, y0, x1, y1]}]}``
    flattened to the CSV's columns, so both are read by one loop."""
    if not table.exists():
        raise FileNotFoundError(f"no pairs table at {table}")
    if table.suffix.lower() == ".json":
        try:
            entries = json.loads(table.read_text())["pairs"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{table} is not a pairs JSON ({{'pairs': [...]}}): {exc}") from exc
        rows = []
        for entry in entries:
            row = {
                k: "" if v is None else str(v) for k, v in entry.items() if not k.endswith("roi")
            }
            for prefix in ("roi", "doppler_roi"):
                box = entry.get(prefix) or [""] * 4
                for name, value in zip(("x0", "y0", "x1", "y1"), box, strict=False):
                    row[f"{prefix}_{name}"] = str(value)
            rows.append(row)
    else:
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
    missing = {"greyscale", "doppler"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{table} lacks the column(s) {', '.join(sorted(missing))}")
    return rows


def _cases_from_store(
    path: Path,
    sources: Iterable[str] | None,
    size: int,
    out: UsCaseSet,
    patient_id: str | None = None,
    pair_id: int | None = None,
    *,
    auto_roi: bool = False,
) -> UsCaseSet:
    sources = tuple(sources) if sources is not None else None
    with AnnotationStore.open(path, create=False) as st:
        out.store = st.path
        for pair in st.us_pairs(patient_id):
            if pair_id is not None and int(pair["id"]) != int(pair_id):
                continue
            grey_rec, dop_rec = (
                st.image(pair["greyscale_image_id"]),
                st.image(pair["doppler_image_id"]),
            )
            case_id = safe_name(f"{pair['patient_id']}_{pair['site']}_pair{pair['id']}")
            roi_rev = st.roi(grey_rec.id, sources=sources) or st.roi(dop_rec.id, sources=sources)
            dop_rev = st.roi(dop_rec.id, sources=sources)
            roi = [roi_rev.value[k] for k in ("x0", "y0", "x1", "y1")] if roi_rev else None
            dop_roi = [dop_rev.value[k] for k in ("x0", "y0", "x1", "y1")] if dop_rev else None
            changed = st.content_problem(grey_rec) or st.content_problem(dop_rec)
            if changed:
                out.failed.append({"case": case_id, "file": grey_rec.path, "reason": changed})
                continue
            try:
                image, roi, roi_source = _prepare(
                    st.resolve(grey_rec),
                    st.resolve(dop_rec),
                    roi,
                    dop_roi,
                    size,
                    auto_roi=auto_roi,
                    site=pair["site"],
                )
            except Cancelled:
                raise
            except Exception as exc:  # any error in one pair costs that pair only
                out.failed.append({"case": case_id, "file": grey_rec.path, "reason": _reason(exc)})
                continue
            truth_rev = st.us_score(pair["id"], sources=TRAINING_SOURCES)
            out.cases.append(
                UsCase(
                    case_id,
                    pair["patient_id"],
                    pair["site"],
                    grey_rec.path,
                    dop_rec.path,
                    roi or [],
                    image,
                    doppler_roi=dop_roi,
                    pair_id=int(pair["id"]),
                    truth=_truth(truth_rev.value) if truth_rev else None,
                    roi_source=roi_source,
                )
            )
    return out


# ------------------------------------------------------------------------------ ensemble


class RatingEnsemble(nn.Module):
    """All members of the bundle in one module: (B, 4, S, S) -> (B, M, 3 x splits) logits.

    ``members`` come with their ``info`` (fold, seed, splits) from ``models/ensemble.json``.
    Every member of one ensemble carries the same number of splits.
    """

    def __init__(
        self,
        members: Sequence[RatingMember],
        info: Sequence[Mapping[str, Any]],
        input_size: int = RATING_SIZE,
    ):
        super().__init__()
        self.input_size = int(input_size)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        widths = {len(m.splits) for m in members}
        if len(widths) != 1:
            raise ValueError("all members must carry the same number of ECOC splits")
        self.members = nn.ModuleList(members)
        self.info = [dict(i) for i in info]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], dim=1)

    # -------------------------------------------------------------- decoding

    def fold_probabilities(self, logits: np.ndarray) -> dict[int, dict[str, np.ndarray]]:
        """(B, M, 3 x n) logits -> per fold and output group, (B, 3 x repeats) probabilities
        ordered split-major, ready for :func:`ecoc_decode`."""
        probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
        n = len(self.members[0].splits)
        by_fold: dict[int, dict[str, dict[int, list[np.ndarray]]]] = defaultdict(
            lambda: {g: defaultdict(list) for g in OUTPUTS}
        )
        for m, (member, info) in enumerate(zip(self.members, self.info, strict=True)):
            for g, group in enumerate(OUTPUTS):
                for j, split in enumerate(member.splits):
                    by_fold[int(info["fold"])][group][split].append(probs[:, m, g * n + j])
        out: dict[int, dict[str, np.ndarray]] = {}
        for fold, groups in sorted(by_fold.items()):
            out[fold] = {}
            for group, per_split in groups.items():
                counts = {len(per_split.get(k, [])) for k in SPLITS}
                if len(counts) != 1 or 0 in counts:
                    raise ValueError(
                        f"fold {fold} does not cover the splits {SPLITS} equally "
                        f"({ {k: len(v) for k, v in per_split.items()} }): check ensemble.json"
                    )
                out[fold][group] = np.stack([p for k in SPLITS for p in per_split[k]], axis=1)
        return out

    def decide(self, logits: np.ndarray) -> list[dict[str, Any]]:
        """Per case: MULTITUDE grades, every fold's votes, the vote weights, the mean split
        probabilities and each fold's expected grade (what the conformal grade sets of
        :mod:`annotation_tools.us_conformal` are built on) and the ablations (plain majority
        vote, the first fold alone, grey-scale-only SH)."""
        folds = self.fold_probabilities(logits)
        votes: dict[str, np.ndarray] = {}
        mean_probs: dict[str, np.ndarray] = {}
        fold_expected: dict[str, np.ndarray] = {}  # (B, folds): each fold's expected grade
        for group in OUTPUTS:
            per_fold = [folds[f][group] for f in sorted(folds)]
            repeats = per_fold[0].shape[1] // len(SPLITS)
            votes[group] = np.stack([ecoc_decode(p, repeats=repeats)[0] for p in per_fold], 1)
            fold_probs = [p.reshape(len(p), len(SPLITS), repeats).mean(-1) for p in per_fold]
            mean_probs[group] = np.mean(fold_probs, axis=0)
            fold_expected[group] = np.stack([p.sum(-1) for p in fold_probs], 1)
        results = []
        for i in range(len(votes["sh"])):
            sh_votes, v_votes = votes["sh"][i].tolist(), votes["vascularity"][i].tolist()
            vote = multitude(sh_votes, v_votes)
            grey_vote = multitude(votes["sh_grey"][i].tolist(), v_votes)
            total = sum(vote.weights.values())
            maj = (majority_vote(sh_votes), majority_vote(v_votes))
            results.append(
                {
                    "synovial_hypertrophy": vote.sh,
                    "vascularity": vote.vascularity,
                    "combined": vote.combined,
                    "uncertainty": 1.0 - vote.weights[(vote.sh, vote.vascularity)] / total,
                    "votes": {"synovial_hypertrophy": sh_votes, "vascularity": v_votes},
                    "multitude_weights": {f"{s},{v}": w for (s, v), w in vote.weights.items()},
                    "split_probabilities": {
                        "synovial_hypertrophy": mean_probs["sh"][i].round(4).tolist(),
                        "vascularity": mean_probs["vascularity"][i].round(4).tolist(),
                    },
                    # sum of P(>=1), P(>=2), P(>=3) of each fold: the grade sets' spread
                    "fold_expected_grades": {
                        "synovial_hypertrophy": fold_expected["sh"][i].round(4).tolist(),
                        "vascularity": fold_expected["vascularity"][i].round(4).tolist(),
                    },
                    "ablations": {
                        "majority_vote": _pair_dict(*maj),
                        "single_model": _pair_dict(sh_votes[0], v_votes[0]),
                        "greyscale_only_sh": _pair_dict(grey_vote.sh, grey_vote.vascularity),
                    },
                }
            )
        return results


def decide_cases(
    ensemble: RatingEnsemble, cases: UsCaseSet, batch: int = 16
) -> list[dict[str, Any]]:
    """Every case through the ensemble in-process (no MONAI engine: benchmarks and the
    calibration), decided, with its ``truth`` and ``patient_id``."""
    logits = []
    device = next(ensemble.parameters()).device
    with torch.no_grad():
        for i in range(0, len(cases.cases), batch):
            chunk = cases.cases[i : i + batch]
            x = torch.as_tensor(np.stack([c.image for c in chunk]), dtype=torch.float32) / 255.0
            logits.append(ensemble(x.to(device)).cpu().numpy())
    decisions = ensemble.decide(np.concatenate(logits)) if logits else []
    return [
        {**d, "truth": c.truth, "patient_id": c.patient_id}
        for c, d in zip(cases.cases, decisions, strict=True)
    ]


def _pair_dict(sh: int, vasc: int) -> dict[str, Any]:
    """Grades of an ablation; an invalid pair is kept (that is what is being measured)."""
    return {
        "synovial_hypertrophy": int(sh),
        "vascularity": int(vasc),
        "combined": max(int(sh), int(vasc)),
        "valid": is_valid_pair(int(sh), int(vasc)),
    }


def load_ensemble(
    models_dir: str | Path,
    *,
    widen_factor: float | None = None,
    hidden: int | None = None,
    input_size: int = RATING_SIZE,
) -> RatingEnsemble:
    """The members listed in ``models_dir/ensemble.json``, weights loaded ``weights_only``.

    ``widen_factor`` and ``hidden`` default to the manifest's ``network`` entry (else 1.0 and
    256), so a caller needs no copy of the bundle's config to open an ensemble folder.
    """
    files, document = ensemble_manifest(models_dir)
    network = document.get("network", {})
    widen_factor = float(network.get("widen_factor", 1.0)) if widen_factor is None else widen_factor
    hidden = int(network.get("hidden", 256)) if hidden is None else hidden
    info = document["members"]
    members = []
    for entry, path in zip(info, files, strict=True):
        member = RatingMember(entry["splits"], widen_factor=widen_factor, hidden=hidden)
        try:
            member.load_state_dict(load_weights(path))
        except RuntimeError as exc:
            raise ValueError(
                f"{path} does not fit the configured network "
                f"(widen_factor {widen_factor}, hidden {hidden}): {exc}"
            ) from exc
        members.append(member.float().eval())
    return RatingEnsemble(members, info, input_size)


def ensemble_hash(models_dir: str | Path) -> str:
    """The weights hash (:func:`annotation_tools.bundles.weights_hash`) of an ensemble folder:
    the provenance of its predictions."""
    return weights_hash(ensemble_manifest(models_dir)[0])


# ------------------------------------------------------------------------------ engine glue


class RatingCollector:
    """Collects the ensemble's logits per case while MONAI's evaluator runs."""

    def __init__(self, n_cases: int):
        self.logits: dict[int, np.ndarray] = {}
        self.n_cases = n_cases

    def add(self, logits: torch.Tensor, index: int) -> None:
        self.logits[int(index)] = logits.detach().float().cpu().numpy()

    def stacked(self) -> np.ndarray:
        missing = set(range(self.n_cases)) - set(self.logits)
        if missing:
            raise RuntimeError(f"{len(missing)} case(s) were not run through the ensemble")
        return np.stack([self.logits[i] for i in range(self.n_cases)])


class CollectRatingsd(MapTransform):
    """Post-processing step of ``inference.json``: hand each case's logits to the collector."""

    def __init__(self, collector: RatingCollector, keys: str = "pred"):
        super().__init__(keys)
        self.collector = collector

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.collector.add(
            torch.as_tensor(d["pred"]), int(torch.as_tensor(d["index"]).reshape(-1)[0])
        )
        return d


# ------------------------------------------------------------------------------ explanations


class _ExpectedGrade(nn.Module):
    """Sum of a member's split probabilities for one grade = its expected grade (B, 1).

    Vascularity runs G alone (the grey-scale channel gets no attribution, and F's cost is
    saved); SH runs the fusion path through F, G and H.
    """

    def __init__(self, member: RatingMember, grade: str):
        super().__init__()
        self.member, self.grade = member, grade

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.member
        if self.grade == "vascularity":
            logits = m.vascularity_head(m.doppler(x[:, 1:4]))
        else:
            logits = m.fusion_head(torch.cat([m.grey(x[:, :1]), m.doppler(x[:, 1:4])], 1))
        return torch.sigmoid(logits).sum(1, keepdim=True)


# The explanation settings chosen on validation phantoms (seed 2100; the bundle's
# docs/README.md has the measurement): baseline, quadrature (64 Gauss-Legendre steps: at most
# 4.3 % relative L2 from a 300-step reference for one member's maps; 8 steps: 22-27 %) and
# noise.
EXPLAIN_DEFAULTS: dict[str, Any] = {
    "baseline": DEFAULT_BASELINE,
    "blur_sigma": 20.0,
    "steps": 64,
    "method": "gausslegendre",
    "noisy_copies": 1,
    "noise_sd": 0.0,
}
# map name in the record -> (explained grade, input channels)
HEATMAPS = {
    "synovial_hypertrophy": ("synovial_hypertrophy", GREYSCALE_CHANNELS),
    "synovial_hypertrophy_doppler": ("synovial_hypertrophy", DOPPLER_CHANNELS),
    "vascularity": ("vascularity", DOPPLER_CHANNELS),
}


def explain_case(
    ensemble: RatingEnsemble,
    x: torch.Tensor,
    *,
    floor: float = 0.2,
    max_members: int | None = None,
    **settings: Any,
) -> dict[str, np.ndarray]:
    """Integrated-gradients heatmaps (S, S) of one pair, averaged over the members (each
    member's map scaled to its maximum first, so every network counts the same), floored again.

    Two inputs, two maps, as RATING attributes its grey-scale and Doppler inputs separately:
    ``synovial_hypertrophy`` is the SH (fusion) attribution to the grey-scale input,
    ``synovial_hypertrophy_doppler`` its attribution to the Doppler input, ``vascularity`` G's
    attribution to the Doppler input (G sees nothing else). ``settings`` override
    :data:`EXPLAIN_DEFAULTS` (``baseline``, ``steps``, ``noisy_copies``, ``noise_sd``, ...).
    """
    options = {**EXPLAIN_DEFAULTS, **settings}
    unknown = set(options) - set(EXPLAIN_DEFAULTS) - {"seed", "batch_size"}
    if unknown:
        raise TypeError(f"unknown explanation setting(s): {', '.join(sorted(unknown))}")
    members = list(ensemble.members)[: max_members or None]
    if isinstance(options["baseline"], str):  # one baseline for every member and grade
        options["baseline"] = ig_baseline(x, options["baseline"], sigma=options["blur_sigma"])
    per_map: dict[str, list[np.ndarray]] = {name: [] for name in HEATMAPS}
    for m in members:
        for grade in ("synovial_hypertrophy", "vascularity"):
            attribution = integrated_gradients(_ExpectedGrade(m, grade), x, target=0, **options)
            for name, (g, channels) in HEATMAPS.items():
                if g == grade:
                    heat = attribution_map(attribution, channels)
                    per_map[name].append(normalise_heatmap(heat, 0.0))
    return {name: normalise_heatmap(np.mean(maps, axis=0), floor) for name, maps in per_map.items()}


# ------------------------------------------------------------------------------ outputs


@dataclass
class RatingWriter:
    """Writes what inference produced: per-pair JSON, heatmaps (NumPy + PNG overlays), one CSV
    of grades, ``summary.json`` (with the pairs that failed and why), and optionally the grades
    into the store as a ``model`` revision (annotations are never touched)."""

    output_dir: str | Path
    models_dir: str | Path
    explain: bool = True
    explain_steps: int | None = None  # None: EXPLAIN_DEFAULTS
    explain_copies: int | None = None
    explain_members: int | None = None
    explain_baseline: str | None = None
    explain_noise_sd: float | None = None
    store: str | Path | None = None
    model_info: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True
    coverage: float = 0.9  # of the grade sets, when the ensemble is calibrated (us_conformal)

    def write(
        self, case_set: UsCaseSet, ensemble: RatingEnsemble, collector: RatingCollector
    ) -> dict[str, Any]:
        out = Path(self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        decisions = ensemble.decide(collector.stacked()) if case_set.cases else []
        check_coverage(self.coverage)
        calibration = us_calibration_for(self.models_dir, ensemble_hash(self.models_dir))
        sets = []
        if calibration is not None:  # other weights: no sets rather than wrong ones
            sets = calibration.grade_sets(decisions, self.coverage)
            for decision, grade_sets in zip(decisions, sets, strict=True):
                decision["grade_sets"] = {
                    k: {"low": s.low, "high": s.high, "expected_grade": round(s.prediction, 4)}
                    for k, s in grade_sets.items()
                }
                decision["set_coverage"] = self.coverage
        rows = []
        ig_seconds = []
        from tqdm.auto import tqdm

        pairs = tqdm(
            list(zip(case_set.cases, decisions, strict=True)),
            desc="ultrasound: writing" + (" + integrated gradients" if self.explain else ""),
            disable=not self.progress or not self.explain,
        )
        for case, decision in pairs:
            record = {
                "case": case.case_id,
                "patient_id": case.patient_id,
                "site": case.site,
                "greyscale": case.greyscale,
                "doppler": case.doppler,
                "roi": case.roi,
                "roi_source": case.roi_source,
                "doppler_roi": case.doppler_roi,
                **decision,
            }
            if case.truth is not None:
                record["truth"] = case.truth
            if self.explain:
                t0 = time.perf_counter()
                record["heatmaps"] = self._explain(out, case, ensemble)
                ig_seconds.append(time.perf_counter() - t0)
            (out / f"{case.case_id}.json").write_text(json.dumps(record, indent=1))
            rows.append(record)
        self._write_csv(out / "ultrasound_grades.csv", rows, with_sets=calibration is not None)
        if self.store is not None:
            self._write_store(case_set, rows)
        summary = {
            "n_pairs": len(case_set.cases) + len(case_set.failed),
            "n_graded": len(rows),
            "failed": case_set.failed,
            "model": dict(self.model_info),
            "seconds_writing": round(time.perf_counter() - started, 2),
            "seconds_per_heatmap_pair": round(float(np.mean(ig_seconds)), 2)
            if ig_seconds
            else None,
            "grade_sets": self._describe_sets(calibration, sets),
            "note": "Weights trained on phantoms: these grades say nothing about patients.",
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        return {"summary": summary, "results": rows}

    def _explain(self, out: Path, case: UsCase, ensemble: RatingEnsemble) -> dict[str, str]:
        x = torch.as_tensor(case.image, dtype=torch.float32)[None] / 255.0
        given = {
            "steps": self.explain_steps,
            "noisy_copies": self.explain_copies,
            "baseline": self.explain_baseline,
            "noise_sd": self.explain_noise_sd,
        }
        settings = {k: v for k, v in given.items() if v is not None}
        heat = explain_case(ensemble, x, max_members=self.explain_members, **settings)
        files = {}
        for name, h in heat.items():  # each map over the image of the input it explains
            np.save(out / f"{case.case_id}_ig_{name}.npy", h)
            grey = HEATMAPS[name][1] == GREYSCALE_CHANNELS
            base = case.image[0] if grey else case.image[1:4].mean(0)
            _save_png(out / f"{case.case_id}_ig_{name}.png", heatmap_overlay(base, h))
            files[name] = f"{case.case_id}_ig_{name}.npy"
        return files

    def _describe_sets(
        self, calibration: UsGradeCalibration | None, sets: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """What summary.json says about the grade sets (as the scorer's ``grade_sets``)."""
        if calibration is None:
            return {
                "coverage": self.coverage,
                "calibrated": False,
                "note": "no conformal calibration for these ensemble weights: no set columns "
                "(ra-joints calibrate --task ultrasound makes one)",
            }
        return {
            "coverage": self.coverage,
            "calibrated": True,
            "calibration": calibration.source,
            "mean_width": {
                k: float(np.mean([s[k].width for s in sets])) if sets else None for k in GRADE_KEYS
            },
            "note": "marginal coverage over pairs like the calibration cohort's (phantoms), "
            "not a per-pair or clinical guarantee",
        }

    @staticmethod
    def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], with_sets: bool = False) -> None:
        """One row per graded pair; the set columns (``<grade>_set_low``, ``_set_high``,
        ``set_coverage``) come after the old ones, and only for a calibrated ensemble, so
        readers of the old layout keep working."""
        columns = [
            "patient_id",
            "site",
            "greyscale",
            "doppler",
            *GRADE_KEYS,
            "uncertainty",
            "roi_source",
        ]
        if with_sets:
            columns += set_columns()
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                line = {**row, "uncertainty": round(row["uncertainty"], 4)}
                for k, grade_set in row.get("grade_sets", {}).items():
                    line[f"{k}_set_low"], line[f"{k}_set_high"] = (
                        grade_set["low"],
                        grade_set["high"],
                    )
                writer.writerow(line)

    def _write_store(self, case_set: UsCaseSet, rows: Sequence[Mapping[str, Any]]) -> None:
        prov = Provenance.model(
            str(self.model_info.get("bundle", "ra_us_rating")),
            str(self.model_info.get("version", "")),
            ensemble_hash(self.models_dir),
        )
        with AnnotationStore.open(self.store, create=False) as st:
            for case, row in zip(case_set.cases, rows, strict=True):
                if case.pair_id is None:
                    continue
                if case.roi_source == "proposed":
                    record_proposed_roi(st, case.pair_id, case.roi)
                sets = row.get("grade_sets")  # only when the ensemble has a calibration
                st.set_us_score(
                    case.pair_id,
                    row["synovial_hypertrophy"],
                    row["vascularity"],
                    prov,
                    uncertainty=float(row["uncertainty"]),
                    grade_sets={k: (s["low"], s["high"]) for k, s in sets.items()}
                    if sets
                    else None,
                    coverage=row.get("set_coverage") if sets else None,
                )


def record_proposed_roi(store: AnnotationStore, pair_id: int, box: Sequence[float]) -> int:
    """The proposed ROI as a ``model`` revision on both images of a pair (written only when it
    differs from the newest proposal). Under the store's resolution rule a model revision never
    hides a person's box: it waits beside it."""
    from . import __version__
    from .us_roi import CALIBRATION_FILE

    pair = next((p for p in store.us_pairs() if int(p["id"]) == int(pair_id)), None)
    if pair is None:
        raise ValueError(f"no ultrasound pair {pair_id} in {store.path}")
    prov = Provenance.model("roi_proposal", __version__, weights_hash([CALIBRATION_FILE]))
    written = 0
    for image_id in (pair["greyscale_image_id"], pair["doppler_image_id"]):
        old = store.roi(image_id, sources=("model",))
        new = dict(zip(("x0", "y0", "x1", "y1"), (float(v) for v in box), strict=True))
        if old is not None and all(abs(old.value[k] - v) < 0.5 for k, v in new.items()):
            continue
        store.set_roi(image_id, tuple(new.values()), prov)
        written += 1
    return written


def _save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)


# ------------------------------------------------------------------------------ evaluation


def rating_figures(
    rows: Sequence[Mapping[str, Any]], *, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The RATING evaluation of graded cases that carry ``truth``.

    Per grade: accuracy and linearly weighted kappa with bootstrap CIs, per-grade sensitivity
    and specificity; per binary split: AUC and Youden index of the mean split probability;
    ablations (MULTITUDE vs majority vote vs one model, fusion vs grey-scale-only SH) on the
    same cases, with how often each gives an invalid pair.
    """
    from . import metrics
    from .evaluation import PHANTOM_NOTE, with_ci

    rows = [r for r in rows if r.get("truth")]
    if not rows:
        raise ValueError("no graded case has true grades to compare with")
    truth = {k: np.array([r["truth"][k] for r in rows]) for k in GRADE_KEYS}
    # the pairs of one patient are not independent: CIs resample patients when known
    ids = [r.get("patient_id") for r in rows]
    groups = ids if all(ids) else None

    def grade_block(pred: Mapping[str, np.ndarray]) -> dict[str, Any]:
        block = {}
        for key in GRADE_KEYS:
            t, p = truth[key], pred[key]
            block[key] = {
                "accuracy": with_ci(metrics.accuracy, t, p, n_resamples, seed, groups),
                "linear_weighted_kappa": with_ci(
                    metrics.linear_weighted_kappa, t, p, n_resamples, seed, groups
                ),
            }
        return block

    main = {k: np.array([r[k] for r in rows]) for k in GRADE_KEYS}
    figures: dict[str, Any] = {
        "n_pairs": len(rows),
        "n_patients": len(set(ids)) if groups else None,
        "ci_method": f"95 % percentile bootstrap over {len(set(ids))} patients"
        if groups
        else "95 % percentile bootstrap over pairs (no patient ids)",
        "note": PHANTOM_NOTE,
        **grade_block(main),
    }
    for key in GRADE_KEYS:
        per_grade = {}
        for g in range(GRADES):
            sens, spec = metrics.any_damage_sensitivity_specificity(
                (truth[key] == g).astype(int), (main[key] == g).astype(int)
            )
            per_grade[str(g)] = {
                "n": int((truth[key] == g).sum()),
                "sensitivity": sens,
                "specificity": spec,
            }
        figures[key]["per_grade"] = per_grade
    for key in ("synovial_hypertrophy", "vascularity"):
        probs = np.array([r["split_probabilities"][key] for r in rows])
        splits = {}
        for j, k in enumerate(SPLITS):
            positive = (truth[key] >= k).astype(int)
            index, threshold = metrics.youden(positive, probs[:, j])
            splits[f">={k}"] = {
                "auc": metrics.auc(positive, probs[:, j]),
                "youden_index": index,
                "youden_threshold": threshold,
            }
        figures[key]["splits"] = splits
    ablations = {}
    for name in ("majority_vote", "single_model", "greyscale_only_sh"):
        pred = {k: np.array([r["ablations"][name][k] for r in rows]) for k in GRADE_KEYS}
        block = grade_block(pred)
        block["invalid_pairs"] = int(sum(not r["ablations"][name]["valid"] for r in rows))
        ablations[name] = block
    ablations["multitude_invalid_pairs"] = int(
        sum(not is_valid_pair(r["synovial_hypertrophy"], r["vascularity"]) for r in rows)
    )
    figures["ablations"] = ablations
    return figures


def evaluate_rating(
    written: Mapping[str, Any], output_dir: str | Path, *, n_resamples: int = 1000
) -> dict[str, Any]:
    """``evaluate.json``'s last step: figures of what the writer produced -> ``metrics.json``."""
    figures = rating_figures(written["results"], n_resamples=n_resamples)
    figures["failed"] = written["summary"]["failed"]
    path = Path(output_dir) / "metrics.json"
    path.write_text(json.dumps(figures, indent=1))
    return figures


def run_bundle_inference(
    bundle_root: str | Path, output_dir: str | Path, *, verbose: bool = False, **overrides: Any
) -> dict[str, Any]:
    """The bundle's own ``inference.json`` through MONAI's bundle API (``monai.bundle.run``),
    as ``python -m monai.bundle run`` would; returns the written ``summary.json``.

    ``overrides``: any config key (``store``, ``patient_id``, ``write_store``,
    ``pairs_table``, ``dataset_dir``, ``explain``, ``explain_members``, ...). The napari
    plugin and ``ra-joints predict --ultrasound`` both come through here. MONAI's INFO log
    (every config value, every engine event) is shown only with ``verbose``.
    """
    import logging

    from monai.bundle import run

    root = Path(bundle_root)
    # MONAI's bundle loggers carry their own INFO handlers; the rest follows the logging file
    bundle_loggers = [logging.getLogger(f"monai.bundle.{m}") for m in ("scripts", "workflows")]
    levels = [log.level for log in bundle_loggers]
    if not verbose:
        for log in bundle_loggers:
            log.setLevel(logging.WARNING)
    try:
        _run_quietly(run, root, output_dir, verbose, overrides)
    finally:
        for log, level in zip(bundle_loggers, levels, strict=True):
            log.setLevel(level)
    return json.loads((Path(output_dir) / "summary.json").read_text())


def _run_quietly(
    run: Any, root: Path, output_dir: str | Path, verbose: bool, overrides: Mapping[str, Any]
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        logging_file = root / "configs" / "logging.conf"
        if not verbose:  # the bundle's own logging config, at WARNING
            quiet = Path(tmp) / "logging.conf"
            quiet.write_text(logging_file.read_text().replace("level=INFO", "level=WARNING"))
            logging_file = quiet
        run(
            config_file=str(root / "configs" / "inference.json"),
            meta_file=str(root / "configs" / "metadata.json"),
            logging_file=str(logging_file),
            bundle_root=str(root),
            output_dir=str(output_dir),
            **overrides,
        )
