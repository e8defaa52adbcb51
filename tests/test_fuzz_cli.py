"""Seeded fuzz of every command's argument parsing and checks, through ``tomomatch.cli.main`` (issue 15).

Each case takes a command's valid argument vector (``tests/_cli_inputs.py``) and applies one to
three mutations: drop, duplicate or swap options, add an option of the command's parser, replace
a value with ``0``, ``-1``, ``nan``, ``inf``, ``1e30``, ``''``, ``abc``, a huge integer, ..., or a
path with a missing file, a folder, an empty file or random bytes, or an output location with a
file, a folder, a missing parent. It runs the command in this process, in a fresh copy of the
tiny inputs, and requires:

* exit status 0, or 2 with exactly one line on stderr that is not a one-line warning
  (``tomomatch: warning: ...``), starting ``tomomatch`` and saying ``error``;
* no traceback, no other exception, no other exit status;
* no ``.part`` file left anywhere in the case's folder.

The suite runs a short seeded run (every command, about 20 s); ``python benchmarks/fuzz_cli.py
--cases N --seed S`` runs a long one and prints a table of outcomes per command. In both, an
accepted ``demo`` stops (as accepted) where its simulation would start, and in the suite an
accepted ``batch`` stops where its Dask cluster would start: everything before (argument and
value checks, output locations, reading and planning the inputs) runs as usual.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from _cli_inputs import OUTPUT_KIND, base_argv, make_inputs, run_cli

COMMANDS = list(OUTPUT_KIND) + ["metadata", "view"]

NUMBERS = ["0", "-1", "nan", "inf", "-inf", "1e30", "1e-30", "", "abc", "99999999999999999999", "100000", "45.5"]
PATH_KINDS = ["missing", "folder", "empty", "garbage", "other-input"]
OUT_KINDS = ["existing-file", "existing-folder", "missing-parent", "file-as-parent"]


class Accepted(Exception):
    """Raised where a stubbed command (demo, batch in the suite) would start its long work."""


@dataclass
class Case:
    command: str
    index: int
    argv: list[str]
    mutations: list[str]
    rc: int | None = None
    stderr: str = ""
    outcome: str = ""  # "ok", "refused", "accepted (stub)" or "FAIL: ..."
    seconds: float = 0.0


@dataclass
class Report:
    cases: list[Case] = field(default_factory=list)

    @property
    def failures(self) -> list[Case]:
        return [c for c in self.cases if c.outcome.startswith("FAIL")]

    def table(self) -> str:
        per: dict[str, Counter] = defaultdict(Counter)
        secs: Counter = Counter()
        for c in self.cases:
            per[c.command][c.outcome.split(":")[0]] += 1
            secs[c.command] += c.seconds
        cols = ["ok", "refused", "accepted (stub)", "FAIL"]
        lines = [f"{'command':<14} {'cases':>6} " + " ".join(f"{k:>16}" for k in cols) + f" {'seconds':>8}"]
        for cmd in sorted(per):
            n = sum(per[cmd].values())
            lines.append(f"{cmd:<14} {n:>6} " + " ".join(f"{per[cmd][k]:>16}" for k in cols) + f" {secs[cmd]:>8.1f}")
        tot = Counter()
        for v in per.values():
            tot.update(v)
        lines.append(
            f"{'all':<14} {len(self.cases):>6} "
            + " ".join(f"{tot[k]:>16}" for k in cols)
            + f" {sum(secs.values()):>8.1f}"
        )
        for c in self.failures:
            lines.append(f"FAIL case {c.index} {c.command} {c.mutations}: rc {c.rc}: {c.outcome}")
            lines.append("    argv: " + " ".join(repr(a) for a in c.argv))
        return "\n".join(lines)


# --------------------------------------------------------------------------- mutations


def _is_flag(tok: str) -> bool:
    if not tok.startswith("-") or tok == "-":
        return False
    try:
        float(tok)
        return False
    except ValueError:
        return True


def _groups(argv: list[str]) -> list[list[str]]:
    """Tokens after the command grouped as [flag, values...] (leading positionals: one group each)."""
    groups: list[list[str]] = []
    for tok in argv[1:]:
        if _is_flag(tok) or not groups or not _is_flag(groups[-1][0]):
            groups.append([tok])
        else:
            groups[-1].append(tok)
    return groups


def _flatten(command: str, groups: list[list[str]]) -> list[str]:
    return [command] + [t for g in groups for t in g]


def _looks_like_path(tok: str) -> bool:
    return "/" in tok


def _parser_options(command: str) -> list[tuple[str, int | str | None]]:
    """(option string, nargs) of every option of ``command``'s parser."""
    import argparse

    from tomomatch.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices[command]
    out = []
    for a in p._actions:
        if a.option_strings and not isinstance(a, argparse._HelpAction):
            nargs = 0 if a.nargs == 0 else a.nargs
            out.append((max(a.option_strings, key=len), nargs))
    return out


