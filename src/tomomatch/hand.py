"""Decide the defocus handedness ``h`` of a tilt series from data: the two pipelines.

The defocus of a particle at centred ``(x, z)`` in the tilt-``theta`` image is
``df(theta) + h (-x sin t + z cos t)`` (:mod:`tomomatch.conventions`; ``h`` is RELION 5's
``rlnTomoHand``). A template weighted with the right ``h`` matches a particle better than one
weighted with the wrong ``h``, and the advantage grows with ``|x|`` (the ``x sin t`` term).

* :func:`run_hand` -- ``tomomatch hand``: candidates re-scored under ``h = +1, -1, 0``
  (:mod:`tomomatch.rescore`), then the statistics (:mod:`tomomatch.hand_stats`).
* :func:`run_compare_hands` -- ``tomomatch compare-hands``: the seed's two-run workflow.

The statistics, pairing and report live in :mod:`tomomatch.hand_stats`, the re-scoring engine
in :mod:`tomomatch.rescore`; their public names are re-exported here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import InputError
from .hand_stats import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_PARTICLES,
    UNDETERMINED,
    HandScores,
    compare_hands,
    hand_statistics,
    pair_particles,
    read_report,
    verdict_settings,
    write_report,
)
from .jobfile import job_hand, job_options, tilt_series_from_job
from .rescore import RescoreResult, oversample_volume, rescore_particles, rotate_volumes

if TYPE_CHECKING:
    from .conventions import HandMode

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_PARTICLES",
    "UNDETERMINED",
    "HandScores",
    "hand_statistics",
    "verdict_settings",
    "pair_particles",
    "compare_hands",
    "write_report",
    "read_report",
    "RescoreResult",
    "oversample_volume",
    "rotate_volumes",
    "rescore_particles",
    "tilt_series_from_job",
    "run_hand",
    "load_run",
    "run_compare_hands",
]


# --------------------------------------------------------------------------- pipelines (CLI layer calls these)


def _particle_arrays(table, shape_zyx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(positions_xyz voxel, pose matrices, score)`` from a particle table (extract's columns)."""
    from .conventions import relion_to_matrix

    missing = [c for c in ("x", "y", "z", "rot", "tilt", "psi") if c not in table.columns]
    if missing:
        raise InputError(f"particle table lacks column(s) {', '.join(missing)}", field="particles")
    pos = table[["x", "y", "z"]].to_numpy(float)
    if not np.all(np.isfinite(pos)):
        raise InputError(
            "candidate positions in voxels are unknown (STAR without tomogram geometry); give the match job with --job",
            field="particles",
        )
    mats = relion_to_matrix(table[["rot", "tilt", "psi"]].to_numpy(float))
    score = table["score"].to_numpy(float) if "score" in table.columns else np.full(len(table), np.nan)
    return pos, mats, score


def _finish_report(out_prefix: Path, report: dict[str, Any], scores: HandScores, figure: bool) -> dict[str, Any]:
    """Write ``<out_prefix>.png`` (if ``figure``) and ``<out_prefix>.json``; return the report."""
    method = report.get("method") or {}
    modes = {r.get("hand_mode", "full") for r in method.get("runs", [])} | (
        {method["hand_mode"]} if method.get("hand_mode") else set()
    )
    if len(modes) > 1:
        report.setdefault("warnings", []).append(f"the runs used different hand modes ({sorted(modes)})")
    report["settings"] = verdict_settings(report.get("verdict"), "pytom" if modes == {"pytom"} else "full")
    files = {"report": str(out_prefix.with_suffix(".json"))}
    if figure:
        from .hand_plots import plot_hand

        files["figure"] = str(plot_hand(out_prefix.with_suffix(".png"), scores, report))
    report["files"] = files
    write_report(out_prefix.with_suffix(".json"), report, scores)
    return report


def _check_belongs_to_job(job: dict[str, Any], tomogram, shape_zyx, particles) -> None:
    """Particles, job and tomogram must describe one tomogram: its shape, and the particles'
    ``rlnTomoName`` (when they carry one) against the job's."""
    from .particles import _tomo_name

    jp = job.get("_job_path")
    want = job.get("tomogram_shape_zyx")
    if want is not None and tuple(int(v) for v in want) != tuple(shape_zyx):
        raise InputError(
            f"tomogram shape (z, y, x) {tuple(shape_zyx)} differs from the job's "
            f"{tuple(int(v) for v in want)}: not the tomogram this job matched",
            tomogram,
            "tomogram_shape_zyx",
        )
    if particles is not None and "tomo_name" in getattr(particles, "columns", ()):
        names = {str(n) for n in particles["tomo_name"].dropna().unique()}
        job_name = _tomo_name(job)
        if names and names != {job_name}:
            raise InputError(
                f"particles of {', '.join(sorted(names)[:3])} given with the job of {job_name!r};"
                " expected the particles of the job's tomogram",
                jp,
                "rlnTomoName",
            )


