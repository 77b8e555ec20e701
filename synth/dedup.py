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
from pathlib import Path
from typing import Any

import numpy as np
from rapidfuzz import fuzz, process

from synth.mining.docstore import text_hash

_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")
_MASK64 = (1 << 64) - 1
_SIGN_CHUNK = 16384  # texts hashed and MinHash-signed at once
_VERIFY_CHUNK = 262144  # candidate pairs whose texts are read and scored at once
_SMALL_GROUP = 64  # groups up to this size are paired all at once (numpy), larger ones by cdist


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


class _BandKeys:
    """The LSH key of each text in each band, filled a chunk of texts at a time, read a band at a time.

    In memory, or with `folder` in a file there (8 bytes per text and band on disk; a plain file,
    not a memory map, so only the band being read counts toward the process's memory).
    """

    def __init__(self, bands: int, n: int, folder: Path | None) -> None:
        self.n = n
        self.file = (folder / "band_keys.bin").open("w+b") if folder is not None else None
        self.memory = np.empty((bands, n), np.uint64) if folder is None else None

    def put(self, band: int, start: int, keys: np.ndarray) -> None:
        if self.memory is not None:
            self.memory[band, start : start + len(keys)] = keys
        else:
            assert self.file is not None
            self.file.seek((band * self.n + start) * 8)
            self.file.write(keys.astype(np.uint64).tobytes())

    def band(self, band: int) -> np.ndarray:
        if self.memory is not None:
            return self.memory[band]
        assert self.file is not None
        self.file.flush()
        return np.fromfile(self.file.name, dtype=np.uint64, count=self.n, offset=band * self.n * 8)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _band_keys(texts: Sequence[str], bands: int, rows_per_band: int, keys_dir: Path | None) -> _BandKeys:
    """Each text's LSH key per band, MinHash-signed a chunk of texts at a time."""
    keys = _BandKeys(bands, len(texts), keys_dir)
    mix = np.array([0x9E3779B97F4A7C15 >> k for k in range(rows_per_band)], dtype=np.uint64) | np.uint64(1)
    for start in range(0, len(texts), _SIGN_CHUNK):
        sig = minhash_signatures(list(texts[start : start + _SIGN_CHUNK]), num_perm=bands * rows_per_band)
        with np.errstate(over="ignore"):
            for band in range(bands):
                keys.put(band, start, (sig[:, band * rows_per_band : (band + 1) * rows_per_band] * mix).sum(axis=1))
    return keys


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, starts, sizes): positions order[s : s + size] share one key, for each run."""
    order = np.argsort(keys, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(keys[order])) + 1].astype(np.int64)
    return order, starts, np.diff(np.r_[starts, len(keys)])


def _pairs_within_runs(
    texts: Sequence[str], lengths: np.ndarray, runs: tuple[np.ndarray, np.ndarray, np.ndarray], threshold: float,
    max_run: int, found: list[np.ndarray],
) -> tuple[np.ndarray, int]:  # fmt: skip
    """Pairs of texts in one run: runs over `max_run` scored at once by cdist (appended to `found` as
    [i, j, score] rows); the others' pairs returned as candidate codes i * n + j, and #scored."""
    order, starts, sizes = runs
    n, codes, scored = len(texts), [], 0
    for size in np.unique(sizes[sizes > 1]).tolist():
        run_starts = starts[sizes == size]
        if size > max_run:  # one big block: let cdist score it in C++ with both cores
            for s in run_starts.tolist():
                members = np.sort(order[s : s + size])
                pairs, count = _exhaustive_pairs([texts[i] for i in members.tolist()], threshold)
                scored += count
                i, j = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
                found.append(np.stack([members[i], members[j], pairs[:, 2]], axis=1))
            continue
        # All runs of this size at once: a (runs, size) matrix of members, paired by triu.
        members = np.sort(order[run_starts[:, None] + np.arange(size)], axis=1)
        i, j = np.triu_indices(size, 1)
        lo, hi = members[:, i].ravel(), members[:, j].ravel()
        # ratio >= t needs min(len)/max(len) >= t / (200 - t): drop impossible pairs before scoring.
        short, long_ = np.minimum(lengths[lo], lengths[hi]), np.maximum(lengths[lo], lengths[hi])
        possible = short * (200 - threshold) >= long_ * threshold
        codes.append(lo[possible] * n + hi[possible])
    return (np.concatenate(codes) if codes else np.zeros(0, np.int64)), scored


