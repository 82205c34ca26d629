"""The batch-shaping half of the llama.cpp engine: how decode calls are built so that results are reproducible.

llama.cpp's CPU kernels are deterministic, but a token's numbers can depend on what else is in its batch:

* matrix products use other kernels for a single row (a lone token, or a lone output row);
* with one KV stream per sequence, a batch is cut into ubatches per run of adjacent streams, with an equal number
  of tokens per stream, and a ubatch holding one stream is computed differently;
* the rows of a multi-token entry give different results at different offsets in the batch;
* tokens not in stream order change the result.

`BatchDecoder._decode` shapes every call so that none of this depends on the other branches (checked bit for bit
on CPU by tests/test_collect_backends.py and the resume test): prompts and long feeds are decoded alone; all other
tokens advance in lockstep, one token per stream per call, in stream order, every row asking for logits when any
does, and a stream without an adjacent stream in the call gets a throw-away companion token on its neighbour
(appended after that stream's contents, removed right after the call). On a GPU other kernels may be chosen, so
expect equality in distribution there, not bit for bit.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.collect.backend import BackendError

LOCKSTEP_MAX = 64
"""Feeds up to this long (probe texts, forced texts) are decoded one token per call together with the other
branches' steps; longer ones, and prompts, alone."""

Entry = tuple[int, Sequence[int], int, bool]
"""(sequence id, tokens, position of the first token, wants the logits of the last token)."""