_OPTIONS_CACHE: dict[str, list] = {}


def _make_path(kind: str, case_dir: Path, inputs: Path, rng) -> str:
    p = case_dir / f"fz_{kind}_{rng.integers(1 << 30)}"
    if kind == "missing":
        return str(p / "nothing.mrc") if rng.random() < 0.3 else str(p)
    if kind == "folder":
        p.mkdir()
        return str(p)
    if kind == "empty":
        p.write_bytes(b"")
        return str(p)
    if kind == "garbage":
        n = int(rng.integers(1, 4096))
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        if rng.random() < 0.3:  # text-like garbage
            data = b"".join(rng.choice([b"0 ", b"1e9 ", b"nan ", b"x ", b"\n", b"-5 ", b"# c\n"], 200).tolist())
        p.write_bytes(data)
        return str(p)
    # another of the inputs, of the wrong kind
    names = ["tomo.mrc", "tmpl.mrc", "mask.mrc", "angles.tlt", "dose.txt", "rotations.txt", "particles.star"]
    names += ["tomograms.tsv", "job/t_job.json", "job/t_scores.mrc"]
    return str(inputs / names[int(rng.integers(len(names)))])


def _make_output(kind: str, case_dir: Path, rng) -> str:
    if kind == "existing-file":
        p = case_dir / "fz_existing_file"
        p.write_bytes(b"keep me\n")
        return str(p)
    if kind == "existing-folder":
        p = case_dir / "fz_existing_folder"
        p.mkdir(exist_ok=True)
        return str(p)
    if kind == "missing-parent":
        return str(case_dir / "fz_no_such_folder" / "out")
    p = case_dir / "fz_a_file"
    p.write_bytes(b"x")
    return str(p / "out")


def mutate(command: str, argv: list[str], out: str, case_dir: Path, inputs: Path, rng) -> tuple[list[str], list[str]]:
    """Apply 1-3 random mutations to ``argv``; return (argv, what was done)."""
    groups = _groups(argv)
    done: list[str] = []
    if command not in _OPTIONS_CACHE:
        _OPTIONS_CACHE[command] = _parser_options(command)
    options = _OPTIONS_CACHE[command]
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.choice(["drop", "duplicate", "swap", "value", "value", "path", "output", "add", "add"])
        if kind == "drop" and groups:
            i = int(rng.integers(len(groups)))
            done.append(f"drop {groups[i][0]}")
            del groups[i]
        elif kind == "duplicate" and groups:
            i = int(rng.integers(len(groups)))
            done.append(f"duplicate {groups[i][0]}")
            groups.insert(i + 1, list(groups[i]))
        elif kind == "swap":
            flat = [t for g in groups for t in g]
            if len(flat) >= 2:
                i, j = (int(x) for x in rng.choice(len(flat), 2, replace=False))
                flat[i], flat[j] = flat[j], flat[i]
                done.append(f"swap {flat[j]!r} {flat[i]!r}")
                groups = _groups([command, *flat])
        elif kind == "value":
            slots = [(gi, vi) for gi, g in enumerate(groups) for vi in range(len(g)) if not _is_flag(g[vi])]
            if slots:
                gi, vi = slots[int(rng.integers(len(slots)))]
                new = str(rng.choice(NUMBERS))
                done.append(f"{groups[gi][0]}: {groups[gi][vi]!r} -> {new!r}")
                groups[gi][vi] = new
        elif kind == "path":
            slots = [
                (gi, vi)
                for gi, g in enumerate(groups)
                for vi in range(len(g))
                if _looks_like_path(g[vi]) and g[vi] != out
            ]
            if slots:
                gi, vi = slots[int(rng.integers(len(slots)))]
                pk = str(rng.choice(PATH_KINDS))
                groups[gi][vi] = _make_path(pk, case_dir, inputs, rng)
                done.append(f"{groups[gi][0]}: path -> {pk}")
        elif kind == "output":
            slots = [(gi, vi) for gi, g in enumerate(groups) for vi in range(len(g)) if g[vi] == out]
            if slots:
                gi, vi = slots[0]
                ok = str(rng.choice(OUT_KINDS))
                groups[gi][vi] = _make_output(ok, case_dir, rng)
                done.append(f"output -> {ok}")
        elif kind == "add" and options:
            opt, nargs = options[int(rng.integers(len(options)))]
            if nargs == 0:
                vals: list[str] = []
            else:
                n = nargs if isinstance(nargs, int) else (1 if nargs in ("?", "+") else 1)
                pool = NUMBERS + ["1", "3", "10", "relion5", "cpu"]
                vals = []
                for _k in range(max(1, n)):
                    if rng.random() < 0.25:
                        vals.append(_make_path(str(rng.choice(PATH_KINDS)), case_dir, inputs, rng))
                    else:
                        vals.append(str(rng.choice(pool)))
            groups.insert(int(rng.integers(len(groups) + 1)), [opt, *vals])
            done.append(f"add {opt} {vals}")
    return _flatten(command, groups), done


