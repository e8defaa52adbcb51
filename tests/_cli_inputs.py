"""Tiny inputs and a valid argument vector for every command (issue 15: output locations, CLI fuzz).

:func:`make_inputs` writes, into one folder, a 24^3 tomogram, an 8^3 template and mask, tilt
metadata, a batch list, and (by running a real ``match`` and ``extract``) a job file and a particle
STAR. :func:`base_argv` gives, per command, an argument vector that succeeds on them in well
under a second (demo and batch excepted: see ``tests/test_fuzz_cli.py``); ``OUT`` marks where
the output location goes.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from tomomatch.cli import main
from tomomatch.mrcio import write_volume

from _synthetic import asymmetric_template, sphere_mask

VOXEL = 10.0
SHAPE = (24, 24, 24)
BOX = 8

#: every command that writes, with the kind of output location it takes
OUTPUT_KIND = {
    "template": "file",
    "mask": "file",
    "merge-stars": "file",
    "extract": "file",
    "match": "folder",
    "batch": "folder",
    "simulate": "folder",
    "demo": "folder",
    "roc": "prefix",
    "hand": "prefix",
    "compare-hands": "prefix",
}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``tomomatch ARGV`` in this process: (exit status, stdout, stderr). A ``SystemExit`` (argparse)
    gives its status; any other exception propagates (a finding)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return int(rc), out.getvalue(), err.getvalue()


def make_inputs(d: Path) -> Path:
    """Write the tiny inputs into ``d`` (and a finished match job in ``d/job``); return ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    tomo = rng.normal(0, 0.2, SHAPE).astype(np.float32)
    tmpl = asymmetric_template(BOX)
    tomo[8:16, 8:16, 8:16] -= tmpl  # one particle, dark like a tomogram
    write_volume(d / "tomo.mrc", tomo, VOXEL)
    write_volume(d / "tmpl.mrc", -tmpl, VOXEL)
    write_volume(d / "mask.mrc", sphere_mask(BOX, 3.5), VOXEL)
    angles = np.arange(-60, 61, 20)
    (d / "angles.tlt").write_text("".join(f"{a}\n" for a in angles))
    (d / "dose.txt").write_text("".join(f"{3.0 * i}\n" for i in range(len(angles))))
    (d / "rotations.txt").write_text("0 0 0\n90 90 0\n0 90 90\n")
    (d / "tomograms.tsv").write_text(
        f"tomogram\ttilt_angles\tdose\tdefocus\n{d / 'tomo.mrc'}\t{d / 'angles.tlt'}\t{d / 'dose.txt'}\t3\n"
    )
    rc, _, err = run_cli(
        [
            "match",
            *("-t", d / "tmpl.mrc", "-m", d / "mask.mrc", "-v", d / "tomo.mrc", "-d", d / "job"),
            *("--particle-diameter", "60", "--quiet", "--processes", "1", "--name", "t"),
            *("-a", d / "angles.tlt", "--dose", d / "dose.txt", "--defocus", "3"),
        ]
    )
    assert rc == 0, err
    rc, _, err = run_cli(["extract", "-j", d / "job" / "t_job.json", "-o", d / "particles.star", "-n", "5"])
    assert rc == 0, err
    return d


def base_argv(command: str, d: Path, out: Path) -> list[str]:
    """A valid argument vector for ``command`` on the inputs in ``d``, writing to ``out``."""
    files = ["-t", str(d / "tmpl.mrc"), "-m", str(d / "mask.mrc")]
    meta = ["-a", str(d / "angles.tlt"), "--dose", str(d / "dose.txt"), "--defocus", "3"]
    job = str(d / "job" / "t_job.json")
    o = str(out)
    argv = {
        "template": ["-i", str(d / "tmpl.mrc"), "-o", o, "--voxel-size", "10", "-b", "16", "--low-pass", "30"],
        "mask": ["-o", o, "-b", "8", "--voxel-size", "10", "--radius", "3", "--sigma", "1"],
        "metadata": [*meta, "--voltage", "300", "--json"],
        "match": [
            *files,
            *("-v", str(d / "tomo.mrc"), "-d", o, "--angular-step", "90", "--quiet", "--processes", "1"),
            *("--low-pass", "30", "--max-memory", "1"),
            *meta,
        ],
        "batch": [
            *("-l", str(d / "tomograms.tsv"), *files, "-d", o, "--angular-step", "90", "--no-extract"),
            *("--workers", "1", "--device", "cpu", "--quiet", "--dashboard-address", "none"),
        ],
        "extract": ["-j", job, "-o", o, "-n", "5", "--false-alarms", "1", "--border", "1"],
        "roc": ["-j", job, "-o", o, "--no-figure", "--false-alarms", "1", "--cutoffs", "0.1"],
        "merge-stars": [str(d / "particles.star"), "-o", o],
        "simulate": [
            *("--preset", "ci", "-o", o, "--seed", "1", "--size", "24", "24", "24", "--voxel-size", "20"),
            *("--n-particles", "1", "--n-decoys", "0", "--n-blobs", "0", "--tilt-step", "30", "--thickness-nm", "40"),
        ],
        "hand": [
            *("-j", job, "-o", o, "-n", "3", "--max-angle", "0", "--shift", "0", "--oversampling", "1"),
            *("--bootstrap", "100", "--min-particles", "2", "--no-figure"),
        ],
        "compare-hands": [job, job, "-o", o, "--hands", "1", "-1", "--bootstrap", "100", "--no-figure"],
        "demo": ["--out", o, "--angular-step", "90", "--processes", "1", "--quiet"],
        # writes nothing; without --dry-run it needs napari (absent in CI: one line, exit 2)
        "view": [
            *(str(d / "tomo.mrc"), "-p", str(d / "particles.star"), "-s", str(d / "job" / "t_scores.mrc")),
            *("--job", job, "--dry-run"),
        ],
    }[command]
    return [command, *argv]
