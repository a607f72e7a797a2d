"""``K=V`` command-line parameters (``--attack-param z=1.5``) parsed into keyword arguments."""

from __future__ import annotations

import re

_INT = re.compile(r"[+-]?\d+")
_FLOAT_WORDS = {"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", "nan"}


def parse_value(text: str) -> object:
    """Infer a Python value from a command-line string.

    ``true``/``false`` (any case) -> bool; ``none``/``null`` -> None; ``12``, ``-1`` -> int;
    ``0.1``, ``1e20``, ``inf`` -> float; a comma-separated list (``22,30,31,32``, optionally in
    parentheses or brackets) -> tuple of inferred values; a value in single or double quotes
    -> that string, uninterpreted; anything else -> str.
    """
    s = text.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    if len(s) >= 2 and (s[0], s[-1]) in (("(", ")"), ("[", "]")):
        inner = s[1:-1].strip()
        return tuple(parse_value(p) for p in inner.split(",") if p.strip()) if inner else ()
    if "," in s:
        return tuple(parse_value(p) for p in s.split(",") if p.strip())
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if _INT.fullmatch(s):
        return int(s)
    if low in _FLOAT_WORDS:
        return float(low)
    try:
        return float(s)
    except ValueError:
        return s


def parse_params(items: list[str] | None) -> dict[str, object]:
    """Parse ``["K=V", ...]`` into a dict, values inferred by :func:`parse_value`.

    Dashes in keys become underscores (``per-coordinate=2`` -> ``per_coordinate``). A missing
    ``=``, an empty key or a key given twice raise ``ValueError``.
    """
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"parameter must be written K=V, got {item!r}")
        if not key.isidentifier():
            raise ValueError(f"parameter name must be an identifier, got {key!r} in {item!r}")
        if key in out:
            raise ValueError(f"parameter {key!r} given twice")
        out[key] = parse_value(value)
    return out
