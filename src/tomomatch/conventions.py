"""The one place where tomomatch's geometric and physical conventions are defined.

Everything else imports from here; ``docs/conventions.md`` states the same rules in prose,
with hand-computed examples that ``tests/test_conventions.py`` checks.

Axis order
    Volumes in memory are numpy/torch arrays indexed ``[z, y, x]``: exactly what
    ``mrcfile`` returns, so no transpose happens at I/O. Coordinates and vectors are
    written ``(x, y, z)``. Rotation matrices left-multiply column vectors ``(x, y, z)``.

Units
    Lengths in Angstrom (positions, voxel sizes, offsets); tilt angles in degrees at the
    API surface (radians only inside numerics, named ``*_rad``); defocus in micrometres,
    positive = underfocus; dose in electrons per square Angstrom, *accumulated* before
    the tilt was taken (RELION ``rlnMicrographPreExposure``); voltage in kV; Cs in mm.

Tomogram centre
    For an axis of ``n`` voxels the centre is voxel index ``n // 2`` (the FFT centre):
    ``n = 100 -> 50``, ``n = 101 -> 50``. A template box's rotation centre is the same
    rule. Centred coordinates in Angstrom are ``(index - n // 2) * voxel_size``.

Tilt geometry
    The tilt axis is y. A tilt by ``theta`` is the right-handed rotation
    ``Rt = R_y(theta) = [[c, 0, s], [0, 1, 0], [-s, 0, c]]`` of the frame: the image's
    horizontal axis is ``u = (cos t, 0, -sin t)``, the beam is ``b = (sin t, 0, cos t)``.
    A point ``(x, y, z)`` projects to ``x' = x cos t - z sin t``, ``y' = y`` and sits at
    depth ``w = x sin t + z cos t`` along the beam. The 2D transform of a tilt image is
    the central slice of the 3D transform spanned by ``u`` and ``y``.

Defocus handedness
    ``h`` in ``{+1, -1, 0}``. The defocus of a point at centred ``(x, z)`` Angstrom in the
    tilt ``theta`` image is ``df(theta) + h * (x sin t + z cos t)`` (h flips the whole depth:
    the RELION ``rlnTomoHand`` / Warp ``AreAnglesInverted`` meaning). ``h = 0`` means no
    gradient. pytom's ``--defocus-handedness -1`` negates the tilt angle instead, which flips
    only the ``x sin t`` term; that is available as ``mode="pytom"``.

Euler angles
    A pose is the active rotation matrix ``R`` that carries the template onto the particle:
    ``particle(r) = template(R^T (r - p))``. Stored angles are RELION's: intrinsic ZYZ
    ``(rot, tilt, psi)`` in degrees with ``R = Rotation.from_euler("ZYZ", angles).inv()``.
    pytom's anticlockwise ZXZ ``(phi, theta, psi)`` radians map through RELION as pytom's own
    exporter does: ``relion = Rotation.from_euler("ZXZ", -pytom).as_euler("ZYZ")``.
    Warp writes RELION's columns, so Warp = RELION.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "AXIS_ORDER",
    "centre_index",
    "index_to_centered_angstrom",
    "centered_angstrom_to_index",
    "relion5_centered_angstrom",
    "relion5_centered_to_index",
    "electron_wavelength_angstrom",
    "tilt_rotation",
    "projected_x",
    "depth_along_beam",
    "defocus_offset_angstrom",
    "defocus_at_point_um",
    "Hand",
    "check_hand",
    "hand_from_relion",
    "hand_from_warp",
    "warp_tilt_angles_to_internal",
    "relion_to_matrix",
    "matrix_to_relion",
    "pytom_to_matrix",
    "matrix_to_pytom",
    "warp_to_matrix",
    "matrix_to_warp",
    "ANGSTROM_PER_MICROMETRE",
]

AXIS_ORDER = ("z", "y", "x")
ANGSTROM_PER_MICROMETRE = 1.0e4

Hand = Literal[-1, 0, 1]
HandMode = Literal["full", "pytom"]


# --------------------------------------------------------------------------- centre


def centre_index(n: int | np.ndarray) -> int | np.ndarray:
    """Centre voxel index of an axis of ``n`` voxels: ``n // 2`` (100 -> 50, 101 -> 50)."""
    return np.asarray(n) // 2 if isinstance(n, np.ndarray) else int(n) // 2


