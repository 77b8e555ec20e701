"""OpenAI-compatible HTTP backend (vLLM serve, OpenAI, Together, llama.cpp, Ollama, ...).

The only module that imports `openai`. Why it looks the way it does:
- A bounded pool of `max_concurrency` asyncio workers pulls indices from the input, so memory
  stays O(concurrency) in flight and the server is kept exactly as busy as the user allows.
- The client's own retries are off: we retry 429/5xx/408/409/timeouts/dropped connections
  ourselves with exponential backoff + jitter (honouring Retry-After) so every retry is counted
  by reason (`stats`) and a request that still fails becomes a `Completion(error=...)`, which
  the generate step records as a drop instead of losing the row or killing the run.
- A 200 without usable text (no choices, `content: null`, a body that is not JSON) is retried
  like a 5xx (reason `bad_reply`) and, if it persists, becomes an error: never a reply to cache.
- Any other 4xx means the request itself is wrong (bad key, unknown model): retrying cannot help,
  so the whole call fails fast with one `APIError` line naming the endpoint. The key never
  appears in it: it is read from the env var `api_key_env` names and scrubbed from messages.
- Keys go only where the recipe sends them: `$OPENAI_API_KEY` only to the default OpenAI endpoint;
  any other `base_url` gets a key only from the variable `api_key_env` names, else none at all.
- The URL goes to the client as written, but every copy we write (model id = cache identity, card,
  summary, errors) is redacted (synth/redact.py): no userinfo, no secret query values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import openai

from synth.backends import PROMPT_TOO_LONG, BackendError, Completion, Messages, ResultCallback, SamplingParams
from synth.backends.openai_endpoint import DEFAULT_BASE_URL, DEFAULT_KEY_ENV, api_key, openai_model_id
from synth.redact import redact_text, redact_url

RETRYABLE_STATUS = {408, 409, 429}
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 120.0
MIN_FAILURE_STREAK = 10  # give up on the run after max(this, 2 x max_concurrency) failed requests in a row


class APIError(BackendError):
    """A request the server refuses for good (401, 404, 400 ...): one line, endpoint + server message."""


class TokenBucket:
    """`rate_per_minute` units refill continuously; bursts are capped at one second's worth.

    A small burst keeps us under limits that servers enforce over short windows. A request larger
    than the bucket waits for a full bucket and then leaves it in debt, so the long-run rate holds.
    """

    def __init__(self, rate_per_minute: float) -> None:
        self.rate = rate_per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    async def acquire(self, amount: float) -> None:
        async with self.lock:  # FIFO: one waiter at a time drains the bucket
            need = min(amount, self.capacity)
            self._refill()
            while self.level < need:
                await asyncio.sleep((need - self.level) / self.rate)
                self._refill()
            self.level -= amount

    def refund(self, amount: float) -> None:
        """Give back an over-estimate (negative: charge an under-estimate) once usage is known."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class _Retryable(Exception):
    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after-ms") if headers is not None else None
    if value is not None:
        try:
            return float(value) / 1000.0
        except ValueError:
            return None
    value = headers.get("retry-after") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: rare for APIs; fall back to our own backoff
        return None


def _estimate_tokens(messages: Messages, params: SamplingParams) -> int:
    """Rough prompt size (4 chars/token) plus the most the reply may use, for tokens_per_minute."""
    chars = sum(len(m.get("content", "")) for m in messages)
    return chars // 4 + params.max_tokens * params.n


