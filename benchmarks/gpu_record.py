"""One GPU record in the issues' format from the parts a device run wrote under ``$OUT``.

Reads what is there of ``bench_match.json`` (tomomatch's rates, ``bench_match.py --json``),
``bench_pytom_gpu.json`` (pytom-match-pick's, same run), ``seed_job.json`` (the whole seed job),
``hand_question.json`` and ``workers.json`` (issue 19) and writes ``$OUT/gpu-<date>.json`` with
``gpu``, ``commit``, ``tomomatch_rot_s_unsplit``, ``pytom_rot_s_unsplit``,
``tomomatch_rot_s_3tiles``, ``pytom_rot_s_3tiles`` (case (b), the seed's sizes; null with
``why`` when a part did not finish), ``seed_search_s`` (and how it was obtained), ``peak_gpu_gb``,
``hand_question_s``, ``hand_rescore_300_s``, ``scaling_1_vs_2_workers``, and the parts
themselves. Copy it to ``benchmarks/results/`` (``records.record_path("gpu")`` names it).

Usage: ``python benchmarks/gpu_record.py [--out DIR]`` (default ``$OUT``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from records import header, record_path, write_record


def _load(folder: Path, name: str) -> dict | None:
    p = folder / name
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def combine(folder: Path) -> dict:
    rec = header("gpu_session")
    why: dict[str, str] = {}
    bench = _load(folder, "bench_match.json")
    case_b = (bench or {}).get("summary", {}).get("case_b_cuda", {})
    rec["tomomatch_rot_s_unsplit"] = case_b.get("tomomatch_rot_s_unsplit")
    rec["tomomatch_rot_s_3tiles"] = case_b.get("tomomatch_rot_s_3tiles")
    rec["peak_gpu_gb"] = case_b.get("peak_gpu_gb")
    if bench is None:
        why["tomomatch"] = "bench_match.json missing (bench_match.py did not finish)"
    elif not case_b:
        why["tomomatch"] = "bench_match.json has no CUDA row for case (b)"
    pytom = _load(folder, "bench_pytom_gpu.json")
    for tiles, key in ((1, "pytom_rot_s_unsplit"), (3, "pytom_rot_s_3tiles")):
        row = next((r for r in (pytom or {}).get("rows", []) if r["case"] == "b" and r["tiles"] == tiles), None)
        rec[key] = None if row is None else row.get("rot_per_s")
        if rec[key] is None:
            why[key] = (row or {}).get("why") or "bench_pytom_gpu.json has no case (b) row (did not finish)"
    seed = _load(folder, "seed_job.json")
    rec["seed_search_s"] = None if seed is None else seed.get("seed_search_s")
    rec["seed_search_how"] = None if seed is None else seed.get("seed_search_how")
    if seed is None:
        why["seed_search_s"] = "seed_job.json missing (seed_job.py did not finish)"
    hq = _load(folder, "hand_question.json")
    rec["hand_question_s"] = None if hq is None else hq.get("hand_question_s")
    rec["hand_rescore_300_s"] = None if hq is None else hq.get("hand_rescore_300_s")
    workers = _load(folder, "workers.json")
    rec["scaling_1_vs_2_workers"] = None if workers is None else workers.get("scaling_1_vs_2_workers")
    if bench and bench.get("gpu"):
        rec["gpu"] = bench["gpu"]
    rec["why_null"] = why
    rec["parts"] = {
        "bench_match": bench,
        "bench_pytom_gpu": pytom,
        "seed_job": seed,
        "hand_question": hq,
        "workers": workers,
    }
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu_out")))
    args = ap.parse_args(argv)
    rec = combine(args.out)
    write_record(rec, record_path("gpu", args.out))
    print(
        {
            k: rec[k]
            for k in rec
            if k.endswith("_s") or "rot_s" in k or k in ("gpu", "peak_gpu_gb", "scaling_1_vs_2_workers")
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
