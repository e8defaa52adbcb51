set -u
python3 -m pip install -q --no-deps --no-index .wheels/*.whl > "$OUT/pip.log" 2>&1
export PYTHONPATH=$PWD/src:$PWD/benchmarks
timeout 40 python3 benchmarks/profile_cuda.py 1 > "$OUT/profile_1.txt" 2>&1
timeout 40 python3 benchmarks/profile_cuda.py 3 > "$OUT/profile_3.txt" 2>&1
TOMOMATCH_FFT_SIZES=cuda timeout 40 python3 benchmarks/profile_cuda.py 3 > "$OUT/profile_3_cudasizes.txt" 2>&1
timeout 80 python3 benchmarks/seed_job.py --device cuda --n 2484 12420 > "$OUT/seed_job.txt" 2>&1
(cd benchmarks && timeout 110 python3 bench_pytom_gpu.py --cases b --tiles 1 3 --n 600 3000 > "$OUT/bench_pytom_gpu.txt" 2>&1)
head -3 "$OUT"/profile_*.txt; cat "$OUT/seed_job.txt" "$OUT/bench_pytom_gpu.txt"
