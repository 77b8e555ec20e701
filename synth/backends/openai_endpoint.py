"""Who an OpenAI-compatible endpoint is, and which key (if any) it may receive.

Kept apart from the client (openai.py) so the request-cache identity is known without importing
`openai`, and so the key rules live in one short place: `$OPENAI_API_KEY` goes only to OpenAI's
own endpoint; any other host gets a key only from a variable the recipe names.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from synth.redact import looks_like_secret, redact_url

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "EMPTY"  # what the client sends when no key is ours to send (it insists on a non-empty one)


def openai_model_id(spec: Any) -> str:
    """Server model name @ endpoint (credentials removed): part of every request-cache key, and
    written to the card, summary.json and every row's provenance."""
    return f"{spec.model}@{redact_url((spec.base_url or DEFAULT_BASE_URL).rstrip('/'))}"


def is_default_endpoint(base_url: str | None) -> bool:
    """True for OpenAI's own API (https://api.openai.com), the only host `$OPENAI_API_KEY` is sent to."""
    if not base_url:
        return True
    parts = urlsplit(base_url)
    try:
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and parts.hostname == "api.openai.com"
        and "@" not in parts.netloc
        and port in (None, 443)
    )


def api_key(spec: Any) -> tuple[str, str | None]:
    """(key to send, name of the variable it came from), or (NO_KEY, None) when no key is ours to send.

    The variable `api_key_env` names wins; `$OPENAI_API_KEY` is used only for OpenAI's own endpoint,
    so a recipe pointing `base_url` at someone else's server cannot collect it. Errors name the
    variable, never a value.
    """
    if spec.api_key_env:
        name = spec.api_key_env
        if looks_like_secret(name):
            raise ValueError(
                "llm.api_key_env: this looks like a key itself (value not shown); put the key in an "
                "environment variable and write that variable's NAME here, e.g. api_key_env: MY_API_KEY"
            )
        key = os.environ.get(name, "")
        if not key:
            raise ValueError(f"llm.api_key_env: environment variable {name} is not set")
        return key, name
    if is_default_endpoint(spec.base_url):
        key = os.environ.get(DEFAULT_KEY_ENV, "")
        if not key:
            raise ValueError(
                f"llm: {DEFAULT_BASE_URL} needs a key: set {DEFAULT_KEY_ENV}, or name the variable that "
                "holds it in llm.api_key_env"
            )
        return key, DEFAULT_KEY_ENV
    return NO_KEY, None
