"""The demo's report: one self-contained HTML page (plus the PNGs and CSVs it shows).

Built from what the pipeline wrote (``ra-joints predict`` on radiographs and ultrasound) and
the truth of a phantom project. Every figure in it is computed here from those files, with the
metrics module; the page says that phantom figures are not clinical figures.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .evaluation import PHANTOM_NOTE, present_centres, read_dream_table, score_figures
from .imageio import read_image
from .overlays import radiograph_overlay
from .paths import safe_name
from .store import TRAINING_SOURCES, AnnotationStore
from .vocabulary import (
    DREAM_TOTAL_COLUMNS,
    Limb,
    dream_columns,
    get_joint,
    parse_dream_column,
    patient_totals,
)

__all__ = ["build_report", "patient_total_rows"]

# the per-joint RA2-DREAM columns, in the challenge's order (the Overall_* columns are totals
# of these and are never summed again)
JOINT_COLUMNS = tuple(c for c in dream_columns() if c not in DREAM_TOTAL_COLUMNS)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return path


def _figure(path: Path | None, alt: str, caption: str, width: int | None = None) -> str:
    """A captioned figure; every figure here is made from phantoms, and its caption says so."""
    return (
        f"<figure>{_img(path, alt, width)}<figcaption>{html.escape(caption)} "
        f"<span class='phantom'>{html.escape(PHANTOM_NOTE)}</span></figcaption></figure>"
    )


def _img(path: Path | None, alt: str, width: int | None = None) -> str:
    """An <img> with the PNG embedded, so report.html works on its own (e-mail, archive)."""
    if path is None or not Path(path).exists():
        return f"<p><em>{html.escape(alt)}: not available</em></p>"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    size = f' width="{width}"' if width else ""
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"{size}>'


# ------------------------------------------------------------------------------ radiographs


def _truth_of(project: Path) -> dict[str, dict[str, Any]]:
    """Image path (absolute) -> patient, limb, true centres and polygons from the store."""
    out = {}
    with AnnotationStore.open(project, create=False) as store:
        for record in store.images(modality="radiograph"):
            centres = store.centres(record.id, sources=TRAINING_SOURCES)
            polygons = store.polygons(record.id, sources=TRAINING_SOURCES)
            out[str(store.resolve(record))] = {
                "patient_id": record.patient_id,
                "limb": record.limb,
                "centres": present_centres(centres),
                "polygons": {k: r.value["vertices"] for k, r in polygons.items()},
            }
    return out


def _score_rows(
    truth_table: Mapping[str, float], scored: Mapping[str, Any]
) -> list[dict[str, Any]]:
    from .vocabulary import dream_column

    rows = []
    for joint_id, joint in scored["joints"].items():
        for score_type in ("narrowing", "erosion"):
            if not get_joint(joint_id).carries(score_type):
                continue
            column = dream_column(joint_id, score_type)
            rows.append(
                {
                    "joint": get_joint(joint_id).name,
                    "score": score_type,
                    "predicted": joint.get(score_type),
                    "true": truth_table.get(column),
                    "uncertainty": joint.get(f"{score_type}_sd"),
                }
            )
    return rows


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _locator_errors(
    joints_dir: Path, truth: Mapping[str, Mapping[str, Any]]
) -> dict[str, list[float]]:
    """Joint name -> locator errors over the cohort (x / width, y / height: the RA2-DREAM
    winner's, :func:`metrics.normalised_errors`)."""
    errors: dict[str, list[float]] = {}
    for path in sorted(joints_dir.glob("*.json")):
        located = json.loads(path.read_text())
        true = truth.get(str(Path(located["image"]).resolve()))
        if true is None:
            continue
        found = [
            j
            for j, joint in located["joints"].items()
            if not joint.get("missing") and j in true["centres"]
        ]
        if not found:
            continue
        pred = [(located["joints"][j]["x"], located["joints"][j]["y"]) for j in found]
        truth_xy = [true["centres"][j] for j in found]
        for j, error in zip(
            found, metrics.normalised_errors(truth_xy, pred, located["image_size"]), strict=True
        ):
            errors.setdefault(get_joint(j).name, []).append(float(error))
    return errors


def _boxplot(errors: Mapping[str, Sequence[float]], out: Path) -> Path:
    plt = _plt()
    names = sorted(errors, key=lambda n: -np.median(errors[n]))
    fig, ax = plt.subplots(figsize=(8, 0.18 * len(names) + 1))
    ax.boxplot([errors[n] for n in names], orientation="horizontal", tick_labels=names)
    ax.axvline(0.02, color="red", lw=0.8, ls="--", label="0.02")
    ax.set_xlabel("locator error (x / image width, y / image height)")
    ax.tick_params(axis="y", labelsize=6)
    ax.legend(fontsize=7)
    return _save(fig, out)


def _sharp_totals(row: Mapping[str, float], columns: Sequence[str]) -> dict[str, float]:
    """Sharp/vdH totals of one table row over the given per-joint columns."""
    scores = {}
    for column in columns:
        joint, score_type = parse_dream_column(column)
        scores[(joint.id, score_type)] = row[column]
    return patient_totals(scores)


def patient_total_rows(
    truth: Mapping[str, Mapping[str, float]],
    pred: Mapping[str, Mapping[str, float]],
    us_records: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Per patient in both tables: true and predicted total Sharp/vdH, narrowing and erosion
    totals over the per-joint scores both tables give (a joint the locator missed is left out
    of both; the tables' ``Overall_*`` columns are not summed), and with ``us_records`` the
    sum of the EULAR-OMERACT combined grades of the patient's graded ultrasound pairs."""
    rows = []
    for patient in sorted(set(truth) & set(pred)):
        columns = [c for c in JOINT_COLUMNS if c in truth[patient] and c in pred[patient]]
        t, p = _sharp_totals(truth[patient], columns), _sharp_totals(pred[patient], columns)
        row: dict[str, Any] = {"patient_id": patient, "n_scores": len(columns)}
        for key, name in (
            ("Overall_Tol", "total"),
            ("Overall_narrowing", "narrowing"),
            ("Overall_erosion", "erosion"),
        ):
            row[f"true_{name}"], row[f"predicted_{name}"] = t[key], p[key]
        if us_records:
            graded = [r for r in us_records if r.get("patient_id") == patient and r.get("truth")]
            row["us_pairs"] = len(graded)
            row["true_us_combined"] = sum(r["truth"]["combined"] for r in graded)
            row["predicted_us_combined"] = sum(r["combined"] for r in graded)
        rows.append(row)
    return rows


def _scatter(rows: Sequence[Mapping[str, Any]], out: Path) -> tuple[Path, float, float]:
    plt = _plt()
    t = np.array([r["true_total"] for r in rows], float)
    q = np.array([r["predicted_total"] for r in rows], float)
    keep = np.isfinite(t) & np.isfinite(q)
    r = metrics.pearson_r(t[keep], q[keep]) if keep.sum() > 2 else float("nan")
    rmse = metrics.rmse(t[keep], q[keep]) if keep.any() else float("nan")
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(t[keep], q[keep], s=14)
    top = float(max(t[keep].max(initial=1), q[keep].max(initial=1))) * 1.05
    ax.plot([0, top], [0, top], color="grey", lw=0.8)
    ax.set_xlabel("true total Sharp/vdH score")
    ax.set_ylabel("predicted total")
    ax.set_title(f"{_r_text(r)}, RMSE = {rmse:.1f} ({int(keep.sum())} patients)", fontsize=9)
    return _save(fig, out), r, rmse


def _r_text(r: float) -> str:
    return "r not computed (fewer than 3 patients)" if r != r else f"r = {r:.3f}"


def _totals_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    heads = [
        ("patient_id", "patient", None),
        ("n_scores", "joint scores summed", None),
        ("true_total", "true total Sharp", 1),
        ("predicted_total", "predicted total Sharp", 1),
        ("true_narrowing", "true narrowing", 1),
        ("predicted_narrowing", "predicted narrowing", 1),
        ("true_erosion", "true erosion", 1),
        ("predicted_erosion", "predicted erosion", 1),
        ("us_pairs", "ultrasound pairs", None),
        ("true_us_combined", "true US combined", 0),
        ("predicted_us_combined", "predicted US combined", 0),
    ]
    heads = [h for h in heads if h[0] in rows[0]]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in heads)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(row[k])) if d is None else _fmt(row[k], d)}</td>"
            for k, _, d in heads
        )
        + "</tr>"
        for row in rows
    )
    return (
        "<table class='totals'><caption>Per-patient totals over the per-joint scores (phantom "
        f"truth and prediction). {html.escape(PHANTOM_NOTE)}</caption>"
        f"<tr>{head}</tr>{body}</table>"
    )


