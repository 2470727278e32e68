"""The symmetry stage: per-joint ExtraTrees over the patch scores of all four limbs, with SHAP.

RA is a symmetric disease: a joint's score is better predicted from the patch scores of the
same joint on the other side (and of the patient's other joints) than from its own patch
alone. Following the RA2-DREAM winner (Li & Guan), one ``ExtraTreesRegressor`` (500 trees,
max depth 4) per joint and score type takes the patch predictions of every scored joint of
the patient (86 = 2 x 31 hand + 2 x 12 foot scores) and predicts the joint's score. SHAP's
``TreeExplainer`` says which joints moved each prediction.

Models are saved with skops and loaded only if every type in the file is on an allow-list of
scikit-learn and numpy types, so a bundle received from another site cannot run code when
opened (no pickle, no joblib).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .vocabulary import LIMBS, get_joint, joints_for_limb

__all__ = [
    "SCORE_INDEX",
    "SCORE_KEYS",
    "SymmetryModel",
    "SymmetryModelError",
    "patient_matrix",
    "patient_vector",
    "plot_shap",
]

ScoreKey = tuple[str, str]  # (joint id, score type)
SCORE_KEYS: tuple[ScoreKey, ...] = tuple(
    (joint.id, score_type.value)
    for limb in LIMBS
    for joint in joints_for_limb(limb)
    for score_type in joint.score_types
)
SCORE_INDEX = {key: i for i, key in enumerate(SCORE_KEYS)}

FORMAT = "ra_joints.symmetry/1"
_ARRAYS = ("left", "right", "feature", "threshold", "value", "weight", "nodes")
# Types a saved symmetry model may contain (skops reports the non-default ones); anything else
# in a file is refused before loading.
_TRUSTED_TYPES = ["numpy.ndarray", "numpy.dtype", "builtins.dict", "builtins.list", "builtins.str"]


class SymmetryModelError(ValueError):
    """A symmetry model file that is missing, unsafe or does not fit this vocabulary."""


def patient_vector(scores: Mapping[ScoreKey, float | None]) -> np.ndarray:
    """``{(joint_id, score_type): value}`` -> the 86-long feature vector (NaN = no score)."""
    x = np.full(len(SCORE_KEYS), np.nan)
    for key, value in scores.items():
        if key in SCORE_INDEX and value is not None and np.isfinite(value):
            x[SCORE_INDEX[key]] = float(value)
    return x


def patient_matrix(
    patients: Sequence[Mapping[ScoreKey, float | None]],
) -> np.ndarray:
    """Stack :func:`patient_vector` rows."""
    return np.stack([patient_vector(p) for p in patients]) if patients else np.empty((0, 86))


@dataclass
class _Forests:
    """Every tree of every fitted joint model as padded arrays (n_trees, max_nodes).

    Prediction walks all trees at once with numpy (86 x 500 scikit-learn ``predict`` calls take
    seconds per patient; this takes milliseconds), SHAP reads the same arrays through its
    dictionary tree format, and the arrays are what the skops file stores: plain ndarrays, no
    code, quick to save and load.
    """

    keys: list[ScoreKey]  # fitted joint scores, in SCORE_KEYS order
    n_estimators: int
    left: np.ndarray  # int32, -1 = leaf
    right: np.ndarray
    feature: np.ndarray  # int32
    threshold: np.ndarray  # float64
    value: np.ndarray  # float64, leaf mean of the target
    weight: np.ndarray  # float64, training samples through the node (for SHAP)
    nodes: np.ndarray  # int32, real node count of each tree (the rest is padding)

    @classmethod
    def from_sklearn(cls, models: Mapping[ScoreKey, Any]) -> _Forests:
        trees = [t.tree_ for m in models.values() for t in m.estimators_]
        n_estimators = len(next(iter(models.values())).estimators_) if models else 0
        width = max((t.node_count for t in trees), default=1)

        def stack(get: Any, fill: float, dtype: Any) -> np.ndarray:
            out = np.full((len(trees), width), fill, dtype=dtype)
            for i, t in enumerate(trees):
                out[i, : t.node_count] = get(t)
            return out

        return cls(
            keys=list(models),
            n_estimators=n_estimators,
            left=stack(lambda t: t.children_left, -1, np.int32),
            right=stack(lambda t: t.children_right, -1, np.int32),
            feature=stack(lambda t: t.feature, 0, np.int32),
            threshold=stack(lambda t: t.threshold, 0.0, np.float64),
            value=stack(lambda t: t.value[:, 0, 0], 0.0, np.float64),
            weight=stack(lambda t: t.weighted_n_node_samples, 0.0, np.float64),
            nodes=np.array([t.node_count for t in trees], np.int32),
        )

    def per_tree(self, x: np.ndarray) -> np.ndarray:
        """(patients, 86) -> (patients, models, n_estimators) tree outputs."""
        # scikit-learn compares float32 inputs with its thresholds; do the same
        x = np.asarray(x, np.float32).astype(np.float64)
        n_trees = self.left.shape[0]
        rows = np.arange(n_trees)[None, :]
        node = np.zeros((len(x), n_trees), np.int64)
        patients = np.arange(len(x))[:, None]
        for _ in range(self.left.shape[1]):
            left = self.left[rows, node]
            if (left < 0).all():
                break
            goes_left = x[patients, self.feature[rows, node]] <= self.threshold[rows, node]
            step = np.where(goes_left, left, self.right[rows, node])
            node = np.where(left < 0, node, step)
        out = self.value[rows, node]
        return out.reshape(len(x), len(self.keys), self.n_estimators)

    def shap_model(self, m: int) -> dict[str, Any]:
        """SHAP's dictionary tree format for fitted model ``m`` (leaf values / n_trees)."""
        trees = []
        for t in range(m * self.n_estimators, (m + 1) * self.n_estimators):
            n = int(self.nodes[t])
            trees.append(
                {
                    "children_left": self.left[t, :n],
                    "children_right": self.right[t, :n],
                    "children_default": self.left[t, :n],
                    "features": self.feature[t, :n],
                    "thresholds": self.threshold[t, :n],
                    "values": self.value[t, :n, None] / self.n_estimators,
                    "node_sample_weight": self.weight[t, :n],
                }
            )
        return {"trees": trees, "base_offset": 0.0, "tree_output": "raw_value"}

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in _ARRAYS}


