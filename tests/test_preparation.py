"""The engine and hand's re-scoring see the same normalised, filtered tomogram."""

from __future__ import annotations

import numpy as np
import torch

from _synthetic import asymmetric_template, sphere_mask
from tomomatch import preparation
from tomomatch.mrcio import write_volume
from tomomatch.tiltseries import TiltSeries


def test_engine_and_hand_share_the_tomogram_preparation(tmp_path, monkeypatch):
    from tomomatch import job as job_mod
    from tomomatch.hand import rescore_particles
    from tomomatch.options import MatchOptions, WeightingOptions

    rng = np.random.default_rng(3)
    tomo = rng.normal(size=(20, 24, 28)).astype(np.float32) * 5 + 2
    tmpl, msk = asymmetric_template(12), sphere_mask(12, 5)
    write_volume(tmp_path / "v.mrc", tomo, 10.0)
    write_volume(tmp_path / "t.mrc", tmpl, 10.0)
    write_volume(tmp_path / "m.mrc", msk, 10.0)
    ts = TiltSeries(tilt_angles_deg=[-40.0, 0.0, 40.0], defocus_u_um=[3.0] * 3, hand=1)
    opts = MatchOptions(
        angular_step_deg=90.0, weighting=WeightingOptions(low_pass_angstrom=35.0, high_pass_angstrom=150.0, whiten=True)
    )
    plan = job_mod.plan_match(
        tmp_path / "t.mrc", tmp_path / "m.mrc", tmp_path / "v.mrc", tmp_path / "o", opts, tilt_series=ts
    )
    seen = []
    real = preparation.prepare_tomogram

    def spy(*a, **k):
        out = real(*a, **k)
        seen.append(out)
        return out

    monkeypatch.setattr(preparation, "prepare_tomogram", spy)
    ctx = job_mod._build_context_1(plan, torch.device("cpu"))
    w = opts.weighting
    rescore_particles(
        tomo,
        10.0,
        ts,
        tmpl,
        msk,
        [[14, 12, 10]],
        np.eye(3)[None],
        max_angle_deg=0,
        low_pass_angstrom=w.low_pass_angstrom,
        high_pass_angstrom=w.high_pass_angstrom,
        whiten=w.whiten,
    )
    assert len(seen) == 2
    engine, hand = seen
    assert torch.equal(engine.volume, ctx.volume)
    assert torch.equal(engine.volume, hand.volume)  # the same filtered tomogram, bit for bit
    assert set(engine.whitening) == set(hand.whitening) and (12, 12, 12) in hand.whitening
    for k in engine.whitening:
        assert torch.equal(engine.whitening[k], hand.whitening[k])
    # independent check: the high pass leaves (almost) no mean, the low pass removes the finest
    # frequencies (white noise in: most of its power lies beyond 1/35 A^-1)
    v = hand.volume.numpy().astype(np.float64)
    assert abs(v.mean()) < 1e-3
    k = np.sqrt(
        sum(
            g**2
            for g in np.meshgrid(
                np.fft.fftfreq(20, 10.0), np.fft.fftfreq(24, 10.0), np.fft.rfftfreq(28, 10.0), indexing="ij"
            )
        )
    )
    spec = np.abs(np.fft.rfftn(v)) ** 2
    assert spec[k > 1 / 30.0].sum() < 0.05 * spec.sum()