# ------------------------------------------------------------------------------ ultrasound


def _confusions(rows: Sequence[Mapping[str, Any]], out: Path) -> Path:
    from sklearn.metrics import confusion_matrix

    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for ax, key in zip(axes, ("synovial_hypertrophy", "vascularity", "combined"), strict=True):
        t = [r["truth"][key] for r in rows]
        p = [r[key] for r in rows]
        matrix = confusion_matrix(t, p, labels=[0, 1, 2, 3])
        ax.imshow(matrix, cmap="Blues")
        for i in range(4):
            for j in range(4):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(4))
        ax.set_yticks(range(4))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        acc = metrics.accuracy(t, p)
        ax.set_title(f"{key.replace('_', ' ')} (accuracy {acc:.0%})", fontsize=9)
    return _save(fig, out)


# the RATING writer's integrated-gradients heatmaps, one per input: SH's attribution to the
# grey-scale input (over the grey-scale image) and to the Doppler input, vascularity's (G
# alone) to the Doppler input
_HEATMAPS = (
    ("synovial_hypertrophy", "SH, grey-scale input"),
    ("synovial_hypertrophy_doppler", "SH, Doppler input"),
    ("vascularity", "vascularity"),
)


def _pair_png(record: Mapping[str, Any], us_dir: Path, table_dir: Path, out: Path) -> Path:
    from .ultrasound import crop_roi, doppler_mask

    plt = _plt()
    grey = read_image(table_dir / record["greyscale"]).pixels
    dop = read_image(table_dir / record["doppler"]).pixels[..., :3]
    roi = record["roi"]
    box = record.get("doppler_roi") or roi
    mask = crop_roi(doppler_mask(dop, box), box)
    panels = [("grey-scale + ROI", grey, "gray"), ("Doppler + ROI", dop, None)]
    fig, axes = plt.subplots(1, 2 + 1 + len(_HEATMAPS), figsize=(18, 2.8))
    for ax, (title, pixels, cmap) in zip(axes[:2], panels, strict=True):
        ax.imshow(pixels, cmap=cmap)
        x0, y0, x1, y1 = roi
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", lw=1))
        ax.set_title(title, fontsize=8)
    axes[2].imshow(mask, cmap="gray")
    axes[2].set_title("Doppler signal mask (ROI)", fontsize=8)
    for ax, (grade, name) in zip(axes[3:], _HEATMAPS, strict=True):
        heat = record.get("heatmaps", {}).get(grade)
        png = us_dir / heat.replace(".npy", ".png") if heat else None
        if png and png.exists():
            ax.imshow(plt.imread(png))
            ax.set_title(f"integrated gradients ({name})", fontsize=8)
        else:
            ax.set_title(f"no {name} heatmap (run without --no-explain)", fontsize=7)
    for ax in axes:
        ax.axis("off")
    truth = record.get("truth") or {}
    fig.suptitle(
        f"{record['case']}: predicted SH {record['synovial_hypertrophy']}, vascularity "
        f"{record['vascularity']}, combined {record['combined']}"
        + (
            f" - true {truth.get('synovial_hypertrophy')}/{truth.get('vascularity')}/"
            f"{truth.get('combined')}"
            if truth
            else ""
        ),
        fontsize=9,
    )
    return _save(fig, out)


