"""Exact and near-duplicate detection that scales to 100k+ short texts on a laptop CPU.

Why not compare every pair: 100k texts are 5e9 pairs, minutes even for rapidfuzz's C++ `cdist`.
Small inputs are still compared exhaustively (exact answer, cheap); large ones go through
MinHash LSH on character 3-grams (numpy, vectorised) to find candidate pairs, and every
candidate is then verified with the real rapidfuzz ratio, so a reported duplicate always meets
the threshold; only recall depends on the blocking (benchmarks/dedup_speed.py measures it
against the exhaustive answer).

Semantics: "the first row wins". Rows are visited in order; a row is a duplicate when it is
exactly equal (after `normalize`) to an earlier row, or when its ratio to an earlier *kept* row
is at or above the threshold.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz import fuzz, process

_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")
_MASK64 = (1 << 64) - 1


def normalize(text: str) -> str:
    """NFKC, casefold, punctuation to spaces, whitespace collapsed: 'Why  is X?' == 'why is x'."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


@dataclass
class Duplicate:
    index: int  # the row that is dropped
    of: int  # the earlier kept row it duplicates
    score: float  # 100.0 for exact duplicates
    exact: bool


@dataclass
class DedupStats:
    rows: int = 0
    exact: int = 0
    near: int = 0
    candidate_pairs: int = 0  # pairs scored with rapidfuzz (all pairs when exhaustive)
    exhaustive: bool = True
    extra: dict[str, float] = field(default_factory=dict)


def _exhaustive_pairs(texts: Sequence[str], threshold: float, chunk: int = 2048) -> tuple[np.ndarray, int]:
    """All pairs i<j with ratio >= threshold, as an (m, 3) float array [i, j, score]."""
    n = len(texts)
    found: list[np.ndarray] = []
    for start in range(0, n, chunk):
        block = process.cdist(
            texts[start : start + chunk], texts, scorer=fuzz.ratio, score_cutoff=threshold, workers=-1, dtype=np.float32
        )
        rows, cols = np.nonzero(block)
        rows_abs = rows + start
        keep = cols > rows_abs
        found.append(np.stack([rows_abs[keep], cols[keep], block[rows[keep], cols[keep]]], axis=1))
    pairs = np.concatenate(found) if found else np.zeros((0, 3))
    return pairs, n * (n - 1) // 2


def minhash_signatures(texts: Sequence[str], num_perm: int = 64, q: int = 3, seed: int = 0) -> np.ndarray:
    """(len(texts), num_perm) uint64 MinHash of each text's character q-grams, fully vectorised."""
    padded = [t.ljust(q) for t in texts]
    lengths = np.fromiter((len(s) for s in padded), dtype=np.int64, count=len(padded))
    chars = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    owner = np.repeat(np.arange(len(padded)), lengths)
    positions = np.arange(len(chars))
    with np.errstate(over="ignore"):
        m = len(chars) - q + 1
        codes = np.zeros(m, dtype=np.uint64)
        for k in range(q):
            codes = codes * np.uint64(0x100000001B3) + chars[k : k + m]
        valid = positions[:m] + q <= ends[owner[:m]]
        codes = codes[valid]
        group_starts = starts - np.arange(len(padded)) * (q - 1)  # each text loses q-1 gram slots
        rng = np.random.default_rng(seed)
        a = rng.integers(1, 1 << 62, size=num_perm, dtype=np.uint64) | np.uint64(1)
        b = rng.integers(0, 1 << 62, size=num_perm, dtype=np.uint64)
        sig = np.empty((len(padded), num_perm), dtype=np.uint64)
        for p in range(num_perm):
            sig[:, p] = np.minimum.reduceat(codes * a[p] + b[p], group_starts)
    return sig


