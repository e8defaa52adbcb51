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

Tilt geometry (geometry version 2: IMOD, AreTomo, RELION 5)
    The tilt axis is y. The frame of the tilt image ``i`` is RELION 5's projection rotation
    ``P = Rz(zrot) Ry(ytilt) Rx(xtilt)`` (right-handed rotations, matrix times column
    vector; 3dem/relion ``tomogram.cpp`` ``setProjectionMatrix``). Its rows, written in the
    tomogram frame, are the image's horizontal axis, the image's vertical axis and the beam
    (depth) direction (:func:`tilt_frame`). For ``xtilt = zrot = 0`` and tilt ``t``: a point
    ``(x, y, z)`` projects to ``x' = x cos t + z sin t``, ``y' = y`` and sits at depth
    ``w = -x sin t + z cos t`` (IMOD ``tilt``, AreTomo and RELION reconstruct with this). The 2D
    transform of a tilt image is the central slice of the 3D transform perpendicular to the
    beam. ``GEOMETRY_VERSION`` names this geometry in job files (1 was its mirror image,
    ``x' = x cos t - z sin t``, used by tomomatch before December 2026).

Defocus handedness
    ``h`` in ``{+1, -1, 0}`` is RELION 5's ``rlnTomoHand``. The defocus of a point in the tilt
    image is ``df(tilt) + h * w`` with ``w`` the depth above (RELION ``Tomogram::getCtf``:
    ``DeltafU += rlnTomoHand * pixelSize * defocusSlope * depth``); ``h = 0`` means no
    gradient. ``mode="pytom"`` reproduces pytom-match-pick's ``z cos(s t) + x sin(s t)``
    (``s = -1`` for ``--defocus-handedness -1``), which in this geometry is ``h = -s`` for the x
    gradient; pytom ``-1`` equals tomomatch ``+1`` exactly (:func:`hand_to_pytom`).

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
import warnings
from typing import Literal, overload

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
    "GEOMETRY_VERSION",
    "tilt_frame",
    "beam_direction",
    "project_points",
    "tilt_of_slice_containing",
    "projected_x",
    "depth_along_beam",
    "defocus_offset_angstrom",
    "defocus_at_point_um",
    "Hand",
    "check_hand",
    "hand_from_relion",
    "hand_from_warp",
    "hand_to_warp",
    "hand_to_pytom",
    "hand_from_pytom",
    "imod_ctfphaseflip_hand",
    "hand_report",
    "warp_tilt_angles_to_internal",
    "warp_level_angles",
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


@overload
def centre_index(n: int) -> int: ...


@overload
def centre_index(n: np.ndarray) -> np.ndarray: ...


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


def relion5_centered_angstrom(
    index_xyz, tomogram_voxel_angstrom: float, unbinned_size_xyz, tilt_series_pixel_angstrom: float
) -> np.ndarray:
    """Voxel indices of a (possibly binned) tomogram to RELION 5 ``rlnCenteredCoordinate*Angst``.

    RELION 5 measures from the centre of the *unbinned* tomogram (``rlnTomoSizeX/Y/Z`` at
    ``rlnTomoTiltSeriesPixelSize``). tomomatch takes that centre as unbinned index
    ``N // 2`` (RELION's ``int(w/2)`` in ``setProjectionMatrix``).
    """
    idx = np.asarray(index_xyz, dtype=float)
    centre_a = np.array([centre_index(int(n)) for n in unbinned_size_xyz], dtype=float)
    return idx * float(tomogram_voxel_angstrom) - centre_a * float(tilt_series_pixel_angstrom)


def relion5_centered_to_index(
    centered_xyz, tomogram_voxel_angstrom: float, unbinned_size_xyz, tilt_series_pixel_angstrom: float
) -> np.ndarray:
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


GEOMETRY_VERSION = 2


def _rad(a) -> np.ndarray:
    return np.deg2rad(np.asarray(a, dtype=float))


def tilt_frame(tilt_deg, x_tilt_deg=0.0, z_rot_deg=0.0) -> np.ndarray:
    """Per-tilt frame ``Rz(z_rot) Ry(tilt) Rx(x_tilt)`` as ``(..., 3, 3)``, broadcast over the angles.

    Row 0 is the image's horizontal axis, row 1 its vertical axis and row 2 the beam (the
    depth direction), each as a unit vector ``(x, y, z)`` in the tomogram frame: a point ``r``
    (centred) is seen at image position ``(row0 . r, row1 . r)`` and depth ``row2 . r``. This
    is the rotation part of RELION 5's projection matrix (``rlnTomoProjX/Y/Z`` rows 0-2,
    columns 0-2). For ``tilt = 30``: image axis ``(cos 30, 0, sin 30)``, beam
    ``(-sin 30, 0, cos 30)``. The weights and the defocus gradient of a *reconstructed*
    tomogram do not depend on ``z_rot`` (it turns the image within its own plane).
    """
    y, x, z = np.broadcast_arrays(_rad(tilt_deg), _rad(x_tilt_deg), _rad(z_rot_deg))
    cy, sy, cx, sx, cz, sz = np.cos(y), np.sin(y), np.cos(x), np.sin(x), np.cos(z), np.sin(z)
    one, zero = np.ones_like(y), np.zeros_like(y)
    ry = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], -2)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cx, -sx], -1), np.stack([zero, sx, cx], -1)], -2)
    rz = np.stack([np.stack([cz, -sz, zero], -1), np.stack([sz, cz, zero], -1), np.stack([zero, zero, one], -1)], -2)
    return rz @ ry @ rx


