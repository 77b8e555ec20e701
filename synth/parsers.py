"""Turn one raw LLM reply into a list of values, or say precisely why it could not.

Small models wrap answers in quotes, labels, list markers, code fences and prose. Every parser
here strips that noise and returns a list (so one reply can explode into several rows) or raises
`ParseError` whose `reason` is a short stable slug that steps record as the row's drop reason.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from synth.backends import Completion

ParserKind = Literal["text", "lines", "json", "regex"]

# Generic answer labels a model puts before its output ("Query 1:", "**Question:**").
_LABEL = re.compile(
    r"^\**\s*(?:search\s+)?(?:query|queries|question|paraphrase|answer|keywords|claim|passage)"
    r"(?:\s*\d+)?\s*\**\s*:\s*\**\s*",
    re.IGNORECASE,
)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "„": "“"}
_LIST_MARKER = re.compile(r"^(?:•\s*|(?:[-*+]|\(?\d{1,3}[.)])(?:\s+|$))")
_FENCE = re.compile(r"^(?:```[\w-]*|[-*_=]{3,})$")  # code fences and markdown rules
_ANNOTATIONS = {"title", "description", "$schema", "$id", "default", "examples", "$comment"}
_KEYWORDS = {
    "type", "properties", "required", "items", "enum", "minLength", "maxLength",
    "minItems", "maxItems", "additionalProperties",
}  # fmt: skip
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: _TYPES["number"](v) and v % 1 == 0,  # 1.0 counts, as in JSON Schema
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class ParseError(ValueError):
    """A reply that cannot be turned into values; `reason` is a stable slug for drop reports."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def clean_text(text: str) -> str:
    """Strip whitespace, generic labels and surrounding quotes (in any nesting order)."""
    s = " ".join(text.split())
    for _ in range(4):  # e.g. 'Query: "..."' or '"Query: ..."'
        before = s
        s = _LABEL.sub("", s, count=1).strip()
        if len(s) >= 2 and s[0] in _QUOTES and s[-1] == _QUOTES[s[0]]:
            inner = s[1:-1]
            if s[0] not in inner and s[-1] not in inner:  # not '"a" and "b"'
                s = inner.strip()
        if s == before:
            break
    return s


def _parse_text(text: str, schema: dict[str, Any] | None, pattern: str | None) -> list[Any]:
    s = clean_text(text)
    if not s:
        raise ParseError("empty", "reply has no text")
    return [s]


def _parse_lines(text: str, schema: dict[str, Any] | None, pattern: str | None) -> list[Any]:
    out: list[str] = []
    seen: set[str] = set()
    for raw in text.splitlines():
        line = clean_text(_LIST_MARKER.sub("", raw.strip(), count=1))
        if line and line not in seen and not _FENCE.match(line):
            seen.add(line)
            out.append(line)
    if not out:
        raise ParseError("no_lines", "reply has no non-empty lines")
    return out


def _first_json(text: str) -> Any:
    """Decode the first JSON object/array anywhere in the text (fences, prose around it)."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        with contextlib.suppress(ValueError):
            return decoder.raw_decode(text, m.start())[0]
    raise ParseError("invalid_json", "no JSON object or array found")


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> None:
    """Check `value` against a JSON-schema subset; raise ParseError('schema_mismatch')."""
    unknown = set(schema) - _KEYWORDS - _ANNOTATIONS
    if unknown:  # refuse rather than silently not enforce a constraint
        raise ValueError(f"unsupported JSON schema keyword(s) at {path}: {sorted(unknown)}")

    def fail(problem: str) -> None:
        raise ParseError("schema_mismatch", f"{path}: {problem}")

    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not set(types) <= set(_TYPES):
            raise ValueError(f"unsupported JSON schema type at {path}: {schema['type']!r}")
        if not any(_TYPES[t](value) for t in types):
            fail(f"expected {'/'.join(types)}, got {type(value).__name__}")
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        fail(f"{value!r} not in enum {schema['enum']!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            fail(f"string shorter than minLength {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            fail(f"string longer than maxLength {schema['maxLength']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            fail(f"{len(value)} items, fewer than minItems {schema['minItems']}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            fail(f"{len(value)} items, more than maxItems {schema['maxItems']}")
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                fail(f"missing required property {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                validate(item, props[key], f"{path}.{key}")
            elif extra is False:
                fail(f"unexpected property {key!r}")
            elif isinstance(extra, dict):
                validate(item, extra, f"{path}.{key}")


def _parse_json(text: str, schema: dict[str, Any] | None, pattern: str | None) -> list[Any]:
    value = _first_json(text)
    if schema is not None:
        validate(value, schema)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ParseError("empty", "JSON array is empty")
    return items


def _parse_regex(text: str, schema: dict[str, Any] | None, pattern: str | None) -> list[Any]:
    if not pattern:
        raise ValueError("parser kind 'regex' needs a pattern")
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid regex {pattern!r}: {e}") from e
    out: list[Any] = []
    for m in rx.finditer(text):
        if rx.groupindex:
            out.append({k: v.strip() if v is not None else None for k, v in m.groupdict().items()})
            continue
        s = (m.group(1) if rx.groups == 1 else m.group(0)) or ""
        if s.strip():
            out.append(s.strip())
    if not out:
        raise ParseError("no_match", f"pattern {pattern!r} matched nothing")
    return out


_PARSERS: dict[str, Callable[[str, dict[str, Any] | None, str | None], list[Any]]] = {
    "text": _parse_text, "lines": _parse_lines, "json": _parse_json, "regex": _parse_regex,
}  # fmt: skip
PARSER_KINDS: tuple[str, ...] = tuple(_PARSERS)


def parse_reply(
    text: str,
    kind: ParserKind,
    *,
    schema: dict[str, Any] | None = None,
    pattern: str | None = None,
    max_items: int | None = None,
) -> list[Any]:
    """Parse one reply into values (one per output row); `max_items` caps every kind."""
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ValueError(f"unknown parser kind {kind!r}; expected one of {list(_PARSERS)}")
    values = parser(text, schema, pattern)
    return values[:max_items] if max_items is not None else values


_ANSWER_STRIP = " \t\n.,:;!?\"'*_()[]"


def yes_probability(completion: Completion, yes: Sequence[str] = ("yes",), no: Sequence[str] = ("no",)) -> float | None:
    """P(yes) / (P(yes) + P(no)) over the first generated token's top log-probabilities.

    The one yes/no scorer (LLM-judge filter and mining rescorer). None means unscorable: the
    request failed, there are no log-probabilities, or neither answer is among the candidates.
    Callers must never treat None as a pass (a judge drops the row, a rescorer counts it).
    Why log-probabilities: a one-token greedy reply is a coin with no edge; the probability
    ratio is a score that can be thresholded for the price of one generated token.
    """
    if completion.error is not None or not completion.logprobs or not completion.logprobs[0]:
        return None
    yes_set = {w.casefold() for w in yes}
    no_set = {w.casefold() for w in no}
    p_y = p_n = 0.0
    for token, logprob in completion.logprobs[0][0].items():
        word = token.strip(_ANSWER_STRIP).casefold()
        if word in yes_set:
            p_y += math.exp(logprob)
        elif word in no_set:
            p_n += math.exp(logprob)
    if p_y + p_n == 0.0:
        return None
    return p_y / (p_y + p_n)
