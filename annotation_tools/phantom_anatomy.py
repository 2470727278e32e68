"""Anatomical radiograph phantoms: real bone meshes, posed, damaged in 3D and X-rayed.

Why: the schematic phantoms (capsules) are too easy; models that score them say little about
real films. Here the bones are the MyoSuite hand meshes (package ``myo-sim``, Apache-2.0,
derived from the MoBL upper-extremity model of Holzbaur et al. 2005):

* **Hand**: the MuJoCo model is posed within physiological ranges (wrist deviation and
  flexion, finger spread and slight flexion, thumb position, a little pronation); with disease
  the fingers drift ulnar at the MCPs and the wrist deviates radially. The canonical limb is
  the model's right hand; a left limb is the exact mirror image of the right one drawn with the
  same generator.
* **Foot** (the package has no separate metatarsals or toes): a forefoot built from the same
  meshes, scaled in their own frames - metatarsals from metacarpals, hallux phalanges from the
  thumb's, lesser-toe phalanges from shortened finger phalanges, cuneiforms, cuboid, navicular
  and the talar head from enlarged carpal bones - laid out on a foot plan.
* **Damage in 3D**: every joint space is first set to a patient-specific normal width by moving
  the distal bone (and everything distal to it) along the joint axis, measured by casting rays
  through the meshes; narrowing grade ``g`` sets it to ``(1, 0.72, 0.5, 0.28, -0.6)[g]`` of
  normal (grade 1 with a tilt so that one side narrows more: focal narrowing; grade 4 overlaps
  the bone ends: ankylosis; grade 3-4 MCPs/MTPs are sometimes subluxed sideways). Erosions
  are spherical cuts at the bare areas at the joint margins (on the bone surface found by
  rays), more and larger with the grade; periarticular osteopenia and soft-tissue swelling
  grow with the joint's damage.
* **X-ray physics**: per-bone path lengths by rasterising the meshes (signed depth sum over the
  triangles) for the outer surface and an inward-offset surface: cortical shell and trabecular
  interior with different attenuation and a trabecular texture; a soft-tissue thickness map
  from an envelope around the bones (thicker palm, thenar and forearm); Beer-Lambert, scatter
  (low-pass of the primary), detector blur, quantum noise, heel effect, exposure, log
  processing with unsharp masking, collimation, a lead marker, sometimes a ring or a ruler.

Ground truth (joint centres, axes, joint-space polygons, gap widths, bone radii, erosion bites)
is measured on the same posed meshes and projected, so it is exact for the pixels drawn.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .phantom_records import LimbPhantom
from .phantoms import collimate_and_mark
from .vocabulary import Joint, Limb, ScoreType, joints_for_limb

__all__ = ["render_limb_anatomical"]

# Joint-space width relative to normal, by narrowing grade (grade 4: the bone ends overlap).
_GAP_FACTOR = (1.0, 0.72, 0.5, 0.28, -0.6)
# Normal joint-space width (mm) of a healthy adult, by site family.
_NORMAL_GAP = {"mcp": 2.1, "pip": 1.6, "ip": 1.4, "mtp": 2.1, "wrist": 1.3, "cmc": 1.0}

# Attenuation (1/mm) at the effective energy of a ~50 kV hand exposure.
_MU_SOFT = 0.030
_MU_CORTEX = 0.30
_MU_TRABECULAR = 0.075

# Hand bones: our name -> MyoSuite mesh name.
_HAND_MESHES = {
    "radius": "radius_r",
    "ulna": "ulna_r",
    "scaphoid": "scaphoid_r",
    "lunate": "lunate_r",
    "triquetrum": "triquetrum_r",
    "pisiform": "pisiform_r",
    "trapezium": "trapezium_r",
    "trapezoid": "trapezoid_r",
    "capitate": "capitate_r",
    "hamate": "hamate_r",
    "mc1": "1mc_r",
    "thumb_p1": "thumbprox_r",
    "thumb_p2": "thumbdist_r",
    **{f"mc{k}": f"{k}mc_r" for k in range(2, 6)},
    **{f"p1_{k}": f"{k}proxph_r" for k in range(2, 6)},
    **{f"p2_{k}": f"{k}midph_r" for k in range(2, 6)},
    **{f"p3_{k}": f"{k}distph_r" for k in range(2, 6)},
}
# Cortical thickness (mm) of the offset surface, by bone family.
_CORTEX_MM = {"radius": 1.6, "ulna": 1.5, "mc": 1.3, "p": 0.9, "thumb": 1.0, "carpal": 0.55}

_HAND_CHILDREN = {
    "triquetrum": ["pisiform"],
    "capitate": ["mc3"],
    "hamate": ["mc4", "mc5"],
    "trapezoid": ["mc2"],
    "trapezium": ["mc1"],
    "mc1": ["thumb_p1"],
    "thumb_p1": ["thumb_p2"],
    **{f"mc{k}": [f"p1_{k}"] for k in range(2, 6)},
    **{f"p1_{k}": [f"p2_{k}"] for k in range(2, 6)},
    **{f"p2_{k}": [f"p3_{k}"] for k in range(2, 6)},
}
_CARPUS = ["scaphoid", "lunate", "triquetrum", "capitate", "hamate", "trapezoid", "trapezium"]


@dataclass(frozen=True)
class _Site:
    """A two-bone scoring site: proximal and distal bone groups and what moves to narrow it."""

    site: str
    proximal: tuple[str, ...]
    distal: tuple[str, ...]
    moves: tuple[str, ...]  # roots of the subtrees moved along the axis
    family: str


_HAND_SITES = (
    _Site("wrist_radcar", ("radius",), ("lunate", "scaphoid"), tuple(_CARPUS), "wrist"),
    _Site(
        "wrist_capnlun",
        ("lunate", "scaphoid"),
        ("capitate",),
        ("capitate", "hamate", "trapezoid", "trapezium"),
        "wrist",
    ),
    _Site(
        "wrist_mna", ("scaphoid",), ("trapezium", "trapezoid"), ("trapezium", "trapezoid"), "wrist"
    ),
    _Site("wrist_cmc3", ("capitate",), ("mc3",), ("mc3",), "cmc"),
    _Site("wrist_cmc4", ("hamate",), ("mc4",), ("mc4",), "cmc"),
    _Site("wrist_cmc5", ("hamate",), ("mc5",), ("mc5",), "cmc"),
    _Site("mcp_1", ("mc1",), ("thumb_p1",), ("thumb_p1",), "mcp"),
    _Site("ip", ("thumb_p1",), ("thumb_p2",), ("thumb_p2",), "ip"),
    *(_Site(f"mcp_{k}", (f"mc{k}",), (f"p1_{k}",), (f"p1_{k}",), "mcp") for k in range(2, 6)),
    *(_Site(f"pip_{k}", (f"p1_{k}",), (f"p2_{k}",), (f"p2_{k}",), "pip") for k in range(2, 6)),
)
# Erosion-only sites on one bone: (bone, where) with where "centre", "base" or "head".
_HAND_BONE_SITES = {
    "wrist_mc1": ("mc1", "base"),
    "wrist_mul": ("trapezium", "centre"),
    "wrist_nav": ("scaphoid", "centre"),
    "wrist_lunate": ("lunate", "centre"),
    "wrist_radius": ("radius", "head"),
    "wrist_ulna": ("ulna", "head"),
}
_FOOT_SITES = (
    _Site("mtp_1", ("mt1",), ("hallux_p1",), ("hallux_p1",), "mtp"),
    _Site("ip", ("hallux_p1",), ("hallux_p2",), ("hallux_p2",), "ip"),
    *(
        _Site(f"mtp_{k}", (f"mt{k}",), (f"toe_p1_{k}",), (f"toe_p1_{k}",), "mtp")
        for k in range(2, 6)
    ),
)
_FOOT_CHILDREN = {
    "mt1": ["hallux_p1"],
    "hallux_p1": ["hallux_p2"],
    **{f"mt{k}": [f"toe_p1_{k}"] for k in range(2, 6)},
    **{f"toe_p1_{k}": [f"toe_p2_{k}"] for k in range(2, 6)},
    **{f"toe_p2_{k}": [f"toe_p3_{k}"] for k in range(2, 6)},
}


# =============================================================================== meshes


@dataclass
class _Template:
    """One bone mesh in its own (MuJoCo inertia) frame, millimetres, with its cortex surface."""

    name: str
    verts: np.ndarray  # (n, 3) outer surface
    inner: np.ndarray  # (n, 3) inward offset by the cortical thickness
    faces: np.ndarray  # (m, 3)
    neutral_rot: np.ndarray  # (3, 3) local -> view at the neutral pose
    neutral_pos: np.ndarray  # (3,) view position (mm) at the neutral pose

    @functools.cached_property
    def mesh(self):  # trimesh.Trimesh for ray casting (built on first use, per process)
        import trimesh

        return trimesh.Trimesh(self.verts, self.faces, process=False)


def _cortex_mm(name: str) -> float:
    if name in ("radius", "ulna"):
        return _CORTEX_MM[name]
    if name.startswith("mc"):
        return _CORTEX_MM["mc"]
    if name.startswith("thumb"):
        return _CORTEX_MM["thumb"]
    if name.startswith("p"):
        return _CORTEX_MM["p"]
    return _CORTEX_MM["carpal"]


@functools.lru_cache(maxsize=1)
def _hand_model():
    """The compiled MyoSuite hand (loaded once per process: ~1 s) and the view frame."""
    import contextlib
    import io
    import warnings

    try:
        import mujoco
        import myo_sim
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the anatomical phantoms need the MyoSuite meshes: pip install myo-sim mujoco trimesh"
        ) from err
    # MuJoCo prints a harmless warning about an empty spec prefix from C: silence fd 2 briefly
    import os
    import sys

    sys.stderr.flush()
    log = os.path.abspath("MUJOCO_LOG.TXT")  # MuJoCo also appends the warning to this file
    had_log = os.path.exists(log)
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                model, data = myo_sim.load("myohand")[:2]
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if not had_log and os.path.exists(log):
            with contextlib.suppress(OSError):
                os.remove(log)
    mujoco.mj_forward(model, data)
    geoms = {}
    for g in range(model.ngeom):
        if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH:
            geoms[model.mesh(model.geom_dataid[g]).name] = g
    # View frame from the neutral hand: the palm normal is the least-variance direction of the
    # metacarpals and proximal phalanges; X points from the thumb to the little finger (a right
    # hand seen PA, fingers up), Y from the fingertips to the forearm (image rows).
    pts = []
    for name, mesh_name in _HAND_MESHES.items():
        if name.startswith(("mc", "p1_")):
            g = geoms[mesh_name]
            v = _mesh_arrays(model, model.geom_dataid[g])[0]
            pts.append(v @ data.geom_xmat[g].reshape(3, 3).T + data.geom_xpos[g])
    cloud = np.concatenate(pts)
    _, _, vt = np.linalg.svd(cloud - cloud.mean(0), full_matrices=False)
    long_ax, ru_ax = vt[0], vt[1]
    thumb = data.geom_xpos[geoms["1mc_r"]] - data.geom_xpos[geoms["5mc_r"]]
    tip = data.geom_xpos[geoms["3distph_r"]] - data.geom_xpos[geoms["capitate_r"]]
    long_ax = long_ax * np.sign(long_ax @ tip)
    ru_ax = ru_ax * np.sign(ru_ax @ thumb)
    x_ax, y_ax = -ru_ax, -long_ax
    view = np.stack([x_ax, y_ax, np.cross(x_ax, y_ax)])
    return model, data, geoms, view


def _mesh_arrays(model, m: int) -> tuple[np.ndarray, np.ndarray]:
    v0, nv = model.mesh_vertadr[m], model.mesh_vertnum[m]
    f0, nf = model.mesh_faceadr[m], model.mesh_facenum[m]
    return (
        np.asarray(model.mesh_vert[v0 : v0 + nv], np.float64),
        np.asarray(model.mesh_face[f0 : f0 + nf], np.int64),
    )


@functools.lru_cache(maxsize=1)
def _templates() -> dict[str, _Template]:
    """Every hand bone as a template (cached per process; the cohort uses worker processes)."""
    import trimesh

    model, data, geoms, view = _hand_model()
    out = {}
    for name, mesh_name in _HAND_MESHES.items():
        g = geoms[mesh_name]
        verts, faces = _mesh_arrays(model, model.geom_dataid[g])
        verts = verts * 1000.0
        tm = trimesh.Trimesh(verts, faces, process=False)
        normals = np.asarray(tm.vertex_normals)
        inner = verts - _cortex_mm(name) * normals
        if name in ("radius", "ulna"):
            # coarse meshes: vertex normals fold the offset surface, so move every vertex
            # radially towards the long (local z) axis instead - a star-shaped, fold-free shell
            c = verts.mean(0)
            radial = verts[:, :2] - c[:2]
            rho = np.linalg.norm(radial, axis=1, keepdims=True)
            keep = np.clip(1 - _cortex_mm(name) / np.maximum(rho, 1e-6), 0.3, 1.0)
            inner = verts.copy()
            inner[:, :2] = c[:2] + radial * keep
        rot = view @ data.geom_xmat[g].reshape(3, 3)
        out[name] = _Template(name, verts, inner, faces, rot, view @ data.geom_xpos[g] * 1000.0)
    return out


# =============================================================================== bones


@dataclass
class _Bone:
    """A template placed in the view frame (mm): ``x_view = M @ x_local + t``."""

    name: str
    template: _Template
    m: np.ndarray
    t: np.ndarray

    def points(self, inner: bool = False) -> np.ndarray:
        v = self.template.inner if inner else self.template.verts
        return v @ self.m.T + self.t

    @property
    def centroid(self) -> np.ndarray:
        return self.template.verts.mean(0) @ self.m.T + self.t

    def move(self, shift: np.ndarray) -> None:
        self.t = self.t + shift

    def rotate_about(self, rot: np.ndarray, pivot: np.ndarray) -> None:
        self.m = rot @ self.m
        self.t = rot @ (self.t - pivot) + pivot

    def hits(self, origins: np.ndarray, direction: np.ndarray) -> list[np.ndarray]:
        """Ray parameters (mm along ``direction``) of every surface crossing, per ray."""
        minv = np.linalg.inv(self.m)
        o = (origins - self.t) @ minv.T
        d = np.tile(direction @ minv.T, (len(origins), 1))
        locs, idx, _ = self.template.mesh.ray.intersects_location(o, d, multiple_hits=True)
        out = [np.empty(0) for _ in origins]
        if len(idx):
            world = locs @ self.m.T + self.t
            ts = np.einsum("ij,j->i", world - origins[idx], direction)
            for k in range(len(origins)):
                out[k] = np.sort(ts[idx == k])
        return out


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _subtree(roots: tuple[str, ...] | list[str], children: dict[str, list[str]]) -> set[str]:
    out, stack = set(), list(roots)
    while stack:
        b = stack.pop()
        if b not in out:
            out.add(b)
            stack += children.get(b, [])
    return out


def _pose_hand(rng: np.random.Generator, severity: float) -> dict[str, _Bone]:
    """Posed right hand, PA view, in the view frame (mm)."""
    import mujoco

    model, _data, geoms, view = _hand_model()
    q = np.zeros(model.nq)

    def setj(name: str, value: float) -> None:
        j = model.joint(name).id
        lo, hi = model.jnt_range[j]
        q[model.jnt_qposadr[j]] = float(np.clip(value, lo, hi))

    spread = rng.uniform(0.2, 1.0)
    ulnar = severity * rng.uniform(0.0, 0.22)  # RA: ulnar drift of the fingers at the MCPs
    setj("deviation_r", rng.normal(0.0, 0.06) - 0.5 * ulnar)  # zig-zag: the wrist goes radial
    setj("flexion_r", rng.normal(0.0, 0.06))
    # thumb abducted 35-50 degrees from the index ray and nearly flat on the detector
    setj("cmc_abduction_r", rng.uniform(-0.4, -0.15))
    setj("cmc_flexion_r", rng.uniform(0.2, 0.45))
    setj("mp_flexion_r", rng.uniform(-0.2, 0.15))
    setj("ip_flexion_r", rng.uniform(-0.25, 0.1))
    for k, a in zip((2, 3, 4, 5), (0.12, 0.02, -0.08, -0.16), strict=True):
        setj(f"mcp{k}_abduction_r", spread * a + rng.normal(0, 0.03) - ulnar)
        # a PA film is taken with the fingers flat: only slight flexion
        setj(f"mcp{k}_flexion_r", rng.uniform(0.0, 0.1))
        setj(f"pm{k}_flexion_r", rng.uniform(0.0, 0.05))
        setj(f"md{k}_flexion_r", rng.uniform(0.0, 0.08))
    d = mujoco.MjData(model)
    d.qpos[:] = q
    mujoco.mj_forward(model, d)
    templates = _templates()
    bones = {}
    scale = rng.normal(1.0, 0.06)  # patient size
    finger_len = rng.normal(1.0, 0.03)  # proportions
    width = rng.normal(1.0, 0.05)
    for name, mesh_name in _HAND_MESHES.items():
        g = geoms[mesh_name]
        rot = view @ d.geom_xmat[g].reshape(3, 3)
        pos = view @ d.geom_xpos[g] * 1000.0
        # bone width scales about its own long axis (local z is the long inertia axis)
        local = np.diag([width, width, 1.0])
        bones[name] = _Bone(name, templates[name], scale * rot @ local, scale * pos)
    if abs(finger_len - 1) > 1e-9:  # lengthen the phalanges along their own chains
        for k in range(2, 6):
            for part in ("p1", "p2", "p3"):
                b = bones[f"{part}_{k}"]
                b.m = b.m @ np.diag([1.0, 1.0, finger_len])
    return bones


# Foot plan of a right foot (view frame, mm): bone -> (template, scale along its long axis,
# scale across, angle from "up" (positive: towards the little toe), parent or start point).
_FOOT_PLAN = {
    "talus": ("lunate", 2.4, 2.4, 0.0),
    "navicular": ("scaphoid", 1.3, 1.5, 0.0),
    "cuneiform_medial": ("trapezoid", 2.2, 1.7, 0.0),
    "cuneiform_intermediate": ("trapezoid", 1.5, 1.25, 0.0),
    "cuneiform_lateral": ("trapezoid", 1.7, 1.3, 0.0),
    "cuboid": ("hamate", 1.5, 1.7, 0.0),
    "mt1": ("mc1", 1.4, 1.25, 0.0),
    "mt2": ("mc2", 1.15, 0.85, 0.0),
    "mt3": ("mc3", 1.12, 0.85, 0.0),
    "mt4": ("mc4", 1.18, 0.9, 0.0),
    "mt5": ("mc5", 1.25, 1.0, 0.0),
    "hallux_p1": ("thumb_p1", 1.0, 1.35, 2.0),
    "hallux_p2": ("thumb_p2", 1.0, 1.4, -3.0),
    **{f"toe_p1_{k}": (f"p1_{k}", 0.62, 0.85, 0.0) for k in range(2, 6)},
    **{f"toe_p2_{k}": (f"p2_{k}", 0.42, 0.85, 0.0) for k in range(2, 6)},
    **{f"toe_p3_{k}": (f"p3_{k}", 0.55, 0.9, 0.0) for k in range(2, 6)},
}
# Metatarsal bases (x, y in mm; y grows proximally) and ray angles of a right foot.
_MT_BASES = {1: (-22.0, 0.0), 2: (-7.0, 6.0), 3: (3.0, 3.0), 4: (13.0, 5.0), 5: (23.0, 9.0)}
_MT_ANGLES = {1: -8.0, 2: -1.0, 3: 4.0, 4: 9.0, 5: 15.0}


def _place(name: str, plan: tuple, direction: np.ndarray, start: np.ndarray, rng) -> _Bone:
    """A scaled template lying flat, long axis along ``direction``, proximal end at ``start``.

    The template's long inertia axis (local z) goes onto ``direction``; the local axis that is
    seen end-on in the neutral PA hand becomes the depth axis, so a foot bone shows the same
    face as its hand template does on a hand film.
    """
    _tname, s_ax, s_lat, _ = plan
    t = _templates()[_tname]
    depth_axis = int(np.argmax(np.abs(t.neutral_rot[2, :2])))
    other = 1 - depth_axis
    d = np.array([direction[0], direction[1], 0.0])
    d /= np.linalg.norm(d)
    z = np.array([0.0, 0.0, 1.0])
    e = np.cross(z, d)
    rot = np.zeros((3, 3))
    rot[:, 2] = d if t.neutral_rot[1, 2] < 0 else -d  # local z towards the distal end
    rot[:, depth_axis] = z
    rot[:, other] = e
    if np.linalg.det(rot) < 0:
        rot[:, other] = -e
    s = s_ax * rng.normal(1, 0.03)
    w = s_lat * rng.normal(1, 0.04)
    m = rot @ np.diag([w if i != 2 else s for i in range(3)])
    pts = (t.verts - t.verts.mean(0)) @ m.T
    proximal = float((pts @ d).min())
    t_vec = start - proximal * d - t.verts.mean(0) @ m.T
    t_vec[2] = -float((t.verts @ m.T)[:, 2].mean())
    return _Bone(name, t, m, t_vec)


def _pose_foot(rng: np.random.Generator) -> dict[str, _Bone]:
    """A right forefoot, dorsoplantar view, toes up, hallux towards -x (mm, view frame)."""
    scale = rng.normal(1.0, 0.05)
    spread = rng.uniform(0.8, 1.25)
    dev = rng.normal(0, 2.5)

    def unit(angle: float) -> np.ndarray:
        r = math.radians(angle + dev)
        return np.array([math.sin(r), -math.cos(r), 0.0])

    bones: dict[str, _Bone] = {}

    def put(name: str, angle: float, start=None) -> tuple[_Bone, np.ndarray]:
        d = unit(angle)
        start = np.zeros(3) if start is None else np.asarray(start, float)
        bones[name] = _place(name, _FOOT_PLAN[name], d, start, rng)
        return bones[name], d

    def ends(b: _Bone, d: np.ndarray) -> tuple[float, float]:
        p = b.points() @ d
        return float(p.min()), float(p.max())

    def distal_end(b: _Bone, d: np.ndarray) -> np.ndarray:
        c = b.centroid
        return c + (ends(b, d)[1] - c @ d) * d

    def abut(b: _Bone, d: np.ndarray, point: np.ndarray, gap: float) -> None:
        """Move ``b`` along ``d`` so that its distal end lies ``gap`` behind ``point``."""
        b.move((point @ d - gap - ends(b, d)[1]) * d)

    angles = {k: spread * a + rng.normal(0, 1.0) for k, a in _MT_ANGLES.items()}
    for k, (x, y) in _MT_BASES.items():
        put(f"mt{k}", angles[k], np.array([x, y, 0.0]))
    cune = {1: "cuneiform_medial", 2: "cuneiform_intermediate", 3: "cuneiform_lateral"}
    for k, name in cune.items():
        b, d = put(name, 0.4 * angles[k])
        b.move(np.array([*_MT_BASES[k], 0.0]) - b.centroid)
        abut(b, d, np.array([*_MT_BASES[k], 0.0]), -1.5)
    cub, d = put("cuboid", 12.0)
    cub.move(np.array([18.0, 10.0, 0.0]) - cub.centroid)
    abut(cub, d, np.array([18.0, 7.5, 0.0]), -1.5)
    nav, d = put("navicular", 90.0)  # long axis transverse
    cune_back = max(bones[n].points()[:, 1].max() for n in cune.values())
    nav.move(np.array([-10.0, cune_back, 0.0]) - nav.centroid)
    up = np.array([0.0, -1.0, 0.0])
    abut(nav, up, np.array([-10.0, cune_back - 3.0, 0.0]), 0.0)
    tal, d = put("talus", 0.0)
    tal.move(np.array([-8.0, nav.points()[:, 1].max(), 0.0]) - tal.centroid)
    abut(tal, up, np.array([-8.0, nav.points()[:, 1].max() - 2.5, 0.0]), 0.0)
    for k in range(1, 6):
        names = ["hallux_p1", "hallux_p2"] if k == 1 else [f"toe_p{j}_{k}" for j in (1, 2, 3)]
        parent, ang = bones[f"mt{k}"], angles[k]
        pd = unit(ang)
        for name in names:
            ang += _FOOT_PLAN[name][3] + rng.normal(0, 1.5)
            start = distal_end(parent, pd) + 0.4 * unit(ang)
            parent, pd = put(name, ang, start)
    for b in bones.values():
        b.m = scale * b.m
        b.t = scale * b.t
    return bones


# =============================================================================== joints


def _group_centroid(bones: dict[str, _Bone], names: tuple[str, ...]) -> np.ndarray:
    return np.mean([bones[n].centroid for n in names], axis=0)


def _in_plane(v: np.ndarray) -> np.ndarray:
    w = np.array([v[0], v[1], 0.0])
    return w / (np.linalg.norm(w) + 1e-12)


@dataclass
class _Measure:
    """Joint-space measurement on the posed meshes along a set of parallel rays."""

    axis: np.ndarray  # 3D unit
    lateral: np.ndarray  # 3D unit, in the image plane
    offsets: np.ndarray  # mm, lateral offsets of the rays
    prox: np.ndarray  # mm along the axis: exit from the proximal bone (nan: missed)
    dist: np.ndarray  # entry into the distal bone
    origin: np.ndarray

    def best(self) -> int | None:
        """The central ray with the median gap (robust to a ray slipping between two bones)."""
        n = len(self.offsets)
        k = n // 2
        rays = [
            j
            for j in range(max(k - 2, 0), min(k + 3, n))
            if np.isfinite(self.dist[j] - self.prox[j])
        ]
        if not rays:
            rays = [j for j in range(n) if np.isfinite(self.dist[j] - self.prox[j])]
        if not rays:
            return None
        g = np.array([self.dist[j] - self.prox[j] for j in rays])
        return rays[int(np.argsort(g)[len(g) // 2])]

    def gap(self) -> float:
        k = self.best()
        return float("nan") if k is None else float(self.dist[k] - self.prox[k])


def _measure(bones: dict[str, _Bone], site: _Site, half_width: float, n: int = 11) -> _Measure:
    cp = _group_centroid(bones, site.proximal)
    cd = _group_centroid(bones, site.distal)
    if site.site == "wrist_radcar":  # along the forearm, through the lunate/scaphoid
        axis = cd - bones["radius"].centroid
        cp = cd - 40.0 * axis / np.linalg.norm(axis)
    else:
        axis = cd - cp
    axis = axis / np.linalg.norm(axis)
    lateral = np.cross(np.array([0.0, 0.0, 1.0]), axis)
    lateral /= np.linalg.norm(lateral)
    offsets = np.linspace(-0.85, 0.85, n) * half_width
    origins = cp[None, :] + offsets[:, None] * lateral[None, :] - 5.0 * axis
    ph = [
        np.concatenate(z)
        for z in zip(*[bones[b].hits(origins, axis) for b in site.proximal], strict=True)
    ]
    dh = [
        np.concatenate(z)
        for z in zip(*[bones[b].hits(origins, axis) for b in site.distal], strict=True)
    ]
    prox = np.full(n, np.nan)
    dist = np.full(n, np.nan)
    for k in range(n):
        d = np.sort(dh[k][dh[k] > 0])
        if len(d) == 0:
            continue
        d_exit = d[1] if len(d) > 1 else d[0] + 5.0
        p = ph[k][(ph[k] > 0) & (ph[k] < d_exit)]
        if len(p) == 0:
            continue
        prox[k] = float(p.max())
        dist[k] = float(d[0])
    return _Measure(axis, lateral, offsets, prox, dist, origins[0] - offsets[0] * lateral)


def _half_width(
    bones: dict[str, _Bone], names: tuple[str, ...], point: np.ndarray, axis: np.ndarray
) -> float:
    """Half the in-plane width of a bone group across ``axis`` near ``point``."""
    lateral = np.cross(np.array([0.0, 0.0, 1.0]), axis)
    lateral /= np.linalg.norm(lateral)
    pts = np.concatenate([bones[n].points() for n in names])
    along = (pts - point) @ axis
    for slab in (2.5, 4.0, 6.0, 10.0):
        near = pts[np.abs(along) < slab]
        if len(near) >= 8:
            lat = (near - point) @ lateral
            return float(0.5 * (lat.max() - lat.min()) / max(len(names), 1) ** 0.5)
    return 4.0


def _site_half_width(bones: dict[str, _Bone], site: _Site) -> float:
    """Half width of the narrower bone end at the joint (measured at a first joint estimate)."""
    m = _measure(bones, site, 1.0, n=3)
    k = m.best()
    axis = m.axis
    if k is None:
        mid = 0.5 * (_group_centroid(bones, site.proximal) + _group_centroid(bones, site.distal))
    else:
        mid = m.origin + m.offsets[k] * m.lateral + 0.5 * (m.prox[k] + m.dist[k]) * m.axis
    wp = _half_width(bones, site.proximal, mid, axis)
    wd = _half_width(bones, site.distal, mid, axis)
    return max(min(wp, wd), 1.5)


def _normalise_gaps(
    bones: dict[str, _Bone],
    sites: tuple[_Site, ...],
    children: dict[str, list[str]],
    grades: dict[str, dict[str, int]],
    rng: np.random.Generator,
) -> None:
    """Set every joint space to its (patient-jittered) normal width times the grade factor.

    Each site draws from its own generator, always the same numbers whatever the grades, so
    the same pose with other grades differs only where the grades do.
    """
    base = int(rng.integers(0, 2**62))
    for index, site in enumerate(sites):
        site_rng = np.random.default_rng([base, index])
        jitter, side, angle = (
            site_rng.normal(1.0, 0.08),
            site_rng.choice([-1, 1]),
            site_rng.uniform(2, 4),
        )
        sublux = site_rng.random() < 0.35
        grade = int(grades.get(site.site, {}).get("narrowing", 0))
        target = _NORMAL_GAP[site.family] * jitter * _GAP_FACTOR[grade]
        hw = _site_half_width(bones, site)
        m = _measure(bones, site, hw)
        gap = m.gap()
        moved = _subtree(site.moves, children)
        if np.isfinite(gap):
            for name in moved:
                bones[name].move(-(gap - target) * m.axis)
        k = m.best()
        # focal narrowing: tilt the distal bone so that one side narrows more (digits only: on
        # the carpus the lever of the whole hand would swing the fingers)
        if grade == 1 and k is not None and site.family in ("mcp", "pip", "mtp", "ip"):
            pivot = m.origin + m.offsets[k] * m.lateral + (m.prox[k] + 0.5 * target) * m.axis
            tilt = _rot(np.array([0.0, 0.0, 1.0]), side * math.radians(angle))
            for name in moved:
                bones[name].rotate_about(tilt, pivot)
        # grade 3-4 at an MCP/MTP: sometimes subluxation - the base of the phalanx slides
        # ulnar/lateral (+x on the canonical right limb) off the metacarpal head
        if grade >= 3 and sublux and site.family in ("mcp", "mtp"):
            shift = np.array([0.35 * hw * (1 if grade == 4 else 0.7), 0.0, 0.0])
            for name in moved:
                bones[name].move(shift)


# =============================================================================== raster


def _box(v2: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel bounding box (y0, x0, y1, x1) of projected vertices, clipped to the image."""
    h, w = shape
    x0 = max(math.floor(float(v2[:, 0].min())), 0)
    x1 = min(math.ceil(float(v2[:, 0].max())) + 1, w)
    y0 = max(math.floor(float(v2[:, 1].min())), 0)
    y1 = min(math.ceil(float(v2[:, 1].max())) + 1, h)
    return y0, x0, max(y1, y0), max(x1, x0)


