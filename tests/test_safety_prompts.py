"""Templates may read a row, never rewrite it, and never build a prompt no model can take (issue 12)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from synth.prompts import MAX_PROMPT_CHARS, PromptError, PromptLibrary, PromptTooLong


def library(tmp_path: Path, template: str, **options: int) -> PromptLibrary:
    (tmp_path / "t.j2").write_text(template)
    return PromptLibrary(tmp_path, **options)


@pytest.mark.parametrize(
    "expression",
    [
        "row.update(positive='x')",
        "row.pop('positive')",
        "row.setdefault('negative', 'x')",
        "row.tags.append('x')",
        "row.clear()",
    ],
)
def test_a_template_cannot_change_the_row(tmp_path: Path, expression: str) -> None:
    """`{{ row.update(positive='x') }}` rewrote training positives; now an error naming template and row."""
    row = {"text": "passage", "positive": "the real positive", "tags": ["a"]}
    before = copy.deepcopy(row)
    prompts = library(tmp_path, f"### user\n{{{{ {expression} }}}}{{{{ text }}}}")
    with pytest.raises(PromptError) as caught:
        prompts.render("t.j2", {**row, "row": row}, row_label="3 (id=doc-3)")
    message = str(caught.value)
    assert "'t.j2'" in message and "row 3 (id=doc-3)" in message and "unsafe" in message
    assert row == before


def test_reading_a_row_still_works(tmp_path: Path) -> None:
    prompts = library(
        tmp_path, "### user\n{{ row.get('title', 'untitled') }}: {{ row['text'] | upper }} {{ tags | join(',') }}"
    )
    row = {"text": "abc", "tags": ["x", "y"]}
    assert prompts.render("t.j2", {**row, "row": row}) == [{"role": "user", "content": "untitled: ABC x,y"}]


def test_a_prompt_over_the_size_cap_is_a_clear_error_naming_the_row(tmp_path: Path) -> None:
    prompts = library(tmp_path, "### user\nSummarise: {{ text }}")
    huge = "word " * (MAX_PROMPT_CHARS // 5 + 10)
    with pytest.raises(PromptTooLong) as caught:
        prompts.render("t.j2", {"text": huge}, row_label="12 (id=big)")
    message = str(caught.value)
    assert "'t.j2'" in message and "row 12 (id=big)" in message and f"{MAX_PROMPT_CHARS:,} characters" in message
    assert isinstance(caught.value, PromptError)  # callers that catch PromptError still catch it
    # just under the cap renders
    ok = "w" * (MAX_PROMPT_CHARS - 100)
    assert prompts.render("t.j2", {"text": ok})[0]["content"].endswith("w")


def test_the_cap_is_checked_while_rendering_not_after(tmp_path: Path) -> None:
    """A loop that would build gigabytes stops at the cap; `'x' * 10**9` never allocates."""
    prompts = library(tmp_path, "### user\n{% for i in range(100000) %}{{ text }}{% endfor %}", max_chars=10_000)
    with pytest.raises(PromptTooLong, match="10,000 characters"):
        prompts.render("t.j2", {"text": "x" * 50_000})
    bomb = library(tmp_path, "### user\n{{ 'x' * 10**9 }}")
    with pytest.raises(PromptError, match="'t.j2'"):
        bomb.render("t.j2", {})
    power = library(tmp_path, "### user\n{{ 10 ** (10 ** 8) }}")
    with pytest.raises(PromptError, match="exponent"):
        power.render("t.j2", {})