def _verify(texts: Sequence[str], codes: np.ndarray, threshold: float, found: list[np.ndarray]) -> None:
    """Scores candidate pairs (codes i * n + j) with fuzz.ratio, a chunk of pairs' texts at a time;
    those at or above the threshold go to `found` as [i, j, score] rows."""
    n = len(texts)
    for start in range(0, len(codes), _VERIFY_CHUNK):
        lo, hi = codes[start : start + _VERIFY_CHUNK] // n, codes[start : start + _VERIFY_CHUNK] % n
        scores = process.cpdist(
            [texts[a] for a in lo.tolist()],
            [texts[b] for b in hi.tolist()],
            scorer=fuzz.ratio,
            score_cutoff=threshold,
            workers=-1,
            dtype=np.float32,
        )
        hit = scores > 0
        found.append(np.stack([lo[hit], hi[hit], scores[hit]], axis=1))


def _lsh_pairs(
    texts: Sequence[str], lengths: np.ndarray, threshold: float, bands: int, rows_per_band: int, max_bucket: int,
    keys_dir: Path | None,
) -> tuple[np.ndarray, int]:  # fmt: skip
    """Candidate pairs from MinHash bands, verified with fuzz.ratio; returns ([i, j, score] rows, #scored).

    Band by band: a near-duplicate pair shares most bands, so holding every band's candidates until
    the end costs up to `bands` times the pairs; here a band's candidates are scored at once and only
    the pairs found so far are kept (a pair below the threshold is scored again in each band it shares).
    """
    n = len(texts)
    band_keys = _band_keys(texts, bands, rows_per_band, keys_dir)
    verified: list[np.ndarray] = []
    found = np.zeros(0, np.int64)  # sorted codes i * n + j of the pairs verified so far
    scored = 0
    for band in range(bands):
        start = len(verified)
        codes, count = _pairs_within_runs(texts, lengths, _runs(band_keys.band(band)), threshold, max_bucket, verified)
        codes = np.unique(codes)
        codes = codes[~np.isin(codes, found, assume_unique=True)]
        scored += count + len(codes)
        _verify(texts, codes, threshold, verified)
        fresh = []
        for k in range(start, len(verified)):  # each pair once: a big bucket's cdist may find an old one
            pair_codes = verified[k][:, 0].astype(np.int64) * n + verified[k][:, 1].astype(np.int64)
            new = ~np.isin(pair_codes, found)
            verified[k] = verified[k][new]
            fresh.append(pair_codes[new])
        if fresh:
            found = np.union1d(found, np.concatenate(fresh))
    band_keys.close()
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
    groups: np.ndarray | None = None,
    normalized: bool = False,
    keys_dir: Path | None = None,
) -> tuple[list[Duplicate], DedupStats]:
    """Duplicates to drop, first occurrence kept. `threshold` is a rapidfuzz ratio (0-100).

    With `word_guard`, a near pair must also pass `same_words` (no content word swapped).
    `groups`: an integer label per text; texts are compared only within their group, each group as
    if it were deduplicated alone (`exhaustive_below` counts a group's texts), all groups at once.
    `normalized`: `texts` are already `normalize`d and may be a view of texts on disk (read by
    index and by slice, see synth/steps/filter_dedup.py); memory then holds a few 8-byte keys per
    text and, with `keys_dir`, the MinHash band keys live in a file there.
    """
    norm: Sequence[str] = texts if normalized else [normalize(t) for t in texts]
    n = len(norm)
    stats = DedupStats(rows=n)
    labels = np.zeros(n, np.uint64) if groups is None else np.asarray(groups).astype(np.uint64)
    keys, lengths = np.empty(n, np.uint64), np.empty(n, np.int64)
    for start in range(0, n, _SIGN_CHUNK):
        chunk = norm[start : start + _SIGN_CHUNK]
        keys[start : start + len(chunk)] = [text_hash(t) for t in chunk]
        lengths[start : start + len(chunk)] = [len(t) for t in chunk]
    with np.errstate(over="ignore"):
        keys ^= labels * np.uint64(0x9E3779B97F4A7C15)  # equal text in another group is another key
    _, first_of_key, key_of = np.unique(keys, return_index=True, return_inverse=True)
    first = first_of_key[key_of.reshape(-1)]  # each text's first occurrence of its key
    is_rep = first == np.arange(n)
    dups: list[Duplicate] = []
    for i in np.flatnonzero(~is_rep).tolist():
        j = int(first[i])
        if labels[i] == labels[j] and norm[i] == norm[j]:
            dups.append(Duplicate(i, j, 100.0, True))
        else:  # a 64-bit collision (about n^2 / 2^65): both texts stay
            is_rep[i] = True
    stats.exact = len(dups)
    del keys, first_of_key, key_of, first  # 8 bytes a text each: not needed past this point
    reps = np.flatnonzero(is_rep)
    if threshold >= 100 or len(reps) < 2:
        return dups, stats
    rep_texts: Sequence[str] = _Subset(norm, reps) if normalized else [norm[i] for i in reps.tolist()]
    rep_lengths, found = lengths[reps], []
    # Each group: small ones all at once (every pair), larger ones by cdist, the largest by MinHash LSH.
    order, starts, sizes = _runs(labels[reps])
    del labels, lengths, is_rep
    small = sizes < exhaustive_below
    codes, stats.candidate_pairs = _pairs_within_runs(
        rep_texts, rep_lengths, (order, starts[small], sizes[small]), threshold, _SMALL_GROUP, found
    )
    stats.candidate_pairs += len(codes)
    _verify(rep_texts, codes, threshold, found)
    for s, size in zip(starts[~small].tolist(), sizes[~small].tolist(), strict=True):
        stats.exhaustive = False
        if size == len(reps):  # one group (scope all): no index arrays to build
            del order
            pairs, count = _lsh_pairs(rep_texts, rep_lengths, threshold, bands, rows_per_band, max_bucket, keys_dir)
            found.append(pairs)
            stats.candidate_pairs += count
            continue
        members = np.sort(order[s : s + size])
        pairs, count = _lsh_pairs(
            _Subset(rep_texts, members), rep_lengths[members], threshold, bands, rows_per_band, max_bucket, keys_dir
        )
        stats.candidate_pairs += count
        lo, hi = members[pairs[:, 0].astype(np.int64)], members[pairs[:, 1].astype(np.int64)]
        found.append(np.stack([lo, hi, pairs[:, 2]], axis=1))
    pairs = np.concatenate(found) if found else np.zeros((0, 3))
    # Visit pairs by the later row; it is dropped if it matches a row that is still kept.
    visit = np.lexsort((pairs[:, 0], pairs[:, 1])) if len(pairs) else []
    dropped: set[int] = set()
    for k in visit:
        i, j, score = int(pairs[k, 0]), int(pairs[k, 1]), float(pairs[k, 2])
        if j in dropped or i in dropped:
            continue
        if word_guard and not same_words(rep_texts[i], rep_texts[j]):
            continue
        dropped.add(j)
        dups.append(Duplicate(int(reps[j]), int(reps[i]), round(score, 2), False))
    stats.near = len(dups) - stats.exact
    dups.sort(key=lambda d: d.index)
    return dups, stats


class _Subset(Sequence[str]):
    """texts[indices[k]] for k, read by index or slice: the exact-duplicate representatives of a view on disk."""

    def __init__(self, texts: Sequence[str], indices: np.ndarray) -> None:
        self.texts, self.indices = texts, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: Any) -> Any:  # type: ignore[override]
        if isinstance(k, slice):
            return [self.texts[i] for i in self.indices[k].tolist()]
        return self.texts[int(self.indices[k])]
