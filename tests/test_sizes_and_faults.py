"""Sizes that cannot fit are refused before allocating, in one line naming the option."""

from __future__ import annotations

import numpy as np
import pytest

from tomomatch.errors import InputError


def test_rotation_sets_beyond_the_limit_are_refused_before_building():
    from tomomatch.angles import MAX_ROTATIONS, uniform_rotation_count, uniform_rotations

    assert uniform_rotation_count(3.92) < MAX_ROTATIONS  # the seed's search is fine
    for step in (0.5, 1e-6, 1e-300):
        with pytest.raises(InputError) as exc:
            uniform_rotations(step)
        assert "\n" not in str(exc.value) and "--angular-step" in str(exc.value)


def test_match_with_an_absurd_particle_diameter_is_one_line(tmp_path, capsys):
    from _synthetic import asymmetric_template, sphere_mask
    from tomomatch.cli import main
    from tomomatch.mrcio import write_volume

    write_volume(tmp_path / "t.mrc", asymmetric_template(12), 10.0)
    write_volume(tmp_path / "m.mrc", sphere_mask(12, 5), 10.0)
    write_volume(tmp_path / "v.mrc", np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32), 10.0)
    argv = [
        "match",
        "-t",
        str(tmp_path / "t.mrc"),
        "-m",
        str(tmp_path / "m.mrc"),
        "-v",
        str(tmp_path / "v.mrc"),
        "-d",
        str(tmp_path / "o"),
        "--particle-diameter",
        "1e9",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rotations" in err[0]
    assert not (tmp_path / "o" / "v_checkpoints").exists()


def test_ragged_batch_table_names_the_line(tmp_path):
    from tomomatch.distributed import read_tomogram_list

    (tmp_path / "list.tsv").write_text("name\ttomogram\na\ta.mrc\textra\n")
    with pytest.raises(InputError) as exc:
        read_tomogram_list(tmp_path / "list.tsv")
    assert "\n" not in str(exc.value) and "list.tsv" in str(exc.value) and "2" in str(exc.value)
