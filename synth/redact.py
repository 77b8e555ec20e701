"""Credentials out of everything synth writes: URLs in ids, logs, errors, cards and summaries.

A `base_url` may carry credentials (`https://user:pass@host/v1?api_key=...`). The URL goes to the
HTTP client as the user wrote it, but every copy synth writes down (the backend's model id, which
is the request-cache identity and lands in the card, summary.json and details/; log lines; error
messages) goes through `redact_url` first. `looks_like_secret` tells a pasted key from the NAME of
an environment variable, so an error about `api_key_env` never repeats a key.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

REDACTED = "***"
# Query parameter names (lower-cased, without - and _) that carry secrets: any name containing one.
_SECRET_PARAM_PARTS = (
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "sig",
    "auth",
    "credential",
    "session",
    "cookie",
    "jwt",
    "bearer",
)
# Vendor key prefixes (case matters: `HF_TOKEN` is a name, `hf_AbC...` a key).
_KEY_PREFIXES = ("sk-", "sk_", "hf_", "ghp_", "gho_", "ghs_", "github_pat_", "xox", "glpat-", "AIza", "AKIA", "eyJ")
_URL_START = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _secret_param(name: str) -> bool:
    normalized = name.lower().replace("-", "").replace("_", "")
    return any(part in normalized for part in _SECRET_PARAM_PARTS)


def redact_url(url: str) -> str:
    """The URL without its userinfo, its fragment, or the values of secret-looking query parameters.

    `https://user:pass@host:8000/v1?api_key=x&v=2` -> `https://host:8000/v1?api_key=***&v=2`.
    Anything that does not parse as a URL is returned unchanged.
    """
    if not isinstance(url, str) or not url:
        return url
    try:
        parts = urlsplit(url if _URL_START.match(url) or "@" not in url else "//" + url)
    except ValueError:
        return url
    netloc = parts.netloc.rpartition("@")[2]  # userinfo may itself contain '@'
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{quote(k, safe='')}={REDACTED if _secret_param(k) else quote(v, safe='/:,')}" for k, v in pairs
        )
    redacted = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    return redacted if _URL_START.match(url) or "@" not in url else redacted.removeprefix("//")


def redact_text(text: str) -> str:
    """Every URL inside a free text (an error message, a log line) redacted."""

    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        core = url.rstrip(".,;:!?)]}")  # sentence punctuation after a URL is not part of it
        return redact_url(core) + url[len(core) :]

    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+", one, text)


def redact_tree(value: Any) -> Any:
    """A copy of a JSON-like structure (a dumped recipe) with every URL-looking string redacted."""
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(v) for v in value]
    if isinstance(value, str) and _URL_START.match(value):
        return redact_url(value)
    return value


def looks_like_secret(value: str) -> bool:
    """True for a pasted key (`sk-...`, `hf_...`, long random) rather than an env var NAME like `MY_API_KEY`.

    Names are made of short words (`OPENAI_API_KEY`, `MY_GATEWAY_TOKEN_2`); keys are long tokens that
    start with a vendor prefix or mix cases and digits.
    """
    v = value.strip()
    if len(v) >= 20 and v.startswith(_KEY_PREFIXES):
        return True
    if len(v) < 20:
        return False
    longest_word = max(len(w) for w in re.split(r"[_\-.]", v))
    digits = sum(c.isdigit() for c in v)
    mixed_case = any(c.islower() for c in v) and any(c.isupper() for c in v)
    return longest_word >= 20 or (mixed_case and digits >= 3) or digits * 4 >= len(v)
