"""template.remove_radial_average / `template --remove-radial-average`: the template without what
any dense object of its size matches. Checked against an independent shell average (scipy) and
against correlations with radially symmetric and oriented densities."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from scipy import ndimage

from tomomatch.cli import main
from tomomatch.errors import InputError
from tomomatch.matching import rotate_volume
from tomomatch.mrcio import write_volume
from tomomatch.template import remove_radial_average

from _synthetic import asymmetric_template

N = 24


def _shells(n):
    c = n // 2
    return np.rint(np.sqrt(((np.indices((n, n, n)) - c) ** 2).sum(axis=0))).astype(int)


def test_the_radial_average_is_gone_and_the_rest_is_kept():
    t = asymmetric_template(N) + 0.3  # an offset is radial: it goes too
    out, info = remove_radial_average(t)
    r = _shells(N)
    labels = np.arange(r.max() + 1)
    # independent shell means of input and output (scipy), hand-checkable: output shells are 0
    means_in = ndimage.mean(t, labels=r, index=labels)
    means_out = ndimage.mean(out, labels=r, index=labels)
    assert np.allclose(means_out, 0.0, atol=1e-6)
    assert np.allclose(info["radial_profile"], means_in, atol=1e-9)
    assert np.allclose(out, t - means_in[r], atol=1e-5)
    # what remains is the template's orientation-dependent part: removing again changes nothing
    again, info2 = remove_radial_average(out)
    assert np.allclose(again, out, atol=1e-6) and abs(info2["correlation_with_radial_average"]) < 1e-6
    assert 0.0 < info["correlation_with_radial_average"] <= 1.0


def test_uncorrelated_with_any_radial_density_and_orientation_specific():
    """A dense ball (gold, another complex of the size) no longer correlates; the template turned
    away still correlates less than the template at its own pose (the detail is what is kept)."""
    t = asymmetric_template(N)
    out, _ = remove_radial_average(t)
    r = np.sqrt(((np.indices((N, N, N)) - N // 2) ** 2).sum(axis=0))
    shells = _shells(N)
    for radius in (3.0, 6.0, 9.0):
        # a density constant on the shells: exactly orthogonal
        step = (shells <= radius).astype(float) * (1.0 + 0.1 * shells)
        assert abs(float((out * step).sum())) < 1e-5 * float((np.abs(t) * step).sum())
        # a smooth ball is nearly so (voxels of a rounded shell lie at slightly different radii),
        # while the full template overlaps it strongly
        ball = ndimage.gaussian_filter((r <= radius).astype(float), 1.0)
        full = float(((t - t.mean()) * ball).sum())
        assert abs(float((out * ball).sum())) < 0.05 * abs(full)
    turned = rotate_volume(out, np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), order=1)
    assert np.corrcoef(out.ravel(), turned.ravel())[0, 1] < 0.7


def test_bad_shapes_are_one_line_errors():
    with pytest.raises(InputError, match="cubic box"):
        remove_radial_average(np.zeros((8, 8, 9)))
    with pytest.raises(InputError, match="mask shape"):
        remove_radial_average(np.zeros((8, 8, 8)), np.ones((6, 6, 6)))


def test_cli_option_writes_the_detail_template(tmp_path, capsys):
    src = tmp_path / "map.mrc"
    t = asymmetric_template(N)
    write_volume(src, t, 4.0)
    out = tmp_path / "t.mrc"
    assert (
        main(
            [
                "template",
                "-i",
                str(src),
                "-o",
                str(out),
                "--voxel-size",
                "4",
                "-b",
                str(N),
                "--no-recentre",
                "--remove-radial-average",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "removed the radial average" in printed and "% of the template's variance" in printed
    with mrcfile.open(out, permissive=True) as f:
        vol = np.asarray(f.data, float)
        label = f.header.label[0].decode()
    assert "--remove-radial-average" in label
    means = ndimage.mean(vol, labels=_shells(N), index=np.arange(_shells(N).max() + 1))
    assert np.allclose(means, 0.0, atol=1e-5)
