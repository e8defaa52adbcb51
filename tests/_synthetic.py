"""Small synthetic template and mask shared by the engine and batch tests."""

import numpy as np


def asymmetric_template(n: int = 12) -> np.ndarray:
    """Three Gaussian blobs of different sizes and weights: no rotational symmetry."""
    z, y, x = np.indices((n, n, n)) - n // 2
    t = (
        np.exp(-((x - 2) ** 2 + y**2 + (z + 1) ** 2) / 3.0)
        + 0.7 * np.exp(-((x + 2) ** 2 + (y - 2) ** 2 + z**2) / 2.0)
        + 0.5 * np.exp(-(x**2 + (y + 2) ** 2 + (z - 2) ** 2) / 2.0)
    )
    return t.astype(np.float32)


def sphere_mask(n: int = 12, radius: float = 5.0) -> np.ndarray:
    z, y, x = np.indices((n, n, n)) - n // 2
    return (np.sqrt(x**2 + y**2 + z**2) <= radius).astype(np.float32)
