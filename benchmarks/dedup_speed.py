"""Near-duplicate dedup speed on 100k realistic generated queries, against the exhaustive baseline.

Builds queries offline from BEIR NFCorpus (titles, queries and word windows of abstracts, wrapped
in question / keyword forms the way small LLMs write them), then plants known duplicates: exact
copies, case/punctuation variants and one-edit typos or inserted words. Measures
`synth.dedup.find_duplicates` (MinHash blocking + rapidfuzz verification) and, on a subsample,
the exhaustive all-pairs `rapidfuzz.process.cdist` it replaces, to report recall and speed-up.

    .venv/bin/python benchmarks/dedup_speed.py /work/shared/data/nfcorpus --rows 100000
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import time
from pathlib import Path

from synth.dedup import find_duplicates

QUESTION_FORMS = [
    "What is known about {x}?",
    "How does {x} affect health?",
    "Is {x} linked to disease?",
    "What are the effects of {x}?",
    "Why does {x} matter?",
    "Can {x} reduce risk?",
    "{x}",
    "{x} evidence",
    "does {x} help",
]


def base_phrases(folder: Path, rng: random.Random) -> list[str]:
    """Titles, queries and 3-9 word windows of abstract sentences: realistic query material."""
    phrases: list[str] = []
    with gzip.open(folder / "queries.jsonl.gz", "rt", encoding="utf-8") as f:
        phrases += [json.loads(line)["text"] for line in f]
    with gzip.open(folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            phrases.append(doc["title"])
            for sentence in re.split(r"(?<=[.!?])\s+", doc["text"]):
                words = sentence.split()
                for _ in range(4):
                    if len(words) > 4:
                        n = rng.randint(3, min(9, len(words)))
                        start = rng.randrange(len(words) - n + 1)
                        phrases.append(" ".join(words[start : start + n]).strip(".,;:()"))
    return list(dict.fromkeys(p for p in phrases if p))


def typo(text: str, rng: random.Random) -> str:
    """One realistic small edit: a letter changed or dropped, a word added, case/punctuation changed."""
    kind = rng.randrange(4)
    if kind == 0 and len(text) > 8:
        i = rng.randrange(1, len(text) - 1)
        return text[:i] + text[i + 1 :]
    if kind == 1 and len(text) > 8:
        i = rng.randrange(1, len(text) - 1)
        return text[:i] + rng.choice("aeiourst") + text[i + 1 :]
    if kind == 2:
        words = text.split()
        words.insert(rng.randrange(len(words) + 1), rng.choice(["the", "a", "really", "also"]))
        return " ".join(words)
    return text.upper() if rng.random() < 0.3 else text.rstrip("?") + " ?"


def build_queries(folder: Path, rows: int, seed: int = 0) -> tuple[list[str], int]:
    """`rows` queries, about 12% of them planted duplicates; returns (queries, planted)."""
    rng = random.Random(seed)
    phrases = base_phrases(folder, rng)
    rng.shuffle(phrases)
    originals = int(rows * 0.88)
    queries = [rng.choice(QUESTION_FORMS).format(x=phrases[i % len(phrases)]) for i in range(originals)]
    planted = rows - originals
    queries += [typo(rng.choice(queries[:originals]), rng) for _ in range(planted)]
    rng.shuffle(queries)
    return queries, planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nfcorpus", type=Path, help="folder with corpus.jsonl.gz and queries.jsonl.gz")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--threshold", type=float, default=92.0)
    parser.add_argument("--baseline-rows", type=int, default=20_000, help="subsample for the exhaustive cdist baseline")
    args = parser.parse_args()

    t0 = time.perf_counter()
    queries, planted = build_queries(args.nfcorpus, args.rows)
    print(f"built {len(queries)} queries ({planted} planted duplicates) in {time.perf_counter() - t0:.1f} s")
    print("examples:", queries[:5])

    t0 = time.perf_counter()
    dups, stats = find_duplicates(queries, args.threshold, exhaustive_below=0)
    seconds = time.perf_counter() - t0
    all_pairs = len(queries) * (len(queries) - 1) // 2
    print(
        f"synth dedup (MinHash blocking + rapidfuzz verify), {len(queries)} rows: {seconds:.2f} s; "
        f"exact {stats.exact}, near {stats.near}; {stats.candidate_pairs} candidate pairs scored "
        f"({stats.candidate_pairs / seconds:,.0f} scored pairs/s); "
        f"{all_pairs / seconds:,.0f} pairs/s effective over all {all_pairs:,} pairs"
    )

    sub = queries[: args.baseline_rows]
    t0 = time.perf_counter()
    base, base_stats = find_duplicates(sub, args.threshold, exhaustive_below=10**9)
    base_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    lsh, _ = find_duplicates(sub, args.threshold, exhaustive_below=0)
    lsh_seconds = time.perf_counter() - t0
    base_set = {d.index for d in base}
    lsh_set = {d.index for d in lsh}
    recall = len(base_set & lsh_set) / max(1, len(base_set))
    sub_pairs = len(sub) * (len(sub) - 1) // 2
    rate = base_stats.candidate_pairs / base_seconds
    print(
        f"baseline exhaustive cdist on {len(sub)} rows: {base_seconds:.2f} s ({rate:,.0f} pairs/s over {sub_pairs:,} "
        f"pairs), found {len(base_set)}; blocking on the same rows: {lsh_seconds:.2f} s, found {len(lsh_set)}, "
        f"recall {recall:.3f}, precision {len(base_set & lsh_set) / max(1, len(lsh_set)):.3f}"
    )
    print(f"exhaustive on all {len(queries)} rows would take ~{all_pairs / rate:.0f} s at that rate")


if __name__ == "__main__":
    main()
