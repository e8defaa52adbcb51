"""Many tomograms on a Dask cluster: match (tile x rotation-chunk work units), merge, extract, hand.

:func:`run_batch` plans every tomogram of a list with :func:`tomomatch.job.plan_match`, submits
its work units (:class:`tomomatch.job.WorkUnit`: one tile, one rotation chunk) to a
``dask.distributed`` cluster as futures, and per tomogram, once all its units are done, a
finishing task that merges them exactly (:func:`tomomatch.job.merge_units`), writes the match
outputs and runs extraction (and optionally the hand check). Results are identical to
``tomomatch match`` on one process: units are deterministic and the merge does not depend on
the order in which units finish.

Faults and restarts
    Each unit writes its checkpoint file (atomically) into ``<out>/<name>_checkpoints/`` on
    the shared file system. A worker that dies mid-task has its task run again elsewhere by
    the scheduler (same result). Started again, a batch skips units whose checkpoint is
    finished and tomograms whose ``<name>_job.json`` carries the same plan key, so finished
    work is not computed again.

Clusters
    A :class:`distributed.LocalCluster` by default (one single-threaded worker per GPU when
    matching on CUDA, else one per CPU core), an existing scheduler (``scheduler="tcp://..."``)
    or SLURM through ``dask_jobqueue.SLURMCluster`` configured by a YAML file
    (:func:`read_slurm_config`, example in ``docs/slurm-example.yaml``).

Input lists (:func:`read_tomogram_list`)
    A RELION 5 ``tomograms.star`` (tomogram = ``rlnTomoReconstructedTomogram``, metadata from
    the star file) or a TSV/CSV table with a ``tomogram`` column and optional metadata columns.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import InputError
from .job import (
    MatchPlan,
    WorkUnit,
    load_unit,
    load_unit_results,
    merge_units,
    plan_match,
    prepare_checkpoints,
    remove_checkpoints,
    run_unit,
    write_outputs,
)
from .locking import JobLock
from .mrcio import atomic_path
from .options import MatchOptions, ctf_for_reconstruction
from .progress import ProgressBars

__all__ = [
    "BatchEntry",
    "TABLE_COLUMNS",
    "SCHEDULER_TIMEOUT_S",
    "read_tomogram_list",
    "read_slurm_config",
    "check_scheduler",
    "make_cluster",
    "run_batch",
]

# Table columns -> tomomatch.metadata.load_tilt_series keyword (None: handled here)
TABLE_COLUMNS: dict[str, str | None] = {
    "tomogram": None,
    "name": None,
    "tilt_angles": "tilt_angles",
    "dose": "dose",
    "dose_per_tilt": "dose_per_tilt",
    "defocus": "defocus",
    "relion5": "relion5",
    "tomo_name": "tomo_name",
    "warp_xml": "warp_xml",
    "mdoc": "mdoc",
    "aln": "aln",
    "voltage_kv": "voltage_kv",
    "cs_mm": "cs_mm",
    "amplitude_contrast": "amplitude_contrast",
    "phase_shift_deg": "phase_shift_deg",
    "hand": "hand",
    "tomogram_mask": None,  # per-row match --tomogram-mask (BatchEntry.extra), overrides the option
}
_PATH_COLUMNS = ("tomogram", "tilt_angles", "dose", "relion5", "warp_xml", "mdoc", "aln")
_NUMBER_COLUMNS = ("voltage_kv", "cs_mm", "amplitude_contrast", "phase_shift_deg")


@dataclass
class BatchEntry:
    """One tomogram of a batch: output base ``name``, ``tomogram`` path and its tilt series (or None)."""

    name: str
    tomogram: Path
    tilt_series: Any = None
    #: cells of the caller's extra path columns (``read_tomogram_list(extra_columns=...)``), resolved
    extra: dict[str, Path] = field(default_factory=dict)
    #: line of the table the entry comes from (None for a RELION 5 star file)
    line: int | None = None


# --------------------------------------------------------------------------- input lists


def _resolve(value: str, base: Path) -> Path:
    """A path from a list: absolute as is, else relative to the list's folder, then the current one
    and then the list folder's parents (a RELION project directory lies above its job folders)."""
    v = Path(value)
    if v.is_absolute():
        return v
    cands = [base / v, Path.cwd() / v] + [p / v for p in base.parents]
    for c in cands:
        if c.exists():
            return c
    return base / v


