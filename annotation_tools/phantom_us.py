"""Physical joint-ultrasound phantoms: B-mode from scatterers, site anatomy, EOSS grades by
their definitions, Doppler with its artefacts, and scanner screens (the ``anatomical`` style).

Why: the schematic phantoms (``phantoms.render_ultrasound``) are solved by counting dark and
colour pixels, so a model's score on them shows nothing. Here the grades are drawn the way
EULAR-OMERACT defines them (D'Agostino et al. 2017) and the pixels come from an imaging model:

* **B-mode.** Every tissue is a field of random scatterers (a Gaussian RF amplitude field whose
  standard deviation is the tissue's backscatter), tendon with fibrils, plus coherent specular
  reflectors (bone cortex, cartilage surface, skin). The field is attenuated on the way down
  and back (per-tissue dB/cm/MHz; bone stops the beam: posterior acoustic shadow, fluid lets it
  through: posterior enhancement), convolved with an RF pulse (axial) and a depth-dependent beam
  (lateral, narrowest at the focus), envelope-detected by quadrature demodulation, corrected by
  a time-gain compensation that does not match the tissue exactly, and log-compressed over a
  dynamic range. Fully developed speckle is Rayleigh: mean/sd = 1.91 before log compression.
* **Anatomy.** Dorsal longitudinal scans, proximal to the left: MCP (metacarpal head with its
  cartilage, phalanx base), PIP (smaller, shallower), MTP (larger head, deeper, thicker
  subcutis) and the wrist (radius - lunate - capitate, thick extensor tendons). Skin, dermis,
  subcutaneous fat with septa, extensor tendon, capsule, the joint recess with its fat pad.
  Probe and patient vary: tilt, depth, gain, frequency, dynamic range, focus, TGC error.
* **Grades.** SH: 0 none; 1 synovium below the line joining the bone surfaces; 2 above it with a
  flat or concave upper surface; 3 above it with a convex upper surface (see
  :func:`sh_grade_from_shape`, which reads the grade back from the drawn shape). The synovium is
  hypoechoic with variable echogenicity, never black; an anechoic effusion is present or not
  independently of SH and never changes the synovium's upper surface. Doppler: vessels grown as
  branching random walks inside the synovium; 1 = up to three single spots, or one confluent
  spot and up to two single ones, or up to two confluent spots; 2 = signal in less than half of
  the synovium; 3 = in more than half. Artefacts a reader must ignore: blooming, feeding vessels
  outside the synovium (also at grade 0), noise speckles, flash, mirror images under the cortex,
  colour write priority; colour Doppler (red towards, blue away, aliasing above the Nyquist
  velocity) or power Doppler (orange).
* **Screens.** The image rectangle (or trapezoid) in a dark screen with text, a grey-map bar,
  a depth scale, the focus marker, a body-mark pictogram; Doppler screens add the colour box
  outline, one or two colour bars and coloured parameter text.

All coordinates of the returned :class:`PhysicalUltrasoundPhantom` that the rest of the project
uses (``roi``, ``colour_box``, ``flow_mask``) are in the saved screen's pixels.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .phantom_records import UltrasoundPhantom

__all__ = [
    "SITE_KINDS",
    "PhysicalUltrasoundPhantom",
    "bmode_envelope",
    "doppler_pattern",
    "pixel_count_baselines",
    "render_ultrasound_physical",
    "sh_grade_from_shape",
    "us_file_format",
    "write_us_screen",
]

SOUND_SPEED_MM_US = 1.54  # mm per microsecond
SITE_KINDS = ("mcp", "pip", "wrist", "mtp")

# tissue labels of the label map
(
    DEEP,
    DERMIS,
    FAT,
    SEPTUM,
    TENDON,
    CAPSULE,
    FAT_PAD,
    SYNOVIUM,
    EFFUSION,
    CARTILAGE,
    BONE,
    JOINT,
    GEL,
) = range(13)
LABEL_NAMES = (
    "deep soft tissue",
    "dermis",
    "subcutaneous fat",
    "fat septum",
    "tendon",
    "capsule",
    "fat pad",
    "synovium",
    "effusion",
    "cartilage",
    "bone",
    "joint space",
    "gel",
)
# backscatter amplitude (relative to dermis) and attenuation (dB/cm/MHz, one way)
_ECHO = np.array([0.6, 1.0, 0.22, 2.0, 3.0, 1.6, 0.9, 0.1, 0.008, 0.015, 0.25, 0.03, 0.0])
_ATTEN = np.array([1.0, 0.9, 0.6, 0.7, 1.1, 0.9, 0.6, 0.5, 0.02, 0.5, 25.0, 0.6, 0.0])
_ATTEN_REF = 0.7  # what the time-gain compensation assumes


# =============================================================================== acquisition


@dataclass
class Scan:
    """Probe and scanner settings of one acquisition (what varies between scans)."""

    freq_mhz: float
    depth_mm: float
    width_mm: float
    pixel_mm: float
    gain_db: float
    dynamic_range_db: float
    focus_mm: float
    tgc_error_db_cm: float
    tilt: float  # slope of the anatomy (probe not parallel to the bone)
    noise_db: float  # electronic noise relative to the dermis echo at the deepest TGC

    @property
    def wavelength_mm(self) -> float:
        return SOUND_SPEED_MM_US / self.freq_mhz


def _site_kind(site: str) -> str:
    name = site.split("_", 1)[1] if site[:2] in ("L_", "R_") else site
    kind = name.split("_")[0]
    if kind not in SITE_KINDS:
        raise ValueError(
            f"unknown ultrasound site {site!r}; expected one of {SITE_KINDS} with an optional "
            "L_/R_ prefix and joint number (e.g. R_mcp_2, L_wrist)"
        )
    return kind


# per site: image depth, bone depth at the joint (mm), head radius, gap, dermis, tendon,
# cartilage thickness, septa count, probe frequency
_SITES: dict[str, dict[str, tuple[float, float]]] = {
    "mcp": {
        "depth": (15, 20),
        "bone": (4.5, 7.0),
        "radius": (6.0, 8.0),
        "gap": (1.0, 1.7),
        "lip": (1.0, 1.8),
        "dermis": (0.8, 1.2),
        "tendon": (0.8, 1.2),
        "cartilage": (0.35, 0.6),
        "freq": (12, 18),
    },
    "pip": {
        "depth": (15, 18),
        "bone": (2.8, 3.8),
        "radius": (3.2, 4.2),
        "gap": (0.8, 1.2),
        "lip": (0.6, 1.1),
        "dermis": (0.7, 1.0),
        "tendon": (0.6, 0.9),
        "cartilage": (0.25, 0.4),
        "freq": (14, 18),
    },
    "mtp": {
        "depth": (18, 22),
        "bone": (5.5, 7.5),
        "radius": (8.0, 10.0),
        "gap": (1.2, 2.0),
        "lip": (1.2, 2.2),
        "dermis": (1.0, 1.5),
        "tendon": (0.9, 1.4),
        "cartilage": (0.4, 0.7),
        "freq": (10, 15),
    },
    "wrist": {
        "depth": (18, 24),
        "bone": (6.0, 8.0),
        "radius": (0.0, 0.0),
        "gap": (0.8, 1.2),
        "lip": (1.2, 2.2),
        "dermis": (0.9, 1.3),
        "tendon": (2.0, 3.2),
        "cartilage": (0.0, 0.0),
        "freq": (10, 15),
    },
}


def _u(rng: np.random.Generator, pair: tuple[float, float]) -> float:
    return float(rng.uniform(*pair))


# =============================================================================== anatomy


@dataclass
class _Anatomy:
    """Per-column geometry in mm (x relative to the joint, depth down from the skin)."""

    x: np.ndarray  # (nx,) lateral position of each column
    bone: np.ndarray  # (nx,) depth of the cortex, inf where no bone (joint gap)
    cartilage: np.ndarray  # (nx,) thickness above the cortex
    floor: np.ndarray  # (nx,) lower limit of the recess (cartilage top, or joint space)
    gap: np.ndarray  # (nx,) bool: columns of the joint gap (no bone at the surface)
    line_pts: tuple[tuple[float, float], tuple[float, float]]  # bone line ends (x, depth)
    recess: tuple[float, float]  # x range of the joint recess (between the line ends)
    dermis: float
    tendon: float
    kind: str

    def line(self, x: np.ndarray | float) -> np.ndarray:
        (xa, za), (xb, zb) = self.line_pts
        return za + (np.asarray(x) - xa) * (zb - za) / (xb - xa)


def _arc_head(x: np.ndarray, xc: float, top: float, r: float) -> np.ndarray:
    """Depth of a circular bone head of radius ``r`` whose top is at (xc, top)."""
    inside = np.abs(x - xc) < r
    z = np.full_like(x, np.inf)
    z[inside] = top + r - np.sqrt(r**2 - (x[inside] - xc) ** 2)
    return z


def _build_anatomy(kind: str, x: np.ndarray, rng: np.random.Generator, tilt: float) -> _Anatomy:
    p = _SITES[kind]
    d = _u(rng, p["bone"])
    gap = _u(rng, p["gap"])
    cart = np.zeros_like(x)
    if kind == "wrist":
        # radius (flat, dorsal lip) - lunate (a dome, deeper) - capitate (rounded head)
        r_end = -5.0 - gap / 2
        radius = d + 0.02 * (r_end - x) - 0.45 * np.exp(-(((x - r_end + 0.7) / 0.6) ** 2))
        radius = np.where(x <= r_end, radius + 2.0 * np.clip(x - r_end + 0.4, 0, None), np.inf)
        d_l = d + rng.uniform(0.8, 1.6)
        lunate = np.where(np.abs(x + 0.3) < 4.9, d_l + 0.05 * (x + 0.3) ** 2, np.inf)
        c_start = 5.0 + gap / 2
        d_c = d + rng.uniform(0.2, 0.9)
        c_peak = c_start + rng.uniform(2.5, 3.5)
        capitate = np.where(
            x >= c_start,
            d_c + 0.11 * np.minimum(x - c_peak, 0) ** 2 + 0.03 * np.maximum(x - c_peak, 0) ** 1.5,
            np.inf,
        )
        bone = np.minimum(np.minimum(radius, lunate), capitate)
        lip_x = r_end - 0.7
        line = ((lip_x, float(d - 0.45 + 0.02 * 0.7)), (c_peak, d_c))
        cart[:] = 0.0
    else:
        r = _u(rng, p["radius"])
        phi = math.radians(rng.uniform(48, 62))
        end = -gap / 2
        xc = end - r * math.sin(phi)  # head peak
        head = _arc_head(x, xc, d, r)
        neck_x = xc - r * rng.uniform(0.55, 0.8)
        neck = {"mcp": (0.7, 1.2), "pip": (0.35, 0.6), "mtp": (0.8, 1.4)}[kind]
        shaft = d + rng.uniform(*neck) + 0.35 * np.exp(-(((x - neck_x) / (0.3 * r)) ** 2))
        shaft = shaft + 0.01 * (neck_x - x)
        prox = np.where(x <= end, np.minimum(head, np.where(x < xc, shaft, np.inf)), np.inf)
        start = gap / 2
        lip_h = _u(rng, p["lip"])
        lip_x = start + rng.uniform(0.6, 1.1) * r * 0.25
        d_b = d + lip_h
        base = (
            d_b
            - 0.35 * np.exp(-(((x - lip_x) / (0.12 * r + 0.3)) ** 2))
            + 0.02 * np.clip(x - lip_x, 0, None)
        )
        corner = np.clip(start + 0.5 - x, 0, None)
        base = np.where(x >= start, base + 2.5 * corner**2, np.inf)
        bone = np.minimum(prox, base)
        line = ((xc, d), (lip_x, float(d_b - 0.35)))
        c = _u(rng, p["cartilage"])
        on_head = (x > xc - 0.45 * r) & (x <= end)
        taper = np.clip((x - (xc - 0.45 * r)) / (0.2 * r), 0, 1)
        cart = np.where(on_head, c * taper, 0.0)
    # probe tilt: the anatomy deepens linearly across the image
    bone = bone + tilt * x
    (xa, za), (xb, zb) = line
    line = ((xa, za + tilt * xa), (xb, zb + tilt * xb))
    finite = np.isfinite(bone)
    # in the joint gap the recess floor continues at the depth of the deeper bone end
    floor = np.where(finite, bone - cart, np.nan)
    gap_cols = ~finite
    idx = np.arange(len(x))
    if (~finite).any():
        fill = np.interp(idx, idx[finite], np.where(finite, bone, 0)[finite])
        floor = np.where(finite, floor, fill + 0.6)
        bone = np.where(finite, bone, fill + 1.4)  # the head continues under the other bone
    return _Anatomy(
        x=x,
        bone=bone,
        cartilage=cart,
        floor=floor,
        gap=gap_cols,
        line_pts=line,
        recess=(line[0][0], line[1][0]),
        dermis=_u(rng, p["dermis"]),
        tendon=_u(rng, p["tendon"]),
        kind=kind,
    )


# =============================================================================== synovium


def _synovium_top(
    an: _Anatomy, grade: int, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[float, float]]:
    """Upper surface (depth per column, inf where none) of the synovial hypertrophy.

    Grade 1 stays below the bone line; 2 rises above it with a flat or concave upper surface;
    3 rises above it with a convex one. Heights and widths of 2 and 3 overlap on purpose: the
    shape, not the size, tells them apart.
    """
    x = an.x
    top = np.full_like(x, np.inf)
    if grade == 0:
        return top, (0.0, 0.0)
    xa, xb = an.recess
    span = xb - xa
    if grade == 1:
        a = xa + rng.uniform(0.05, 0.25) * span
        b = xb - rng.uniform(0.0, 0.15) * span
        u = (x - (a + b) / 2) / ((b - a) / 2)
        room = float(np.max(np.where(np.abs(u) <= 1, an.floor - an.line(x), 0)))
        below = min(rng.uniform(0.15, 0.9), max(0.12, 0.5 * room))  # always some synovium
        surface = an.line(x) + below + 0.25 * np.clip(np.abs(u), 0, 1) ** 4
        inside = np.abs(u) <= 1
    else:
        a = xa - rng.uniform(0.1, 0.9) * span
        b = xb + rng.uniform(-0.05, 0.5) * span
        height = rng.uniform(0.35, 2.2) if grade == 2 else rng.uniform(0.6, 2.8)
        u = (x - (a + b) / 2) / ((b - a) / 2)
        inside = np.abs(u) <= 1
        au = np.clip(np.abs(u), 0, 1)
        if grade == 2:  # flat or concave (sagging) upper surface, steep ends
            sag = rng.uniform(0.0, 0.3)
            core = height * (1 - sag * (1 - (au / 0.65) ** 2).clip(0, 1))
            ends = np.clip((1 - au) / 0.35, 0, 1)
            h = core * (3 * ends**2 - 2 * ends**3)
        else:  # convex dome
            h = height * (1 - au**2) ** rng.uniform(0.55, 1.0)
        in_recess = (x >= xa) & (x <= xb)
        ref = np.where(in_recess, an.line(x), np.maximum(an.floor, an.line(x)))
        surface = ref - h
    # villous irregularity of the surface (small against the shape)
    wobble = ndimage.gaussian_filter1d(rng.normal(0, 1, len(x)), 3) * 0.04
    surface = surface + wobble
    if grade == 1:
        surface = np.maximum(surface, an.line(x) + 0.12)
    top = np.where(inside & (surface < an.floor), surface, np.inf)
    return top, (a, b)


def sh_grade_from_shape(
    synovium: np.ndarray, line_y: np.ndarray, *, tolerance: float = 1.0, convex: float = 0.12
) -> int:
    """EOSS synovial-hypertrophy grade read from a drawn synovium mask (what a reader does).

    ``synovium`` is a bool (rows = depth, columns) mask, ``line_y`` the row of the line joining
    the bone surfaces in every column. 0: no synovium; 1: nowhere above the line (within
    ``tolerance`` pixels); above the line, the upper surface over the middle 60 % of the
    part above the line decides: convex (a dome: a quadratic fit bends down by more than
    ``convex`` of the height) gives 3, flat or concave gives 2.
    """
    cols = np.nonzero(synovium.any(axis=0))[0]
    if len(cols) == 0:
        return 0
    top = np.argmax(synovium[:, cols], axis=0).astype(float)
    height = line_y[cols] - top  # pixels above the line
    above = height > tolerance
    if not above.any():
        return 1
    c_above = cols[above]
    lo, hi = c_above.min(), c_above.max()
    width = hi - lo
    keep = (cols >= lo + 0.2 * width) & (cols <= hi - 0.2 * width)
    if keep.sum() < 5:
        return 3
    u = (cols[keep] - (lo + hi) / 2) / max(width / 2, 1)
    quad = np.polyfit(u, height[keep], 2)[0]
    return 3 if quad < -convex * max(height.max(), 1.0) else 2


# =============================================================================== tissue map


def _tissue_map(
    an: _Anatomy,
    z: np.ndarray,
    syn_top: np.ndarray,
    eff: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Labels and backscatter amplitude on a (depth z) x (column) grid, plus layer depths."""
    x = an.x
    px = float(x[1] - x[0])
    dz_mm = float(z[1] - z[0])
    nx = len(x)
    zg = np.broadcast_to(z[:, None], (len(z), nx))
    eff_top, eff_bot = eff
    # what the capsule lies on: the bone (or the bridge over the joint), lifted by synovium
    # and effusion; tendon and capsule follow it smoothly
    bridge = np.minimum(np.where(~an.gap, an.bone - an.cartilage, np.inf), an.floor)
    recess_x = (x > an.recess[0]) & (x < an.recess[1])
    base = np.where(recess_x, np.minimum(an.line(x) + 0.05, bridge), bridge)
    support = np.minimum(np.minimum(base, syn_top), eff_top)
    smooth = ndimage.gaussian_filter1d(support, 1.2 / px, mode="nearest")
    cap_bot = np.minimum(support, smooth)
    cap_top = cap_bot - 0.22
    ten_bot = cap_top
    ten_top = ndimage.gaussian_filter1d(ten_bot, 2.0 / px, mode="nearest") - an.tendon
    ten_top = np.minimum(ten_top, ten_bot - 0.6 * an.tendon)
    dermis_bot = an.dermis + ndimage.gaussian_filter1d(rng.normal(0, 1, nx), 8 / px) * 0.08
    ten_top = np.maximum(ten_top, dermis_bot + 0.3)
    labels = np.full((len(z), nx), DEEP, np.uint8)
    labels[zg < 0.08] = GEL
    labels[(zg >= 0.08) & (zg < dermis_bot)] = DERMIS
    sub = (zg >= dermis_bot) & (zg < ten_top)
    labels[sub] = FAT
    # septa: thin echogenic lines, irregular, roughly parallel to the skin, of limited length,
    # some branching off obliquely (the walls of the fat lobules)
    for _ in range(int(rng.integers(3, 8))):
        frac = rng.uniform(0.05, 0.95)
        wander = np.cumsum(rng.normal(0, 1, nx)) * px
        wander = ndimage.gaussian_filter1d(wander - wander.mean(), 1.0 / px) * rng.uniform(0.3, 1)
        curve = dermis_bot + frac * (ten_top - dermis_bot) + wander + rng.uniform(-0.1, 0.1) * x
        x_mid, length = rng.uniform(x[0], x[-1]), rng.uniform(4, 25)
        extent = (np.abs(x - x_mid) < length / 2)[None, :]
        thick = rng.uniform(0.03, 0.07) * (1 + 0.5 * np.sin(x / rng.uniform(1, 3)))
        labels[sub & extent & (np.abs(zg - curve) < thick)] = SEPTUM
    labels[(zg >= ten_top) & (zg < ten_bot)] = TENDON
    labels[(zg >= cap_top) & (zg < cap_bot)] = CAPSULE
    # recess: fat pad in the notch, synovium, effusion, then cartilage and bone
    notch = (zg >= cap_bot) & (zg < an.floor)
    labels[notch] = FAT_PAD
    syn = (zg >= syn_top) & (zg < an.floor)
    labels[syn] = SYNOVIUM
    effusion = (zg >= eff_top) & (zg < eff_bot)
    labels[effusion] = EFFUSION
    labels[(zg >= an.bone - an.cartilage) & (zg < an.bone)] = CARTILAGE
    labels[(zg >= an.floor) & an.gap[None, :] & (zg < an.bone)] = JOINT
    labels[zg >= an.bone] = BONE
    echo = _ECHO[labels].astype(np.float32)
    # tendon: fibrils parallel to the tendon axis, dimmer where it curves (anisotropy)
    centre = (ten_top + ten_bot) / 2
    slope = np.gradient(centre, px)
    period = rng.uniform(0.2, 0.32)
    phase = ndimage.gaussian_filter1d(rng.normal(0, 1, nx), 3.0 / px) * 25
    fib = 0.5 + 0.5 * np.cos(2 * np.pi * (zg - centre) / period + phase)
    aniso = np.cos(np.arctan(slope)) ** 6
    tendon = labels == TENDON
    echo[tendon] = (3.0 * (0.2 + 1.6 * fib**4) * (0.2 + 0.8 * aniso))[tendon]
    # synovium: hypoechoic with a patient-specific, patchy echogenicity (never black)
    level = rng.uniform(0.045, 0.2)
    patches = _smooth_field(rng, echo.shape, (0.1 / dz_mm, 0.6 / px))
    patches = patches / (patches.std() + 1e-6)
    s = labels == SYNOVIUM
    echo[s] = (level * np.exp(0.35 * patches))[s]
    fat = labels == FAT
    lobules = _smooth_field(rng, echo.shape, (0.3 / dz_mm, 1.0 / px))
    echo[fat] *= np.exp(0.5 * lobules[fat] / (lobules.std() + 1e-6))
    pad = labels == FAT_PAD
    echo[pad] *= np.exp(0.3 * lobules[pad] / (lobules.std() + 1e-6))
    layers = {
        "dermis_bot": dermis_bot,
        "tendon_top": ten_top,
        "tendon_bot": ten_bot,
        "capsule_bot": cap_bot,
    }
    return labels, echo, layers


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]
) -> np.ndarray:
    """A smooth random field (sd 1), drawn on a coarse grid and upsampled (fast)."""
    step = max(1, int(sigma[0] // 2))
    coarse = rng.normal(0, 1, (shape[0] // step + 2, shape[1]))
    coarse = ndimage.gaussian_filter(coarse, (sigma[0] / step, sigma[1]))
    fine = ndimage.zoom(coarse, (step, 1), order=1)[: shape[0]]
    if fine.shape[0] < shape[0]:
        fine = np.vstack([fine, np.repeat(fine[-1:], shape[0] - fine.shape[0], 0)])
    return (fine / (fine.std() + 1e-9)).astype(np.float32)


# =============================================================================== B-mode physics


def _pulse(scan: Scan, dz: float) -> np.ndarray:
    """Axial RF pulse (two-way, depth units): a Gaussian-windowed cosine of ~2 cycles."""
    lam = scan.wavelength_mm
    sigma = 2.0 * (lam / 2) / 2.355
    half = math.ceil(3 * sigma / dz)
    t = np.arange(-half, half + 1) * dz
    return (np.exp(-(t**2) / (2 * sigma**2)) * np.cos(4 * np.pi * t / lam)).astype(np.float32)


def _beam_sigma(scan: Scan, z: np.ndarray) -> np.ndarray:
    """Lateral beam width (sd, mm) by depth: narrowest at the focus, wider above and below."""
    lam = scan.wavelength_mm
    w0 = 1.4 * lam * 2.0 / 2.355  # FWHM ~ 1.4 lambda F#, F# = 2
    z_r = 4.0 + 0.15 * scan.freq_mhz
    return w0 * np.sqrt(1 + ((z - scan.focus_mm) / z_r) ** 2)


def bmode_envelope(
    echo: np.ndarray,
    scan: Scan,
    rng: np.random.Generator,
    *,
    dz: float,
    specular: np.ndarray | None = None,
    attenuation: np.ndarray | None = None,
    transmission: np.ndarray | None = None,
) -> np.ndarray:
    """Envelope of the echo signal on the RF grid (depth step ``dz`` mm, column step
    ``scan.pixel_mm``), before time-gain compensation and log compression.

    Scatterers: Gaussian amplitudes with sd ``echo`` (fully developed speckle), plus coherent
    ``specular`` reflectors. ``attenuation`` (dB/cm/MHz) attenuates them on the way down and
    back, ``transmission`` (0-1) is the share passed at an interface (bone stops the beam).
    RF = pulse (axial) * beam (lateral, depth-dependent) * scatterers; the envelope comes
    from quadrature demodulation (|I + iQ|).
    Electronic noise (``scan.noise_db``) is added to the RF. In a homogeneous region the
    envelope is Rayleigh distributed (mean/sd = sqrt(pi / (4 - pi)) = 1.91).
    """
    nz, nx = echo.shape
    amp = echo * rng.standard_normal((nz, nx)).astype(np.float32)
    gain = np.ones((nz, nx), np.float32)
    if attenuation is not None:
        db = 2 * np.cumsum(attenuation, axis=0) * (dz / 10.0) * scan.freq_mhz
        gain = gain * (10 ** (-db / 20)).astype(np.float32)
    if transmission is not None:
        gain = gain * np.cumprod(transmission, axis=0).astype(np.float32)
    pulse = _pulse(scan, dz)
    rf = ndimage.convolve1d(amp * gain, pulse, axis=0, mode="constant")
    z = (np.arange(nz) + 0.5) * dz
    sig = _beam_sigma(scan, z) / scan.pixel_mm
    levels = np.linspace(sig.min(), sig.max(), 3) if sig.max() > sig.min() else sig[:1]
    blurred = [ndimage.gaussian_filter1d(rf, s, axis=1, mode="reflect") for s in levels]
    if len(levels) == 1:
        rf = blurred[0]
    else:
        pos = np.interp(sig, levels, np.arange(len(levels)))
        lo = np.floor(pos).astype(int).clip(0, len(levels) - 2)
        w = (pos - lo)[:, None].astype(np.float32)
        stack = np.stack(blurred)
        rows = np.arange(nz)
        rf = stack[lo, rows] * (1 - w) + stack[lo + 1, rows] * w
    ref = _speckle_reference(scan, dz)
    tgc_max = 2 * _ATTEN_REF * scan.freq_mhz * scan.depth_mm / 10
    noise = ref * 10 ** ((scan.noise_db - tgc_max) / 20) / math.sqrt(math.pi / 2)
    rf = rf + noise * rng.standard_normal(rf.shape).astype(np.float32)
    env = _envelope(rf, dz, scan.wavelength_mm)
    if specular is not None:
        # a smooth specular surface echoes in phase along the surface: its RF is formed per
        # line (axially) and adds to the speckle in power, so the bright line stays unbroken
        # (the envelope of one reflector's echo is the pulse's Gaussian window)
        sigma = 2.0 * (scan.wavelength_mm / 2) / 2.355 / dz
        window = ndimage.gaussian_filter(np.abs(specular * gain), (sigma, 0.7), truncate=3.0)
        spec_env = window * float(np.abs(pulse).max() * sigma * math.sqrt(2 * math.pi))
        env = np.sqrt(env**2 + spec_env**2)
    return env.astype(np.float32)


def _envelope(rf: np.ndarray, dz: float, wavelength: float) -> np.ndarray:
    """Envelope by quadrature demodulation, as scanners do it: mix the RF down by the
    two-way carrier, low-pass (removes the 2 f0 term), take the magnitude. Local in depth,
    so a bright echo never leaks far (a Hilbert transform over the whole line would)."""
    z = (np.arange(rf.shape[0]) + 0.5) * dz
    carrier = np.exp(-1j * 4 * np.pi * z / wavelength)[:, None]
    mixed = rf * carrier
    s = wavelength / 4 / dz
    i = ndimage.gaussian_filter1d(mixed.real.astype(np.float32), s, axis=0)
    q = ndimage.gaussian_filter1d(mixed.imag.astype(np.float32), s, axis=0)
    return 2 * np.hypot(i, q)


def _speckle_reference(scan: Scan, dz: float) -> float:
    """Mean envelope of unit-amplitude scatterers at the focus (the 0 dB of the display)."""
    pulse = _pulse(scan, dz)
    s = float(_beam_sigma(scan, np.array([scan.focus_mm]))[0] / scan.pixel_mm)
    lateral = ndimage.gaussian_filter1d(np.eye(1, 61, 30).ravel(), s)
    rms = math.sqrt(float((pulse**2).sum()) * float((lateral**2).sum()))
    return rms * math.sqrt(math.pi / 2)


def _log_compress(env: np.ndarray, scan: Scan, z: np.ndarray, dz: float) -> np.ndarray:
    """TGC, gain and log compression to display grey (0-1)."""
    tgc_db = 2 * _ATTEN_REF * scan.freq_mhz * z / 10 + scan.tgc_error_db_cm * z / 10
    ref = _speckle_reference(scan, dz)
    db = 20 * np.log10(np.maximum(env, 1e-9) / ref) + tgc_db[:, None] + scan.gain_db
    return np.clip(db / scan.dynamic_range_db + 0.62, 0, 1)


# =============================================================================== Doppler


def _rasterise_path(points: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixels along a polyline (rows, cols), dense enough to be connected."""
    rows, cols = [], []
    for (r0, c0), (r1, c1) in itertools.pairwise(points):
        n = int(max(abs(r1 - r0), abs(c1 - c0)) * 2) + 1
        t = np.linspace(0, 1, n)
        rows.append(np.rint(r0 + t * (r1 - r0)))
        cols.append(np.rint(c0 + t * (c1 - c0)))
    rr = np.concatenate(rows).astype(int).clip(0, shape[0] - 1)
    cc = np.concatenate(cols).astype(int).clip(0, shape[1] - 1)
    return rr, cc


def _grow_tree(
    region: np.ndarray,
    start: tuple[float, float],
    angle: float,
    rng: np.random.Generator,
    *,
    step: float,
    max_steps: int,
    branch: float,
) -> list[np.ndarray]:
    """Branching random walk inside ``region`` (a vessel tree): a list of polylines."""
    paths: list[np.ndarray] = []
    todo = [(np.array(start, float), angle, max_steps)]
    while todo and len(paths) < 24:
        pos, ang, steps = todo.pop()
        pts = [pos.copy()]
        for _ in range(steps):
            ang += rng.normal(0, 0.3)
            nxt = pos + step * np.array([math.sin(ang), math.cos(ang)])
            r, c = round(nxt[0]), round(nxt[1])
            if not (0 <= r < region.shape[0] and 0 <= c < region.shape[1]) or not region[r, c]:
                ang += rng.choice([-1, 1]) * 1.2  # turn away from the edge
                continue
            pos = nxt
            pts.append(pos.copy())
            if rng.random() < branch and steps > 4:
                todo.append(
                    (pos.copy(), ang + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0), steps // 2)
                )
        if len(pts) > 1:
            paths.append(np.array(pts))
    return paths


@dataclass
class _Flow:
    power: np.ndarray  # float (rows, cols): Doppler power before thresholding
    velocity: np.ndarray  # float: velocity / Nyquist (signed), where power > 0


def _vessels_to_flow(
    paths: list[tuple[np.ndarray, float]], shape: tuple[int, int], blur_px: float
) -> _Flow:
    """Doppler power and mean velocity from vessel centrelines (blurred: Doppler resolution)."""
    power = np.zeros(shape, np.float32)
    vel = np.zeros(shape, np.float32)
    for path, speed in paths:
        rr, cc = _rasterise_path(path, shape)
        d = np.diff(path, axis=0)
        d = np.vstack([d, d[-1:]])
        axial = d[:, 0] / (np.linalg.norm(d, axis=1) + 1e-9)  # cos of the beam-flow angle
        # towards the probe = up the screen = negative rows
        v_pts = -speed * np.sign(axial) * np.maximum(np.abs(axial), 0.35)
        idx = np.clip(np.linspace(0, len(path) - 1, len(rr)).round().astype(int), 0, len(path) - 1)
        power[rr, cc] += 1.0
        vel[rr, cc] += v_pts[idx]
    p = ndimage.gaussian_filter(power, blur_px)
    v = ndimage.gaussian_filter(vel, blur_px) / np.maximum(p, 1e-6)
    return _Flow(p, v)


def _spots(
    region: np.ndarray, rng: np.random.Generator, px_mm: float
) -> list[tuple[np.ndarray, float]]:
    """EOSS grade 1: up to three single spots, or one confluent spot and up to two single
    ones, or up to two confluent spots (a confluent spot is a short vessel segment)."""
    pattern = int(rng.integers(3))
    if pattern == 0:
        kinds = ["single"] * int(rng.integers(1, 4))
    elif pattern == 1:
        kinds = ["confluent"] + ["single"] * int(rng.integers(0, 3))
    else:
        kinds = ["confluent"] * int(rng.integers(1, 3))
    core = ndimage.binary_erosion(region, iterations=2)
    rows, cols = np.nonzero(core if core.sum() > 20 else region)  # thin synovium: any pixel
    out = []
    for kind in kinds:
        i = int(rng.integers(len(rows)))
        start = np.array([rows[i], cols[i]], float)
        if kind == "single":
            out.append((np.array([start, start + 0.3]), rng.uniform(0.2, 0.8)))
        else:
            ang = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(0.6, 1.4) / px_mm
            end = start + length * np.array([math.sin(ang), math.cos(ang)])
            mid = (start + end) / 2 + rng.normal(0, 0.15 / px_mm, 2)
            out.append((np.array([start, mid, end]), rng.uniform(0.3, 1.2)))
    return out


def doppler_pattern(
    synovium: np.ndarray, grade: int, rng: np.random.Generator, px_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour signal of the synovial vessels for a Doppler grade (image grid): the mask, the
    power (0-1) and the velocity (signed, in Nyquist units; above 1 it aliases).

    Grade 1: the spot patterns of the definition; 2: branching vessels covering 15-45 % of
    the synovium; 3: 55-85 %. Blooming (the Doppler resolution, wider with gain) is part of the
    displayed signal, as a reader sees it.
    """
    shape = synovium.shape
    empty = np.zeros(shape, np.float32)
    if grade == 0 or synovium.sum() < 4:
        return np.zeros(shape, bool), empty, empty
    blur = max(0.09 / px_mm, 1.0) * rng.uniform(1.0, 1.6)  # resolution x blooming
    if grade == 1:
        spots = _spots(synovium, rng, px_mm)
        flow = _vessels_to_flow(spots, shape, blur)
        mask = flow.power > 0.25 * flow.power.max()
        labels, n = ndimage.label(mask)
        if n > len(spots):  # never more spots than the pattern has
            sizes = ndimage.sum_labels(mask, labels, np.arange(1, n + 1))
            mask = np.isin(labels, np.argsort(sizes)[::-1][: len(spots)] + 1)
        top = flow.power.max()
    else:
        target = rng.uniform(0.15, 0.45) if grade == 2 else rng.uniform(0.58, 0.85)
        area_mm2 = synovium.sum() * px_mm**2
        if grade == 2:
            n_trees = int(np.clip(area_mm2 / 2.0, 3, 10))
        else:
            n_trees = int(np.clip(area_mm2 / 0.7, 6, 40))
        rows, cols = np.nonzero(synovium)
        trees = []
        for _ in range(n_trees):
            i = int(rng.integers(len(rows)))
            trees += [
                (p, rng.uniform(0.3, 1.6))
                for p in _grow_tree(
                    synovium,
                    (rows[i], cols[i]),
                    rng.uniform(0, 2 * np.pi),
                    rng,
                    step=max(0.1 / px_mm, 0.8),
                    max_steps=int(rng.integers(15, 45)),
                    branch=0.1,
                )
            ]
        flow = _vessels_to_flow(trees, shape, blur)
        inside = flow.power[synovium]
        thr = float(np.quantile(inside, 1 - target)) if inside.size else 1.0
        mask = flow.power > max(thr, 1e-4)
        top = float(np.quantile(inside, 0.995)) if inside.size else 1.0
    power = np.where(mask, np.clip(flow.power / max(top, 1e-6), 0, 1), 0).astype(np.float32)
    velocity = np.where(mask, flow.velocity * (0.35 + 0.65 * power), 0).astype(np.float32)
    return mask, power, velocity


# =============================================================================== screens


@dataclass
class PhysicalUltrasoundPhantom(UltrasoundPhantom):
    """An anatomical-style pair: the common fields plus what the tests and docs read back."""

    envelope: np.ndarray | None = None  # float32 (rows, cols) of the image, before TGC/log
    labels: np.ndarray | None = None  # uint8 tissue labels of the image (LABEL_NAMES)
    image_box: tuple[int, int, int, int] = (0, 0, 0, 0)  # the image rectangle on the screen
    pixel_mm: float = 0.0
    line_y: np.ndarray | None = None  # row of the bone line in each image column
    synovium: np.ndarray | None = None  # bool, image grid
    effusion: np.ndarray | None = None  # bool, image grid
    synovial_flow: np.ndarray | None = None  # bool, image grid: vessel signal in the synovium
    doppler_mode: str = "colour"  # "colour" | "power"
    n_colour_bars: int = 1
    artefacts: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def screen_mask(self, name: str) -> np.ndarray:
        """A ground-truth mask of the image grid (``synovium``, ``effusion`` or
        ``synovial_flow``: the vessel signal that sets the Doppler grade, artefacts excluded)
        placed on the saved screen's pixels, so it can be cut with ``roi`` exactly like the
        two images (what the heatmap localisation benchmark compares the explanations with)."""
        masks = {"synovium": self.synovium, "effusion": self.effusion}
        masks["synovial_flow"] = self.synovial_flow
        if name not in masks:
            raise ValueError(f"no mask {name!r}; choose one of {sorted(masks)}")
        grid = masks[name]
        out = np.zeros(self.greyscale.shape[:2], bool)
        if grid is None:
            return out
        x0, y0, x1, y1 = self.image_box
        out[y0:y1, x0:x1] = grid
        return out


_SCREENS = ((800, 600), (1024, 768), (1280, 960))


def _colour_map(v: np.ndarray, mode: str) -> np.ndarray:
    """RGB for colour Doppler (v = velocity/Nyquist, signed) or power Doppler (v = 0-1)."""
    a = np.clip(np.abs(v), 0, 1)
    if mode == "power":
        rgb = np.stack([150 + 105 * a, 25 + 205 * a**1.4, 5 + 70 * a**3], axis=-1)
    else:
        hi = np.clip((a - 0.65) / 0.35, 0, 1)
        strong = 110 + 145 * a**0.7
        pos = np.stack([strong, 230 * hi, 20 * hi], axis=-1)
        neg = np.stack([20 * hi, 60 * a + 170 * hi, strong], axis=-1)
        rgb = np.where((v >= 0)[..., None], pos, neg)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _draw_body_mark(draw: Any, at: tuple[int, int], kind: str, size: int, colour: Any) -> None:
    """A small hand or foot pictogram with the probe position (as scanners show)."""
    x, y = at
    s = size
    if kind == "mtp":
        draw.ellipse((x, y + 0.3 * s, x + 0.6 * s, y + s), outline=colour)
        for k in range(5):
            draw.ellipse(
                (x + k * 0.13 * s, y + 0.1 * s, x + k * 0.13 * s + 0.1 * s, y + 0.28 * s),
                outline=colour,
            )
        probe = (x + 0.15 * s, y + 0.35 * s, x + 0.45 * s, y + 0.38 * s)
    else:
        draw.rectangle((x + 0.1 * s, y + 0.45 * s, x + 0.6 * s, y + s), outline=colour)
        for k in range(4):
            fx = x + 0.12 * s + k * 0.12 * s
            draw.rectangle((fx, y, fx + 0.08 * s, y + 0.45 * s), outline=colour)
        draw.line((x + 0.6 * s, y + 0.7 * s, x + 0.85 * s, y + 0.4 * s), fill=colour, width=2)
        py = {"wrist": 0.95, "mcp": 0.45, "pip": 0.25}[kind]
        probe = (x + 0.14 * s, y + py * s - 0.1 * s, x + 0.22 * s, y + py * s + 0.1 * s)
    draw.rectangle(probe, fill=(255, 200, 0) if isinstance(colour, tuple) else 255)


def _screen(
    image: np.ndarray,
    box: tuple[int, int, int, int],
    scan: Scan,
    rng: np.random.Generator,
    shape: tuple[int, int],
    kind: str,
    *,
    site: str,
    colour: dict[str, Any] | None,
    trapezoid: float,
) -> np.ndarray:
    """Compose a scanner screen around the image (RGB uint8)."""
    from PIL import Image, ImageDraw

    h, w = shape
    ix0, iy0, ix1, iy1 = box
    screen = np.zeros((h, w, 3), np.uint8)
    screen[..., :] = rng.integers(0, 6)  # some scanners have a not-quite-black background
    screen[iy0:iy1, ix0:ix1] = image
    if trapezoid > 0:  # virtual convex: the image widens with depth
        rows = np.arange(iy1 - iy0)[:, None]
        cols = np.arange(ix1 - ix0)[None, :]
        cut = trapezoid * (1 - rows / (iy1 - iy0)) * (ix1 - ix0)
        outside = (cols < cut) | (cols > (ix1 - ix0) - 1 - cut)
        screen[iy0:iy1, ix0:ix1][outside] = screen[0, 0]
    pil = Image.fromarray(screen)
    draw = ImageDraw.Draw(pil)
    fs = max(11, round(h / 48))
    font, small = _font(fs), _font(max(9, fs - 3))
    white, grey = (235, 235, 235), (170, 170, 170)
    # top line: institution, patient, date, probe, acoustic output
    draw.text((10, 6), "PHANTOM HOSPITAL   MSK", fill=white, font=font)
    draw.text((int(0.42 * w), 6), f"ID {rng.integers(10**6, 10**7)}", fill=white, font=font)
    draw.text(
        (int(0.7 * w), 6),
        f"MI {rng.uniform(0.5, 1.2):.1f}  TIs {rng.uniform(0.1, 0.6):.1f}",
        fill=white,
        font=font,
    )
    probe = str(rng.choice(["L18-5", "L12-4", "ML6-15", "L4-15", "HL10-22"]))
    # left panel: B-mode settings, then colour settings in colour
    lines = [
        probe,
        "MSK Small Parts",
        f"B  Frq {scan.freq_mhz:.1f} MHz",
        f"   Gn {int(50 + scan.gain_db * 2)}",
        f"   DR {int(scan.dynamic_range_db)}",
        f"   D {scan.depth_mm / 10:.1f} cm",
        f"   FR {int(rng.integers(18, 60))} Hz",
    ]
    y = iy0 + 4
    for line in lines:
        draw.text((10, y), line, fill=white, font=small)
        y += fs + 2
    if colour is not None:
        tint = tuple(int(c) for c in rng.choice([[255, 210, 0], [0, 220, 255], [120, 255, 120]]))
        name = "PDI" if colour["mode"] == "power" else "CF"
        for line in (
            f"{name} Frq {colour['freq']:.1f} MHz",
            f"   Gn {colour['gain']}",
            f"   PRF {colour['prf']:.1f} kHz",
            f"   WF {int(rng.integers(30, 80))} Hz",
        ):
            draw.text((10, y), line, fill=tint, font=small)
            y += fs + 2
    # depth scale with cm and 5 mm ticks, a focus marker
    gap = int(rng.integers(6, 14))
    sx = ix1 + gap
    px_per_mm = (iy1 - iy0) / scan.depth_mm
    for mm in range(0, int(scan.depth_mm) + 1):
        yy = iy0 + mm * px_per_mm
        if mm % 5 == 0:
            draw.line((sx, yy, sx + 7, yy), fill=white, width=1)
            if mm % 10 == 0:
                draw.text((sx + 10, yy - fs // 2), f"{mm // 10}", fill=white, font=small)
        else:
            draw.line((sx, yy, sx + 3, yy), fill=grey, width=1)
    fy = iy0 + scan.focus_mm * px_per_mm
    draw.polygon([(sx, fy), (sx + 7, fy - 4), (sx + 7, fy + 4)], fill=white)
    # orientation marker at the top corner of the image
    mx = ix0 + 6 if rng.random() < 0.8 else ix1 - 14
    draw.ellipse((mx, iy0 - 14, mx + 8, iy0 - 6), fill=white)
    # grey map bar, then colour bar(s) on Doppler screens
    bx = min(sx + 40, w - 75)
    bar_h = int(0.28 * (iy1 - iy0)) + 60
    g = np.linspace(255, 0, bar_h).astype(np.uint8)[:, None].repeat(10, 1)
    arr = np.asarray(pil).copy()
    gy = iy0 + 10
    if colour is None or rng.random() < 0.5:
        arr[gy : gy + bar_h, bx : bx + 10] = g[..., None]
        bx += 22
    if colour is not None:
        v = np.linspace(1, -1, bar_h)[:, None].repeat(12, 1)
        if colour["mode"] == "power":
            v = np.linspace(1, 0, bar_h)[:, None].repeat(12, 1)
        bar = _colour_map(v, colour["mode"])
        if colour["mode"] == "colour":
            bar[np.abs(v) < 0.06] = 0
        cy = gy + (bar_h + 30 if arr.shape[0] - gy > 2 * bar_h + 60 and rng.random() < 0.3 else 0)
        arr[cy : cy + bar_h, bx : bx + 12] = bar
        colour["bars"] = [(bx, cy, bx + 12, cy + bar_h)]
        if colour["n_bars"] == 2:  # a second map: a variance (2-D) map or the power scale
            bx2 = bx + 30
            vv = np.linspace(1, -1, bar_h)[:, None]
            var = np.linspace(0, 1, 12)[None, :]
            second = _colour_map(vv * np.ones((1, 12)), "colour").astype(float)
            second[..., 1] = np.clip(second[..., 1] + 180 * var, 0, 255)
            arr[cy : cy + bar_h, bx2 : bx2 + 12] = second.astype(np.uint8)
            colour["bars"].append((bx2, cy, bx2 + 12, cy + bar_h))
        pil = Image.fromarray(arr)
        draw = ImageDraw.Draw(pil)
        if colour["mode"] == "colour":
            draw.text((bx - 4, cy - fs - 2), f"+{colour['scale']:.1f}", fill=white, font=small)
            draw.text((bx - 4, cy + bar_h + 2), f"-{colour['scale']:.1f}", fill=white, font=small)
            draw.text((bx - 4, cy + bar_h + fs + 4), "cm/s", fill=white, font=small)
        else:
            draw.text((bx - 4, cy + bar_h + 2), "PDI", fill=white, font=small)
    else:
        pil = Image.fromarray(arr)
        draw = ImageDraw.Draw(pil)
    # body mark and a frame counter / icons at the bottom
    _draw_body_mark(draw, (14, h - 80), kind, 60, grey)
    draw.text((int(0.3 * w), h - fs - 8), site.replace("_", " ").upper(), fill=white, font=font)
    draw.text(
        (int(0.55 * w), h - fs - 8),
        f"{rng.integers(1, 24):02d}:{rng.integers(0, 60):02d}:{rng.integers(0, 60):02d}",
        fill=white,
        font=font,
    )
    if colour is not None:  # a coloured icon (e.g. the Doppler mode button)
        ix = w - 50
        draw.rectangle((ix, h - 44, ix + 26, h - 24), outline=(230, 60, 40), width=2)
        draw.text((ix + 4, h - 42), name[:2], fill=(255, 140, 0), font=small)
    return np.asarray(pil).copy()


# =============================================================================== render


def _draw_scan(
    rng: np.random.Generator, kind: str, screen: tuple[int, int] | None = None
) -> tuple[Scan, tuple[int, int], int, int]:
    p = _SITES[kind]
    drawn = _SCREENS[int(rng.choice(len(_SCREENS), p=[0.45, 0.4, 0.15]))]
    screen = screen or drawn
    w_screen, h_screen = screen
    footprint = float(rng.choice([38.0, 25.0, 50.0], p=[0.5, 0.35, 0.15]))
    depth = _u(rng, p["depth"])
    # the scanner fills the screen height and shows as much of the footprint as fits
    height_px = int(h_screen * rng.uniform(0.55, 0.72))
    pixel = depth / height_px
    # room is left for the text panel on the left and the scale and bars on the right
    width_px = int(min(footprint / pixel, w_screen * rng.uniform(0.6, 0.7), w_screen - 250))
    width_mm = width_px * pixel
    bone = np.mean(p["bone"])
    scan = Scan(
        freq_mhz=_u(rng, p["freq"]),
        depth_mm=depth,
        width_mm=width_mm,
        pixel_mm=pixel,
        gain_db=rng.uniform(-5, 5),
        dynamic_range_db=rng.uniform(50, 70),
        focus_mm=bone * rng.uniform(0.7, 1.2),
        tgc_error_db_cm=rng.uniform(-4, 4),
        tilt=rng.uniform(-0.08, 0.08),
        noise_db=rng.uniform(-45, -30),
    )
    return scan, screen, width_px, height_px


def render_ultrasound_physical(
    site: str,
    synovial_hypertrophy: int,
    vascularity: int,
    rng: np.random.Generator,
    *,
    effusion: bool | None = None,
    doppler_mode: str | None = None,
    n_colour_bars: int | None = None,
    screen: tuple[int, int] | None = None,
) -> PhysicalUltrasoundPhantom:
    """A grey-scale and a Doppler scanner screen of a dorsal longitudinal joint scan.

    ``effusion``, ``doppler_mode`` ("colour" or "power"), ``n_colour_bars`` (1 or 2) and the
    ``screen`` size (width, height; 800x600, 1024x768 or 1280x960) are drawn at random unless
    given. The anatomy, the synovium and the vessels are drawn from
    ``rng`` before the effusion, so forcing ``effusion`` leaves the synovium unchanged.
    """
    sh, vasc = int(synovial_hypertrophy), int(vascularity)
    if sh not in range(4) or vasc not in range(4):
        raise ValueError(
            f"grades must be 0-3, got SH {synovial_hypertrophy}, Doppler {vascularity}"
        )
    if sh == 0 and vasc > 0:
        raise ValueError("vascularity > 0 needs synovial hypertrophy > 0 (EULAR-OMERACT)")
    if doppler_mode not in (None, "colour", "power"):
        raise ValueError(f"doppler_mode must be 'colour' or 'power', got {doppler_mode!r}")
    if screen is not None and (len(screen) != 2 or min(screen) < 400):
        raise ValueError(f"screen must be (width, height) of at least 400 px, got {screen!r}")
    if n_colour_bars not in (None, 1, 2):
        raise ValueError(f"n_colour_bars must be 1 or 2, got {n_colour_bars!r}")
    kind = _site_kind(site)
    scan, (w_screen, h_screen), nx, nz = _draw_scan(rng, kind, screen)
    px = scan.pixel_mm
    # columns in mm, the joint somewhere in the middle third
    centre = rng.uniform(0.42, 0.58) * scan.width_mm
    x = (np.arange(nx) + 0.5) * px - centre
    an = _build_anatomy(kind, x, rng, scan.tilt)
    syn_top, syn_span = _synovium_top(an, sh, rng)
    rng_eff = np.random.default_rng(rng.integers(2**63))  # effusion draws never shift others
    rng_dop = np.random.default_rng(rng.integers(2**63))
    rng_rf = np.random.default_rng(rng.integers(2**63))
    rng_screen = np.random.default_rng(rng.integers(2**63))
    has_eff = bool(rng_eff.random() < 0.5) if effusion is None else bool(effusion)
    eff_top, eff_bot = _effusion(an, syn_top, syn_span, has_eff, rng_eff)
    # RF grid: the columns of the image, depth oversampled to an eighth of a wavelength
    m = max(2, math.ceil(px / (scan.wavelength_mm / 8)))
    dz = px / m
    z_rf = (np.arange(nz * m) + 0.5) * dz
    labels_rf, echo, layers = _tissue_map(an, z_rf, syn_top, (eff_top, eff_bot), rng_rf)
    spec = _specular(an, z_rf, dz, layers, labels_rf)
    atten = _ATTEN[labels_rf].astype(np.float32)
    trans = np.ones_like(echo)
    cortex = (labels_rf == BONE) & np.vstack([np.zeros((1, nx), bool), labels_rf[:-1] != BONE])
    trans[cortex] = 0.08
    env_rf = bmode_envelope(
        echo, scan, rng_rf, dz=dz, specular=spec, attenuation=atten, transmission=trans
    )
    env = env_rf.reshape(nz, m, nx).mean(axis=1)
    z = (np.arange(nz) + 0.5) * px
    labels = labels_rf[m // 2 :: m][:nz]
    sri = rng_screen.uniform(0.4, 1.0)  # the scanner's speckle reduction (display only)
    grey = ndimage.gaussian_filter(_log_compress(env, scan, z, dz), (sri, 1.6 * sri))
    image_gs = (grey * 255).astype(np.uint8)
    # the Doppler frame: the same tissue a moment later (partly decorrelated speckle)
    env2 = bmode_envelope(
        echo,
        scan,
        np.random.default_rng(rng_rf.integers(2**63)),
        dz=dz,
        specular=spec,
        attenuation=atten,
        transmission=trans,
    )
    env2 = env2.reshape(nz, m, nx).mean(axis=1)
    grey2 = ndimage.gaussian_filter(
        _log_compress(0.75 * env + 0.45 * env2, scan, z, dz), (sri, 1.6 * sri)
    )
    image_dp = (np.clip(grey2 * rng_screen.uniform(0.9, 1.0), 0, 1) * 255).astype(np.uint8)

    synovium = labels == SYNOVIUM
    eff_mask = labels == EFFUSION
    line_y = an.line(x) / px - 0.5
    # screen placement
    ix0 = int((w_screen - nx) * rng_screen.uniform(0.4, 0.5))
    iy0 = int(h_screen * rng_screen.uniform(0.07, 0.12))
    iy0 = min(iy0, h_screen - nz - 4)
    box = (ix0, iy0, ix0 + nx, iy0 + nz)
    trapezoid = rng_screen.uniform(0.04, 0.1) if rng_screen.random() < 0.2 else 0.0
    # ROI: the annotator's box over the joint recess, from the anatomy (not the synovium's
    # size), widened where the synovium sticks out of it
    xa, xb = an.recess
    half = rng_screen.uniform(4.0, 6.0) * (0.7 if kind == "pip" else 1.0)
    mid = (xa + xb) / 2 - rng_screen.uniform(0.0, 1.5)
    rx0, rx1 = (mid - half + centre) / px, (mid + half + centre) / px
    joint_floor = float(np.interp(0.0, x, an.floor))
    ry0 = max(0.3, an.dermis * rng_screen.uniform(0.6, 1.1)) / px
    ry1 = (joint_floor + rng_screen.uniform(1.0, 2.5)) / px
    if synovium.any():
        rows, cols = np.nonzero(synovium)
        margin = 0.5 / px
        rx0, rx1 = min(rx0, cols.min() - margin), max(rx1, cols.max() + margin)
        ry0, ry1 = min(ry0, rows.min() - margin), max(ry1, rows.max() + margin)
    side = trapezoid * nx + 2
    roi = (
        float(ix0 + max(rx0, side)),
        float(iy0 + max(ry0, 2)),
        float(ix0 + min(rx1, nx - side)),
        float(iy0 + min(ry1, nz - 2)),
    )
    # Doppler
    mode = doppler_mode or ("power" if rng_dop.random() < 0.45 else "colour")
    bars = n_colour_bars or (2 if rng_dop.random() < 0.35 else 1)
    colour_img, signal_mask, artefacts, cbox = _doppler_frame(
        image_dp, labels, synovium, an, vasc, mode, roi, box, scan, rng_dop, trapezoid
    )
    settings = {
        "freq": scan.freq_mhz * rng_dop.uniform(0.5, 0.7),
        "gain": int(rng_dop.integers(40, 80)),
        "prf": rng_dop.uniform(0.4, 1.2),
        "mode": mode,
        "n_bars": bars,
    }
    settings["scale"] = settings["prf"] * 1000 * SOUND_SPEED_MM_US / (4 * settings["freq"]) / 10
    gs_screen = _screen(
        np.repeat(image_gs[..., None], 3, 2),
        box,
        scan,
        np.random.default_rng(rng_screen.integers(2**63)),
        (h_screen, w_screen),
        kind,
        site=site,
        colour=None,
        trapezoid=trapezoid,
    )[..., 0]
    dp_screen = _screen(
        colour_img,
        box,
        scan,
        np.random.default_rng(rng_screen.integers(2**63)),
        (h_screen, w_screen),
        kind,
        site=site,
        colour=settings,
        trapezoid=trapezoid,
    )
    cx0, cy0, cx1, cy1 = cbox
    outline = tuple(
        int(v) for v in rng_dop.choice([[200, 200, 200], [230, 230, 120], [150, 210, 150]])
    )
    dp_screen[cy0, cx0:cx1] = dp_screen[cy1 - 1, cx0:cx1] = outline
    dp_screen[cy0:cy1, cx0] = dp_screen[cy0:cy1, cx1 - 1] = outline
    flow_full = np.zeros((h_screen, w_screen), bool)
    drawn = _chroma(colour_img) > 0
    flow_full[iy0 : iy0 + nz, ix0 : ix0 + nx] = drawn
    inner = np.zeros_like(flow_full)
    inner[cy0 + 1 : cy1 - 1, cx0 + 1 : cx1 - 1] = True
    flow_full &= inner
    return PhysicalUltrasoundPhantom(
        site=site,
        greyscale=gs_screen,
        doppler=dp_screen,
        roi=roi,
        colour_box=cbox,
        synovial_hypertrophy=sh,
        vascularity=vasc,
        flow_mask=flow_full,
        envelope=env,
        labels=labels,
        image_box=box,
        pixel_mm=px,
        line_y=line_y,
        synovium=synovium,
        effusion=eff_mask,
        synovial_flow=signal_mask & synovium,
        doppler_mode=mode,
        n_colour_bars=bars,
        artefacts=artefacts,
        settings={"scan": scan.__dict__.copy(), "colour": settings, "effusion": has_eff},
    )


def _chroma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int16)
    return rgb.max(-1) - rgb.min(-1)


def _effusion(
    an: _Anatomy,
    syn_top: np.ndarray,
    span: tuple[float, float],
    present: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Anechoic fluid: at the bottom of the recess (under the synovium, never reaching its
    upper surface) and/or as a lens in the proximal recess over the neck."""
    top = np.full_like(an.x, np.inf)
    bot = np.full_like(an.x, -np.inf)
    if not present:
        return top, bot
    x = an.x
    xa, xb = an.recess
    if rng.random() < 0.75:  # in the notch
        depth = rng.uniform(0.3, 2.5)
        fill = np.where((x > xa) & (x < xb), an.floor - depth, np.inf)
        has_syn = np.isfinite(syn_top)
        cap = np.where(has_syn, syn_top + 0.2, an.line(x) - rng.uniform(-0.5, 0.8))
        t = np.maximum(fill, cap)
        ok = t < an.floor - 0.05
        top = np.where(ok, t, top)
        bot = np.where(ok, an.floor, bot)
    if rng.random() < 0.6:  # a lens over the neck, proximal to the joint
        a = (span[0] if span[1] > span[0] else xa) - rng.uniform(0.5, 2.0)
        length = rng.uniform(2.0, 6.0)
        u = (x - (a - length / 2)) / (length / 2)
        lens = rng.uniform(0.3, 1.5) * np.sqrt(np.clip(1 - u**2, 0, 1))
        finite = np.isfinite(an.bone)
        floor = np.where(finite, an.bone - an.cartilage, np.inf)
        ok = (lens > 0.05) & finite & ~np.isfinite(syn_top)
        top = np.where(ok, np.minimum(top, floor - lens), top)
        bot = np.where(ok, np.maximum(bot, floor), bot)
    return top, bot


def _specular(
    an: _Anatomy, z: np.ndarray, dz: float, layers: dict[str, np.ndarray], labels: np.ndarray
) -> np.ndarray:
    """Coherent reflectors: the bone cortex (strong, weaker where the surface is steep), the
    cartilage surface, the skin entry line and the capsule; a row of same-sign scatterers."""
    nz, nx = labels.shape
    spec = np.zeros((nz, nx), np.float32)
    px = float(an.x[1] - an.x[0])

    def put(depth: np.ndarray, amp: np.ndarray) -> None:
        ok = np.isfinite(depth) & (depth > 0) & (depth < z[-1])
        pos = depth[ok] / dz - 0.5
        i = np.floor(pos).astype(int)
        f = (pos - i).astype(np.float32)
        cols = np.nonzero(ok)[0]
        np.add.at(spec, (i.clip(0, nz - 1), cols), amp[ok] * (1 - f))
        np.add.at(spec, ((i + 1).clip(0, nz - 1), cols), amp[ok] * f)

    slope = np.gradient(np.where(np.isfinite(an.bone), an.bone, np.nan), px)
    angle = np.nan_to_num(np.arctan(np.abs(slope)), nan=1.5)
    put(an.bone, np.where(an.gap, 0.3, 1.0) * (14.0 * np.cos(angle) ** 4 + 1.0))
    cart_top = np.where(an.cartilage > 0.05, an.bone - an.cartilage, np.nan)
    put(cart_top, np.full(nx, 3.0, np.float32))
    put(np.full(nx, 0.1), np.full(nx, 3.0, np.float32))
    put(layers["capsule_bot"], np.full(nx, 1.2, np.float32))
    return spec


def _doppler_frame(
    image: np.ndarray,
    labels: np.ndarray,
    synovium: np.ndarray,
    an: _Anatomy,
    grade: int,
    mode: str,
    roi: tuple[float, float, float, float],
    box: tuple[int, int, int, int],
    scan: Scan,
    rng: np.random.Generator,
    trapezoid: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, list[str], tuple[int, int, int, int]]:
    """The Doppler image (RGB, image grid), the synovial signal mask, the artefacts drawn and
    the colour box (screen pixels)."""
    nz, nx = image.shape
    px = scan.pixel_mm
    ix0, iy0 = box[0], box[1]
    # colour box: around the ROI, inside the image
    rx0, ry0, rx1, ry1 = (roi[0] - ix0, roi[1] - iy0, roi[2] - ix0, roi[3] - iy0)
    side = math.ceil(trapezoid * nx) + 2  # the box stays inside a trapezoid's top
    cx0 = int(max(side, rx0 - rng.uniform(1, 5) / px))
    cx1 = int(min(nx - side, rx1 + rng.uniform(1, 5) / px))
    cy0 = int(max(2, ry0 - rng.uniform(0.2, 1.0) / px))
    cy1 = int(min(nz - 2, ry1 + rng.uniform(0.5, 3.0) / px))
    inbox = np.zeros((nz, nx), bool)
    inbox[cy0 + 1 : cy1 - 1, cx0 + 1 : cx1 - 1] = True
    artefacts: list[str] = []
    signal_mask, power, vel = doppler_pattern(synovium, grade, rng, px)
    colour = signal_mask.copy()
    soft = np.isin(labels, (FAT, SEPTUM))
    # feeding / normal vessels outside the synovium (also when the grade is 0)
    if rng.random() < (0.55 if grade else 0.3):
        artefacts.append("feeding vessel")
        for _ in range(int(rng.integers(1, 3))):
            rows, cols = np.nonzero(soft & inbox)
            if len(rows) == 0:
                break
            i = int(rng.integers(len(rows)))
            paths = _grow_tree(
                soft,
                (rows[i], cols[i]),
                rng.uniform(0, 2 * np.pi),
                rng,
                step=max(0.1 / px, 0.8),
                max_steps=int(rng.integers(10, 40)),
                branch=0.03,
            )
            fl = _vessels_to_flow([(p, 1.0) for p in paths], (nz, nx), max(0.06 / px, 0.8))
            vm = fl.power > 0.45 * max(fl.power.max(), 1e-6)
            vm &= ~synovium
            colour |= vm
            power = np.where(vm, np.maximum(power, 0.5), power)
            vel = np.where(vm, rng.uniform(0.4, 1.4) * rng.choice([-1, 1]), vel)
    # mirror image of the signal under the cortex
    if signal_mask.any() and rng.random() < 0.2:
        artefacts.append("mirror")
        bone_row = np.where(np.isfinite(an.bone), an.bone / px, np.inf)
        rows = np.arange(nz)[:, None]
        src = np.rint(2 * bone_row[None, :] - rows).astype(int)
        ok = (rows > bone_row[None, :]) & (src >= 0) & (src < nz) & np.isfinite(bone_row)[None, :]
        src = src.clip(0, nz - 1)
        mir = np.zeros_like(colour)
        cols = np.broadcast_to(np.arange(nx)[None, :], (nz, nx))
        mir[ok] = signal_mask[src[ok], cols[ok]] & (rng.random(ok.sum()) < 0.6)
        colour |= mir
        power = np.where(mir, 0.4, power)
        vel = np.where(mir, vel[src, cols], vel)
    # flash: a patchy sheet of low-level colour in the superficial tissue (probe motion)
    if rng.random() < 0.08:
        artefacts.append("flash")
        patch = ndimage.gaussian_filter(rng.normal(0, 1, (nz, nx)), 0.15 / px)
        sup = np.isin(labels, (FAT, SEPTUM, DERMIS, TENDON))
        sheet = np.zeros((nz, nx), bool)
        c0 = int(rng.integers(0, max(nx // 2, 1)))
        sheet[:, c0 : c0 + int(nx * rng.uniform(0.2, 0.5))] = True
        fl = (patch > np.quantile(patch, 0.8)) & sup & sheet
        colour |= fl
        power = np.where(fl, 0.3, power)
        vel = np.where(fl, rng.uniform(0.1, 0.3) * rng.choice([-1, 1]), vel)
    # noise speckles, more in the dark (low-echo) parts of the box
    if rng.random() < 0.7:
        artefacts.append("noise")
        dark = image < 40
        prob = rng.uniform(0.00003, 0.0004) * (1 + 4 * dark)
        seeds = rng.random((nz, nx)) < prob
        speck = ndimage.binary_dilation(seeds) if rng.random() < 0.5 else seeds
        colour |= speck & ~signal_mask
        power = np.where(speck & ~signal_mask, 0.3, power)
        vel = np.where(speck & ~signal_mask, rng.uniform(-0.6, 0.6, (nz, nx)), vel)
    # colour write priority: no colour over very bright echoes (the cortex)
    colour &= image < 215
    colour &= inbox
    if mode == "colour":
        v = ((vel + 1) % 2) - 1  # aliasing above the Nyquist velocity
        v = np.where(np.abs(v) < 0.08, np.sign(v + 1e-9) * 0.08, v)
        rgb = _colour_map(v, "colour")
        if np.any(np.abs(vel) > 1):
            artefacts.append("aliasing")
    else:
        rgb = _colour_map(power, "power")
    out = np.repeat(image[..., None], 3, 2)
    out[colour] = rgb[colour]
    if grade:
        artefacts.append("blooming")
    return out, signal_mask & colour, artefacts, (cx0 + ix0, cy0 + iy0, cx1 + ix0, cy1 + iy0)


# =============================================================================== files


US_FILE_FORMATS = {"png": 0.35, "jpeg": 0.15, "dcm_rgb": 0.2, "dcm_ybr": 0.3}


def us_file_format(rng: np.random.Generator) -> str:
    """How a scanner's export is saved: PNG, JPEG, RGB DICOM or YBR_FULL_422 (JPEG) DICOM."""
    names = list(US_FILE_FORMATS)
    return str(rng.choice(names, p=list(US_FILE_FORMATS.values())))


def write_us_screen(
    path: str | Path,
    pixels: np.ndarray,
    fmt: str,
    *,
    patient_id: str,
    uid_seed: str,
    description: str = "",
) -> Path:
    """Save a screen as a scanner would: ``fmt`` is ``png``, ``jpeg``, ``dcm_rgb`` or
    ``dcm_ybr`` (JPEG baseline, YBR_FULL_422); the suffix of ``path`` is replaced."""
    from .imageio import write_dicom, write_png

    path = Path(path)
    if fmt == "png":
        return write_png(path.with_suffix(".png"), pixels)
    if fmt == "jpeg":
        from PIL import Image

        out = path.with_suffix(".jpg")
        Image.fromarray(pixels).save(out, quality=92, subsampling=1)
        return out
    if fmt not in ("dcm_rgb", "dcm_ybr"):
        raise ValueError(f"unknown screen format {fmt!r}; png, jpeg, dcm_rgb or dcm_ybr")
    rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, 2)
    return write_dicom(
        path.with_suffix(".dcm"),
        np.ascontiguousarray(rgb),
        patient_id=patient_id,
        modality="US",
        photometric="YBR_FULL_422" if fmt == "dcm_ybr" else "RGB",
        uid_seed=uid_seed,
        series_description=description,
    )


# =============================================================================== leakage


def _pixel_features(us: UltrasoundPhantom) -> dict[str, float]:
    """What a pixel counter sees: dark share in the ROI and colour pixels in the colour box."""
    from .ultrasound import doppler_mask

    x0, y0, x1, y1 = (round(v) for v in us.roi)
    grey = us.greyscale if us.greyscale.ndim == 2 else us.greyscale[..., :3].mean(-1)
    roi = ndimage.uniform_filter(grey[y0:y1, x0:x1].astype(np.float32), 5)
    flow = doppler_mask(us.doppler, us.colour_box, restrict_to_scan=False)
    dark = float((roi < 30).mean())
    n_flow = float(flow[y0:y1, x0:x1].sum())
    return {
        "dark_30": dark,
        "dark_60": float((roi < 60).mean()),
        "flow": n_flow,
        "flow_per_dark": n_flow / max(float((roi < 30).sum()), 1.0),
    }


def pixel_count_baselines(
    phantoms: list[UltrasoundPhantom], *, folds: int = 5, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Cross-validated accuracy of depth-3 trees on pixel counts (the leakage the physical
    phantoms must not have): SH from the dark share in the ROI, vascularity from the
    flow/dark ratio, the combined grade from all counts; with the majority-class accuracy."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    if len(phantoms) < 2 * folds:
        raise ValueError(
            f"need at least {2 * folds} pairs for {folds}-fold CV, got {len(phantoms)}"
        )
    feats = [_pixel_features(us) for us in phantoms]
    tasks = {
        "sh_from_dark_share": (["dark_30"], [us.synovial_hypertrophy for us in phantoms]),
        "sh_from_dark_shares": (
            ["dark_30", "dark_60"],
            [us.synovial_hypertrophy for us in phantoms],
        ),
        "vascularity_from_flow_per_dark": (["flow_per_dark"], [us.vascularity for us in phantoms]),
        "combined_from_pixel_counts": (
            ["dark_30", "dark_60", "flow", "flow_per_dark"],
            [us.combined for us in phantoms],
        ),
    }
    out = {}
    for name, (cols, y) in tasks.items():
        X = np.array([[f[c] for c in cols] for f in feats])
        y = np.asarray(y)
        n_min = int(np.bincount(y).compress(np.bincount(y) > 0).min())
        cv = StratifiedKFold(n_splits=min(folds, max(n_min, 2)), shuffle=True, random_state=seed)
        tree = DecisionTreeClassifier(max_depth=3, random_state=seed)
        acc = cross_val_score(tree, X, y, cv=cv, scoring="accuracy")
        out[name] = {
            "accuracy": float(acc.mean()),
            "sd": float(acc.std()),
            "majority": float(np.bincount(y).max() / len(y)),
            "n": len(y),
        }
    return out
