"""Sharp/van der Heijde joint vocabulary: the one list of scored joints everything else uses.

A *joint* here is a scoring site on one limb: it has a stable id (``"LH_mcp_2"``), belongs to a
limb (``LH``, ``RH``, ``LF``, ``RF``) and a region (finger, thumb, wrist, toe), and carries a
narrowing score (0-4), an erosion score (hand 0-5, foot 0-10), or both. The ids are also the
names shown to annotators, the keys of the annotation store and the output channels of the
locator, so they must never be renumbered; add new sites at the end of a limb's order.

The mapping to the RA2-DREAM challenge columns (``LH_mcp_E__ip``, ``RF_mtp_J__3``, ...) lives
here too, so score tables can be read and written in that format.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "DREAM_TOTAL_COLUMNS",
    "LIMBS",
    "DreamCsv",
    "Joint",
    "Limb",
    "ScoreType",
    "dream_column",
    "dream_columns",
    "get_joint",
    "joints_for_limb",
    "parse_dream_column",
    "patient_totals",
    "site_names",
]


class Limb(str, Enum):
    """The four radiographs of a Sharp/vdH examination."""

    LH = "LH"
    RH = "RH"
    LF = "LF"
    RF = "RF"

    @property
    def kind(self) -> str:
        """``"hand"`` or ``"foot"``: which joint set and which model the limb uses."""
        return "hand" if self.value[1] == "H" else "foot"

    @property
    def side(self) -> str:
        """``"left"`` or ``"right"``."""
        return "left" if self.value[0] == "L" else "right"

    @property
    def opposite(self) -> Limb:
        """The same limb on the other side (LH <-> RH, LF <-> RF)."""
        return Limb(("R" if self.value[0] == "L" else "L") + self.value[1])

    @property
    def label(self) -> str:
        return f"{self.side} {self.kind}"

    @classmethod
    def parse(cls, value: str | Limb) -> Limb:
        """Accept ``"LH"``, ``"lh"``, ``"left hand"``, ``"left_hand"``; else list the choices."""
        if isinstance(value, Limb):
            return value
        text = str(value).strip().lower().replace("_", " ").replace("-", " ")
        aliases = {
            "lh": cls.LH,
            "rh": cls.RH,
            "lf": cls.LF,
            "rf": cls.RF,
            "left hand": cls.LH,
            "right hand": cls.RH,
            "left foot": cls.LF,
            "right foot": cls.RF,
        }
        if text not in aliases:
            raise ValueError(
                f"unknown limb {value!r}; expected one of LH, RH, LF, RF "
                "(or 'left hand', 'right foot', ...)"
            )
        return aliases[text]


LIMBS: tuple[Limb, ...] = (Limb.LH, Limb.RH, Limb.LF, Limb.RF)


class ScoreType(str, Enum):
    NARROWING = "narrowing"
    EROSION = "erosion"

    @property
    def dream_letter(self) -> str:
        return "J" if self is ScoreType.NARROWING else "E"


@dataclass(frozen=True)
class _Site:
    """A scoring site independent of side: what a hand (or foot) model's channel stands for."""

    site: str  # e.g. "mcp_2", "wrist_radcar"
    name: str  # human name, e.g. "MCP 2"
    region: str  # finger | thumb | wrist | toe
    group: str  # RA2-DREAM group: mcp | pip | wrist | mtp
    dream_suffix: str  # RA2-DREAM column suffix after "__"
    narrowing: bool
    erosion: bool


