"""Jinja prompt templates -> chat messages.

A template is plain text with message markers on their own line (`### system`, `### user`,
`### assistant`); few-shot examples are extra user/assistant pairs. Templates render with
StrictUndefined, so a typo in a variable name is an error naming the template, the variable and
the row instead of an empty string quietly sent to the LLM.

Why the immutable sandbox: a recipe (and its templates) may come from someone else. The sandbox
blocks attribute tricks (`__class__`, `__subclasses__`), the immutable one also every method that
changes data (`row.update(...)`, `list.append`), so a template can read a row but never rewrite the
training data, and a size cap (checked while rendering, before the text is joined) stops a huge
source text or a `'x' * 10**9` from building a prompt no model can take.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

Message = dict[str, str]
SHIPPED_PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
_MARKER = re.compile(r"^###[ \t]+(system|user|assistant)[ \t]*$", re.MULTILINE)
_UNDEFINED = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'")
MAX_PROMPT_CHARS = 200_000  # ~50k tokens: more than a prompt for one row should ever need


class PromptError(ValueError):
    """A template that cannot be found, parsed or rendered; the message says where."""


class PromptTooLong(PromptError):
    """A rendered prompt over the size cap: the row's fault (its text), not the template's."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus `*` and `**` that cannot build giant values (`'x' * 10**9`)."""

    intercepted_binops = frozenset({"*", "**"})
    max_chars = MAX_PROMPT_CHARS

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > self.max_chars:
                    raise SecurityError(f"'*' would build a value of {len(seq) * times:,} items")
        if operator == "**" and isinstance(right, int) and abs(right) > 1000:
            raise SecurityError(f"'**' with exponent {right} is not allowed")
        return super().call_binop(context, operator, left, right)


class PromptLibrary:
    """Finds templates in the recipe's folder first, then in the shipped `prompts/`."""

    def __init__(self, recipe_dir: Path | None = None, max_chars: int = MAX_PROMPT_CHARS) -> None:
        search = [str(p) for p in (recipe_dir, recipe_dir / "prompts" if recipe_dir else None) if p]
        search.append(str(SHIPPED_PROMPTS))
        self.max_chars = max_chars
        self.env = _Sandbox(
            loader=FileSystemLoader(search),
            undefined=StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
        )
        self.env.max_chars = max_chars

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
        where = f" in row {row_label}" if row_label else ""
        try:
            text = self._render_capped(template, variables)
        except PromptTooLong as e:
            raise PromptTooLong(f"template {name!r}{where}: {e}") from None
        except SecurityError as e:
            raise PromptError(
                f"template {name!r}{where}: {e} (templates may read a row, never change data or call unsafe code)"
            ) from None
        except TemplateError as e:
            match = _UNDEFINED.search(str(e))
            if match:
                var = match.group(1) or match.group(2)
                available = ", ".join(sorted(variables)) or "none"
                raise PromptError(
                    f"template {name!r}: variable {var!r} is undefined{where} (available: {available})"
                ) from None
            raise PromptError(f"template {name!r}{where}: {e}") from None
        return split_messages(text, name)

    def _render_capped(self, template: Any, variables: Mapping[str, Any]) -> str:
        """Render chunk by chunk, stopping as soon as the text passes the cap (before joining it)."""
        chunks, size = [], 0
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > self.max_chars:
                raise PromptTooLong(
                    f"the rendered prompt is over {self.max_chars:,} characters (the row's text is too long "
                    "for one prompt: shorten or filter it first)"
                )
            chunks.append(chunk)
        return "".join(chunks)


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