class SymmetryModel:
    """One ExtraTrees regressor per scored joint over the patient's 86 patch scores."""

    def __init__(
        self,
        n_estimators: int = 500,
        max_depth: int = 4,
        seed: int = 0,
        *,
        target: str = "residual",
        max_features: float = 1.0,
    ):
        if target not in ("residual", "score"):
            raise ValueError(f"target must be 'residual' or 'score', got {target!r}")
        self.n_estimators = int(n_estimators)
        self.max_depth = int(max_depth)
        self.seed = int(seed)
        self.target = target
        self.max_features = float(max_features)
        self.forests: _Forests | None = None
        self.fill: np.ndarray = np.zeros(len(SCORE_KEYS))
        self.info: dict[str, Any] = {}

    @property
    def fitted_keys(self) -> list[ScoreKey]:
        return list(self.forests.keys) if self.forests else []

    # ----------------------------------------------------------------- fitting
    def fit(self, patch_scores: np.ndarray, true_scores: np.ndarray) -> SymmetryModel:
        """``patch_scores`` and ``true_scores``: (patients, 86), NaN where there is none.

        Train on patients the patch model never saw, so the trees learn how much to trust
        patch scores that carry the patch model's real errors. ``target="residual"`` (default)
        fits each tree to the correction ``true - own patch score`` and adds it back: depth-4
        trees predicting the score itself have 16 leaves, too coarse for a good patch model
        (measured: RMSE 0.59 vs 0.37 patch-only on held-out phantoms); ``"score"`` is the
        RA2-DREAM original.
        """
        from sklearn.ensemble import ExtraTreesRegressor

        x, y = np.asarray(patch_scores, float), np.asarray(true_scores, float)
        if x.shape != y.shape or x.ndim != 2 or x.shape[1] != len(SCORE_KEYS):
            raise ValueError(
                f"patch and true scores must both be (patients, {len(SCORE_KEYS)}); "
                f"got {x.shape} and {y.shape}"
            )
        if len(x) < 5:
            raise ValueError(f"the symmetry stage needs at least 5 patients, got {len(x)}")
        seen = np.isfinite(x)
        medians = np.nanmedian(np.where(seen, x, np.nan)[:, seen.any(0)], axis=0)
        self.fill = np.zeros(x.shape[1])
        self.fill[seen.any(0)] = medians
        filled = self._filled(x)
        models = {}
        for i, key in enumerate(SCORE_KEYS):
            known = np.isfinite(y[:, i]) & (np.isfinite(x[:, i]) | (self.target == "score"))
            if known.sum() < 5:
                continue
            model = ExtraTreesRegressor(
                n_estimators=self.n_estimators,
                max_depth=self.max_depth,
                max_features=self.max_features,
                random_state=self.seed + i,
                n_jobs=1,
            )
            goal = y[known, i] - (x[known, i] if self.target == "residual" else 0.0)
            models[key] = model.fit(filled[known], goal)
        self.forests = _Forests.from_sklearn(models)
        self.info = {"patients": len(x), "models": len(models)}
        return self

    def _filled(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, float))
        return np.where(np.isnan(x), self.fill[None, :], x)

    # ----------------------------------------------------------------- prediction
    def predict(self, patch_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(patients, 86) patch scores -> (symmetry scores, spread over the trees).

        A joint without a patch score (missing, not located) gets NaN: the symmetry stage
        refines scores, it does not invent them for joints nobody saw.
        """
        if self.forests is None:
            raise SymmetryModelError("the symmetry model is not fitted")
        x = np.atleast_2d(np.asarray(patch_scores, float))
        per_tree = self.forests.per_tree(self._filled(x))
        pred = np.full(x.shape, np.nan)
        spread = np.full(x.shape, np.nan)
        columns = [SCORE_INDEX[k] for k in self.forests.keys]
        pred[:, columns] = per_tree.mean(-1)
        spread[:, columns] = per_tree.std(-1)
        if self.target == "residual":
            pred += x
        for key in self.forests.keys:  # keep every score on its joint's scale
            top = get_joint(key[0]).max_score(key[1])
            pred[:, SCORE_INDEX[key]] = np.clip(pred[:, SCORE_INDEX[key]], 0, top)
        no_patch = np.isnan(x)
        pred[no_patch] = np.nan
        spread[no_patch] = np.nan
        return pred, spread

    def explain(self, patch_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SHAP values of one patient: (86 targets, 86 input scores) and the 86 base values.

        ``base + values.sum(1)`` is what the trees predict (with ``target="residual"`` the
        correction added to the patch score, before clipping to the scale); rows of joints
        without a model are NaN.
        """
        import shap

        if self.forests is None:
            raise SymmetryModelError("the symmetry model is not fitted")
        x = self._filled(patch_scores)[:1]
        out = np.full((len(SCORE_KEYS), len(SCORE_KEYS)), np.nan)
        base = np.full(len(SCORE_KEYS), np.nan)
        for m, key in enumerate(self.forests.keys):
            explainer = shap.TreeExplainer(self.forests.shap_model(m))
            values = explainer.shap_values(x, check_additivity=False)
            out[SCORE_INDEX[key]] = np.asarray(values).reshape(-1)
            base[SCORE_INDEX[key]] = float(np.asarray(explainer.expected_value).reshape(-1)[0])
        return out, base

    # ----------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        """Write a skops file holding only arrays, strings and numbers (no pickle)."""
        import zipfile

        import skops.io as sio

        if self.forests is None:
            raise SymmetryModelError("the symmetry model is not fitted")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": FORMAT,
            "keys": json.dumps(SCORE_KEYS),
            "fitted": json.dumps(self.forests.keys),
            "fill": self.fill,
            "params": json.dumps(
                {
                    "n_estimators": self.n_estimators,
                    "max_depth": self.max_depth,
                    "seed": self.seed,
                    "target": self.target,
                    "max_features": self.max_features,
                }
            ),
            "info": json.dumps(self.info),
            **self.forests.arrays(),
        }
        sio.dump(state, path, compression=zipfile.ZIP_DEFLATED)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SymmetryModel:
        """Load a skops file after checking every type in it against the allow-list."""
        import skops.io as sio

        path = Path(path)
        if not path.exists():
            raise SymmetryModelError(f"no symmetry model at {path}")
        refused = sorted(_types_in(path) - set(_TRUSTED_TYPES))
        if refused:
            raise SymmetryModelError(
                f"{path} contains types that are not on the allow-list: {', '.join(refused)}"
            )
        # Trust exactly the allow-list (not whatever the file names), so the check above and
        # the load cannot disagree.
        state = sio.load(path, trusted=list(_TRUSTED_TYPES))
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise SymmetryModelError(f"{path} is not a ra_joints symmetry model")
        try:
            if [tuple(k) for k in json.loads(state["keys"])] != list(SCORE_KEYS):
                raise SymmetryModelError(f"{path} was fitted for another joint vocabulary")
            model = cls(**json.loads(state["params"]))
            model.forests = _Forests(
                keys=[tuple(k) for k in json.loads(state["fitted"])],
                n_estimators=model.n_estimators,
                **{k: np.asarray(state[k]) for k in _ARRAYS},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SymmetryModelError(f"{path} is damaged or from another version: {exc}") from exc
        model.fill = np.asarray(state["fill"], float)
        model.info = json.loads(state["info"])
        return model


def _types_in(path: Path) -> set[str]:
    """Every type named in a skops file's schema (skops only reports the non-default ones)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise SymmetryModelError(f"{path} is not a skops file: {exc}") from exc
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "__class__" in node and "__module__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


def limb_of(key: ScoreKey) -> str:
    return get_joint(key[0]).limb.value


def score_label(key: ScoreKey) -> str:
    """``MCP 2 E`` / ``PIP 3 J``: a joint score as the SHAP axes name it (J = narrowing)."""
    joint_id, score_type = key
    return f"{get_joint(joint_id).name} {'J' if score_type == 'narrowing' else 'E'}"


def _opposite(limb: str) -> str:
    return {"LH": "RH", "RH": "LH", "LF": "RF", "RF": "LF"}[limb]


def _other_pair(limb: str) -> tuple[str, str]:
    return ("LF", "RF") if limb in ("LH", "RH") else ("LH", "RH")


def plot_shap_limb(
    values: np.ndarray, path: str | Path, limb: str, *, title: str, note: str = ""
) -> Path:
    """SHAP of one limb's predicted scores, the RA2-DREAM winner's way: rows are this limb's
    scores, named; the panels are the inputs of the same limb, of the other side (same
    joints, so a mirrored pattern shows symmetric disease), and of the other limb pair. Every
    axis names its joints, so a clinician can read "the left MCP 2 erosion leaned on the right
    MCP 2 erosion" without a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = np.nan_to_num(values)
    rows = [i for i, k in enumerate(SCORE_KEYS) if limb_of(k) == limb]
    panels = [
        (f"same limb ({limb})", [i for i, k in enumerate(SCORE_KEYS) if limb_of(k) == limb]),
        (
            f"other side ({_opposite(limb)})",
            [i for i, k in enumerate(SCORE_KEYS) if limb_of(k) == _opposite(limb)],
        ),
        (
            "other limb pair ({} + {})".format(*_other_pair(limb)),
            [i for i, k in enumerate(SCORE_KEYS) if limb_of(k) in _other_pair(limb)],
        ),
    ]
    block = v[np.ix_(rows, [i for _, cols in panels for i in cols])]
    span = float(np.abs(block).max()) or 1.0
    widths = [len(cols) for _, cols in panels]
    height = 2.0 + 0.16 * len(rows)
    fig, axes = plt.subplots(
        1, 3, figsize=(3.2 + 0.16 * sum(widths), height), gridspec_kw={"width_ratios": widths}
    )
    image = None
    for n, (ax, (name, cols)) in enumerate(zip(axes, panels, strict=True)):
        image = ax.imshow(
            v[np.ix_(rows, cols)], cmap="RdBu_r", vmin=-span, vmax=span, aspect="auto",
            interpolation="nearest",
        )  # fmt: skip
        ax.set_title(name, fontsize=9)
        names = [score_label(SCORE_KEYS[i]) for i in cols]
        if n == 2:  # two limbs in one panel: say which
            names = [f"{limb_of(SCORE_KEYS[i])} {t}" for i, t in zip(cols, names, strict=True)]
        ax.set_xticks(range(len(cols)), names, rotation=90, fontsize=6)
        ax.set_yticks(
            range(len(rows)), [score_label(SCORE_KEYS[i]) for i in rows] if n == 0 else []
        )
        ax.tick_params(axis="y", labelsize=6)
        ax.set_xlabel("input: patch score of", fontsize=8)
    axes[0].set_ylabel(f"predicted score of ({limb})", fontsize=8)
    fig.colorbar(image, ax=list(axes), fraction=0.02, label="SHAP value (grades)")
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_shap(values: np.ndarray, path: str | Path, *, title: str, note: str = "") -> Path:
    """SHAP heatmap PNG of one patient.

    Left: every target score (rows) against every input score (columns), limbs separated, so
    a clinician sees that e.g. the left MCP 2 prediction leaned on the right MCP 2. Right: the
    same summed as |SHAP| per target limb x input limb (how much each limb used the others).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limbs = [limb.value for limb in LIMBS]
    bounds = np.cumsum([sum(limb_of(k) == lb for k in SCORE_KEYS) for lb in limbs])
    v = np.nan_to_num(values)
    span = float(np.abs(v).max()) or 1.0
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 6.4), gridspec_kw={"width_ratios": [3, 1.1]})
    im = ax.imshow(v, cmap="RdBu_r", vmin=-span, vmax=span, interpolation="nearest")
    for b in bounds[:-1]:
        ax.axhline(b - 0.5, color="k", lw=0.8)
        ax.axvline(b - 0.5, color="k", lw=0.8)
    centres = np.concatenate([[0], bounds[:-1]]) + np.diff(np.concatenate([[0], bounds])) / 2
    ax.set_xticks(centres - 0.5, limbs)
    ax.set_yticks(centres - 0.5, limbs)
    ax.set_xlabel("input: patch score of ... (J and E of every joint)")
    ax.set_ylabel("predicted score of ...")
    fig.colorbar(im, ax=ax, fraction=0.04, label="SHAP value (grades)")
    block = np.zeros((4, 4))
    edges = np.concatenate([[0], bounds])
    for r in range(4):
        for c in range(4):
            block[r, c] = np.abs(v[edges[r] : edges[r + 1], edges[c] : edges[c + 1]]).sum()
    block /= block.sum(1, keepdims=True).clip(min=1e-9)
    ax2.imshow(block, cmap="Purples", vmin=0, vmax=1)
    for r in range(4):
        for c in range(4):
            ax2.text(c, r, f"{block[r, c]:.0%}", ha="center", va="center", fontsize=9)
    ax2.set_xticks(range(4), limbs)
    ax2.set_yticks(range(4), limbs)
    ax2.set_xlabel("input limb")
    ax2.set_ylabel("predicted limb")
    ax2.set_title("share of |SHAP| per limb", fontsize=10)
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
