"""synth's hard-negative mining vs sentence-transformers `mine_hard_negatives`, same data and model.

    .venv/bin/python benchmarks/mine_vs_st.py --data ../shared/data [--passages 100000] [--queries 10000]

Texts (all real, offline): STS-B sentence pairs (sentence1 -> sentence2) and NFCorpus queries ->
a relevant abstract (qrels) are the (anchor, positive) pairs; the corpus adds NFCorpus abstracts
and docstring paragraphs of the installed packages. The embedder is all-MiniLM-L6-v2 cut to its
first 2 layers and 128 tokens (2 CPU cores); both tools load the same folder. Each measurement
runs in its own subprocess so its peak RSS is its own: ST, synth (st_compatible, same knobs), and
the embedding floor (the same texts through `encode` alone). Then synth mines a 10x corpus
(every passage plus nine concatenations of two passages) with a static embedder built from
MiniLM's token embeddings, to show memory does not grow with the corpus.

`--backend onnx|onnx-int8` runs synth and the floor on synth's ONNX Runtime embedder backend
(exported once into SYNTH_HOME by a process of its own, before any measurement); sentence-transformers stays on torch, its
default path. Rows are then compared by overlap, not identity (int8 vectors differ slightly).
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

KNOBS = dict(range_max=50, relative_margin=0.05, num_negatives=3)


def collect(data: Path, n_passages: int, n_queries: int) -> tuple[list[dict], list[str]]:
    pairs: list[dict] = []
    for split in ("train", "dev", "test"):
        with gzip.open(data / "stsb" / f"{split}.tsv.gz", "rt", encoding="utf-8") as f:
            for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                pairs.append({"anchor": r["sentence1"], "positive": r["sentence2"]})
    docs = {}
    with gzip.open(data / "nfcorpus" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            docs[d["_id"]] = f"{d['title']}. {d['text']}"
    queries = {}
    with gzip.open(data / "nfcorpus" / "queries.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            queries[q["_id"]] = q["text"]
    seen = set()
    for split in ("train", "dev", "test"):
        with gzip.open(data / "nfcorpus" / f"qrels_{split}.tsv.gz", "rt", encoding="utf-8") as f:
            for r in csv.DictReader(f, delimiter="\t"):
                if r["query-id"] not in seen:
                    seen.add(r["query-id"])
                    pairs.append({"anchor": queries[r["query-id"]], "positive": docs[r["corpus-id"]]})
    pairs = pairs[:n_queries]
    corpus = list(dict.fromkeys(list(docs.values()) + [p["positive"] for p in pairs]))
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    extra: dict[str, None] = {}
    for path in sorted(site.rglob("*.py")):
        if len(corpus) + len(extra) >= n_passages:
            break
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef, ast.Module)):
                doc = ast.get_docstring(node)
                for para in (doc or "").split("\n\n"):
                    para = " ".join(para.split())
                    if len(para) >= 60:
                        extra[para] = None
    corpus = (corpus + list(extra))[:n_passages]
    return pairs, corpus


def build_models(folder: Path) -> tuple[Path, Path]:
    """MiniLM cut to 2 layers / 128 tokens, and a StaticEmbedding of its token matrix."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding

    from synth.models import resolve_model

    small, static = folder / "minilm-2l", folder / "minilm-static"
    if not small.exists():
        m = SentenceTransformer(resolve_model("all-minilm-l6-v2"), device="cpu")
        m[0].auto_model.encoder.layer = m[0].auto_model.encoder.layer[:2]
        m[0].auto_model.config.num_hidden_layers = 2
        m.max_seq_length = 128
        m.save(str(small))
        weights = m[0].auto_model.embeddings.word_embeddings.weight.detach().numpy()
        emb = StaticEmbedding(m.tokenizer.backend_tokenizer, embedding_weights=weights)
        SentenceTransformer(modules=[emb]).save(str(static))
    return small, static


