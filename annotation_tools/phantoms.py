"""Phantom cohorts: synthetic hand/foot radiographs and joint ultrasound with exact ground truth.

No real RA images can be downloaded here, so every model of the project is trained and measured
on phantoms first. They are built to make the scores *visible in the pixels*:

* **Radiograph styles.** ``anatomical`` (the default, :mod:`annotation_tools.phantom_anatomy`):
  the MyoSuite bone meshes posed by a hand model (the foot from scaled hand meshes), RA damage
  in 3D and X-ray physics. ``schematic`` (below) is fast, for unit tests and the shipped weights.
* **Schematic radiographs.** Bones are chains of capsules (shaft + rounded head and base) laid
  out along the rays of a left hand or foot, drawn as a bright cortical rim around darker
  medulla with trabecular texture, inside a blurred soft-tissue silhouette. The gap between two
  bone ends is the joint space: narrowing grade ``g`` shrinks it (grade 4 overlaps the bones).
  Erosion grade ``e`` bites ``e`` cortical defects, growing with the grade, into the bone ends
  (or the wrist bone) of that site. Right limbs are mirrored left ones. Then pose (finger spread,
  rotation, scale, shift), exposure, gamma, heel effect, blur, noise, collimation and a lead
  side marker.
* **Scores** come from a patient-level severity, a joint susceptibility, a joint-level term
  shared by both sides and a small side-specific term: left and right are strongly correlated,
  as in real RA, so a model looking at the other side can learn from it.
* **Ultrasound pairs**: grey-scale (speckle, bright bone surfaces with acoustic shadow, a
  hypoechoic synovial region whose extent follows the synovial-hypertrophy grade) and its
  Doppler screenshot (colour box, red/yellow or blue flow pixels whose amount follows the
  vascularity grade, colour bar and coloured text outside the box).

Everything is deterministic for a seed. Phantom figures say nothing about clinical accuracy.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from . import __version__
from .imageio import file_sha256, write_dicom, write_png
from .phantom_grades import patient_rng, sample_patient_scores, sample_us_grades
from .phantom_records import LimbPhantom, UltrasoundPhantom
from .vocabulary import LIMBS, Joint, Limb, ScoreType, joints_for_limb

__all__ = [
    "GENERATOR",
    "STYLES",
    "LimbPhantom",
    "UltrasoundPhantom",
    "generate_cohort",
    "phantom_style",
    "render_limb",
    "render_ultrasound",
    "sample_patient_scores",
]

GENERATOR = "annotation_tools.phantoms"
US_SITES = ("mcp_2", "mcp_3", "pip_2", "wrist", "mtp_2", "mtp_5")

# Phantom styles: which renderer draws the radiographs and the ultrasound pairs. Each entry is
# "module:function" (imported only when used, so the heavy anatomy stack is optional for the
# schematic style). ``render_limb(limb, grades, rng, *, height)`` -> LimbPhantom and
# ``render_ultrasound(site, synovial_hypertrophy, vascularity, rng)`` -> UltrasoundPhantom.
STYLES: dict[str, dict[str, str]] = {
    "schematic": {
        "radiograph": "annotation_tools.phantoms:render_limb",
        "ultrasound": "annotation_tools.phantoms:render_ultrasound",
    },
    # real bone meshes (MyoSuite), posed, damaged in 3D and X-rayed (phantom_anatomy.py);
    # ultrasound from scatterers, beam and envelope on a scanner screen (phantom_us.py)
    "anatomical": {
        "radiograph": "annotation_tools.phantom_anatomy:render_limb_anatomical",
        "ultrasound": "annotation_tools.phantom_us:render_ultrasound_physical",
    },
}
DEFAULT_STYLE = "anatomical"

# Joint-space width relative to grade 0, by narrowing grade; grade 4 overlaps the bones (fusion).
_GAP_FACTOR = (1.0, 0.72, 0.5, 0.28, -0.6)


# =============================================================================== geometry


@dataclass
class _Bone:
    """A capsule from ``start`` (proximal surface) along ``direction`` for ``length``."""

    name: str
    start: np.ndarray
    direction: np.ndarray
    length: float
    radius: float
    head: float = 1.0  # radius factor of the distal end
    base: float = 1.0  # radius factor of the proximal end

    @property
    def end(self) -> np.ndarray:
        return self.start + self.length * self.direction

    @property
    def head_circle(self) -> tuple[np.ndarray, float]:
        r = self.radius * self.head
        return self.end - r * self.direction, r

    @property
    def base_circle(self) -> tuple[np.ndarray, float]:
        r = self.radius * self.base
        return self.start + r * self.direction, r

    @property
    def centre(self) -> np.ndarray:
        return self.start + 0.5 * self.length * self.direction

    def capsules(self) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Shaft capsule plus head and base discs (capsules of zero length)."""
        r = self.radius
        p0 = self.start + r * self.direction
        p1 = self.end - r * self.direction
        out = [(p0, p1, r)]
        for c, rc in (self.head_circle, self.base_circle):
            if rc != r:
                out.append((c, c, rc))
        return out


@dataclass
class _JointGeom:
    """A scoring site: a gap between two bones (``distal`` given) or one bone (erosion only)."""

    joint: Joint
    centre: np.ndarray
    proximal: str
    distal: str | None = None
    axis: np.ndarray | None = None


def _unit(angle_deg: float) -> np.ndarray:
    """Direction ``angle_deg`` from straight up, positive towards +x (the thumb of a left hand)."""
    a = math.radians(angle_deg)
    return np.array([math.sin(a), -math.cos(a)])


def _perp(d: np.ndarray) -> np.ndarray:
    """Unit vector 90 degrees from ``d`` towards +x when ``d`` points up."""
    return np.array([-d[1], d[0]])


class _Skeleton:
    """Builds a limb as chains of bones and records every scoring site on the way."""

    def __init__(self, limb: Limb, rng: np.random.Generator, grades: dict[str, dict[str, int]]):
        self.limb = limb
        self.rng = rng
        self.grades = grades
        self.bones: dict[str, _Bone] = {}
        self.sites: dict[str, _JointGeom] = {}
        self.joints = {j.site: j for j in joints_for_limb(limb)}

    def jitter(self, value: float, rel: float = 0.05) -> float:
        return float(value * (1.0 + self.rng.uniform(-rel, rel)))

    def gap(self, site: str | None, base_gap: float) -> float:
        """Joint space width: the narrowing grade of the site shrinks it."""
        grade = self.grades.get(site, {}).get("narrowing", 0) if site else 0
        return self.jitter(base_gap, 0.08) * _GAP_FACTOR[int(grade)]

    def bone(
        self,
        name: str,
        start: np.ndarray,
        angle: float,
        length: float,
        radius: float,
        head: float = 1.0,
        base: float = 1.0,
    ) -> _Bone:
        b = _Bone(
            name, np.asarray(start, float), _unit(angle), self.jitter(length), radius, head, base
        )
        self.bones[name] = b
        return b

    def after(
        self,
        parent: _Bone,
        name: str,
        angle: float,
        length: float,
        radius: float,
        *,
        site: str | None = None,
        base_gap: float = 8.0,
        lateral: float = 0.0,
        head: float = 1.0,
        base: float = 1.0,
    ) -> _Bone:
        """A bone distal to ``parent`` across a joint; a scored ``site`` records the joint."""
        d = _unit(angle)
        gap = self.gap(site, base_gap)
        origin = parent.end + lateral * _perp(parent.direction)
        child = self.bone(name, origin + gap * d, angle, length, radius, head, base)
        if site is not None:
            self.sites[site] = _JointGeom(
                self.joints[site], origin + 0.5 * gap * d, parent.name, name, d
            )
        return child

    def bone_site(self, site: str, bone: str, where: str = "centre") -> None:
        """An erosion-only site on one bone (wrist bones, distal radius/ulna, base of MC1)."""
        b = self.bones[bone]
        point = {"centre": b.centre, "head": b.head_circle[0], "base": b.base_circle[0]}[where]
        self.sites[site] = _JointGeom(self.joints[site], point.copy(), bone)


