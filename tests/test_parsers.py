"""Tests for synth.parsers and the shipped prompts/*.j2 templates (literal expected outputs)."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
from jinja2 import StrictUndefined, UndefinedError, meta
from jinja2.sandbox import SandboxedEnvironment

from synth.parsers import PARSER_KINDS, ParseError, clean_text, parse_reply, validate

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
TEMPLATES = sorted(PROMPTS.glob("*.j2"))
STYLES = ["question", "keywords", "claim"]
QUERIES_SCHEMA = {"type": "array", "items": {"type": "string", "minLength": 3}, "minItems": 1}
MARKER = re.compile(r"^### (system|user|assistant)[ \t]*$", re.MULTILINE)


def reason_of(text: str, kind: str, **kw: object) -> str:
    with pytest.raises(ParseError) as info:
        parse_reply(text, kind, **kw)  # type: ignore[arg-type]
    assert str(info.value).startswith(info.value.reason)
    return info.value.reason


# --- text -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("  What is the capital of France?  ", "What is the capital of France?"),
        ('"What is the capital of France?"', "What is the capital of France?"),
        ("'capital of France'", "capital of France"),
        ("“Paris is the capital of France.”", "Paris is the capital of France."),
        ("Query: capital of France", "capital of France"),
        ("QUESTION:   Where is Paris?", "Where is Paris?"),
        ('Paraphrase: "Paris is big."', "Paris is big."),
        ('"Answer: Paris"', "Paris"),
        ("**Query:** capital   of\n\tFrance", "capital of France"),
        ("Query 1: capital of France", "capital of France"),
        ('"a" and "b"', '"a" and "b"'),  # not one quoted span: keep the quotes
        ("Note: Paris is big.", "Note: Paris is big."),  # not a generic label: keep it
        ("Wie groß ist München? 日本語 — café", "Wie groß ist München? 日本語 — café"),
        ("« Où est Paris ? »", "Où est Paris ?"),
    ],
)
def test_text_strips_quotes_labels_and_whitespace(reply: str, expected: str) -> None:
    assert parse_reply(reply, "text") == [expected]


@pytest.mark.parametrize("reply", ["", "   \n\t ", '""', "Query:", 'Question: " "'])
def test_text_empty_reply_is_rejected(reply: str) -> None:
    assert reason_of(reply, "text") == "empty"


def test_clean_text_is_public_and_idempotent() -> None:
    once = clean_text('  Query: "deep   sea fish" ')
    assert once == "deep sea fish"
    assert clean_text(once) == once


# --- lines ------------------------------------------------------------------------------------


def test_lines_strip_markers_quotes_and_labels() -> None:
    reply = '1. first query\n2) "second query"\n- third\n* fourth\n•fifth\n(6) Query: sixth\n'
    assert parse_reply(reply, "lines") == [
        "first query",
        "second query",
        "third",
        "fourth",
        "fifth",
        "sixth",
    ]


def test_lines_keep_numbers_that_are_not_markers() -> None:
    assert parse_reply("1.5 million users\n2024 budget\n-5 degrees", "lines") == [
        "1.5 million users",
        "2024 budget",
        "-5 degrees",
    ]


def test_lines_drop_empty_and_fence_lines_and_dedupe_in_order() -> None:
    reply = "```\nb query\n\n   \na query\nb query\n- a query\n```"
    assert parse_reply(reply, "lines") == ["b query", "a query"]


def test_lines_max_items_truncates_after_dedupe() -> None:
    reply = "one\none\ntwo\nthree\nfour"
    assert parse_reply(reply, "lines", max_items=2) == ["one", "two"]
    assert parse_reply(reply, "lines", max_items=10) == ["one", "two", "three", "four"]


@pytest.mark.parametrize("reply", ["", "\n\n  \n", "1.\n- \n* \n-", "```\n---\n```"])
def test_lines_nothing_left_is_rejected(reply: str) -> None:
    assert reason_of(reply, "lines") == "no_lines"


def test_lines_unicode() -> None:
    assert parse_reply("1. ¿Qué es la fotosíntesis?\n2. 光合作用とは", "lines") == [
        "¿Qué es la fotosíntesis?",
        "光合作用とは",
    ]


# --- json -------------------------------------------------------------------------------------


def test_json_in_fence_with_prose_explodes_array() -> None:
    reply = 'Sure! Here are the queries:\n```json\n["q one", "q two", "q three"]\n```\nHope it helps.'
    assert parse_reply(reply, "json", schema=QUERIES_SCHEMA) == ["q one", "q two", "q three"]


def test_json_object_in_prose_yields_one_item() -> None:
    reply = 'The answer is {"query": "héllo wörld", "score": 2} as requested {"x": 1}'
    assert parse_reply(reply, "json") == [{"query": "héllo wörld", "score": 2}]


def test_json_skips_brackets_that_do_not_decode() -> None:
    reply = "Output [as JSON]: {oops} then [1, 2]"
    assert parse_reply(reply, "json") == [1, 2]


def test_json_max_items() -> None:
    assert parse_reply('["a", "b", "c"]', "json", max_items=2) == ["a", "b"]


@pytest.mark.parametrize("reply", ["", "no json here", '{"a": 1', "```json\n```", "[unquoted]"])
def test_json_missing_is_invalid_json(reply: str) -> None:
    assert reason_of(reply, "json") == "invalid_json"


def test_json_empty_array_is_empty() -> None:
    assert reason_of("[]", "json") == "empty"


OBJ_SCHEMA = {
    "type": "object",
    "required": ["query", "label"],
    "additionalProperties": False,
    "properties": {
        "query": {"type": "string", "minLength": 2, "maxLength": 20},
        "label": {"enum": ["pos", "neg"]},
        "score": {"type": "number"},
        "rank": {"type": "integer"},
        "ok": {"type": "boolean"},
        "note": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
    },
}


def test_schema_accepts_valid_object() -> None:
    obj = {"query": "abc", "label": "pos", "score": 0.5, "rank": 2.0, "ok": True, "note": None}
    assert parse_reply(json.dumps(obj), "json", schema=OBJ_SCHEMA) == [obj]


@pytest.mark.parametrize(
    ("obj", "detail"),
    [
        ({"label": "pos"}, "$: missing required property 'query'"),
        ({"query": 5, "label": "pos"}, "$.query: expected string, got int"),
        ({"query": "a", "label": "pos"}, "$.query: string shorter than minLength 2"),
        ({"query": "x" * 21, "label": "pos"}, "$.query: string longer than maxLength 20"),
        ({"query": "ab", "label": "maybe"}, "$.label: 'maybe' not in enum ['pos', 'neg']"),
        ({"query": "ab", "label": "pos", "x": 1}, "$: unexpected property 'x'"),
        ({"query": "ab", "label": "pos", "score": True}, "$.score: expected number, got bool"),
        ({"query": "ab", "label": "pos", "rank": 1.5}, "$.rank: expected integer, got float"),
        ({"query": "ab", "label": "pos", "ok": 1}, "$.ok: expected boolean, got int"),
        ({"query": "ab", "label": "pos", "note": 3}, "$.note: expected string/null, got int"),
        (
            {"query": "ab", "label": "pos", "tags": ["a", "b", "c"]},
            "$.tags: 3 items, more than maxItems 2",
        ),
        ({"query": "ab", "label": "pos", "tags": ["a", 1]}, "$.tags[1]: expected string, got int"),
    ],
)
def test_schema_mismatch_names_path_and_problem(obj: dict, detail: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_reply(json.dumps(obj), "json", schema=OBJ_SCHEMA)
    assert info.value.reason == "schema_mismatch"
    assert info.value.detail == detail
    assert str(info.value) == f"schema_mismatch: {detail}"


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        ("[]", "$: 0 items, fewer than minItems 1"),
        ('["ok query", "no"]', "$[1]: string shorter than minLength 3"),
        ('{"queries": ["a"]}', "$: expected array, got dict"),
        ('["fine", null]', "$[1]: expected string, got NoneType"),
    ],
)
def test_queries_schema_violations(reply: str, detail: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_reply(reply, "json", schema=QUERIES_SCHEMA)
    assert (info.value.reason, info.value.detail) == ("schema_mismatch", detail)


def test_enum_does_not_confuse_bool_and_int() -> None:
    validate(1, {"enum": [1, 2]})
    with pytest.raises(ParseError, match="not in enum"):
        validate(True, {"enum": [1, 2]})


def test_additional_properties_schema_validates_extras() -> None:
    schema = {"type": "object", "additionalProperties": {"type": "integer"}}
    validate({"a": 1, "b": 2}, schema)
    with pytest.raises(ParseError, match=r"\$\.b: expected integer"):
        validate({"a": 1, "b": "x"}, schema)


@pytest.mark.parametrize("schema", [{"type": "array", "pattern": "x"}, {"type": "tuple"}])
def test_unsupported_schema_is_a_programming_error(schema: dict) -> None:
    with pytest.raises(ValueError) as info:
        parse_reply("[1]", "json", schema=schema)
    assert not isinstance(info.value, ParseError)
    assert "unsupported" in str(info.value)


# --- regex ------------------------------------------------------------------------------------


def test_regex_named_groups_give_dicts_for_every_match() -> None:
    reply = "Q:  what is dna ? | A: a molecule \nQ: what is rna? | A:  another one"
    pattern = r"Q:(?P<query>[^|]*)\|\s*A:(?P<answer>.*)"
    assert parse_reply(reply, "regex", pattern=pattern) == [
        {"query": "what is dna ?", "answer": "a molecule"},
        {"query": "what is rna?", "answer": "another one"},
    ]


def test_regex_one_group_gives_that_group() -> None:
    reply = "Query: alpha\nnoise\nQuery:  beta  \nQuery: ünïcödé"
    assert parse_reply(reply, "regex", pattern=r"Query:(.*)") == ["alpha", "beta", "ünïcödé"]
    assert parse_reply(reply, "regex", pattern=r"Query:(.*)", max_items=1) == ["alpha"]


def test_regex_no_group_gives_whole_match() -> None:
    assert parse_reply("ids: ab-12, cd-34.", "regex", pattern=r"\w\w-\d+") == ["ab-12", "cd-34"]


def test_regex_unmatched_optional_named_group_is_none() -> None:
    got = parse_reply("x=1 y", "regex", pattern=r"(?P<k>[xy])(?:=(?P<v>\d))?")
    assert got == [{"k": "x", "v": "1"}, {"k": "y", "v": None}]


@pytest.mark.parametrize("reply", ["", "   ", "nothing relevant"])
def test_regex_no_match(reply: str) -> None:
    assert reason_of(reply, "regex", pattern=r"Query:(.+)") == "no_match"


def test_regex_blank_matches_do_not_count() -> None:
    assert reason_of("Query:   \nQuery:", "regex", pattern=r"Query:(.*)") == "no_match"


def test_regex_needs_valid_pattern() -> None:
    with pytest.raises(ValueError, match="needs a pattern"):
        parse_reply("x", "regex")
    with pytest.raises(ValueError, match="invalid regex"):
        parse_reply("x", "regex", pattern="(")


# --- API --------------------------------------------------------------------------------------


def test_api_rejects_unknown_kind_and_bad_max_items() -> None:
    assert PARSER_KINDS == ("text", "lines", "json", "regex")
    with pytest.raises(ValueError, match="unknown parser kind 'yaml'"):
        parse_reply("x", "yaml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_items"):
        parse_reply("x", "lines", max_items=0)


def test_parse_error_message_and_pickling() -> None:
    err = ParseError("no_match", "pattern 'x' matched nothing")
    assert isinstance(err, ValueError)
    assert str(err) == "no_match: pattern 'x' matched nothing"
    assert str(ParseError("empty")) == "empty"
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.detail, str(back)) == (err.reason, err.detail, str(err))


# --- prompt templates -------------------------------------------------------------------------


def env() -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=StrictUndefined)


def header(path: Path) -> dict[str, str]:
    """The `Key: value` lines of a template's leading {# ... #} comment."""
    source = path.read_text(encoding="utf-8")
    m = re.match(r"\{#(.*?)#\}", source, re.DOTALL)
    assert m, f"{path.name}: must start with a {{# ... #}} header"
    return dict(re.findall(r"^(Variables|Parser|Model):\s*(.+)$", m.group(1), re.MULTILINE))


