import numpy as np
import pytest

from tomomatch.cli import build_parser
from tomomatch.demo import DEMO_SIMULATION, score_picks


def test_score_picks_one_to_one_within_radius():
    truth = np.array([[0, 0, 0], [10, 0, 0], [20, 0, 0]], float)
    picks = np.array([[0.5, 0, 0], [0.6, 0, 0], [10, 2.5, 0], [40, 0, 0]], float)
    q = score_picks(picks, truth, max_distance_voxels=3.0)
    # (0.5,0,0)->truth 0, (10,2.5,0)->truth 1; the second pick near truth 0 is a false positive
    assert q["true_positives"] == 2
    assert q["precision"] == pytest.approx(2 / 4)
    assert q["recall"] == pytest.approx(2 / 3)
    assert score_picks(np.empty((0, 3)), truth, 3.0)["recall"] == 0.0


def test_demo_command_is_registered_with_defaults():
    args = build_parser().parse_args(["demo", "--out", "x"])
    assert args.out == "x" and args.true_hand == 1 and args.angular_step == 30.0 and args.processes == 2
    # the demo strip is wide enough for the gradient to exceed the tolerance at its resolution
    from tomomatch.conventions import electron_wavelength_angstrom

    nx = DEMO_SIMULATION["tomogram_size_xyz"][0]
    half_width = nx / 2 * DEMO_SIMULATION["voxel_size_angstrom"]
    d = 2 * DEMO_SIMULATION["voxel_size_angstrom"]
    assert half_width * np.sin(np.deg2rad(60)) > d**2 / (4 * electron_wavelength_angstrom(300))


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--angular-step", "0"], "--angular-step"),
        (["--processes", "0"], "--processes"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_demo_checks_options_before_simulating(tmp_path, capsys, argv, flag):
    from tomomatch.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]
    assert not (tmp_path / "d").exists()  # nothing simulated, nothing written
