"""Just enough PromQL to evaluate the runbook's alert expressions against scraped series.

Supported: ``metric``, ``metric{label="value"}``, ``rate(metric[5m])``, a
comparison with a number (``> 0``, ``== 0``), and ``and`` between two such
terms (label sets matched as Prometheus does with no ``on``). ``rate`` is
taken between two scrapes, which stand for the window's ends.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]

_TERM = re.compile(
    r"^\s*(?:rate\((?P<rmetric>\w+)(?P<rlabels>\{[^}]*\})?\[\w+\]\)|(?P<metric>\w+)(?P<labels>\{[^}]*\})?)"
    r"\s*(?:(?P<op>==|!=|>=|<=|>|<)\s*(?P<number>[-\d.]+))?\s*$"
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


def samples(text: str) -> dict[str, Vector]:
    """Every sample of a scrape: name -> {labels: value}."""
    found: dict[str, Vector] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return found


@dataclass
class Scrapes:
    """Two scrapes of one target, ``seconds`` apart (the ends of a ``rate`` window)."""

    before: dict[str, Vector]
    after: dict[str, Vector]
    seconds: float


def _selector(text: str | None) -> Labels:
    if not text:
        return frozenset()
    return frozenset(re.findall(r'(\w+)="([^"]*)"', text))


def metrics_of(expression: str) -> list[str]:
    """The series names an expression reads."""
    names = []
    for term in expression.split(" and "):
        match = _TERM.match(term) or _fail(term)
        names.append(match["rmetric"] or match["metric"])
    return names


def _fail(term: str) -> re.Match[str]:
    raise ValueError(f"unsupported expression {term!r}")


def _term(term: str, scrapes: Scrapes) -> tuple[str, Vector]:
    match = _TERM.match(term) or _fail(term)
    if match["rmetric"]:
        name, wanted = match["rmetric"], _selector(match["rlabels"])
        after = scrapes.after.get(name, {})
        before = scrapes.before.get(name, {})
        vector = {
            labels: (value - before.get(labels, 0.0)) / scrapes.seconds
            for labels, value in after.items()
        }
    else:
        name, wanted = match["metric"], _selector(match["labels"])
        vector = dict(scrapes.after.get(name, {}))
    vector = {labels: v for labels, v in vector.items() if wanted <= labels}
    if match["op"]:
        compare, number = _OPS[match["op"]], float(match["number"])
        vector = {labels: v for labels, v in vector.items() if compare(v, number)}
    return name, vector


def evaluate(expression: str, scrapes: Scrapes) -> Vector:
    """The series for which the expression holds (an alert fires for each)."""
    terms = expression.split(" and ")
    _, result = _term(terms[0], scrapes)
    for term in terms[1:]:
        _, other = _term(term, scrapes)
        result = {labels: v for labels, v in result.items() if labels in other}
    return result
