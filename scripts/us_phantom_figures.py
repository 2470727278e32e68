"""Docs figures of the anatomical ultrasound phantoms (docs/images/us_*.png).

Usage: PYTHONPATH=. python scripts/us_phantom_figures.py [--out docs/images] [--seed 7]

One picture per site kind (MCP, PIP, wrist, MTP): the grey-scale screen and the Doppler screen
side by side, downscaled; and one picture of the EOSS synovial-hypertrophy grades as drawn
(an MCP at SH 0-3: the B-mode crop, then the tissue labels with the bone line in red).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from annotation_tools.phantom_us import SYNOVIUM, render_ultrasound_physical

CASES = (  # (site, SH, Doppler, Doppler mode, colour bars, file name)
    ("R_mcp_2", 2, 2, "colour", 1, "us_mcp"),
    ("L_pip_2", 3, 3, "power", 1, "us_pip"),
    ("R_wrist", 2, 1, "colour", 2, "us_wrist"),
    ("L_mtp_2", 3, 2, "power", 2, "us_mtp"),
)


def _side_by_side(grey: np.ndarray, doppler: np.ndarray, width: int = 1100) -> Image.Image:
    a = Image.fromarray(grey).convert("RGB")
    b = Image.fromarray(doppler)
    w = width // 2
    h = round(a.height * w / a.width)
    out = Image.new("RGB", (2 * w + 6, h), (40, 40, 40))
    out.paste(a.resize((w, h), Image.LANCZOS), (0, 0))
    out.paste(b.resize((w, h), Image.LANCZOS), (w + 6, 0))
    return out


def _grades_figure(seed: int) -> Image.Image:
    tiles = []
    for sh in range(4):
        us = render_ultrasound_physical(
            "R_mcp_3", sh, 0, np.random.default_rng([seed, sh]), effusion=False, screen=(1024, 768)
        )
        x0, y0 = us.image_box[:2]
        rx0, ry0, rx1, ry1 = (int(v) for v in us.roi)
        grey = us.greyscale[ry0:ry1, rx0:rx1]
        lab = np.zeros((*us.labels.shape, 3), np.uint8) + 70
        lab[us.labels == SYNOVIUM] = (200, 0, 200)
        lab[us.labels >= 9] = (230, 230, 230)  # cartilage, bone, joint
        cols = np.arange(us.labels.shape[1])
        rows = np.clip(np.rint(us.line_y).astype(int), 0, us.labels.shape[0] - 1)
        for d in (-1, 0, 1):
            lab[np.clip(rows + d, 0, lab.shape[0] - 1), cols] = (255, 40, 40)
        lab = lab[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0]
        g = Image.fromarray(grey).convert("RGB").resize((300, 220), Image.LANCZOS)
        m = Image.fromarray(lab).resize((300, 220), Image.NEAREST)
        tile = Image.new("RGB", (300, 466), (20, 20, 20))
        tile.paste(g, (0, 24))
        tile.paste(m, (0, 246))
        ImageDraw.Draw(tile).text((6, 4), f"SH {sh}", fill=(255, 255, 255))
        tiles.append(tile)
    out = Image.new("RGB", (4 * 304, 466), (20, 20, 20))
    for k, t in enumerate(tiles):
        out.paste(t, (k * 304, 0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for k, (site, sh, vasc, mode, bars, name) in enumerate(CASES):
        us = render_ultrasound_physical(
            site,
            sh,
            vasc,
            np.random.default_rng([args.seed, k]),
            doppler_mode=mode,
            n_colour_bars=bars,
        )
        _side_by_side(us.greyscale, us.doppler).save(out / f"{name}.png", optimize=True)
        print(f"{name}.png: {site} SH {sh} Doppler {vasc} ({us.doppler_mode}), {us.artefacts}")
    _grades_figure(args.seed).save(out / "us_sh_grades.png", optimize=True)
    print("us_sh_grades.png")


if __name__ == "__main__":
    main()