# Hand sites in the guided annotation order: thumb to little finger, distal to proximal,
# then the wrist from the thumb side. RA2-DREAM files the thumb IP under "mcp" (LH_mcp_E__ip).
_HAND_SITES: tuple[_Site, ...] = (
    _Site("ip", "thumb IP", "thumb", "mcp", "ip", narrowing=False, erosion=True),
    _Site("mcp_1", "MCP 1", "thumb", "mcp", "1", narrowing=True, erosion=True),
    _Site("pip_2", "PIP 2", "finger", "pip", "2", narrowing=True, erosion=True),
    _Site("mcp_2", "MCP 2", "finger", "mcp", "2", narrowing=True, erosion=True),
    _Site("pip_3", "PIP 3", "finger", "pip", "3", narrowing=True, erosion=True),
    _Site("mcp_3", "MCP 3", "finger", "mcp", "3", narrowing=True, erosion=True),
    _Site("pip_4", "PIP 4", "finger", "pip", "4", narrowing=True, erosion=True),
    _Site("mcp_4", "MCP 4", "finger", "mcp", "4", narrowing=True, erosion=True),
    _Site("pip_5", "PIP 5", "finger", "pip", "5", narrowing=True, erosion=True),
    _Site("mcp_5", "MCP 5", "finger", "mcp", "5", narrowing=True, erosion=True),
    _Site("wrist_mc1", "base of metacarpal 1", "wrist", "wrist", "mc1", False, True),
    _Site("wrist_mul", "multangulum (trapezium)", "wrist", "wrist", "mul", False, True),
    _Site("wrist_mna", "multangular-navicular", "wrist", "wrist", "mna", True, False),
    _Site("wrist_cmc3", "CMC 3", "wrist", "wrist", "cmc3", True, False),
    _Site("wrist_cmc4", "CMC 4", "wrist", "wrist", "cmc4", True, False),
    _Site("wrist_cmc5", "CMC 5", "wrist", "wrist", "cmc5", True, False),
    _Site("wrist_capnlun", "capitate-navicular-lunate", "wrist", "wrist", "capnlun", True, False),
    _Site("wrist_nav", "navicular (scaphoid)", "wrist", "wrist", "nav", False, True),
    _Site("wrist_lunate", "lunate", "wrist", "wrist", "lunate", False, True),
    _Site("wrist_radcar", "radiocarpal", "wrist", "wrist", "radcar", True, False),
    _Site("wrist_radius", "distal radius", "wrist", "wrist", "radius", False, True),
    _Site("wrist_ulna", "distal ulna", "wrist", "wrist", "ulna", False, True),
)

_FOOT_SITES: tuple[_Site, ...] = (
    _Site("ip", "hallux IP", "toe", "mtp", "ip", narrowing=True, erosion=True),
    _Site("mtp_1", "MTP 1", "toe", "mtp", "1", narrowing=True, erosion=True),
    _Site("mtp_2", "MTP 2", "toe", "mtp", "2", narrowing=True, erosion=True),
    _Site("mtp_3", "MTP 3", "toe", "mtp", "3", narrowing=True, erosion=True),
    _Site("mtp_4", "MTP 4", "toe", "mtp", "4", narrowing=True, erosion=True),
    _Site("mtp_5", "MTP 5", "toe", "mtp", "5", narrowing=True, erosion=True),
)

_MAX_SCORE = {
    ("hand", ScoreType.NARROWING): 4,
    ("hand", ScoreType.EROSION): 5,
    ("foot", ScoreType.NARROWING): 4,
    ("foot", ScoreType.EROSION): 10,
}


@dataclass(frozen=True)
class Joint:
    """One scoring site on one limb.

    ``index`` is the position in the limb's guided order and the locator's output channel.
    """

    limb: Limb
    index: int
    site: str
    name: str
    region: str
    group: str
    dream_suffix: str
    narrowing: bool
    erosion: bool

    @property
    def id(self) -> str:
        """Stable id, unique across limbs: ``"LH_mcp_2"``."""
        return f"{self.limb.value}_{self.site}"

    @property
    def label(self) -> str:
        """What the annotator reads: ``"left hand MCP 2"``."""
        return f"{self.limb.label} {self.name}"

    @property
    def score_types(self) -> tuple[ScoreType, ...]:
        kinds = []
        if self.narrowing:
            kinds.append(ScoreType.NARROWING)
        if self.erosion:
            kinds.append(ScoreType.EROSION)
        return tuple(kinds)

    def carries(self, score_type: ScoreType | str) -> bool:
        return ScoreType(score_type) in self.score_types

    def max_score(self, score_type: ScoreType | str) -> int:
        """Largest grade of this score at this joint; raises if the joint does not carry it."""
        score_type = ScoreType(score_type)
        if not self.carries(score_type):
            raise ValueError(f"{self.id} is not scored for {score_type.value}")
        return _MAX_SCORE[(self.limb.kind, score_type)]

    def validate_score(self, score_type: ScoreType | str, value: float) -> None:
        """Raise ``ValueError`` naming the joint when ``value`` is outside the scale."""
        top = self.max_score(score_type)
        if not (0 <= float(value) <= top):
            raise ValueError(
                f"{ScoreType(score_type).value} score {value} for {self.id} is outside 0-{top}"
            )


