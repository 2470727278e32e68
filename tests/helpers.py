"""Geometry checks shared by the tests (scikit-image only: no plotting library needed)."""

import numpy as np
from skimage.measure import points_in_poly


def inside_or_near(polygon, points, tol):
    """Inside the polygon or within ``tol`` of its outline, whatever the polygon's orientation."""
    polygon = np.asarray(polygon, dtype=float)
    points = np.asarray(points, dtype=float)
    inside = points_in_poly(points, polygon)
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab = b - a
    t = np.clip(((points[:, None] - a) * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)
    nearest = a + t[..., None] * ab
    dist = np.linalg.norm(points[:, None] - nearest, axis=-1).min(axis=1)
    return inside | (dist <= tol)