# ------------------------------------------------------------------------------ the page


def build_report(
    out_dir: str | Path,
    *,
    project: str | Path,
    predicted: str | Path,
    screenshot: str | Path | None = None,
    max_patients: int | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (self-contained) and the figures and CSVs it shows.

    ``project``: the phantom project (truth); ``predicted``: the ``ra-joints predict --out``
    folder (``joints/``, ``scores/``, ``shap/``, ``scores_ra2dream.csv``, ``ultrasound/``).
    """
    out, project, predicted = Path(out_dir), Path(project), Path(predicted)
    figures = out / "figures"
    truth = _truth_of(project)
    truth_table = read_dream_table(project / "scores_ra2dream.csv")
    us_rows = _ultrasound_records(predicted / "ultrasound")
    totals: list[dict[str, Any]] = []
    cohort = [
        *_score_summary(truth_table, predicted / "scores_ra2dream.csv", us_rows, figures, totals),
        *_locator_summary(predicted / "joints", truth, figures),
        *_ultrasound_summary(us_rows, figures),
    ]
    if screenshot and Path(screenshot).exists():
        cohort.append(
            "<h3>In napari</h3>"
            + _figure(
                Path(screenshot),
                "napari screenshot",
                "The plugin in napari on a phantom radiograph.",
                900,
            )
        )
    sections, joint_rows = [], []
    scored_images = _scored_images(predicted)
    for patient in sorted(scored_images)[: max_patients or None]:
        html_part, rows = _patient_section(
            patient,
            scored_images[patient],
            truth,
            truth_table,
            us_rows,
            predicted,
            project,
            figures,
        )
        sections.append(html_part)
        joint_rows += [{"patient_id": patient, **row} for row in rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").write_text(_page(cohort, sections))
    _write_csv(out / "joint_scores.csv", joint_rows)
    _write_csv(out / "patient_totals.csv", totals)
    _write_csv(out / "ultrasound_grades.csv", [_grade_row(r) for r in us_rows])
    return out / "report.html"


def _score_summary(
    truth_table: Mapping[str, Any],
    pred_csv: Path,
    us_rows: Sequence[Mapping[str, Any]],
    figures: Path,
    totals: list[dict[str, Any]],
) -> list[str]:
    """The score figures; fills ``totals`` with the per-patient totals rows."""
    if not pred_csv.exists():
        return []
    pred_table = read_dream_table(pred_csv)
    per = score_figures(truth_table, pred_table, n_resamples=200)["per_score"]
    totals += patient_total_rows(truth_table, pred_table, us_rows)
    scatter, r, rmse = _scatter(totals, figures / "total_scores.png")
    return [
        "<h3>Radiographs: scores</h3>"
        f"<p>Per joint: narrowing RMSE {per['narrowing']['rmse']:.3f}, exact agreement "
        f"{per['narrowing']['exact_agreement']:.1%}; erosion RMSE {per['erosion']['rmse']:.3f}, "
        f"exact {per['erosion']['exact_agreement']:.1%}. Patient totals: {_r_text(r)}, "
        f"RMSE = {rmse:.1f}.</p>"
        + _figure(
            scatter,
            "predicted vs true totals",
            "Predicted against true total Sharp/vdH score per patient (sum of the per-joint "
            "scores both tables give; grey: identity).",
            420,
        )
        + _totals_table(totals)
    ]


def _locator_summary(joints_dir: Path, truth: Mapping[str, Any], figures: Path) -> list[str]:
    errors = _locator_errors(joints_dir, truth) if joints_dir.exists() else {}
    if not errors:
        return []
    allerr = np.concatenate([np.asarray(v) for v in errors.values()])
    box = _boxplot(errors, figures / "locator_errors.png")
    return [
        "<h3>Radiographs: joint locator</h3>"
        f"<p>{metrics.share_within(allerr, 0.02):.1%} of {allerr.size} joints within 0.02 "
        f"(x / image width, y / image height), median error {np.median(allerr):.4f}.</p>"
        + _figure(
            box,
            "locator error per joint",
            "Locator error per joint, x as a share of the image width and y of its height "
            "(red: 0.02).",
            760,
        )
    ]


def _ultrasound_records(us_dir: Path) -> list[dict[str, Any]]:
    if not (us_dir / "summary.json").exists():
        return []
    return [
        json.loads(p.read_text()) for p in sorted(us_dir.glob("*.json")) if p.name != "summary.json"
    ]


def _ultrasound_summary(rows: Sequence[Mapping[str, Any]], figures: Path) -> list[str]:
    graded = [r for r in rows if r.get("truth")]
    if not graded:
        return []
    truth = [r["truth"]["combined"] for r in graded]
    pred = [r["combined"] for r in graded]
    confusion = _confusions(graded, figures / "us_confusion.png")
    return [
        "<h3>Ultrasound (EULAR-OMERACT)</h3>"
        f"<p>{len(graded)} pairs: combined-grade accuracy {metrics.accuracy(truth, pred):.1%}, "
        f"linearly weighted kappa {metrics.linear_weighted_kappa(truth, pred):.3f}.</p>"
        + _figure(
            confusion,
            "confusion matrices",
            "Confusion matrices of the ultrasound grades (rows: true, columns: predicted).",
            900,
        )
    ]


def _scored_images(predicted: Path) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Patient -> (file stem, scores JSON with the locator's centres added), LH RH LF RF."""
    by_patient: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    scores_dir, joints_dir = predicted / "scores", predicted / "joints"
    for path in sorted(scores_dir.glob("*.json")) if scores_dir.exists() else []:
        scored = json.loads(path.read_text())
        located = joints_dir / path.name
        if located.exists():
            joints = json.loads(located.read_text())["joints"]
            scored["centres"] = {
                k: (j["x"], j["y"]) for k, j in joints.items() if not j.get("missing")
            }
        by_patient.setdefault(scored["patient_id"], []).append((path.stem, scored))
    order = ("LH", "RH", "LF", "RF")
    return {p: sorted(v, key=lambda x: order.index(x[1]["limb"])) for p, v in by_patient.items()}


def _patient_section(
    patient: str,
    images: Sequence[tuple[str, dict[str, Any]]],
    truth: Mapping[str, Any],
    truth_table: Mapping[str, Any],
    us_rows: Sequence[Mapping[str, Any]],
    predicted: Path,
    project: Path,
    figures: Path,
) -> tuple[str, list[dict[str, Any]]]:
    parts = [f"<h2 id='{html.escape(patient)}'>Patient {html.escape(patient)}</h2>"]
    pictures, rows = [], []
    for stem, scored in images:
        key = str(Path(scored["image"]).resolve())
        limb = Limb.parse(scored["limb"])
        if key in truth:
            png = radiograph_overlay(
                scored["image"],
                figures / f"{stem}.png",
                centres=scored.get("centres", {}),
                joints=scored["joints"],
                truth=truth[key],
                title=f"{patient} {scored['limb']}",
            )
            pictures.append(
                _figure(
                    png,
                    f"{patient} {limb.value}",
                    f"Patient {patient}, {limb.label} ({limb.value}): red circles and outlines "
                    "are the true joint centres and joint spaces, cyan dots and outlines the "
                    "predicted ones.",
                    260,
                )
            )
        rows += [
            {**row, "limb": scored["limb"]}
            for row in _score_rows(truth_table.get(patient, {}), scored)
        ]
    parts.append("<div class='thumbs'>" + "".join(pictures) + "</div>")
    parts.append(_score_table(rows))
    shap_png = predicted / "shap" / f"{safe_name(patient)}.png"
    if shap_png.exists():
        parts.append(
            "<h3>Symmetry stage: SHAP</h3>"
            + _figure(
                shap_png,
                "SHAP",
                f"Patient {patient}: SHAP values of the symmetry stage (how much each joint's "
                "patch score moved another joint's final score).",
                900,
            )
        )
    for record in (r for r in us_rows if r.get("patient_id") == patient):
        png = _pair_png(
            record,
            predicted / "ultrasound",
            project,
            figures / f"us_{safe_name(record['case'])}.png",
        )
        site = record.get("site") or "?"
        parts.append(
            _figure(
                png,
                f"ultrasound {record['case']}",
                f"Patient {patient}, ultrasound site {site} (pair {record['case']}): grey-scale "
                "and Doppler images with the ROI (yellow), the Doppler signal in the ROI, and the "
                "integrated-gradients heatmaps of the synovial hypertrophy and vascularity grades.",
                1000,
            )
        )
    return "\n".join(parts), rows


def _grade_row(record: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("synovial_hypertrophy", "vascularity", "combined")
    truth = record.get("truth") or {}
    return {
        "case": record["case"],
        "patient_id": record.get("patient_id"),
        **{k: record[k] for k in keys},
        **{f"true_{k}": truth.get(k) for k in keys},
    }


def _score_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(
        f"<th>{h}</th>" for h in ("limb", "joint", "score", "predicted", "true", "uncertainty")
    )
    head = f"<tr>{head}</tr>"
    body = []
    for row in rows:
        off = (
            row["predicted"] is not None
            and row["true"] is not None
            and abs(float(row["predicted"]) - float(row["true"])) >= 1
        )
        cls = " class='off'" if off else ""
        body.append(
            f"<tr{cls}><td>{row['limb']}</td><td>{html.escape(row['joint'])}</td>"
            f"<td>{row['score']}</td><td>{_fmt(row['predicted'])}</td>"
            f"<td>{_fmt(row['true'], 0)}</td><td>{_fmt(row['uncertainty'])}</td></tr>"
        )
    return (
        "<details><summary>Per-joint scores (rows off by one grade or more are marked)</summary>"
        f"<table>{head}{''.join(body)}</table></details>"
    )


def _page(cohort: Sequence[str], sections: Sequence[str]) -> str:
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}"
        ".note{background:#fff3cd;border:1px solid #e0c36c;padding:.6em}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
        "tr.off{background:#fde2e2}img{margin:2px;max-width:100%}"
        "figure{margin:.4em 0}figcaption{font-size:12px;color:#444;max-width:1000px}"
        ".phantom{color:#8a5a00;font-style:italic}.thumbs{display:flex;flex-wrap:wrap;gap:6px}"
        ".thumbs figure{width:260px;margin:0}caption{text-align:left;font-size:12px;color:#444}"
        "table.totals{margin:.6em 0}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>RA joints report</title>"
        f"<style>{style}</style></head><body>"
        "<h1>RA joints: phantom cohort report</h1>"
        f"<p class='note'><strong>{html.escape(PHANTOM_NOTE)}</strong> The images are synthetic "
        "phantoms and the models were trained on phantoms; nothing here is a clinical result.</p>"
        "<h2>Cohort</h2>" + "\n".join(cohort) + "\n".join(sections) + "</body></html>"
    )


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
