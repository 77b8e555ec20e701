"""Which part of a step may run batch by batch: the row-wise head and the global tail of each step.

A row-wise step maps each row on its own (same rows, same order, same drop records whether it
sees all rows at once or a batch at a time), so executors stream it over shards and, on Ray, run
it as a `map_batches` stage. Everything else (dedup, round-trip retrieval, mining) needs all of
its input rows and runs once over them.

A step says so itself (`Step.row_wise`, `Step.split()` in synth/steps/base.py). Until the step
modules declare it, `split` below knows the two kinds that stream: `generate` (one reply per
row x combination), and `filter`, whose row-local rules (length, regex, script, copy, judge,
repetition, leakage, truncated, querylike) at the head of its rule list run per batch; the rules from the
first corpus-aware one (dedup, roundtrip) on run over all rows that the head kept, which is what
the whole filter would do, since each rule only ever sees the rows the rules before it kept.
"""

from __future__ import annotations

from typing import Any

from synth.steps.base import Row, Step

ROW_WISE_KINDS = {"generate"}
ROW_LOCAL_RULES = {"length", "regex", "script", "copy", "judge", "repetition", "leakage", "truncated", "querylike"}


def _with_rules(step: Step, rules: list[Any]) -> Step:
    """The same filter step (same name, same class) restricted to some of its rules."""
    return type(step)(step.spec.model_copy(update={"rules": rules}))


def _shard_local(rule: Any, source_aligned: bool) -> bool:
    """A rule whose result on a shard equals its result on all rows: row-local, or per source when
    no source's rows span two shards (dedup with `scope: source` compares rows of one source only)."""
    if rule.rule in ROW_LOCAL_RULES:
        return True
    return source_aligned and rule.rule == "dedup" and rule.scope == "source"


def split(step: Step, source_aligned: bool = False) -> tuple[Step | None, Step | None]:
    """(row-wise head, global tail); either may be None, never both.

    `source_aligned`: every source's rows lie in one shard of the step's input (see Stage.aligned).
    """
    declared = step.split()
    if declared != (None, step):  # the step declares its own split
        return declared
    if step.key in ROW_WISE_KINDS:
        return step, None
    if step.key == "filter":
        rules = list(step.spec.rules)
        cut = next((i for i, r in enumerate(rules) if not _shard_local(r, source_aligned)), len(rules))
        if cut == len(rules):
            return step, None
        if cut == 0:
            return None, step
        return _with_rules(step, rules[:cut]), _with_rules(step, rules[cut:])
    return None, step


def reads(step: Step) -> list[str] | None:
    """The columns a global step reads (None: any, or unknown). The pipeline hands it only these, plus
    an index to join its output back to the full rows, so its input holds no passage it never reads.
    """
    base = ["source_id", "id"]  # drop records name the row's source
    if step.key == "filter":
        found = list(base)
        for rule in step.spec.rules:
            if rule.rule in ("judge", "leakage"):
                return None  # its template may read any column
            found += rule.columns()
            if rule.rule == "roundtrip":
                found += [rule.positive_column, rule.id_column]
        return list(dict.fromkeys(found))
    if step.key == "mine_negatives":
        spec = step.spec
        found = [*base, spec.query_column, spec.positive_column]
        found += [spec.positive_id_column] if spec.positive_id_column else []
        column = getattr(spec.corpus, "column", None)
        return list(dict.fromkeys([*found, *([column] if column else [])]))
    return None


def drop_order(step: Step) -> dict[str, int]:
    """Rule label -> position, to put a streamed filter's drop records back in rule order.

    A whole-input filter lists every drop of its first rule, then of its second, ...; per batch
    they interleave. Sorting a step's drops (stably) by this position restores the order.
    """
    rules = getattr(step.spec, "rules", None) or []
    return {r.label: i for i, r in enumerate(rules)}


def drop_position(order: dict[str, int], record: Row) -> int:
    return order.get(str(record.get("rule")), -1) if order else 0
