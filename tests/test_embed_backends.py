"""embedder.backend: torch | onnx | onnx-int8 on the bundled MiniLM (real export, real ONNX Runtime).

The exports go to a temporary SYNTH_HOME of this module, so the first load really exports and the
second really reuses; a handful of texts keeps it to a few seconds of CPU.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from pydantic import ValidationError

from synth.cache import EmbeddingCache
from synth.embed_onnx import FILES, OnnxBackendError, export_folder
from synth.embedders import SentenceTransformerEmbedder, embedder_model_id, make_embedder
from synth.models import resolve_model
from synth.recipe import RecipeError, load_recipe
from synth.specs import EmbedderSpec

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
TEXTS = [
    "How do statins lower cholesterol?",
    "Statins block HMG-CoA reductase, the liver enzyme that makes cholesterol, so LDL levels fall.",
    "The Eiffel Tower was finished in 1889 for the World's Fair in Paris.",
    "Regular aerobic exercise improves insulin sensitivity in adults with type 2 diabetes.",
]


@pytest.fixture(scope="module")
def synth_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("synth-home")
    before = os.environ.get("SYNTH_HOME")
    os.environ["SYNTH_HOME"] = str(home)
    yield home
    if before is None:
        os.environ.pop("SYNTH_HOME", None)
    else:
        os.environ["SYNTH_HOME"] = before


@pytest.fixture(scope="module")
def torch_vectors(embedder: SentenceTransformerEmbedder) -> np.ndarray:
    return embedder.embed(TEXTS, role="document")


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_onnx_matches_torch_and_is_exported_once(synth_home: Path, torch_vectors: np.ndarray) -> None:
    first = SentenceTransformerEmbedder(EmbedderSpec(backend="onnx"))
    assert first.exported
    folder = export_folder("all-minilm-l6-v2", Path(resolve_model("all-minilm-l6-v2")))
    assert folder.parent.parent == synth_home / "models"  # synth's cache, never the read-only wheel
    assert first.onnx_path == folder / FILES["onnx"] and (folder / "model.onnx.json").is_file()
    vectors = first.embed(TEXTS, role="document")
    assert vectors.shape == torch_vectors.shape and vectors.dtype == np.float32
    assert np.min(np.sum(vectors * torch_vectors, axis=1)) > 0.9999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    files = mtimes(folder)
    again = SentenceTransformerEmbedder(EmbedderSpec(backend="onnx"))
    assert not again.exported and mtimes(folder) == files  # reused, nothing rewritten
    np.testing.assert_allclose(again.embed(TEXTS, role="document"), vectors, atol=1e-6)


def test_int8_is_close_to_torch_and_reuses_the_fp32_export(synth_home: Path, torch_vectors: np.ndarray) -> None:
    folder = export_folder("all-minilm-l6-v2", Path(resolve_model("all-minilm-l6-v2")))
    SentenceTransformerEmbedder(EmbedderSpec(backend="onnx"))  # the fp32 export exists (made here if alone)
    fp32 = (folder / "model.onnx").stat().st_mtime_ns
    quantized = SentenceTransformerEmbedder(EmbedderSpec(backend="onnx-int8"))
    assert quantized.onnx_path == folder / FILES["onnx-int8"]
    assert (folder / "model.onnx").stat().st_mtime_ns == fp32  # quantized from the kept export
    assert quantized.onnx_path.stat().st_size < (folder / "model.onnx").stat().st_size * 0.7
    graph = onnx.load(str(quantized.onnx_path)).graph
    ops = Counter(node.op_type for node in graph.node)
    assert ops["QAttention"] == 6 and ops["MatMulInteger"] == 18 and ops["MatMul"] == 0  # every layer int8
    # ... but the word-embedding table stays float32: quantizing it cost 0.003 nDCG@10 and no speed
    dtypes = {init.name: init.data_type for init in graph.initializer}
    assert dtypes["inner.embeddings.word_embeddings.weight"] == onnx.TensorProto.FLOAT
    vectors = quantized.embed(TEXTS, role="query")
    assert np.min(np.sum(vectors * torch_vectors, axis=1)) > 0.99
    assert not SentenceTransformerEmbedder(EmbedderSpec(backend="onnx-int8")).exported


def test_half_written_export_is_not_trusted(synth_home: Path, tmp_path: Path) -> None:
    """A model file without its .json marker (a crash mid-export) is exported again."""
    source = tmp_path / "minilm"
    shutil.copytree(resolve_model("all-minilm-l6-v2"), source)
    folder = export_folder(str(source), source)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"not a model")
    embedder = SentenceTransformerEmbedder(EmbedderSpec(model=str(source), backend="onnx"))
    assert embedder.exported and (folder / "model.onnx.json").is_file()
    assert embedder.embed(["a short text"], role="query").shape == (1, 384)


def test_export_is_keyed_by_the_source_fingerprint(tmp_path: Path) -> None:
    source = tmp_path / "model"
    shutil.copytree(resolve_model("all-minilm-l6-v2"), source)
    before = export_folder(str(source), source)
    (source / "config_sentence_transformers.json").write_text(
        (source / "config_sentence_transformers.json").read_text() + "\n"
    )
    assert export_folder(str(source), source) != before  # changed weights/config: a new export


def test_cache_key_differs_per_backend() -> None:
    ids = {b: embedder_model_id(EmbedderSpec(backend=b)) for b in ("torch", "onnx", "onnx-int8")}
    assert len(set(ids.values())) == 3
    assert "+" not in ids["torch"]  # torch ids unchanged: caches written before backends existed stay valid
    keys = {EmbeddingCache.key(model_id, None, "same text") for model_id in ids.values()}
    assert len(keys) == 3


def test_bad_backend_is_one_clear_error() -> None:
    with pytest.raises(ValidationError, match=r"'torch', 'onnx' or 'onnx-int8'"):
        EmbedderSpec(backend="tensorrt")
    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, ["embedder.backend=tensorrt"])
    assert "backend" in str(info.value) and "\n" not in str(info.value).strip()
    with pytest.raises(ValidationError, match="runs on the CPU"):
        EmbedderSpec(backend="onnx", device="cuda")
    with pytest.raises(ValueError, match="sentence-transformers models only"):
        make_embedder(EmbedderSpec(model="hashing", backend="onnx"))


def test_model_without_a_transformer_is_refused(synth_home: Path, tmp_path: Path) -> None:
    """A static-embedding model has no transformer graph to export: one clear error, no export kept."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding

    minilm = SentenceTransformer(resolve_model("all-minilm-l6-v2"), device="cpu")
    weights = minilm[0].model.embeddings.word_embeddings.weight.detach().numpy()
    static = tmp_path / "static"
    SentenceTransformer(modules=[StaticEmbedding(minilm.tokenizer.backend_tokenizer, embedding_weights=weights)]).save(
        str(static)
    )
    with pytest.raises(OnnxBackendError, match="use backend: torch"):
        SentenceTransformerEmbedder(EmbedderSpec(model=str(static), backend="onnx"))
    assert not any(export_folder(str(static), static).glob("*.onnx"))