def _build_hand(sk: _Skeleton) -> list[list[str]]:
    """Left hand, PA view, fingers up, thumb towards +x. Units: image height 1000."""
    rng = sk.rng
    dev = rng.normal(0, 3)  # radial/ulnar deviation of the whole hand
    spread = rng.uniform(0.7, 1.35)
    radius = sk.bone("radius", (480, 1080), dev, 345, 28, head=1.25)
    ulna = sk.bone("ulna", (392, 1085), dev, 330, 16, head=1.2)
    sk.bone_site("wrist_radius", "radius", "head")
    sk.bone_site("wrist_ulna", "ulna", "head")
    # Proximal carpal row across the radiocarpal joint.
    lunate = sk.after(radius, "lunate", dev, 50, 23, site="wrist_radcar", base_gap=9, lateral=-20)
    scaphoid = sk.bone(
        "scaphoid",
        radius.end + 22 * _perp(radius.direction) + 8 * radius.direction,
        dev + 18,
        62,
        21,
    )
    triquetrum = sk.after(ulna, "triquetrum", dev - 5, 40, 19, base_gap=10, lateral=-6)
    sk.bone(
        "pisiform",
        triquetrum.centre - 14 * _perp(triquetrum.direction) - 13 * triquetrum.direction,
        dev,
        26,
        13,
    )
    # Distal row.
    trapezium = sk.after(scaphoid, "trapezium", dev + 32, 46, 19, site="wrist_mna", base_gap=8)
    trapezoid = sk.after(scaphoid, "trapezoid", dev + 8, 38, 16, base_gap=7, lateral=-24)
    capitate = sk.after(
        lunate, "capitate", dev + 2, 72, 22, site="wrist_capnlun", base_gap=8, lateral=6
    )
    hamate = sk.after(triquetrum, "hamate", dev - 8, 58, 21, base_gap=7, lateral=8)
    for site, bone in (
        ("wrist_nav", "scaphoid"),
        ("wrist_lunate", "lunate"),
        ("wrist_mul", "trapezium"),
    ):
        sk.bone_site(site, bone)
    # Metacarpals.
    angles = {
        k: dev + spread * a + rng.normal(0, 2)
        for k, a in {1: 40, 2: 10, 3: 0, 4: -9, 5: -19}.items()
    }
    mc = {
        1: sk.after(trapezium, "mc1", angles[1], 135, 15, base_gap=8, head=1.25, base=1.3),
        2: sk.after(trapezoid, "mc2", angles[2], 200, 14, base_gap=7, head=1.3, base=1.25),
        3: sk.after(
            capitate, "mc3", angles[3], 190, 14, site="wrist_cmc3", base_gap=7, head=1.3, base=1.25
        ),
        4: sk.after(
            hamate,
            "mc4",
            angles[4],
            172,
            12,
            site="wrist_cmc4",
            base_gap=7,
            lateral=11,
            head=1.3,
            base=1.25,
        ),
        5: sk.after(
            hamate,
            "mc5",
            angles[5],
            156,
            12,
            site="wrist_cmc5",
            base_gap=7,
            lateral=-13,
            head=1.3,
            base=1.3,
        ),
    }
    sk.bone_site("wrist_mc1", "mc1", "base")
    # Thumb.
    t1 = sk.after(
        mc[1], "thumb_p1", angles[1] - 6, 92, 13, site="mcp_1", base_gap=11, head=1.2, base=1.3
    )
    sk.after(
        t1,
        "thumb_p2",
        angles[1] - 8 + rng.normal(0, 3),
        66,
        11,
        site="ip",
        base_gap=8,
        head=0.95,
        base=1.25,
    )
    rays = [["radius", "scaphoid", "trapezium", "mc1", "thumb_p1", "thumb_p2"]]
    lengths = {2: (125, 75, 55), 3: (135, 85, 60), 4: (126, 80, 58), 5: (100, 60, 50)}
    for k in (2, 3, 4, 5):
        extra = spread * (k - 3.5) * -2.5 + rng.normal(0, 1.5)
        a = angles[k] + extra
        p1 = sk.after(
            mc[k], f"p1_{k}", a, lengths[k][0], 12, site=f"mcp_{k}", base_gap=11, head=1.2, base=1.3
        )
        p2 = sk.after(
            p1,
            f"p2_{k}",
            a + rng.normal(0, 2),
            lengths[k][1],
            10.5,
            site=f"pip_{k}",
            base_gap=9,
            head=1.15,
            base=1.25,
        )
        sk.after(
            p2, f"p3_{k}", a + rng.normal(0, 2), lengths[k][2], 9, base_gap=7, head=0.9, base=1.2
        )
        rays.append([f"mc{k}", f"p1_{k}", f"p2_{k}", f"p3_{k}"])
    return rays


