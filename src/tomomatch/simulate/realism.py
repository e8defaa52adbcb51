"""Realism features of the simulator (docs/simulation.md, "Realism"): a counting-detector MTF/DQE
model, gold fiducials, a carbon film edge, crowder placement on an occupancy grid and per-tilt
in-plane rotation (residual misalignment). Every feature is off in the existing presets.

Geometry is :mod:`tomomatch.conventions`: tilt axis y, ``x' = x cos t + z sin t``; the beam is
``(-sin t, 0, cos t)``; volumes are ``[z, y, x]`` with centre index ``n // 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
import scipy.ndimage as ndi

from ..conventions import centre_index

__all__ = [
    "DETECTORS",
    "detector_parameters",
    "detector_mtf",
    "apply_detector",
    "sphere_projection_ft",
    "slab_edge_path_length",
    "carbon_edge_profile",
    "rotated_support",
    "CrowderPlacement",
    "place_crowders",
    "rotate_image",
]

# --------------------------------------------------------------------------- detector

#: Counting-mode detector models: (MTF at the detector's Nyquist frequency, DQE at zero frequency).
#: Rounded from published curves at 300 kV (K2 counting: McMullan et al. 2014, Ultramicroscopy
#: 147:156; K3 and Falcon 4 in counting mode are reported similar or somewhat better); they are
#: illustrative values, not fits: give measured values with ``detector_mtf_nyquist`` and
#: ``detector_dqe0``. ``ideal``: MTF 1 and DQE 1 (the simulator's behaviour without a detector).
DETECTORS: dict[str, tuple[float, float] | None] = {
    "ideal": None,
    "k2": (0.50, 0.75),
    "k3": (0.55, 0.80),
    "falcon4": (0.60, 0.85),
}


def detector_parameters(name: str, mtf_nyquist: float | None = None, dqe0: float | None = None) -> tuple[float, float]:
    """``(MTF at Nyquist, DQE(0))`` of a detector model with optional overrides."""
    base = DETECTORS.get(name) or (1.0, 1.0)
    return (float(mtf_nyquist) if mtf_nyquist is not None else base[0], float(dqe0) if dqe0 is not None else base[1])


def detector_mtf(f_cycles_per_pixel, mtf_nyquist: float) -> np.ndarray:
    """MTF of a counting detector at ``f`` cycles per *detector* pixel.

    ``MTF(f) = sinc(f) exp(-g f^2)``: the pixel aperture (``sinc(f) = sin(pi f) / (pi f)``, 2/pi at
    Nyquist) times a Gaussian point spread whose ``g`` makes ``MTF(1/2) = mtf_nyquist``. If
    ``mtf_nyquist`` is above 2/pi the Gaussian is left out and the aperture alone is used
    (``mtf_nyquist = 1`` means no MTF at all).
    """
    f = np.asarray(f_cycles_per_pixel, dtype=np.float64)
    if mtf_nyquist >= 1.0:
        return np.ones_like(f)
    s_n = 2.0 / math.pi
    g = max(0.0, -math.log(mtf_nyquist / s_n) / 0.25)
    return np.sinc(f) * np.exp(-g * f * f)


def apply_detector(
    expected: np.ndarray,
    counts: np.ndarray | None,
    pixel_angstrom: float,
    detector_pixel_angstrom: float,
    mtf_nyquist: float,
    dqe0: float,
) -> np.ndarray:
    """The detected image of one tilt through a counting detector.

    ``expected`` are the expected electrons per (tilt-series) pixel, ``counts`` a Poisson sample of
    them (or None: no shot noise). Linear-systems model of a counting detector: the signal is
    blurred by the MTF, the shot noise stays white (each electron counted once, in one pixel) and
    is amplified by ``1 / sqrt(DQE(0))``, so that ``DQE(f) = DQE(0) MTF(f)^2`` (noise power
    spectrum flat; coincidence loss, which lowers the noise power towards Nyquist, is left out):

    ``D = IFT[MTF . FT(E)] + (N - E) / sqrt(DQE(0))``.

    The MTF is evaluated at ``f * detector_pixel / pixel`` cycles per detector pixel (a tilt
    series binned from a finer detector sees only the low part of the detector's MTF).
    """
    e = np.asarray(expected, dtype=np.float64)
    ny, nx = e.shape
    scale = float(detector_pixel_angstrom) / float(pixel_angstrom)
    fy = np.fft.fftfreq(ny)[:, None] * scale
    fx = np.fft.rfftfreq(nx)[None, :] * scale
    mtf = detector_mtf(np.sqrt(fx * fx + fy * fy), mtf_nyquist)
    out = sfft.irfft2(sfft.rfft2(e) * mtf, s=(ny, nx))
    if counts is not None:
        out += (np.asarray(counts, dtype=np.float64) - e) / math.sqrt(dqe0)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- gold and carbon


def sphere_projection_ft(k_per_angstrom, radius_angstrom: float, potential_volt: float) -> np.ndarray:
    """2D transform (V A^3) of the projection of a uniform ball: the central slice of its 3D
    transform, ``V 4 pi R^3 (sin x - x cos x) / x^3`` with ``x = 2 pi k R`` (``V 4/3 pi R^3``
    at ``k = 0``)."""
    k = np.asarray(k_per_angstrom, dtype=np.float64)
    r = float(radius_angstrom)
    x = 2 * math.pi * k * r
    small = x < 1e-3
    xs = np.where(small, 1.0, x)
    f = np.where(small, 1.0 / 3.0 - x * x / 30.0, (np.sin(xs) - xs * np.cos(xs)) / xs**3)
    return float(potential_volt) * 4 * math.pi * r**3 * f


def slab_edge_path_length(u_angstrom, tilt_deg: float, x_edge: float, z_low: float, z_high: float) -> np.ndarray:
    """Path length (A) of the beam through the half-slab ``{x > x_edge, z_low < z < z_high}``
    (invariant along y) for the rays that reach image coordinate ``x' = u`` at tilt ``t``.

    The ray through ``u`` is ``(x, z) = (u cos t - s sin t, u sin t + s cos t)`` (the beam
    ``(-sin t, 0, cos t)`` is a unit vector, so ``s`` is the path length).
    """
    u = np.asarray(u_angstrom, dtype=np.float64)
    t = math.radians(tilt_deg)
    c, sn = math.cos(t), math.sin(t)
    s_lo = (z_low - u * sn) / c
    s_hi = (z_high - u * sn) / c
    if sn > 1e-12:
        s_hi = np.minimum(s_hi, (u * c - x_edge) / sn)
    elif sn < -1e-12:
        s_lo = np.maximum(s_lo, (u * c - x_edge) / sn)
    else:
        s_hi = np.where(u > x_edge, s_hi, s_lo)
    return np.clip(s_hi - s_lo, 0.0, None)


def carbon_edge_profile(
    nx: int, pixel: float, tilt_deg: float, shift_angstrom: float, x_edge: float, z_low: float, z_high: float
) -> np.ndarray:
    """Pixel-averaged path length (A) through the carbon half-slab for every image column (8
    samples per pixel), the image shifted by ``shift_angstrom`` along x (the tilt's jitter)."""
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    cols = np.arange(nx)[:, None] + sub[None, :]
    u = (cols - centre_index(nx)) * pixel - shift_angstrom
    return slab_edge_path_length(u, tilt_deg, x_edge, z_low, z_high).mean(axis=1)


# --------------------------------------------------------------------------- crowders


def _zyx_matrix(rotation: np.ndarray) -> np.ndarray:
    p = np.eye(3)[::-1]
    return p @ np.asarray(rotation, dtype=float) @ p


def rotated_support(density: np.ndarray, rotation: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Boolean support (density above ``fraction`` of its maximum) of ``density`` posed by
    ``rotation`` (``posed(r) = density(R^T (r - c) + c)``, :mod:`tomomatch.conventions`), same
    cube, trilinear interpolation."""
    d = np.asarray(density, dtype=np.float32)
    n = d.shape[0]
    c = np.full(3, float(centre_index(n)))
    m = _zyx_matrix(np.asarray(rotation).T)
    out = ndi.affine_transform(d, m, offset=c - m @ c, order=1, mode="constant", cval=0.0)
    return out > fraction * float(d.max())


@dataclass
class CrowderPlacement:
    """Crowders placed by :func:`place_crowders`: structure index, centre voxel ``(z, y, x)``
    (integers), pose, and the achieved fraction of the slab's voxels they occupy."""

    kind: np.ndarray
    centre_zyx: np.ndarray
    rotation: np.ndarray
    fraction: float
    n_failures: int


def _paste_mask(occ: np.ndarray, mask: np.ndarray, centre_zyx, test_only: bool) -> tuple[bool, int]:
    """Whether ``mask`` centred on ``centre_zyx`` overlaps ``occ`` (clipped to the volume); if
    not and not ``test_only``, set it. Returns (free, voxels inside the volume)."""
    n = mask.shape[0]
    c = centre_index(n)
    lo = np.asarray(centre_zyx, dtype=int) - c
    a = np.maximum(lo, 0)
    b = np.minimum(lo + n, occ.shape)
    if np.any(b <= a):
        return True, 0
    sub = mask[a[0] - lo[0] : b[0] - lo[0], a[1] - lo[1] : b[1] - lo[1], a[2] - lo[2] : b[2] - lo[2]]
    region = occ[a[0] : b[0], a[1] : b[1], a[2] : b[2]]
    if np.any(region & sub):
        return False, 0
    if not test_only:
        region |= sub
    return True, int(sub.sum())


def place_crowders(
    rng: np.random.Generator,
    densities: list[np.ndarray],
    occupancy: np.ndarray,
    slab_index_z: tuple[int, int],
    target_fraction: float,
    max_failures: int = 300,
    tries_per_pose: int = 40,
    support_fraction: float = 0.05,
) -> CrowderPlacement:
    """Random non-overlapping crowders until they occupy ``target_fraction`` of the slab.

    ``densities`` are the crowder structures at the tomogram voxel (cubes, centre ``n // 2``);
    ``occupancy`` (``[z, y, x]`` bool) holds what is already there (particles, gold) and is
    updated in place. Each crowder draws a structure (uniformly), a random rotation and then up to
    ``tries_per_pose`` random centres inside the field and the slab
    ``slab_index_z = (z0, z1)`` (its whole support must lie in the slab; in x and y it may leave the
    field, as crowders continue beyond it); its support (density above ``support_fraction`` of the
    maximum, posed) must not share a voxel with anything placed. The fraction counts the crowder
    voxels inside the field and the slab over the slab's voxels in the field. Stops at the target
    or after ``max_failures`` poses that found no room.
    """
    from scipy.spatial.transform import Rotation

    nz, ny, nx = occupancy.shape
    z0, z1 = int(slab_index_z[0]), int(slab_index_z[1])
    slab_voxels = max(1, (z1 - z0 + 1) * ny * nx)
    crowd = np.zeros_like(occupancy)
    kinds, centres, rots = [], [], []
    got, fails = 0, 0
    half = [centre_index(d.shape[0]) for d in densities]
    # z extent of the support in its own box, per rotation: the support must fit in the slab
    while got < target_fraction * slab_voxels and fails < max_failures:
        k = int(rng.integers(len(densities)))
        R = Rotation.random(random_state=rng).as_matrix()
        mask = rotated_support(densities[k], R, support_fraction)
        zz = np.nonzero(mask.any(axis=(1, 2)))[0]
        if zz.size == 0:
            fails += 1
            continue
        zlo = z0 + (half[k] - zz[0])
        zhi = z1 - (zz[-1] - half[k])
        if zhi < zlo:
            fails += 1
            continue
        placed = False
        for _ in range(tries_per_pose):
            c = (int(rng.integers(zlo, zhi + 1)), int(rng.integers(ny)), int(rng.integers(nx)))
            free, _n = _paste_mask(occupancy, mask, c, test_only=False)
            if free:
                _paste_mask(crowd, mask, c, test_only=False)
                kinds.append(k)
                centres.append(c)
                rots.append(R)
                got = int(crowd[z0 : z1 + 1].sum())
                placed = True
                break
        if not placed:
            fails += 1
    return CrowderPlacement(
        kind=np.asarray(kinds, dtype=int),
        centre_zyx=np.asarray(centres, dtype=int).reshape(-1, 3),
        rotation=np.asarray(rots, dtype=float).reshape(-1, 3, 3),
        fraction=got / slab_voxels,
        n_failures=fails,
    )


# --------------------------------------------------------------------------- misalignment


def rotate_image(image: np.ndarray, angle_deg: float, centre_yx: tuple[float, float]) -> np.ndarray:
    """``image`` rotated by ``angle_deg`` about ``centre_yx`` (cubic spline, zero outside): a
    feature at ``(x, y)`` relative to the centre moves to ``(x cos a - y sin a, x sin a + y cos a)``
    (x = column, y = row, counter-clockwise for positive ``a`` with y up)."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    # output (y, x) samples the input at R^-1 (out - ctr) + ctr; with R^-1 = [[c, s], [-s, c]] in
    # (x, y): x_in = c x + s y, y_in = -s x + c y, i.e. in (y, x) order the matrix [[c, -s], [s, c]]
    mat = np.array([[c, -s], [s, c]])
    ctr = np.array([float(centre_yx[0]), float(centre_yx[1])])
    return ndi.affine_transform(
        np.asarray(image, dtype=np.float64), mat, offset=ctr - mat @ ctr, order=3, mode="constant", cval=0.0
    ).astype(np.float32)
