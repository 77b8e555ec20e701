"""Step kinds, registered by their YAML key: the one place a kind is known by name.

Adding a step kind = a spec and a `Step` subclass in one module, and one entry below. The recipe
builds its `steps:` schema from this table and the runner asks each step (never its type) how to
run, preview and validate itself.
"""

from __future__ import annotations

from synth.steps.base import Row, Step, StepContext, StepResult, drop, stable_hash
from synth.steps.filter import FilterStep
from synth.steps.generate import GenerateStep
from synth.steps.map import MapStep
from synth.steps.mine import MineNegativesStep
from synth.steps.similarity import SimilarityStep

STEP_KINDS: dict[str, type[Step]] = {
    kind.key: kind for kind in (GenerateStep, MineNegativesStep, FilterStep, MapStep, SimilarityStep)
}

__all__ = ["STEP_KINDS", "Row", "Step", "StepContext", "StepResult", "drop", "stable_hash"]
