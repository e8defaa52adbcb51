"""Where the GPU time goes in the fast path at the seed's sizes (case b): torch.profiler table.

Usage (on a GPU machine): ``python benchmarks/profile_cuda.py`` from the repository root with
``PYTHONPATH=src:benchmarks``.
"""

import torch
from scipy.spatial.transform import Rotation
from torch.profiler import ProfilerActivity, profile

from bench_match import CASES, make_data, tilt_series
from tomomatch import matching as M
from tomomatch.weighting import tilt_series_weight

import sys

from tomomatch.tiles import plan_tiles

case = CASES["b"]
tmpl, mask, vol = make_data(case)
dev = torch.device("cuda")
ts = tilt_series()
n_tiles_x = int(sys.argv[1]) if len(sys.argv) > 1 else 1  # profile the first of this many x-tiles
tile = plan_tiles(vol.shape, case["box"], (n_tiles_x, 1, 1), case["voxel"], ts.tilt_angles_deg, 1)[0]
tc = M.TileCorrelator(
    torch.as_tensor(vol, device=dev)[tile.data_slices],
    tmpl,
    mask,
    tile.unique_in_data,
    weight=lambda shape: tilt_series_weight(ts, shape, case["voxel"], device=dev),
    device=dev,
)
print("tile grid", tc.shape, "unique", [s.stop - s.start for s in tile.unique_in_data])
rots = Rotation.random(16 * 9, random_state=1).as_matrix()
import time  # noqa: E402

tc.run(rots[:16], batch_size=16)
torch.cuda.synchronize()
t0 = time.perf_counter()
tc.run(rots[16:], batch_size=16)
torch.cuda.synchronize()
print(f"wall {1e3 * (time.perf_counter() - t0) / len(rots[16:]):.3f} ms per rotation without the profiler")
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    tc.run(rots[16:], batch_size=16)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