def peak_rss_mb() -> float:
    """This process's peak RSS. Why VmHWM: Linux carries ru_maxrss over fork+exec, so a child
    forked from a parent holding the 10x corpus would report the parent's size, not its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(kind: str, work: Path, model: str, backend: str = "torch") -> dict:
    """One measurement in this (fresh) process."""
    from sentence_transformers import SentenceTransformer

    pairs = json.loads((work / "pairs.json").read_text())
    corpus = json.loads((work / ("corpus10x.json" if kind == "synth10x" else "corpus.json")).read_text())
    if backend != "torch" and kind != "st":  # synth's ONNX embedder: its model, routed through ONNX Runtime
        from synth.embedders import SentenceTransformerEmbedder
        from synth.specs import EmbedderSpec

        st = SentenceTransformerEmbedder(EmbedderSpec(model=model, backend=backend, batch_size=64)).model
    else:
        st = SentenceTransformer(model, device="cpu")
    if kind == "export":  # the one-time ONNX export, in a process of its own: not in synth's peak RSS
        return {"kind": kind, "seconds": 0.0, "peak_rss_mb": peak_rss_mb(), "rows": 0, "corpus": len(corpus)}
    t0 = time.perf_counter()
    if kind == "st":
        from datasets import Dataset
        from sentence_transformers.util import mine_hard_negatives

        out = mine_hard_negatives(
            Dataset.from_list(pairs), st, corpus=corpus, batch_size=64, verbose=False, output_format="n-tuple", **KNOBS
        )
        rows = out.to_list()
    elif kind in ("synth", "synth10x"):
        from synth.mining import MiningParams, mine_dataset

        class Embedder:  # the loaded model, length-sorted blocks as in synth.embedders
            model_id = model

            def embed(self, texts, *, role, progress=None):  # type: ignore[no-untyped-def]
                return st.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)

        rows = mine_dataset(
            pairs, Embedder(), corpus=corpus, params=MiningParams(st_compatible=True, **KNOBS), work_dir=work
        ).rows  # type: ignore[arg-type]
    else:  # the floor: embed the same (deduplicated) texts, nothing else
        texts = list(dict.fromkeys(corpus + [p["positive"] for p in pairs]))
        st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        st.encode(list(dict.fromkeys(p["anchor"] for p in pairs)), batch_size=64, normalize_embeddings=True)
        rows = []
    seconds = time.perf_counter() - t0
    if rows:
        (work / f"{kind}.json").write_text(json.dumps(rows))
    return {
        "kind": kind,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rows": len(rows),
        "corpus": len(corpus),
    }


def measure(kind: str, work: Path, model: Path, backend: str = "torch") -> dict:
    cmd = [sys.executable, __file__, "--one", kind, "--work", str(work), "--model", str(model), "--backend", backend]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--work", type=Path, default=Path("outputs/bench-mine"))
    ap.add_argument("--passages", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--one")
    ap.add_argument("--model")
    ap.add_argument("--skip-10x", action="store_true")
    ap.add_argument(
        "--backend", choices=["torch", "onnx", "onnx-int8"], default="torch", help="synth's embedder backend"
    )
    ap.add_argument("--embedder", choices=["minilm-2l", "static"], default="minilm-2l", help="for the ST comparison")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.work, args.model, args.backend)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    pairs, corpus = collect(args.data, args.passages, args.queries)
    (args.work / "pairs.json").write_text(json.dumps(pairs))
    (args.work / "corpus.json").write_text(json.dumps(corpus))
    small, static = build_models(args.work)
    print(f"{len(pairs)} pairs, {len(corpus)} passages; knobs {KNOBS}", flush=True)
    model = small if args.embedder == "minilm-2l" else static
    if args.backend != "torch":
        measure("export", args.work, model, args.backend)
    st, synth, floor = (
        measure(k, args.work, model, "torch" if k == "st" else args.backend) for k in ("st", "synth", "floor")
    )
    st_rows, synth_rows = (json.loads((args.work / f"{k}.json").read_text()) for k in ("st", "synth"))
    print(f"identical rows: {st_rows == synth_rows}")
    if args.backend != "torch":  # how many (anchor, negative) choices the two tools share

        def negatives(rows: list[dict]) -> set[tuple[str, str]]:
            return {(r["anchor"], v) for r in rows for k, v in r.items() if k.startswith("negative")}

        a, b = negatives(st_rows), negatives(synth_rows)
        print(
            f"rows ST {len(st_rows)}, synth {len(synth_rows)}; shared negatives {len(a & b) / max(1, len(a)):.3f} of ST's"
        )
    print(
        f"time synth/ST {synth['seconds'] / st['seconds']:.2f}x; peak RSS synth/ST {synth['peak_rss_mb'] / st['peak_rss_mb']:.2f}x; synth/floor {synth['seconds'] / floor['seconds']:.2f}x"
    )
    if not args.skip_10x:
        big = corpus + [
            f"{corpus[i]} {corpus[(i * 7 + j) % len(corpus)]}" for j in range(1, 10) for i in range(len(corpus))
        ]
        (args.work / "corpus10x.json").write_text(json.dumps(big))
        del big
        one = measure("synth", args.work, static)
        ten = measure("synth10x", args.work, static)
        print(
            f"static embedder: 1x corpus {one['peak_rss_mb']:.0f} MB peak, 10x corpus {ten['peak_rss_mb']:.0f} MB peak"
        )


if __name__ == "__main__":
    main()
