"""The few IIR filter functions the DSP needs, in numpy alone (no ``scipy.signal``).

``scipy.signal`` costs about 75 MB of resident memory on import (it pulls in scipy.sparse, linalg,
special, spatial, interpolate and optimize), and the DSP used four of its functions. They are here:

- :func:`butter_bandpass_sos`: the digital Butterworth band-pass as second-order sections, designed as
  ``scipy.signal.butter(order, [lo, hi], btype="bandpass", fs=fs, output="sos")`` does: analog prototype
  poles, band-pass transformation, bilinear transform with pre-warped band edges, then poles paired into
  sections (the pair closest to the unit circle last, as ``zpk2sos`` orders them). tests/dsp checks the
  coefficients against scipy.
- :func:`sosfilt_zi`: the initial section states of the step response's steady state (as
  ``scipy.signal.sosfilt_zi``).
- :func:`sosfilt` and :func:`lfilter`: the filter itself (direct form II transposed per section, as scipy's),
  computed block by block instead of sample by sample so that numpy does the work: within a block of
  :data:`BLOCK` samples the output is the zero-state response (a matrix product with the impulse
  response's Toeplitz matrix) plus the free response of the block's initial state, and the initial states
  of up to :data:`CHUNK` blocks are themselves one matrix product (the recursion from block to block is
  linear), so no Python loop runs per block: 3 x faster than a loop over the blocks on a 10 s window at
  100 Hz. The result equals the sample-by-sample recursion up to floating-point rounding (tests/dsp
  compare with scipy to 1e-9 relative).

Designs are cached per parameter set: a stream designs its filter once per sampling rate.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]

BLOCK = 32  # samples per block: large enough that numpy does the work, small enough that T is cheap
CHUNK = 48  # blocks whose states are solved in one product (1,536 samples: a 10-15 s window at 100 Hz)


def _buttap(order: int) -> ComplexArray:
    """Analog Butterworth prototype poles (cut-off 1 rad/s)."""
    m = np.arange(-order + 1, order, 2)
    p: ComplexArray = -np.exp(1j * math.pi * m / (2 * order))
    return p


@lru_cache(maxsize=32)
def butter_bandpass_sos(order: int, lo_hz: float, hi_hz: float, fs: float) -> FloatArray:
    """Second-order sections (rows ``b0 b1 b2 1 a1 a2``) of a digital Butterworth band-pass of ``order``
    (2 x ``order`` poles) between ``lo_hz`` and ``hi_hz`` at sampling rate ``fs``. Even orders only:
    an odd order has a real prototype pole, whose band-pass poles can be real and need the general
    pairing of ``zpk2sos``; the DSP uses order 2."""
    if not (order >= 2 and order % 2 == 0 and 0.0 < lo_hz < hi_hz < fs / 2):
        raise ValueError(f"band-pass {lo_hz}-{hi_hz} Hz of order {order} at {fs} Hz is not realisable")
    fs2 = 2.0 * fs
    lo_w = fs2 * math.tan(math.pi * lo_hz / fs)  # pre-warped band edges (rad/s)
    hi_w = fs2 * math.tan(math.pi * hi_hz / fs)
    bw, wo = hi_w - lo_w, math.sqrt(lo_w * hi_w)
    # low-pass prototype -> band-pass (lp2bp_zpk): each pole splits into two, `order` zeros at 0
    p_lp = _buttap(order) * bw / 2
    root = np.sqrt(p_lp * p_lp - wo * wo)
    p_a = np.concatenate((p_lp + root, p_lp - root))
    k_a = bw**order
    # bilinear transform (bilinear_zpk): zeros at s=0 -> z=1, zeros at infinity -> z=-1
    p_d = (fs2 + p_a) / (fs2 - p_a)
    k_d = k_a * float(np.real(1.0 / np.prod(fs2 - p_a)) * fs2**order)
    return _zpk_to_sos(p_d, k_d, order)


def _zpk_to_sos(poles: ComplexArray, gain: float, order: int) -> FloatArray:
    """Pair the band-pass's poles and zeros (``order`` at z=1, ``order`` at z=-1) into sections as
    ``scipy.signal.zpk2sos`` does: poles from the pair closest to the unit circle, each given the two
    remaining zeros nearest to it; sections ordered with that pair last; the gain in the first section."""
    upper = poles[np.imag(poles) > 0]
    if len(upper) != order:  # real poles: not from an even-order Butterworth band-pass
        raise ValueError("band-pass poles are not complex-conjugate pairs")
    upper = upper[np.argsort(-np.abs(upper), kind="stable")]  # closest to the unit circle first
    zeros = [1.0] * order + [-1.0] * order
    sos = np.zeros((order, 6), dtype=np.float64)
    for i, p in enumerate(upper):
        pair = []
        for _ in range(2):
            j = min(range(len(zeros)), key=lambda k: abs(p - zeros[k]))
            pair.append(zeros.pop(j))
        row = order - 1 - i  # the closest pair goes last
        sos[row] = (1.0, -(pair[0] + pair[1]), pair[0] * pair[1], 1.0, -2.0 * p.real, p.real**2 + p.imag**2)
    sos[0, :3] *= gain
    return sos


def sos_response(sos: FloatArray, f_hz: npt.ArrayLike, fs: float) -> ComplexArray:
    """The frequency response of the cascade ``sos`` at the frequencies ``f_hz`` (``scipy.signal.sosfreqz``
    at those points), for a signal sampled at ``fs``."""
    z = np.exp(-2j * np.pi * np.asarray(f_hz, dtype=np.float64) / fs)
    h = np.ones(len(z), dtype=np.complex128)
    for b0, b1, b2, a0, a1, a2 in sos:
        h *= (b0 + b1 * z + b2 * z * z) / (a0 + a1 * z + a2 * z * z)
    return h


def sosfilt_zi(sos: FloatArray) -> FloatArray:
    """Initial states (n_sections, 2) for which a step input of 1 gives a steady output from sample 0."""
    zi = np.zeros((len(sos), 2), dtype=np.float64)
    scale = 1.0
    for i, (b0, b1, b2, _a0, a1, a2) in enumerate(sos):
        # steady state of direct form II transposed for a constant input 1: y = dc, z1 = b2 - a2 y,
        # z0 = b1 - a1 y + z1, with dc = sum(b) / sum(a)
        dc = (b0 + b1 + b2) / (1.0 + a1 + a2)
        z1 = b2 - a2 * dc
        z0 = b1 - a1 * dc + z1
        zi[i] = (scale * z0, scale * z1)
        scale *= dc
    return zi


@lru_cache(maxsize=64)
def _block_matrices(sos_key: bytes, block: int) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """State-space form of the cascade (state = every section's two DF2T states) and its block matrices:
    ``T`` (block x block) zero-state response, ``O`` (block x d) free response of the state, ``Ab``
    (d x d) state transition over a block, ``G`` (d x block) input-to-final-state."""
    sos = np.frombuffer(sos_key, dtype=np.float64).reshape(-1, 6)
    d = 2 * len(sos)

    def step(s: FloatArray, x: float) -> tuple[FloatArray, float]:
        out = np.empty(d)
        v = x
        for i, (b0, b1, b2, _a0, a1, a2) in enumerate(sos):
            z0, z1 = s[2 * i], s[2 * i + 1]
            y = b0 * v + z0
            out[2 * i] = b1 * v - a1 * y + z1
            out[2 * i + 1] = b2 * v - a2 * y
            v = y
        return out, v

    a_m = np.empty((d, d))
    c_v = np.empty(d)
    for j in range(d):
        e = np.zeros(d)
        e[j] = 1.0
        a_m[:, j], c_v[j] = step(e, 0.0)
    b_v, d_s = step(np.zeros(d), 1.0)
    h = np.empty(block)  # impulse response
    o = np.empty((block, d))
    g = np.empty((d, block))
    p = np.eye(d)  # A^n
    for n in range(block):
        o[n] = c_v @ p
        h[n] = d_s if n == 0 else float(c_v @ np.linalg.matrix_power(a_m, n - 1) @ b_v)
        p = a_m @ p
    a_b = p  # A^block
    for m in range(block):
        g[:, m] = np.linalg.matrix_power(a_m, block - 1 - m) @ b_v
    idx = np.arange(block)
    lag = idx[:, None] - idx[None, :]
    t = np.where(lag >= 0, h[np.clip(lag, 0, block - 1)], 0.0)
    return t, o, a_b, g


@lru_cache(maxsize=64)
def _chunk_matrices(sos_key: bytes, block: int, k: int) -> tuple[FloatArray, FloatArray]:
    """The state at the start of each of ``k`` consecutive blocks, as one linear map: ``R`` (k d x k d)
    from the blocks' input contributions (block-lower-triangular, ``Ab^(i-1-j)`` in block row i, column
    j < i) and ``P`` (k d x d) from the initial state (``Ab^i``). Solving the recursion so, in one matrix
    product, replaces a Python loop over the blocks."""
    a_b = _block_matrices(sos_key, block)[2]
    d = a_b.shape[0]
    powers = [np.eye(d)]
    for _ in range(k):
        powers.append(a_b @ powers[-1])
    r = np.zeros((k * d, k * d))
    for i in range(1, k):
        for j in range(i):
            r[i * d : (i + 1) * d, j * d : (j + 1) * d] = powers[i - 1 - j]
    p = np.vstack(powers[:k])
    return r, p


def sosfilt(sos: FloatArray, x: FloatArray, zi: FloatArray | None = None) -> FloatArray:
    """Filter ``x`` with the cascade ``sos`` from the initial states ``zi``; the output only (no final
    state). ``x`` is 1-D with ``zi`` (n_sections, 2), or (n, c) columns filtered alike with ``zi``
    (n_sections, 2, c); zero states if ``zi`` is omitted.

    Up to :data:`CHUNK` blocks are solved at once (:func:`_chunk_matrices`); a longer input carries the
    state from chunk to chunk."""
    key = np.ascontiguousarray(sos, dtype=np.float64).tobytes()
    t, o, a_b, g = _block_matrices(key, BLOCK)
    xa = np.asarray(x, dtype=np.float64)
    cols = xa[:, None] if xa.ndim == 1 else xa
    n, c = cols.shape
    d = a_b.shape[0]
    if n == 0:
        return np.zeros(xa.shape, dtype=np.float64)
    k = -(-n // BLOCK)
    xb = np.zeros((k * BLOCK, c), dtype=np.float64)
    xb[:n] = cols
    # sample-in-block major, (block, column) minor: each block matrix applies to every block in one product
    xm = xb.reshape(k, BLOCK, c).transpose(1, 0, 2).reshape(BLOCK, k * c)
    y = t @ xm  # zero-state response of every block
    u = (g @ xm).reshape(d, k, c).transpose(1, 0, 2)  # each block's contribution to the state at its end
    s = np.zeros((d, c)) if zi is None else np.asarray(zi, dtype=np.float64).reshape(d, c)
    states = np.empty((k, d, c))
    for c0 in range(0, k, CHUNK):
        kc = min(CHUNK, k - c0)
        r, p = _chunk_matrices(key, BLOCK, kc)
        part = r @ u[c0 : c0 + kc].reshape(kc * d, c) + p @ s
        states[c0 : c0 + kc] = part.reshape(kc, d, c)
        s = a_b @ states[c0 + kc - 1] + u[c0 + kc - 1]
    y += o @ states.transpose(1, 0, 2).reshape(d, k * c)
    out: FloatArray = y.reshape(BLOCK, k, c).transpose(1, 0, 2).reshape(k * BLOCK, c)[:n]
    return out[:, 0] if xa.ndim == 1 else out


def lfilter(b: FloatArray, a: FloatArray, x: FloatArray, zi: FloatArray | None = None) -> FloatArray:
    """``scipy.signal.lfilter`` for a filter of order <= 2 (one section), output only; ``zi`` as scipy's
    (the transposed direct form's states, length max(len(a), len(b)) - 1)."""
    a0 = float(a[0])
    bb = np.zeros(3)
    aa = np.zeros(3)
    bb[: len(b)] = np.asarray(b, dtype=np.float64) / a0
    aa[: len(a)] = np.asarray(a, dtype=np.float64) / a0
    if max(len(a), len(b)) > 3:
        raise ValueError("lfilter here handles one second-order section at most")
    sos = np.concatenate((bb, aa))[None, :]
    z = np.zeros(2)
    if zi is not None:
        zz = np.asarray(zi, dtype=np.float64).ravel()
        z[: len(zz)] = zz
    return sosfilt(sos, np.asarray(x, dtype=np.float64), z[None, :])