class OpenAIBackend:
    kind = "openai"

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.base_url = (spec.base_url or DEFAULT_BASE_URL).rstrip("/")  # as written: the client needs it
        self.model_id = openai_model_id(spec)
        key, self.key_env = api_key(spec)
        self._key = key if self.key_env else ""
        # The client appends `/chat/completions` to base_url's text, query and all: a query in the
        # URL (`?api-version=...`, a gateway's `?key=...`) goes to every request as default_query.
        parts = urlsplit(self.base_url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self._client_kwargs = {
            "api_key": key,
            "base_url": urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
            "default_query": query or None,
            "timeout": spec.timeout,
            "max_retries": 0,
        }
        self.url = redact_url(self._client_kwargs["base_url"])  # the endpoint as messages show it
        self._failure_streak = 0
        self.native_n = True  # set False when the server rejects n>1
        self.native_schema = True  # set False when the server rejects response_format json_schema
        # requests (HTTP attempts), completed, retries, failed, and by reason (429, 5xx, timeout,
        # connection, 408, 409): retry_<reason> (retried) and failed_<reason> (gave up).
        self.stats: Counter[str] = Counter()

    # ----- public API ---------------------------------------------------------------------------

    def generate(
        self,
        conversations: Sequence[Messages],
        params: SamplingParams,
        on_result: ResultCallback | None = None,
    ) -> list[Completion]:
        """Run the async pool to completion; callers stay synchronous."""
        return asyncio.run(self._generate(conversations, params, on_result))

    def close(self) -> None:
        """Nothing to release: each generate() owns its client and closes it."""

    # ----- the pool -----------------------------------------------------------------------------

    async def _generate(
        self, conversations: Sequence[Messages], params: SamplingParams, on_result: ResultCallback | None
    ) -> list[Completion]:
        results: list[Completion | None] = [None] * len(conversations)
        rpm = TokenBucket(self.spec.requests_per_minute) if self.spec.requests_per_minute else None
        tpm = TokenBucket(self.spec.tokens_per_minute) if self.spec.tokens_per_minute else None
        next_index = iter(range(len(conversations)))
        client = openai.AsyncOpenAI(**self._client_kwargs)
        # Caps HTTP requests in flight even when emulated n fans one conversation out.
        self._in_flight = asyncio.Semaphore(self.spec.max_concurrency)

        async def worker() -> None:
            for i in next_index:  # shared iterator: each index is taken by exactly one worker
                completion = await self._complete(client, conversations[i], params, rpm, tpm)
                results[i] = completion
                if on_result:
                    on_result(i, completion)

        tasks = [asyncio.ensure_future(worker()) for _ in range(min(self.spec.max_concurrency, len(conversations)))]
        try:
            await asyncio.gather(*tasks)
        finally:  # a fail-fast APIError or Ctrl-C: stop the other workers before leaving
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()
        return results  # type: ignore[return-value]

    async def _complete(
        self,
        client: Any,
        messages: Messages,
        params: SamplingParams,
        rpm: TokenBucket | None,
        tpm: TokenBucket | None,
    ) -> Completion:
        """One conversation: natively with n, or as n single-sample requests once n>1 was refused.

        Some servers ignore n and answer one choice: the missing samples are asked for singly.
        """
        if params.n == 1:
            return await self._with_retries(client, messages, params, 1, rpm, tpm)
        parts: list[Completion] = []
        if self.native_n:
            try:
                first = await self._with_retries(client, messages, params, params.n, rpm, tpm)
                if first.error is not None or len(first.texts) >= params.n:
                    return first
                parts.append(first)
            except _NRejected:
                self.native_n = False
                self.stats["n_fallback"] += 1
        have = sum(len(p.texts) for p in parts)
        # A different seed per emulated sample, else a seeded server returns n identical replies.
        singles = [dataclasses.replace(params, seed=params.seed + k) for k in range(have, params.n)]
        parts += await asyncio.gather(*(self._with_retries(client, messages, p, 1, rpm, tpm) for p in singles))
        failed = [p for p in parts if p.error is not None]
        if failed:
            return Completion(texts=[], retries=sum(p.retries for p in parts), error=failed[0].error)
        return Completion(
            texts=[t for p in parts for t in p.texts],
            finish_reasons=[f for p in parts for f in p.finish_reasons],
            prompt_tokens=parts[0].prompt_tokens,
            completion_tokens=sum(p.completion_tokens for p in parts),
            logprobs=[s for p in parts for s in p.logprobs] if params.logprobs else None,
            retries=sum(p.retries for p in parts),
        )

    async def _with_retries(
        self,
        client: Any,
        messages: Messages,
        params: SamplingParams,
        n: int,
        rpm: TokenBucket | None,
        tpm: TokenBucket | None,
    ) -> Completion:
        attempt = 0
        while True:
            estimate = _estimate_tokens(messages, params)
            if rpm:
                await rpm.acquire(1)
            if tpm:
                await tpm.acquire(estimate)
            try:
                completion = await self._request(client, messages, params, n)
            except _RowRejected as e:
                self.stats["failed"] += 1
                self.stats[f"failed_{PROMPT_TOO_LONG}"] += 1
                return Completion(texts=[], retries=attempt, error=f"{PROMPT_TOO_LONG}: {e}")
            except _Retryable as e:
                if attempt >= self.spec.max_retries:
                    self.stats["failed"] += 1
                    self.stats[f"failed_{e.reason}"] += 1
                    self._failure_streak += 1
                    if self._failure_streak >= max(MIN_FAILURE_STREAK, 2 * self.spec.max_concurrency):
                        # A dead server would otherwise turn every remaining row into a drop.
                        raise APIError(
                            f"{self.url}: {self._failure_streak} requests in a row failed after "
                            f"{attempt + 1} attempts each; last: {e.reason}: {e}"
                        ) from None
                    return Completion(
                        texts=[], retries=attempt, error=f"{e.reason}: {e} (after {attempt + 1} attempts)"
                    )
                attempt += 1
                self.stats["retries"] += 1
                self.stats[f"retry_{e.reason}"] += 1
                backoff = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                delay = min(RETRY_AFTER_CAP_S, e.retry_after) if e.retry_after is not None else backoff
                await asyncio.sleep(delay)
                continue
            if tpm:
                tpm.refund(estimate - completion.prompt_tokens - completion.completion_tokens)
            completion.retries = attempt
            self._failure_streak = 0
            self.stats["completed"] += 1
            return completion

    # ----- one HTTP request ---------------------------------------------------------------------

    def _request_body(self, messages: Messages, params: SamplingParams, n: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": messages,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": params.seed,
        }
        if n > 1:
            body["n"] = n
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = params.logprobs
        if params.json_schema and self.native_schema:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": params.json_schema},
            }
        return body

    async def _request(self, client: Any, messages: Messages, params: SamplingParams, n: int) -> Completion:
        body = self._request_body(messages, params, n)
        self.stats["requests"] += 1
        try:
            async with self._in_flight:
                reply = await client.chat.completions.create(**body)
        except openai.APITimeoutError as e:
            raise _Retryable("timeout", f"no reply within {self.spec.timeout:g} s") from e
        except openai.APIConnectionError as e:
            raise _Retryable("connection", self._scrub(str(e.__cause__ or e))) from e
        except (openai.APIResponseValidationError, json.JSONDecodeError) as e:  # a 200 whose body is not JSON
            raise _Retryable(
                "bad_reply", f"HTTP 200 with a body that is not a chat completion: {self._scrub(str(e))[:200]}"
            ) from e
        except openai.APIStatusError as e:
            status = e.status_code
            message = self._server_message(e)
            if status == 429 or status >= 500:
                reason = "429" if status == 429 else "5xx"
                raise _Retryable(reason, f"HTTP {status}: {message}", _retry_after(e.response.headers)) from e
            if status in RETRYABLE_STATUS:
                raise _Retryable(str(status), f"HTTP {status}: {message}", _retry_after(e.response.headers)) from e
            if status in (400, 422) and n > 1 and re.search(r"(?<![\w-])n(?![\w-])", message):
                raise _NRejected() from e
            if (
                status in (400, 422)
                and "response_format" in body
                and re.search(r"response_format|json_schema|schema|structured", message, re.IGNORECASE)
            ):
                self.native_schema = False
                self.stats["schema_fallback"] += 1
                return await self._request(client, messages, params, n)
            if status in (400, 413) and re.search(
                r"context length|context window|too long|too many tokens", message, re.I
            ):
                raise _RowRejected(f"HTTP {status}: {message}") from e  # this row's prompt, not the run
            raise APIError(
                f"{self.url}/chat/completions answered HTTP {status}: {message}{self._key_hint(status)}"
            ) from None
        return self._to_completion(reply, params)

    def _key_hint(self, status: int) -> str:
        if status not in (401, 403):
            return ""
        if self.key_env:
            return f" (check the key in ${self.key_env})"
        return (
            f" (no key was sent: {DEFAULT_KEY_ENV} goes only to {DEFAULT_BASE_URL}; name the variable "
            "holding this server's key in llm.api_key_env)"
        )

    def _to_completion(self, reply: Any, params: SamplingParams) -> Completion:
        """The reply as a Completion; a 200 without usable text is retried like a 5xx, never returned."""
        raw_choices = getattr(reply, "choices", None)
        if not isinstance(raw_choices, list):
            shown = self._scrub(" ".join(str(reply).split())[:200])
            raise _Retryable("bad_reply", f"HTTP 200 with a body that is not a chat completion: {shown!r}")
        if not raw_choices:
            raise _Retryable("bad_reply", "HTTP 200 with no choices")
        choices = sorted(raw_choices, key=lambda c: c.index or 0)
        for c in choices:
            message = getattr(c, "message", None)
            if getattr(message, "content", None) is None:
                refusal = getattr(message, "refusal", None)
                detail = f" (refusal: {' '.join(str(refusal).split())[:200]})" if refusal else ""
                raise _Retryable("bad_reply", f"HTTP 200 with no text (content null){detail}")
        usage = getattr(reply, "usage", None)
        logprobs = None
        if params.logprobs:
            logprobs = [
                [
                    {alt.token: alt.logprob for alt in (tok.top_logprobs or [])} or {tok.token: tok.logprob}
                    for tok in ((c.logprobs.content if c.logprobs else None) or [])
                ]
                for c in choices
            ]
        return Completion(
            texts=[c.message.content for c in choices],
            finish_reasons=[str(c.finish_reason) for c in choices],
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            logprobs=logprobs,
        )

    def _server_message(self, e: Any) -> str:
        """The server's own error message, one line, key scrubbed."""
        body = e.body  # the client already unwrapped {"error": ...}
        message = body if isinstance(body, str) else None
        if isinstance(body, dict):
            inner = body.get("error", body)
            message = inner.get("message") if isinstance(inner, dict) else inner
            message = message or body.get("message") or body.get("detail")
        if not message:
            try:
                message = e.response.text
            except Exception:  # streamed or unreadable body
                message = e.message
        text = message if isinstance(message, str) else json.dumps(message)
        return self._scrub(" ".join(text.split())[:500])

    def _scrub(self, text: str) -> str:
        """No key, no credentials of any URL in a message we pass on."""
        text = text.replace(self._key, "***") if self._key else text
        return redact_text(text)


class _RowRejected(Exception):
    """The server refused this one prompt (too long for the model): a drop, not a failed run."""


class _NRejected(Exception):
    """The server refused n>1 for this request: retry the conversation as n single requests."""