def beam_direction(tilt_deg, x_tilt_deg=0.0) -> np.ndarray:
    """Unit beam (depth) direction ``(..., 3)`` of each tilt in the tomogram frame (row 2 of
    :func:`tilt_frame`): ``(-sin t, cos t sin a, cos t cos a)`` for tilt ``t``, x-tilt ``a``."""
    return tilt_frame(tilt_deg, x_tilt_deg)[..., 2, :]


def project_points(xyz, tilt_deg, x_tilt_deg=0.0, z_rot_deg=0.0) -> np.ndarray:
    """Points ``(..., 3)`` (centred, any length unit) seen in each tilt: ``(..., 3)`` of
    ``(image x, image y, depth)``; points and angles broadcast (``xyz[:, None]`` against a
    ``(n_tilts,)`` angle array gives ``(n_points, n_tilts, 3)``)."""
    r = np.asarray(xyz, dtype=float)
    frame = tilt_frame(tilt_deg, x_tilt_deg, z_rot_deg)
    return np.einsum("...ij,...j->...i", frame, r)


def tilt_of_slice_containing(kx, kz):
    """Tilt angle (degrees, in ``[-90, 90]``) whose central slice contains the direction
    ``(kx, ., kz)`` (numpy arrays or torch tensors; no x-tilt).

    The slice of tilt ``t`` is perpendicular to the beam ``(-sin t, 0, cos t)``:
    ``-kx sin t + kz cos t = 0``, so ``t = atan(kz / kx)``. ``k`` and ``-k`` lie in the same
    slice. For ``kx = 0, kz != 0`` the answer is the 90-degree slice (returned as +-90); for
    ``kx = kz = 0`` (the tilt axis) every slice contains ``k`` and 0 is returned.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and (isinstance(kx, torch.Tensor) or isinstance(kz, torch.Tensor)):
        kx = torch.as_tensor(kx)
        kz = torch.as_tensor(kz, dtype=kx.dtype, device=kx.device)
        sgn = torch.where(kx < 0, -1.0, 1.0).to(kx.dtype)  # fold k -> -k (same slice)
        return torch.rad2deg(torch.atan2(kz * sgn, kx * sgn))
    kx = np.asarray(kx, float)
    kz = np.asarray(kz, float)
    sgn = np.where(kx < 0, -1.0, 1.0)
    return np.degrees(np.arctan2(kz * sgn, kx * sgn))


def projected_x(x, z, tilt_deg):
    """Horizontal image coordinate of a point: ``x cos t + z sin t`` (same units as x, z)."""
    t = _rad(tilt_deg)
    return np.asarray(x) * np.cos(t) + np.asarray(z) * np.sin(t)


def depth_along_beam(x, z, tilt_deg, y=0.0, x_tilt_deg=0.0):
    """Depth of a point along the beam (row 2 of :func:`tilt_frame`):
    ``-x sin t + y cos t sin a + z cos t cos a``; ``-x sin t + z cos t`` without x-tilt ``a``."""
    t, a = _rad(tilt_deg), _rad(x_tilt_deg)
    return (
        -np.asarray(x, dtype=float) * np.sin(t)
        + np.asarray(y, dtype=float) * np.cos(t) * np.sin(a)
        + np.asarray(z, dtype=float) * np.cos(t) * np.cos(a)
    )


def check_hand(hand) -> int:
    """Validate a defocus handedness value and return it as int (+1, -1 or 0)."""
    try:
        h = int(hand)
    except (TypeError, ValueError):
        raise ValueError(f"defocus handedness must be +1, -1 or 0, got {hand!r}") from None
    if h not in (-1, 0, 1) or float(hand) != h:
        raise ValueError(f"defocus handedness must be +1, -1 or 0, got {hand!r}")
    return h


def defocus_offset_angstrom(
    x_angstrom, z_angstrom, tilt_deg, hand: int, mode: HandMode = "full", *, y_angstrom=0.0, x_tilt_deg=0.0
):
    """Defocus offset in Angstrom of a point at centred ``(x, y, z)`` in the tilt image.

    ``mode="full"`` (default): ``h * depth`` with the depth of :func:`depth_along_beam`
    (``h * (-x sin t + z cos t)`` without x-tilt), RELION 5's ``Tomogram::getCtf`` with
    ``h = rlnTomoHand``.
    ``mode="pytom"`` (pytom-match-pick's ``get_defocus_offsets``, reproduced on the file's
    angle): ``z cos(s t) + x sin(s t)`` with ``s = -1`` for ``h = -1`` and ``+1`` for ``h = +1``,
    ``0`` for ``h = 0`` (pytom ignores x-tilt and y).
    Positive means more underfocus. Broadcasts over all arguments.
    """
    h = check_hand(hand)
    t = _rad(tilt_deg)
    x = np.asarray(x_angstrom, dtype=float)
    z = np.asarray(z_angstrom, dtype=float)
    if h == 0:
        return np.zeros(np.broadcast(x, z, t, np.asarray(y_angstrom), np.asarray(x_tilt_deg)).shape)
    if mode == "full":
        return h * depth_along_beam(x, z, tilt_deg, y_angstrom, x_tilt_deg)
    if mode == "pytom":
        off = z * np.cos(h * t) + x * np.sin(h * t)
        return np.broadcast_to(off, np.broadcast(off, np.asarray(y_angstrom), np.asarray(x_tilt_deg)).shape).copy()
    raise ValueError(f"unknown handedness mode {mode!r}; expected 'full' or 'pytom'")


def defocus_at_point_um(
    defocus_um, x_angstrom, z_angstrom, tilt_deg, hand: int, mode: HandMode = "full", *, y_angstrom=0.0, x_tilt_deg=0.0
):
    """Per-tilt defocus (micrometres, + = underfocus) shifted to a point at centred (x, y, z) A."""
    off = defocus_offset_angstrom(
        x_angstrom, z_angstrom, tilt_deg, hand, mode, y_angstrom=y_angstrom, x_tilt_deg=x_tilt_deg
    )
    return np.asarray(defocus_um, dtype=float) + off / ANGSTROM_PER_MICROMETRE


def hand_from_relion(tomo_hand: float) -> int:
    """RELION 5 ``rlnTomoHand`` is tomomatch's ``h`` unchanged (+1 or -1): both multiply the
    same depth (row 2 of the projection matrix)."""
    h = check_hand(round(float(tomo_hand)))
    if h == 0:
        raise ValueError("rlnTomoHand must be +1 or -1")
    return h


def hand_to_pytom(hand: int) -> int:
    """pytom-match-pick ``--defocus-handedness`` value for tomomatch ``h``: ``-h``.

    pytom's offset ``z cos(s t) + x sin(s t)`` on the IMOD-sign angle equals tomomatch's full
    ``h = +1`` depth ``z cos t - x sin t`` exactly for ``s = -1``; ``s = +1`` has the x gradient
    of ``h = -1`` (its z term keeps the ``+1`` sign, small for thin specimens).
    """
    return -check_hand(hand)


def hand_from_pytom(pytom_handedness: int) -> int:
    """tomomatch ``h`` whose x gradient equals pytom's ``--defocus-handedness`` value: ``-s``."""
    return -check_hand(pytom_handedness)


