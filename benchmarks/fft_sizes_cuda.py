"""cuFFT time of the engine's per-rotation-pair transforms for candidate grid sizes.

For each grid (z, y, x): the complex inverse 3-D FFT and the forward pass along x that the
packed fast path runs per pair of rotations (:class:`tomomatch.matching.PairPacker`), in ms.
Seed sizes: data 74 x 720 x 510 (zyx) unsplit, 74 x 720 x 230 per x-tile of three.

Usage (GPU machine): ``python benchmarks/fft_sizes_cuda.py``
"""

import torch

GRIDS = [
    (75, 720, 512),
    (80, 720, 512),
    (81, 720, 512),
    (90, 720, 512),
    (80, 768, 512),
    (75, 720, 240),
    (80, 720, 240),
    (80, 720, 243),
    (80, 720, 250),
    (80, 720, 256),
]


def timed(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main():
    print("| grid (z, y, x) | voxels (M) | ifftn c2c ms | fft along x ms | sum ms | ns per voxel |")
    print("|---|---|---|---|---|---|")
    for g in GRIDS:
        x = torch.randn(g, dtype=torch.complex64, device="cuda")
        t_inv = timed(lambda x=x: torch.fft.ifftn(x, dim=(-3, -2, -1)))
        t_x = timed(lambda x=x: torch.fft.fft(x, dim=-1))
        n = g[0] * g[1] * g[2]
        print(
            f"| {g} | {n / 1e6:.1f} | {t_inv:.3f} | {t_x:.3f} | {t_inv + t_x:.3f} | {1e6 * (t_inv + t_x) / n:.2f} |",
            flush=True,
        )
        del x
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