@cache
def joints_for_limb(limb: Limb | str) -> tuple[Joint, ...]:
    """All scoring sites of a limb in guided annotation order."""
    limb = Limb.parse(limb)
    sites = _HAND_SITES if limb.kind == "hand" else _FOOT_SITES
    return tuple(
        Joint(
            limb,
            i,
            s.site,
            s.name,
            s.region,
            s.group,
            s.dream_suffix,
            s.narrowing,
            s.erosion,
        )
        for i, s in enumerate(sites)
    )


def site_names(kind: str) -> tuple[str, ...]:
    """Side-independent site ids of ``"hand"`` or ``"foot"``: one per locator channel."""
    if kind not in ("hand", "foot"):
        raise ValueError(f"kind must be 'hand' or 'foot', got {kind!r}")
    return tuple(s.site for s in (_HAND_SITES if kind == "hand" else _FOOT_SITES))


@cache
def _by_id() -> dict[str, Joint]:
    return {j.id: j for limb in LIMBS for j in joints_for_limb(limb)}


def all_joints() -> tuple[Joint, ...]:
    return tuple(_by_id().values())


def get_joint(joint_id: str) -> Joint:
    """Look a joint up by id, with a helpful error for typos and wrong limbs."""
    try:
        return _by_id()[joint_id]
    except KeyError:
        limb_part = joint_id.split("_", 1)[0]
        hint = ""
        if limb_part in Limb.__members__:
            choices = ", ".join(j.id for j in joints_for_limb(limb_part))
            hint = f"; joints of {limb_part} are: {choices}"
        raise KeyError(f"unknown joint id {joint_id!r}{hint}") from None


# ---------------------------------------------------------------- RA2-DREAM score tables

DREAM_TOTAL_COLUMNS = ("Patient_ID", "Overall_Tol", "Overall_erosion", "Overall_narrowing")


def dream_column(joint: Joint | str, score_type: ScoreType | str) -> str:
    """RA2-DREAM column of a joint's score, e.g. ``LH_mcp_E__ip`` or ``RF_mtp_J__3``."""
    joint = get_joint(joint) if isinstance(joint, str) else joint
    score_type = ScoreType(score_type)
    if not joint.carries(score_type):
        raise ValueError(f"{joint.id} is not scored for {score_type.value}")
    return f"{joint.limb.value}_{joint.group}_{score_type.dream_letter}__{joint.dream_suffix}"


@cache
def dream_columns() -> tuple[str, ...]:
    """All RA2-DREAM columns in the challenge's order: totals, then per limb erosion, narrowing."""
    columns = list(DREAM_TOTAL_COLUMNS)
    for limb in LIMBS:
        for score_type in (ScoreType.EROSION, ScoreType.NARROWING):
            columns += [dream_column(j, score_type) for j in _dream_order(limb, score_type)]
    return tuple(columns)


# The challenge's column order, as (group, suffix) per limb kind and score.
_DREAM_ORDER = {
    ("hand", ScoreType.EROSION): ["mcp:ip"]
    + [f"pip:{i}" for i in range(2, 6)]
    + [f"mcp:{i}" for i in range(1, 6)]
    + [f"wrist:{s}" for s in ("mc1", "mul", "nav", "lunate", "radius", "ulna")],
    ("hand", ScoreType.NARROWING): [f"pip:{i}" for i in range(2, 6)]
    + [f"mcp:{i}" for i in range(1, 6)]
    + [f"wrist:{s}" for s in ("cmc3", "cmc4", "cmc5", "mna", "capnlun", "radcar")],
    ("foot", ScoreType.EROSION): [f"mtp:{s}" for s in ("1", "2", "3", "4", "5", "ip")],
    ("foot", ScoreType.NARROWING): [f"mtp:{s}" for s in ("1", "2", "3", "4", "5", "ip")],
}


