"""Jinja prompt templates -> chat messages.

A template is plain text with message markers on their own line (`### system`, `### user`,
`### assistant`); few-shot examples are extra user/assistant pairs. Templates render in a sandbox
with StrictUndefined, so a typo in a variable name is an error naming the template, the variable
and the row instead of an empty string quietly sent to the LLM.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

Message = dict[str, str]
SHIPPED_PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
_MARKER = re.compile(r"^###[ \t]+(system|user|assistant)[ \t]*$", re.MULTILINE)
_UNDEFINED = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'")


class PromptError(ValueError):
    """A template that cannot be found, parsed or rendered; the message says where."""


class PromptLibrary:
    """Finds templates in the recipe's folder first, then in the shipped `prompts/`."""

    def __init__(self, recipe_dir: Path | None = None) -> None:
        search = [str(p) for p in (recipe_dir, recipe_dir / "prompts" if recipe_dir else None) if p]
        search.append(str(SHIPPED_PROMPTS))
        self.env = SandboxedEnvironment(
            loader=FileSystemLoader(search),
            undefined=StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
        )

    def source(self, name: str) -> tuple[str, str]:
        """(template source, file path) — the source is part of a step's fingerprint."""
        try:
            src, filename, _ = self.env.loader.get_source(self.env, name)  # type: ignore[union-attr]
        except TemplateNotFound:
            raise PromptError(f"template {name!r} not found (looked in {self.search_path})") from None
        return src, str(filename)

    @property
    def search_path(self) -> str:
        return ", ".join(self.env.loader.searchpath)  # type: ignore[union-attr]

    def fingerprint(self, name: str) -> str:
        return hashlib.sha256(self.source(name)[0].encode()).hexdigest()[:16]

    def render(self, name: str, variables: Mapping[str, Any], row_label: str = "") -> list[Message]:
        try:
            template = self.env.get_template(name)
        except TemplateNotFound:
            raise PromptError(f"template {name!r} not found (looked in {self.search_path})") from None
        except TemplateError as e:
            raise PromptError(f"template {name!r}: {e}") from None
        try:
            text = template.render(**variables)
        except TemplateError as e:
            where = f" in row {row_label}" if row_label else ""
            match = _UNDEFINED.search(str(e))
            if match:
                var = match.group(1) or match.group(2)
                available = ", ".join(sorted(variables)) or "none"
                raise PromptError(
                    f"template {name!r}: variable {var!r} is undefined{where} (available: {available})"
                ) from None
            raise PromptError(f"template {name!r}{where}: {e}") from None
        return split_messages(text, name)


def split_messages(text: str, template_name: str = "<string>") -> list[Message]:
    """Cut rendered text at `### role` markers into chat messages; text without markers is one user message."""
    markers = list(_MARKER.finditer(text))
    if not markers:
        content = text.strip()
        if not content:
            raise PromptError(f"template {template_name!r} rendered to an empty prompt")
        return [{"role": "user", "content": content}]
    if text[: markers[0].start()].strip():
        raise PromptError(f"template {template_name!r}: text before the first `### role` marker")
    messages = []
    for i, m in enumerate(markers):
        end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        content = text[m.end() : end].strip()
        messages.append({"role": m.group(1), "content": content})
    if messages[-1]["role"] != "user" or not messages[-1]["content"]:
        raise PromptError(f"template {template_name!r}: the last message must be a non-empty `### user`")
    return messages