def hand_from_warp(are_angles_inverted: bool) -> int:
    """Warp ``AreAnglesInverted``: False -> -1, True -> +1.

    Warp's own RELION export (``RelionParticleSeriesExport.GetRelionHand``) writes
    ``rlnTomoHand = AreAnglesInverted ? 1 : -1``, and tomomatch's ``h`` is ``rlnTomoHand``.
    (pytom-match-pick 0.14.0 makes the same choice for its own value, #369; in its formula that
    is the mirror of RELION's x gradient, see :func:`hand_to_pytom`.)
    """
    return 1 if bool(are_angles_inverted) else -1


def hand_to_warp(hand: int) -> bool:
    """Warp ``AreAnglesInverted`` for tomomatch ``h`` (+1 -> True, -1 -> False)."""
    h = check_hand(hand)
    if h == 0:
        raise ValueError("hand 0 has no Warp equivalent")
    return h > 0


def imod_ctfphaseflip_hand() -> int:
    """The hand IMOD's ``ctfphaseflip`` assumes without ``-InvertTiltAngles``: ``-1``.

    Its documentation: "At positive tilt angles, the right side of the images should be more
    underfocused than the left side". A point right of the axis (``x > 0``, ``z = 0``) at
    ``t > 0`` has depth ``-x sin t < 0``; it is more underfocused only for ``h = -1``.
    """
    return -1


