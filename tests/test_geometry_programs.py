"""tomomatch's tilt geometry checked against the other programs' own formulas and numbers.

Every reference value here is computed by a transcription, written in this file, of the
program that defines it (RELION 5, IMOD ``tilt`` and ``ctfphaseflip``, pytom-match-pick,
AreTomo). Nothing here calls tomomatch's simulator or any other tomomatch code that could
share a mirrored convention with the function under test: tomomatch is only called for the
value being checked (``tilt_frame``, ``defocus_offset_angstrom``, ``binary_wedge``, ...).
Each test's docstring names the source it transcribes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tomomatch import conventions as cv
from tomomatch.weighting import binary_wedge, per_tilt_wedge

# =========================================================================== RELION 5
#
# 3dem/relion src/jaz/tomography/tomogram.cpp, Tomogram::setProjectionMatrix:
#     r0 = rotation(xaxis, xtilt); r1 = rotation(yaxis, ytilt); r2 = rotation(zaxis, zrot)
#     projectionMatrices[f] = s1 * s2 * r2 * r1 * r0 * s0
# with s0 = translation(-specimen_center), specimen_center = (int(w0/2), int(h0/2), int(d0/2)),
# s1 = translation(shift / pixelSize), s2 = translation(tilt image centre).
# gravis t3Matrix::rotation(axis, angle) (src/jaz/gravis/t3Matrix.h): angle in degrees,
# "formula copied form GL specification": n n^T + cos(a) (I - n n^T) + sin(a) [n]_x with
# [n]_x = (0, -n.z, n.y; n.z, 0, -n.x; -n.y, n.x, 0) (constructor arguments row by row),
# i.e. right-handed; matrices multiply column vectors (t4Matrix * t4Vector).


def _relion_gl_rotation(axis, angle_deg):
    """gravis ``t3Matrix::rotation(axis, angle)`` (GL axis-angle formula, degrees)."""
    n = np.asarray(axis, float)
    n = n / np.linalg.norm(n)
    a = math.radians(angle_deg)
    s = np.array([[0.0, -n[2], n[1]], [n[2], 0.0, -n[0]], [-n[1], n[0], 0.0]])
    nnt = np.outer(n, n)
    return nnt + math.cos(a) * (np.eye(3) - nnt) + math.sin(a) * s


def _Rx(a_deg):
    c, s = math.cos(math.radians(a_deg)), math.sin(math.radians(a_deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _Ry(a_deg):
    c, s = math.cos(math.radians(a_deg)), math.sin(math.radians(a_deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _Rz(a_deg):
    c, s = math.cos(math.radians(a_deg)), math.sin(math.radians(a_deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _translation(t):
    m = np.eye(4)
    m[:3, 3] = t
    return m


def _homog(r3):
    m = np.eye(4)
    m[:3, :3] = r3
    return m


def _relion_projection_matrix(xtilt, ytilt, zrot, tomo_size_xyz, stack_size_xy, shift_angst=(0.0, 0.0), pixel_size=1.0):
    """RELION 5 ``Tomogram::setProjectionMatrix``: ``s1 * s2 * r2 * r1 * r0 * s0`` (4x4)."""
    w0, h0, d0 = tomo_size_xyz
    s0 = _translation(-np.array([int(w0 / 2), int(h0 / 2), int(d0 / 2)], float))
    s1 = _translation([shift_angst[0] / pixel_size, shift_angst[1] / pixel_size, 0.0])
    s2 = _translation([int(stack_size_xy[0] / 2), int(stack_size_xy[1] / 2), 0.0])
    r0 = _homog(_relion_gl_rotation((1, 0, 0), xtilt))
    r1 = _homog(_relion_gl_rotation((0, 1, 0), ytilt))
    r2 = _homog(_relion_gl_rotation((0, 0, 1), zrot))
    return s1 @ s2 @ r2 @ r1 @ r0 @ s0


def _relion_delta_defocus_u(proj, centre_px, position_px, hand, pixel_size, defocus_slope=1.0):
    """RELION 5 ``Tomogram::getDepthOffset`` + ``Tomogram::getCtf``: the change of DeltafU (A).

    depth = (P pos).z - (P centre).z;  DeltafU += handedness * pixelSize * defocusSlope * depth.
    """
    pos2d = proj @ np.append(np.asarray(position_px, float), 1.0)
    cent2d = proj @ np.append(np.asarray(centre_px, float), 1.0)
    dz_pos = pos2d[2] - cent2d[2]
    return hand * pixel_size * defocus_slope * dz_pos


def test_relion_gl_rotation_is_the_hand_written_right_handed_rotation():
    """gravis ``t3Matrix::rotation`` (GL formula) equals the hand-written Rx, Ry, Rz (right-handed:
    rotating x by +90 about z gives y), so the hand matrices below are RELION's."""
    for a in (-73.0, -9.02, 0.0, 12.5, 85.267):
        np.testing.assert_allclose(_relion_gl_rotation((1, 0, 0), a), _Rx(a), atol=1e-12)
        np.testing.assert_allclose(_relion_gl_rotation((0, 1, 0), a), _Ry(a), atol=1e-12)
        np.testing.assert_allclose(_relion_gl_rotation((0, 0, 1), a), _Rz(a), atol=1e-12)
    np.testing.assert_allclose(_Rz(90.0) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(_Rx(90.0) @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(_Ry(90.0) @ [0, 0, 1], [1, 0, 0], atol=1e-12)


def test_relion_stored_projz_row_equals_tilt_frame_beam():
    """RELION 5 tests' tilt series star file: ``rlnTomoYTilt 9.02``, ``rlnTomoZRot 85.267``
    (``rlnTomoXTilt 0``) with stored ``rlnTomoProjZ [-0.156779, 0, 0.987634, ...]``
    (row 2 of ``setProjectionMatrix``'s matrix): tomomatch's beam row must be that row."""
    stored_projz = np.array([-0.156779, 0.0, 0.987634])
    frame = cv.tilt_frame(9.02, 0.0, 85.267)
    np.testing.assert_allclose(frame[2], stored_projz, atol=1e-5)
    np.testing.assert_allclose(cv.beam_direction(9.02), stored_projz, atol=1e-5)
    # the same row from the transcribed RELION matrix (rotation part, rows 0-2)
    proj = _relion_projection_matrix(0.0, 9.02, 85.267, (4000, 4000, 1200), (4096, 4096))
    np.testing.assert_allclose(proj[2, :3], stored_projz, atol=1e-5)
    # a mirror (ytilt -> -ytilt) would put +0.156779 there: the tolerance catches it
    assert abs(cv.tilt_frame(-9.02, 0.0, 85.267)[2][0] - stored_projz[0]) > 0.3


def test_relion_tilt_frame_equals_rz_ry_rx():
    """RELION 5 ``setProjectionMatrix``: rotation part ``Rz(zrot) Ry(ytilt) Rx(xtilt)`` (gravis
    right-handed rotations), for random angles including non-zero x-tilt; also the rotation
    block of the full 4x4 RELION matrix with centring and shifts."""
    rng = np.random.default_rng(20261201)
    ys = rng.uniform(-65, 65, 8)
    xs = np.concatenate([[0.0], rng.uniform(-6, 6, 7)])
    zs = rng.uniform(-180, 180, 8)
    for y, x, z in zip(ys, xs, zs):
        hand = _Rz(z) @ _Ry(y) @ _Rx(x)
        np.testing.assert_allclose(cv.tilt_frame(y, x, z), hand, atol=1e-12)
        full = _relion_projection_matrix(
            x, y, z, (3710, 3838, 1000), (3838, 3710), shift_angst=(12.0, -7.5), pixel_size=1.724
        )
        np.testing.assert_allclose(cv.tilt_frame(y, x, z), full[:3, :3], atol=1e-6)
    # broadcast over arrays gives the same per-tilt matrices
    batch = cv.tilt_frame(ys, xs, zs)
    for i in range(len(ys)):
        np.testing.assert_allclose(batch[i], _Rz(zs[i]) @ _Ry(ys[i]) @ _Rx(xs[i]), atol=1e-12)
    # project_points: (image x, image y, depth) = rotation rows applied to the centred point
    p = np.array([310.0, -120.0, 45.0])
    np.testing.assert_allclose(
        cv.project_points(p, ys[1], xs[1], zs[1]), _Rz(zs[1]) @ _Ry(ys[1]) @ _Rx(xs[1]) @ p, atol=1e-9
    )


@pytest.mark.parametrize("hand", [1, -1])
def test_relion_getctf_defocus_change(hand):
    """RELION 5 ``Tomogram::getDepthOffset`` / ``Tomogram::getCtf``:
    ``DeltafU += rlnTomoHand * pixelSize * defocusSlope * ((P pos).z - (P centre).z)`` with the
    matrix of ``setProjectionMatrix``; tomomatch's ``defocus_offset_angstrom`` (full mode, ``h``
    = ``rlnTomoHand``) must give the same change in Angstrom, x-tilt and z-rotation included."""
    pixel = 1.724
    tomo = (4000, 4000, 1200)
    centre = np.array([int(tomo[0] / 2), int(tomo[1] / 2), int(tomo[2] / 2)], float)
    rel_points = np.array(
        [[900.0, 0.0, 0.0], [-900.0, 0.0, 0.0], [0.0, 0.0, 250.0], [1500.0, -700.0, -180.0], [-333.0, 1200.0, 90.0]]
    )  # pixels
    cases = [
        (40.0, 0.0, 0.0),
        (-40.0, 0.0, 85.267),
        (9.02, 0.0, 85.267),
        (27.0, 4.5, -94.0),
        (-51.0, -3.2, 12.0),
        (60.0, 2.0, 0.0),
    ]
    for ytilt, xtilt, zrot in cases:
        proj = _relion_projection_matrix(
            xtilt, ytilt, zrot, tomo, (4096, 4096), shift_angst=(25.0, -40.0), pixel_size=pixel
        )
        for rel in rel_points:
            want = _relion_delta_defocus_u(proj, centre, centre + rel, hand, pixel)
            got = cv.defocus_offset_angstrom(
                rel[0] * pixel, rel[2] * pixel, ytilt, hand, y_angstrom=rel[1] * pixel, x_tilt_deg=xtilt
            )
            assert got == pytest.approx(want, rel=1e-9, abs=1e-6), (ytilt, xtilt, zrot, rel)
    # a sign check with a number: x = +900 px at +40 degrees lies below the centre
    # (depth -900 sin 40 px), so rlnTomoHand +1 lowers DeltafU by 900 * 1.724 * sin 40 A
    proj = _relion_projection_matrix(0.0, 40.0, 0.0, tomo, (4096, 4096), pixel_size=pixel)
    want = _relion_delta_defocus_u(proj, centre, centre + [900, 0, 0], hand, pixel)
    assert want == pytest.approx(-hand * 900 * pixel * math.sin(math.radians(40)), rel=1e-9)
    assert cv.defocus_offset_angstrom(900 * pixel, 0.0, 40.0, hand) == pytest.approx(want, rel=1e-9)
    assert cv.hand_from_relion(hand) == hand


# =========================================================================== IMOD tilt
#
# IMOD flib/tilt/tilt.f90: trig tables
#     cosBeta(iv) = COS(thetanv * DTOR);  sinBeta(iv) = -SIN(thetanv * DTOR)
# back-projection without x-axis tilt, output slice of width x and thickness ithickBP:
#     ZZ = (I - ycenOut) * compress(iv);  zPART = zz * SBETA + xcenIn + axisXoffset
#     XPROJ8 = zPART + X * CBETA          (X = ix - xcenOut)
# i.e. xproj = zz sinBeta + x cosBeta in the thickness frame; the standard post-processing
# (``clip rotx`` / ``trimvol -rx``) rotates the output by -90 degrees about x, which makes the
# thickness coordinate z = -zz in the final tomogram (y and x unchanged).


def _imod_xproj(x, z_final, tilt_deg):
    """IMOD ``tilt`` projection coordinate of a point of the *rotated* (clip rotx) tomogram."""
    zz = -np.asarray(z_final, float)  # clip rotx: the thickness axis is reversed
    sin_beta = -np.sin(np.deg2rad(tilt_deg))
    cos_beta = np.cos(np.deg2rad(tilt_deg))
    return zz * sin_beta + np.asarray(x, float) * cos_beta


_N = 48  # cubic box
_C = _N // 2  # origin voxel (the Fourier power does not depend on this choice)
_NP = 2 * _N  # projection width, wide enough that nothing falls off
_CP = _NP // 2
_TILTS = np.arange(-30.0, 60.0 + 1e-9, 3.0)


def _imod_matrix(tilt_deg):
    """(projection bin, (z, x) voxel) linear-interpolation weights of IMOD's ``xproj``.

    Forward projection splats each voxel to ``xproj`` (linear), back-projection reads the
    projection at ``xproj`` (linear interpolation): the transpose of the same matrix."""
    z = (np.arange(_N) - _C)[:, None]
    x = (np.arange(_N) - _C)[None, :]
    xp = (_imod_xproj(x, z, tilt_deg) + _CP).ravel()
    i0 = np.floor(xp).astype(int)
    f = xp - i0
    a = np.zeros((_NP, _N * _N))
    cols = np.arange(_N * _N)
    np.add.at(a, (i0, cols), 1.0 - f)
    np.add.at(a, (i0 + 1, cols), f)
    return a


def _imod_psf_volume():
    """A small Gaussian point-spread function (sigma 1 voxel) at the origin voxel, [z, y, x]."""
    r = np.arange(_N) - _C
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    return np.exp(-(x * x + y * y + z * z) / 2.0)


def _imod_reconstruct(volume, tilts, weights, ramp):
    """Project ``volume`` [z, y, x] at each tilt and back-project with IMOD's ``xproj`` formula
    (a loop over tilts); projection ``i`` is multiplied by ``weights[i]``; ``ramp`` applies the
    |k| (R-weighting) filter along x to each projection first (weighted back-projection)."""
    vzx = volume.transpose(0, 2, 1).reshape(_N * _N, _N)  # rows (z, x), columns y
    out = np.zeros_like(vzx)
    ramp_filter = np.abs(np.fft.rfftfreq(_NP))[:, None]
    for t, w in zip(tilts, weights):
        a = _imod_matrix(t)
        proj = a @ vzx  # (x', y): the tilt image
        if ramp:
            proj = np.fft.irfft(np.fft.rfft(proj, axis=0) * ramp_filter, n=_NP, axis=0)
        out += w * (a.T @ proj)
    return out.reshape(_N, _N, _N).transpose(0, 2, 1)  # back to [z, y, x]


def _power_fraction(volume, mask, low_radius=3.0):
    """Fraction of the Fourier power of ``volume`` on the rfft voxels where ``mask`` is true,
    excluding |k| <= ``low_radius`` Fourier voxels (where all slices overlap); rfft columns
    that stand for two voxels (k and -k) count twice."""
    power = np.abs(np.fft.rfftn(volume)) ** 2
    fz = np.fft.fftfreq(_N) * _N
    fx = np.fft.rfftfreq(_N) * _N
    r = np.sqrt(fz[:, None, None] ** 2 + fz[None, :, None] ** 2 + fx[None, None, :] ** 2)
    mult = np.where((fx == 0) | (fx == _N / 2), 1.0, 2.0)[None, None, :]
    p = power * mult * (r > low_radius)
    return float((p * np.asarray(mask, bool)).sum() / p.sum())


def _single_slice(tilt_deg):
    return (
        per_tilt_wedge((_N, _N, _N), 1.0, [tilt_deg], ctf_mode=None, dose_weighting=False, cos_weighting=False).numpy()
        > 0
    )


def test_imod_xproj_is_projected_x():
    """IMOD ``tilt.f90`` (``sinBeta = -sin``, ``xproj = zz sinBeta + x cosBeta``) followed by
    ``clip rotx`` (z = -zz) is ``x cos t + z sin t``: tomomatch's ``projected_x`` and row 0 of
    ``tilt_frame``."""
    rng = np.random.default_rng(7)
    x, z = rng.uniform(-500, 500, (2, 20))
    t = rng.uniform(-60, 60, 20)
    np.testing.assert_allclose(cv.projected_x(x, z, t), _imod_xproj(x, z, t), atol=1e-9)
    pts = np.stack([x, np.zeros_like(x), z], -1)
    np.testing.assert_allclose(cv.project_points(pts, t)[:, 0], _imod_xproj(x, z, t), atol=1e-9)
    # hand number: x = 0, z = +100 at +30 degrees lands at +50 (the mirror would give -50)
    assert _imod_xproj(0.0, 100.0, 30.0) == pytest.approx(50.0)
    assert cv.projected_x(0.0, 100.0, 30.0) == pytest.approx(50.0)


@pytest.mark.parametrize("ramp", [True, False], ids=["ramp-filtered", "unfiltered"])
def test_imod_backprojection_fills_tomomatch_wedge(ramp):
    """IMOD ``tilt.f90`` back-projection (``xproj = zz sinBeta + x cosBeta``, ``sinBeta = -sin``)
    with ``clip rotx`` (z reversed), transcribed in numpy: a Gaussian point at the centre of a
    48^3 box projected at -30..+60 degrees in 3 degree steps and back-projected with the same
    formula. Its Fourier power (|k| > 3 voxels) lies inside ``binary_wedge(shape, tilts)`` and
    markedly less inside the mirrored wedge ``binary_wedge(shape, -tilts)``.

    Measured: ramp-filtered 0.975 inside vs 0.673 mirrored; unfiltered 0.983 vs 0.777 (the
    unfiltered 1/|k| transfer favours the lowest frequencies, where the angular blur of each
    slice spills over the wedge edges)."""
    vol = _imod_reconstruct(_imod_psf_volume(), _TILTS, np.ones_like(_TILTS), ramp)
    shape = (_N, _N, _N)
    inside = _power_fraction(vol, binary_wedge(shape, _TILTS).numpy() > 0)
    mirrored = _power_fraction(vol, binary_wedge(shape, -_TILTS).numpy() > 0)
    print(
        f"IMOD {'ramp-filtered' if ramp else 'unfiltered'} back-projection: "
        f"{inside:.3f} of the power inside tomomatch's wedge, {mirrored:.3f} inside the mirror"
    )
    assert inside >= 0.95
    assert mirrored <= (0.75 if ramp else 0.85)
    assert inside - mirrored >= 0.15


def test_imod_single_tilt_lands_on_tomomatch_slice():
    """IMOD ``tilt.f90`` back-projection of a single tilt (transcribed as above): the Fourier power
    of the back-projection of only tilt +60 lies on tomomatch's ``per_tilt_wedge`` slice for
    [+60], not on that of [-60]; likewise for -30 vs +30.

    Measured: 0.894 on the own slice (the rest is the sinc side lobes of the box-truncated
    smear, whose main lobe is about one Fourier voxel wide like the tent), 0.113 on the mirror."""
    psf = _imod_psf_volume()
    for t in (60.0, -30.0):
        vol = _imod_reconstruct(psf, [t], [1.0], ramp=False)
        own = _power_fraction(vol, _single_slice(t))
        mirror = _power_fraction(vol, _single_slice(-t))
        print(
            f"IMOD back-projection of tilt {t:+.0f} only: {own:.3f} on tomomatch's slice "
            f"{t:+.0f}, {mirror:.3f} on slice {-t:+.0f}"
        )
        assert own >= 0.85
        assert mirror <= 0.25
        assert own >= 4 * mirror


def test_imod_each_slice_carries_its_tilts_weight():
    """IMOD ``tilt.f90`` back-projection (transcribed as above) of two tilts with distinct weights,
    +60 x 1 and -30 x 0.25: the power on tomomatch's slice of +60 (outside that of -30) over
    the power on the slice of -30 is about (1 / 0.25)^2 = 16; with the slices of the mirrored
    angles the ratio is far below 1. Measured: 13.7 and 0.07."""
    psf = _imod_psf_volume()
    vol = _imod_reconstruct(psf, [60.0, -30.0], [1.0, 0.25], ramp=False)
    s60, s30 = _single_slice(60.0), _single_slice(-30.0)
    ratio = _power_fraction(vol, s60 & ~s30) / _power_fraction(vol, s30 & ~s60)
    m60, m30 = _single_slice(-60.0), _single_slice(30.0)
    mirror_ratio = _power_fraction(vol, m60 & ~m30) / _power_fraction(vol, m30 & ~m60)
    print(f"weights 1 : 0.25 -> power ratio {ratio:.2f} on tomomatch's slices, {mirror_ratio:.3f} on the mirrored ones")
    assert 8.0 <= ratio <= 32.0
    assert mirror_ratio <= 0.5


# =========================================================================== IMOD ctfphaseflip
#
# IMOD autodoc/ctfphaseflip.adoc, InvertTiltAngles: "At positive tilt angles, the right side of
# the images should be more underfocused than the left side; if not, then this option is
# needed."  mrc/ctfphaseflip.cpp (angles * angleSign, angleSign = -1 with -InvertTiltAngles):
#     stripDefocus = defocus[k - 1] * 1000.0 - (nx / 2 + xShifts[k - 1] - stripMid) *
#                    tan(currAngle) * pixelSize;   // nm


def _ctfphaseflip_strip_defocus_nm(defocus_um, strip_mid, nx, tilt_deg, pixel_nm, invert=False):
    angle = math.radians(tilt_deg * (-1.0 if invert else 1.0))
    return defocus_um * 1000.0 - (nx // 2 + 0.0 - strip_mid) * math.tan(angle) * pixel_nm


def test_imod_ctfphaseflip_right_side_more_underfocused():
    """IMOD ``ctfphaseflip`` documentation ("At positive tilt angles, the right side of the images
    should be more underfocused than the left side") and its strip defocus
    ``defocus - (nx/2 - stripMid) tan(angle) pixelSize``: for t = +40 a point right of the axis
    (x > 0, z = 0) is more underfocused than one on the left for
    ``h = imod_ctfphaseflip_hand()``, less for the other hand; for points in the z = 0 plane
    tomomatch's defocus equals the strip defocus of the column it projects to."""
    h = cv.imod_ctfphaseflip_hand()
    t, df, pixel_a, nx = 40.0, 3.0, 2.0, 4000
    x = 1500.0  # Angstrom, right of the axis
    right = cv.defocus_at_point_um(df, x, 0.0, t, h)
    left = cv.defocus_at_point_um(df, -x, 0.0, t, h)
    assert right > left
    assert right - left == pytest.approx(2 * x * math.sin(math.radians(t)) / 1e4, rel=1e-9)
    assert cv.defocus_at_point_um(df, x, 0.0, t, -h) < cv.defocus_at_point_um(df, -x, 0.0, t, -h)
    # at negative tilts the sides swap
    assert cv.defocus_at_point_um(df, x, 0.0, -t, h) < cv.defocus_at_point_um(df, -x, 0.0, -t, h)

    # ctfphaseflip's own strip defocus, for the image column of each point (x' = x cos t)
    for xa in (-1500.0, -300.0, 700.0, 1500.0):
        for tilt in (-55.0, -12.0, 40.0, 60.0):
            column = nx // 2 + xa * math.cos(math.radians(tilt)) / pixel_a
            want_um = _ctfphaseflip_strip_defocus_nm(df, column, nx, tilt, pixel_a / 10) / 1000
            assert cv.defocus_at_point_um(df, xa, 0.0, tilt, h) == pytest.approx(want_um, abs=1e-9)
            # -InvertTiltAngles is the other hand
            inv_um = _ctfphaseflip_strip_defocus_nm(df, column, nx, tilt, pixel_a / 10, invert=True) / 1000
            assert cv.defocus_at_point_um(df, xa, 0.0, tilt, -h) == pytest.approx(inv_um, abs=1e-9)
    assert h == -1
    assert cv.hand_report(h)["imod"] == "ctfphaseflip as is"
    assert cv.hand_report(-h)["imod"] == "ctfphaseflip -InvertTiltAngles"


# =========================================================================== pytom-match-pick
#
# pytom-match-pick src/pytom_tm/utils.py get_defocus_offsets(patch_center_x, patch_center_z,
# tilt_angles, angles_in_degrees=True, invert_handedness=False):
#     ta_array = np.deg2rad(tilt_angles); if invert_handedness: ta_array *= -1
#     z_offsets = z_centers * np.cos(ta_array) + x_centers * np.sin(ta_array)
# called from tmjob.py with invert_handedness=self.defocus_handedness < 0 (Angstrom offsets).


def _pytom_get_defocus_offsets(x, z, tilt_angles_deg, defocus_handedness):
    ta = np.deg2rad(np.asarray(tilt_angles_deg, float))
    if defocus_handedness < 0:
        ta = ta * -1
    return z * np.cos(ta) + x * np.sin(ta)


@pytest.mark.parametrize("s", [1, -1])
def test_pytom_get_defocus_offsets(s):
    """pytom-match-pick ``get_defocus_offsets`` (``z cos(s a) + x sin(s a)``, ``s = -1`` for
    ``--defocus-handedness`` < 0, ``a`` the file's tilt angle) equals tomomatch's
    ``mode="pytom"`` with ``h = s``; pytom ``s = -1`` equals tomomatch full mode ``h = +1``
    exactly, and ``hand_to_pytom(+1) == -1``."""
    tilts = np.arange(-60.0, 61.0, 6.0)
    for x, z in ((1200.0, 0.0), (-800.0, 150.0), (350.0, -400.0), (0.0, 300.0)):
        want = _pytom_get_defocus_offsets(x, z, tilts, s)
        got = cv.defocus_offset_angstrom(x, z, tilts, s, mode="pytom")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        if s == -1:
            np.testing.assert_allclose(
                cv.defocus_offset_angstrom(x, z, tilts, cv.hand_from_pytom(s)), want, rtol=0, atol=1e-9
            )
            np.testing.assert_allclose(cv.defocus_offset_angstrom(x, z, tilts, 1), want, rtol=0, atol=1e-9)
        else:
            # pytom +1 has the x gradient of tomomatch -1 (its z term keeps the +1 sign)
            full_minus = cv.defocus_offset_angstrom(x, 0.0, tilts, -1)
            np.testing.assert_allclose(full_minus, _pytom_get_defocus_offsets(x, 0.0, tilts, s), rtol=0, atol=1e-9)
    assert cv.hand_to_pytom(+1) == -1
    assert cv.hand_to_pytom(-1) == +1
    assert cv.hand_from_pytom(-1) == +1


# =========================================================================== AreTomo
#
# AreTomo2 Recon/GBackProj.cu, mGBackProj: for output voxel iX of the x-z slice
#     fX = iX + 0.5f - volX * 0.5f;  fZ = blockIdx.y + 0.5f - gridDim.y * 0.5f
#     fXp = fX * gfCosSin[2 * iProj] + fZ * gfCosSin[2 * iProj + 1] + fProjCentX
# with gfCosSin = (cos, sin) of the .aln TILT angle: x cos t + z sin t, as IMOD's output.


def test_aretomo_backprojection_coordinate_is_projected_x():
    """AreTomo2 ``Recon/GBackProj.cu`` ``mGBackProj``: ``fXp = fX cos t + fZ sin t + centre``
    for the .aln TILT angle equals tomomatch's ``projected_x`` (and IMOD's)."""
    vol_x, vol_z, proj_x = 64, 32, 64
    ix, iz = np.meshgrid(np.arange(vol_x), np.arange(vol_z))
    fx = ix + 0.5 - vol_x * 0.5
    fz = iz + 0.5 - vol_z * 0.5
    for t in (-57.0, -3.0, 0.0, 21.0, 48.0):
        fxp = fx * math.cos(math.radians(t)) + fz * math.sin(math.radians(t)) + proj_x / 2.0
        np.testing.assert_allclose(cv.projected_x(fx, fz, t) + proj_x / 2.0, fxp, atol=1e-9)
        np.testing.assert_allclose(_imod_xproj(fx, fz, t) + proj_x / 2.0, fxp, atol=1e-9)
