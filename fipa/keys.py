"""Config keys documented once: a dataclass field carries its meaning and its bounds.

``key(default, doc, ge=..., ...)`` declares a field of a ``Params`` dataclass (or of the
run and client configs). From those fields come the range check of every parsed config
(:func:`bound_problems`, applied by ``fipa.config.parse_params`` before a class's own
cross-field ``check()``), the key tables of config/README.md (:func:`render_table`,
regenerated in place by ``python -m fipa.keys config/README.md``, ``make docs``) and the
comparison with the workflow schema's bounds (tests/test_keys.py).

A leaf module: it imports nothing from fipa at import time (the README regeneration
imports the documented classes by name when it runs).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import operator
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

BOUNDS = ("ge", "gt", "le", "lt")
_OPS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_TESTS = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


def key(default: Any = dataclasses.MISSING, doc: str = "", *, default_factory: Any = dataclasses.MISSING,
        ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
        note: str = "") -> Any:
    """A dataclass field with its meaning ``doc`` and optional bounds (None values skip them).

    Without ``doc`` the field has bounds but no table row (a key documented elsewhere).
    ``note`` is appended to the bound in the error message ("must be >= 1 eigenpair per
    client, got 0"). A list or dict ``default`` is copied per instance, as a default_factory.
    """
    if (ge is not None and gt is not None) or (le is not None and lt is not None):
        raise ValueError("key: give at most one lower (ge/gt) and one upper (le/lt) bound")
    meta = {"doc": doc, "note": note}
    meta.update({name: v for name, v in zip(BOUNDS, (ge, gt, le, lt), strict=True) if v is not None})
    if isinstance(default, list | dict):  # a shared mutable default would leak between instances
        default, default_factory = dataclasses.MISSING, (lambda value=default: copy.deepcopy(value))
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def bounds_of(f: dataclasses.Field) -> dict[str, float]:
    """The field's bounds, e.g. ``{"ge": 0, "lt": 1}`` (empty: none)."""
    return {name: f.metadata[name] for name in BOUNDS if name in f.metadata}


def number_text(x: Any) -> str:
    """A bound as written in messages and tables; large powers of two as 2^k (seed's 2^63)."""
    if isinstance(x, int) and not isinstance(x, bool) and x > 2**20 and x & (x - 1) == 0:
        return f"2^{x.bit_length() - 1}"
    return str(x)


def bound_text(bounds: dict[str, float]) -> str:
    """">= 1", "> 0", "[0, 1)", "(0, 1]" or "" for no bounds."""
    lower = next(((n, bounds[n]) for n in ("ge", "gt") if n in bounds), None)
    upper = next(((n, bounds[n]) for n in ("le", "lt") if n in bounds), None)
    if lower and upper:
        return (("[" if lower[0] == "ge" else "(") + f"{number_text(lower[1])}, {number_text(upper[1])}"
                + ("]" if upper[0] == "le" else ")"))
    one = lower or upper
    return f"{_OPS[one[0]]} {number_text(one[1])}" if one else ""


def _within(value: float, bounds: dict[str, float]) -> bool:
    # NaN compares False with everything, so it is out of any bounds
    return all(_TESTS[name](value, b) for name, b in bounds.items())


def bound_problem(f: dataclasses.Field, value: Any) -> str | None:
    """The message for ``value`` outside field ``f``'s bounds ("must be >= 1, got 0"), or None.

    None, booleans and non-numbers (e.g. ``threads: auto``) are not range-checked.
    """
    bounds = bounds_of(f)
    if not bounds or value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if _within(value, bounds):
        return None
    text = bound_text(bounds)
    rule = f"lie in {text}" if text[0] in "[(" else f"be {text}"
    nullable = " or null" if f.default is None else ""
    note = f" {f.metadata['note']}" if f.metadata.get("note") else ""
    return f"must {rule}{nullable}{note}, got {value}"


def value_problem(cls: type, name: str, value: Any) -> str | None:
    """The bounds message of ``value`` for field ``name`` of dataclass ``cls`` (None: within)."""
    return bound_problem(next(f for f in dataclasses.fields(cls) if f.name == name), value)


def bound_problems(obj: Any) -> list[tuple[str, str]]:
    """(key, problem) for every field of dataclass ``obj`` whose value breaks its bounds."""
    out = []
    for f in dataclasses.fields(obj):
        problem = bound_problem(f, getattr(obj, f.name))
        if problem:
            out.append((f.name, problem))
    return out


# ----------------------------------------------------------------------------- tables


def documented_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` declared with :func:`key` and a ``doc`` (the user-facing keys), in order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("doc")]


def type_text(typ: Any) -> str:
    """A field's annotation for readers: "int", "float or null", "`fixed`, `adaptive`"."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        text = " or ".join(type_text(a) for a in args)
        return f"{text} or null" if len(args) < len(typing.get_args(typ)) else text
    if origin is typing.Literal:
        return ", ".join(f"`{value_text(a)}`" for a in typing.get_args(typ))
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(type_text(a) for a in typing.get_args(typ))}]"
    if typ is Any:
        return "any"
    return getattr(typ, "__name__", str(typ))


def value_text(value: Any) -> str:
    """A default as YAML spells it: null, true, 1e-3, [32, 32]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        text = repr(value) if 1e-4 <= abs(value) < 1e5 or value == 0 else f"{value:g}"
        return re.sub(r"e([+-])0*(\d)", lambda m: f"e{'-' if m[1] == '-' else ''}{m[2]}", text)
    if isinstance(value, list):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return str(value)


def default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{value_text(f.default)}`"
    if f.default_factory is not dataclasses.MISSING:
        return f"`{value_text(f.default_factory())}`"
    return "(required)"


def _cell(text: str) -> str:
    # a pipe would end the markdown table cell; newlines would end the row
    return " ".join(text.split()).replace("|", "\\|")


def render_table(cls: type) -> str:
    """Markdown table of ``cls``'s documented keys: key, type, default, bounds, meaning."""
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | bounds | meaning |", "|---|---|---|---|---|"]
    for f in documented_fields(cls):
        bounds = bound_text(bounds_of(f))
        rows.append("| " + " | ".join([
            f"`{f.name}`", _cell(type_text(hints[f.name])), _cell(default_text(f)),
            _cell(bounds), _cell(f.metadata["doc"])]) + " |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- README regions

REGION = re.compile(r"(<!-- keys: (?P<name>[\w.]+) -->\n)(?P<body>.*?)(<!-- /keys -->)", re.S)


def load_class(dotted: str) -> type:
    """``fipa.aggregators.FIPAParams`` -> the class."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def regenerate(text: str) -> str:
    """``text`` with every ``<!-- keys: module.Class -->`` ... ``<!-- /keys -->`` region re-rendered."""
    return REGION.sub(lambda m: f"{m[1]}{render_table(load_class(m['name']))}\n{m[4]}", text)


def regions(text: str) -> list[str]:
    """The dotted class names of the generated regions in ``text``."""
    return [m["name"] for m in REGION.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    """``python -m fipa.keys FILE.md [--check]``: rewrite FILE's key tables (or only report drift)."""
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    paths = [Path(a) for a in args if a != "--check"] or [Path("config/README.md")]
    stale = []
    for path in paths:
        text = path.read_text()
        new = regenerate(text)
        if new != text:
            stale.append(path)
            if not check:
                path.write_text(new)
    for path in stale:
        print(f"{path}: key tables {'out of date (run make docs)' if check else 'regenerated'}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