def variables(path: Path) -> dict[str, str]:
    """{'text': 'required', 'title': 'optional', ...} from the header's Variables line."""
    return dict(re.findall(r"(\w+) \((required|optional)[^)]*\)", header(path)["Variables"]))


def messages(rendered: str) -> list[tuple[str, str]]:
    """Split rendered text on `### role` lines, as prompts.py does."""
    parts = MARKER.split(rendered)
    assert parts[0].strip() == "", f"text before the first marker: {parts[0]!r}"
    return [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts), 2)]


def sample_vars(path: Path, *, optional: bool = True) -> dict[str, str]:
    values = {
        "text": "Mitochondria make ATP for the cell.",
        "title": "T",
        "query": "q",
        "n": "3",
        "style": "question",
        "family": "short-long",
        "grade": "topical",
        "examples": ["find papers that answer a clinical question"],
    }
    wanted = variables(path)
    return {k: values[k] for k, need in wanted.items() if optional or need == "required"}


def _takes_a_passage(path: Path) -> bool:
    return variables(path).get("text") == "required"


# Templates that write something about a passage (`text`): the few-shot conventions below hold for
# them. Templates without a passage (E5 brainstorm/example, translate) are covered end to end by
# tests/test_recipes_papers.py, which runs their recipes.
# Templates for base (not instruction-tuned) models: one user message of plain few-shot text the
# model continues, no assistant turns (header `Model: base`); checked by their own test below.
BASE_TEMPLATES = [p for p in TEMPLATES if header(p).get("Model", "").startswith("base")]
PASSAGE_TEMPLATES = [p for p in TEMPLATES if _takes_a_passage(p) and p not in BASE_TEMPLATES]


