"""Templates: lookup order, message splitting, and errors that name template, variable and row."""

from __future__ import annotations

from pathlib import Path

import pytest

from synth.prompts import PromptError, PromptLibrary, split_messages


def test_recipe_folder_overrides_shipped_templates(tmp_path: Path) -> None:
    (tmp_path / "paraphrase.j2").write_text("### user\nmine: {{ text }}")
    ours = PromptLibrary(tmp_path).render("paraphrase.j2", {"text": "x"})
    shipped = PromptLibrary(None).render("paraphrase.j2", {"text": "x"})
    assert ours == [{"role": "user", "content": "mine: x"}]
    assert shipped != ours and shipped[-1]["role"] == "user"


def test_messages_split_into_roles_with_few_shot() -> None:
    text = "### system\nbe brief\n### user\nq1\n### assistant\na1\n### user\nq2\n"
    assert split_messages(text) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert split_messages("just a question") == [{"role": "user", "content": "just a question"}]


def test_bad_message_layouts() -> None:
    with pytest.raises(PromptError, match="text before the first"):
        split_messages("hello\n### user\nx")
    with pytest.raises(PromptError, match="last message must be a non-empty"):
        split_messages("### user\nx\n### assistant\ny")
    with pytest.raises(PromptError, match="empty prompt"):
        split_messages("   \n")


def test_missing_variable_names_template_variable_and_row(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("### user\n{{ passage }}")
    with pytest.raises(PromptError) as info:
        PromptLibrary(tmp_path).render("t.j2", {"text": "x"}, row_label="7 (id=doc-7)")
    message = str(info.value)
    assert "'t.j2'" in message and "'passage'" in message and "row 7 (id=doc-7)" in message
    assert "available: text" in message


def test_missing_template_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match=r"template 'nope.j2' not found \(looked in .*prompts"):
        PromptLibrary(tmp_path).render("nope.j2", {})


def test_sandbox_blocks_unsafe_attribute_access(tmp_path: Path) -> None:
    (tmp_path / "evil.j2").write_text("### user\n{{ text.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(PromptError):
        PromptLibrary(tmp_path).render("evil.j2", {"text": "x"})


def test_syntax_error_is_reported_with_template_name(tmp_path: Path) -> None:
    (tmp_path / "broken.j2").write_text("### user\n{% if %}")
    with pytest.raises(PromptError, match="broken.j2"):
        PromptLibrary(tmp_path).render("broken.j2", {})


def test_fingerprint_changes_with_the_source(tmp_path: Path) -> None:
    path = tmp_path / "t.j2"
    path.write_text("### user\none")
    first = PromptLibrary(tmp_path).fingerprint("t.j2")
    path.write_text("### user\ntwo")
    assert PromptLibrary(tmp_path).fingerprint("t.j2") != first
