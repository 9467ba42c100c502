"""Compiled predicates. Each decides at construction what it is (exact, suffix, glob,
regex, numeric bound) and exposes a trivial call; nothing here parses per action."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

StrTest = Callable[[str], bool]

MISSING: Any = object()


class PredicateError(Exception):
    """An argument could not be tested (missing or wrong type): fail closed upstream."""


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _glob_regex(pattern: str, *, segment: bool) -> str:
    """``*`` (within a segment when ``segment``), ``**`` (anything), ``?`` (one char)."""
    out: list[str] = []
    i = 0
    one = "[^/]" if segment else "."
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append(f"{one}*")
        elif c == "?":
            out.append(one)
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def glob_test(patterns: Sequence[str], *, segment: bool = False) -> StrTest:
    """A test for any of ``patterns``; ``segment`` makes ``*`` stop at ``/`` (paths)."""
    exact = frozenset(p for p in patterns if not is_glob(p))
    globs = [p for p in patterns if is_glob(p)]
    if ("*" in globs and not segment) or "**" in globs:
        return lambda value: True
    if not globs:
        if len(exact) == 1:
            (only,) = exact
            return lambda value: value == only
        return exact.__contains__
    rx = re.compile("|".join(f"(?:{_glob_regex(p, segment=segment)})" for p in globs), re.S)
    fullmatch = rx.fullmatch
    if not exact:
        return lambda value: fullmatch(value) is not None
    return lambda value: value in exact or fullmatch(value) is not None


def host_test(patterns: Sequence[str]) -> StrTest:
    """Hosts: exact, ``*.example.com`` (any depth of subdomain, not the apex), or ``*``."""
    if "*" in patterns:
        return lambda host: True
    exact = frozenset(p for p in patterns if not p.startswith("*."))
    suffixes = tuple(p[1:] for p in patterns if p.startswith("*."))
    if not suffixes:
        return exact.__contains__
    return lambda host: host in exact or host.endswith(suffixes)


def host_index_keys(host: str) -> list[str]:
    """Index keys under which rules for ``host`` are filed: the host, then ``*.parent``
    for each parent domain. Rules with other host patterns live under the any-key."""
    keys = [host]
    rest = host
    while "." in rest:
        rest = rest.split(".", 1)[1]
        keys.append("*." + rest)
    return keys


# --- argument predicates -----------------------------------------------------------

ArgTest = Callable[[Any], bool]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def same_value(a: Any, b: Any) -> bool:
    """JSON equality without Python's coercions: ``True != 1``, ``"1" != 1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _number(name: str, v: Any) -> float:
    if v is MISSING:
        raise PredicateError(f"argument `{name}` is missing (a bound needs a number)")
    if not _is_number(v):
        raise PredicateError(
            f"argument `{name}` is {type(v).__name__} {_short(v)}, expected a number"
        )
    if isinstance(v, float) and not math.isfinite(v):
        raise PredicateError(f"argument `{name}` is not a finite number")
    return v


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def compile_predicate(name: str, spec: Mapping[str, Any]) -> ArgTest:
    """All tests in ``spec`` must hold. Raises ``PredicateError`` when the argument is
    missing or has the wrong type for a test (except ``present``)."""
    tests: list[ArgTest] = []
    for op, want in spec.items():
        tests.append(_compile_op(name, op, want))
    if len(tests) == 1:
        return tests[0]
    return lambda v: all(t(v) for t in tests)


def _require(name: str, v: Any) -> None:
    if v is MISSING:
        raise PredicateError(f"argument `{name}` is missing")


def _compile_op(name: str, op: str, want: Any) -> ArgTest:
    if op == "present":
        return (lambda v: v is not MISSING) if want else (lambda v: v is MISSING)
    if op in ("gt", "ge", "lt", "le"):
        bound = float(want)
        cmp: Callable[[float], bool] = {
            "gt": lambda x: x > bound,
            "ge": lambda x: x >= bound,
            "lt": lambda x: x < bound,
            "le": lambda x: x <= bound,
        }[op]
        return lambda v: cmp(_number(name, v))
    if op == "eq":
        def eq(v: Any) -> bool:
            _require(name, v)
            return same_value(v, want)
        return eq
    if op == "ne":
        def ne(v: Any) -> bool:
            _require(name, v)
            return not same_value(v, want)
        return ne
    if op in ("in", "not_in"):
        options = list(want)
        positive = op == "in"

        def member(v: Any) -> bool:
            _require(name, v)
            return any(same_value(v, o) for o in options) is positive
        return member
    if op == "regex":
        rx = re.compile(want)

        def regex(v: Any) -> bool:
            _require(name, v)
            if not isinstance(v, str):
                raise PredicateError(
                    f"argument `{name}` is {type(v).__name__} {_short(v)}, expected a string"
                )
            return rx.fullmatch(v) is not None
        return regex
    raise ValueError(f"unknown predicate `{op}`")
