"""CUDA vs CPU: the same search must give the same maps (scores to float tolerance, angles equal
where the best score is not a near-tie). Prints one line per check.

Three runs: CPU and CUDA with the default fast path (rotation pairs packed into one complex
FFT), and the CPU with the unpacked real-to-complex path (``TOMOMATCH_PACKED=0``)."""

import os

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from bench_match import make_data, tilt_series
from tomomatch import matching as M
from tomomatch.weighting import tilt_series_weight

case = dict(shape=(40, 64, 64), box=24, radius=9, voxel=8.0, weighting=True)
tmpl, mask, vol = make_data(case)
rots = Rotation.random(64, random_state=3).as_matrix()
ts = tilt_series()
res = {}
for key in ("cpu", "cuda", "cpu-unpacked"):
    dev = key.split("-")[0]
    d = torch.device(dev)
    os.environ["TOMOMATCH_PACKED"] = "0" if key.endswith("unpacked") else "1"
    r = M.match_volume(
        vol, tmpl, mask, rots, weight=lambda shape, d=d: tilt_series_weight(ts, shape, 8.0, device=d), device=dev
    )
    res[key] = r
ok = True
for ref in ("cpu", "cpu-unpacked"):
    a, b = res[ref], res["cuda"]
    sa, sb = np.asarray(a.scores), np.asarray(b.scores)
    same = np.asarray(a.angles) == np.asarray(b.angles)
    print(
        f"{ref} vs cuda: max |score difference| = {float(np.abs(sa - sb).max()):.2e} (max score "
        f"{float(sa.max()):.3f}), angle index identical fraction = {float(same.mean()):.5f}, "
        f"std {a.std:.6f} vs {b.std:.6f}"
    )
    ok &= bool(np.abs(sa - sb).max() < 1e-4 and same.mean() > 0.999 and abs(a.std - b.std) < 1e-4 * a.std)
print("CUDA_CHECK", "PASS" if ok else "FAIL")