def run_hand(
    out_prefix,
    *,
    job=None,
    tomogram=None,
    template=None,
    mask=None,
    tilt_series=None,
    particles=None,
    voxel_size_angstrom: float | None = None,
    max_particles: int = 200,
    hand_mode: HandMode | None = None,
    max_angle_deg: float = 8.0,
    angle_step_deg: float = 4.0,
    shift_voxels: int = 1,
    oversampling: int = 2,
    low_pass_angstrom: float | None = None,
    high_pass_angstrom: float | None = None,
    whiten: bool | None = None,
    ctf_mode: str | None = None,
    coarse_step_deg: float = 20.0,
    particle_diameter_angstrom: float | None = None,
    alpha: float = DEFAULT_ALPHA,
    min_particles: int = DEFAULT_MIN_PARTICLES,
    n_bootstrap: int = 10_000,
    seed: int = 0,
    figure: bool = True,
    progress=None,
) -> dict[str, Any]:
    """``tomomatch hand``: rescore candidates under ``h = +1, -1, 0`` and decide the hand.

    Inputs come from a match job (``job``: its tomogram, template, mask, tilt series, voxel
    size, band pass, whitening, CTF mode and hand mode; explicit arguments override them) or
    are given directly. The candidates are ``particles`` (a table with extract's columns
    ``x, y, z`` voxel indices, ``rot, tilt, psi``, ``score``); without it they are extracted
    from ``job`` (:func:`tomomatch.extract.extract_candidates`), and without a job a coarse
    search (``coarse_step_deg``, no gradient) is run first into ``<out_prefix>_coarse/``.
    The strongest ``max_particles`` candidates are rescored (:func:`rescore_particles`).

    Writes ``<out_prefix>.json`` (report with the per-particle table) and, with ``figure``,
    ``<out_prefix>.png``. Returns the report (with ``"files"``).
    """
    from dataclasses import replace

    from .extract import extract_candidates, read_job
    from .jobfile import as_job
    from .mrcio import read_volume
    from .options import MatchOptions, WeightingOptions

    out_prefix = Path(out_prefix)
    jobd = None
    weight_extra: dict[str, Any] = {}
    if job is not None:
        jobd = as_job(job)
        opts = job_options(jobd)
        w = opts.weighting
        tomogram = tomogram or jobd.get("tomogram")
        template = template or jobd.get("template")
        mask = mask or jobd.get("mask")
        job_ts = tilt_series_from_job(jobd)
        if tilt_series is None:
            tilt_series = job_ts
        voxel_size_angstrom = voxel_size_angstrom or jobd.get("voxel_size_angstrom")
        low_pass_angstrom = low_pass_angstrom if low_pass_angstrom is not None else w.low_pass_angstrom
        high_pass_angstrom = high_pass_angstrom if high_pass_angstrom is not None else w.high_pass_angstrom
        whiten = w.whiten if whiten is None else whiten
        if ctf_mode is None:
            # no CTF although the job had defocus and a wedge: the user chose --ctf none
            if w.ctf is None and job_ts is not None and job_ts.has_defocus and w.wedge != "none":
                raise InputError(
                    "the job was matched without a CTF (--ctf none): the hand test compares"
                    " per-tilt CTFs; give --ctf signed or abs",
                    jobd.get("_job_path"),
                    "weighting.ctf",
                )
            ctf_mode = w.ctf
        hand_mode = hand_mode or opts.hand_mode
        if w.wedge == "per_tilt":  # else keep the per-tilt defaults (dose and cos on)
            weight_extra = {"dose_weighting": w.dose, "cos_weighting": w.cos_weighting}
    hand_mode = hand_mode or "full"
    ctf_mode = ctf_mode or "signed"
    for what, val in (("tomogram", tomogram), ("template", template), ("mask", mask)):
        if val is None:
            raise InputError(f"no {what} given (and no match job naming one)", field=f"--{what}")
    if tilt_series is None or not tilt_series.has_defocus:
        raise InputError(
            "tilt metadata with per-tilt defocus are required (e.g. --defocus FILE)",
            None if tilt_series is None else tilt_series.source,
            "defocus",
        )
    tomo, voxel = read_volume(tomogram, voxel_size_angstrom, what="tomogram")
    tmpl, _ = read_volume(template, voxel, what="template")
    msk, _ = read_volume(mask, voxel, what="mask")
    if jobd is not None:
        _check_belongs_to_job(jobd, tomogram, tomo.shape, particles)

    source = "particles"
    if particles is None:
        if jobd is None:
            from .job import run_match

            diameter = particle_diameter_angstrom
            if diameter is None:  # sphere of the mask's volume
                diameter = 2.0 * (3.0 * float((msk > 0.5).sum()) / (4.0 * math.pi)) ** (1 / 3) * voxel
            coarse_dir = out_prefix.parent / f"{out_prefix.name}_coarse"
            # the search the hand test refines: the candidates' band pass and CTF, no gradient
            search = MatchOptions(
                weighting=WeightingOptions(
                    low_pass_angstrom=low_pass_angstrom,
                    high_pass_angstrom=high_pass_angstrom,
                    whiten=bool(whiten),
                    ctf=ctf_mode,
                ),
                hand_mode=hand_mode,
            )
            coarse = replace(
                search,
                name="coarse",
                voxel_size_angstrom=voxel,
                angular_step_deg=coarse_step_deg,
                particle_diameter_angstrom=diameter,
                defocus_handedness=0,
            )
            run_match(template, mask, tomogram, coarse_dir, coarse, tilt_series=tilt_series)
            jobd = read_job(coarse_dir / "coarse_job.json")
            source = f"coarse match ({coarse_step_deg:g} deg) and extraction in {coarse_dir}"
        else:
            source = f"extracted from {jobd.get('_job_path')}"
        particles = extract_candidates(
            jobd,
            max_particles=max_particles,
            particle_diameter_angstrom=(particle_diameter_angstrom or jobd.get("particle_diameter_angstrom")),
        )
    if len(particles) == 0:
        raise InputError("no candidates (none above the cut-off)", field="particles")
    table = particles
    if "score" in table.columns and len(table) > max_particles:
        table = table.sort_values("score", ascending=False, kind="stable").head(max_particles)
    elif len(table) > max_particles:
        table = table.head(max_particles)
    pos, mats, _ = _particle_arrays(table, tomo.shape)
    res = rescore_particles(
        tomo,
        voxel,
        tilt_series,
        tmpl,
        msk,
        pos,
        mats,
        hands=(1, -1, 0),
        hand_mode=hand_mode,
        max_angle_deg=max_angle_deg,
        angle_step_deg=angle_step_deg,
        shift_voxels=shift_voxels,
        oversampling=oversampling,
        low_pass_angstrom=low_pass_angstrom,
        high_pass_angstrom=high_pass_angstrom,
        whiten=bool(whiten),
        weight_options={"ctf_mode": ctf_mode, **weight_extra},
        progress=progress,
    )
    scores = res.to_hand_scores()
    report = hand_statistics(scores, alpha=alpha, min_particles=min_particles, n_bootstrap=n_bootstrap, seed=seed)
    report["method"] = {
        "command": "hand",
        "candidates": source,
        "n_candidates_rescored": int(len(table)),
        "hand_mode": hand_mode,
        "max_angle_deg": float(max_angle_deg),
        "angle_step_deg": float(angle_step_deg),
        "n_local_rotations": int(res.n_rotations),
        "shift_voxels": int(shift_voxels),
        "oversampling": int(oversampling),
        "low_pass_angstrom": low_pass_angstrom,
        "high_pass_angstrom": high_pass_angstrom,
        "whiten": bool(whiten),
        "ctf": ctf_mode,
        "weighting": {
            "per_tilt": True,
            "dose": weight_extra.get("dose_weighting", True),
            "cos": weight_extra.get("cos_weighting", True),
        },
        "voxel_size_angstrom": float(voxel),
        "tomogram": str(tomogram),
        "template": str(template),
        "mask": str(mask),
        "score": "normalised cross-correlation (max over local rotations and shifts)",
    }
    return _finish_report(out_prefix, report, scores, figure)


