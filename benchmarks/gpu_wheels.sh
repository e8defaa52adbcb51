#!/usr/bin/env bash
# Wheels the device machine lacks (it has no network; it has PyTorch with CUDA, numpy, scipy),
# for benchmarks/gpu_session.sh and gpu_session_19.sh. Run here, from the repository root, then
# pass carry [".wheels"] to the device tool (.wheels/ is git-ignored; the carry limit is 64 MiB).
set -eu
rm -rf .wheels
mkdir -p .wheels
pip_download() {
    .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .wheels "$@"
}
# the peer (issue 18's side-by-side run) and what it imports
pip_download pytom-match-pick==0.14.0 voltools importlib_resources
# tomomatch's own runtime dependencies (pyproject.toml) that a bare CUDA image may lack
pip_download mrcfile starfile==0.5.13 mdocfile==0.2.3 alnfile==0.1.1 healpix==2025.1 pyFFTW rich \
    markdown-it-py mdurl pygments lxml gemmi pydantic pydantic-core annotated-types typing-inspection \
    typing-extensions
du -sh .wheels
ls .wheels