def index_to_centered_angstrom(index_xyz, shape_zyx, voxel_size_angstrom: float) -> np.ndarray:
    """Voxel indices ``(..., 3)`` as ``(x, y, z)`` to centred Angstrom.

    ``shape_zyx`` is the array shape (z, y, x) as in memory.
    """
    idx = np.asarray(index_xyz, dtype=float)
    centre = np.array([centre_index(s) for s in shape_zyx[::-1]], dtype=float)
    return (idx - centre) * float(voxel_size_angstrom)


def centered_angstrom_to_index(centered_xyz, shape_zyx, voxel_size_angstrom: float) -> np.ndarray:
    """Inverse of :func:`index_to_centered_angstrom` (float indices, not rounded)."""
    c = np.asarray(centered_xyz, dtype=float)
    centre = np.array([centre_index(s) for s in shape_zyx[::-1]], dtype=float)
    return c / float(voxel_size_angstrom) + centre


def relion5_centered_angstrom(index_xyz, tomogram_voxel_angstrom: float,
                              unbinned_size_xyz, tilt_series_pixel_angstrom: float) -> np.ndarray:
    """Voxel indices of a (possibly binned) tomogram to RELION 5 ``rlnCenteredCoordinate*Angst``.

    RELION 5 measures from the centre of the *unbinned* tomogram (``rlnTomoSizeX/Y/Z`` at
    ``rlnTomoTiltSeriesPixelSize``). tomomatch takes that centre as unbinned index
    ``N // 2`` (RELION's ``int(w/2)`` in ``setProjectionMatrix``).
    """
    idx = np.asarray(index_xyz, dtype=float)
    centre_a = np.array([centre_index(int(n)) for n in unbinned_size_xyz], dtype=float)
    return idx * float(tomogram_voxel_angstrom) - centre_a * float(tilt_series_pixel_angstrom)


def relion5_centered_to_index(centered_xyz, tomogram_voxel_angstrom: float,
                              unbinned_size_xyz, tilt_series_pixel_angstrom: float) -> np.ndarray:
    """Inverse of :func:`relion5_centered_angstrom`."""
    c = np.asarray(centered_xyz, dtype=float)
    centre_a = np.array([centre_index(int(n)) for n in unbinned_size_xyz], dtype=float)
    return (c + centre_a * float(tilt_series_pixel_angstrom)) / float(tomogram_voxel_angstrom)


# --------------------------------------------------------------------------- optics


