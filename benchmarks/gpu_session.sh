#!/usr/bin/env bash
# One prepared device run (see README "Benchmarks"): CUDA correctness vs CPU, cuFFT grid sizes,
# tomomatch rates on CUDA (Triton fold = default vs separate kernels, FFT size rule), whole-job
# seed timing, a per-tile profile, and pytom-match-pick's rate on the same card (after a warm-up
# run). About 8 minutes on an H200. Wheels carried in .wheels/ (no network there), made here
# with `bash benchmarks/gpu_wheels.sh` and passed to the device tool with carry [".wheels"].
# Issue 19's measurements (hand question, several workers) are benchmarks/gpu_session_19.sh.
# Device tool: command `COMMIT=<git rev-parse HEAD> bash benchmarks/gpu_session.sh`, carry [".wheels"],
# timeout_s 600; $OUT/gpu-<date>.json (benchmarks/gpu_record.py) is the record for benchmarks/results/.
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export COMMIT=${COMMIT:-unknown}  # the device's copy of the tree has no .git: give COMMIT=<hash>
# the peer and what bench_match/pytom import (as in earlier runs); the other wheels are issue 19's
python3 -m pip install -q --no-deps --no-index .wheels/pytom_match_pick-*.whl .wheels/voltools-*.whl \
    .wheels/healpix-*.whl .wheels/mrcfile-*.whl .wheels/starfile-*.whl .wheels/importlib_resources-*.whl \
    > "$OUT/pip.log" 2>&1
export PYTHONPATH=$PWD/src:$PWD/benchmarks
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
B="$OUT/bench_tomomatch_cuda.txt"
timeout 60 python3 benchmarks/cuda_check.py > "$OUT/cuda_check.txt" 2>&1
timeout 30 python3 benchmarks/fft_sizes_cuda.py > "$OUT/fft_sizes.txt" 2>&1
timeout 80 python3 benchmarks/bench_match.py --devices cuda --cases a b --tiles 1 3 --json "$OUT/bench_match.json" > "$B" 2>&1
TOMOMATCH_FFT_SIZES=cuda timeout 60 python3 benchmarks/bench_match.py --devices cuda --cases b --tiles 1 3 \
    --json "$OUT/bench_match_fft_sizes_cuda.json" >> "$B" 2>&1
TOMOMATCH_FUSED=0 timeout 40 python3 benchmarks/bench_match.py --devices cuda --cases b --tiles 1 3 \
    --json "$OUT/bench_match_unfused.json" >> "$B" 2>&1
timeout 90 python3 benchmarks/seed_job.py --device cuda --n 2484 24840 --json "$OUT/seed_job.json" > "$OUT/seed_job.txt" 2>&1
timeout 40 python3 benchmarks/profile_cuda.py 3 > "$OUT/profile_3.txt" 2>&1
(cd benchmarks && timeout 150 python3 bench_pytom_gpu.py --cases b --tiles 1 3 --n 600 3000 \
    --json "$OUT/bench_pytom_gpu.json" > "$OUT/bench_pytom_gpu.txt" 2>&1)
python3 benchmarks/gpu_record.py --out "$OUT" > "$OUT/gpu_record.txt" 2>&1
tail -n 40 "$OUT"/cuda_check.txt "$OUT"/fft_sizes.txt "$B" "$OUT"/seed_job.txt "$OUT"/bench_pytom_gpu.txt "$OUT"/gpu_record.txt