def _dream_order(limb: Limb, score_type: ScoreType) -> list[Joint]:
    by_key = {f"{j.group}:{j.dream_suffix}": j for j in joints_for_limb(limb)}
    return [by_key[key] for key in _DREAM_ORDER[(limb.kind, score_type)]]


@cache
def _column_index() -> dict[str, tuple[Joint, ScoreType]]:
    out = {}
    for joint in all_joints():
        for score_type in joint.score_types:
            out[dream_column(joint, score_type)] = (joint, score_type)
    return out


def parse_dream_column(column: str) -> tuple[Joint, ScoreType]:
    """Inverse of :func:`dream_column`; raises ``KeyError`` for an unknown column."""
    try:
        return _column_index()[column]
    except KeyError:
        raise KeyError(f"{column!r} is not an RA2-DREAM joint score column") from None


def patient_totals(
    scores: Mapping[tuple[str, ScoreType | str], float] | Iterable[tuple[str, str, float]],
) -> dict[str, float]:
    """Sharp/vdH totals of one patient from per-joint scores.

    ``scores`` maps ``(joint_id, score_type)`` to a grade (or is an iterable of
    ``(joint_id, score_type, grade)``). Missing joints count as missing, not as zero: the
    result holds ``n_missing`` so that a caller can decide whether a partial total is usable.
    """
    items = scores.items() if isinstance(scores, Mapping) else ((k[:2], k[2]) for k in scores)
    erosion = narrowing = 0.0
    seen: set[tuple[str, ScoreType]] = set()
    for (joint_id, score_type), value in items:
        joint = get_joint(joint_id)
        score_type = ScoreType(score_type)
        joint.validate_score(score_type, value)
        seen.add((joint.id, score_type))
        if score_type is ScoreType.EROSION:
            erosion += float(value)
        else:
            narrowing += float(value)
    expected = {(j.id, t) for j in all_joints() for t in j.score_types}
    return {
        "Overall_Tol": erosion + narrowing,
        "Overall_erosion": erosion,
        "Overall_narrowing": narrowing,
        "n_missing": len(expected - seen),
    }


def dream_row(patient_id: str, scores: Mapping[tuple[str, str], float | None]) -> dict[str, Any]:
    """One RA2-DREAM row: the given joint scores, and the totals only when none is missing."""
    row: dict[str, Any] = {"Patient_ID": patient_id}
    known = {}
    for (joint_id, score_type), value in scores.items():
        if value is None or value != value:  # None or NaN: no score
            continue
        row[dream_column(joint_id, score_type)] = value
        known[(joint_id, score_type)] = value
    totals = patient_totals(known)
    if totals["n_missing"] == 0:
        row.update({k: totals[k] for k in DREAM_TOTAL_COLUMNS[1:]})
    return row


def write_dream_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write RA2-DREAM rows (from :func:`dream_row`); absent scores and totals stay empty."""
    with DreamCsv(path) as table:
        for row in rows:
            table.write(row)
    return table.path


class DreamCsv:
    """An RA2-DREAM table written row by row (a prediction adds each patient as it finishes);
    the same bytes as :func:`write_dream_csv` of the same rows."""

    def __init__(self, path: str | Path):
        import csv

        self.path = Path(path)
        self._handle = open(self.path, "w", newline="")  # noqa: SIM115 - closed by close()
        self._writer = csv.DictWriter(self._handle, fieldnames=list(dream_columns()), restval="")
        self._writer.writeheader()

    def write(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow({k: _format_score(v) for k, v in row.items()})
        self._handle.flush()  # a patient's row is on disk once it is done

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> DreamCsv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _format_score(value: Any) -> Any:
    """Whole grades as integers; model scores (expected grades) with 4 decimals."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else round(value, 4)
    return value
