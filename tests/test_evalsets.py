"""`synth eval`: evaluation on BEIR folders, pooled splits, LIMIT and passkey/needle sets, the shift check.

Real pieces throughout: tiny BEIR folders written here, BM25 (bm25s) and the hashing embedder;
MiniLM and its tokenizer only where the test is about token lengths and truncation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from synth.eval.beir import load_beir
from synth.eval.cli import app
from synth.eval.evaluate import BM25Retriever, evaluate_folder, make_retriever
from synth.eval.limit import build_limit_set, smallest_n
from synth.eval.longembed import build_longembed, load_tokenizer
from synth.eval.pooled import build_pooled
from synth.eval.shift import depth_rank_test, shift_section

REPO = Path(__file__).resolve().parent.parent
HAYSTACK = REPO / "recipes" / "data" / "python_stdlib.jsonl"
TOPICS = [
    "apple orchards grow sweet red apples in autumn",
    "river otters swim and play in cold mountain rivers",
    "violin makers carve spruce and maple for the instrument body",
    "volcanoes erupt lava and ash when magma pressure rises",
    "bakers knead sourdough bread and bake it in stone ovens",
    "glaciers carve valleys as the ice slowly moves downhill",
    "honey bees collect nectar and pollen from spring flowers",
    "chess players study openings endgames and tactics",
]
runner = CliRunner()


def write_beir(folder: Path, docs: list[str], queries: dict[str, str], qrels: dict[str, dict[str, int]] | None) -> Path:
    folder.mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    if qrels is not None:
        (folder / "qrels").mkdir()
        lines = [f"{q}\t{d}\t{s}" for q, docs in qrels.items() for d, s in docs.items()]
        (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    return folder


def topic_folder(tmp_path: Path, name: str = "beir", distractors: int = 24) -> Path:
    """One query per topic, its document first; unrelated filler documents after."""
    rng = np.random.default_rng(1)
    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega tau".split()
    filler = [" ".join(rng.choice(words, size=8)) for _ in range(distractors)]
    queries = {f"q{i}": " ".join(t.split()[:3]) for i, t in enumerate(TOPICS)}  # e.g. "apple orchards grow"
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(TOPICS))}
    return write_beir(tmp_path / name, TOPICS + filler, queries, qrels)


def one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_evaluate_ranks_each_topic_first_with_bm25_and_hashing(tmp_path: Path) -> None:
    folder = topic_folder(tmp_path)
    for model in ("bm25", "hashing"):
        result = evaluate_folder(folder, make_retriever(model), recall_cutoffs=[2])
        assert result.queries == len(TOPICS) and result.documents == len(TOPICS) + 24
        assert result.metrics["ndcg@10"] == pytest.approx(1.0), model
        assert result.metrics["mrr@10"] == pytest.approx(1.0) and result.metrics["accuracy@1"] == 1.0
        assert result.ranked["q3"][0] == "d3"


def test_metrics_follow_the_ranking_when_it_is_wrong(tmp_path: Path) -> None:
    # q0's judged document is not the one that shares its words: BM25 puts it below the decoy.
    folder = write_beir(
        tmp_path / "b",
        ["quokka habitats on islands", "island quokka colonies", "unrelated text about trains"],
        {"q0": "quokka islands"},
        {"q0": {"d2": 1}},
    )
    result = evaluate_folder(folder, BM25Retriever())
    assert result.ranked["q0"][:2] == ["d0", "d1"] or result.ranked["q0"][:2] == ["d1", "d0"]
    assert result.metrics["ndcg@10"] == pytest.approx(1 / math.log2(4))  # d2 ranks third
    assert result.metrics["accuracy@1"] == 0.0 and result.metrics["mrr@10"] == pytest.approx(1 / 3)


def test_cli_run_prints_table_and_one_json_line_per_model(tmp_path: Path) -> None:
    folder = topic_folder(tmp_path)
    result = runner.invoke(app, ["run", str(folder), "-m", "bm25", "-m", "hashing", "--recall-at", "2"])
    assert result.exit_code == 0, result.output
    assert "nDCG@10" in result.stdout and "MRR@10" in result.stdout
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["model"] for r in rows] == ["bm25", "hashing"]
    assert {"ndcg@10", "recall@100", "mrr@10", "accuracy@1", "recall@2", "seconds"} <= set(rows[0])
    assert rows[0]["ndcg@10"] == 1.0 and rows[0]["queries"] == len(TOPICS)


def test_bad_input_is_one_error_line(tmp_path: Path) -> None:
    no_qrels = write_beir(tmp_path / "noqrels", TOPICS, {"q0": "apples"}, None)
    line = one_error_line(runner.invoke(app, ["run", str(no_qrels), "-m", "bm25"]))
    assert "no qrels for split 'test'" in line and str(no_qrels) in line
    line = one_error_line(runner.invoke(app, ["run", str(tmp_path / "nowhere"), "-m", "bm25"]))
    assert "not found" in line
    line = one_error_line(runner.invoke(app, ["pool", str(no_qrels), "-o", str(tmp_path / "p"), "-r", "bm25"]))
    assert "no qrels" in line and not (tmp_path / "p").exists()
    bad_tokenizer = str(tmp_path / "no-such-tokenizer")
    line = one_error_line(
        runner.invoke(app, ["passkey", str(HAYSTACK), "-o", str(tmp_path / "pk"), "--tokenizer", bad_tokenizer])
    )
    assert f"tokenizer '{bad_tokenizer}' cannot be loaded" in line and not (tmp_path / "pk").exists()
    not_a_tokenizer = tmp_path / "empty-model"  # exists, so transformers itself gets to fail on it
    not_a_tokenizer.mkdir()
    line = one_error_line(
        runner.invoke(app, ["needle", str(HAYSTACK), "-o", str(tmp_path / "nd"), "--tokenizer", str(not_a_tokenizer)])
    )
    assert f"tokenizer '{not_a_tokenizer}' cannot be loaded (" in line and not (tmp_path / "nd").exists()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("Apples\nPears\nPlums\n")
    line = one_error_line(
        runner.invoke(app, ["limit", "-o", str(tmp_path / "l"), "--vocabulary", str(vocab), "-k", "4"])
    )
    assert "k=4 is larger than the attribute vocabulary (3 attributes)" in line
    line = one_error_line(runner.invoke(app, ["limit", "-o", str(tmp_path / "l"), "--vocabulary", str(vocab)]))
    assert "1000 queries need 1000 distinct attributes; the vocabulary has 3" in line
    line = one_error_line(runner.invoke(app, ["run", str(topic_folder(tmp_path, "x")), "-m", str(tmp_path / "nope")]))
    assert "cannot be loaded" in line


def test_pool_keeps_judged_documents_and_each_retrievers_top_k(tmp_path: Path) -> None:
    source = topic_folder(tmp_path, distractors=40)
    data = load_beir(source)
    bm25, hashing = make_retriever("bm25"), make_retriever("hashing")
    out = tmp_path / "pooled"
    stats = build_pooled(source, out, [bm25, hashing], top_k=3, max_queries=5, seed=3)
    pooled = load_beir(out)
    kept_q = sorted(pooled.qrels["test"])
    assert len(kept_q) == stats.queries == 5 and set(kept_q) <= set(data.qrels["test"])
    assert pooled.qrels["test"] == {q: data.qrels["test"][q] for q in kept_q}  # judgments unchanged
    doc_ids = list(data.corpus)
    texts = [data.doc_text(d) for d in doc_ids]
    want = {d for q in kept_q for d in data.qrels["test"][q]}
    for r in (bm25, hashing):
        for run in r.rank(doc_ids, texts, [data.queries[q] for q in kept_q], 3):
            want.update(run)
    assert set(pooled.corpus) == want and stats.documents == len(want) < len(data.corpus)
    card = (out / "README.md").read_text()
    assert "5 of 8 queries, sampled with seed 3" in card and "| bm25 |" in card and "| hashing |" in card
    assert json.loads((out / "pooling.json").read_text())["top_k"] == 3
    # A second run replaces the folder it wrote; a folder synth did not write is refused.
    build_pooled(source, out, [bm25], top_k=1)
    assert set(load_beir(out).qrels["test"]) == set(data.qrels["test"])
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    line = one_error_line(runner.invoke(app, ["pool", str(source), "-o", str(foreign), "-r", "bm25"]))
    assert "not written by synth" in line and (foreign / "notes.txt").read_text() == "keep me"


def test_pooled_split_keeps_the_ranking_of_retrievers(tmp_path: Path) -> None:
    source = topic_folder(tmp_path, distractors=60)
    out = tmp_path / "pooled"
    build_pooled(source, out, [make_retriever("bm25")], top_k=5)
    full = {m: evaluate_folder(source, make_retriever(m)).metrics["ndcg@10"] for m in ("bm25", "hashing-16")}
    small = {m: evaluate_folder(out, make_retriever(m)).metrics["ndcg@10"] for m in ("bm25", "hashing-16")}
    assert (full["bm25"] > full["hashing-16"]) == (small["bm25"] > small["hashing-16"])
    assert len(load_beir(out).corpus) < len(load_beir(source).corpus)


def likes(text: str) -> set[str]:
    """The attributes of "NAME likes A, B, ... and Z." (the shipped vocabulary has no ", " or " and ")."""
    head, last = text.split(" likes ", 1)[1].rstrip(".").rsplit(" and ", 1)
    return set(head.split(", ")) | {last}


def test_limit_smallest_n_and_the_combinatorial_qrels() -> None:
    assert smallest_n(1000, 2) == 46 and smallest_n(1035, 2) == 46 and smallest_n(1036, 2) == 47
    assert smallest_n(3, 2) == 3 and smallest_n(10, 3) == 5 and smallest_n(1, 1) == 1
    corpus, queries, qrels, n = build_limit_set(queries=1000, k=2, seed=0)
    assert n == 46 and len(corpus) == 46 and len(queries) == 1000
    pairs = [frozenset(docs) for docs in qrels.values()]
    assert all(len(p) == 2 for p in pairs) and len(set(pairs)) == 1000  # each query: its own pair of people
    liked = {row["_id"]: likes(row["text"]) for row in corpus}
    for qid, text in queries.items():
        item = text.removeprefix("Who likes ").removesuffix("?")
        assert {d for d, items in liked.items() if item in items} == set(qrels[qid])  # exactly k like it
    assert min(len(items) for items in liked.values()) >= 45


def test_limit_full_adds_distractors_that_like_no_queried_attribute() -> None:
    corpus, queries, qrels, n = build_limit_set(
        queries=30, k=3, size="full", documents=60, attributes_per_doc=10, seed=2
    )
    assert n == smallest_n(30, 3) == 7 and len(corpus) == 60
    queried = {t.removeprefix("Who likes ").removesuffix("?") for t in queries.values()}
    relevant = {d for docs in qrels.values() for d in docs}
    assert len(relevant) == n
    for row in corpus:
        if row["_id"] not in relevant:
            assert not likes(row["text"]) & queried and len(likes(row["text"])) == 10
    assert len({row["text"].split(" likes ")[0] for row in corpus}) == 60  # distinct names


def test_limit_cli_writes_a_small_set_bm25_solves(tmp_path: Path) -> None:
    out = tmp_path / "limit"
    result = runner.invoke(app, ["limit", "-o", str(out), "--queries", "200", "--attributes-per-doc", "20"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["core_documents"] == 21  # C(21, 2) = 210 >= 200
    assert "C(n, 2) >= 200" in (out / "README.md").read_text()
    bm25 = evaluate_folder(out, make_retriever("bm25"), recall_cutoffs=[2])
    assert bm25.metrics["recall@2"] > 0.9


def test_passkey_documents_have_exact_lengths_and_recorded_key_positions(tmp_path: Path) -> None:
    out = tmp_path / "passkey"
    stats = build_longembed("passkey", HAYSTACK, out, tokenizer="all-minilm-l6-v2", lengths=[64, 300], queries=6)
    tok = load_tokenizer("all-minilm-l6-v2")
    assert stats.tokens == {64: [64, 64], 300: [300, 300]}
    for length in (64, 300):
        data = load_beir(out / f"tokens-{length}")
        rows = [json.loads(line) for line in (out / f"tokens-{length}" / "corpus.jsonl").read_text().splitlines()]
        assert len(rows) == 6 and len(data.qrels["test"]) == 6
        for row in rows:
            ids = tok(row["text"], add_special_tokens=False)["input_ids"]
            meta = row["metadata"]
            assert len(ids) == meta["tokens"] == length
            inserted = tok.decode(ids[meta["insert_start"] : meta["insert_end"]])  # MiniLM is uncased
            assert " ' s pass key is " in inserted and inserted.endswith(
                " is the pass key of " + inserted.split(" '")[0] + "."
            )
            qid = next(q for q, docs in data.qrels["test"].items() if row["_id"] in docs)
            assert data.queries[qid].lower() == f"what is the pass key of {inserted.split(' ' + chr(39))[0]}?"
    again = build_longembed(
        "passkey", HAYSTACK, tmp_path / "again", tokenizer="all-minilm-l6-v2", lengths=[64], queries=6
    )
    assert again.tokens == {64: [64, 64]}
    assert (tmp_path / "again" / "tokens-64" / "corpus.jsonl").read_text() == (
        out / "tokens-64" / "corpus.jsonl"
    ).read_text()


def test_minilm_finds_passkeys_it_can_see_and_misses_those_past_its_256_tokens(tmp_path: Path) -> None:
    """MiniLM truncates at 256 tokens: keys inside that window are found, keys past it are not."""
    out = tmp_path / "passkey"
    build_longembed("passkey", HAYSTACK, out, tokenizer="all-minilm-l6-v2", lengths=[128, 1024], queries=16, seed=1)
    minilm = make_retriever("all-minilm-l6-v2")
    short = evaluate_folder(out / "tokens-128", minilm)
    assert short.metrics["accuracy@1"] >= 0.4  # 0.625 here; chance is 1/16
    long = evaluate_folder(out / "tokens-1024", minilm)
    rows = [json.loads(line) for line in (out / "tokens-1024" / "corpus.jsonl").read_text().splitlines()]
    hit = {q: long.ranked[q][0] == next(iter(docs)) for q, docs in load_beir(out / "tokens-1024").qrels["test"].items()}
    starts = {f"q{r['_id'][1:]}": r["metadata"]["insert_start"] for r in rows}
    hidden = [hit[q] for q, start in starts.items() if start >= 256]  # the key starts past what MiniLM reads
    assert len(hidden) >= 8 and sum(hidden) <= 1  # past the window: chance at best
    assert long.metrics["accuracy@1"] <= 0.25 < short.metrics["accuracy@1"]


def test_needle_set_and_its_limits(tmp_path: Path) -> None:
    out = tmp_path / "needle"
    stats = build_longembed("needle", HAYSTACK, out, tokenizer="all-minilm-l6-v2", lengths=[96], queries=10, seed=4)
    assert stats.tokens == {96: [96, 96]}
    data = load_beir(out / "tokens-96")
    assert all(q.endswith("?") for q in data.queries.values()) and len(data.corpus) == 10
    line = one_error_line(
        runner.invoke(app, ["needle", str(HAYSTACK), "-o", str(tmp_path / "n2"), "-l", "96", "--queries", "61"])
    )
    assert "61 needle queries asked" in line and "has 60" in line


def test_depth_rank_test_separates_a_shifted_set_and_not_a_same_one() -> None:
    rng = np.random.default_rng(0)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    centre = rng.normal(size=16)
    real = unit(centre + rng.normal(size=(80, 16)))
    same = unit(centre + rng.normal(size=(80, 16)))
    shifted = unit(centre + rng.normal(size=(80, 16)) + 3.0 * rng.normal(size=16))
    control = depth_rank_test(real, same)
    moved = depth_rank_test(real, shifted)
    assert control.p > 0.05 and 0.35 < control.q < 0.65
    assert moved.p < 1e-6 and moved.q < 0.2
    # depth of a reference point leaves itself out: 1 + mean cosine similarity to the others
    sims = real @ real.T
    assert control.depth_reference[0] == pytest.approx(1 + (sims[0].sum() - 1) / 79)


def test_shift_cli_and_report_section(tmp_path: Path) -> None:
    from datasets import Dataset

    real = topic_folder(tmp_path)
    generated = tmp_path / "gen.jsonl"
    generated.write_text(
        "".join(json.dumps({"text": f"tell me about {t.split()[0]} {i}"}) + "\n" for i, t in enumerate(TOPICS * 3))
    )
    plot = tmp_path / "shift.png"
    result = runner.invoke(
        app, ["shift", str(generated), "--real", str(real), "--model", "hashing", "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    tests = json.loads(result.stdout.splitlines()[-1])["tests"]
    assert [t["label"] for t in tests] == ["generated vs real", "control: real half vs real half"]
    assert tests[0]["n_other"] == len(TOPICS * 3) and tests[0]["n_reference"] == len(TOPICS)
    assert plot.stat().st_size > 1000
    output = tmp_path / "output"
    Dataset.from_dict({"anchor": [f"apple question {i}" for i in range(5)], "positive": ["p"] * 5}).save_to_disk(
        str(output)
    )
    assert "Not measured: no real queries" in shift_section(output, None, None)
    hashing = make_retriever("hashing").embedder  # type: ignore[attr-defined]
    section = shift_section(output, real, hashing)
    assert "| generated vs real | 8 | 5 |" in section and "plots/shift.png" in section
    assert (output / "plots" / "shift.png").exists()
