"""Fuzzing the tilt-metadata readers with seeded mutations of real and fixture files.

Every reader (through :func:`tomomatch.metadata.load_tilt_series`, and a share of the cases
through ``tomomatch metadata`` itself) must either return a valid :class:`TiltSeries` or raise
:class:`InputError` whose message is one line naming one of the case's files. Anything else
(another exception, a message over several lines, a TiltSeries with NaN, duplicate angles,
implausible defocus or dose, JSON that does not round-trip) is a failure.

Seeds: the files in ``tests/fixtures/tilt_metadata`` and, if present, the real files in
``<shared data>/tilt_metadata`` (:func:`tomomatch.shared_data.shared_data_dir`; skipped
cleanly when absent). Mutations: truncate, delete / duplicate / swap lines, replace a number
by NaN / inf / a huge, negative or tiny value / text / nothing, scale a number by a unit
factor, swap two columns, insert or overwrite random bytes, empty file; 1-3 per case.

Case ``i`` of seed ``s`` uses ``numpy.random.default_rng([s, i])``, so any case replays on its
own. The suite runs a short seeded run; ``benchmarks/fuzz_metadata.py --cases 20000`` runs a
long one and prints a summary.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tomomatch.errors import InputError
from tomomatch.metadata import load_tilt_series
from tomomatch.metadata.plausibility import DEFOCUS_MAX_UM, DEFOCUS_MIN_PHASE_PLATE_UM, MAX_TOTAL_DOSE, VOLTAGE_RANGE_KV
from tomomatch.shared_data import shared_data_dir
from tomomatch.tiltseries import TiltSeries

FIXTURES = Path(__file__).parent / "fixtures" / "tilt_metadata"


# --------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class Seed:
    """One file to mutate and how to read it.

    ``kind`` selects the keyword of :func:`load_tilt_series` (``relion_ts``: the per-tilt STAR
    file of a RELION 5 pair, ``relion_tomos``: its tomograms.star); ``target`` is mutated,
    ``companions`` are copied unchanged (name in the case folder -> source); ``angles`` is the
    tilt-angle file read with a dose or defocus file.
    """

    kind: str
    target: Path
    name: str  # file name of the target in the case folder
    companions: tuple[tuple[str, Path], ...] = ()
    tomo_name: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.target.name}"


def _relion_seeds(tomos: Path, ts: Path, ts_name: str, tomo_name: str | None) -> list[Seed]:
    return [
        Seed("relion_ts", ts, ts_name, (("tomograms.star", tomos),), tomo_name),
        Seed("relion_tomos", tomos, "tomograms.star", ((ts_name, ts),), tomo_name),
    ]


def seeds(include_shared: bool = True) -> list[Seed]:
    """The fixture seeds, plus the shared real files if present."""
    f = FIXTURES
    out = [
        Seed("tilt_angles", f / "ts5.rawtlt", "ts5.rawtlt"),
        Seed("dose", f / "ts5_dose.txt", "ts5_dose.txt", (("angles.rawtlt", f / "ts5.rawtlt"),)),
        Seed("defocus", f / "ts5_defocus.txt", "ts5_defocus.txt", (("angles.rawtlt", f / "ts5.rawtlt"),)),
        Seed("defocus", f / "ts5_v2.defocus", "ts5_v2.defocus", (("angles.rawtlt", f / "ts5.rawtlt"),)),
        Seed("defocus", f / "v3_astig.defocus", "v3_astig.defocus", (("angles.rawtlt", _four_angles()),)),
        Seed("defocus", f / "v3_flags37.defocus", "v3_flags37.defocus", (("angles.rawtlt", _two_angles()),)),
        Seed("mdoc", f / "small_ts.mrc.mdoc", "small_ts.mrc.mdoc"),
        Seed("aln", f / "dark_frames.aln", "dark_frames.aln"),
        Seed("aln", f / "no_offsets.aln", "no_offsets.aln"),
        Seed("warp_xml", f / "warp_small.xml", "warp_small.xml"),
    ]
    out += _relion_seeds(
        f / "relion5_small_tomograms.star", f / "relion5_small_tiltseries.star", "relion5_small_tiltseries.star", None
    )
    out += _relion_seeds(
        f / "relion4_matrices_tomograms.star",
        f / "relion4_matrices_tiltseries.star",
        "relion4_matrices_tiltseries.star",
        None,
    )
    real = shared_tilt_metadata() if include_shared else None
    if real is not None:
        angles = real / "pytom_test_angles.rawtlt"
        out += [
            Seed("tilt_angles", angles, "pytom_test_angles.rawtlt"),
            Seed("dose", real / "pytom_test_dose.txt", "pytom_test_dose.txt", (("angles.rawtlt", angles),)),
            Seed("defocus", real / "pytom_test_imod.defocus", "pytom_test_imod.defocus", (("angles.rawtlt", angles),)),
        ]
        # the tomograms.star names Tomograms/job009/tilt_series/<name>.star: found as tilt_series/<name>.star
        out += _relion_seeds(
            real / "tomo200528_relion5_tomograms.star",
            real / "tomo200528_107_relion5_tiltseries.star",
            "tilt_series/tomo200528_107.star",
            "tomo200528_107",
        )
    return out


def shared_tilt_metadata() -> Path | None:
    root = shared_data_dir()
    d = None if root is None else root / "tilt_metadata"
    return d if d is not None and (d / "tomo200528_relion5_tomograms.star").is_file() else None


def _angles_file(values) -> Path:
    """A small tilt-angle file in the temp folder (for fixtures without a matching one)."""
    d = Path(tempfile.gettempdir()) / "tomomatch_fuzz_angles"
    d.mkdir(exist_ok=True)
    p = d / f"angles_{len(values)}.rawtlt"
    if not p.is_file():
        p.write_text("".join(f"{v}\n" for v in values))
    return p


def _four_angles() -> Path:
    return _angles_file([-30.0, -15.0, 15.0, 30.0])


def _two_angles() -> Path:
    return _angles_file([-3.0, 3.0])


# --------------------------------------------------------------------------- mutations

_NUMBER = re.compile(rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_REPLACEMENTS = [
    b"nan",
    b"NaN",
    b"inf",
    b"-inf",
    b"Infinity",
    b"1e308",
    b"1e999",
    b"-1e308",
    b"-1",
    b"-3.5",
    b"0",
    b"-0",
    b"1e-300",
    b"99999999999999999999",
    b"abc",
    b"",
    b"--",
    b"0x10",
    b"1,5",
    b"3.1.4",
    b"1e",
    b"None",
    b"True",
    b"\xff",
    b"\"",
    b"'",
    b"#",
]
_SCALES = [10.0, 0.1, 1000.0, 0.001, 1e4, 1e-4, -1.0, 100.0, 1e6]


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def truncate(data: bytes, rng) -> bytes:
    return data[: int(rng.integers(0, len(data) + 1))] if data else data


def delete_line(data: bytes, rng) -> bytes:
    lines = _lines(data)
    del lines[int(rng.integers(len(lines)))]
    return b"\n".join(lines)


def duplicate_line(data: bytes, rng) -> bytes:
    lines = _lines(data)
    i = int(rng.integers(len(lines)))
    lines.insert(i, lines[i])
    return b"\n".join(lines)


def swap_lines(data: bytes, rng) -> bytes:
    lines = _lines(data)
    i, j = rng.integers(len(lines), size=2)
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def replace_number(data: bytes, rng) -> bytes:
    found = list(_NUMBER.finditer(data))
    if not found:
        return data
    m = found[int(rng.integers(len(found)))]
    new = _REPLACEMENTS[int(rng.integers(len(_REPLACEMENTS)))]
    return data[: m.start()] + new + data[m.end() :]


def replace_number_in_line(data: bytes, rng) -> bytes:
    """Like :func:`replace_number`, but a random line first (reaches header fields of one-row tables)."""
    lines = _lines(data)
    with_numbers = [i for i, ln in enumerate(lines) if _NUMBER.search(ln)]
    if not with_numbers:
        return data
    i = with_numbers[int(rng.integers(len(with_numbers)))]
    lines[i] = replace_number(lines[i], rng)
    return b"\n".join(lines)


def scale_number(data: bytes, rng) -> bytes:
    """A unit mistake: one number (or every number of its column in a table) times a unit factor."""
    found = list(_NUMBER.finditer(data))
    if not found:
        return data
    m = found[int(rng.integers(len(found)))]
    try:
        value = float(m.group())
    except ValueError:
        return data
    new = f"{value * _SCALES[int(rng.integers(len(_SCALES)))]:.6g}".encode()
    return data[: m.start()] + new + data[m.end() :]


def scale_column(data: bytes, rng) -> bytes:
    """Every row of a whitespace table: one column times a unit factor (a whole file in the wrong unit)."""
    lines = _lines(data)
    rows = [i for i, ln in enumerate(lines) if len(ln.split()) >= 2 and _NUMBER.fullmatch(ln.split()[-1] or b"x")]
    if not rows:
        return scale_number(data, rng)
    width = len(lines[rows[0]].split())
    col = int(rng.integers(width))
    factor = _SCALES[int(rng.integers(len(_SCALES)))]
    for i in rows:
        toks = lines[i].split()
        if len(toks) == width and _NUMBER.fullmatch(toks[col]):
            toks[col] = f"{float(toks[col]) * factor:.6g}".encode()
            lines[i] = b" ".join(toks)
    return b"\n".join(lines)


def swap_columns(data: bytes, rng) -> bytes:
    lines = _lines(data)
    widths = Counter(len(ln.split()) for ln in lines if len(ln.split()) >= 2)
    if not widths:
        return data
    width = max(widths, key=lambda w: (widths[w], w))
    i, j = (int(v) for v in rng.choice(width, size=2, replace=False))
    for k, ln in enumerate(lines):
        toks = ln.split()
        if len(toks) == width:
            toks[i], toks[j] = toks[j], toks[i]
            lines[k] = b" ".join(toks)
    return b"\n".join(lines)


def random_bytes(data: bytes, rng) -> bytes:
    k = int(rng.integers(1, 9))
    noise = bytes(int(b) for b in rng.integers(0, 256, size=k))
    pos = int(rng.integers(0, len(data) + 1))
    if rng.random() < 0.5:
        return data[:pos] + noise + data[pos:]
    return data[:pos] + noise + data[pos + k :]


def empty(data: bytes, rng) -> bytes:
    return b""


MUTATIONS: dict[str, Callable] = {
    f.__name__: f
    for f in (
        truncate,
        delete_line,
        duplicate_line,
        swap_lines,
        replace_number,
        replace_number_in_line,
        scale_number,
        scale_column,
        swap_columns,
        random_bytes,
    )
}
MUTATIONS["empty"] = empty
_MUTATION_WEIGHTS = {name: (0.2 if name == "empty" else 1.0) for name in MUTATIONS}
_MUTATION_WEIGHTS["replace_number"] = 2.0
_MUTATION_WEIGHTS["replace_number_in_line"] = 2.0


def mutate(data: bytes, rng) -> tuple[bytes, list[str]]:
    names = list(MUTATIONS)
    w = np.array([_MUTATION_WEIGHTS[n] for n in names])
    applied = []
    for _ in range(int(rng.integers(1, 4))):
        name = names[int(rng.choice(len(names), p=w / w.sum()))]
        data = MUTATIONS[name](data, rng)
        applied.append(name)
    return data, applied


# --------------------------------------------------------------------------- one case


@dataclass
class Outcome:
    case: int
    seed: str
    mutations: list[str]
    flags: dict
    via: str  # "api" or "cli"
    result: str  # "ok", "input_error" or "FAILURE"
    message: str = ""
    files: dict = field(default_factory=dict)


def _flags(rng) -> dict:
    return {k: bool(rng.random() < 0.2) for k in ("allow_missing_dose", "allow_unusual_defocus", "allow_unusual_dose")}


def _kwargs(seed: Seed, folder: Path) -> dict:
    target = folder / seed.name
    angles = folder / "angles.rawtlt"
    if seed.kind == "tilt_angles":
        return {"tilt_angles": target}
    if seed.kind == "dose":
        return {"tilt_angles": angles, "dose": target}
    if seed.kind == "defocus":
        return {"tilt_angles": angles, "defocus": target}
    if seed.kind in ("relion_ts", "relion_tomos"):
        return {"relion5": folder / "tomograms.star", "tomo_name": seed.tomo_name}
    return {seed.kind: target}


_CLI_OPTIONS = {
    "tilt_angles": "--tilt-angles",
    "dose": "--dose",
    "defocus": "--defocus",
    "relion5": "--relion5-tomograms",
    "tomo_name": "--tomo-name",
    "mdoc": "--mdoc",
    "aln": "--aln",
    "warp_xml": "--warp-xml",
    "allow_missing_dose": "--allow-missing-dose",
    "allow_unusual_defocus": "--allow-unusual-defocus",
    "allow_unusual_dose": "--allow-unusual-dose",
}


def check_tilt_series(ts, flags: dict, kind: str) -> str | None:
    """What is wrong with a TiltSeries a reader returned (None: valid)."""
    if not isinstance(ts, TiltSeries):
        return f"returned {type(ts).__name__}, not a TiltSeries"
    n = ts.n_tilts
    if n < 1:
        return "no tilts"
    arrays = {
        k: getattr(ts, k)
        for k in ("tilt_angles_deg", "accumulated_dose", "astigmatism_angle_deg", "phase_shift_deg", "x_tilt_deg")
    }
    if ts.has_defocus:
        arrays.update(defocus_u_um=ts.defocus_u_um, defocus_v_um=ts.defocus_v_um)
    for k, a in arrays.items():
        a = np.asarray(a)
        if a.shape != (n,):
            return f"{k} has shape {a.shape}, expected ({n},)"
        if not np.all(np.isfinite(a)):
            return f"{k} has NaN or inf"
    if ts.excluded.shape != (n,):
        return "excluded has the wrong shape"
    a = ts.tilt_angles_deg
    if np.any(np.abs(a) > 90):
        return "tilt angle outside -90..90"
    if np.unique(np.round(a, 6)).size != n:
        return "duplicate tilt angles"
    if np.any(ts.accumulated_dose < 0):
        return "negative dose"
    if not flags.get("allow_unusual_dose") and np.any(ts.accumulated_dose >= MAX_TOTAL_DOSE):
        return f"dose {ts.accumulated_dose.max()} >= {MAX_TOTAL_DOSE}"
    # mdoc: the dose information is the per-exposure dose (the first exposure may be 0)
    dose_info = ts.extra.get("exposure_dose", ts.accumulated_dose) if kind == "mdoc" else ts.accumulated_dose
    if (
        kind in ("relion_ts", "relion_tomos", "mdoc", "warp_xml")
        and not flags.get("allow_missing_dose")
        and n > 1
        and np.all(np.asarray(dose_info) == 0)
    ):
        return "dose 0 for every tilt without allow_missing_dose"
    if ts.has_defocus and not flags.get("allow_unusual_defocus"):
        used = ~ts.excluded
        for d in (ts.defocus_u_um[used], ts.defocus_v_um[used]):
            if np.any((d < DEFOCUS_MIN_PHASE_PLATE_UM) | (d > DEFOCUS_MAX_UM)):
                return f"implausible defocus {d.min()}..{d.max()} um"
    for name in ("tilt_axis_angle_deg", "voltage_kv", "cs_mm", "amplitude_contrast"):
        if not np.isfinite(getattr(ts, name)):
            return f"{name} is not finite"
    if not VOLTAGE_RANGE_KV[0] <= ts.voltage_kv <= VOLTAGE_RANGE_KV[1]:
        return f"voltage {ts.voltage_kv}"
    if ts.pixel_size_angstrom is not None and not (np.isfinite(ts.pixel_size_angstrom) and ts.pixel_size_angstrom > 0):
        return f"pixel size {ts.pixel_size_angstrom}"
    from tomomatch.cli.metadata import format_table, tilt_series_to_dict

    try:
        json.dumps(tilt_series_to_dict(ts), allow_nan=False)
        back = TiltSeries.from_json(json.loads(json.dumps(ts.to_json(), allow_nan=False)))
        format_table(ts)
    except Exception as exc:  # noqa: BLE001 - any failure here is a finding
        return f"JSON/table of the result fails: {exc!r}"
    if back.n_tilts != n:
        return "JSON round trip changes the tilt count"
    return None


def _check_message(msg: str, folder: Path) -> str | None:
    if not msg.strip():
        return "empty message"
    if "\n" in msg or "\r" in msg:
        return "message spans several lines"
    if str(folder) not in msg:
        return "message names no file of the case"
    if "np.float64(" in msg or "validation error for" in msg:
        return "library text in the message"
    return None


def run_case(i: int, seed_value: int, all_seeds: list[Seed], workdir: Path, cli_fraction: float = 0.1) -> Outcome:
    """Mutate one seed file (case ``i``), read it, and classify the outcome."""
    rng = np.random.default_rng([seed_value, i])
    seed = all_seeds[int(rng.integers(len(all_seeds)))]
    folder = workdir / f"case{i}"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "tilt_series").mkdir(parents=True)
    for name, src in seed.companions:
        shutil.copy(src, folder / name)
    data, applied = mutate(seed.target.read_bytes(), rng)
    (folder / seed.name).write_bytes(data)
    flags = _flags(rng)
    kwargs = _kwargs(seed, folder)
    via = "cli" if rng.random() < cli_fraction else "api"
    out = Outcome(i, seed.label, applied, {k: v for k, v in flags.items() if v}, via, "ok")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if via == "api":
                try:
                    ts = load_tilt_series(**kwargs, **{k: v for k, v in flags.items() if v})
                except InputError as exc:
                    out.result, out.message = "input_error", str(exc)
                    problem = _check_message(out.message, folder)
                else:
                    problem = check_tilt_series(ts, flags, seed.kind)
            else:
                from tomomatch.cli import main

                argv = ["metadata", "--json"]
                for k, v in kwargs.items():
                    if v is not None:
                        argv += [_CLI_OPTIONS[k], str(v)]
                argv += [_CLI_OPTIONS[k] for k, v in flags.items() if v]
                stdout, stderr = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                    rc = main(argv)
                err = stderr.getvalue()
                if rc == 0:
                    problem = None
                    try:
                        json.loads(stdout.getvalue())
                    except ValueError as exc:
                        problem = f"stdout is not JSON ({exc})"
                elif rc == 2:
                    out.result, out.message = "input_error", err.strip()
                    problem = (
                        "stderr is not one 'error:' line"
                        if err.count("\n") != 1 or not err.startswith("tomomatch metadata: error: ")
                        else _check_message(out.message, folder)
                    )
                else:
                    problem = f"exit status {rc}: {err!r}"
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - every other exception is a finding
        problem = (
            "".join(traceback.format_exception_only(type(exc), exc)).strip()
            + " | "
            + traceback.format_exc().strip().splitlines()[-3].strip()
        )
    if problem is not None:
        out.result = "FAILURE"
        out.message = f"{problem} :: {out.message}" if out.message else problem
        out.files = {seed.name: data}
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return out


@dataclass
class Report:
    outcomes: list[Outcome]
    seconds: float

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == "FAILURE"]

    def summary(self) -> str:
        by = Counter((o.seed, o.result) for o in self.outcomes)
        seeds_ = sorted({o.seed for o in self.outcomes})
        lines = [
            f"{len(self.outcomes)} cases in {self.seconds:.1f} s: "
            + ", ".join(f"{k} {v}" for k, v in sorted(Counter(o.result for o in self.outcomes).items())),
            f"{'seed':48} {'ok':>6} {'error':>6} {'FAIL':>6}",
        ]
        for s in seeds_:
            lines.append(f"{s:48} {by[(s, 'ok')]:>6} {by[(s, 'input_error')]:>6} {by[(s, 'FAILURE')]:>6}")
        kinds = Counter(_message_kind(o.message) for o in self.outcomes if o.result == "input_error")
        lines.append("most frequent InputError kinds:")
        lines += [f"  {n:6}  {k}" for k, n in kinds.most_common(15)]
        if self.failures:
            lines.append("FAILURES (case, seed, mutations, flags, via: problem):")
            for o in self.failures[:30]:
                lines.append(f"  case {o.case} {o.seed} {o.mutations} {o.flags} {o.via}: {o.message[:300]}")
        return "\n".join(lines)


def _message_kind(msg: str) -> str:
    """A message without its file, numbers and quoted values, to group errors by kind."""
    msg = msg.replace("tomomatch metadata: error: ", "")
    msg = re.sub(r"/\S+?: ", "", msg, count=1)
    msg = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", msg)
    msg = re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "#", msg)
    return msg[:110]


def run_fuzz(
    n_cases: int,
    seed_value: int = 0,
    workdir: Path | None = None,
    include_shared: bool = True,
    cli_fraction: float = 0.1,
    first_case: int = 0,
) -> Report:
    """Run cases ``first_case .. first_case + n_cases - 1``; failing cases keep their folder."""
    all_seeds = seeds(include_shared)
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="tomomatch_fuzz_")) if own else Path(workdir)
    t0 = time.perf_counter()
    outcomes = [
        run_case(i, seed_value, all_seeds, workdir, cli_fraction) for i in range(first_case, first_case + n_cases)
    ]
    report = Report(outcomes, time.perf_counter() - t0)
    if own and not report.failures:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", seeds(include_shared=True), ids=lambda s: s.label)
def test_unmutated_seeds_read(seed, tmp_path):
    """Every seed file reads as it is (else the fuzz results would mean nothing)."""
    for name, src in seed.companions:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tmp_path / name)
    (tmp_path / seed.name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(seed.target, tmp_path / seed.name)
    ts = load_tilt_series(**_kwargs(seed, tmp_path))
    assert check_tilt_series(ts, {}, seed.kind) is None


def test_mutations_are_seeded():
    data = (FIXTURES / "small_ts.mrc.mdoc").read_bytes()
    a = mutate(data, np.random.default_rng([0, 5]))
    b = mutate(data, np.random.default_rng([0, 5]))
    assert a == b and mutate(data, np.random.default_rng([0, 6])) != a


def test_fuzz_readers_short(tmp_path):
    """A short seeded run: no reader may raise anything but a one-line InputError."""
    report = run_fuzz(300, seed_value=20240611, workdir=tmp_path, cli_fraction=0.15)
    assert not report.failures, report.summary()
    results = Counter(o.result for o in report.outcomes)
    assert results["ok"] > 10 and results["input_error"] > 50  # the mutations reach both outcomes
    assert report.seconds < 60