def load_run(
    path, *, max_particles: int = 1000, score: str = "score", hand: int | None = None, **extract_options
) -> tuple[np.ndarray, np.ndarray, int | None, dict[str, Any]]:
    """One run for :func:`compare_hands`: centred positions (Angstrom), scores, hand, info.

    ``path`` is a match job file (``*_job.json``: candidates are extracted from its maps with
    :func:`tomomatch.extract.extract_candidates`, the hand is its ``defocus_handedness``) or a
    candidate STAR file (read with :func:`tomomatch.particles.read_particles`; the hand must be
    given, or come from a job file named in it). ``score`` is ``"score"`` (the LCC maximum) or
    ``"score_sigma"`` (in units of the search's standard deviation).
    """
    from .conventions import index_to_centered_angstrom

    p = Path(path)
    if not p.exists():
        raise InputError("run not found (expected a match job .json or a candidate .star)", p)
    if p.suffix.lower() == ".json":
        from .extract import extract_candidates, read_job

        job = read_job(p)
        table = extract_candidates(job, max_particles=max_particles, **extract_options)
        shape = job.get("tomogram_shape_zyx")
        if shape is None:
            raise InputError("job file lacks tomogram_shape_zyx", p, "tomogram_shape_zyx")
        voxel: float | None = float(job["voxel_size_angstrom"])
        run_hand_ = job_hand(job) if hand is None else hand
        info = {
            "path": str(p),
            "kind": "job",
            "n_candidates": int(len(table)),
            "cutoff": table.attrs.get("cutoff"),
            "cutoff_method": table.attrs.get("cutoff_method"),
            "hand_mode": job.get("hand_mode") or "full",
        }
    else:
        from .particles import read_particles

        table = read_particles(p)
        attrs = getattr(table, "attrs", {}) or {}
        shape = attrs.get("tomogram_shape_zyx")
        voxel = attrs.get("voxel_size_angstrom")
        run_hand_ = hand
        if run_hand_ is None and attrs.get("job"):
            from .extract import read_job

            run_hand_ = job_hand(read_job(attrs["job"]))
        info = {"path": str(p), "kind": "star", "n_candidates": int(len(table))}
    if len(table) == 0:
        raise InputError("no candidates (none above the cut-off)", p)
    if score not in table.columns:
        raise InputError(f"no {score!r} column; expected 'score' or 'score_sigma'", p, score)
    idx = table[["x", "y", "z"]].to_numpy(float) if {"x", "y", "z"} <= set(table.columns) else None
    if shape is not None and voxel is not None and idx is not None and np.all(np.isfinite(idx)):
        # centred on the matched tomogram's centre voxel n // 2, as the defocus offsets are
        centred = index_to_centered_angstrom(idx, shape, voxel)
    elif {"x_angstrom", "y_angstrom", "z_angstrom"} <= set(table.columns):
        centred = table[["x_angstrom", "y_angstrom", "z_angstrom"]].to_numpy(float)
    else:
        centred = np.full((len(table), 3), np.nan)
    if not np.all(np.isfinite(centred)):
        raise InputError(
            "cannot place the candidates: the tomogram geometry is unknown"
            " (write the STAR with tomomatch extract, or compare the job files)",
            p,
        )
    info["hand"] = run_hand_
    return centred, table[score].to_numpy(float), run_hand_, info


