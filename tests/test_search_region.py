"""Search region at match time (issue 16, item 1): ``--tomogram-mask`` and ``--search-x/-y/-z``.

The reference for every number is the unrestricted search of the same tomogram (2 x 2 x 1 tiles,
defocus gradient on), and the tile boxes are recomputed here from the split rule
``round(i n / count)`` and the region, not taken from the plan.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tomomatch.angles import uniform_rotations
from tomomatch.errors import InputError
from tomomatch.extract import extract_candidates
from tomomatch.job import plan_match, run_match
from tomomatch.mrcio import read_volume, write_volume
from tomomatch.options import MatchOptions
from tomomatch.tiltseries import TiltSeries

from _cli_inputs import run_cli
from _synthetic import asymmetric_template, sphere_mask

N = 12
SHAPE = (30, 40, 48)  # z, y, x
TILTS = np.arange(-60.0, 61.0, 15.0)
ROTS = uniform_rotations(90.0)[:6]
SEARCH_X = (3, 45)  # END exclusive: x = 3..44


def _region_mask() -> np.ndarray:
    """A tilted slab (a lamella seen edge-on) away from y < 6: crosses all four tiles."""
    z, y, x = np.indices(SHAPE)
    return ((z - 15 - 0.2 * (x - 24)) ** 2 < 36) & (y > 5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("region")
    rng = np.random.default_rng(11)
    vol = rng.normal(0, 0.3, SHAPE)
    for z0, y0, x0 in ((8, 10, 20), (10, 24, 6), (12, 26, 30)):
        vol[z0 : z0 + N, y0 : y0 + N, x0 : x0 + N] += asymmetric_template(N)
    write_volume(d / "tomo.mrc", vol, 10.0)
    write_volume(d / "tmpl.mrc", asymmetric_template(N), 10.0)
    write_volume(d / "mask.mrc", sphere_mask(N), 10.0)
    write_volume(d / "tmask.mrc", _region_mask().astype(np.float32), 10.0)
    ts = TiltSeries(tilt_angles_deg=TILTS, defocus_u_um=np.full(TILTS.size, 3.0), hand=1)
    common = dict(rotations=ROTS, tilt_series=ts, tiles=(2, 2, 1), batch_size=2, quiet=True, processes=1)
    full = run_match(d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", d / "full", name="t", **common)
    reg = run_match(
        d / "tmpl.mrc",
        d / "mask.mrc",
        d / "tomo.mrc",
        d / "reg",
        name="t",
        tomogram_mask=str(d / "tmask.mrc"),
        search_x=SEARCH_X,
        **common,
    )
    region = _region_mask()
    region[:, :, : SEARCH_X[0]] = False
    region[:, :, SEARCH_X[1] :] = False
    return {"dir": d, "full": full, "reg": reg, "region": region, "ts": ts, "common": common}


def _maps(job):
    s, _ = read_volume(job["scores"])
    a, _ = read_volume(job["angles"])
    return s, a


def _expected_tiles(region: np.ndarray) -> list[tuple[tuple, tuple]]:
    """(unique start, stop) per kept tile, from the split rule and the region alone."""
    nz, ny, nx = SHAPE
    xb = [round(i * nx / 2) for i in range(3)]
    yb = [round(i * ny / 2) for i in range(3)]
    out = []
    for iy in range(2):
        for ix in range(2):
            sub = np.zeros(SHAPE, bool)
            sub[:, yb[iy] : yb[iy + 1], xb[ix] : xb[ix + 1]] = True
            pts = np.argwhere(region & sub)
            if len(pts):
                out.append((tuple(pts.min(0)), tuple(pts.max(0) + 1)))
    return out


def test_cropped_search_scores_equal_the_full_search_inside_the_region(data):
    full, reg, region = data["full"], data["reg"], data["region"]
    sf, af = _maps(full)
    sr, ar = _maps(reg)
    # the defocus gradient is on and differs between tiles (a wrong tile centre would show)
    offs = {tuple(t["grid_index_xyz"]): np.asarray(t["defocus_offsets_um"]) for t in full["tile_regions"]}
    assert np.abs(offs[(0, 0, 0)] - offs[(1, 0, 0)]).max() > 0.01  # x matters (tilt axis y)
    # every cropped tile keeps its full tile's centre and offsets
    by_grid = {tuple(t["grid_index_xyz"]): t for t in full["tile_regions"]}
    for t in reg["tile_regions"]:
        f = by_grid[tuple(t["grid_index_xyz"])]
        assert t["centre_angstrom_xyz"] == f["centre_angstrom_xyz"]
        assert t["defocus_offsets_um"] == f["defocus_offsets_um"]
    # the tile boxes: the region's bounding box inside each full tile's unique region
    got = [(tuple(t["unique_start_zyx"]), tuple(t["unique_stop_zyx"])) for t in reg["tile_regions"]]
    assert got == _expected_tiles(region)
    computed = np.zeros(SHAPE, bool)
    for a, b in got:
        computed[a[0] : b[0], a[1] : b[1], a[2] : b[2]] = True
    assert computed.sum() < 0.45 * computed.size and not (region & ~computed).any()
    # the same scores and rotations at every region voxel at least half a box from the faces
    # (nearer a face the template reaches over the edge into wrapped/zero-padded data, which
    # depends on the tile's FFT grid, as for any tiling: docs/matching.md)
    inner = np.zeros(SHAPE, bool)
    inner[N // 2 : -N // 2, N // 2 : -N // 2, N // 2 : -N // 2] = True
    sel = region & inner
    assert sel.sum() > 3000
    np.testing.assert_allclose(sr[sel], sf[sel], rtol=0, atol=2e-6 * np.abs(sf).max())
    assert np.array_equal(ar[sel], af[sel])
    # computed voxels outside the region are kept (extract leaves them out by default)
    np.testing.assert_allclose(sr[computed & inner], sf[computed & inner], rtol=0, atol=2e-6 * np.abs(sf).max())
    # voxels no tile computed: score 0, angle index -1
    assert np.all(sr[~computed] == 0) and np.all(ar[~computed] == -1)
    assert np.all(ar[computed] >= 0)


def test_job_records_the_region_and_the_searched_voxel_count(data):
    reg, full, region = data["reg"], data["full"], data["region"]
    rec = reg["search_region"]
    n_rot = len(ROTS)
    assert Path(rec["tomogram_mask"]).resolve() == (data["dir"] / "tmask.mrc").resolve()
    assert rec["search_x"] == list(SEARCH_X) and rec["search_y"] is None and rec["end_exclusive"] is True
    assert rec["n_voxels"] == int(region.sum())
    assert rec["n_voxels_tomogram"] == int(np.prod(SHAPE))
    pts = np.argwhere(region)
    assert rec["bounding_box_start_zyx"] == pts.min(0).tolist()
    assert rec["bounding_box_stop_zyx"] == (pts.max(0) + 1).tolist()
    st = reg["search_statistics"]
    computed = sum(int(np.prod(np.subtract(t["unique_stop_zyx"], t["unique_start_zyx"]))) for t in reg["tile_regions"])
    assert st["n_voxels"] == region.sum() and st["n_search"] == region.sum() * n_rot
    assert st["n_voxels_computed"] == computed == rec["n_voxels_computed"]
    assert st["n_search_computed"] == computed * n_rot
    assert full["search_region"] is None
    assert full["search_statistics"]["n_search"] == np.prod(SHAPE) * n_rot
    # stored relative to the job folder (moves with it), resolved on reading
    raw = json.loads(Path(reg["_job_path"]).read_text())
    assert not Path(raw["search_region"]["tomogram_mask"]).is_absolute()


def test_tiles_that_miss_the_region_are_not_run_and_the_region_enters_the_key(data):
    d, ts = data["dir"], data["ts"]
    args = (d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", d / "keys")
    kw = dict(rotations=ROTS, tilt_series=ts, tiles=(2, 2, 1), batch_size=2, name="k")
    p_all = plan_match(*args, **kw)
    # x 2..19, y 25..34: inside tile (0, 1, 0) only (x split at 24, y at 20)
    p_one = plan_match(*args, search_x=(2, 20), search_y=(25, 35), **kw)
    assert len(p_all.tiles) == 4 and len(p_one.tiles) == 1
    (t,) = p_one.tiles
    assert t.grid_index_xyz == (0, 1, 0)
    assert t.unique_start_zyx == (0, 25, 2) and t.unique_stop_zyx == (30, 35, 20)
    # the data region: the template reach (6 before, 5 after) clipped to the tomogram
    assert t.data_start_zyx == (0, 19, 0) and t.data_stop_zyx == (30, 40, 25)
    assert {u.tile for u in p_one.units} == {0} and p_one.n_voxels_computed == 30 * 10 * 18
    assert p_one.n_voxels_searched == 30 * 10 * 18
    # another region is another key (no checkpoint reuse); the same region the same key
    p_two = plan_match(*args, search_x=(2, 21), search_y=(25, 35), **kw)
    assert len({p_all.key, p_one.key, p_two.key}) == 3
    assert plan_match(*args, search_x=(2, 20), search_y=(25, 35), **kw).key == p_one.key
    # the mask's contents, not its name, enter the key
    m = _region_mask()
    write_volume(d / "keys_m.mrc", m.astype(np.float32), 10.0)
    k1 = plan_match(*args, tomogram_mask=str(d / "keys_m.mrc"), **kw).key
    m[20:, :, :] = False
    write_volume(d / "keys_m.mrc", m.astype(np.float32), 10.0)
    k2 = plan_match(*args, tomogram_mask=str(d / "keys_m.mrc"), **kw).key
    assert k1 != k2
    # a tiny region near a face still gets at least one template box of data
    p_small = plan_match(*args, search_x=(0, 1), search_y=(0, 1), search_z=(29, 30), **kw)
    (s,) = p_small.tiles
    assert s.data_shape_zyx == (N, N, N) and s.data_stop_zyx == (30, N, N)


def test_a_resumed_run_with_another_region_does_not_reuse_checkpoints(data, tmp_path):
    from tomomatch.job import load_unit, prepare_checkpoints, run_unit

    d, ts = data["dir"], data["ts"]
    args = (d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path)
    kw = dict(rotations=ROTS, tilt_series=ts, tiles=(2, 2, 1), batch_size=2, name="r")
    a = plan_match(*args, search_x=(2, 20), search_y=(25, 35), **kw)
    prepare_checkpoints(a)
    run_unit(a, a.units[0])
    assert load_unit(a, a.units[0]) is not None
    b = plan_match(*args, search_x=(2, 20), search_y=(24, 35), **kw)
    assert b.unit_path(b.units[0]) == a.unit_path(a.units[0])  # same file name, other key
    prepare_checkpoints(b)
    assert load_unit(b, b.units[0]) is None and not a.unit_path(a.units[0]).exists()


def test_extract_picks_inside_the_region_and_counts_its_voxels(data, tmp_path):
    reg, region = data["reg"], data["region"]
    n_rot = len(ROTS)
    _, ar = _maps(reg)
    df = extract_candidates(reg, radius_voxels=3.0, cutoff=0.0, max_particles=10_000)
    assert len(df) > 10
    zyx = df[["z_voxel", "y_voxel", "x_voxel"]].to_numpy()
    assert region[tuple(zyx.T)].all()
    assert df.attrs["n_search"] == region.sum() * n_rot and df.attrs["search_region"] is True
    # --ignore-tomogram-mask: every computed voxel, and N_search counts them
    dfi = extract_candidates(reg, radius_voxels=3.0, cutoff=0.0, max_particles=10_000, use_tomogram_mask=False)
    zyx_i = dfi[["z_voxel", "y_voxel", "x_voxel"]].to_numpy()
    assert (~region[tuple(zyx_i.T)]).any() and (ar[tuple(zyx_i.T)] >= 0).all()
    assert dfi.attrs["n_search"] == reg["search_statistics"]["n_search_computed"]
    # a user mask is AND-combined with the region
    half = np.zeros(SHAPE, bool)
    half[:, :, :24] = True
    dfm = extract_candidates(reg, radius_voxels=3.0, cutoff=0.0, max_particles=10_000, mask=half)
    zyx_m = dfm[["z_voxel", "y_voxel", "x_voxel"]].to_numpy()
    assert len(dfm) > 0 and (region & half)[tuple(zyx_m.T)].all()
    # the Gaussian cut-off uses the region's count: a smaller N_search, a lower cut-off
    g = extract_candidates(reg, radius_voxels=3.0, cutoff_method="gaussian").attrs["gaussian_cutoff"]
    gi = extract_candidates(reg, radius_voxels=3.0, cutoff_method="gaussian", use_tomogram_mask=False).attrs[
        "gaussian_cutoff"
    ]
    assert g < gi


def test_extract_refuses_a_changed_tomogram_mask(data, tmp_path):
    d = data["dir"]
    m = _region_mask()
    write_volume(tmp_path / "m.mrc", m.astype(np.float32), 10.0)
    job = run_match(
        d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path / "o", tomogram_mask=str(tmp_path / "m.mrc"),
        rotations=ROTS[:2], quiet=True, processes=1,
    )  # fmt: skip
    m[:, :20] = False
    write_volume(tmp_path / "m.mrc", m.astype(np.float32), 10.0)
    with pytest.raises(InputError, match="changed since match") as exc:
        extract_candidates(job, radius_voxels=3.0, cutoff=0.0)
    assert "\n" not in str(exc.value) and "--ignore-tomogram-mask" in str(exc.value)
    assert len(extract_candidates(job, radius_voxels=3.0, cutoff=0.0, use_tomogram_mask=False)) > 0
    # the CLI: default refuses (exit 2, one line), --ignore-tomogram-mask extracts
    jp = job["_job_path"]
    rc, _, err = run_cli(["extract", "-j", jp, "-r", "3", "--cutoff", "0", "-o", tmp_path / "p.star"])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "p.star").exists()
    rc, _, _ = run_cli(
        ["extract", "-j", jp, "-r", "3", "--cutoff", "0", "-o", tmp_path / "p.star", "--ignore-tomogram-mask"]
    )
    assert rc == 0 and (tmp_path / "p.star").exists()


def test_options_round_trip_and_parse():
    o = MatchOptions(angular_step_deg=30, tomogram_mask="m.mrc", search_x=["3", "45"], search_z=(0, 5.0))
    assert o.search_x == (3, 45) and o.search_z == (0, 5) and o.has_search_region
    assert MatchOptions.from_json(json.loads(json.dumps(o.to_json()))) == o
    assert not MatchOptions(angular_step_deg=30).has_search_region


@pytest.mark.parametrize(
    "extra, flag, words",
    [
        (["--search-x", "10", "5"], "--search-x", "START 10 >= END 5"),
        (["--search-y", "7", "7"], "--search-y", "START 7 >= END 7"),
        (["--search-z", "1.5", "9"], "--search-z", "integer"),
        (["--search-x", "a", "9"], "--search-x", "integer"),
        (["--search-x", "-1", "9"], "--search-x", ">= 0"),
        (["--search-x", "0", "49"], "--search-x", "beyond the tomogram's 48 voxels along x"),
        (["--search-z", "30", "31"], "--search-z", "beyond"),
        (["--tomogram-mask", "{d}/shape.mrc"], "--tomogram-mask", "differs from the tomogram's"),
        (["--tomogram-mask", "{d}/zero.mrc"], "--tomogram-mask", "no voxel > 0"),
        (["--tomogram-mask", "{d}/voxel.mrc"], "--tomogram-mask", "voxel size 12"),
        (["--tomogram-mask", "{d}/missing.mrc"], "--tomogram-mask", "not found"),
        (["--tomogram-mask", "{d}/tmask.mrc", "--search-y", "0", "5"], "--tomogram-mask", "leave no voxel"),
    ],
)
def test_bad_region_input_is_one_line_exit_2_nothing_written(data, tmp_path, extra, flag, words):
    d = data["dir"]
    if not (d / "zero.mrc").exists():
        write_volume(d / "shape.mrc", np.ones((30, 40, 47), np.float32), 10.0)
        write_volume(d / "zero.mrc", np.zeros(SHAPE, np.float32), 10.0)
        write_volume(d / "voxel.mrc", np.ones(SHAPE, np.float32), 12.0)
    out = tmp_path / "out"
    argv = ["match", "-t", d / "tmpl.mrc", "-m", d / "mask.mrc", "-v", d / "tomo.mrc", "-d", out]
    argv += ["--angular-step", "90", "--quiet", *[a.format(d=d) for a in extra]]
    rc, _, err = run_cli(argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert flag in lines[0] and words in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_batch_takes_the_region_options_and_a_per_row_mask_column(data, tmp_path):
    from tomomatch.cli import build_parser
    from tomomatch.distributed import read_tomogram_list

    d = data["dir"]
    table = tmp_path / "list.tsv"
    table.write_text(f"name\ttomogram\ttomogram_mask\nA\t{d / 'tomo.mrc'}\t{d / 'tmask.mrc'}\nB\t{d / 'tomo.mrc'}\t\n")
    a, b = read_tomogram_list(table)
    assert a.extra["tomogram_mask"] == (d / "tmask.mrc") and "tomogram_mask" not in b.extra
    args = build_parser().parse_args(
        ["batch", "-l", str(table), "-t", "t.mrc", "-m", "m.mrc", "-d", "o", "--angular-step", "30"]
        + ["--search-x", "3", "45", "--tomogram-mask", "x.mrc"]
    )
    from tomomatch.options import match_options_from_args

    o = match_options_from_args(args)
    assert o.search_x == (3, 45) and o.tomogram_mask == "x.mrc"