def _build_foot(sk: _Skeleton) -> list[list[str]]:
    """Left foot, dorsoplantar view, toes up, hallux towards +x. Units: image height 1000."""
    rng = sk.rng
    dev = rng.normal(0, 3)
    spread = rng.uniform(0.75, 1.3)
    talus = sk.bone("talus", (400, 1060), dev, 170, 62)
    navicular = sk.after(talus, "navicular", dev + 5, 48, 42, base_gap=8, lateral=22)
    cuboid = sk.after(talus, "cuboid", dev - 10, 95, 34, base_gap=6, lateral=-78)
    cun_m = sk.after(navicular, "cuneiform_medial", dev + 6, 78, 24, base_gap=7, lateral=28)
    cun_i = sk.after(navicular, "cuneiform_intermediate", dev, 52, 18, base_gap=7, lateral=-6)
    cun_l = sk.after(navicular, "cuneiform_lateral", dev - 5, 58, 18, base_gap=7, lateral=-38)
    angles = {
        k: dev + spread * a + rng.normal(0, 1.5)
        for k, a in {1: 7, 2: 0, 3: -6, 4: -12, 5: -20}.items()
    }
    mt = {
        1: sk.after(cun_m, "mt1", angles[1], 200, 21, base_gap=7, head=1.25, base=1.2),
        2: sk.after(cun_i, "mt2", angles[2], 245, 13, base_gap=7, head=1.3, base=1.3),
        3: sk.after(cun_l, "mt3", angles[3], 235, 13, base_gap=7, head=1.3, base=1.3),
        4: sk.after(cuboid, "mt4", angles[4], 225, 13, base_gap=7, lateral=16, head=1.3, base=1.3),
        5: sk.after(
            cuboid, "mt5", angles[5], 212, 14, base_gap=7, lateral=-20, head=1.25, base=1.55
        ),
    }
    h1 = sk.after(
        mt[1], "hallux_p1", angles[1] - 3, 100, 18, site="mtp_1", base_gap=11, head=1.15, base=1.25
    )
    sk.after(
        h1,
        "hallux_p2",
        angles[1] - 4 + rng.normal(0, 2),
        68,
        16,
        site="ip",
        base_gap=8,
        head=0.95,
        base=1.15,
    )
    rays = [["talus", "navicular", "cuneiform_medial", "mt1", "hallux_p1", "hallux_p2"]]
    toe_lengths = {2: (82, 36, 34), 3: (74, 33, 32), 4: (68, 31, 30), 5: (62, 28, 28)}
    for k in (2, 3, 4, 5):
        a = angles[k] + spread * (k - 3.5) * -1.5 + rng.normal(0, 1.5)
        p1 = sk.after(
            mt[k],
            f"toe_p1_{k}",
            a,
            toe_lengths[k][0],
            11,
            site=f"mtp_{k}",
            base_gap=10,
            head=1.15,
            base=1.3,
        )
        p2 = sk.after(
            p1,
            f"toe_p2_{k}",
            a + rng.normal(0, 3),
            toe_lengths[k][1],
            10,
            base_gap=6,
            head=1.1,
            base=1.2,
        )
        sk.after(
            p2,
            f"toe_p3_{k}",
            a + rng.normal(0, 3),
            toe_lengths[k][2],
            9,
            base_gap=6,
            head=0.9,
            base=1.15,
        )
        rays.append([f"mt{k}", f"toe_p1_{k}", f"toe_p2_{k}", f"toe_p3_{k}"])
    return rays


# =============================================================================== scores


# =============================================================================== rendering


def _capsule_sdf(
    xx: np.ndarray, yy: np.ndarray, p0: np.ndarray, p1: np.ndarray, r: float
) -> np.ndarray:
    ba = p1 - p0
    px, py = xx - p0[0], yy - p0[1]
    denom = float(ba @ ba)
    h = np.clip((px * ba[0] + py * ba[1]) / denom, 0.0, 1.0) if denom > 0 else 0.0
    return np.hypot(px - ba[0] * h, py - ba[1] * h) - r


def _bbox(points: list[np.ndarray], pad: float, shape: tuple[int, int]) -> tuple[slice, slice]:
    pts = np.asarray(points)
    x0 = max(math.floor(pts[:, 0].min() - pad), 0)
    x1 = min(math.ceil(pts[:, 0].max() + pad) + 1, shape[1])
    y0 = max(math.floor(pts[:, 1].min() - pad), 0)
    y1 = min(math.ceil(pts[:, 1].max() + pad) + 1, shape[0])
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


class _Transform:
    """Similarity transform from layout units to image pixels (then optional mirroring)."""

    def __init__(self, scale: float, angle: float, src_c: np.ndarray, dst_c: np.ndarray):
        a = math.radians(angle)
        self.m = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        self.scale, self.src_c, self.dst_c = scale, src_c, dst_c

    def point(self, p: np.ndarray) -> np.ndarray:
        return self.m @ (np.asarray(p, float) - self.src_c) + self.dst_c

    def vector(self, v: np.ndarray) -> np.ndarray:
        w = self.m @ np.asarray(v, float)
        return w / np.linalg.norm(w)


def _fit_transform(
    sk: _Skeleton, shape: tuple[int, int], rng: np.random.Generator, u: float
) -> _Transform:
    """Random pose that keeps every bone (except the cut-off forearm/hindfoot) in the image."""
    pts = []
    for b in sk.bones.values():
        if b.name in ("radius", "ulna", "talus"):
            pts.append(b.end)
            continue
        for p0, p1, r in b.capsules():
            pts += [p0 + r, p0 - r, p1 + r, p1 - r]
    pts = np.asarray(pts)
    lo, hi = pts.min(0), pts.max(0)
    centre = (lo + hi) / 2
    h, w = shape
    margin = 0.07
    angle = rng.normal(0, 5)
    fit = min(w * (1 - 2 * margin) / (hi[0] - lo[0]), h * (1 - 2 * margin) / (hi[1] - lo[1]))
    # the rotated box needs a little more room
    fit /= 1 + abs(math.sin(math.radians(angle))) * 0.5
    scale = fit * rng.uniform(0.84, 0.98)
    half = scale * (hi - lo) / 2
    slack_x = max(w / 2 - margin * w - half[0], 0)
    slack_y = max(h / 2 - margin * h - half[1], 0)
    dst = np.array([w / 2 + rng.uniform(-slack_x, slack_x), h / 2 + rng.uniform(-slack_y, slack_y)])
    return _Transform(scale, angle, centre, dst)


def _limb_shape(kind: str, height: int) -> tuple[int, int]:
    width = round(height * (0.82 if kind == "hand" else 0.62))
    return height, width


