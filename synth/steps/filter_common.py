"""What every filter rule shares: its outcome, how it reads a row's text, and its drop records.

Why a module of its own: the rules live in three modules (filter.py: the text-shape rules and the
step; filter_quality.py: small-generator failure modes; filter_roundtrip.py: retrieval
consistency), and each needs these few helpers without importing the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from synth.llm import Usage
from synth.steps.base import Row, drop

_WORD = re.compile(r"\w+")


@dataclass
class Outcome:
    """What one rule did: kept rows, drop records, and LLM usage (judge only)."""

    kept: list[Row] = field(default_factory=list)
    dropped: list[Row] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


def text_of(row: Row, column: str) -> str:
    value = row.get(column)
    return "" if value is None else str(value)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def record(step: str, rule: Any, reason: str, row: Row, **values: Any) -> Row:
    """A drop record naming the step, the rule's label, the reason slug and the evidence."""
    return drop(step, reason, row, rule=rule.label, **values)
