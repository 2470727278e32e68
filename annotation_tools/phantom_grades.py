"""The grades of phantom patients, drawn before any image: shared by every phantom style and
by the simulated raters (which read grades, never images).

Scores come from a patient-level severity, a joint susceptibility, a joint-level term shared by
both sides and a small side-specific term, so left and right correlate as in real RA.
"""

from __future__ import annotations

import numpy as np

from .vocabulary import LIMBS, Joint, ScoreType, joints_for_limb

__all__ = ["patient_rng", "sample_patient_scores", "sample_us_grades"]


def patient_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 7919])


def sample_patient_scores(rng: np.random.Generator) -> dict[str, dict[str, int]]:
    """Per-joint grades of one patient: ``{joint_id: {"narrowing": g, "erosion": e}}``.

    Grade = thresholded latent damage ``severity * susceptibility + shared + side``, where the
    joint-level ``shared`` term is the same for left and right (strong symmetry) and ``side``
    is small. About a third of patients have (almost) no damage, as in early RA cohorts.
    """
    severity = rng.uniform(0.0, 0.12) if rng.random() < 0.3 else rng.beta(1.6, 2.2) * 1.25
    out: dict[str, dict[str, int]] = {}
    shared: dict[tuple[str, str], float] = {}
    for limb in LIMBS:
        for joint in joints_for_limb(limb):
            grades = {}
            for score_type in joint.score_types:
                key = (f"{limb.kind}:{joint.site}", score_type.value)
                if key not in shared:
                    shared[key] = rng.normal(0, 0.12)
                latent = (
                    severity * _susceptibility(joint, score_type)
                    + shared[key]
                    + rng.normal(0, 0.06)
                )
                top = joint.max_score(score_type)
                thresholds = np.linspace(0.28, 0.92, top)
                grades[score_type.value] = int(np.searchsorted(thresholds, latent))
            out[joint.id] = grades
    return out


def _susceptibility(joint: Joint, score_type: ScoreType) -> float:
    base = {"finger": 1.0, "thumb": 0.8, "wrist": 0.85, "toe": 0.95}[joint.region]
    if joint.site in ("mcp_2", "mcp_3", "mtp_5", "wrist_nav", "wrist_ulna"):
        base *= 1.15
    if score_type is ScoreType.EROSION and joint.region == "wrist":
        base *= 0.95
    return base


def sample_us_grades(rng: np.random.Generator, severity: float) -> tuple[int, int]:
    """(SH, vascularity) with vascularity 0 whenever SH is 0 (EULAR-OMERACT rule)."""
    sh = int(np.clip(np.round(severity * 3.4 + rng.normal(0, 0.55)), 0, 3))
    if sh == 0:
        return 0, 0
    vasc = int(np.clip(np.round(sh * rng.uniform(0.3, 1.1) + rng.normal(0, 0.6)), 0, 3))
    return sh, vasc
