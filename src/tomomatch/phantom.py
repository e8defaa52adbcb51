"""Built-in chiral synthetic phantom: a ribosome-sized, asymmetric, chiral density map.

The phantom is a sum of isotropic 3D Gaussians, so it can be evaluated at any voxel size
with the same physical content (tests and the ``ci`` simulator preset need no shared data).
Shape, in units of the diameter ``D``:

* a lumpy "large subunit" body made of several overlapping blobs (no symmetry axis);
* a smaller "small subunit" head above it (+z), offset in x and y;
* a **right-handed helix** of small beads winding around +z on the -x side (the chiral
  feature: its mirror image is a left-handed helix);
* an L1-stalk-like protrusion and a short tail.

Values are electrostatic potential in volts above the surrounding ice (peak about 2.5 V), so
the phantom can stand in for a protein's contrast in a weak-phase simulation. Mirroring
negates x. The density is positive, ``[z, y, x]``, centred on voxel ``n // 2`` along each axis
(:mod:`tomomatch.conventions`).
"""

from __future__ import annotations

import math

import numpy as np

from .conventions import centre_index
from .errors import InputError

__all__ = ["phantom_components", "phantom_density", "phantom_default_box", "PHANTOM_VARIANTS"]

PHANTOM_VARIANTS = ("ribosome", "decoy")


def phantom_components(
    diameter_angstrom: float = 250.0, variant: str = "ribosome", mirror: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian components of the phantom.

    Parameters
    ----------
    diameter_angstrom
        Overall size ``D`` (the densest part spans about ``D``).
    variant
        ``"ribosome"``: the chiral ribosome-like particle. ``"decoy"``: a different, smaller
        (about 0.7 D) elongated complex with a left-handed bead chain, to serve as a decoy.
    mirror
        Negate x (the enantiomer).

    Returns
    -------
    centres_xyz_angstrom (m, 3), sigmas_angstrom (m,), amplitudes_volt (m,)
    """
    d = float(diameter_angstrom)
    if not d > 0:
        raise InputError(f"phantom diameter {diameter_angstrom} must be > 0", field="diameter")
    comps: list[tuple[float, float, float, float, float]] = []  # x, y, z, sigma, amplitude (units of D / V)
    if variant == "ribosome":
        # large subunit: three unequal lobes that do not share a mirror plane
        comps += [
            (0.02, 0.00, -0.10, 0.12, 1.6),
            (0.17, 0.10, -0.14, 0.10, 1.6),
            (-0.12, -0.12, -0.16, 0.09, 1.7),
            (0.10, -0.18, 0.00, 0.08, 1.5),
            (-0.06, 0.18, -0.24, 0.07, 1.4),
        ]
        # small subunit head, offset in x and y
        comps += [
            (0.12, 0.06, 0.20, 0.10, 1.6),
            (0.24, -0.06, 0.26, 0.07, 1.4),
        ]
        # right-handed helix of beads around +z on the -x side: (r cos p, r sin p, pitch * p)
        cx, cy = -0.24, 0.04
        for i in range(8):
            p = i * (math.pi / 3.0)
            comps.append((cx + 0.12 * math.cos(p), cy + 0.12 * math.sin(p), -0.22 + 0.065 * i, 0.045, 2.4))
        # stalk protrusion (+x, +y, up) and tail (-y, down)
        comps += [
            (0.36, 0.16, 0.04, 0.05, 1.6),
            (0.44, 0.24, 0.10, 0.04, 1.6),
            (-0.02, -0.32, -0.28, 0.05, 1.5),
        ]
    elif variant == "decoy":
        s = 0.7
        comps += [
            (0.0, 0.0, 0.0, 0.12 * s, 2.0),
            (0.0, 0.22 * s, 0.08 * s, 0.10 * s, 1.7),
            (0.0, -0.24 * s, -0.05 * s, 0.10 * s, 1.7),
            (0.15 * s, -0.05 * s, 0.15 * s, 0.07 * s, 1.5),
        ]
        for i in range(6):  # left-handed bead chain along y
            p = -i * (math.pi / 3.0)
            comps.append(
                (
                    0.14 * s * math.cos(p) - 0.18 * s,
                    -0.25 * s + 0.1 * s * i,
                    0.14 * s * math.sin(p),
                    0.035 * s * 1.3,
                    2.2,
                )
            )
    else:
        raise InputError(
            f"unknown phantom variant {variant!r}; expected one of {PHANTOM_VARIANTS}", field="phantom variant"
        )
    arr = np.array(comps, dtype=float)
    centres = arr[:, :3] * d
    sigmas = arr[:, 3] * d
    amps = arr[:, 4].copy()
    if mirror:
        centres[:, 0] = -centres[:, 0]
    return centres, sigmas, amps


def phantom_default_box(voxel_size_angstrom: float, diameter_angstrom: float = 250.0) -> int:
    """Smallest even box (voxels) holding the phantom with a margin: ``1.25 D / voxel + 4``."""
    n = int(math.ceil(1.25 * diameter_angstrom / voxel_size_angstrom)) + 4
    return n + (n % 2)


def phantom_density(
    voxel_size_angstrom: float,
    box_size: int | None = None,
    diameter_angstrom: float = 250.0,
    variant: str = "ribosome",
    mirror: bool = False,
) -> np.ndarray:
    """Evaluate the phantom on a cubic grid.

    Parameters
    ----------
    voxel_size_angstrom
        Voxel size of the output grid.
    box_size
        Cube edge in voxels; default :func:`phantom_default_box`.
    diameter_angstrom, variant, mirror
        See :func:`phantom_components`.

    Returns
    -------
    float32 array ``[z, y, x]`` (volts), centred on voxel ``box_size // 2``. Each Gaussian is
    widened by half a voxel in quadrature (amplitude scaled to keep its integral), so the
    integrated potential is the same at every voxel size and the map is band-limited.
    """
    v = float(voxel_size_angstrom)
    if not v > 0:
        raise InputError(f"voxel size {voxel_size_angstrom} must be > 0", field="voxel size")
    n = phantom_default_box(v, diameter_angstrom) if box_size is None else int(box_size)
    if n < 4:
        raise InputError(f"phantom box size {n} too small", field="box size")
    centres, sigmas, amps = phantom_components(diameter_angstrom, variant, mirror)
    c = centre_index(n)
    ax = (np.arange(n) - c) * v
    out = np.zeros((n, n, n), dtype=np.float64)
    for (x0, y0, z0), s, a in zip(centres, sigmas, amps):
        se = math.sqrt(s * s + (0.5 * v) ** 2)
        ae = a * (s / se) ** 3
        gx = np.exp(-0.5 * ((ax - x0) / se) ** 2)
        gy = np.exp(-0.5 * ((ax - y0) / se) ** 2)
        gz = np.exp(-0.5 * ((ax - z0) / se) ** 2)
        out += ae * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    return out.astype(np.float32)