def render_limb(
    limb: Limb | str,
    grades: dict[str, dict[str, int]],
    rng: np.random.Generator,
    *,
    height: int = 1200,
    noise: bool = True,
    pose_rng: np.random.Generator | None = None,
) -> LimbPhantom:
    """Draw one radiograph whose pixels show ``grades`` (``{joint_id: {score_type: grade}}``).

    ``pose_rng`` (default: ``rng``) decides the anatomy and pose; passing two generators with
    the same seed renders the same pose with different grades, which the tests use.
    """
    limb = Limb.parse(limb)
    pose_rng = pose_rng or rng
    by_site = {j.site: grades.get(j.id, {}) for j in joints_for_limb(limb)}
    sk = _Skeleton(limb, pose_rng, by_site)
    rays = _build_hand(sk) if limb.kind == "hand" else _build_foot(sk)
    shape = _limb_shape(limb.kind, height)
    h, w = shape
    u = height / 1000.0
    tf = _fit_transform(sk, shape, pose_rng, u)
    mirror = limb.side == "right"

    def px(p: np.ndarray) -> np.ndarray:
        q = tf.point(p)
        return np.array([w - 1 - q[0], q[1]]) if mirror else q

    def pvec(v: np.ndarray) -> np.ndarray:
        q = tf.vector(v)
        return np.array([-q[0], q[1]]) if mirror else q

    s = tf.scale
    yy_full, xx_full = np.mgrid[0:h, 0:w].astype(np.float32)

    # --- bones: union signed distance and the cortex thickness of the nearest bone
    sdf = np.full(shape, np.inf, np.float32)
    cortex = np.zeros(shape, np.float32)
    for b in sk.bones.values():
        for p0, p1, r in b.capsules():
            a, c, rr = px(p0), px(p1), r * s
            ys, xs = _bbox([a, c], rr + 2, shape)
            if ys.stop <= ys.start or xs.stop <= xs.start:
                continue
            d = _capsule_sdf(xx_full[ys, xs], yy_full[ys, xs], a, c, rr)
            closer = d < sdf[ys, xs]
            sdf[ys, xs] = np.where(closer, d, sdf[ys, xs])
            ct = float(np.clip(0.26 * b.radius * s, 2.0 * u, 6.5 * u))
            cortex[ys, xs] = np.where(closer, ct, cortex[ys, xs])
    inside = np.clip(0.5 - sdf, 0, 1)
    shell = inside * np.clip(sdf + cortex + 0.5, 0, 1)
    trabecular = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.6 * u)
    trabecular /= trabecular.std() + 1e-6
    bone = 0.62 * shell + (inside - shell) * (0.34 + 0.05 * trabecular)

    # --- erosions: cortical defects that remove bone at the site
    bites: dict[str, list[tuple[float, float, float]]] = {}
    centres, polygons, axes, gaps, radii = {}, {}, {}, {}, {}
    for site, geom in sk.sites.items():
        joint = geom.joint
        centre = px(geom.centre)
        centres[joint.id] = (float(centre[0]), float(centre[1]))
        prox = sk.bones[geom.proximal]
        if geom.distal is not None:
            dist = sk.bones[geom.distal]
            (ca, ra), (cb, rb) = prox.head_circle, dist.base_circle
            axis = pvec(geom.axis)
            axes[joint.id] = (float(axis[0]), float(axis[1]))
            gaps[joint.id] = float(np.dot(px(dist.start) - px(prox.end), axis))
            radii[joint.id] = float(min(ra, rb) * s)
            if joint.narrowing:
                polygons[joint.id] = _joint_space_polygon(px(ca), ra * s, px(cb), rb * s, axis)
            circles = [(px(ca), ra * s, axis), (px(cb), rb * s, -axis)]
        else:
            radii[joint.id] = float(prox.radius * s)
            circles = [
                (centre, prox.radius * s * (1.2 if site.startswith("wrist_r") else 1.0), None)
            ]
        grade = int(by_site.get(site, {}).get("erosion", 0)) if joint.erosion else 0
        if grade:
            bites[joint.id] = _bite_circles(joint, grade, circles, pose_rng, s)
    for bite_list in bites.values():
        for bx, by, br in bite_list:
            ys, xs = _bbox([np.array([bx, by])], br + 2, shape)
            d = np.hypot(xx_full[ys, xs] - bx, yy_full[ys, xs] - by) - br
            bone[ys, xs] *= np.clip(d + 0.5, 0, 1)

    # --- soft tissue silhouette
    soft = _soft_tissue(sk, rays, px, s, shape, xx_full, yy_full, u)
    density = soft + bone
    image = _expose(density, rng, u, noise=noise)
    image = collimate_and_mark(image, limb, rng, u)
    pixels = np.clip(image * 4095.0, 0, 4095).astype(np.uint16)
    return LimbPhantom(
        limb=limb,
        image=pixels,
        centres=centres,
        polygons=polygons,
        axes=axes,
        gap_widths=gaps,
        bone_radius=radii,
        grades={j.id: dict(grades.get(j.id, {})) for j in joints_for_limb(limb)},
        spacing_mm=(250.0 if limb.kind == "hand" else 270.0) / height,
        bites=bites,
    )


def _joint_space_polygon(
    ca: np.ndarray, ra: float, cb: np.ndarray, rb: float, axis: np.ndarray, n: int = 9
) -> list[tuple[float, float]]:
    """Region between the head of the proximal bone and the base of the distal one.

    In the joint's frame (axial = ``axis``, lateral = its normal) the proximal surface is
    ``a(t)`` and the distal one ``b(t)``; the polygon runs along ``a`` and back along
    ``max(b, a + 1)``, so a fused joint still gets a thin, simple polygon on its joint line.
    """
    lat = np.array([-axis[1], axis[0]])
    origin = (ca + cb) / 2
    a_ax, a_lat = float((ca - origin) @ axis), float((ca - origin) @ lat)
    b_ax, b_lat = float((cb - origin) @ axis), float((cb - origin) @ lat)
    half = 0.78 * min(ra, rb)
    centre_lat = (a_lat + b_lat) / 2
    ts = np.linspace(centre_lat - half, centre_lat + half, n)
    a = a_ax + np.sqrt(np.clip(ra**2 - (ts - a_lat) ** 2, 0, None))
    b = b_ax - np.sqrt(np.clip(rb**2 - (ts - b_lat) ** 2, 0, None))
    b = np.maximum(b, a + 1.0)
    pts = [origin + t * lat + v * axis for t, v in zip(ts, a, strict=True)]
    pts += [origin + t * lat + v * axis for t, v in zip(ts[::-1], b[::-1], strict=True)]
    return [(float(p[0]), float(p[1])) for p in pts]