def _lsh_pairs(
    texts: Sequence[str], threshold: float, bands: int, rows_per_band: int, max_bucket: int
) -> tuple[np.ndarray, int]:
    """Candidate pairs from MinHash bands, verified with fuzz.ratio; returns ([i, j, score] rows, #scored)."""
    n = len(texts)
    sig = minhash_signatures(texts, num_perm=bands * rows_per_band)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
    candidates: list[np.ndarray] = []
    verified: list[np.ndarray] = []
    scored = 0
    mix = np.array([0x9E3779B97F4A7C15 >> k for k in range(rows_per_band)], dtype=np.uint64) | np.uint64(1)
    for band in range(bands):
        with np.errstate(over="ignore"):
            keys = (sig[:, band * rows_per_band : (band + 1) * rows_per_band] * mix).sum(axis=1)
        order = np.argsort(keys, kind="stable")
        cut = np.flatnonzero(np.diff(keys[order])) + 1
        starts = np.concatenate([[0], cut])
        sizes = np.diff(np.concatenate([starts, [n]]))
        for size in np.unique(sizes[sizes > 1]).tolist():
            run_starts = starts[sizes == size]
            if size > max_bucket:  # one big block: let cdist score it in C++ with both cores
                for s in run_starts.tolist():
                    members = np.sort(order[s : s + size])
                    pairs, count = _exhaustive_pairs([texts[i] for i in members], threshold)
                    scored += count
                    i, j = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
                    verified.append(np.stack([members[i], members[j], pairs[:, 2]], axis=1))
                continue
            # All buckets of this size at once: a (buckets, size) matrix of members, paired by triu.
            members = np.sort(order[run_starts[:, None] + np.arange(size)], axis=1)
            i, j = np.triu_indices(size, 1)
            lo, hi = members[:, i].ravel(), members[:, j].ravel()
            # ratio >= t needs min(len)/max(len) >= t / (200 - t): drop impossible pairs before scoring.
            short, long_ = np.minimum(lengths[lo], lengths[hi]), np.maximum(lengths[lo], lengths[hi])
            possible = short * (200 - threshold) >= long_ * threshold
            candidates.append(lo[possible] * n + hi[possible])
    if candidates:
        codes = np.unique(np.concatenate(candidates))
        lo, hi = codes // n, codes % n
        scored += len(codes)
        scores = process.cpdist(
            [texts[a] for a in lo.tolist()],
            [texts[b] for b in hi.tolist()],
            scorer=fuzz.ratio,
            score_cutoff=threshold,
            workers=-1,
            dtype=np.float32,
        )
        hit = scores > 0
        verified.append(np.stack([lo[hit], hi[hit], scores[hit]], axis=1))
    pairs = np.concatenate(verified) if verified else np.zeros((0, 3))
    return pairs, scored


def same_words(a: str, b: str, min_word_ratio: float = 70.0) -> bool:
    """True when two normalised texts differ only by spelling variants or inserted words.

    Why: a character ratio calls 'purpose of the json module' and 'purpose of the csv module'
    93% alike; they are different queries. Words replaced on both sides must each be close to
    one of the other side's replaced words ('work'/'works', 'colour'/'color'); pure insertions
    or deletions ('why is the sky so blue') are left to the character ratio.
    """
    only_a = set(a.split()) - set(b.split())
    only_b = set(b.split()) - set(a.split())
    if not only_a or not only_b:
        return True
    small, large = (only_a, only_b) if len(only_a) <= len(only_b) else (only_b, only_a)
    return all(max(fuzz.ratio(w, v) for v in large) >= min_word_ratio for w in small)


def find_duplicates(
    texts: Sequence[str],
    threshold: float = 92.0,
    *,
    exhaustive_below: int = 5000,
    bands: int = 20,
    rows_per_band: int = 5,
    max_bucket: int = 512,
    word_guard: bool = True,
) -> tuple[list[Duplicate], DedupStats]:
    """Duplicates to drop, first occurrence kept. `threshold` is a rapidfuzz ratio (0-100).

    With `word_guard`, a near pair must also pass `same_words` (no content word swapped).
    """
    norm = [normalize(t) for t in texts]
    stats = DedupStats(rows=len(texts))
    first: dict[str, int] = {}
    dups: list[Duplicate] = []
    for i, t in enumerate(norm):
        j = first.setdefault(t, i)
        if j != i:
            dups.append(Duplicate(i, j, 100.0, True))
    stats.exact = len(dups)
    reps = sorted(first.values())
    if threshold >= 100 or len(reps) < 2:
        return dups, stats
    rep_texts = [norm[i] for i in reps]
    if len(reps) < exhaustive_below:
        pairs, stats.candidate_pairs = _exhaustive_pairs(rep_texts, threshold)
    else:
        stats.exhaustive = False
        pairs, stats.candidate_pairs = _lsh_pairs(rep_texts, threshold, bands, rows_per_band, max_bucket)
    # Visit pairs by the later row; it is dropped if it matches a row that is still kept.
    order = np.lexsort((pairs[:, 0], pairs[:, 1])) if len(pairs) else []
    dropped: set[int] = set()
    for k in order:
        i, j, score = int(pairs[k, 0]), int(pairs[k, 1]), float(pairs[k, 2])
        if j in dropped or i in dropped:
            continue
        if word_guard and not same_words(rep_texts[i], rep_texts[j]):
            continue
        dropped.add(j)
        dups.append(Duplicate(reps[j], reps[i], round(score, 2), False))
    stats.near = len(dups) - stats.exact
    dups.sort(key=lambda d: d.index)
    return dups, stats