def run_compare_hands(
    run_a,
    run_b,
    out_prefix,
    *,
    hands: Sequence[int] | None = None,
    max_distance_angstrom: float | None = None,
    max_particles: int = 1000,
    score: str = "score",
    alpha: float = DEFAULT_ALPHA,
    min_particles: int = DEFAULT_MIN_PARTICLES,
    n_bootstrap: int = 10_000,
    seed: int = 0,
    figure: bool = True,
    **extract_options,
) -> dict[str, Any]:
    """``tomomatch compare-hands``: the seed's two-run workflow, with paired statistics.

    Loads both runs (:func:`load_run`), pairs their candidates one-to-one within
    ``max_distance_angstrom`` (default: 2 voxels of the first job, or 10 Angstrom) and applies
    :func:`hand_statistics` to ``delta = s(+1 run) - s(-1 run)``. Writes ``<out_prefix>.json``
    and ``<out_prefix>.png``; returns the report.
    """
    out_prefix = Path(out_prefix)
    ha_opt, hb_opt = (None, None) if hands is None else (int(hands[0]), int(hands[1]))
    ca, sa, ha, info_a = load_run(run_a, max_particles=max_particles, score=score, hand=ha_opt, **extract_options)
    cb, sb, hb, info_b = load_run(run_b, max_particles=max_particles, score=score, hand=hb_opt, **extract_options)
    for h, info in ((ha, info_a), (hb, info_b)):
        if h is None:
            raise InputError("the hand of this run is unknown; give --hands H1 H2", info["path"], "hand")
    assert ha is not None and hb is not None  # checked just above
    if max_distance_angstrom is None:
        max_distance_angstrom = 10.0
        if Path(run_a).suffix.lower() == ".json":
            from .extract import read_job

            max_distance_angstrom = 2.0 * float(read_job(run_a)["voxel_size_angstrom"])
    paired, report = compare_hands(
        ca,
        sa,
        ha,
        cb,
        sb,
        hb,
        max_distance_angstrom=max_distance_angstrom,
        alpha=alpha,
        min_particles=min_particles,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    report["method"] = {"command": "compare-hands", "runs": [info_a, info_b], "score": score}
    return _finish_report(out_prefix, report, paired, figure)