# --------------------------------------------------------------------------- one case


def _stubs(command: str, stub_batch: bool):
    """Stop an accepted demo (and batch) where its long work would start."""
    stack = contextlib.ExitStack()

    def accepted(*a, **k):
        raise Accepted()

    if command == "demo":
        import tomomatch.simulate as S

        stack.enter_context(_patched(S, "simulate", accepted))
    if command == "batch" and stub_batch:
        import tomomatch.distributed as D

        stack.enter_context(_patched(D, "make_cluster", accepted))
    return stack


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _non_warning_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("tomomatch: warning:")]


def run_case(command: str, index: int, seed: int, inputs: Path, workdir: Path, stub_batch: bool = True) -> Case:
    rng = np.random.default_rng([seed, index, COMMANDS.index(command)])
    case_dir = workdir / f"case_{index:06d}_{command}"
    if case_dir.exists():
        shutil.rmtree(case_dir)
    shutil.copytree(inputs, case_dir / "in")
    d = case_dir / "in"
    kind = OUTPUT_KIND.get(command)
    out = str(case_dir / ("out.mrc" if kind == "file" and command in ("template", "mask") else "out"))
    argv, done = mutate(command, base_argv(command, d, Path(out)), out, case_dir, d, rng)
    case = Case(command, index, argv, done)
    t0 = time.perf_counter()
    with contextlib.chdir(case_dir):
        try:
            with _stubs(command, stub_batch):
                case.rc, _, case.stderr = run_cli(argv)
        except Accepted:
            case.rc = 0
            case.outcome = "accepted (stub)"
        except BaseException as exc:  # noqa: BLE001 - every exception is a finding
            if isinstance(exc, KeyboardInterrupt):
                raise
            case.rc = None
            tb = traceback.format_exc().strip().splitlines()
            case.outcome = f"FAIL: {exc.__class__.__name__}: {' '.join(str(exc).split())[:300]} at {tb[-3:]}"
    case.seconds = time.perf_counter() - t0
    if not case.outcome:
        lines = _non_warning_lines(case.stderr)
        if "Traceback" in case.stderr:
            case.outcome = f"FAIL: traceback on stderr: {case.stderr[-500:]}"
        elif case.rc == 0:
            case.outcome = "ok"
        elif case.rc == 2 and len(lines) == 1 and lines[0].startswith("tomomatch") and "error" in lines[0]:
            case.outcome = "refused"
        else:
            case.outcome = f"FAIL: exit {case.rc} with {len(lines)} stderr lines: {' | '.join(lines)[-500:]}"
    parts = [str(p.relative_to(case_dir)) for p in case_dir.rglob(".*.part")]
    if parts:
        case.outcome = (case.outcome if case.outcome.startswith("FAIL") else "FAIL: ") + f" .part files left: {parts}"
    for p in case_dir.rglob("*"):  # make it removable (a mutation may chmod nothing, but be safe)
        if p.is_dir() and not os.access(p, os.W_OK):
            p.chmod(0o755)
    return case


