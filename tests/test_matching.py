"""Tests of the correlation engine (tomomatch.matching) on small simulated volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from tomomatch import matching as M
from tomomatch.errors import InputError
from tomomatch.matching import EngineConfig
from tomomatch.matching import fft as FFT
from tomomatch.matching import fold as F

N = 16


def _template(n=N):
    z, y, x = np.indices((n, n, n)) - n // 2
    t = (
        np.exp(-((x - 2) ** 2 + y**2 + (z + 1) ** 2) / 4.0)
        + 0.7 * np.exp(-((x + 2) ** 2 + (y - 3) ** 2 + z**2) / 3.0)
        + 0.5 * np.exp(-(x**2 + (y + 2) ** 2 + (z - 3) ** 2) / 2.0)
    )
    return t.astype(np.float32)


def _sphere(n=N, r=6.5):
    z, y, x = np.indices((n, n, n)) - n // 2
    return (np.sqrt(x**2 + y**2 + z**2) <= r).astype(np.float32)


def _ellipsoid(n=N):
    z, y, x = np.indices((n, n, n)) - n // 2
    return (((x / 7.0) ** 2 + (y / 5.0) ** 2 + (z / 4.0) ** 2) <= 1).astype(np.float32)


ROTS = Rotation.random(12, random_state=3).as_matrix()
TRUTH = [((10, 12, 14), 3), ((28, 30, 20), 7), ((20, 36, 33), 11)]


def _tomogram(noise=0.05, shape=(40, 48, 46), template=None, seed=1, truth=TRUTH):
    t = _template() if template is None else template
    vol = np.zeros(shape)
    for (pz, py, px), k in truth:
        tr = M.rotate_volume(t, ROTS[k], order=3)
        vol[pz - N // 2 : pz + N - N // 2, py - N // 2 : py + N - N // 2, px - N // 2 : px + N - N // 2] += tr
    return vol + np.random.default_rng(seed).normal(0, noise, shape) if noise else vol


def _peak_near(scores, p, r=2):
    sl = tuple(slice(c - r, c + r + 1) for c in p)
    i = np.unravel_index(np.argmax(scores[sl]), scores[sl].shape)
    return tuple(c - r + d for c, d in zip(p, i))


# --------------------------------------------------------------------------- helpers


def test_place_centered_moves_centre_to_origin():
    box = torch.zeros(5, 4, 3)
    box[5 // 2, 4 // 2, 3 // 2] = 1.0
    out = M.place_centered(box, (8, 8, 8))
    assert out[0, 0, 0] == 1.0 and float(out.sum()) == 1.0
    box[0, 0, 0] = 2.0  # offset (-2, -2, -1) from the centre wraps to the end
    out = M.place_centered(box, (8, 8, 8))
    assert out[6, 6, 7] == 2.0


def test_rotate_volume_follows_pose_convention():
    """particle(r) = template(R^T r): a point at +x rotated 90 deg about z goes to +y."""
    vol = np.zeros((9, 9, 9))
    vol[4, 4, 6] = 1.0  # x = +2
    rz90 = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    out = M.rotate_volume(vol, rz90, order=1)
    assert np.unravel_index(np.argmax(out), out.shape) == (4, 6, 4)  # y = +2


def test_normalise_under_mask_soft_mask():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(8, 8, 8))
    m = rng.uniform(0, 1, size=(8, 8, 8))
    tn = M.normalise_under_mask(torch.as_tensor(t), torch.as_tensor(m)).numpy()
    that = np.divide(tn, m)
    assert np.isclose(np.sum(m * that), 0, atol=1e-8)
    assert np.isclose(np.sum(m * that**2), m.sum(), rtol=1e-8)


def test_fast_fft_shape_is_5_smooth():
    for n in (17, 74, 510, 97):
        f = M.fast_fft_shape([n])[0]
        assert f >= n
        k = f
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        assert k == 1


def test_cuda_absent_is_input_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(InputError):
        M.resolve_device("cuda")
    with pytest.raises(InputError):
        M.resolve_device("tpu")


# --------------------------------------------------------------------------- FLCF reference


def _reference_flcf(vol, template, mask, mask_r, rot, pos):
    """Direct sum over voxels of the mask-weighted Pearson correlation at one position.

    The template is normalised under the mask, rotated (cubic spline), and normalised again
    under the rotated mask (the engine's documented order of operations)."""
    w0 = mask.sum()
    mu0 = np.sum(mask * template) / w0
    t0 = mask * (template - mu0) / np.sqrt(np.sum(mask * (template - mu0) ** 2) / w0)
    t_r = M.rotate_volume(t0, rot, order=3)
    w = mask_r.sum()
    mu_t = np.sum(mask_r * t_r) / w
    sd_t = np.sqrt(np.sum(mask_r * (t_r - mu_t) ** 2) / w)
    that = (t_r - mu_t) / sd_t
    c = N // 2
    patch = vol[pos[0] - c : pos[0] - c + N, pos[1] - c : pos[1] - c + N, pos[2] - c : pos[2] - c + N]
    mu_v = np.sum(mask_r * patch) / w
    sd_v = np.sqrt(np.sum(mask_r * (patch - mu_v) ** 2) / w)
    return np.sum(mask_r * that * (patch - mu_v)) / (w * sd_v)


@pytest.mark.parametrize("mask_kind", ["sphere", "ellipsoid"])
def test_exact_flcf_matches_direct_sum(mask_kind):
    rng = np.random.default_rng(5)
    vol = 0.2 * rng.normal(size=(30, 32, 34))
    vol[8:24, 8:24, 9:25] += 2 * M.rotate_volume(_template(), ROTS[2], order=3)
    mask = _sphere() if mask_kind == "sphere" else _ellipsoid()
    # soft edge for the sphere, to exercise weights
    if mask_kind == "sphere":
        z, y, x = np.indices((N, N, N)) - N // 2
        mask = np.clip(6.8 - np.sqrt(x**2 + y**2 + z**2), 0, 1).astype(np.float32)
    tc = M.TileCorrelator(vol, _template(), mask, tuple(slice(0, s) for s in vol.shape), method="exact")
    assert tc.spherical == (mask_kind == "sphere")
    for k in (2, 5):
        s = tc.scores(ROTS[k])[0][0].numpy()
        mask_r = mask.astype(np.float64) if tc.spherical else np.clip(M.rotate_volume(mask, ROTS[k], order=1), 0, None)
        for pos in [(16, 16, 17), (12, 20, 15), (18, 11, 22)]:
            ref = _reference_flcf(vol, _template().astype(np.float64), mask.astype(np.float64), mask_r, ROTS[k], pos)
            assert s[pos] == pytest.approx(ref, abs=2e-4), (k, pos)
    # the true pose scores high, another one lower
    assert tc.scores(ROTS[2])[0][0, 16, 16, 17] > 0.7


# --------------------------------------------------------------------------- simulated search


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_finds_true_positions_and_rotations(method):
    vol = _tomogram(noise=0.2)
    res = M.match_volume(vol, _template(), _sphere(), ROTS, method=method, batch_size=5)
    assert res.scores.dtype == np.float32
    for p, k in TRUTH:
        assert _peak_near(res.scores, p) == p
        assert res.angles[p] == k
        assert res.scores[p] > 0.5
    # background far below the peaks
    assert np.median(res.scores) < 0.4
    assert res.n_voxels == vol.size and res.n_rotations == len(ROTS)


def test_noise_free_copy_scores_one():
    vol = _tomogram(noise=0)
    ex = M.match_volume(vol, _template(), _sphere(), ROTS, method="exact")
    fa = M.match_volume(vol, _template(), _sphere(), ROTS, method="fast")
    for p, k in TRUTH:  # rotated copies: only interpolation differs (mask edge rotated first)
        assert ex.scores[p] == pytest.approx(1.0, abs=0.005)
        assert fa.scores[p] == pytest.approx(1.0, abs=0.01)
    # an unrotated copy with the identity among the rotations: exactly 1
    vol = np.zeros((30, 30, 30))
    vol[5:21, 9:25, 7:23] = _template()
    rots = np.concatenate([ROTS[:3], np.eye(3)[None]])
    ex = M.match_volume(vol, _template(), _sphere(), rots, method="exact")
    fa = M.match_volume(vol, _template(), _sphere(), rots, method="fast")
    assert ex.scores[13, 17, 15] == pytest.approx(1.0, abs=1e-4) and ex.angles[13, 17, 15] == 3
    assert fa.scores[13, 17, 15] == pytest.approx(1.0, abs=0.003) and fa.angles[13, 17, 15] == 3


def _bandpass_weight(low_frac):
    def weight(shape):
        qz = torch.fft.fftfreq(shape[0])[:, None, None]
        qy = torch.fft.fftfreq(shape[1])[None, :, None]
        qx = torch.fft.rfftfreq(shape[2])[None, None, :]
        q = torch.sqrt(qz**2 + qy**2 + qx**2)
        return torch.exp(-0.5 * (q / low_frac) ** 2)

    return weight


@pytest.mark.parametrize("method,tol", [("fast", 0.005), ("resample", 0.01)])
@pytest.mark.parametrize("weighted", [False, True])
def test_fast_matches_exact(weighted, method, tol):
    """Same peaks (position, rotation) and peak scores within 1 % of the exact path."""
    vol = _tomogram(noise=0.2)
    w = _bandpass_weight(0.2) if weighted else None
    ex = M.match_volume(vol, _template(), _sphere(), ROTS, method="exact", weight=w)
    fa = M.match_volume(vol, _template(), _sphere(), ROTS, method=method, weight=w)
    for p, k in TRUTH:
        assert _peak_near(fa.scores, p) == _peak_near(ex.scores, p) == p
        assert fa.angles[p] == ex.angles[p] == k
        assert fa.scores[p] == pytest.approx(ex.scores[p], rel=tol)
    # the whole map agrees closely too
    assert np.abs(fa.scores - ex.scores).max() < 5 * tol
    assert fa.std == pytest.approx(ex.std, rel=2 * tol)


@pytest.mark.parametrize("backend", ["1", "0"])
def test_inverse_fft_backends_agree(backend):
    engine = EngineConfig(fftw=backend == "1")
    x = torch.fft.rfftn(torch.randn(3, 10, 12, 15), dim=(1, 2, 3))
    want = torch.fft.irfftn(x, s=(10, 12, 15), dim=(1, 2, 3))
    got = FFT._irfftn_scratch(x.clone(), (10, 12, 15), engine)
    assert torch.allclose(got, want, atol=1e-5)
    box = torch.randn(2, 6, 6, 6)
    pr = M.BoxToTilePruned(6, (10, 12, 15), engine=engine)
    full = torch.fft.rfftn(torch.nn.functional.pad(box, (0, 9, 0, 6, 0, 4)), dim=(1, 2, 3))
    assert torch.allclose(pr(box), full, atol=1e-4)


def test_pruned_transform_equals_full_fft():
    box = torch.as_tensor(np.random.default_rng(2).normal(size=(2, 8, 8, 8)), dtype=torch.float32)
    shape = (10, 12, 15)
    pr = M.BoxToTilePruned(8, shape, engine=EngineConfig())
    got = pr(box) * torch.conj(pr.phase())  # centred convention
    want = torch.fft.rfftn(M.place_centered(box, shape), dim=(1, 2, 3))
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("n", [8, 9])
def test_pair_packer_equals_two_direct_correlations(n):
    """One complex transform gives both boxes' circular correlations (numpy reference)."""
    rng = np.random.default_rng(n)
    shape = (11, 14, 13)
    vol = rng.normal(size=shape)
    boxes = rng.normal(size=(3, n, n, n))  # odd count: the last pair has an empty partner
    pk = M.PairPacker(n, shape, engine=EngineConfig())
    v = torch.fft.fftn(torch.as_tensor(vol, dtype=torch.complex64)) * pk.phase()
    got = list(pk.correlations(torch.as_tensor(boxes, dtype=torch.float32), v))
    assert len(got) == 2
    c = n // 2
    for k in range(3):
        # corr(r) = sum_j box[j] vol[r + j - c], circular
        want = np.zeros(shape)
        for j in np.ndindex(n, n, n):
            want += boxes[k][j] * np.roll(vol, tuple(c - a for a in j), axis=(0, 1, 2))
        part = got[k // 2].real if k % 2 == 0 else got[k // 2].imag
        assert np.abs(part.numpy() - want).max() < 1e-3 * np.abs(want).max()
    assert float(got[1].imag.abs().max()) < 1e-4


@pytest.mark.parametrize("pairs", [1, 3])
def test_pair_packer_fftw_x_pass_equals_torch(pairs):
    """The CPU's FFTW x pass gives torch's transform (also for a shorter later batch)."""
    pytest.importorskip("pyfftw")
    rng = np.random.default_rng(pairs)
    shape, n = (11, 14, 13), 6
    v = torch.fft.fftn(torch.as_tensor(rng.normal(size=shape), dtype=torch.complex64))
    boxes = torch.as_tensor(rng.normal(size=(2 * pairs, n, n, n)), dtype=torch.float32)
    ref = M.PairPacker(n, shape, engine=EngineConfig(fftw=True))
    assert not ref._use_fftw()  # small grid: torch
    want = ref.correlations(boxes, v * ref.phase())
    pk = M.PairPacker(n, shape, engine=EngineConfig(fftw=True, fftw_min_voxels=0))
    assert pk._use_fftw()
    got = pk.correlations(boxes, v * pk.phase())
    assert torch.allclose(got, want, atol=1e-4)
    short = pk.correlations(boxes[:1], v * pk.phase())  # one rotation, stale pairs in the buffer
    assert torch.allclose(short[0], ref.correlations(boxes[:1], v * ref.phase())[0], atol=1e-4)
    assert pk._fftw is not None


def test_engine_description_names_the_cpu_fft_library(monkeypatch):
    pytest.importorskip("pyfftw")
    monkeypatch.setenv("TOMOMATCH_FFTW", "1")
    big, small = EngineConfig().fftw_min_voxels, EngineConfig().fftw_min_voxels - 1
    assert M.engine_description("cpu", "fast", True, big)["fft_library"] == "torch+fftw"
    assert M.engine_description("cpu", "fast", True, small)["fft_library"] == "torch"
    assert M.engine_description("cpu", "fast", False, big)["fft_library"] == "pyfftw"  # unpacked path
    monkeypatch.setenv("TOMOMATCH_FFTW", "0")
    assert M.engine_description("cpu", "fast", True, big)["fft_library"] == "torch"
    assert M.engine_description("cpu", "fast", False, big)["fft_library"] == "scipy"


@pytest.mark.parametrize("weighted", [False, True])
def test_packed_pairs_equal_unpacked_fast_path(weighted):
    """The GPU default (rotation pairs in one complex FFT) gives the CPU path's numbers."""
    vol = _tomogram(noise=0.2, shape=(24, 27, 29), truth=[((12, 13, 14), 4)])
    unique = (slice(2, 21), slice(1, 27), slice(3, 25))
    w = _bandpass_weight(0.2) if weighted else None
    rp = M.phase_randomised_template(_template(), _sphere())
    kw = dict(weight=w, random_phase_template=rp)
    a = M.TileCorrelator(vol, _template(), _sphere(), unique, packed=False, **kw)
    b = M.TileCorrelator(vol, _template(), _sphere(), unique, packed=True, **kw)
    assert b.packed and not a.packed
    for got, want in zip(b.scores(ROTS[:5]), a.scores(ROTS[:5])):  # odd batch
        assert torch.allclose(got, want, atol=2e-6)
    sa, sb = a.run(ROTS, batch_size=5), b.run(ROTS, batch_size=5)
    assert torch.allclose(sa.best, sb.best, atol=2e-6)
    assert torch.allclose(sa.noise_best, sb.noise_best, atol=2e-6)
    # rotation indices agree wherever the best two rotations are not within round-off
    all_a = a.scores(ROTS)[0]
    top2 = torch.topk(all_a, 2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-5
    assert clear.float().mean() > 0.95
    assert torch.equal(sa.index[clear], sb.index[clear])
    assert sb.sum == pytest.approx(sa.sum, rel=1e-5, abs=1e-3)
    assert sb.sumsq == pytest.approx(sa.sumsq, rel=1e-5)


def test_fused_pair_fold_equals_batch_update():
    """CUDA folds packed pairs with a compiled fold_pair; eagerly here, same numbers."""
    vol = _tomogram(noise=0.2, shape=(24, 27, 29), truth=[((12, 13, 14), 4)])
    unique = (slice(2, 21), slice(1, 27), slice(3, 25))
    rp = M.phase_randomised_template(_template(), _sphere())
    tc = M.TileCorrelator(vol, _template(), _sphere(), unique, random_phase_template=rp)
    ref = tc.run(ROTS[:11], batch_size=4)  # per-batch path; batches 4, 4, 3 (odd tail)
    st = M.TileState.empty(ref.best.shape, "cpu", random_phase=True)
    ids = torch.arange(12, dtype=torch.int32)
    for s0 in range(0, 11, 4):
        tc._fold_batch(M.fold_pair, ROTS[s0 : min(11, s0 + 4)], s0, st, ids)
    assert torch.equal(st.best, ref.best) and torch.equal(st.index, ref.index)
    assert torch.equal(st.noise_best, ref.noise_best)
    assert st.count == ref.count
    assert np.allclose(st.rotation_sums, ref.rotation_sums, rtol=1e-5, atol=1e-4)
    assert np.allclose(st.rotation_sumsqs, ref.rotation_sumsqs, rtol=1e-5)
    # the fold itself against a direct computation on random maps
    g = torch.Generator().manual_seed(0)
    pair, inv = torch.randn(5, 6, 7, 2, generator=g), torch.rand(5, 6, 7, generator=g)
    best, index = torch.randn(5, 6, 7, generator=g), torch.full((5, 6, 7), 3, dtype=torch.int32)
    pair[0, 0, 0] = torch.tensor([0.5, 0.5])  # a tie keeps the lower index
    best[0, 0, 0] = -10.0
    b0, i0 = best.clone(), index.clone()
    stats = M.fold_pair(pair, inv, best, index, torch.tensor(10, dtype=torch.int32))
    a, b = pair[..., 0] * inv, pair[..., 1] * inv
    want = torch.maximum(b0, torch.maximum(a, b))
    assert torch.equal(best, want)
    want_i = torch.where(b > torch.maximum(a, b0), 11, torch.where(a > b0, 10, i0))
    assert torch.equal(index, want_i.int()) and int(index[0, 0, 0]) == 10
    assert torch.allclose(stats.float(), torch.stack([a.sum(), b.sum(), (a * a).sum(), (b * b).sum()]), rtol=1e-5)


def test_fused_fold_policy(monkeypatch):
    monkeypatch.setattr(F, "_FOLDERS", {"cpu": "compiled-cpu", "cuda": "compiled-cuda"})
    monkeypatch.setattr(F, "_FUSED_DISABLED", set())
    monkeypatch.setattr(F, "_triton_fold_pairs", lambda: "triton-kernel")
    monkeypatch.setattr(F, "_triton_self_check", lambda fold, device: True)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto, on, off = EngineConfig(), EngineConfig(fused="1"), EngineConfig(fused="0")
    assert F._pair_folder(cpu, 1000, auto) is None  # small tiles: not worth compiling
    assert F._pair_folder(cpu, 1 << 23, auto) == "compiled-cpu"  # big CPU tiles: compiled fold
    assert F._pair_folder(cuda, 1000, auto) == "triton-kernel"  # CUDA: the Triton kernel
    monkeypatch.setattr(F, "_triton_fold_pairs", lambda: None)
    assert F._pair_folder(cuda, 1 << 23, auto) is None  # CUDA without Triton: separate kernels
    assert F._pair_folder(cpu, 1000, on) == "compiled-cpu" and F._pair_folder(cuda, 10, on) == "compiled-cuda"
    assert F._pair_folder(cpu, 1 << 23, off) is None
    F._FUSED_DISABLED.add("cpu")  # a fused kernel that failed once is not tried again
    assert F._pair_folder(cpu, 1 << 23, on) is None


_TRITON_SCRIPT = r"""
import sys, numpy as np, torch
sys.path.insert(0, {tests!r})
from test_matching import _tomogram, _template, _sphere, ROTS
from tomomatch import matching as M
from tomomatch.matching import fold as F
from tomomatch.matching._triton_fold import fold_pairs

# 1. the kernel against fold_pair applied pair after pair (odd and even batches)
g = torch.Generator().manual_seed(0)
corr = torch.complex(torch.randn(3, 6, 7, 9, generator=g), torch.randn(3, 6, 7, 9, generator=g))
unique = (slice(1, 5), slice(0, 7), slice(2, 8))
inv = torch.rand(4, 7, 6, generator=g)
best0, idx0 = torch.randn(4, 7, 6, generator=g), torch.full((4, 7, 6), 7, dtype=torch.int32)
best0[0, 0, 0] = -9.0
corr[0, 1, 0, 2] = complex(0.5, 0.5)  # a tie inside a pair keeps the lower index
for n_valid in (6, 5):
    best, index = best0.clone(), idx0.clone()
    stats = fold_pairs(corr, unique, inv, best, index, 10, n_valid)
    rb, ri, ref = best0.clone(), idx0.clone(), []
    for p in range(3):
        pair = torch.view_as_real(corr[p])[unique]
        if 2 * p + 1 < n_valid:
            v = M.fold_pair(pair, inv, rb, ri, torch.tensor(10 + 2 * p, dtype=torch.int32))
            ref += [(v[0], v[2]), (v[1], v[3])]
        else:
            a = pair[..., 0] * inv
            gt = a > rb
            rb = torch.maximum(rb, a)
            ri.masked_fill_(gt, 10 + 2 * p)
            ref.append((a.double().sum(), (a.double() ** 2).sum()))
    assert torch.equal(best, rb) and torch.equal(index, ri), n_valid
    assert int(index[0, 0, 0]) == 10
    assert torch.allclose(stats, torch.tensor([[float(x), float(y)] for x, y in ref], dtype=torch.float64),
                          rtol=1e-5, atol=1e-4)

# 1b. several blocks (the unique region spans more than one block of 1024 voxels)
from tomomatch.matching import _triton_fold
corr = torch.complex(torch.randn(2, 14, 12, 13, generator=g), torch.randn(2, 14, 12, 13, generator=g))
unique = (slice(1, 13), slice(1, 11), slice(0, 11))  # 12 x 10 x 11 = 1320 voxels
assert 12 * 10 * 11 > _triton_fold.BLOCK
inv = torch.rand(12, 10, 11, generator=g)
best, index = torch.full((12, 10, 11), -float("inf")), torch.full((12, 10, 11), -1, dtype=torch.int32)
stats = fold_pairs(corr, unique, inv, best, index, 0, 4)
scores = torch.stack([torch.view_as_real(corr[p])[unique][..., c] * inv for p in range(2) for c in range(2)])
vals, arg = torch.max(scores, dim=0)
assert torch.equal(best, vals) and torch.equal(index, arg.int())
want = torch.stack([scores.double().sum((1, 2, 3)), (scores.double() ** 2).sum((1, 2, 3))], 1)
assert torch.allclose(stats, want, rtol=1e-5, atol=1e-4)

# 2. the start-up self-check passes, and rejects a kernel that gets the index wrong
assert F._triton_self_check(fold_pairs, torch.device("cpu"))
def wrong(corr, unique, inv, best, index, start, n_valid):
    out = fold_pairs(corr, unique, inv, best, index, start, n_valid)
    index += 1
    return out
import warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    F._TRITON_CHECKED.clear()
    assert not F._triton_self_check(wrong, torch.device("cpu"))
    assert any("numbers differ" in str(x.message) for x in w)
F._TRITON_CHECKED.clear()

# 3. a whole tile search through the kernel equals the per-batch path
vol = _tomogram(noise=0.2, shape=(24, 27, 29), truth=[((12, 13, 14), 4)])
uq = (slice(2, 21), slice(1, 27), slice(3, 25))
tc = M.TileCorrelator(vol, _template(), _sphere(), uq)  # the environment's engine: fused="triton"
assert tc.engine.fused == "triton" and tc.engine.triton_interpret
assert F._pair_folder(torch.device("cpu"), 10, tc.engine) is fold_pairs
fused = tc.run(ROTS[:11], batch_size=4)
import dataclasses
plain = M.TileCorrelator(vol, _template(), _sphere(), uq,
                         engine=dataclasses.replace(tc.engine, fused="0")).run(ROTS[:11], batch_size=4)
assert torch.equal(fused.best, plain.best) and torch.equal(fused.index, plain.index)
assert np.allclose(fused.rotation_sums, plain.rotation_sums, rtol=1e-5, atol=1e-4)
assert np.allclose(fused.rotation_sumsqs, plain.rotation_sumsqs, rtol=1e-5)
assert fused.count == plain.count
print("TRITON-OK")
"""


def test_triton_fold_kernel_in_interpreter(tmp_path):
    """The CUDA kernel's numbers, run by Triton's CPU interpreter (a fresh process: the
    interpreter is chosen when the kernel module is imported)."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "t.py"
    script.write_text(_TRITON_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = dict(os.environ, TRITON_INTERPRET="1", TOMOMATCH_FUSED="triton")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "TRITON-OK" in res.stdout, res.stderr[-3000:]


def test_cufft_friendly_lengths():
    # 2^a 3^b 5^c with b <= 2, c <= 1: 75 = 3 x 5^2 -> 80; 720 = 2^4 3^2 5 stays; 721 -> 768
    assert [FFT._cufft_friendly_len(m) for m in (74, 75, 80, 229, 510, 720, 721)] == [80, 80, 80, 240, 512, 720, 768]
    # the cuFFT rule is for CUDA only: the CPU keeps 5-smooth sizes
    assert M.grid_shape((74, 720, 510), "cpu", EngineConfig(fft_sizes="cuda")) == M.fast_fft_shape((74, 720, 510))


def test_packed_is_the_default_for_spherical_masks(monkeypatch):
    vol = _tomogram(noise=0.2, shape=(24, 26, 28), truth=[((12, 13, 14), 4)])
    unique = tuple(slice(0, s) for s in vol.shape)
    monkeypatch.delenv("TOMOMATCH_PACKED", raising=False)
    assert M.TileCorrelator(vol, _template(), _sphere(), unique).packed
    assert not M.TileCorrelator(vol, _template(), _sphere(), unique, method="resample").packed
    monkeypatch.setenv("TOMOMATCH_PACKED", "0")
    assert not M.TileCorrelator(vol, _template(), _sphere(), unique).packed
    # never for a non-spherical mask (its per-rotation sigma needs the real-to-complex path)
    assert not M.TileCorrelator(vol, _template(), _ellipsoid(), unique).packed


def test_fast_matches_exact_non_spherical_mask():
    vol = _tomogram(noise=0.2)
    mask = _ellipsoid()
    ex = M.match_volume(vol, _template(), mask, ROTS[:8], method="exact")
    fa = M.match_volume(vol, _template(), mask, ROTS[:8], method="fast")
    for p, k in TRUTH[:2]:
        assert fa.angles[p] == ex.angles[p] == k
        assert fa.scores[p] == pytest.approx(ex.scores[p], rel=0.01)


def test_statistics_are_over_every_score():
    vol = _tomogram(noise=0.2, shape=(24, 26, 28), truth=[((12, 13, 14), 4)])
    tc = M.TileCorrelator(vol, _template(), _sphere(), (slice(2, 20), slice(0, 26), slice(3, 28)))
    # same batch boundaries as run(): the packed path pairs rotations within a batch
    all_scores = torch.cat([tc.scores(ROTS[i : i + 5])[0] for i in range(0, 12, 5)]).double()
    st = tc.run(ROTS, batch_size=5)
    assert st.count == all_scores.numel() == 18 * 26 * 25 * 12
    assert st.sum == pytest.approx(float(all_scores.sum()), rel=1e-5, abs=1e-3)
    assert st.sumsq == pytest.approx(float((all_scores**2).sum()), rel=1e-5)
    assert torch.equal(st.best, all_scores.max(0).values.float())
    assert torch.equal(st.index, all_scores.argmax(0))


def test_batching_does_not_change_results():
    vol = _tomogram(noise=0.2, shape=(24, 26, 28), truth=[((12, 13, 14), 4)])
    unique = tuple(slice(0, s) for s in vol.shape)
    tc = M.TileCorrelator(vol, _template(), _sphere(), unique)
    a = tc.run(ROTS, batch_size=1)
    b = tc.run(ROTS, batch_size=7)
    assert torch.allclose(a.best, b.best, atol=1e-6)
    assert torch.equal(a.index, b.index)


def test_random_phase_subtracts_noise_maximum():
    vol = _tomogram(noise=0.2)
    plain = M.match_volume(vol, _template(), _sphere(), ROTS)
    rp = M.match_volume(vol, _template(), _sphere(), ROTS, random_phase=True)
    noise = M.phase_randomised_template(_template(), _sphere())
    tm = _template() * _sphere()
    a_n, a_t = np.abs(np.fft.rfftn(noise)).ravel(), np.abs(np.fft.rfftn(tm)).ravel()
    assert np.corrcoef(a_n, a_t)[0, 1] > 0.9  # same amplitude spectrum (up to the support constraint)
    assert abs(np.corrcoef(noise.ravel(), tm.ravel())[0, 1]) < 0.5  # but not the template
    assert np.array_equal(noise, M.phase_randomised_template(_template(), _sphere()))  # seeded
    assert np.all(noise[_sphere() == 0] == 0)
    for p, k in TRUTH:  # the subtracted noise maximum may move a peak by one voxel
        assert max(abs(a - b) for a, b in zip(_peak_near(rp.scores, p), p)) <= 1
    # the correction is score - noise_max + mean(noise_max), noise_max from matching the
    # phase-randomised template on its own
    nz = M.match_volume(vol, noise, _sphere(), ROTS)
    expect = plain.scores.astype(np.float64) - nz.scores + nz.scores.mean()
    assert rp.noise_mean == pytest.approx(float(nz.scores.mean()), rel=1e-5)
    assert np.allclose(rp.scores, expect, atol=2e-5)
    # the peaks still stand far above the corrected background
    assert min(rp.scores[p] for p, _ in TRUTH) > np.percentile(rp.scores, 99.5)


def test_nan_tomogram_is_input_error():
    vol = _tomogram(noise=0.2, shape=(24, 26, 28), truth=[((12, 13, 14), 4)])
    vol[3, 3, 3] = np.nan
    with pytest.raises(InputError):
        M.match_volume(vol, _template(), _sphere(), ROTS[:2])


def test_template_larger_than_tile_is_input_error():
    with pytest.raises(InputError):
        M.TileCorrelator(np.zeros((10, 30, 30)), _template(), _sphere(), (slice(0, 10),) * 3)
    with pytest.raises(InputError):
        M.TileCorrelator(np.zeros((30, 30, 30)), _template(), _sphere(8 * 2 + 1, 3), (slice(0, 10),) * 3)


# --------------------------------------------------------------------------- engine configuration


_ENGINE_VARS = (
    "TOMOMATCH_FFT_SIZES",
    "TOMOMATCH_FFTW",
    "TOMOMATCH_FFTW_MIN_VOXELS",
    "TOMOMATCH_PACKED",
    "TOMOMATCH_FUSED",
    "TRITON_INTERPRET",
)


def test_engine_config_from_environment(monkeypatch):
    import dataclasses
    import json

    for k in _ENGINE_VARS:
        monkeypatch.delenv(k, raising=False)
    assert EngineConfig.from_environment() == EngineConfig()
    for k, v in zip(_ENGINE_VARS, ("cuda", "0", "5", "0", "triton", "1")):
        monkeypatch.setenv(k, v)
    cfg = EngineConfig.from_environment()
    assert cfg == EngineConfig(
        fft_sizes="cuda", fftw=False, fftw_min_voxels=5, packed=False, fused="triton", triton_interpret=True
    )
    assert EngineConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.packed = True
    # a value the engine does not know is an error naming the variable, not a silent default
    for var, bad in [
        ("TOMOMATCH_FUSED", "2"),
        ("TOMOMATCH_PACKED", "yes"),
        ("TOMOMATCH_FFTW", "on"),
        ("TOMOMATCH_FFTW_MIN_VOXELS", "-1"),
        ("TOMOMATCH_FFTW_MIN_VOXELS", "2e6"),
        ("TOMOMATCH_FFT_SIZES", "fast"),
    ]:
        with pytest.raises(InputError, match=var):
            EngineConfig.from_environment({var: bad})
    for bad in (dict(fused="2"), dict(fft_sizes="x"), dict(packed=1), dict(fftw_min_voxels=-1)):
        with pytest.raises(ValueError):
            EngineConfig(**bad)


def test_correlator_keeps_the_engine_it_was_built_with(monkeypatch):
    """The environment is read once, when the correlator is built; later changes do not reach it."""
    vol = _tomogram(noise=0.2, shape=(24, 26, 28), truth=[((12, 13, 14), 4)])
    unique = tuple(slice(0, s) for s in vol.shape)
    monkeypatch.setenv("TOMOMATCH_PACKED", "1")
    tc = M.TileCorrelator(vol, _template(), _sphere(), unique)
    monkeypatch.setenv("TOMOMATCH_PACKED", "0")
    monkeypatch.setenv("TOMOMATCH_FUSED", "2")  # would be an error if read again
    assert tc.packed and tc.engine == EngineConfig()
    st = tc.run(ROTS[:4], batch_size=4)
    explicit = M.TileCorrelator(vol, _template(), _sphere(), unique, engine=EngineConfig()).run(ROTS[:4], batch_size=4)
    assert torch.equal(st.best, explicit.best) and torch.equal(st.index, explicit.index)
    with pytest.raises(TypeError):
        M.TileCorrelator(vol, _template(), _sphere(), unique, engine={"packed": False})


# --------------------------------------------------------------------------- no silent fallbacks


def test_slightly_non_spherical_mask_does_not_take_the_spherical_path():
    """The spherical shortcut (one local sigma per tile, packed pairs) is for masks invariant
    under rotation within 1e-5 of their maximum: a mask off by a few voxels, or by 2 % on a
    few voxels, takes the rotated-mask path (the old fallback accepted 5 %)."""
    hard = _sphere()
    z, y, x = np.indices((N, N, N)) - N // 2
    soft = np.clip(6.8 - np.sqrt(x**2 + y**2 + z**2), 0, 1).astype(np.float32)
    for m in (hard, soft):
        assert M.is_spherical_mask(m) and M.is_spherical_mask(torch.as_tensor(m))
    c = N // 2
    bumped = hard.copy()
    bumped[c, c, c + 7] = bumped[c, c + 7, c] = bumped[c - 7, c, c] = 1.0  # 3 voxels out of the sphere
    dented = soft.copy()
    dented[c, c, c + 2] *= 0.98  # 2 % off on a few interior voxels
    dented[c + 1, c - 3, c] *= 0.98
    dented[c - 2, c, c + 1] *= 0.98
    vol = _tomogram(noise=0.2, shape=(24, 26, 28), truth=[((12, 13, 14), 4)])
    unique = tuple(slice(0, s) for s in vol.shape)
    for m in (bumped, dented):
        assert not M.is_spherical_mask(m) and not M.is_spherical_mask(torch.as_tensor(m))
        tc = M.TileCorrelator(vol, _template(), m, unique)
        assert not tc.spherical and not tc.packed
    assert not M.is_spherical_mask(np.ones((N, N, N)))  # the box's corners leave the box when rotated


def _failing_folder(exc, after: int = 0):
    """A fused fold that works (as fold_pair) ``after`` times, then raises ``exc``."""
    calls = [0]

    def folder(*args):
        calls[0] += 1
        if calls[0] > after:
            raise exc
        return M.fold_pair(*args)

    return folder


@pytest.mark.parametrize("after", [0, 3])
def test_fused_kernel_compile_failure_falls_back_with_a_warning(monkeypatch, after):
    """Only a kernel that cannot be compiled here turns the fused path off; the batch it failed
    in is redone with separate kernels, giving the separate kernels' maps."""
    from torch._dynamo.exc import BackendCompilerFailed

    vol = _tomogram(noise=0.2, shape=(24, 27, 29), truth=[((12, 13, 14), 4)])
    unique = (slice(2, 21), slice(1, 27), slice(3, 25))
    ref = M.TileCorrelator(vol, _template(), _sphere(), unique, engine=EngineConfig(fused="0")).run(ROTS, batch_size=4)
    tc = M.TileCorrelator(vol, _template(), _sphere(), unique, engine=EngineConfig(fused="1"))
    monkeypatch.setattr(F, "_FUSED_DISABLED", set())
    exc = BackendCompilerFailed("inductor", RuntimeError("InvalidCxxCompiler: No working C++ compiler found"), None)
    monkeypatch.setattr(F, "_pair_folder", lambda device, n, engine: _failing_folder(exc, after))
    with pytest.warns(RuntimeWarning, match="fused kernel unavailable"):
        st = tc.run(ROTS, batch_size=4)
    assert F._FUSED_DISABLED == {"cpu"}
    assert torch.equal(st.best, ref.best) and torch.equal(st.index, ref.index)
    assert st.count == ref.count and len(st.rotation_sums) == len(ROTS)
    assert np.allclose(st.rotation_sums, ref.rotation_sums, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("The size of tensor a (5) must match the size of tensor b (6)"),
        ValueError("fold_pairs needs contiguous float32 best/inv_norm and int32 index"),
        MemoryError(),
    ],
)
def test_fused_kernel_shape_errors_raise(monkeypatch, exc):
    """A shape/dtype bug (or an out-of-memory) in the fused path raises: it does not turn the
    path off for the process behind a warning."""
    import warnings

    vol = _tomogram(noise=0.2, shape=(24, 27, 29), truth=[((12, 13, 14), 4)])
    tc = M.TileCorrelator(vol, _template(), _sphere(), (slice(2, 21), slice(1, 27), slice(3, 25)))
    monkeypatch.setattr(F, "_FUSED_DISABLED", set())
    monkeypatch.setattr(F, "_pair_folder", lambda device, n, engine: _failing_folder(exc))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(type(exc)):
            tc.run(ROTS, batch_size=4)
    assert not F._FUSED_DISABLED
    # what the dispatch treats as a compile failure, and what not
    from torch._dynamo.exc import BackendCompilerFailed, TorchRuntimeError

    assert F.is_compile_failure(BackendCompilerFailed("inductor", RuntimeError("x"), None))
    assert not F.is_compile_failure(TorchRuntimeError("RuntimeError when making fake tensor call"))
    assert not F.is_compile_failure(exc)


def test_run_restores_the_thread_count_also_on_error():
    """Small tiles run on one torch thread; the caller's count comes back, also after an error."""
    vol = _tomogram(noise=0.2, shape=(24, 26, 28), truth=[((12, 13, 14), 4)])
    tc = M.TileCorrelator(vol, _template(), _sphere(), tuple(slice(0, s) for s in vol.shape))
    before = torch.get_num_threads()
    seen = []

    def on_batch(st):
        seen.append(torch.get_num_threads())
        raise KeyboardInterrupt

    try:
        torch.set_num_threads(2)
        with pytest.raises(KeyboardInterrupt):
            tc.run(ROTS, batch_size=4, on_batch=on_batch)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
