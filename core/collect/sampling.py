"""Sampling and per-token confidence from raw logits, one fused pass per row (numba).

For each logits row (one per branch that needs its next token) the kernel finds the top-K logits (a pass over
block maxima, then only the blocks that can hold them), the log-partition function in a second vectorised pass,
and then

* samples the next token: temperature, then top-k, top-p and min-p over the renormalised top-k (the order of
  vLLM and Hugging Face), inverse-CDF with a uniform drawn from the branch's own random generator; temperature 0
  (or a negative uniform) means greedy;
* returns the sampled token's log-probability under the *raw* logits (before temperature), and
* DeepConf's token confidence C = −(1/k) Σ_{j≤k} log P(j) over the top-k (k = 20) raw log-probabilities.

Doing this ourselves instead of with llama.cpp's sampler chain saves a copy of the whole vocabulary per row and
a second pass for the signals, and keeps every branch's random stream in our hands (resume reproduces it).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

CONF_TOP_K = 20
"""DeepConf averages the top-20 log-probabilities (vLLM's logprobs=20)."""


_BLOCK = 64


@njit(cache=True, nogil=True, fastmath=True)
def _block_maxima(row, bmax):  # pragma: no cover - compiled
    n = row.shape[0]
    for b in range(bmax.shape[0]):
        lo = b * _BLOCK
        hi = min(lo + _BLOCK, n)
        m = row[lo]
        for j in range(lo + 1, hi):
            m = max(m, row[j])
        bmax[b] = m


@njit(cache=True, nogil=True, fastmath=True)
def _sum_exp(row, m, fbuf, ibuf):  # pragma: no cover - compiled
    """Σ exp(row − m) for row ≤ m, with a vectorisable float32 exp (Cody–Waite reduction, degree-6 polynomial,
    relative error ~1e-7 per term), summed per 512-element block in float32 and across blocks in float64."""
    n = row.shape[0]
    total = 0.0
    for start in range(0, n, 512):
        cnt = min(512, n - start)
        for j in range(cnt):
            t = row[start + j] - m
            if t < np.float32(-87.0):
                t = np.float32(-87.0)
            k = np.floor(t * np.float32(1.44269504) + np.float32(0.5))
            f = t - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
            p = np.float32(1.9875691500e-4)
            p = p * f + np.float32(1.3981999507e-3)
            p = p * f + np.float32(8.3334519073e-3)
            p = p * f + np.float32(4.1665795894e-2)
            p = p * f + np.float32(1.6666665459e-1)
            p = p * f + np.float32(5.0000001201e-1)
            fbuf[j] = p * f * f + f + np.float32(1.0)
            ibuf[j] = (np.int32(k) + np.int32(127)) << 23
        scale = ibuf.view(np.float32)
        acc = np.float32(0.0)
        for j in range(cnt):
            acc += fbuf[j] * scale[j]
        total += acc
    return total


@njit(cache=True, nogil=True)
def _insert(v, j, n, kmax, ids, vals):  # pragma: no cover - compiled
    if n < kmax:
        p = n
        n += 1
    elif v > vals[kmax - 1]:
        p = kmax - 1
    else:
        return n
    while p > 0 and vals[p - 1] < v:
        vals[p] = vals[p - 1]
        ids[p] = ids[p - 1]
        p -= 1
    vals[p] = v
    ids[p] = j
    return n


@njit(cache=True, nogil=True)
def _row(row, temp, top_k, top_p, min_p, u, conf_k, kmax, ids, vals, probs, bmax, bids, bvals, fbuf, ibuf):  # pragma: no cover
    n_vocab = row.shape[0]
    # 1. top-kmax logits, descending (ties: lower id first). The kmax-th largest block maximum bounds the
    #    kmax-th largest logit from below, so only blocks reaching it are scanned.
    _block_maxima(row, bmax)
    nb = 0
    for b in range(bmax.shape[0]):
        nb = _insert(bmax[b], b, nb, kmax, bids, bvals)
    thr = bvals[kmax - 1] if nb == kmax else -np.inf
    n = 0
    for b in range(bmax.shape[0]):
        if bmax[b] >= thr:
            lo = b * _BLOCK
            for j in range(lo, min(lo + _BLOCK, n_vocab)):
                v = row[j]
                if v >= thr:
                    n = _insert(v, j, n, kmax, ids, vals)
    m = vals[0]
    # 2. log-partition of the raw logits
    lse = m + math.log(_sum_exp(row, m, fbuf, ibuf))
    kc = min(conf_k, n)
    acc = 0.0
    for j in range(kc):
        acc += vals[j]
    conf = lse - acc / kc
    # 3. sample
    tok = ids[0]
    if temp > 0.0 and u >= 0.0:
        k = min(top_k, n)
        z = 0.0
        for j in range(k):
            probs[j] = math.exp((vals[j] - m) / temp)
            z += probs[j]
        keep = k
        cum = 0.0
        for j in range(k):
            cum += probs[j] / z
            if cum >= top_p:
                keep = j + 1
                break
        if min_p > 0.0:
            for j in range(1, keep):  # probs[0] is the largest, so the kept set stays a prefix
                if probs[j] < min_p * probs[0]:
                    keep = j
                    break
        z2 = 0.0
        for j in range(keep):
            z2 += probs[j]
        target = u * z2
        cum = 0.0
        tok = ids[keep - 1]
        for j in range(keep):
            cum += probs[j]
            if target < cum:
                tok = ids[j]
                break
    return tok, row[tok] - lse, conf


@njit(cache=True, nogil=True, parallel=True)
def _rows(logits, temps, top_ks, top_ps, min_ps, uniforms, conf_k, out_tok, out_lp, out_conf):  # pragma: no cover
    n_rows = logits.shape[0]
    kmax = conf_k
    for r in range(n_rows):
        if top_ks[r] > kmax:
            kmax = top_ks[r]
    kmax = min(kmax, logits.shape[1])
    n_blocks = (logits.shape[1] + _BLOCK - 1) // _BLOCK
    for r in prange(n_rows):
        ids = np.empty(kmax, np.int64)
        vals = np.empty(kmax, np.float32)
        probs = np.empty(kmax, np.float64)
        bmax = np.empty(n_blocks, np.float32)
        bids = np.empty(kmax, np.int64)
        bvals = np.empty(kmax, np.float32)
        fbuf = np.empty(512, np.float32)
        ibuf = np.empty(512, np.int32)
        tok, lp, conf = _row(logits[r], temps[r], top_ks[r], top_ps[r], min_ps[r], uniforms[r], conf_k, kmax,
                             ids, vals, probs, bmax, bids, bvals, fbuf, ibuf)
        out_tok[r] = tok
        out_lp[r] = lp
        out_conf[r] = conf


def sample_rows(
    logits: np.ndarray,
    temps: np.ndarray,
    top_ks: np.ndarray,
    top_ps: np.ndarray,
    min_ps: np.ndarray,
    uniforms: np.ndarray,
    conf_k: int = CONF_TOP_K,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample one token per row of `logits` (float32 [R, V]); returns (token ids, raw log-probs, confidences).

    Per-row settings are arrays of length R; a row with temperature 0 or a negative uniform is decoded greedily.
    """
    r = logits.shape[0]
    out_tok = np.empty(r, np.int64)
    out_lp = np.empty(r, np.float32)
    out_conf = np.empty(r, np.float32)
    if r:
        _rows(logits, np.asarray(temps, np.float64), np.asarray(top_ks, np.int64), np.asarray(top_ps, np.float64),
              np.asarray(min_ps, np.float64), np.asarray(uniforms, np.float64), int(conf_k), out_tok, out_lp, out_conf)
    return out_tok, out_lp, out_conf


def reference_sample(logits: np.ndarray, temp: float, top_k: int, top_p: float, min_p: float, u: float,
                     conf_k: int = CONF_TOP_K) -> tuple[int, float, float]:
    """Plain-numpy version of one row of `sample_rows`, for tests."""
    x = logits.astype(np.float64)
    lse = float(np.logaddexp.reduce(x))
    order = np.argsort(-x, kind="stable")
    conf = float(lse - x[order[:conf_k]].mean())
    if temp <= 0 or u < 0:
        tok = int(order[0])
    else:
        top = order[:top_k]
        p = np.exp((x[top] - x[top[0]]) / temp)
        p /= p.sum()
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        keep = min(keep, len(top))
        if min_p > 0:
            keep = min(keep, int(np.sum(p[:keep] >= min_p * p[0])))
        q = p[:keep] / p[:keep].sum()
        tok = int(top[min(int(np.searchsorted(np.cumsum(q), u, side="right")), keep - 1)])
    return tok, float(x[tok] - lse), conf
