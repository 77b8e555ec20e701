"""Deterministic crash points, so resume tests can SIGKILL a real run at an exact moment.

`SYNTH_CRASH_AT=<point>:<n>` kills the process (SIGKILL: no cleanup, no flush, like OOM or a
power loss) the n-th time `<point>` is reached. Points: `reply` (after a reply is committed to
the request cache), `embedded` (after a batch of embeddings is stored), `export` (after the
dataset is written into the temporary output folder, before the folder is renamed into place).
Unset, a crash point costs one dict lookup. A killed synth that is not a group leader can leave
vLLM's engine process running for a while (it is a separate process), so tests start synth in its
own session and the crash takes the whole group down.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_reached: Counter[str] = Counter()


def crash_point(name: str) -> None:
    spec = os.environ.get("SYNTH_CRASH_AT")
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] >= int(count or 1):
        # A process that leads its own group (started with start_new_session) takes the whole group
        # down, engine workers included, as a power loss would; otherwise only itself.
        if os.getpgid(0) == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
