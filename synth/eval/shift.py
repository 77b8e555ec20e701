"""Shift check: do generated queries sit where real queries sit? TTE depth and a rank test.

Why: synthetic queries that read nothing like the queries users type train a retriever for the
wrong job. Transformer-based text embedding depth (Seegmiller & Preum, EMNLP 2023) measures how
central each text is to a reference set: depth(x) = 2 - mean cosine distance from x to the
reference texts (leaving x out when it is one of them). With the real queries as reference, a
Wilcoxon rank-sum test asks whether generated queries are less central than real ones, and
Q = P(depth(real) <= depth(generated)) says by how much (0.5: as central; lower: further out).
The control splits the real queries in two halves and tests one against the other: its Q near
0.5 and large p show what "no shift" looks like at this sample size.

Same depths, W and p as the `tte-depth` package (checked to 1e-15), vectorised over normalised
embeddings instead of a Python loop per pair; Q is the paper's P(D(X) <= D(Y)), X real, Y
generated (the package's q_score ranks both samples together, so its value differs slightly).
The package itself is not a dependency: its wheel installs top-level `utils` and `__init__`
modules into site-packages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synth.eval.beir import EvalSetError, is_beir_folder, load_beir
from synth.eval.longembed import source_texts

REAL_HELP = "a BEIR folder (its test queries), or a jsonl/csv/parquet/text file with a `text` column"


@dataclass
class DepthTest:
    label: str  # e.g. "generated vs real"
    n_reference: int
    n_other: int
    q: float  # P(depth(reference) <= depth(other)); 0.5 = no shift, lower = other is further out
    w: float  # rank-sum statistic (reference depths greater than the other's)
    p: float  # one-sided p-value
    depth_reference: np.ndarray = field(repr=False)
    depth_other: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "n_reference": self.n_reference,
            "n_other": self.n_other,
            "Q": round(self.q, 4),
            "W": round(self.w, 3),
            "p": float(f"{self.p:.3g}"),
        }


def depth_rank_test(reference: np.ndarray, other: np.ndarray, label: str = "") -> DepthTest:
    """TTE depth of both sets with respect to `reference` (rows L2-normalised), Q, and the rank-sum test."""
    from scipy.stats import ranksums

    if len(reference) < 3 or len(other) < 1:
        raise EvalSetError(f"{label or 'shift check'}: needs at least 3 reference and 1 other text")
    sims = reference @ reference.T
    # depth = 2 - mean cosine distance = 1 + mean cosine similarity; self (similarity 1) left out
    depth_ref = 1.0 + (sims.sum(axis=1) - np.diag(sims)) / (len(reference) - 1)
    depth_other = 1.0 + (other @ reference.T).mean(axis=1)
    below = (depth_ref[None, :] < depth_other[:, None]).mean(axis=1)
    ties = (depth_ref[None, :] == depth_other[:, None]).mean(axis=1)
    q = float((below + 0.5 * ties).mean())
    w, p = ranksums(depth_ref, depth_other, alternative="greater")
    return DepthTest(label, len(reference), len(other), q, float(w), float(p), depth_ref, depth_other)


def _sample(texts: list[str], limit: int, rng: np.random.Generator) -> list[str]:
    if len(texts) <= limit:
        return texts
    return [texts[int(i)] for i in sorted(rng.choice(len(texts), size=limit, replace=False))]


def shift_check(
    generated: Sequence[str], real: Sequence[str], embedder: Any, *, seed: int = 0, max_texts: int = 2000
) -> list[DepthTest]:
    """[generated vs real, control: real half B vs half A], embedded as queries by `embedder`."""
    rng = np.random.default_rng(seed)
    gen = _sample(list(dict.fromkeys(generated)), max_texts, rng)
    ref = _sample(list(dict.fromkeys(real)), max_texts, rng)
    if len(ref) < 6:
        raise EvalSetError(f"the shift check needs at least 6 distinct real queries; got {len(ref)}")
    if not gen:
        raise EvalSetError("the shift check got no generated text")
    vectors = embedder.embed(gen + ref, role="query")
    gen_v, ref_v = vectors[: len(gen)], vectors[len(gen) :]
    order = rng.permutation(len(ref))
    half_a, half_b = ref_v[order[: len(ref) // 2]], ref_v[order[len(ref) // 2 :]]
    return [
        depth_rank_test(ref_v, gen_v, "generated vs real"),
        depth_rank_test(half_a, half_b, "control: real half vs real half"),
    ]


def read_texts(path: Path, column: str | None = None, split: str = "test") -> list[str]:
    """Texts of a synth output / saved dataset (`column`, default anchor), a BEIR folder's queries
    (those of `split` when it has qrels for it), or a source file (`column`, default text)."""
    path = Path(path)
    if is_beir_folder(path):
        data = load_beir(path)
        qids = [q for q in data.qrels.get(split, {}) if q in data.queries] or list(data.queries)
        texts = [data.queries[q] for q in qids]
    elif path.is_dir() and ((path / "state.json").exists() or (path / "dataset_info.json").exists()):
        from datasets import load_from_disk

        dataset = load_from_disk(str(path))
        name = column or "anchor"
        if name not in dataset.column_names:
            raise EvalSetError(f"{path}: no column {name!r} (columns: {', '.join(dataset.column_names)})")
        texts = [t for t in dataset[name] if isinstance(t, str)]
    else:
        texts = source_texts(path, column or "text")
    texts = list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))
    if not texts:
        raise EvalSetError(f"{path}: no texts found")
    return texts


def shift_plot(tests: Sequence[DepthTest], path: Path) -> Path:
    """Depth histograms, one panel per test: reference depths vs the other set's depths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tests), figsize=(5.5 * len(tests), 3.6), squeeze=False)
    for ax, t in zip(axes[0], tests, strict=True):
        low = min(t.depth_reference.min(), t.depth_other.min())
        high = max(t.depth_reference.max(), t.depth_other.max())
        bins = np.linspace(low, high, 30)
        other, reference = t.label.split(" vs ") if " vs " in t.label else ("other", "reference")
        other = other.removeprefix("control: ")
        if other == reference:  # the control: two halves of one set
            other, reference = f"{other} B", f"{reference} A"
        ax.hist(t.depth_reference, bins=bins, density=True, alpha=0.55, label=f"{reference} (n={t.n_reference})")
        ax.hist(t.depth_other, bins=bins, density=True, alpha=0.55, label=f"{other} (n={t.n_other})")
        ax.set_title(f"{t.label}\nQ = {t.q:.3f}, p = {t.p:.2g}", fontsize=9)
        ax.set_xlabel("TTE depth w.r.t. the reference (higher = more central)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def verdict(t: DepthTest, alpha: float = 0.01) -> str:
    if t.p >= alpha:
        return "no detectable shift"
    return "shifted: less central than the reference" if t.q < 0.5 else "more central than the reference (narrower)"


def shift_markdown(tests: Sequence[DepthTest], plot: str | None) -> str:
    lines = [
        "## Shift: generated vs real queries",
        "",
        "TTE depth with the real queries as reference (Seegmiller & Preum, 2023); Q = P(depth(real) <= "
        "depth(generated)): 0.5 = as central as real queries, lower = further out. The control tests one "
        "half of the real queries against the other.",
        "",
        "| comparison | reference n | other n | Q | W | p (one-sided) | verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for t in tests:
        lines.append(
            f"| {t.label} | {t.n_reference} | {t.n_other} | {t.q:.3f} | {t.w:.2f} | {t.p:.3g} | {verdict(t)} |"
        )
    if plot:
        lines += ["", f"![TTE depth]({plot})"]
    return "\n".join(lines) + "\n"


def missing_real_markdown() -> str:
    return (
        "## Shift: generated vs real queries\n\n"
        "Not measured: no real queries were given. The check compares the generated queries with queries "
        f"your users really ask ({REAL_HELP}), e.g. `synth eval shift OUTPUT --real queries.jsonl`.\n"
    )


def shift_section(
    folder: Path, real: Path | None, embedder: Any, *, column: str = "anchor", split: str = "test", seed: int = 0
) -> str:
    """The report's section for the output `folder`: the test table and `plots/shift.png`, or what it needs."""
    if real is None:
        return missing_real_markdown()
    tests = shift_check(read_texts(folder, column), read_texts(real, split=split), embedder, seed=seed)
    shift_plot(tests, Path(folder) / "plots" / "shift.png")
    return shift_markdown(tests, "plots/shift.png")
