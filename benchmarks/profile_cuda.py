"""Where the GPU time goes in the fast path at the seed's sizes (case b): torch.profiler table.

Usage (on a GPU machine): ``python benchmarks/profile_cuda.py`` from the repository root with
``PYTHONPATH=src:benchmarks``.
"""
import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch.profiler import ProfilerActivity, profile

from bench_match import CASES, make_data, tilt_series
from tomomatch import matching as M
from tomomatch.weighting import tilt_series_weight

case = CASES["b"]
tmpl, mask, vol = make_data(case)
dev = torch.device("cuda")
ts = tilt_series()
tc = M.TileCorrelator(torch.as_tensor(vol, device=dev), tmpl, mask,
                      (slice(0, vol.shape[0]), slice(0, vol.shape[1]), slice(0, vol.shape[2])),
                      weight=lambda shape: tilt_series_weight(ts, shape, case["voxel"], device=dev), device=dev)
rots = Rotation.random(16 * 9, random_state=1).as_matrix()
tc.run(rots[:16], batch_size=16)
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    tc.run(rots[16:], batch_size=16)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
