#!/usr/bin/env bash
# Issue 19 on the device machine, one prepared run (about 4 minutes on an H200, not yet measured):
#   * benchmarks/gpu_hand_question.py: tomomatch hand on 300 candidates on CUDA (hand_rescore_300_s)
#     and the whole route from a seed-size tomogram to a verdict (hand_question_s), CPU cross-check;
#   * benchmarks/gpu_workers.py: one match job (seed sizes, 3 x-tiles) with one worker and with two
#     workers on the GPU (cuda:0,0; cuda:all where there are several), maps checked identical
#     (scaling_1_vs_2_workers).
# Prepared here (no network there), into git-ignored folders:
#   bash benchmarks/gpu_wheels.sh
#   mkdir -p build/hq_data/structures && cp ../shared/data/structures/4v5d.cif.gz build/hq_data/structures/
# Device tool: command `COMMIT=<git rev-parse HEAD> bash benchmarks/gpu_session_19.sh`,
# carry [".wheels", "build/hq_data"], timeout_s 540. Everything comes back under $OUT; copy the
# JSON fields into benchmarks/results/gpu-YYYY-MM-DD[-N].json and the prose into RESULTS.md.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .wheels/*.whl \
    > "$OUT/pip.log" 2>&1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks TOMOMATCH_DATA=$PWD/build/hq_data PYTHONUNBUFFERED=1
export COMMIT=${COMMIT:-unknown}
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
timeout 300 python3 benchmarks/gpu_hand_question.py --device cuda --size seed --commit "$COMMIT" \
    --json "$OUT/hand_question.json" > "$OUT/hand_question.log" 2>&1
timeout 180 python3 benchmarks/gpu_workers.py --device cuda --n 4968 --json "$OUT/workers.json" \
    > "$OUT/workers.log" 2>&1
python3 benchmarks/gpu_record.py --out "$OUT" > "$OUT/gpu_record.txt" 2>&1
tail -n 30 "$OUT/hand_question.log" "$OUT/workers.log" "$OUT/gpu_record.txt"