class BatchDecoder:
    """Mixin for LlamaEngine: owns the llama_batch and turns lists of entries into llama_decode calls.

    Expects `_L` (llama_cpp), `_ctx`, `_mem`, `n_vocab`, `n_batch`, `n_ubatch`, `kv_unified`, `batch_invariant`
    and `_n_streams` on the instance."""

    _L: Any
    _ctx: Any
    _mem: Any
    n_vocab: int
    n_batch: int
    n_ubatch: int
    kv_unified: bool
    batch_invariant: bool
    _n_streams: int

    def _make_batch(self) -> None:
        L, cap = self._L, self.n_batch
        self._b_tok = np.zeros(cap, np.int32)
        self._b_pos = np.zeros(cap, np.int32)
        self._b_nseq = np.ones(cap, np.int32)
        self._b_seq = np.zeros(cap, np.int32)
        self._b_out = np.zeros(cap, np.int8)
        i32p = ctypes.POINTER(ctypes.c_int32)
        base = self._b_seq.ctypes.data
        self._b_seq_ptrs = (i32p * cap)(*[ctypes.cast(base + 4 * i, i32p) for i in range(cap)])
        b = L.llama_batch()
        b.n_tokens = 0
        b.token = self._b_tok.ctypes.data_as(i32p)
        b.embd = ctypes.POINTER(ctypes.c_float)()
        b.pos = self._b_pos.ctypes.data_as(i32p)
        b.n_seq_id = self._b_nseq.ctypes.data_as(i32p)
        b.seq_id = ctypes.cast(self._b_seq_ptrs, ctypes.POINTER(i32p))
        b.logits = self._b_out.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self._batch = b

    def _decode(self, entries: Sequence[Entry], on_rows: Any) -> None:
        """Decode entries (seq, tokens, first position, want logits of the last token).

        After each llama_decode, `on_rows(entry_indices, logits[n_out, n_vocab])` gets the rows of the entries
        whose last token was in that call (the array is only valid during the call).

        With one KV stream per sequence (and `batch_invariant`), the calls are shaped so that a sequence's
        numbers never depend on which other sequences are decoded with it (on CPU; the tests check it bit for
        bit). llama.cpp's kernels give results that depend on a multi-token entry's rows in the batch, cut a batch
        into ubatches per run of adjacent streams with equal tokens per stream, and use other kernels for a
        ubatch of one stream. So a prompt (an entry starting at position 0) or a feed longer than LOCKSTEP_MAX is
        decoded alone, in pieces of n_ubatch tokens; everything else advances in lockstep, one token per stream
        per call, every row asking for logits when any does, and every stream without an adjacent stream in the
        call gets a throw-away companion token on its neighbour, removed right after the call.
        """
        if self.kv_unified or not self.batch_invariant:
            singles = [i for i, e in enumerate(entries) if len(e[1]) == 1]
            by_len: dict[int, list[int]] = {}
            for i, e in enumerate(entries):
                if len(e[1]) > 1:
                    by_len.setdefault(len(e[1]), []).append(i)
            for n_tok, idxs in by_len.items():
                per_call = max(1, self.n_ubatch // n_tok)
                for k in range(0, len(idxs), per_call):
                    self._call(entries, idxs[k:k + per_call], on_rows)
            if singles:
                self._call(entries, singles, on_rows)
            return
        lock = []
        for i, (_, toks, pos0, _) in enumerate(entries):
            if len(toks) > 1 and (pos0 == 0 or len(toks) > LOCKSTEP_MAX):
                self._call(entries, [i], on_rows)
            else:
                lock.append(i)
        if lock:
            self._lockstep(entries, lock, on_rows)

    def _companions(self, seqs: list[int]) -> list[int]:
        """Streams to add so that every stream in `seqs` has a neighbouring stream in the call."""
        present = set(seqs)
        extra = []
        for s in sorted(seqs):
            if s - 1 in present or s + 1 in present:
                continue
            nb = s + 1 if s + 1 < self._n_streams else s - 1
            present.add(nb)
            extra.append(nb)
        return extra

    def _lockstep(self, entries: Sequence[Entry], idxs: list[int], on_rows: Any) -> None:
        """Advance the entries one token per call, in stream order, with companions (see `_decode`)."""
        L = self._L
        for j in range(max(len(entries[i][1]) for i in idxs)):
            live = [i for i in idxs if len(entries[i][1]) > j]
            out = any(entries[i][3] and len(entries[i][1]) == j + 1 for i in live)
            slots: list[tuple[int, int, int, int]] = []  # (seq, token, position, entry or -1)
            for i in live:
                seq, toks, pos0, want = entries[i]
                slots.append((seq, toks[j], pos0 + j, i if want and len(toks) == j + 1 else -1))
            comps = [(nb, int(L.llama_memory_seq_pos_max(self._mem, nb)) + 1)
                     for nb in self._companions([entries[i][0] for i in live])]
            slots += [(nb, slots[0][1], at, -1) for nb, at in comps]
            slots.sort(key=lambda x: x[0])
            for k, (seq, tok, pos, _) in enumerate(slots):
                self._put(k, seq, [tok], pos, out)
            try:
                self._run(len(slots), [x[3] for x in slots] if out else [], on_rows)
            finally:
                for nb, at in comps:
                    L.llama_memory_seq_rm(self._mem, nb, at, -1)

    def _call(self, entries: Sequence[Entry], idxs: list[int], on_rows: Any) -> None:
        """llama_decode over whole entries of one length (a lone entry longer than n_ubatch: in pieces)."""
        n_tok = len(entries[idxs[0]][1])
        piece = n_tok if len(idxs) > 1 else min(n_tok, self.n_ubatch)
        for k in range(0, n_tok, piece):
            n = 0
            outs = []
            last = k + piece >= n_tok
            for ei in idxs:
                seq, toks, pos0, want = entries[ei]
                part = toks[k:k + piece]
                self._put(n, seq, part, pos0 + k, want and last)
                n += len(part)
                if want and last:
                    outs.append(ei)
            self._run(n, outs, on_rows)

    def _put(self, at: int, seq: int, toks: Sequence[int], pos0: int, want: bool) -> None:
        m = len(toks)
        self._b_tok[at:at + m] = toks
        self._b_pos[at:at + m] = np.arange(pos0, pos0 + m, dtype=np.int32)
        self._b_seq[at:at + m] = seq
        self._b_out[at:at + m] = 0
        if want:
            self._b_out[at + m - 1] = 1

    def _run(self, n: int, outs: list[int], on_rows: Any) -> None:
        """Decode the first n batch slots; `outs` names the entry of each output row (−1: a row to discard)."""
        self._batch.n_tokens = n
        rc = self._L.llama_decode(self._ctx, self._batch)
        if rc != 0:
            what = "no free KV cells (the cache is full)" if rc == 1 else f"error code {rc}"
            raise BackendError(f"llama_decode failed: {what}")
        if outs:
            ptr = self._L.llama_get_logits(self._ctx)
            rows = np.ctypeslib.as_array(ptr, shape=(len(outs), self.n_vocab))
            keep = [i for i, e in enumerate(outs) if e >= 0]
            if len(keep) == len(outs):
                on_rows(outs, rows)
            else:
                on_rows([outs[i] for i in keep], rows[keep])
