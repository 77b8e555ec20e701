"""Keys and credentials never go where the recipe did not send them, and are never written (issue 12).

The tests that need a server (which key a host really received, broken replies, a run through a
gateway URL with credentials) are in tests/test_openai_backend.py, which serves the model once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from synth.backends.openai import OpenAIBackend
from synth.backends.openai_endpoint import NO_KEY, api_key, is_default_endpoint, openai_model_id
from synth.recipe import LLMSpec
from synth.redact import looks_like_secret, redact_text, redact_tree, redact_url
from tests.conftest import QUICKSTART, REPO

PASTED_HF_TOKEN = "hf_QxT4mZk9PbVw2LsYdRn7HcJg"  # a valid identifier, so the recipe's name check lets it through
SECRET = "sk-live-77e1c0ffee"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pass@host:8000/v1", "https://host:8000/v1"),
        ("https://user:p@ss@host/v1", "https://host/v1"),
        ("https://host/v1?api_key=abc&api-version=2024-06-01", "https://host/v1?api_key=***&api-version=2024-06-01"),
        (
            "https://host/v1?token=a&X-Amz-Signature=b&sig=c&Password=d",
            "https://host/v1?token=***&X-Amz-Signature=***&sig=***&Password=***",
        ),
        ("https://host/v1#access_token=abc", "https://host/v1"),
        ("user:pass@localhost:8000/v1", "localhost:8000/v1"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text_and_tree() -> None:
    text = "cannot reach https://bob:hunter2@gw.example/v1?key=k1: connection refused"
    assert redact_text(text) == "cannot reach https://gw.example/v1?key=***: connection refused"
    tree = {"llm": {"base_url": "https://bob:hunter2@gw/v1", "model": "m"}, "llms": [{"base_url": "http://a:b@c/v1"}]}
    assert redact_tree(tree) == {
        "llm": {"base_url": "https://gw/v1", "model": "m"},
        "llms": [{"base_url": "http://c/v1"}],
    }


def test_model_id_carries_no_credentials() -> None:
    """The model id is the cache identity and is written to the card, summary.json and every row's provenance."""
    spec = LLMSpec(backend="openai", model="m", base_url="https://alice:s3cretpass@gw.example/v1?api_key=QSECRET99")
    model_id = openai_model_id(spec)
    assert model_id == "m@https://gw.example/v1?api_key=***"
    assert "s3cretpass" not in model_id and "QSECRET99" not in model_id and "alice" not in model_id


def test_names_and_keys_are_told_apart() -> None:
    for name in ("OPENAI_API_KEY", "HF_TOKEN", "SYNTH_TEST_API_KEY", "MY_COMPANY_INTERNAL_LLM_GATEWAY_API_KEY", "KEY2"):
        assert not looks_like_secret(name), name
    for key in (PASTED_HF_TOKEN, "sk_live_0123456789abcdef", "AKIAIOSFODNN7EXAMPLE", "f3" * 20, "aB3dE5gH7jK9mN1pQ3sT"):
        assert looks_like_secret(key), key


def test_the_default_key_goes_only_to_the_default_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("MY_GATEWAY_KEY", "gw-key")
    assert is_default_endpoint(None) and is_default_endpoint("https://api.openai.com/v1/")
    for other in ("http://api.openai.com/v1", "https://api.openai.com.evil.example/v1", "https://x@api.openai.com/v1"):
        assert not is_default_endpoint(other), other
    assert api_key(LLMSpec(backend="openai")) == (SECRET, "OPENAI_API_KEY")
    assert api_key(LLMSpec(backend="openai", base_url="https://api.openai.com/v1")) == (SECRET, "OPENAI_API_KEY")
    for host in ("http://127.0.0.1:8000/v1", "https://api.together.xyz/v1", "https://api.openai.com.evil.example/v1"):
        assert api_key(LLMSpec(backend="openai", base_url=host)) == (NO_KEY, None), host
    named = LLMSpec(backend="openai", base_url="https://gw.example/v1", api_key_env="MY_GATEWAY_KEY")
    assert api_key(named) == ("gw-key", "MY_GATEWAY_KEY")


def test_key_errors_name_the_variable_never_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="needs a key: set OPENAI_API_KEY"):
        OpenAIBackend(LLMSpec(backend="openai"))
    monkeypatch.delenv("SYNTH_UNSET_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="environment variable SYNTH_UNSET_KEY_VAR is not set"):
        OpenAIBackend(LLMSpec(backend="openai", base_url="http://127.0.0.1:9/v1", api_key_env="SYNTH_UNSET_KEY_VAR"))
    with pytest.raises(ValueError) as caught:
        OpenAIBackend(LLMSpec(backend="openai", base_url="http://127.0.0.1:9/v1", api_key_env=PASTED_HF_TOKEN))
    assert "looks like a key" in str(caught.value) and PASTED_HF_TOKEN not in str(caught.value)


def test_a_pasted_token_is_not_echoed_by_synth_generate(tmp_path: Path) -> None:
    """End to end: the token in `api_key_env` appears in no output of the failed run."""
    env = dict(os.environ, SYNTH_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    env.pop(PASTED_HF_TOKEN, None)
    sets = ["llm.backend=openai", "llm.base_url=http://127.0.0.1:9/v1", f"llm.api_key_env={PASTED_HF_TOKEN}"]
    sets += ["embedder.model=hashing"]
    args = ["generate", str(QUICKSTART), "--limit", "1", "-o", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-m", "synth.cli", *args, *[a for s in sets for a in ("--set", s)]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "looks like a key" in done.stderr and "Traceback" not in done.stderr
    assert PASTED_HF_TOKEN not in done.stdout + done.stderr
    assert not (tmp_path / "out").exists()
