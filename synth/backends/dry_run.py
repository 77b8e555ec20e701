"""`dry-run`: a free, instant, deterministic LLM backend for checking a recipe's plumbing and cost.

Why it exists: `synth generate recipe.yaml --set llm.backend=dry-run` runs every step, filter,
cache, mining and export path of a recipe without loading a model or paying an API, and its
usage report counts what the real run would send. The unit tests use it for the same reason: the
step, filter, cache and resume logic is exercised in milliseconds instead of behind a vLLM engine.

A reply depends only on (messages, seed, sample index), through a hash:
- plain text: a few words of the last user message's longest paragraph (usually the passage), in
  their original order, so a reply reads like a keyword query about the passage; cut at the first
  `stop` string and at `max_tokens` words (one word counts as one token);
- `json_schema`: a JSON value valid for the schema (the subset `synth.parsers.validate` checks);
- `logprobs`: the first token's top candidates hold " yes" and " no" with log-probabilities from
  the hash (P(yes) strictly between 0 and 1), and the reply starts with the likelier one, so LLM
  judges and rescorers get real scores. Judges configured with other answer words score None.
Token counts are word counts. Nothing sleeps, nothing is imported beyond the standard library.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Sequence
from typing import Any

from synth.backends import Completion, Messages, ResultCallback, SamplingParams

# Bump when the reply rule changes: it is part of the model id, so request caches drop old replies.
RULE_VERSION = "1"
_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")
_LABEL = re.compile(r"^[ \t]*\w+:[ \t]+", re.MULTILINE)  # "Passage: ..." -> "..."
_STOPWORDS = {"the", "and", "for", "with", "that", "this", "from", "are", "was", "were", "which", "its", "into"}
_FALLBACK_WORDS = ["dry", "run", "reply"]
_FILLERS = [" The", " It", " This", " Maybe", " I", " A", " In", " To"]  # never yes/no in any case


def dry_run_model_id(spec: Any) -> str:
    """`dry-run:<model>@v<rule>`: the recipe's model name, without loading or resolving it."""
    return f"dry-run:{spec.model}@v{RULE_VERSION}"


def _words(messages: Messages) -> list[str]:
    """Distinct words (3+ letters, no stopwords, when there are enough) of the last user message's longest paragraph."""
    user = [m.get("content", "") for m in messages if m.get("role") == "user"]
    text = user[-1] if user else (messages[-1].get("content", "") if messages else "")
    paragraphs = [_LABEL.sub("", p) for p in re.split(r"\n\s*\n", text)]
    words = _WORD.findall(max(paragraphs, key=lambda p: len(_WORD.findall(p)), default=""))
    unique = list({w.casefold(): w for w in reversed(words)}.values())[::-1]  # first spelling, text order
    long = [w for w in unique if len(w) >= 3 and w.casefold() not in _STOPWORDS]
    return long if len(long) >= 3 else unique or _FALLBACK_WORDS


def _phrase(rng: random.Random, words: list[str], low: int, high: int) -> list[str]:
    """`low`..`high` words of `words`, kept in text order."""
    k = min(len(words), rng.randint(low, high))
    return [words[i] for i in sorted(rng.sample(range(len(words)), k))]


def _json_value(schema: dict[str, Any], rng: random.Random, words: list[str]) -> Any:
    """A value valid for `schema` (type, enum, properties/required, items, min/max items and length)."""
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type", "string")
    kind = next((t for t in kind if t != "null"), "null") if isinstance(kind, list) else kind
    if kind == "object":
        props = dict(schema.get("properties", {}))
        for key in schema.get("required", []):
            props.setdefault(key, {"type": "string"})
        return {key: _json_value(sub, rng, words) for key, sub in props.items()}
    if kind == "array":
        low, high = schema.get("minItems", 0), schema.get("maxItems", max(3, schema.get("minItems", 0)))
        count = min(high, max(low, rng.randint(2, 3)))
        return [_json_value(schema.get("items", {"type": "string"}), rng, words) for _ in range(count)]
    if kind == "integer":
        return rng.randint(0, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    text = " ".join(_phrase(rng, words, 2, 5))
    while len(text) < schema.get("minLength", 0):
        text = f"{text} {rng.choice(words)}".strip()
    return text[: schema["maxLength"]] if "maxLength" in schema else text


def _top_logprobs(first: str, p_yes: float, k: int) -> dict[str, float]:
    """First token's candidates: " yes" and " no" (always both, even for k < 2, so a score exists)
    share 90% of the mass; k - 2 fillers share the rest."""
    fillers = _FILLERS[: max(0, k - 2)]
    top = {" yes": math.log(0.9 * p_yes), " no": math.log(0.9 * (1 - p_yes))}
    top.update({f: math.log(0.1 / len(fillers)) for f in fillers})
    return top if first in top else {**top, first: math.log(0.01)}


def _sample(messages: Messages, params: SamplingParams, index: int) -> tuple[str, str, list[dict[str, float]]]:
    """(text, finish reason, per-token top log-probabilities) of sample `index`."""
    payload = json.dumps([messages, params.seed, index], ensure_ascii=False, sort_keys=True)
    rng = random.Random(hashlib.sha256(payload.encode()).digest())
    words = _words(messages)
    p_yes = rng.uniform(0.05, 0.95)
    if params.json_schema is not None:
        tokens = json.dumps(_json_value(params.json_schema, rng, words), ensure_ascii=False).split(" ")
    else:
        tokens = _phrase(rng, words, 3, 8)
        if params.logprobs is not None:
            tokens.insert(0, "yes" if p_yes >= 0.5 else "no")
    finish = "stop"
    if params.json_schema is None and len(tokens) > params.max_tokens:
        tokens, finish = tokens[: params.max_tokens], "length"  # a cut JSON value would be invalid
    text = " ".join(tokens)
    cuts = [text.find(s) for s in params.stop if s and s in text]
    if cuts:
        text, finish = text[: min(cuts)], "stop"
        tokens = text.split(" ") if text else []
    top: list[dict[str, float]] = []
    if params.logprobs is not None:
        for i, token in enumerate(tokens):
            spaced = f" {token}"
            top.append(_top_logprobs(spaced, p_yes, params.logprobs) if i == 0 else {spaced: math.log(0.9)})
    return text, finish, top


class DryRunBackend:
    """The LLMBackend protocol answered from a hash of the request: same request, same reply."""

    kind = "dry-run"

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.model_id = dry_run_model_id(spec)
        self.requests = 0  # conversations answered so far (lets tests see what reached the backend)

    def generate(
        self,
        conversations: Sequence[Messages],
        params: SamplingParams,
        on_result: ResultCallback | None = None,
    ) -> list[Completion]:
        results: list[Completion] = []
        for i, messages in enumerate(conversations):
            samples = [_sample(messages, params, s) for s in range(params.n)]
            completion = Completion(
                texts=[text for text, _, _ in samples],
                finish_reasons=[finish for _, finish, _ in samples],
                prompt_tokens=sum(len(m.get("content", "").split()) for m in messages),
                completion_tokens=sum(len(text.split()) for text, _, _ in samples),
                logprobs=[top for _, _, top in samples] if params.logprobs is not None else None,
            )
            self.requests += 1
            results.append(completion)
            if on_result:
                on_result(i, completion)
        return results

    def close(self) -> None:
        """Nothing to release."""