def hand_report(hand: int) -> dict[str, str]:
    """The hand ``h`` written as the value to set in RELION 5, Warp, pytom-match-pick and IMOD."""
    h = check_hand(hand)
    if h == 0:
        return {
            "relion5": "no gradient",
            "warp": "no gradient",
            "pytom": "--defocus-handedness 0",
            "imod": "no gradient",
        }
    return {
        "relion5": f"rlnTomoHand {h:+d}",
        "warp": f'AreAnglesInverted="{hand_to_warp(h)}"',
        "pytom": f"--defocus-handedness {hand_to_pytom(h):+d}",
        "imod": ("ctfphaseflip as is" if h == imod_ctfphaseflip_hand() else "ctfphaseflip -InvertTiltAngles"),
    }


def warp_tilt_angles_to_internal(warp_angles_deg) -> np.ndarray:
    """Warp stores tilt angles with the opposite sign to IMOD/AreTomo/RELION: negate them."""
    return -np.asarray(warp_angles_deg, dtype=float)


def warp_level_angles(tilt_deg, level_angle_x_deg: float = 0.0, level_angle_y_deg: float = 0.0):
    """Apply Warp's sample levelling angles to tilt angles already in tomomatch's sign.

    Returns ``(y_tilt_deg, x_tilt_deg)`` for :func:`tilt_frame`: ``y_tilt = tilt - LevelAngleY``
    and ``x_tilt = LevelAngleX`` for every tilt.

    Warp (warpem/warp ``WarpLib/TiltSeries/TiltSeries.cs``, ``GetPositionInAllTilts``,
    ``GetAngleInAllTilts``; the same product in every projection routine) projects a volume
    point with ``Matrix3.Euler(0, (Angle + LevelAngleY), -AxisAngle) * Matrix3.RotateX(LevelAngleX)``
    (radians). ``WarpLib/Tools/Matrix3.cs``: ``Euler(0, b, g)`` = ``Rz(-g) Ry(-b)`` and
    ``RotateX(a)`` = ``Rx(a)`` (right-handed, matrix times column vector, as here). So Warp's
    frame is ``Rz(AxisAngle) Ry(-(Angle + LevelAngleY)) Rx(LevelAngleX)``, RELION 5's order
    ``Rz Ry Rx`` with ``ytilt = -Angle - LevelAngleY`` (``-Angle`` is
    :func:`warp_tilt_angles_to_internal`) and ``xtilt = +LevelAngleX``. Warp's own RELION
    export (``ExportParticlesTiltseries.cs``) writes the rows of this matrix as
    ``rlnTomoProjX/Y/Z``. The mapping assumes, as the tilt-angle negation does, that the
    tomogram on disk is Warp's volume frame (``TiltSeries.ReconstructFull`` writes voxel
    ``(x, y, z)`` at position ``(x, y, z) * pixel``).
    """
    t = np.asarray(tilt_deg, dtype=float)
    return t - float(level_angle_y_deg), np.full(t.shape, float(level_angle_x_deg))


# --------------------------------------------------------------------------- Euler angles


def relion_to_matrix(rot_tilt_psi_deg) -> np.ndarray:
    """RELION (rot, tilt, psi) degrees ``(..., 3)`` -> pose matrices ``(..., 3, 3)``."""
    a = np.asarray(rot_tilt_psi_deg, dtype=float)
    m = Rotation.from_euler("ZYZ", a.reshape(-1, 3), degrees=True).inv().as_matrix()
    return m.reshape(a.shape[:-1] + (3, 3))


def matrix_to_relion(matrix) -> np.ndarray:
    """Pose matrices ``(..., 3, 3)`` -> RELION (rot, tilt, psi) degrees ``(..., 3)``.

    At tilt 0 or 180 (gimbal lock) only ``rot + psi`` (or ``rot - psi``) is defined; scipy then
    sets psi = 0, a valid triplet for the same matrix, so its warning is not passed on.
    """
    m = np.asarray(matrix, dtype=float)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gimbal lock detected")
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
    with warnings.catch_warnings():  # gimbal lock: a valid triplet all the same (matrix_to_relion)
        warnings.filterwarnings("ignore", message="Gimbal lock detected")
        a = -Rotation.from_matrix(m.reshape(-1, 3, 3)).inv().as_euler("ZXZ")
    return a.reshape(m.shape[:-2] + (3,))


# Warp writes RELION's rot/tilt/psi columns from the same ZYZ matrix.
warp_to_matrix = relion_to_matrix
matrix_to_warp = matrix_to_relion