def _read_relion_list(path: Path, allow_missing_dose: bool = False) -> list[BatchEntry]:
    from .metadata import list_relion5_tomograms, load_tilt_series

    out = []
    for name in list_relion5_tomograms(path):
        ts = load_tilt_series(relion5=path, tomo_name=name, allow_missing_dose=allow_missing_dose)
        rec = ts.extra.get("reconstructed_tomogram")
        if rec in (None, "", "None"):
            raise InputError(
                f"tomogram {name!r} has no rlnTomoReconstructedTomogram", path, "rlnTomoReconstructedTomogram"
            )
        out.append(BatchEntry(str(name), _resolve(str(rec), path.resolve().parent), ts))
    return out


def _strip_comment(line: str) -> str:
    """``line`` up to a ``#`` outside double quotes (as pandas' ``comment="#"`` reads it)."""
    quoted = False
    for k, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return line[:k]
    return line


def _table_rows(path: Path, sep: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header cells and ``(line number, cells)`` of each data row of a TSV/CSV table.

    ``#`` starts a comment, blank lines are skipped, cells may be double-quoted (one line each).
    A row with more or fewer cells than the header is refused with its line number: pandas
    would fill missing cells silently, and its message for extra ones spans lines.
    """
    import csv

    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read the tomogram table ({exc.strerror or exc})", path) from None
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file; expected a tab- or comma-separated table", path) from None
    kind = "comma" if sep == "," else "tab"
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not line.strip():
            continue
        try:
            cells = next(csv.reader([line], delimiter=sep, strict=True))
        except csv.Error as exc:
            raise InputError(
                f"cannot split the line into cells ({exc}); expected {kind}-separated cells", path, f"line {lineno}"
            ) from None
        if header is None:
            header = [c.strip() for c in cells]
            dup = sorted({c for c in header if header.count(c) > 1})
            if dup:
                raise InputError(
                    f"column(s) {', '.join(map(repr, dup))} appear twice in the header", path, f"line {lineno}"
                )
            continue
        if len(cells) != len(header):
            raise InputError(
                f"{len(cells)} {kind}-separated cell(s); expected {len(header)}, one per header column "
                f"({', '.join(header)}; an empty cell is an absent value)",
                path,
                f"line {lineno}",
            )
        rows.append((lineno, cells))
    return header or [], rows


def _read_table(path: Path, allow_missing_dose: bool = False, extra_columns: Sequence[str] = ()) -> list[BatchEntry]:
    from .metadata import load_tilt_series

    sep = "," if path.suffix.lower() == ".csv" else "\t"
    columns, rows = _table_rows(path, sep)
    if "tomogram" not in columns:
        raise InputError(
            f"no 'tomogram' column (columns: {', '.join(columns) or 'none'}; "
            f"{'comma' if sep == ',' else 'tab'}-separated expected)",
            path,
            "tomogram",
        )
    unknown = [c for c in columns if c not in TABLE_COLUMNS and c not in extra_columns]
    if unknown:
        expected = ", ".join([*TABLE_COLUMNS, *extra_columns])
        raise InputError(f"unknown column(s) {', '.join(unknown)}; expected {expected}", path)
    if len(rows) == 0:
        raise InputError("the table lists no tomograms", path)
    base = path.resolve().parent
    out = []
    for lineno, row in rows:
        line = f"line {lineno}"
        cells = {c: v.strip() for c, v in zip(columns, row) if v.strip() != ""}
        if "tomogram" not in cells:
            raise InputError("empty tomogram cell", path, line)
        kw: dict[str, Any] = {}
        # the caller's path columns and the per-row tomogram mask: resolved paths kept beside the metadata
        extra = {
            col: _resolve(val, base) for col, val in cells.items() if col in extra_columns or col == "tomogram_mask"
        }
        for col, val in cells.items():
            if col in extra:
                continue
            dest = TABLE_COLUMNS[col]
            if dest is None:
                continue
            if col in _PATH_COLUMNS:
                kw[dest] = _resolve(val, base)
            elif col in _NUMBER_COLUMNS:
                try:
                    kw[dest] = float(val)
                except ValueError:
                    raise InputError(f"{col} {val!r} is not a number", path, line) from None
            elif col == "hand":
                try:
                    kw[dest] = int(val)
                except ValueError:
                    raise InputError(f"hand {val!r}; expected 1, -1 or 0", path, line) from None
            elif col == "dose_per_tilt":
                kw[dest] = val.lower() in ("1", "true", "yes")
            elif col == "defocus":  # a file or one number in micrometres
                try:
                    float(val)
                    kw[dest] = val
                except ValueError:
                    kw[dest] = _resolve(val, base)
            else:
                kw[dest] = val
        sources = ("tilt_angles", "relion5", "warp_xml", "mdoc", "aln")
        ts = load_tilt_series(**kw, allow_missing_dose=allow_missing_dose) if any(s in kw for s in sources) else None
        if ts is None and len(kw) > 0 and not set(kw) <= {"hand"}:
            raise InputError(
                "metadata columns without a tilt-angle source (tilt_angles, relion5, warp_xml, mdoc or aln)", path, line
            )
        tomo = _resolve(cells["tomogram"], base)
        name = cells.get("name") or (cells.get("tomo_name") or tomo.stem)
        out.append(BatchEntry(name, tomo, ts, extra, lineno))
    return out


def read_tomogram_list(path, allow_missing_dose: bool = False, extra_columns: Sequence[str] = ()) -> list[BatchEntry]:
    """Read a list of tomograms to match.

    Parameters
    ----------
    path
        A RELION 5 ``tomograms.star`` (``.star``): every ``rlnTomoName``, its tomogram
        ``rlnTomoReconstructedTomogram`` and its metadata (tilt angles, dose, defocus, hand).
        Or a table, tab-separated (``.tsv``, ``.txt``) or comma-separated (``.csv``), one row per
        tomogram with a header row. Columns: ``tomogram`` (required, MRC path), ``name``
        (output base name; default ``tomo_name`` or the file stem) and optional metadata, as in
        ``tomomatch match``: ``tilt_angles``, ``dose``, ``dose_per_tilt``, ``defocus`` (file or
        micrometres), ``relion5`` + ``tomo_name``, ``warp_xml``, ``mdoc``, ``aln``,
        ``voltage_kv``, ``cs_mm``, ``amplitude_contrast``, ``phase_shift_deg``, ``hand``. Empty
        cells are absent values; relative paths are relative to the list's folder.
    allow_missing_dose
        Accept tilt metadata without dose.
    extra_columns
        Further path columns the caller reads (e.g. ``job``, ``particles`` for ``tomomatch
        hand --list``): resolved like the other paths into :attr:`BatchEntry.extra`.

    Returns
    -------
    list of BatchEntry

    Raises
    ------
    InputError
        Unreadable list, missing/unknown column, a missing tomogram file, repeated names.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("tomogram list not found", p)
    entries = (
        _read_relion_list(p, allow_missing_dose)
        if p.suffix.lower() == ".star"
        else _read_table(p, allow_missing_dose, extra_columns)
    )
    seen: dict[str, Path] = {}
    for e in entries:
        if not e.tomogram.is_file():
            raise InputError(f"tomogram {e.name!r} not found: {e.tomogram}", p, "tomogram")
        if e.name in seen:
            raise InputError(
                f"name {e.name!r} appears twice ({seen[e.name]} and {e.tomogram}); give a name column", p, "name"
            )
        seen[e.name] = e.tomogram
    return entries


# --------------------------------------------------------------------------- clusters

#: Seconds to wait for an existing scheduler (``--scheduler``) to answer before giving up.
SCHEDULER_TIMEOUT_S = 5.0


def check_scheduler(address: str, timeout: float | None = None) -> None:
    """Raise :class:`InputError` (naming ``--scheduler``) unless a Dask scheduler answers at
    ``address`` within ``timeout`` seconds (default :data:`SCHEDULER_TIMEOUT_S`).

    A TCP connection first (a refused port or an unknown host fails at once), then Dask's
    ``identity`` call with a hard deadline: ``distributed.Client`` alone waits forever on a port
    that accepts connections but never answers (another service, a stopped process).
    """
    import asyncio
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    t = float(SCHEDULER_TIMEOUT_S if timeout is None else timeout)
    expected = "expected the address of a running Dask scheduler, e.g. tcp://host:8786"
    try:
        scheme, loc = parse_address(str(address))
        host, port = parse_host_port(loc) if scheme in ("tcp", "tls") else (None, None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{address!r} is not a scheduler address ({exc}); {expected}", None, "--scheduler") from None
    if host is not None:
        try:
            with socket.create_connection((host, port), timeout=t):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise InputError(f"cannot connect to {address} ({reason}); {expected}", None, "--scheduler") from None

    async def identity():
        from distributed.comm import connect
        from distributed.security import Security

        comm = await asyncio.wait_for(connect(address, timeout=t, **Security().get_connection_args("client")), t)
        try:
            await asyncio.wait_for(comm.write({"op": "identity", "reply": True}), t)
            return await asyncio.wait_for(comm.read(), t)
        finally:
            comm.abort()

    box: dict[str, Any] = {}

    def target():  # own thread and event loop: works inside a running loop too, and is abandoned on a hang
        try:
            box["reply"] = asyncio.run(identity())
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    th = threading.Thread(target=target, name="tomomatch-scheduler-check", daemon=True)
    th.start()
    th.join(t + 1.0)
    reply = box.get("reply")
    if isinstance(reply, dict) and reply.get("type") == "Scheduler":
        return
    err = box.get("error")
    if err is None and "reply" not in box or isinstance(err, (TimeoutError, asyncio.TimeoutError)):
        why = f"no answer within {t:g} s"
    elif err is not None:
        why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    else:
        why = f"it answered as {reply.get('type') if isinstance(reply, dict) else type(reply).__name__!r}"
    raise InputError(f"no Dask scheduler at {address} ({why}); {expected}", None, "--scheduler")


def read_slurm_config(path) -> dict[str, Any]:
    """Read a YAML SLURM configuration for :class:`dask_jobqueue.SLURMCluster`.

    The file holds a mapping with ``cluster`` (keyword arguments of ``SLURMCluster``: queue,
    account, cores, processes, memory, walltime, job_extra_directives, job_script_prologue,
    ...) and either ``scale`` (``{jobs: N}`` or ``{workers: N}``) or ``adapt``
    (``{minimum_jobs: A, maximum_jobs: B}``). Returns ``{"cluster": {...}, "scale": {...}}``
    or ``{"cluster": {...}, "adapt": {...}}``. Raises :class:`InputError` for anything else.
    """
    import yaml

    p = Path(path)
    try:
        cfg = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise InputError(f"cannot read SLURM config ({exc.strerror or exc})", p) from None
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({str(exc).splitlines()[0]})", p) from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("cluster"), dict):
        raise InputError("expected a mapping with a 'cluster' mapping (SLURMCluster arguments)", p, "cluster")
    extra = set(cfg) - {"cluster", "scale", "adapt"}
    if extra:
        raise InputError(f"unknown key(s) {', '.join(sorted(extra))}; expected cluster, scale, adapt", p)
    if ("scale" in cfg) == ("adapt" in cfg):
        raise InputError("give exactly one of 'scale' (jobs: N) and 'adapt' (minimum_jobs, maximum_jobs)", p)
    out: dict[str, Any] = {"cluster": dict(cfg["cluster"])}
    if "scale" in cfg:
        s = cfg["scale"]
        if (
            not isinstance(s, dict)
            or set(s) - {"jobs", "workers"}
            or len(s) != 1
            or not isinstance(next(iter(s.values())), int)
            or next(iter(s.values())) < 1
        ):
            raise InputError("'scale' must be {jobs: N} or {workers: N} with N >= 1", p, "scale")
        out["scale"] = dict(s)
    else:
        a = cfg["adapt"]
        allowed = {"minimum_jobs", "maximum_jobs", "minimum", "maximum"}
        if (
            not isinstance(a, dict)
            or not a
            or set(a) - allowed
            or not all(isinstance(v, int) and v >= 0 for v in a.values())
        ):
            raise InputError("'adapt' must map minimum_jobs/maximum_jobs to integers", p, "adapt")
        out["adapt"] = dict(a)
    return out


def make_cluster(
    *,
    scheduler: str | None = None,
    slurm_config=None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    use_gpus: bool = False,
    dashboard_address: str | None = ":8787",
):
    """A Dask cluster (or None with an existing ``scheduler`` address) for :func:`run_batch`.

    Returns ``(cluster, address)``: ``cluster`` is None for an existing scheduler. SLURM:
    ``dask_jobqueue.SLURMCluster(**config["cluster"])`` then ``scale(**config["scale"])`` or
    ``adapt(**config["adapt"])``. Local: ``LocalCluster`` of single-threaded worker processes,
    one per GPU (``use_gpus``) or per CPU core, unless ``n_workers`` is given.
    """
    if sum(x is not None for x in (scheduler, slurm_config)) > 1:
        raise InputError("give at most one of --scheduler and --slurm-config", None, "--scheduler")
    if scheduler is not None:
        return None, scheduler
    if slurm_config is not None:
        cfg = read_slurm_config(slurm_config)
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError:
            raise InputError("SLURM needs dask-jobqueue (pip install 'tomomatch[slurm]')", slurm_config) from None
        kw = dict(cfg["cluster"])
        if dashboard_address is not None:
            kw.setdefault("scheduler_options", {}).setdefault("dashboard_address", dashboard_address)
        try:
            cluster = SLURMCluster(**kw)
        except TypeError as exc:
            raise InputError(f"SLURMCluster rejected the configuration ({exc})", slurm_config, "cluster") from None
        try:
            if "scale" in cfg:
                cluster.scale(**cfg["scale"])
            else:
                cluster.adapt(**cfg["adapt"])
        except BaseException:
            cluster.close()
            raise
        return cluster, cluster.scheduler_address
    from distributed import LocalCluster

    if n_workers is None:
        if use_gpus:
            import torch

            n_workers = max(1, torch.cuda.device_count())
        else:
            n_workers = max(
                1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            ) // max(1, threads_per_worker)
            n_workers = max(1, n_workers)
    if n_workers < 1 or threads_per_worker < 1:
        raise InputError(f"{n_workers} workers x {threads_per_worker} threads; expected >= 1", None, "--workers")
    try:
        local = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=dashboard_address,
        )
    except Exception as exc:  # noqa: BLE001 - Dask's start errors (RuntimeError, OSError, ...) are one line
        raise InputError(
            f"the local Dask cluster did not start ({' '.join(str(exc).split())}); expected a free "
            "--dashboard-address (or none) and --workers this machine can start",
            None,
            "--workers/--dashboard-address",
        ) from None
    return local, local.scheduler_address


# --------------------------------------------------------------------------- tasks (run on workers)


def _worker_device(device: str) -> str:
    """``cuda`` without an index: the GPU of this worker (LocalCluster names workers 0, 1, ...)."""
    if device != "cuda":
        return device
    import torch
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not inside a Dask worker (e.g. the finishing step run here): the default GPU
        return "cuda"
    name = worker.name
    try:
        idx = int(name) if not isinstance(name, str) else int(name.rsplit("-", 1)[-1])
    except ValueError:
        # a worker name without an index (e.g. a SLURM job name) would put every worker on GPU 0
        raise RuntimeError(
            f"cannot tell which GPU Dask worker {name!r} owns; give --device cuda:N or "
            "name the workers ...-0, ...-1 (one per GPU)"
        ) from None
    return f"cuda:{idx % max(1, torch.cuda.device_count())}"


def _plan_task(plan: MatchPlan) -> MatchPlan:
    return plan


def _unit_task(plan: MatchPlan, unit: WorkUnit, before_unit: Callable | None = None) -> int:
    """Run one unit into its checkpoint file; returns the number of rotations computed.

    A unit whose checkpoint is finished (e.g. a task run again because the worker holding its
    result died) is not computed again, and ``before_unit`` is not called for it.
    """
    if _outputs_current(plan):  # run again after its tomogram was finished (a lost result)
        return 0
    st = load_unit(plan, unit)
    if st is not None and st.done == unit.stop:
        return 0
    if before_unit is not None:
        before_unit(plan, unit)
    with _UNIT_LOCK:  # one unit at a time per worker process; it uses the worker's threads
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(_worker_threads())
        try:
            res = run_unit(plan, unit, device=_worker_device(plan.options.device))
        finally:
            torch.set_num_threads(threads)
    return unit.stop - unit.start - res.resumed


_UNIT_LOCK = threading.Lock()


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except Exception:
        return 1


def _finish_task(
    plan: MatchPlan,
    *unit_results,
    match_done: bool = False,
    extract: dict | None = None,
    hand: dict | None = None,
    started: float = 0.0,
    command: str = "",
) -> dict:
    """Merge a tomogram's units, write its outputs, then extract (and hand); returns a summary."""
    paths = plan.output_paths()
    # idempotent: if this task runs again (its result was lost with a worker after it had
    # written the outputs and removed the checkpoints), the outputs stand
    if not match_done and not _outputs_current(plan):
        merged = merge_units(plan, load_unit_results(plan))
        write_outputs(
            plan, merged, elapsed_s=time.time() - started, command=command, device=_worker_device(plan.options.device)
        )
    remove_checkpoints(plan)
    summary: dict[str, Any] = {
        "name": plan.name,
        "tomogram": str(plan.tomogram),
        "job": str(paths["job"]),
        "matched": not match_done,
        "units": len(plan.units),
    }
    particles = None
    if extract is not None:
        from .extract import extract_candidates
        from .particles import write_particles

        kw = dict(extract)
        fmt = kw.pop("format", "relion5")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            df = extract_candidates(paths["job"], **kw)
        out = plan.out_dir / f"{plan.name}_particles.star"
        write_particles(df, out, fmt, str(paths["job"]))
        particles = df
        # the cut-off actually used (e.g. the gaussian one when the tail fit was impossible) and
        # why, in the batch summary instead of a warning lost on a worker
        summary.update(
            particles=str(out),
            n_particles=int(len(df)),
            cutoff=float(df.attrs.get("cutoff", math.nan)),
            cutoff_method=df.attrs.get("cutoff_method"),
            extract_warnings=[str(w.message) for w in caught],
        )
    if hand is not None:
        from .hand import run_hand

        kw = dict(hand)
        kw.setdefault("figure", False)
        try:
            rep = run_hand(plan.out_dir / f"{plan.name}_hand", job=str(paths["job"]), particles=particles, **kw)
        except InputError as exc:  # e.g. no defocus: the match and the particles stand
            summary["hand_error"] = str(exc)
        else:
            summary.update(hand_report=str(plan.out_dir / f"{plan.name}_hand.json"), hand_verdict=rep.get("verdict"))
    return summary


# --------------------------------------------------------------------------- batch


def _job_key(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("plan_key")
    except (OSError, ValueError, AttributeError):
        return None


def _outputs_current(plan: MatchPlan) -> bool:
    """Whether the plan's outputs exist, written from this very plan (same ``plan_key``)."""
    paths = plan.output_paths()
    return _job_key(paths["job"]) == plan.key and paths["scores"].exists() and paths["angles"].exists()


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    p = Path(folder)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) this run created, where they are still empty."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:  # not empty (something was written), or already gone
            break


@contextlib.contextmanager
def _connect(client_class, address: str, scheduler: str | None):
    """A connected ``Client``; an existing ``scheduler`` that does not answer within
    :data:`SCHEDULER_TIMEOUT_S` is an :class:`InputError` naming ``--scheduler``."""
    if scheduler is None:
        client = client_class(address)
    else:
        check_scheduler(address)  # a deadline the Client itself does not keep on a silent port
        try:
            client = client_class(address, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"cannot connect to the Dask scheduler at {address} ({first}); expected a running scheduler",
                None,
                "--scheduler",
            ) from None
    with client:
        yield client


def run_batch(
    tomograms,
    template,
    mask,
    out_dir,
    *,
    match: MatchOptions | dict | None = None,
    rotations=None,
    extract: dict | None = None,
    hand: dict | None = None,
    scheduler: str | None = None,
    slurm_config=None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    device: str = "auto",
    rotations_per_unit: int | None = None,
    units_per_worker: int = 4,
    quiet: bool = True,
    dashboard_address: str | None = ":8787",
    before_unit: Callable | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
    ctf_from_reconstruction: bool = False,
) -> list[dict]:
    """Match (then extract, optionally hand) a list of tomograms on a Dask cluster.

    Parameters
    ----------
    tomograms
        A list file (:func:`read_tomogram_list`) or a sequence of :class:`BatchEntry`.
    template, mask
        MRC paths, shared by all tomograms.
    out_dir
        Output folder: ``<name>_scores.mrc``, ``_angles.mrc``, ``_rotations.txt``,
        ``_job.json``, ``_particles.star`` (and ``_hand.json``) per tomogram, and
        ``batch_summary.json``. Must be on a file system all workers share.
    match
        :class:`tomomatch.options.MatchOptions` (or a dict of its fields, weighting fields flat:
        ``angular_step_deg``, ``low_pass_angstrom``, ``tiles``, ...), the same for every
        tomogram; ``name`` and ``device`` are set per tomogram and worker.
    rotations
        Explicit ``(N, 3, 3)`` pose matrices instead of the options' angular sampling (also
        accepted as ``match["rotations"]``).
    extract
        Keyword arguments of :func:`tomomatch.extract.extract_candidates` plus ``format``
        (STAR flavour of :func:`tomomatch.particles.write_particles`, default ``relion5``);
        None: no extraction.
    hand
        Keyword arguments of :func:`tomomatch.hand.run_hand` (None: no hand check).
    scheduler, slurm_config, n_workers, threads_per_worker, dashboard_address
        The cluster (:func:`make_cluster`); default a local one. An existing ``scheduler``
        must answer within :data:`SCHEDULER_TIMEOUT_S` (:func:`check_scheduler`), checked
        before planning and again when connecting; the checkpoint folders are written only
        once the client is connected, so a cluster that cannot be reached or started leaves no
        lock, no ``key.txt`` and no new output folder.
    device
        ``"auto"`` (CUDA if this machine has it, one worker per GPU), ``"cpu"``, ``"cuda"``
        (each worker's GPU) or ``"cuda:N"``.
    rotations_per_unit, units_per_worker
        Work-unit size: given rotations per unit, or chunks giving about ``units_per_worker``
        units per worker over the batch (at least one per tile; a single large tomogram spreads
        over the cluster, many small ones are not cut up).
    quiet
        No progress bar and no messages.
    before_unit
        Optional picklable ``f(plan, unit)`` run on the worker before each unit is computed
        (not when a finished checkpoint is reused): instrumentation; the tests use it to count
        computations and to kill a worker mid-task.
    command, log
        Command line recorded in the job files; ``log(message)`` for messages (default print).
    ctf_from_reconstruction
        True when the CTF mode was not chosen by the user: rows whose metadata say the tomogram
        was reconstructed phase-flipped (a Warp XML) are matched with ``ctf="abs"``
        (:func:`tomomatch.options.ctf_for_reconstruction`), as ``match`` does.

    Returns
    -------
    list of dict
        Per tomogram: ``name``, ``job``, ``matched`` (False: outputs of an earlier run kept),
        ``units``, ``particles``/``n_particles``, or ``error`` when it failed.
    """
    import torch
    from distributed import Client, as_completed

    t0 = time.time()
    if "," in str(device) or str(device).strip().lower() == "cuda:all":
        # a device list is match's (one process per GPU); here every Dask worker is one process
        raise InputError(
            f"device list {device!r} is for `tomomatch match`; batch gives each Dask worker its own GPU:"
            " use --device cuda (one worker per GPU, the default on a GPU machine) or cuda:N",
            None,
            "--device",
        )
    if scheduler is not None and slurm_config is not None:
        raise InputError("give at most one of --scheduler and --slurm-config", None, "--scheduler")
    if slurm_config is not None:
        read_slurm_config(slurm_config)  # fail before any planning
    if scheduler is not None:
        check_scheduler(scheduler)  # within SCHEDULER_TIMEOUT_S, before any planning
    say = (lambda m: None) if quiet else (log or print)
    # metadata without a dose is accepted only when the match does not weight by dose (--no-dose)
    no_dose = (
        isinstance(match, MatchOptions)
        and not match.weighting.dose
        or (isinstance(match, dict) and match.get("dose") is False)
    )
    entries = (
        read_tomogram_list(tomograms, allow_missing_dose=no_dose)
        if isinstance(tomograms, (str, os.PathLike))
        else list(tomograms)
    )
    if not entries:
        raise InputError(
            "no tomograms to process", None if not isinstance(tomograms, (str, os.PathLike)) else tomograms
        )
    out_dir = Path(out_dir).absolute()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    use_gpus = str(device).startswith("cuda")
    if match is None or isinstance(match, dict):
        flat = dict(match or {})
        for k in ("tilt_series", "name", "device", "rotations_per_unit", "min_units", "check_device"):
            if k in flat:
                raise InputError(f"match option {k!r} is set per batch, not in match", None, k)
        if "rotations" in flat:
            rotations = flat.pop("rotations")
        match = MatchOptions.from_flat(**flat)
    elif not isinstance(match, MatchOptions):
        raise TypeError(f"match must be MatchOptions or a dict, got {type(match).__name__}")
    if scheduler is None and slurm_config is None:
        workers_hint = n_workers or (max(1, torch.cuda.device_count()) if use_gpus else (os.cpu_count() or 1))
    else:
        workers_hint = n_workers or 4
    # units per tomogram: about units_per_worker per worker over the whole batch, so that a
    # single large tomogram spreads over the cluster and many tomograms are not cut up needlessly
    min_units = max(1, math.ceil(units_per_worker * workers_hint / len(entries)))
    # plan every tomogram first (validates all inputs before any cluster starts)
    plans: list[MatchPlan] = []
    for e in entries:
        row_match, note = ctf_for_reconstruction(match, e.tilt_series, ctf_given=not ctf_from_reconstruction)
        if note:
            say(f"{e.name}: {note}")
        plans.append(
            plan_match(
                template,
                mask,
                e.tomogram,
                out_dir,
                replace(
                    row_match,
                    name=e.name,
                    device=device,
                    tomogram_mask=str(e.extra["tomogram_mask"]) if "tomogram_mask" in e.extra else match.tomogram_mask,
                ),
                tilt_series=e.tilt_series,
                rotations=rotations,
                check_device=(scheduler is None and slurm_config is None),
                rotations_per_unit=rotations_per_unit,
                min_units=min_units,
            )
        )
    # the folder's batch and every tomogram's job are owned by this run until it ends; then the
    # cluster starts. Only once a client is connected is anything written (the checkpoint folders
    # and their key.txt), so a cluster that fails to start leaves the folder as it was: locks
    # released, a folder made by the locks removed again.
    made = _missing_folders(out_dir)
    try:
        with contextlib.ExitStack() as locks:
            locks.enter_context(JobLock(out_dir, "batch", "batch"))
            for plan in plans:
                locks.enter_context(JobLock(out_dir, plan.name, "batch"))
            cluster, address = make_cluster(
                scheduler=scheduler,
                slurm_config=slurm_config,
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                use_gpus=use_gpus,
                dashboard_address=dashboard_address,
            )
            summaries: dict[str, dict] = {}
            progress = None
            try:
                with _connect(Client, address, scheduler) as client:
                    # what is left to do
                    todo: list[tuple[MatchPlan, list[WorkUnit], bool]] = []
                    n_skipped_units = 0
                    for plan in plans:
                        if _outputs_current(plan):
                            todo.append((plan, [], True))
                            continue
                        prepare_checkpoints(plan)
                        units = []
                        for u in plan.units:
                            st = load_unit(plan, u)
                            if st is not None and st.done == u.stop:
                                n_skipped_units += 1
                            else:
                                units.append(u)
                        todo.append((plan, units, False))
                    n_units = sum(len(u) for _, u, _ in todo)
                    say(
                        f"{len(plans)} tomogram(s), {sum(len(p.units) for p in plans)} work units "
                        f"({n_units} to run, {n_skipped_units} finished earlier; "
                        f"{sum(1 for *_, d in todo if d)} tomogram(s) matched earlier)"
                    )
                    if client.dashboard_link and dashboard_address is not None:
                        say(f"dask dashboard: {client.dashboard_link}")
                    progress = ProgressBars({"work units": n_units, "tomograms": len(plans)}, quiet)
                    kind: dict = {}
                    all_futs = []
                    for plan, units, done in todo:
                        tag = f"{plan.name}-{plan.key[:12]}"
                        pf = client.submit(_plan_task, plan, key=f"tomomatch-plan-{tag}", pure=False)
                        ufs = [
                            client.submit(
                                _unit_task, pf, u, before_unit, key=f"tomomatch-unit-{tag}-{u.index:05d}", pure=False
                            )
                            for u in units
                        ]
                        ff = client.submit(
                            _finish_task,
                            pf,
                            *ufs,
                            match_done=done,
                            extract=extract,
                            hand=hand,
                            started=t0,
                            command=command or "",
                            key=f"tomomatch-finish-{tag}",
                            pure=False,
                        )
                        kind.update({f.key: ("unit", plan.name) for f in ufs})
                        kind[ff.key] = ("finish", plan.name)
                        all_futs += ufs + [ff]
                    del pf, ufs, ff
                    for f in as_completed(all_futs):
                        what, name = kind[f.key]
                        if f.status != "finished":
                            exc = f.exception() if f.status == "error" else RuntimeError(f.status)
                            if name not in summaries:
                                summaries[name] = {"name": name, "error": f"{type(exc).__name__}: {exc}"}
                                say(f"{name}: failed: {type(exc).__name__}: {exc}")
                            progress.advance(0, int(what == "finish"))
                            continue
                        if what == "unit":
                            progress.advance(1, 0)
                        else:
                            try:
                                summaries.setdefault(name, f.result())
                            except Exception as exc:  # e.g. the result was lost and its rerun failed
                                summaries.setdefault(name, {"name": name, "error": f"{type(exc).__name__}: {exc}"})
                            progress.advance(0, 1)
                    del all_futs
            finally:
                if progress is not None:
                    progress.close()
                if cluster is not None:
                    cluster.close()
            result = [summaries.get(p.name, {"name": p.name, "error": "not finished"}) for p in plans]
            with atomic_path(out_dir / "batch_summary.json") as tmp:
                tmp.write_text(json.dumps(result, indent=2) + "\n")
            n_err = sum("error" in r for r in result)
            say(
                f"{len(result) - n_err} of {len(result)} tomogram(s) done in {time.time() - t0:.1f} s; "
                f"summary {out_dir / 'batch_summary.json'}"
            )
            return result
    except BaseException:
        _remove_empty(made)
        raise
