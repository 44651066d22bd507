"""Which topic filters the sensor session subscribes to for a set of rules: each message once.

A broker sends a client one copy of a message per matching subscription (Mosquitto 2 does), and
a message matching two rules' overlapping filters (`sensors/+/temp` and `sensors/#`) would come in
twice and be acknowledged twice. So a filter another one of the same kind (own, or shared by the
same group) already covers is not subscribed: its messages arrive through the wider one, and the
intake matches every message against every rule, so each matching rule still gets it once.
Pure functions, no broker.
"""

from __future__ import annotations

from edgefleet.proto.rules import RuleSpec, shared_filter

EffectiveRule = tuple[RuleSpec, str | None]  # the rule and the group that shares it (None: this node only)


def covers(wide: str, narrow: str) -> bool:
    """True when every topic `narrow` matches is matched by `wide` (MQTT filter semantics)."""
    w, n = wide.split("/"), narrow.split("/")
    if w[0] in ("+", "#") and n[0].startswith("$"):
        return False  # a wildcard first level never matches `$` topics
    for i, level in enumerate(w):
        if level == "#":
            return True
        if i >= len(n):
            return False
        if n[i] == "#" or (level != "+" and (n[i] == "+" or n[i] != level)):
            return False
    return len(n) == len(w)


def subscription_filters(rules: dict[str, EffectiveRule]) -> set[str]:
    """The filters to subscribe to: one per distinct (group, filter), less those another covers."""
    by_group: dict[str | None, set[str]] = {}
    for rule, group in rules.values():
        by_group.setdefault(group, set()).add(rule.topic_filter)
    wanted: set[str] = set()
    for group, filters in by_group.items():
        for f in filters:
            if any(other != f and covers(other, f) for other in filters):
                continue
            wanted.add(shared_filter(group, f) if group else f)
    return wanted