def electron_wavelength_angstrom(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Angstrom (300 kV -> 0.019687 A)."""
    v = float(voltage_kv) * 1e3
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    lam_m = h / math.sqrt(2 * m0 * e * v * (1 + e * v / (2 * m0 * c * c)))
    return lam_m * 1e10


# --------------------------------------------------------------------------- tilt geometry


def tilt_rotation(tilt_deg) -> np.ndarray:
    """``R_y(theta)`` as ``(..., 3, 3)``: columns are the image u axis, y, and the beam."""
    t = np.deg2rad(np.asarray(tilt_deg, dtype=float))
    c, s = np.cos(t), np.sin(t)
    out = np.zeros(t.shape + (3, 3))
    out[..., 0, 0] = c
    out[..., 0, 2] = s
    out[..., 1, 1] = 1.0
    out[..., 2, 0] = -s
    out[..., 2, 2] = c
    return out


def projected_x(x, z, tilt_deg):
    """Horizontal image coordinate of a point: ``x cos t - z sin t`` (same units as x, z)."""
    t = np.deg2rad(tilt_deg)
    return np.asarray(x) * np.cos(t) - np.asarray(z) * np.sin(t)


def depth_along_beam(x, z, tilt_deg):
    """Depth of a point along the beam: ``x sin t + z cos t`` (same units as x, z)."""
    t = np.deg2rad(tilt_deg)
    return np.asarray(x) * np.sin(t) + np.asarray(z) * np.cos(t)


def check_hand(hand) -> int:
    """Validate a defocus handedness value and return it as int (+1, -1 or 0)."""
    try:
        h = int(hand)
    except (TypeError, ValueError):
        raise ValueError(f"defocus handedness must be +1, -1 or 0, got {hand!r}") from None
    if h not in (-1, 0, 1) or float(hand) != h:
        raise ValueError(f"defocus handedness must be +1, -1 or 0, got {hand!r}")
    return h


def defocus_offset_angstrom(x_angstrom, z_angstrom, tilt_deg, hand: int,
                            mode: HandMode = "full"):
    """Defocus offset in Angstrom of a point at centred ``(x, z)`` in the tilt image.

    ``mode="full"`` (default): ``h * (x sin t + z cos t)``.
    ``mode="pytom"`` (pytom-match-pick compatibility): ``z cos t + h * x sin t`` for
    ``h = +-1`` (pytom negates the tilt angle for ``-1``), ``0`` for ``h = 0``.
    Positive means more underfocus. Broadcasts over all arguments.
    """
    h = check_hand(hand)
    t = np.deg2rad(np.asarray(tilt_deg, dtype=float))
    x = np.asarray(x_angstrom, dtype=float)
    z = np.asarray(z_angstrom, dtype=float)
    if h == 0:
        return np.zeros(np.broadcast(x, z, t).shape)
    if mode == "full":
        return h * (x * np.sin(t) + z * np.cos(t))
    if mode == "pytom":
        return z * np.cos(t) + h * x * np.sin(t)
    raise ValueError(f"unknown handedness mode {mode!r}; expected 'full' or 'pytom'")


def defocus_at_point_um(defocus_um, x_angstrom, z_angstrom, tilt_deg, hand: int,
                        mode: HandMode = "full"):
    """Per-tilt defocus (micrometres, + = underfocus) shifted to a point at centred (x, z) A."""
    off = defocus_offset_angstrom(x_angstrom, z_angstrom, tilt_deg, hand, mode)
    return np.asarray(defocus_um, dtype=float) + off / ANGSTROM_PER_MICROMETRE


def hand_from_relion(tomo_hand: float) -> int:
    """RELION 5 ``rlnTomoHand`` is tomomatch's ``h`` unchanged (+1 or -1)."""
    h = check_hand(round(float(tomo_hand)))
    if h == 0:
        raise ValueError("rlnTomoHand must be +1 or -1")
    return h


def hand_from_warp(are_angles_inverted: bool) -> int:
    """Warp ``AreAnglesInverted``: False -> -1, True -> +1 (after negating Warp's angles)."""
    return 1 if bool(are_angles_inverted) else -1


def warp_tilt_angles_to_internal(warp_angles_deg) -> np.ndarray:
    """Warp stores tilt angles with the opposite sign to IMOD/AreTomo/RELION: negate them."""
    return -np.asarray(warp_angles_deg, dtype=float)


# --------------------------------------------------------------------------- Euler angles


def relion_to_matrix(rot_tilt_psi_deg) -> np.ndarray:
    """RELION (rot, tilt, psi) degrees ``(..., 3)`` -> pose matrices ``(..., 3, 3)``."""
    a = np.asarray(rot_tilt_psi_deg, dtype=float)
    m = Rotation.from_euler("ZYZ", a.reshape(-1, 3), degrees=True).inv().as_matrix()
    return m.reshape(a.shape[:-1] + (3, 3))


def matrix_to_relion(matrix) -> np.ndarray:
    """Pose matrices ``(..., 3, 3)`` -> RELION (rot, tilt, psi) degrees ``(..., 3)``."""
    m = np.asarray(matrix, dtype=float)
    a = Rotation.from_matrix(m.reshape(-1, 3, 3)).inv().as_euler("ZYZ", degrees=True)
    return a.reshape(m.shape[:-2] + (3,))


def pytom_to_matrix(phi_theta_psi_rad) -> np.ndarray:
    """pytom anticlockwise ZXZ (phi, theta, psi) radians -> pose matrices."""
    a = np.asarray(phi_theta_psi_rad, dtype=float)
    m = Rotation.from_euler("ZXZ", -a.reshape(-1, 3)).inv().as_matrix()
    return m.reshape(a.shape[:-1] + (3, 3))


def matrix_to_pytom(matrix) -> np.ndarray:
    """Pose matrices -> pytom anticlockwise ZXZ (phi, theta, psi) radians."""
    m = np.asarray(matrix, dtype=float)
    a = -Rotation.from_matrix(m.reshape(-1, 3, 3)).inv().as_euler("ZXZ")
    return a.reshape(m.shape[:-2] + (3,))


# Warp writes RELION's rot/tilt/psi columns from the same ZYZ matrix.
warp_to_matrix = relion_to_matrix
matrix_to_warp = matrix_to_relion