def _raster(
    v2: np.ndarray, z: np.ndarray, faces: np.ndarray, box: tuple[int, int, int, int]
) -> np.ndarray:
    """Path length through a closed mesh per pixel: signed depth sum over covering triangles.

    Why: front faces add their depth and back faces subtract it, so the sum is the chord length
    through the solid at each pixel centre (integer coordinates) inside ``box``.
    """
    y0, x0, y1, x1 = box
    bw, bh = x1 - x0, y1 - y0
    acc = np.zeros(bw * bh, np.float64)
    a, b, c = v2[faces[:, 0]], v2[faces[:, 1]], v2[faces[:, 2]]
    za, zb, zc = z[faces[:, 0]], z[faces[:, 1]], z[faces[:, 2]]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    tx0 = np.maximum(np.ceil(np.minimum(np.minimum(a[:, 0], b[:, 0]), c[:, 0])), x0).astype(
        np.int64
    )
    tx1 = np.minimum(np.floor(np.maximum(np.maximum(a[:, 0], b[:, 0]), c[:, 0])), x1 - 1).astype(
        np.int64
    )
    ty0 = np.maximum(np.ceil(np.minimum(np.minimum(a[:, 1], b[:, 1]), c[:, 1])), y0).astype(
        np.int64
    )
    ty1 = np.minimum(np.floor(np.maximum(np.maximum(a[:, 1], b[:, 1]), c[:, 1])), y1 - 1).astype(
        np.int64
    )
    nx, ny = tx1 - tx0 + 1, ty1 - ty0 + 1
    keep = (nx > 0) & (ny > 0) & (np.abs(area) > 1e-12)
    idx = np.flatnonzero(keep)
    counts = (nx * ny)[idx]
    # chunks keep the candidate-pixel arrays small for the few very large triangles
    limit = 3_000_000
    start = 0
    while start < len(idx):
        csum = np.cumsum(counts[start:])
        stop = start + max(int(np.searchsorted(csum, limit)), 1)
        sel = idx[start:stop]
        cnt = counts[start:stop]
        tri = np.repeat(np.arange(len(sel)), cnt)
        off = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        t = sel[tri]
        # pixel centres nudged by an irrational amount: no centre falls exactly on an edge
        px = tx0[t] + off % nx[t] + 1.3e-4
        py = ty0[t] + off // nx[t] + 0.7e-4
        ax, ay, bx, by, cx, cy = a[t, 0], a[t, 1], b[t, 0], b[t, 1], c[t, 0], c[t, 1]
        ar = area[t]
        w0 = ((bx - px) * (cy - py) - (by - py) * (cx - px)) / ar
        w1 = ((cx - px) * (ay - py) - (cy - py) * (ax - px)) / ar
        w2 = 1.0 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        depth = w0 * za[t] + w1 * zb[t] + w2 * zc[t]
        contrib = np.sign(ar) * depth
        flat = (ty0[t] + off // nx[t] - y0) * bw + (tx0[t] + off % nx[t] - x0)
        acc += np.bincount(flat[inside], weights=contrib[inside], minlength=bw * bh)
        start = stop
    return np.abs(acc.reshape(bh, bw)).astype(np.float32)


# =============================================================================== rendering


@dataclass
class _Bite:
    bone: str
    centre: np.ndarray  # view mm
    radius: float  # mm


@dataclass
class _Truth:
    centres: dict[str, np.ndarray] = field(default_factory=dict)  # view mm (3D)
    axes: dict[str, np.ndarray] = field(default_factory=dict)
    gaps: dict[str, float] = field(default_factory=dict)  # mm along the in-plane axis
    radii: dict[str, float] = field(default_factory=dict)  # mm
    polygons: dict[str, list[np.ndarray]] = field(default_factory=dict)
    bites: dict[str, list[_Bite]] = field(default_factory=dict)


def _bone_site_point(bones: dict[str, _Bone], bone: str, where: str) -> tuple[np.ndarray, float]:
    b = bones[bone]
    c = b.centroid
    pts = b.points()
    if where == "centre":
        lat = pts[:, :2] - c[:2]
        return c, float(0.5 * np.sqrt((lat**2).sum(1)).mean())
    # the long axis of the placed bone: first principal axis of its vertices in the plane
    _, _, vt = np.linalg.svd(pts[:, :2] - c[:2], full_matrices=False)
    axis = np.array([vt[0][0], vt[0][1], 0.0])
    if axis[1] > 0:  # pointing distal (up)
        axis = -axis
    along = (pts - c) @ axis
    end = along.max() if where == "head" else along.min()
    width = _half_width(bones, (bone,), c + end * axis, axis)
    inward = -1.0 if where == "head" else 1.0
    point = c + (end + inward * 0.9 * width) * axis
    if bone in ("radius", "ulna"):
        point = c + (end - 0.7 * width) * axis
    return point, width


def _measure_truth(
    bones: dict[str, _Bone],
    limb: Limb,
    sites: tuple[_Site, ...],
    bone_sites: dict[str, tuple[str, str]],
    grades: dict[str, dict[str, int]],
    rng: np.random.Generator,
) -> _Truth:
    truth = _Truth()
    joints = {j.site: j for j in joints_for_limb(limb)}
    seed = int(rng.integers(0, 2**62))
    for index, site in enumerate(sites):
        hw = _site_half_width(bones, site)
        m = _measure(bones, site, hw, n=11)
        ok = np.isfinite(m.prox) & np.isfinite(m.dist)
        best = m.best()
        k = len(m.offsets) // 2 if best is None else best
        found = best is not None
        pa = m.origin + m.offsets[k] * m.lateral + (m.prox[k] if found else 0) * m.axis
        pb = m.origin + m.offsets[k] * m.lateral + (m.dist[k] if found else 0) * m.axis
        axis2 = _in_plane(m.axis)
        truth.centres[site.site] = 0.5 * (pa + pb)
        truth.axes[site.site] = axis2
        truth.gaps[site.site] = float((pb - pa) @ axis2)
        truth.radii[site.site] = hw
        poly_a, poly_b = [], []
        for j in np.flatnonzero(ok):
            base = m.origin + m.offsets[j] * m.lateral
            pa_j = base + m.prox[j] * m.axis
            pb_j = base + max(m.dist[j], m.prox[j] + 0.2) * m.axis
            poly_a.append(pa_j)
            poly_b.append(pb_j)
        if joints[site.site].narrowing and len(poly_a) >= 2:
            truth.polygons[site.site] = poly_a + poly_b[::-1]
        elif joints[site.site].narrowing:  # degenerate: a thin box on the joint line
            c, lat = truth.centres[site.site], m.lateral * hw * 0.6
            truth.polygons[site.site] = [
                c - lat,
                c + lat,
                c + lat + 0.3 * m.axis,
                c - lat + 0.3 * m.axis,
            ]
        grade = int(grades.get(site.site, {}).get("erosion", 0))
        if grade and joints[site.site].erosion:
            site_rng = np.random.default_rng([seed, index])
            truth.bites[site.site] = _joint_bites(
                joints[site.site], grade, site, m, ok, hw, site_rng
            )
    for index, (site_name, (bone, where)) in enumerate(bone_sites.items(), start=100):
        point, width = _bone_site_point(bones, bone, where)
        truth.centres[site_name] = point
        truth.radii[site_name] = width
        grade = int(grades.get(site_name, {}).get("erosion", 0))
        if grade:
            site_rng = np.random.default_rng([seed, index])
            truth.bites[site_name] = _bone_bites(
                joints[site_name], grade, bones[bone], point, width, site_rng
            )
    return truth


def _n_bites(joint: Joint, grade: int) -> tuple[int, float]:
    top = joint.max_score(ScoreType.EROSION)
    n = grade if top == 5 else math.ceil(grade / 2) + (grade >= 8)
    return n, grade / top


def _joint_bites(joint, grade, site, m: _Measure, ok, hw, rng) -> list[_Bite]:
    """Marginal (bare-area) cuts: at the edges of the articular surfaces, alternating bones."""
    n, level = _n_bites(joint, grade)
    good = np.flatnonzero(ok)
    if len(good) == 0:
        return []
    edges = [good[0], good[-1]]
    out = []
    for k in range(n):
        j = edges[(k // 2) % 2]
        proximal = k % 2 == 0
        r = min(hw, 5.0) * (0.2 + 0.3 * level) * rng.uniform(0.9, 1.1)
        base = m.origin + m.offsets[j] * 0.98 * m.lateral
        if proximal:
            point = base + (m.prox[j] - 0.7 * r) * m.axis
            bone = site.proximal[0]
        else:
            point = base + (m.dist[j] + 0.7 * r) * m.axis
            bone = site.distal[0]
        if k >= 4:  # more cuts: further along the shaft
            point = point + (-1 if proximal else 1) * (k // 4) * 1.2 * r * m.axis
        out.append(_Bite(bone, point, float(r)))
    return out


def _bone_bites(joint, grade, bone: _Bone, point, width, rng) -> list[_Bite]:
    """Cuts on the outline of one bone (wrist erosion sites), found by rays from its centre."""
    n, level = _n_bites(joint, grade)
    out = []
    for _ in range(n):
        theta = rng.uniform(0, 2 * math.pi)
        d = np.array([math.cos(theta), math.sin(theta), 0.0])
        hits = bone.hits(point[None, :], d)[0]
        hits = hits[hits > 0]
        reach = float(hits.min()) if len(hits) else width
        r = float(np.clip(width, 2.0, 5.0)) * (0.2 + 0.3 * level) * rng.uniform(0.9, 1.1)
        out.append(_Bite(bone.name, point + (reach - 0.5 * r) * d, float(r)))
    return out


def _soft_tissue(
    bones: dict[str, _Bone], kind: str, to_px, shape: tuple[int, int], spacing: float, swell
) -> np.ndarray:
    """Soft-tissue thickness (mm) per pixel: digits, palm/forefoot, thenar and forearm."""
    f = 4  # computed at 1/4 resolution: the envelope is smooth
    h, w = shape
    hs, ws = (h + f - 1) // f, (w + f - 1) // f
    yy, xx = np.mgrid[0:hs, 0:ws].astype(np.float32) * f
    thick = np.zeros((hs, ws), np.float32)

    def capsule(p0, p1, radius_mm, depth_mm):
        a, b = to_px(p0), to_px(p1)
        r = radius_mm / spacing
        ba = b - a
        den = float(ba @ ba) or 1.0
        t = np.clip(((xx - a[0]) * ba[0] + (yy - a[1]) * ba[1]) / den, 0, 1)
        d = np.hypot(xx - a[0] - t * ba[0], yy - a[1] - t * ba[1])
        return depth_mm * np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1))

    for b in bones.values():
        pts = b.points()
        c = b.centroid
        _, _, vt = np.linalg.svd(pts[:, :2] - c[:2], full_matrices=False)
        ax = np.array([vt[0][0], vt[0][1], 0.0])
        along = (pts - c) @ ax
        p0, p1 = c + along.min() * ax, c + along.max() * ax
        lat = np.abs((pts - c) @ np.array([-ax[1], ax[0], 0.0]))
        bw = float(np.percentile(lat, 95))
        name = b.name
        if name in ("radius", "ulna"):
            ext = (p1 - p0) / np.linalg.norm(p1 - p0)
            thick = np.maximum(
                thick, capsule(p0 - 0 * ext, p1 - 8 * ext * (ext[1] > 0), bw + 13, 42)
            )
        elif name.startswith(("p", "thumb", "toe", "hallux")):
            thick = np.maximum(thick, capsule(p0, p1, bw + 4.5, 2 * (bw + 4.0)))
        elif name.startswith(("mc", "mt")):
            thick = np.maximum(thick, capsule(p0, p1, bw + 9, 24 if kind == "hand" else 28))
        else:
            if kind == "hand":
                thick = np.maximum(thick, capsule(p0, p1, bw + 12, 34))
    # palm (with the thenar eminence) or midfoot: a smooth hull around the bones
    from scipy.spatial import ConvexHull
    from skimage.draw import polygon as fill_polygon

    if kind == "hand":
        names, depth, pad = ("mc2", "mc5", "hamate", "trapezium", "mc1"), 26.0, 6.0
    else:
        names = ("mt1", "mt5", "cuneiform_medial", "cuboid", "navicular", "talus")
        depth, pad = 36.0, 5.0
    hull = []
    for name in names:
        pts = bones[name].points()
        for k in (
            np.argmin(pts[:, 1]),
            np.argmax(pts[:, 1]),
            np.argmin(pts[:, 0]),
            np.argmax(pts[:, 0]),
        ):
            hull.append(pts[k])
    hp = np.array([to_px(p) for p in hull]) / f
    hv = hp[ConvexHull(hp).vertices]
    rr, cc = fill_polygon(hv[:, 1], hv[:, 0], (hs, ws))
    body = np.zeros((hs, ws), np.float32)
    body[rr, cc] = 1.0
    body = ndimage.gaussian_filter(body, pad / spacing / f)
    thick = np.maximum(thick, depth * np.clip(body * 1.6, 0, 1))
    if kind == "foot":  # the hindfoot (calcaneus not modelled) continues below the film edge
        c = bones["talus"].centroid
        thick = np.maximum(thick, capsule(c, c + np.array([6.0, 160.0, 0.0]), 30.0, 48.0))
    for centre, amount in swell:
        thick += capsule(centre, centre, 9.0, amount)
    thick = ndimage.gaussian_filter(thick, 0.7 / spacing / f)
    return ndimage.zoom(thick, f, order=1)[:h, :w]


def render_limb_anatomical(
    limb: Limb | str,
    grades: dict[str, dict[str, int]],
    rng: np.random.Generator,
    *,
    height: int = 1200,
    noise: bool = True,
    pose_rng: np.random.Generator | None = None,
) -> LimbPhantom:
    """One PA radiograph of ``limb`` from the posed MyoSuite meshes, showing ``grades``.

    ``pose_rng`` (default: ``rng``) decides anatomy and pose, ``rng`` the acquisition; the same
    pose with different grades is what the image-level tests compare.
    """
    limb = Limb.parse(limb)
    if height < 256:
        raise ValueError(f"height {height} is too small to draw joints; use at least 256 px")
    pose_rng = pose_rng or rng
    # separate streams for the pose, the damage and the placement: the same pose with other
    # grades is the same film except where the damage is
    seeds = pose_rng.integers(0, 2**62, size=3)
    pose_rng, damage_rng, place_rng = (np.random.default_rng(int(x)) for x in seeds)
    joints = joints_for_limb(limb)
    by_site = {j.site: dict(grades.get(j.id, {})) for j in joints}
    damage = np.mean(
        [g.get("erosion", 0) / 5 + g.get("narrowing", 0) / 4 for g in by_site.values()] or [0]
    )
    # ulnar drift follows the destruction of the MCPs (their narrowing grades)
    mcp = [by_site.get(f"mcp_{k}", {}).get("narrowing", 0) / 4 for k in range(1, 6)]
    if limb.kind == "hand":
        bones = _pose_hand(pose_rng, float(np.clip(np.mean(mcp) * 1.5, 0, 1)))
        sites, bone_sites, children = _HAND_SITES, _HAND_BONE_SITES, _HAND_CHILDREN
    else:
        bones = _pose_foot(pose_rng)
        sites, bone_sites, children = _FOOT_SITES, {}, _FOOT_CHILDREN
    # small pronation (rotation about the long axis) and in-plane rotation of the whole limb
    centre = np.mean([b.centroid for b in bones.values() if b.name not in ("radius", "ulna")], 0)
    pron = _rot(np.array([0.0, 1.0, 0.0]), math.radians(pose_rng.normal(0, 4)))
    for b in bones.values():
        b.rotate_about(pron, centre)
    _normalise_gaps(bones, sites, children, by_site, damage_rng)
    # in-plane rotation: mostly upright, sometimes placed at a slant on the detector
    tilt = pose_rng.normal(0, 6) + (pose_rng.uniform(-22, 22) if pose_rng.random() < 0.12 else 0.0)
    inplane = _rot(np.array([0.0, 0.0, 1.0]), math.radians(tilt))
    for b in bones.values():
        b.rotate_about(inplane, centre)
    truth = _measure_truth(bones, limb, sites, bone_sites, by_site, damage_rng)

    # --- film geometry: a physical spacing, the limb placed inside the field
    h = int(height)
    w = round(h * (0.82 if limb.kind == "hand" else 0.62))
    spacing = (250.0 if limb.kind == "hand" else 270.0) / h
    keep = [b for b in bones.values() if b.name not in ("radius", "ulna", "talus")]
    pts = np.concatenate([b.points()[:, :2] for b in keep])
    lo, hi = pts.min(0), pts.max(0)
    lo[1] -= 3.0  # room above the fingertips for the soft tissue
    margin = 0.06
    need = max(
        (hi[0] - lo[0] + 20) / (w * (1 - 2 * margin)), (hi[1] - lo[1]) / (h * (1 - 2 * margin))
    )
    spacing = max(spacing, need)  # magnify down if the limb would not fit
    span = (hi - lo) / spacing
    slack = np.maximum(np.array([w, h]) * (1 - 2 * margin) - span, 0)
    origin_px = np.array([w, h]) * margin + place_rng.uniform([0.15, 0.0], [0.85, 0.35]) * slack

    def to_px(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, float)
        return (p[..., :2] - lo) / spacing + origin_px

    # --- per-bone path lengths, erosions and periarticular osteopenia
    shape = (h, w)
    cortex = np.zeros(shape, np.float32)
    trab = np.zeros(shape, np.float32)
    osteo_pts = []
    for site, g in by_site.items():
        level = g.get("erosion", 0) / 5 + g.get("narrowing", 0) / 4
        if level > 0 and site in truth.centres:
            osteo_pts.append((to_px(truth.centres[site]), min(level, 1.0)))
    bites_by_bone: dict[str, list[_Bite]] = {}
    for blist in truth.bites.values():
        for bt in blist:
            bites_by_bone.setdefault(bt.bone, []).append(bt)
    for b in bones.values():
        outer = b.points()
        inner = b.points(inner=True)
        box = _box(to_px(outer), shape)
        y0, x0, y1, x1 = box
        if y1 <= y0 or x1 <= x0:
            continue
        # depths relative to the bone's centre keep coverage errors at seams small
        z0 = float(outer[:, 2].mean())
        depth = float(np.ptp(outer[:, 2]))
        lo_ = np.minimum(_raster(to_px(outer), outer[:, 2] - z0, b.template.faces, box), depth)
        li = np.minimum(_raster(to_px(inner), inner[:, 2] - z0, b.template.faces, box), lo_)
        if b.name in ("radius", "ulna"):  # coarse meshes with a seam: smooth it away
            size = max(round(3.0 / spacing) | 1, 5)
            lo_ = ndimage.median_filter(lo_, size=size)
            lo_ = np.minimum(lo_, np.percentile(lo_[lo_ > 0], 97) if (lo_ > 0).any() else 0)
            li = np.minimum(ndimage.median_filter(li, size=size), lo_)
        lc = lo_ - li
        for bt in bites_by_bone.get(b.name, []):
            cx, cy = to_px(bt.centre)
            r = bt.radius / spacing
            yy, xx = np.mgrid[0 : lo_.shape[0], 0 : lo_.shape[1]]
            d2 = ((xx + x0 - cx) ** 2 + (yy + y0 - cy) ** 2) / (r * r)
            chord = 2 * bt.radius * np.sqrt(np.clip(1 - d2, 0, 1))
            hole = np.clip((1 - d2) * 3, 0, 1)
            lc *= 1 - 0.7 * hole
            li = np.clip(li - 0.35 * chord, 0, None)
            # a thin sclerotic rim around older, larger defects
            rim = np.exp(-((np.sqrt(d2) - 1.0) ** 2) / 0.02) * (bt.radius > 2.5)
            lc += 0.25 * rim * (lo_ > 0)
        ys, xs = slice(y0, y0 + lo_.shape[0]), slice(x0, x0 + lo_.shape[1])
        cortex[ys, xs] += lc
        trab[ys, xs] += li

    # trabecular texture: band-pass noise, a little stretched along the limb
    tex = rng.standard_normal((h, w)).astype(np.float32)
    tex = ndimage.gaussian_filter(tex, (0.55 / spacing, 0.35 / spacing)) - ndimage.gaussian_filter(
        tex, 2.0 / spacing
    )
    tex /= tex.std() + 1e-6
    mu_t = np.full(shape, _MU_TRABECULAR, np.float32) * (1 + 0.28 * tex)
    global_osteo = 1.0 - 0.18 * float(np.clip(damage * 2.0, 0, 1)) * place_rng.uniform(0.5, 1.0)
    mu_t *= global_osteo
    if osteo_pts:
        yy, xx = np.mgrid[0:h:4, 0:w:4].astype(np.float32)
        loss = np.zeros_like(yy)
        sig = 7.0 / spacing
        for (px_, py_), level in osteo_pts:
            loss = np.maximum(
                loss, 0.3 * level * np.exp(-((xx - px_) ** 2 + (yy - py_) ** 2) / (2 * sig * sig))
            )
        mu_t *= 1 - ndimage.zoom(loss, 4, order=1)[:h, :w]
    swell = []
    for site, g in by_site.items():
        level = g.get("erosion", 0) / 5 + g.get("narrowing", 0) / 4
        if place_rng.random() < 0.6 and level > 0.2 and site in truth.centres:
            swell.append((truth.centres[site], 4.0 * min(level, 1.0)))
    soft = _soft_tissue(bones, limb.kind, to_px, shape, spacing, swell)

    line = _MU_SOFT * soft + _MU_CORTEX * global_osteo**0.5 * cortex + mu_t * trab
    line += _ring(bones, limb, to_px, shape, spacing, rng)
    line += _ruler(shape, spacing, rng)
    image = _acquire(line, soft > 0.5, rng, spacing, noise=noise)
    if limb.side == "left":  # the canonical limb is a right one; mirror before the marker
        image = image[:, ::-1].copy()
    image = collimate_and_mark(image, limb, rng, h / 1000.0)
    pixels = np.clip(image * 4095.0, 0, 4095).astype(np.uint16)
    return _finish(limb, pixels, truth, to_px, spacing, grades, joints)


def _ring(bones, limb: Limb, to_px, shape, spacing, rng) -> np.ndarray | float:
    """Sometimes a ring on a proximal phalanx (metal: nearly opaque band)."""
    if limb.kind != "hand" or rng.random() > 0.15:
        return 0.0
    k = int(rng.integers(2, 6))
    b = bones[f"p1_{k}"]
    pts = b.points()
    c = b.centroid
    _, _, vt = np.linalg.svd(pts[:, :2] - c[:2], full_matrices=False)
    ax = vt[0] if vt[0][1] < 0 else -vt[0]
    lat = np.array([-ax[1], ax[0]])
    half = float(np.percentile(np.abs((pts[:, :2] - c[:2]) @ lat), 97)) + 3.0
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cp = to_px(c - 0.1 * float(((pts - c) @ np.array([*ax, 0])).max()) * np.array([*ax, 0]))
    along = (xx - cp[0]) * ax[0] + (yy - cp[1]) * ax[1]
    across = (xx - cp[0]) * lat[0] + (yy - cp[1]) * lat[1]
    band = (np.abs(along) < 1.2 / spacing) & (np.abs(across) < half / spacing)
    edge = np.clip(1 - (np.abs(across) * spacing / half) ** 8, 0, 1)
    return np.where(band, 2.5 + 4.0 * (1 - edge), 0.0).astype(np.float32)


def _ruler(shape: tuple[int, int], spacing: float, rng: np.random.Generator) -> np.ndarray | float:
    """Sometimes a radiopaque ruler along one side: a faint strip with 5 and 10 mm ticks."""
    if rng.random() > 0.2:
        return 0.0
    h, w = shape
    out = np.zeros(shape, np.float32)
    width = round(8.0 / spacing)
    x0 = int(0.05 * w) if rng.random() < 0.5 else w - int(0.05 * w) - width
    y0, y1 = int(0.2 * h), int(0.9 * h)
    out[y0:y1, x0 : x0 + width] = 0.15
    step = 5.0 / spacing
    for k in range(int((y1 - y0) / step)):
        y = int(y0 + k * step)
        length = width if k % 2 == 0 else width // 2
        out[y : y + max(int(0.5 / spacing), 1), x0 : x0 + length] = 3.0
    return out


def _acquire(
    line: np.ndarray, body: np.ndarray, rng: np.random.Generator, spacing: float, *, noise: bool
) -> np.ndarray:
    """Beer-Lambert, scatter, heel effect, blur, quantum noise, log processing and windowing."""
    h, w = line.shape
    heel = 1.0 + rng.uniform(-0.12, 0.12) * np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    primary = heel * np.exp(-line)
    small = primary[::8, ::8]
    scatter = ndimage.gaussian_filter(small, 12.0 / spacing / 8)
    scatter = ndimage.zoom(scatter, 8, order=1)[:h, :w]
    frac = rng.uniform(0.08, 0.2)
    signal = primary + frac * scatter * (1 - np.exp(-line)).mean()
    signal = ndimage.gaussian_filter(signal, rng.uniform(0.06, 0.12) / spacing)
    if noise:
        photons = rng.uniform(1500, 5000)
        signal = signal + rng.standard_normal(signal.shape).astype(np.float32) * np.sqrt(
            np.clip(signal, 1e-4, None) / photons
        )
    p = -np.log(np.clip(signal, 1e-4, None))
    # processing: unsharp masking (edge enhancement) then a film-like window
    p = p + rng.uniform(0.15, 0.4) * (p - ndimage.gaussian_filter(p, 1.5 / spacing))
    inside = p[body] if body.any() else p
    lo = float(np.percentile(p, 2)) - 0.05
    hi = float(np.percentile(inside, 99.7)) * rng.uniform(1.0, 1.15)
    x = np.clip((p - lo) / max(hi - lo, 1e-3), 0, 1)
    gamma = rng.uniform(0.6, 0.85)
    x = x**gamma
    return (0.03 + 0.93 * x).astype(np.float32)


def _finish(limb, pixels, truth: _Truth, to_px, spacing, grades, joints) -> LimbPhantom:
    """Project the truth to pixels and mirror a left limb (the canonical limb is the right)."""
    w = pixels.shape[1]
    mirror = limb.side == "left"

    def pt(p):
        q = to_px(p)
        return (float(w - 1 - q[0]) if mirror else float(q[0]), float(q[1]))

    def vec(v):
        return (float(-v[0]) if mirror else float(v[0]), float(v[1]))

    by_site = {j.site: j for j in joints}
    centres, polygons, axes, gaps, radii, bites = {}, {}, {}, {}, {}, {}
    for site, joint in by_site.items():
        centres[joint.id] = pt(truth.centres[site])
        radii[joint.id] = float(truth.radii[site] / spacing)
        if site in truth.axes:
            axes[joint.id] = vec(truth.axes[site])
            gaps[joint.id] = float(truth.gaps[site] / spacing)
        if site in truth.polygons:
            polygons[joint.id] = [pt(p) for p in truth.polygons[site]]
        if site in truth.bites:
            bites[joint.id] = [
                (*pt(b.centre), float(b.radius / spacing)) for b in truth.bites[site]
            ]
    return LimbPhantom(
        limb=limb,
        image=pixels,
        centres=centres,
        polygons=polygons,
        axes=axes,
        gap_widths=gaps,
        bone_radius=radii,
        grades={j.id: dict(grades.get(j.id, {})) for j in joints},
        spacing_mm=float(spacing),
        bites=bites,
    )
