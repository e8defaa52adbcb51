"""Decide the defocus handedness ``h`` of a tilt series from data: the two pipelines.

The defocus of a particle at centred ``(x, z)`` in the tilt-``theta`` image is
``df(theta) + h (-x sin t + z cos t)`` (:mod:`tomomatch.conventions`; ``h`` is RELION 5's
``rlnTomoHand``). A template weighted with the right ``h`` matches a particle better than one
weighted with the wrong ``h``, and the advantage grows with ``|x|`` (the ``x sin t`` term).

* :func:`run_hand` -- ``tomomatch hand``: candidates re-scored under ``h = +1, -1, 0``
  (:mod:`tomomatch.rescore`), then the statistics (:mod:`tomomatch.hand_stats`).
* :func:`run_compare_hands` -- ``tomomatch compare-hands``: the seed's two-run workflow.
* :func:`run_hand_pooled`, :func:`run_compare_hands_pooled`, :func:`pool_reports` -- one verdict
  for several tomograms of a data set (:func:`tomomatch.hand_stats.pooled_hand_statistics`).

The statistics, pairing and report live in :mod:`tomomatch.hand_stats`, the re-scoring engine
in :mod:`tomomatch.rescore`; their public names are re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    pooled_hand_statistics,
    read_report,
    verdict_settings,
    write_report,
)
from .jobfile import job_hand, job_options, tilt_series_from_job
from .options import phase_flip_note
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
    "NoCandidatesError",
    "HandTomogram",
    "read_hand_list",
    "read_compare_list",
    "pool_reports",
    "run_hand_pooled",
    "run_compare_hands_pooled",
]


class NoCandidatesError(InputError):
    """A tomogram without candidates: fatal for one tomogram, excluded from a pooled verdict."""


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
    device="cpu",
) -> dict[str, Any]:
    """``tomomatch hand``: rescore candidates under ``h = +1, -1, 0`` and decide the hand.

    Inputs come from a match job (``job``: its tomogram, template, mask, tilt series, voxel
    size, band pass, whitening, CTF mode and hand mode; explicit arguments override them) or
    are given directly. The candidates are ``particles`` (a table with extract's columns
    ``x, y, z`` voxel indices, ``rot, tilt, psi``, ``score``); without it they are extracted
    from ``job`` (:func:`tomomatch.extract.extract_candidates`), and without a job a coarse
    search (``coarse_step_deg``, no gradient) is run first into ``<out_prefix>_coarse/``.
    The strongest ``max_particles`` candidates are rescored (:func:`rescore_particles`).
    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``) runs the re-scoring and the coarse search
    there; it is checked first and recorded in the report (``method.device``).

    Writes ``<out_prefix>.json`` (report with the per-particle table) and, with ``figure``,
    ``<out_prefix>.png``. Returns the report (with ``"files"``).
    """
    from dataclasses import replace

    from .extract import extract_candidates, read_job
    from .jobfile import as_job
    from .matching import resolve_device
    from .mrcio import read_volume
    from .options import MatchOptions, WeightingOptions

    dev = resolve_device(device)  # before any work: a bad device is one line, at once
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
    if ctf_mode is None and phase_flip_note(tilt_series) is not None:
        ctf_mode = "abs"  # no job to follow: a phase-flipped reconstruction (Warp), as match does
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
                device=str(dev),
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
        raise NoCandidatesError("no candidates (none above the cut-off)", field="particles")
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
        device=dev,
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
        "device": str(dev),
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
        raise NoCandidatesError("no candidates (none above the cut-off)", p)
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


# --------------------------------------------------------------------------- several tomograms (one data set)


@dataclass
class HandTomogram:
    """One tomogram of a pooled run: a row of ``tomomatch hand --list`` or one ``--job``/``--particles``.

    ``tomogram``, ``tilt_series``, ``job`` and ``particles`` are passed to :func:`run_hand` (None:
    from the job, or extracted). ``error`` marks a tomogram a batch failed on (reported,
    excluded). ``where`` is ``(file, field)`` naming the list line (or the option) in errors.
    """

    name: str
    tomogram: Path | None = None
    tilt_series: Any = None
    job: Path | None = None
    particles: Path | None = None
    error: str | None = None
    where: tuple[str | None, str | None] = (None, None)


#: the columns ``tomomatch hand --list`` adds to the batch table (docs/batch.md)
HAND_LIST_COLUMNS = ("job", "particles")


def _read_batch_summary(path: Path) -> list[HandTomogram]:
    """The tomograms of a ``batch_summary.json`` (``tomomatch batch``): job and particles per entry."""
    import json

    from .distributed import _resolve

    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the batch summary ({exc})", path) from None
    if not isinstance(doc, list) or not doc or not all(isinstance(r, dict) and r.get("name") for r in doc):
        raise InputError("not a tomomatch batch summary (a JSON list of per-tomogram entries with a name)", path)
    base = path.resolve().parent
    out = []
    for i, r in enumerate(doc, start=1):
        where = (str(path), f"entry {i} ({r['name']})")
        if r.get("error"):
            out.append(HandTomogram(str(r["name"]), error=str(r["error"]), where=where))
            continue
        if not r.get("job"):
            raise InputError("no job file", *where)
        files = {k: _resolve(str(r[k]), base) for k in ("job", "particles", "tomogram") if r.get(k)}
        for k, f in files.items():
            if not f.is_file():
                raise InputError(f"{k} not found: {f}", *where)
        out.append(
            HandTomogram(str(r["name"]), files.get("tomogram"), None, files["job"], files.get("particles"), where=where)
        )
    return out


def read_hand_list(path, allow_missing_dose: bool = False) -> list[HandTomogram]:
    """The tomograms of a data set for a pooled ``tomomatch hand``.

    ``path`` is ``tomomatch batch``'s tomogram list (read by
    :func:`tomomatch.distributed.read_tomogram_list`: a TSV/CSV table or a RELION 5
    ``tomograms.star``) whose table may add the columns ``job`` (the tomogram's match job) and
    ``particles`` (its candidate STAR), or a ``batch_summary.json`` written by
    ``tomomatch batch`` (job and particles of each tomogram). Errors name the line (or entry).
    ``allow_missing_dose`` accepts tilt metadata without dose (exposure filter off).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("tomogram list not found", p)
    if p.suffix.lower() == ".json":
        return _read_batch_summary(p)
    from .distributed import read_tomogram_list

    out = []
    for e in read_tomogram_list(p, allow_missing_dose=allow_missing_dose, extra_columns=HAND_LIST_COLUMNS):
        where = (str(p), f"line {e.line}" if e.line is not None else f"rlnTomoName {e.name}")
        for col, f in e.extra.items():
            if not f.is_file():
                raise InputError(f"{col} of {e.name!r} not found: {f}", *where)
        out.append(
            HandTomogram(e.name, e.tomogram, e.tilt_series, e.extra.get("job"), e.extra.get("particles"), where=where)
        )
    return out


def read_compare_list(path) -> list[tuple[str, Path, Path, tuple[str, str]]]:
    """``(name, run_a, run_b, (file, "line N"))`` per row of a ``compare-hands --list`` table.

    Tab-separated (``.tsv``, ``.txt``) or comma-separated (``.csv``) with a header: ``run_a`` and
    ``run_b`` (match job .json or candidate .star; required), ``name`` (default: ``run_a``'s
    stem). Comments, quoting and relative paths as in ``tomomatch batch``'s table.
    """
    from .distributed import _resolve, _table_rows

    p = Path(path)
    if not p.is_file():
        raise InputError("run list not found", p)
    sep = "," if p.suffix.lower() == ".csv" else "\t"
    columns, rows = _table_rows(p, sep)
    missing = [c for c in ("run_a", "run_b") if c not in columns]
    unknown = [c for c in columns if c not in ("name", "run_a", "run_b")]
    if missing or unknown:
        raise InputError(
            f"columns {', '.join(columns) or 'none'}; expected run_a, run_b and optionally name"
            f" ({'comma' if sep == ',' else 'tab'}-separated, with a header row)",
            p,
        )
    if not rows:
        raise InputError("the table lists no runs", p)
    base = p.resolve().parent
    out: list[tuple[str, Path, Path, tuple[str, str]]] = []
    for lineno, row in rows:
        where = (str(p), f"line {lineno}")
        cells = {c: v.strip() for c, v in zip(columns, row) if v.strip()}
        for c in ("run_a", "run_b"):
            if c not in cells:
                raise InputError(f"empty {c} cell", *where)
        a, b = _resolve(cells["run_a"], base), _resolve(cells["run_b"], base)
        for c, f in (("run_a", a), ("run_b", b)):
            if not f.is_file():
                raise InputError(f"{c} not found: {f}", *where)
        out.append((cells.get("name") or _run_name(a), a, b, where))
    names = [n for n, *_ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"name(s) {', '.join(dup)} appear twice; give a name column", p, "name")
    return out


def _run_name(path: Path) -> str:
    """A tomogram name from a run's file name: the stem without ``_job``/``_particles``/``_hand``."""
    stem = path.name.split(".")[0]
    for suffix in ("_job", "_particles", "_hand"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Tomogram names for files given on the command line: :func:`_run_name`, made unique with the
    parent folder's name and then the position where needed."""
    names = [_run_name(Path(p)) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{Path(p).parent.name}_{n}" if Path(p).parent.name else n for p, n in zip(paths, names)]
    if len(set(names)) < len(names):
        names = [f"{i}_{n}" for i, n in enumerate(names, start=1)]
    return names


def _report_hand_mode(report: dict[str, Any]) -> str:
    method = report.get("method") or {}
    modes = {r.get("hand_mode", "full") for r in method.get("runs", [])} | (
        {method["hand_mode"]} if method.get("hand_mode") else set()
    )
    return modes.pop() if len(modes) == 1 else ("mixed" if modes else "full")


def _write_tomogram_table(path: Path, report: dict[str, Any]) -> Path:
    """The per-tomogram table as TSV (one row per tomogram, excluded ones with their reason)."""
    from .mrcio import atomic_path

    cols = (
        "name",
        "verdict",
        "n_particles",
        "n_nonzero_delta",
        "n_plus_better",
        "n_minus_better",
        "mean_delta",
        "median_delta",
        "p",
        "p_plus",
        "p_minus",
        "z",
        "weight",
        "disagrees",
        "report",
        "reason",
    )

    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.6g}"
        return str(v).replace("\t", " ").replace("\n", " ")

    lines = ["\t".join(cols)]
    for r in report["tomograms"]:
        lines.append("\t".join(cell(r.get(c)) for c in cols))
    for e in report["excluded"]:
        lines.append(
            "\t".join(cell({"name": e["name"], "verdict": "excluded", "reason": e["reason"]}.get(c)) for c in cols)
        )
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return path


def pool_reports(
    out_prefix,
    reports: Sequence[tuple[str, Any]],
    *,
    excluded: Sequence[tuple[str, str]] = (),
    alpha: float = DEFAULT_ALPHA,
    min_particles: int = DEFAULT_MIN_PARTICLES,
    n_bootstrap: int = 10_000,
    seed: int = 0,
    method: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One verdict from per-tomogram hand reports (``tomomatch hand`` / ``compare-hands`` JSON).

    ``reports`` is ``(name, report path)`` per tomogram; ``excluded`` ``(name, reason)`` for
    tomograms without candidates. Applies :func:`pooled_hand_statistics` to the reports'
    per-particle tables and writes ``<out_prefix>.json`` (the pooled report with the
    per-tomogram rows under ``"tomograms"``) and ``<out_prefix>_tomograms.tsv``. All reports
    must use one hand mode (in ``pytom`` mode ``+1`` means tomomatch's ``-1``). Returns the report.
    """
    out_prefix = Path(out_prefix)
    if not reports:
        why = "; ".join(f"{n}: {r}" for n, r in excluded)
        raise InputError(f"no tomogram has candidates ({why or 'none given'})", field="tomograms")
    strata = []
    modes: dict[str, str] = {}
    paths: dict[str, str] = {}
    figures: dict[str, str] = {}
    for name, path in reports:
        try:
            rep, scores = read_report(path)
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
            raise InputError(f"cannot read the hand report ({exc})", path) from None
        if scores is None:
            raise InputError("the report has no per-particle table ('particles')", path)
        modes[name] = _report_hand_mode(rep)
        paths[name] = str(path)
        fig = (rep.get("files") or {}).get("figure")
        if fig:
            figures[name] = str(fig)
        strata.append((name, scores))
    if len(set(modes.values())) > 1:
        by = ", ".join(f"{n}: {m}" for n, m in modes.items())
        raise InputError(
            f"the tomograms were scored in different hand modes ({by}); h means different things in"
            " them (give --hand-mode)",
            field="hand_mode",
        )
    try:
        report = pooled_hand_statistics(
            strata, alpha=alpha, min_particles=min_particles, n_bootstrap=n_bootstrap, seed=seed
        )
    except ValueError as exc:
        raise InputError(str(exc), field="tomograms") from None
    for name, why in excluded:
        report["excluded"].append({"name": name, "reason": why})
        report["warnings"].insert(0, f"tomogram {name} excluded: {why}")
    report["n_tomograms"] = len(reports) + len(excluded)
    for r in report["tomograms"]:
        r["report"] = paths[r["name"]]
        if r["name"] in figures:
            r["figure"] = figures[r["name"]]
    mode = next(iter(modes.values()))
    report["hand_mode"] = mode
    report["settings"] = verdict_settings(report.get("verdict"), "pytom" if mode == "pytom" else "full")
    report["method"] = method or {}
    report["files"] = {
        "report": str(out_prefix.with_suffix(".json")),
        "table": str(out_prefix.parent / f"{out_prefix.name}_tomograms.tsv"),
    }
    _write_tomogram_table(Path(report["files"]["table"]), report)
    write_report(out_prefix.with_suffix(".json"), report)
    return report


def _tomogram_prefix(out_prefix: Path, name: str) -> Path:
    return out_prefix.parent / f"{out_prefix.name}_{name}"


def run_hand_pooled(
    out_prefix,
    tomograms: Sequence[HandTomogram],
    *,
    template=None,
    mask=None,
    alpha: float = DEFAULT_ALPHA,
    min_particles: int = DEFAULT_MIN_PARTICLES,
    n_bootstrap: int = 10_000,
    seed: int = 0,
    figure: bool = True,
    progress_factory=None,
    **hand_options,
) -> dict[str, Any]:
    """``tomomatch hand`` on several tomograms of one data set: one pooled verdict.

    Runs :func:`run_hand` on each tomogram (``<out_prefix>_<name>.json`` and ``.png``: its
    own report, figure and verdict), then :func:`pool_reports` (``<out_prefix>.json``,
    ``<out_prefix>_tomograms.tsv``). ``template`` and ``mask`` (and ``hand_options``, e.g.
    ``max_particles``, ``hand_mode``, ``max_angle_deg``) apply to every tomogram; the rest comes
    from each :class:`HandTomogram` and its job. A tomogram without candidates is reported and
    excluded (an error only if all are); any other bad input stops the run naming the list line.
    ``progress_factory(name)`` may return a per-particle ``progress(i, n)`` for that tomogram.
    A ``device`` among ``hand_options`` is checked once, before the first tomogram.
    """
    from .matching import resolve_device
    from .particles import read_particles

    out_prefix = Path(out_prefix)
    if "device" in hand_options:  # a bad device is the caller's error, not the first tomogram's
        resolve_device(hand_options["device"])
    if not tomograms:
        raise InputError("no tomograms given", field="tomograms")
    names = [t.name for t in tomograms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"tomogram name(s) {', '.join(dup)} appear twice", field="tomograms")
    stats: dict[str, Any] = dict(alpha=alpha, min_particles=min_particles, n_bootstrap=n_bootstrap, seed=seed)

    def run_one(t: HandTomogram, prefix: Path) -> None:
        if t.error:
            raise NoCandidatesError(f"failed in the batch ({t.error})")
        particles = read_particles(t.particles, job=t.job) if t.particles is not None else None
        if particles is not None and len(particles) == 0:
            raise NoCandidatesError("no candidates in the particle file", t.particles)
        run_hand(
            prefix,
            job=t.job,
            tomogram=t.tomogram,
            template=template,
            mask=mask,
            tilt_series=t.tilt_series,
            particles=particles,
            figure=figure,
            progress=progress_factory(t.name) if progress_factory is not None else None,
            **stats,
            **hand_options,
        )

    return _run_each_and_pool(out_prefix, [(t.name, t.where, t) for t in tomograms], run_one, stats, command="hand")


def _run_each_and_pool(out_prefix: Path, items, run_one, stats: dict[str, Any], *, command: str) -> dict[str, Any]:
    """``run_one(item, <out_prefix>_<name>)`` for each ``(name, where, item)``, then
    :func:`pool_reports`. A tomogram without candidates (:class:`NoCandidatesError`) is reported
    and excluded; any other bad input stops the run naming the tomogram and where it was given."""
    done: list[tuple[str, Path]] = []
    excluded: list[tuple[str, str]] = []
    for name, where, item in items:
        prefix = _tomogram_prefix(out_prefix, name)
        try:
            run_one(item, prefix)
        except NoCandidatesError as exc:
            excluded.append((name, exc.detail))
            continue
        except InputError as exc:
            raise InputError(f"tomogram {name!r}: {exc}", *where) from None
        done.append((name, prefix.with_suffix(".json")))
    return pool_reports(
        out_prefix,
        done,
        excluded=excluded,
        **stats,
        method={"command": command, "pooled": True, "n_tomograms": len(items)},
    )


def run_compare_hands_pooled(
    out_prefix,
    pairs: Sequence[tuple[str, Any, Any, tuple[str | None, str | None]]],
    *,
    alpha: float = DEFAULT_ALPHA,
    min_particles: int = DEFAULT_MIN_PARTICLES,
    n_bootstrap: int = 10_000,
    seed: int = 0,
    figure: bool = True,
    **compare_options,
) -> dict[str, Any]:
    """``tomomatch compare-hands`` on several tomograms: ``(name, run_a, run_b, where)`` per
    tomogram, :func:`run_compare_hands` on each (``<out_prefix>_<name>.json/.png``), then
    :func:`pool_reports`. Tomograms without candidates are reported and excluded."""
    out_prefix = Path(out_prefix)
    if not pairs:
        raise InputError("no runs given", field="runs")
    stats: dict[str, Any] = dict(alpha=alpha, min_particles=min_particles, n_bootstrap=n_bootstrap, seed=seed)

    def run_one(runs: tuple[Any, Any], prefix: Path) -> None:
        run_compare_hands(runs[0], runs[1], prefix, figure=figure, **stats, **compare_options)

    return _run_each_and_pool(
        out_prefix, [(name, where, (a, b)) for name, a, b, where in pairs], run_one, stats, command="compare-hands"
    )
