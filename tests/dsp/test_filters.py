"""The numpy filters in gateway.dsp.filters against scipy.signal (which only the tests import)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import signal

from gateway.dsp.filters import butter_bandpass_sos, lfilter, sosfilt, sosfilt_zi


@pytest.mark.parametrize("fs", [10.0, 25.0, 30.0, 60.0, 100.0, 125.0, 256.0, 1000.0])
@pytest.mark.parametrize("band", [(0.5, 8.0), (0.4, 4.0), (1.0, 3.0)])
@pytest.mark.parametrize("order", [2, 4])
def test_butter_bandpass_matches_scipy(fs: float, band: tuple[float, float], order: int) -> None:
    lo, hi = band[0], min(band[1], 0.45 * fs)
    ref = signal.butter(order, [lo, hi], btype="bandpass", fs=fs, output="sos")
    ours = butter_bandpass_sos(order, lo, hi, fs)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sosfilt_zi(ours), signal.sosfilt_zi(ref), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("order", "hi", "fs"), [(2, 8.0, 12.0), (1, 8.0, 100.0), (3, 8.0, 100.0)])
def test_unrealisable_band_is_refused(order: int, hi: float, fs: float) -> None:
    with pytest.raises(ValueError, match="not realisable"):
        butter_bandpass_sos(order, 0.5, hi, fs)


@pytest.mark.parametrize("n", [0, 1, 5, 31, 32, 33, 1000, 2597])
def test_sosfilt_matches_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=n).cumsum() + 100.0  # a drifting signal far from zero, as a raw PPG
    sos = butter_bandpass_sos(2, 0.5, 8.0, 100.0)
    zi = sosfilt_zi(sos) * (x[0] if n else 0.0)
    ours = sosfilt(sos, x, zi)
    if n == 0:
        assert ours.shape == (0,)
        return
    ref, _ = signal.sosfilt(sos, x, zi=zi)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12 * float(np.max(np.abs(x))))


def test_sosfilt_step_from_zi_is_steady() -> None:
    sos = butter_bandpass_sos(2, 0.5, 8.0, 125.0)
    y = sosfilt(sos, np.full(500, 3.0), sosfilt_zi(sos) * 3.0)
    assert np.max(np.abs(y)) < 1e-9  # a band-pass passes no DC: a steady input gives a steady 0


@pytest.mark.parametrize("n", [1, 40, 1536, 1537, 5000])  # within one chunk of blocks, at its edge, several
def test_sosfilt_columns_match_scipy_column_by_column(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 3)).cumsum(axis=0) + np.array([100.0, -3.0, 0.0])  # each column its own level
    sos = butter_bandpass_sos(2, 0.5, 4.0, 25.0)
    zi = sosfilt_zi(sos)[:, :, None] * x[0]  # (sections, 2, columns): each column's own steady state
    ours = sosfilt(sos, x, zi)
    assert ours.shape == x.shape
    for c in range(3):
        ref, _ = signal.sosfilt(sos, x[:, c], zi=zi[:, :, c])
        np.testing.assert_allclose(ours[:, c], ref, rtol=1e-9, atol=1e-12 * float(np.max(np.abs(x[:, c]))))


@pytest.mark.parametrize("alpha", [0.02, 0.1, 0.5])
def test_lfilter_first_order_matches_scipy(alpha: float) -> None:
    x = np.random.default_rng(1).uniform(0.4, 1.2, size=4321)
    b, a = np.array([alpha]), np.array([1.0, alpha - 1.0])
    zi = np.array([(1.0 - alpha) * 0.8])
    ref, _ = signal.lfilter(b, a, x, zi=zi)
    np.testing.assert_allclose(lfilter(b, a, x, zi), ref, rtol=1e-12)


def test_importing_the_dsp_does_not_import_scipy_signal() -> None:
    code = "import sys, gateway.dsp, gateway.dsp.stream; print(sorted(m for m in sys.modules if m.startswith('scipy')))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