def run_fuzz(
    cases_per_command: int,
    seed: int,
    workdir: Path,
    inputs: Path | None = None,
    commands: list[str] | None = None,
    stub_batch: bool = True,
    keep: bool = False,
    budget_s: float | None = None,
) -> Report:
    """``cases_per_command`` seeded cases for each command (round robin), in ``workdir``."""
    import logging

    logging.getLogger("mdocfile").setLevel(logging.ERROR)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    workdir.mkdir(parents=True, exist_ok=True)
    inputs = inputs or make_inputs(workdir / "inputs")
    report = Report()
    t0 = time.perf_counter()
    for i in range(cases_per_command):
        for cmd in commands or COMMANDS:
            case = run_case(cmd, i, seed, inputs, workdir, stub_batch)
            report.cases.append(case)
            if not keep and not case.outcome.startswith("FAIL"):
                shutil.rmtree(workdir / f"case_{i:06d}_{cmd}", ignore_errors=True)
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
    return report


# --------------------------------------------------------------------------- the suite's run


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("fuzz_cli_inputs"))


def test_mutations_are_seeded_and_change_the_argv(tmp_path, inputs):
    argv = base_argv("match", inputs, tmp_path / "out")
    a = mutate("match", argv, str(tmp_path / "out"), tmp_path, inputs, np.random.default_rng([1, 2]))
    b = mutate("match", argv, str(tmp_path / "out"), tmp_path, inputs, np.random.default_rng([1, 2]))
    assert a[1] == b[1] and a[1]
    assert _groups(argv)[0][0] == "-t" and _flatten("match", _groups(argv)) == argv


def test_fuzz_every_command(tmp_path, inputs):
    """A short seeded run: every command, accepted runs on tiny inputs; no failure allowed."""
    report = run_fuzz(5, 0, tmp_path, inputs=inputs)
    print(report.table())
    assert not report.failures, report.table()
    outcomes = Counter(c.outcome for c in report.cases)
    assert outcomes["refused"] > 0 and outcomes["ok"] + outcomes["accepted (stub)"] > 0, outcomes
    assert {c.command for c in report.cases} == set(COMMANDS)


# --------------------------------------------------------------------------- what the fuzz found


@pytest.mark.parametrize(
    "command,extra,words",
    [
        # a fine pixel of 1e-20 voxels: numpy's "Maximum allowed size exceeded" (ValueError, exit 1)
        ("simulate", ["--binning", "99999999999999999999"], "tomogram size / binning / tilt step"),
        # OverflowError building the particle table; numpy's "lam value too large" for the shot noise
        ("simulate", ["--n-particles", "99999999999999999999"], "particles"),
        ("simulate", ["--dose-per-tilt", "1e30"], "dose per tilt"),
        # 100000 threads per worker: "can't start new thread" on the workers, exit 1
        ("batch", ["--threads-per-worker", "100000"], "--workers/--threads-per-worker"),
        ("batch", ["--workers", "100000"], "--workers/--threads-per-worker"),
        ("batch", ["--workers", "0"], "--workers"),
        # a path as the dashboard address: "Cluster failed to start: Name or service not known" (RuntimeError)
        ("batch", ["--dashboard-address", "/tmp/x/out"], "--dashboard-address"),
        # a 1e20 voxel box: numpy's "Maximum allowed size exceeded" (ValueError)
        ("mask", ["-b", "99999999999999999999"], "--box-size"),
    ],
)
def test_fuzz_findings_are_refused_in_one_line(command, extra, words, tmp_path, inputs):
    rc, _, err = run_cli([*base_argv(command, inputs, tmp_path / "out"), *extra])
    lines = _non_warning_lines(err)
    assert rc == 2 and len(lines) == 1 and words in lines[0], err
    assert not (tmp_path / "out").exists()
