"""What mining gives back: per unique query, its positives, negatives, scores and soft labels.

Its own module so the format writers (formats.py) read results without importing the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class MinedQuery:
    """One unique query and what was mined for it; scores are the margin-driving scores."""

    query: int  # index into the queries
    positives: list[int]  # corpus indices
    positive_scores: list[float]
    negatives: list[int]  # corpus indices, best first
    negative_scores: list[float]
    removed: dict[str, int] = field(default_factory=dict)  # candidates each rule removed
    # teacher name -> scores of positives then negatives (soft labels); "embedder" always present
    teachers: dict[str, list[float]] = field(default_factory=dict)
    # candidates a judge scored as high as a positive (`false_negatives: promote`): the last
    # entries of `positives`, kept there so every layout sees them as positives
    promoted: list[int] = field(default_factory=list)

    @property
    def given(self) -> list[int]:
        """The positives the input paired with this query (without promoted ones)."""
        return self.positives[: len(self.positives) - len(self.promoted)]


@dataclass
class MiningResult:
    queries: list[str]
    corpus: list[str]
    mined: list[MinedQuery]
    stats: dict[str, object]


def removal_totals(mined: Sequence[MinedQuery]) -> dict[str, int]:
    """Sum of each rule's removed-candidate counts over queries (for reports and the card)."""
    totals: dict[str, int] = {}
    for m in mined:
        for name, count in m.removed.items():
            totals[name] = totals.get(name, 0) + count
    return totals