def _bite_circles(
    joint: Joint,
    grade: int,
    circles: list[tuple[np.ndarray, float, np.ndarray | None]],
    rng: np.random.Generator,
    s: float,
) -> list[tuple[float, float, float]]:
    """``grade`` cortical defects on the bone ends at the site, larger for higher grades."""
    top = joint.max_score(ScoreType.EROSION)
    level = grade / top  # 0..1
    n = grade if top == 5 else math.ceil(grade / 2) + (grade >= 8)
    out = []
    for k in range(n):
        centre, r, axis = circles[k % len(circles)]
        if axis is None:  # a single bone: anywhere on its outline
            theta = rng.uniform(0, 2 * math.pi)
            direction = np.array([math.cos(theta), math.sin(theta)])
        else:  # marginal "bare area" next to the joint, alternating sides
            lateral = np.array([-axis[1], axis[0]]) * (1 if (k // len(circles)) % 2 == 0 else -1)
            tilt = math.radians(rng.uniform(35, 75))
            direction = math.cos(tilt) * axis + math.sin(tilt) * lateral
        bite_r = r * (0.22 + 0.3 * level) * rng.uniform(0.9, 1.1)
        point = centre + direction * (r - 0.25 * bite_r)
        out.append((float(point[0]), float(point[1]), float(bite_r)))
    return out


def _soft_tissue(
    sk: _Skeleton,
    rays: list[list[str]],
    px: Callable[[np.ndarray], np.ndarray],
    s: float,
    shape: tuple[int, int],
    xx: np.ndarray,
    yy: np.ndarray,
    u: float,
) -> np.ndarray:
    from skimage.draw import polygon as fill_polygon
    from skimage.morphology import convex_hull_image

    mask = np.zeros(shape, bool)
    for ray in rays:
        for name in ray:
            b = sk.bones[name]
            a, c = px(b.start), px(b.end)
            pad = (b.radius + (20 if "radius" not in name else 14)) * s
            ys, xs = _bbox([a, c], pad + 2, shape)
            mask[ys, xs] |= _capsule_sdf(xx[ys, xs], yy[ys, xs], a, c, pad) < 0
    body = [b for b in sk.bones.values() if not b.name.startswith(("p", "thumb", "hallux", "toe"))]
    hull_pts = []
    for b in body:
        for p in (b.start, b.end, b.centre):
            for off in (-1, 1):
                hull_pts.append(px(p + off * (b.radius + 14) * _perp(b.direction)))
    hull = np.asarray(hull_pts)
    rr, cc = fill_polygon(hull[:, 1], hull[:, 0], shape)
    body_mask = np.zeros(shape, bool)
    body_mask[rr, cc] = True
    mask |= convex_hull_image(body_mask) if body_mask.any() else body_mask
    soft = ndimage.gaussian_filter(mask.astype(np.float32), 5 * u)
    return 0.2 * soft


def _expose(density: np.ndarray, rng: np.random.Generator, u: float, *, noise: bool) -> np.ndarray:
    """Detector response: heel effect, exposure, gamma, blur and quantum/electronic noise."""
    h, _w = density.shape
    heel = 1.0 + rng.uniform(-0.08, 0.08) * np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    image = density * heel * rng.uniform(0.88, 1.12) + rng.uniform(0.02, 0.06)
    image = np.clip(image, 0, None) ** rng.uniform(0.85, 1.2)
    image = ndimage.gaussian_filter(image, rng.uniform(0.7, 1.3) * u)
    if noise:
        sigma = rng.uniform(0.008, 0.02)
        image = image + rng.standard_normal(image.shape).astype(np.float32) * sigma * np.sqrt(
            np.clip(image, 0.05, None)
        )
    return np.clip(image, 0, 1)


def collimate_and_mark(
    image: np.ndarray, limb: Limb, rng: np.random.Generator, u: float
) -> np.ndarray:
    """Collimator borders (white or digitally blacked out) and a lead L/R marker."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = image.shape
    inset = rng.uniform(0.0, 0.035, size=4) * np.array([h, h, w, w])
    top, bottom, left, right = (int(v) for v in inset)
    if rng.random() < 0.7 and (top or bottom or left or right):
        level = 0.92 if rng.random() < 0.5 else 0.0
        image[:top] = level
        image[h - bottom :] = level
        image[:, :left] = level
        image[:, w - right :] = level
    size = max(int(40 * u), 12)
    canvas = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(canvas).text(
        (size // 3, 0), limb.value[0], fill=255, font=ImageFont.load_default(size=size)
    )
    letter = np.asarray(canvas, np.float32) / 255.0
    corner_y = top + int(0.02 * h) if rng.random() < 0.5 else h - bottom - int(0.02 * h) - 2 * size
    corner_x = (
        (left + int(0.03 * w)) if rng.random() < 0.5 else (w - right - int(0.03 * w) - 2 * size)
    )
    corner_y = int(np.clip(corner_y, 0, h - 2 * size))
    corner_x = int(np.clip(corner_x, 0, w - 2 * size))
    region = image[corner_y : corner_y + 2 * size, corner_x : corner_x + 2 * size]
    region[:] = np.maximum(region, 0.97 * letter)
    return image


# =============================================================================== ultrasound


def render_ultrasound(
    site: str,
    synovial_hypertrophy: int,
    vascularity: int,
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (480, 640),
) -> UltrasoundPhantom:
    """A longitudinal dorsal scan of a joint: two bone surfaces, a joint gap, synovium."""
    if synovial_hypertrophy == 0 and vascularity > 0:
        raise ValueError("vascularity > 0 needs synovial hypertrophy > 0")
    h, w = shape
    # the scan area inside the screenshot (text and colour bar live outside it)
    sy0, sy1, sx0, sx1 = int(0.1 * h), int(0.92 * h), int(0.2 * w), int(0.84 * w)
    sh_, sw_ = sy1 - sy0, sx1 - sx0
    yy, xx = np.mgrid[0:sh_, 0:sw_].astype(np.float32)
    gap_x = sw_ * rng.uniform(0.44, 0.56)
    bone_y = sh_ * rng.uniform(0.55, 0.66)
    tilt = rng.uniform(-0.06, 0.06)
    gap_half = sw_ * rng.uniform(0.03, 0.045)
    head_r = sw_ * rng.uniform(0.16, 0.22)
    # bone surfaces: the rounded metacarpal head (left) dipping into the joint, the flat
    # phalanx base (right) with a small lip; no bone in the gap itself
    left_edge = gap_x - gap_half
    t = np.clip((xx - (left_edge - head_r)) / head_r, 0, 1)
    head = bone_y + 0.16 * sh_ * t**2.2
    base = (
        bone_y + 0.02 * sh_ - 0.03 * sh_ * np.exp(-(((xx - gap_x - gap_half) / (0.03 * sw_)) ** 2))
    )
    surface = np.where(xx < gap_x, head, base) + tilt * (xx - gap_x)
    in_gap = np.abs(xx - gap_x) < gap_half
    echo = 0.35 + 0.1 * np.exp(-yy / (0.15 * sh_))  # subcutaneous tissue
    echo += 0.5 * np.exp(-(((yy - 0.03 * sh_) / (0.012 * sh_)) ** 2))  # skin line
    tendon = np.abs(yy - bone_y * 0.42) < 0.045 * sh_
    echo = np.where(tendon, echo + 0.12 * (1 + np.sin(yy * 0.9)), echo)  # fibrillar tendon
    dist = yy - surface
    cortex = (np.abs(dist) < 0.012 * sh_ + 1) & ~in_gap
    shadow = (dist > 0.012 * sh_ + 1) & ~in_gap
    echo = np.where(cortex, 1.0, echo)
    echo = np.where(shadow, 0.05 * np.exp(-dist / (0.2 * sh_)), echo)
    echo = np.where(in_gap & (dist > 0), 0.12, echo)  # joint cavity between the bone ends
    # synovial region: hypoechoic, between the bones and a dome whose height and width grow
    # with the grade (1: inside the recess, 2: above the line of the bone tops, 3: convex
    # and spreading along the shafts)
    line_y = bone_y + tilt * (xx - gap_x)
    syn = np.zeros_like(echo, dtype=bool)
    if synovial_hypertrophy:
        width = {1: 2.2, 2: 3.4, 3: 5.0}[synovial_hypertrophy] * gap_half * 2
        rise = {1: -0.02, 2: 0.07, 3: 0.15}[synovial_hypertrophy] * sh_
        width *= rng.uniform(0.9, 1.1)
        rise *= rng.uniform(0.85, 1.15)
        u_ = np.clip(1 - ((xx - gap_x) / width) ** 2, 0, None)
        top = (
            line_y
            + 0.03 * sh_
            - (rise + 0.03 * sh_) * u_ ** (0.6 if synovial_hypertrophy == 3 else 1.0)
        )
        syn = (yy > top) & (yy < np.maximum(surface - 2, top)) & (u_ > 0)
        syn |= in_gap & (yy > top) & (yy < bone_y + 0.1 * sh_) & (u_ > 0)
        # every grade >= 1 fills at least the joint recess, whatever the tilt
        recess = ((xx - gap_x) / (1.6 * gap_half)) ** 2 + (
            (yy - bone_y - 0.03 * sh_) / (0.035 * sh_)
        ) ** 2 < 1
        syn |= recess & (yy < np.maximum(surface - 1, bone_y + 0.04 * sh_))
        soft = ndimage.gaussian_filter(syn.astype(np.float32), 1.2)
        echo = echo * (1 - soft) + 0.06 * soft
    speckle = rng.rayleigh(1.0, size=echo.shape).astype(np.float32)
    speckle = ndimage.gaussian_filter(speckle, (0.8, 1.8))
    scan = np.clip(echo * speckle * 0.9, 0, 1)
    scan *= np.clip(1.1 - 0.5 * yy / sh_, 0.3, 1)  # depth attenuation
    grey = np.zeros((h, w), np.float32)
    grey[sy0:sy1, sx0:sx1] = scan
    grey_u8 = (np.clip(grey, 0, 1) * 255).astype(np.uint8)
    grey_u8 = _us_overlay(grey_u8, rng, colour=False)

    # ROI: the annotator's box around the joint recess
    bx0 = gap_x - gap_half * 7.5 * rng.uniform(0.9, 1.1)
    bx1 = gap_x + gap_half * 7.5 * rng.uniform(0.9, 1.1)
    by0 = bone_y - 0.36 * sh_ * rng.uniform(0.9, 1.1)
    by1 = bone_y + 0.14 * sh_
    roi = (float(bx0 + sx0), float(by0 + sy0), float(bx1 + sx0), float(by1 + sy0))

    # Doppler: same anatomy, its own noise, colour box and flow in the synovium
    speckle2 = ndimage.gaussian_filter(
        rng.rayleigh(1.0, size=echo.shape).astype(np.float32), (0.8, 1.8)
    )
    scan2 = np.clip(echo * speckle2 * 0.9, 0, 1) * np.clip(1.1 - 0.5 * yy / sh_, 0.3, 1)
    dop_grey = np.zeros((h, w), np.float32)
    dop_grey[sy0:sy1, sx0:sx1] = scan2
    doppler = np.repeat((np.clip(dop_grey, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    cx0 = int(sx0 + bx0 - 0.06 * sw_)
    cx1 = int(sx0 + bx1 + 0.06 * sw_)
    cy0 = int(sy0 + by0 - 0.05 * sh_)
    cy1 = int(sy0 + by1 + 0.03 * sh_)
    cx0, cx1 = max(cx0, sx0 + 2), min(cx1, sx1 - 2)
    cy0, cy1 = max(cy0, sy0 + 2), min(cy1, sy1 - 2)
    flow = _flow_mask(syn, vascularity, rng)
    flow_full = np.zeros((h, w), bool)
    flow_full[sy0:sy1, sx0:sx1] = flow
    box = np.zeros((h, w), bool)
    box[cy0:cy1, cx0:cx1] = True
    flow_full &= box
    red_yellow = rng.random() < 0.65
    velocity = rng.uniform(0.3, 1.0, size=(h, w)).astype(np.float32)
    velocity = ndimage.gaussian_filter(velocity, 2)
    colour = _flow_colours(velocity, red_yellow)
    doppler[flow_full] = colour[flow_full]
    # colour box outline
    outline = (180, 180, 180)
    doppler[cy0, cx0:cx1] = doppler[cy1 - 1, cx0:cx1] = outline
    doppler[cy0:cy1, cx0] = doppler[cy0:cy1, cx1 - 1] = outline
    doppler = _colour_bar(doppler, red_yellow, (sx1 + int(0.03 * w), sy0 + 10))
    doppler = _us_overlay(doppler, rng, colour=True)
    return UltrasoundPhantom(
        site=site,
        greyscale=grey_u8,
        doppler=doppler,
        roi=roi,
        colour_box=(cx0, cy0, cx1, cy1),
        synovial_hypertrophy=int(synovial_hypertrophy),
        vascularity=int(vascularity),
        flow_mask=flow_full,
        synovium_mask=_on_screen(syn, (h, w), (sy0, sx0)),
    )


def _on_screen(mask: np.ndarray, shape: tuple[int, int], at: tuple[int, int]) -> np.ndarray:
    """A scan-area mask placed on the screen (the heatmap benchmark's ground truth)."""
    out = np.zeros(shape, bool)
    out[at[0] : at[0] + mask.shape[0], at[1] : at[1] + mask.shape[1]] = mask
    return out


def _flow_mask(syn: np.ndarray, grade: int, rng: np.random.Generator) -> np.ndarray:
    """Doppler signal inside the synovium: single spots (1), < half (2), > half (3)."""
    if grade == 0 or not syn.any():
        return np.zeros_like(syn)
    ys, xs = np.nonzero(syn)
    area = len(ys)
    target = {1: 0.06, 2: 0.3, 3: 0.65}[grade] * area
    n_spots = {1: int(rng.integers(1, 4)), 2: 6, 3: 12}[grade]
    mask = np.zeros_like(syn)
    yy, xx = np.mgrid[0 : syn.shape[0], 0 : syn.shape[1]]
    radius = math.sqrt(target / (n_spots * math.pi)) * 1.15
    for _ in range(n_spots):
        i = int(rng.integers(area))
        r = max(radius * rng.uniform(0.7, 1.3), 2.5)  # a visible spot, never a lone pixel
        mask |= (yy - ys[i]) ** 2 + ((xx - xs[i]) / 1.4) ** 2 < r**2
    return mask & syn


def _flow_colours(velocity: np.ndarray, red_yellow: bool) -> np.ndarray:
    v = np.clip(velocity, 0, 1)
    if red_yellow:  # power Doppler: dark red -> orange -> yellow
        rgb = np.stack([150 + 105 * v, 30 + 200 * v**1.5, 10 + 40 * v**3], axis=-1)
    else:  # colour Doppler away from the probe: dark blue -> cyan
        rgb = np.stack([10 + 30 * v**2, 40 + 170 * v**1.5, 140 + 115 * v], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _colour_bar(img: np.ndarray, red_yellow: bool, at: tuple[int, int]) -> np.ndarray:
    x, y = at
    bar_h, bar_w = 120, 10
    v = np.linspace(1, 0, bar_h, dtype=np.float32)[:, None].repeat(bar_w, 1)
    top = _flow_colours(v, red_yellow)
    if not red_yellow:
        top = np.concatenate(
            [
                _flow_colours(v[: bar_h // 2], True)[:, :, ::-1][:, :, [2, 1, 0]],
                _flow_colours(v[bar_h // 2 :], False),
            ],
            axis=0,
        )
    y1, x1 = min(y + bar_h, img.shape[0]), min(x + bar_w, img.shape[1])
    img[y:y1, x:x1] = top[: y1 - y, : x1 - x]
    return img


def _us_overlay(img: np.ndarray, rng: np.random.Generator, *, colour: bool) -> np.ndarray:
    """Scanner screen furniture: white text, and on Doppler screens coloured text and an icon."""
    from PIL import Image, ImageDraw, ImageFont

    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=14)
    white = 230 if not colour else (230, 230, 230)
    draw.text((8, 8), f"L12-5  {rng.integers(8, 16)} MHz", fill=white, font=font)
    draw.text((8, 28), f"Depth {rng.uniform(2.0, 3.5):.1f} cm", fill=white, font=font)
    if colour:
        draw.text((8, 48), f"PRF {rng.uniform(0.5, 1.0):.1f} kHz", fill=(255, 220, 0), font=font)
        draw.text((8, 68), "CD Gain 60%", fill=(0, 210, 255), font=font)
        draw.rectangle(
            (img.shape[1] - 40, img.shape[0] - 40, img.shape[1] - 20, img.shape[0] - 20),
            fill=(230, 40, 40),
        )
    return np.asarray(pil).copy()


# =============================================================================== cohorts


@dataclass
class PatientPhantom:
    patient_id: str
    limbs: dict[str, LimbPhantom]
    ultrasound: list[UltrasoundPhantom]
    grades: dict[str, dict[str, int]]


def patient_id_for(seed: int, index: int) -> str:
    """Cohort-unique ids, so that cohorts of different seeds never share a patient id."""
    return f"S{int(seed)}-P{int(index) + 1:04d}"


def phantom_style(
    style: str,
) -> tuple[Callable[..., LimbPhantom], Callable[..., UltrasoundPhantom]]:
    """The (radiograph, ultrasound) renderers of a style; a clear error for an unknown one."""
    import importlib

    if style not in STYLES:
        raise ValueError(f"unknown phantom style {style!r}; choose one of {sorted(STYLES)}")
    renderers = []
    for modality in ("radiograph", "ultrasound"):
        module, _, name = STYLES[style][modality].partition(":")
        renderers.append(getattr(importlib.import_module(module), name))
    return renderers[0], renderers[1]


def generate_patient(
    seed: int, index: int, *, height: int = 1200, us_pairs: int = 2, style: str = DEFAULT_STYLE
) -> PatientPhantom:
    draw_limb, draw_ultrasound = phantom_style(style)
    rng = patient_rng(seed, index)
    grades = sample_patient_scores(rng)
    limbs = {}
    for limb in LIMBS:
        limb_rng = np.random.default_rng([int(seed), int(index), LIMBS.index(limb), 31])
        limbs[limb.value] = draw_limb(limb, grades, limb_rng, height=height)
    severity = np.mean(
        [g.get("erosion", 0) / 5 + g.get("narrowing", 0) / 4 for g in grades.values()]
    )
    us = []
    sites = rng.choice(len(US_SITES), size=min(us_pairs, len(US_SITES)), replace=False)
    for k in sites:
        side = "L" if rng.random() < 0.5 else "R"
        sh, vasc = sample_us_grades(rng, float(np.clip(severity * 1.3 + rng.normal(0, 0.1), 0, 1)))
        us.append(draw_ultrasound(f"{side}_{US_SITES[int(k)]}", sh, vasc, rng))
    return PatientPhantom(patient_id_for(seed, index), limbs, us, grades)


def _file_format(rng: np.random.Generator) -> str:
    """Mix of what real archives hold: DICOM (some MONOCHROME1) and 16-bit PNG."""
    return str(rng.choice(["dcm_mono2", "dcm_mono1", "png"], p=[0.4, 0.2, 0.4]))


def _write_patient(args: tuple[int, int, str, int, int, str]) -> dict[str, Any]:
    """Worker: render one patient and write its files; returns what the store needs."""
    seed, index, out_dir, height, us_pairs, style = args
    out = Path(out_dir)
    patient = generate_patient(seed, index, height=height, us_pairs=us_pairs, style=style)
    fmt_rng = np.random.default_rng([seed, index, 101])
    record: dict[str, Any] = {"patient_id": patient.patient_id, "radiographs": [], "ultrasound": []}
    for limb_name, ph in patient.limbs.items():
        fmt = _file_format(fmt_rng)
        stem = f"{patient.patient_id}_{limb_name}"
        if fmt == "png":
            path = write_png(out / "radiographs" / f"{stem}.png", ph.image)
        else:
            path = write_dicom(
                out / "radiographs" / f"{stem}.dcm",
                ph.image,
                patient_id=patient.patient_id,
                photometric="MONOCHROME1" if fmt == "dcm_mono1" else "MONOCHROME2",
                laterality=limb_name[0],
                body_part="HAND" if limb_name[1] == "H" else "FOOT",
                spacing=(ph.spacing_mm, ph.spacing_mm),
                bits_stored=12,
                uid_seed=f"{seed}-{index}-{limb_name}",
                series_description=f"phantom {Limb(limb_name).label}",
            )
        record["radiographs"].append(
            {
                "limb": limb_name,
                "path": str(path.relative_to(out)),
                "sha256": file_sha256(path),
                "height": int(ph.image.shape[0]),
                "width": int(ph.image.shape[1]),
                "centres": ph.centres,
                "polygons": ph.polygons,
                "grades": ph.grades,
            }
        )
    for k, us in enumerate(patient.ultrasound):
        stem = f"{patient.patient_id}_US{k + 1}_{us.site}"
        as_dicom = fmt_rng.random() < 0.3
        if style == "anatomical":  # scanner exports: RGB or YBR_FULL_422 (JPEG) DICOM, PNG, JPEG
            from .phantom_us import us_file_format, write_us_screen

            fmt = us_file_format(fmt_rng)
            gs, dp = (
                write_us_screen(
                    out / "ultrasound" / f"{stem}_{kind}",
                    pixels,
                    fmt,
                    patient_id=patient.patient_id,
                    uid_seed=f"{seed}-{index}-us{k}-{kind}",
                    description=f"phantom {us.site} {kind}",
                )
                for kind, pixels in (("gs", us.greyscale), ("doppler", us.doppler))
            )
        elif as_dicom:
            gs = write_dicom(
                out / "ultrasound" / f"{stem}_gs.dcm",
                us.greyscale,
                patient_id=patient.patient_id,
                modality="US",
                uid_seed=f"{seed}-{index}-us{k}-gs",
            )
            dp = write_dicom(
                out / "ultrasound" / f"{stem}_doppler.dcm",
                us.doppler,
                patient_id=patient.patient_id,
                modality="US",
                uid_seed=f"{seed}-{index}-us{k}-dp",
            )
        else:
            gs = write_png(out / "ultrasound" / f"{stem}_gs.png", us.greyscale)
            dp = write_png(out / "ultrasound" / f"{stem}_doppler.png", us.doppler)
        record["ultrasound"].append(
            {
                "site": us.site,
                "greyscale": str(gs.relative_to(out)),
                "doppler": str(dp.relative_to(out)),
                "greyscale_sha256": file_sha256(gs),
                "doppler_sha256": file_sha256(dp),
                "shape": list(us.greyscale.shape),
                "roi": list(us.roi),
                "colour_box": list(us.colour_box),
                "synovial_hypertrophy": us.synovial_hypertrophy,
                "vascularity": us.vascularity,
            }
        )
    return record


def _rater_reads(record: dict[str, Any], seed: int, index: int) -> dict[str, Any]:
    """The simulated raters' grades of one patient (their own random streams: no image or
    truth value depends on them)."""
    from .raters import read_patient, read_ultrasound

    truth = {j: g for rad in record["radiographs"] for j, g in rad["grades"].items()}
    pairs = [(u["synovial_hypertrophy"], u["vascularity"]) for u in record["ultrasound"]]
    return {
        "scores": read_patient(truth, seed, index),
        "ultrasound": read_ultrasound(pairs, seed, index),
    }


def _store_patient(
    store: Any, record: dict[str, Any], prov: Any, reads: dict[str, Any] | None = None
) -> None:
    """Truth (and the raters' grades) of one patient. Rater grades go in first, as human
    revisions under the raters' names: the truth is then the newest committed revision, the one
    every reader of the store resolves to."""
    from .store import Provenance

    scores = (reads or {}).get("scores", {})
    us_reads = (reads or {}).get("ultrasound", {})
    with store.transaction():
        for rad in record["radiographs"]:
            image_id = store.add_image(
                rad["path"],
                patient_id=record["patient_id"],
                limb=rad["limb"],
                width=rad["width"],
                height=rad["height"],
                sha256=rad["sha256"],
            )
            for joint in joints_for_limb(rad["limb"]):
                store.set_centre(image_id, joint.id, rad["centres"][joint.id], prov)
                if joint.id in rad["polygons"]:
                    store.set_polygon(image_id, joint.id, rad["polygons"][joint.id], prov)
                for score_type, grade in rad["grades"][joint.id].items():
                    for name, grades in scores.items():
                        rater = Provenance.human(name)
                        store.set_score(
                            image_id, joint.id, score_type, grades[joint.id][score_type], rater
                        )
                    store.set_score(image_id, joint.id, score_type, grade, prov)
        for k, us in enumerate(record["ultrasound"]):
            h, w = us["shape"][:2]
            gs_id = store.add_image(
                us["greyscale"],
                patient_id=record["patient_id"],
                modality="us_greyscale",
                width=w,
                height=h,
                sha256=us["greyscale_sha256"],
            )
            dp_id = store.add_image(
                us["doppler"],
                patient_id=record["patient_id"],
                modality="us_doppler",
                width=w,
                height=h,
                sha256=us["doppler_sha256"],
            )
            pair_id = store.add_us_pair(gs_id, dp_id, site=us["site"])
            store.set_roi(gs_id, tuple(us["roi"]), prov)
            store.set_roi(dp_id, tuple(us["roi"]), prov)
            for name, pairs in us_reads.items():
                store.set_us_score(pair_id, *pairs[k], Provenance.human(name))
            store.set_us_score(pair_id, us["synovial_hypertrophy"], us["vascularity"], prov)


def _iter_records(
    jobs: list[tuple[int, int, str, int, int, str]], workers: int
) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        yield from map(_write_patient, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_write_patient, jobs, chunksize=2)


def generate_cohort(
    out_dir: str | Path,
    n_patients: int,
    seed: int = 0,
    *,
    height: int = 1200,
    us_pairs: int = 2,
    workers: int | None = None,
    progress: bool = True,
    style: str = DEFAULT_STYLE,
    raters: bool = True,
) -> dict[str, Any]:
    """Write a phantom cohort: images, the annotation store, RA2-DREAM and ultrasound CSVs.

    With ``raters`` (default) two simulated readers grade every joint and ultrasound pair
    (:mod:`annotation_tools.raters`): their tables go to ``raters/`` and into the store as
    human revisions under their names, older than the truth, which stays what the store
    resolves to. They draw from their own random streams: images and truth are the same with
    and without them. Returns the summary also written to ``cohort.json``. The folder is a
    ready project: open it in napari or export it with ``ra-joints export``.
    """
    from tqdm.auto import tqdm

    from .store import AnnotationStore, Provenance

    if n_patients < 1:
        raise ValueError("a cohort needs at least one patient")
    phantom_style(style)  # an unknown style fails before any file is written
    if height < 256:
        raise ValueError(f"height {height} is too small to draw joints; use at least 256 px")
    out = Path(out_dir)
    if (out / "cohort.json").exists() or (out / "ra_joints.sqlite").exists():
        raise FileExistsError(f"{out} already holds a cohort; choose an empty folder")
    (out / "radiographs").mkdir(parents=True, exist_ok=True)
    (out / "ultrasound").mkdir(parents=True, exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 4)
    started = time.perf_counter()
    prov = Provenance.phantom(GENERATOR, f"{__version__}+seed{seed}")
    jobs = [(int(seed), i, str(out), int(height), int(us_pairs), style) for i in range(n_patients)]
    us_rows = []
    rater_names = list(_rater_names()) if raters else []
    rater_us: dict[str, list[dict[str, Any]]] = {name: [] for name in rater_names}
    with AnnotationStore.open(out) as store:
        records = _iter_records(jobs, workers)
        for index, record in enumerate(
            tqdm(records, total=n_patients, desc="phantom patients", disable=not progress)
        ):
            reads = _rater_reads(record, int(seed), index) if raters else None
            _store_patient(store, record, prov, reads)
            rows = [{"patient_id": record["patient_id"], **u} for u in record["ultrasound"]]
            us_rows += rows
            for name in rater_names:
                rater_us[name] += [
                    {**row, "synovial_hypertrophy": sh, "vascularity": v}
                    for row, (sh, v) in zip(rows, reads["ultrasound"][name], strict=True)
                ]
        store.export_dream_csv(out / "scores_ra2dream.csv")
        rater_files: dict[str, dict[str, str]] = {}
        if raters:
            (out / "raters").mkdir(exist_ok=True)
        for name in rater_names:
            rater_files[name] = {
                "scores_csv": f"raters/{name}.csv",
                "ultrasound_csv": f"raters/ultrasound_{name}.csv",
                "annotator": name,
            }
            store.export_dream_csv(out / rater_files[name]["scores_csv"], authors=[name])
            _write_us_csv(out / rater_files[name]["ultrasound_csv"], rater_us[name])
        summary = store.summary()
    _write_us_csv(out / "ultrasound_scores.csv", us_rows)
    info = {
        "generator": GENERATOR,
        "version": __version__,
        "seed": int(seed),
        "style": style,
        "patients": int(n_patients),
        "height": int(height),
        "ultrasound_pairs_per_patient": int(us_pairs),
        "radiographs": summary["radiographs"],
        "ultrasound_pairs": summary["ultrasound_pairs"],
        "store": "ra_joints.sqlite",
        "scores_csv": "scores_ra2dream.csv",
        "ultrasound_csv": "ultrasound_scores.csv",
        "raters": rater_files,
        "seconds": round(time.perf_counter() - started, 2),
        "note": "Phantom data: figures measured on it are not clinical figures.",
    }
    if raters:
        info["rater_note"] = (
            "Simulated readers (annotation_tools.raters, docs/phantoms.md 'Simulated raters'): "
            "human revisions under their names in the store, older than the phantom truth."
        )
    (out / "cohort.json").write_text(json.dumps(info, indent=2))
    return info


def _rater_names() -> tuple[str, ...]:
    from .raters import FITTED

    return FITTED.raters


def _write_us_csv(path: Path, us_rows: list[dict[str, Any]]) -> None:
    """The ultrasound grade table (truth or one rater's; the ROI box is the drawn one)."""
    with open(path, "w", newline="") as handle:
        fields = [
            "patient_id",
            "site",
            "greyscale",
            "doppler",
            "synovial_hypertrophy",
            "vascularity",
            "combined",
            "roi_x0",
            "roi_y0",
            "roi_x1",
            "roi_y1",
        ]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in us_rows:
            x0, y0, x1, y1 = row["roi"]
            writer.writerow(
                {
                    **{k: row[k] for k in fields[:6]},
                    "combined": max(row["synovial_hypertrophy"], row["vascularity"]),
                    "roi_x0": round(x0, 2),
                    "roi_y0": round(y0, 2),
                    "roi_x1": round(x1, 2),
                    "roi_y1": round(y1, 2),
                }
            )