def test_expected_templates_ship() -> None:
    names = {p.name for p in TEMPLATES}
    assert {
        "query_question.j2", "query_keywords.j2", "query_claim.j2", "query.j2",
        "queries_json.j2", "paraphrase.j2", "hard_negative.j2",
    } <= names  # fmt: skip


def test_queries_json_header_declares_the_guided_decoding_schema() -> None:
    parser = header(PROMPTS / "queries_json.j2")["Parser"]
    assert parser.startswith("json, schema ")
    assert json.loads(parser.removeprefix("json, schema ")) == QUERIES_SCHEMA


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_template_parses_and_has_header_and_user_marker(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    ast = env().parse(source)
    assert source.startswith("{#")
    assert re.search(r"^### user[ \t]*$", source, re.MULTILINE)
    info = header(path)
    assert info["Parser"].split(",")[0].strip() in PARSER_KINDS
    # every variable the template reads is declared in its header, and vice versa
    assert meta.find_undeclared_variables(ast) == set(variables(path))


@pytest.mark.parametrize("path", PASSAGE_TEMPLATES, ids=lambda p: p.name)
@pytest.mark.parametrize("optional", [True, False], ids=["all-vars", "required-only"])
def test_template_renders_to_chat_messages(path: Path, optional: bool) -> None:
    values = sample_vars(path, optional=optional)
    styles = STYLES if "style" in values else [None]
    for style in styles:
        if style:
            values["style"] = style
        msgs = messages(env().from_string(path.read_text(encoding="utf-8")).render(**values))
        roles = [role for role, _ in msgs]
        assert roles.count("assistant") >= 1  # at least one few-shot pair
        assert all(content for _, content in msgs), f"empty message in {path.name}: {msgs}"
        assert values["text"] in msgs[-1][1]
        assert "honey" not in msgs[-1][1].lower()  # the few-shot passage stays in the example
        turns = roles[1:] if roles[0] == "system" else roles
        assert turns == ["user", "assistant"] * (len(turns) // 2) + ["user"], roles


@pytest.mark.parametrize("path", PASSAGE_TEMPLATES, ids=lambda p: p.name)
def test_template_fails_without_required_variable(path: Path) -> None:
    values = sample_vars(path, optional=False)
    template = env().from_string(path.read_text(encoding="utf-8"))
    for name in values:
        with pytest.raises(UndefinedError):
            template.render(**{k: v for k, v in values.items() if k != name})


@pytest.mark.parametrize("path", PASSAGE_TEMPLATES, ids=lambda p: p.name)
def test_few_shot_answers_parse_with_the_recommended_parser(path: Path) -> None:
    kind, _, rest = header(path)["Parser"].partition(",")
    schema = json.loads(rest.split("schema", 1)[1]) if "schema" in rest else None
    msgs = messages(env().from_string(path.read_text(encoding="utf-8")).render(**sample_vars(path)))
    answers = [content for role, content in msgs if role == "assistant"]
    assert answers
    for answer in answers:
        values = parse_reply(answer, kind.strip(), schema=schema)  # type: ignore[arg-type]
        assert values and all(isinstance(v, str) and v for v in values)


def test_query_template_switches_on_style_and_rejects_unknown() -> None:
    template = env().from_string((PROMPTS / "query.j2").read_text(encoding="utf-8"))
    rendered = {s: template.render(text="Passage text.", style=s) for s in STYLES}
    assert len(set(rendered.values())) == 3
    assert "keyword" in messages(rendered["keywords"])[-1][1].lower()
    assert "question" in messages(rendered["question"])[-1][1].lower()
    assert template.render(text="Passage text.") == rendered["question"]
    with pytest.raises(UndefinedError):
        template.render(text="Passage text.", style="haiku")


def test_templates_truncate_long_passages() -> None:
    long_text = "word " * 2000
    for path in PASSAGE_TEMPLATES:
        values = {**sample_vars(path), "text": long_text}
        last_user = messages(env().from_string(path.read_text(encoding="utf-8")).render(**values))
        assert len(last_user[-1][1]) < 2000, path.name


@pytest.mark.parametrize("path", BASE_TEMPLATES, ids=lambda p: p.name)
def test_base_model_templates_are_one_continuable_user_message(path: Path) -> None:
    kind = header(path)["Parser"].split(",")[0].strip()
    assert kind in PARSER_KINDS
    template = env().from_string(path.read_text(encoding="utf-8"))
    for style in ("question", "keywords"):
        msgs = messages(template.render(**{**sample_vars(path), "style": style}))
        assert [role for role, _ in msgs] == ["user"]
        text = msgs[0][1]
        assert text.rstrip().endswith("Query:") and "Mitochondria make ATP" in text
        examples = re.findall(r"^Query: (.+)$", text, re.MULTILINE)
        assert examples and all(parse_reply(e, kind) for e in examples)  # type: ignore[arg-type]
    long_last = messages(template.render(**{**sample_vars(path), "text": "word " * 2000}))[-1][1]
    assert len(long_last.rsplit("Passage:", 1)[1]) < 1600, "the passage is truncated"


def test_base_template_list_is_not_empty() -> None:
    assert [p.name for p in BASE_TEMPLATES] == ["query_inpars.j2"]
