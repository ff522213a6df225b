"""The package's shape: imports point one way (tests/import_graph.py reads them statically)."""

from __future__ import annotations

import textwrap

from tests import import_graph as ig


def test_fipa_has_no_import_cycle():
    found = ig.cycles(ig.graph())
    assert not found, "import cycles in fipa/ (python tests/import_graph.py --cycles): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_cycle_finder_sees_function_local_and_relative_imports(tmp_path):
    """The oracle itself: a deferred import inside a function and a relative import are edges."""
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from toy.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from ..c import x\n")
    (pkg / "c.py").write_text(textwrap.dedent("""
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from toy import a  # annotations only: not an edge
        import toy.a
    """))
    g = ig.graph(pkg)
    assert g["toy.a"] == {"toy.sub.b"} and g["toy.sub.b"] == {"toy.c"} and g["toy.c"] == {"toy.a"}
    assert ig.cycles(g) == [["toy.a", "toy.c", "toy.sub.b"]]
    (pkg / "c.py").write_text("x = 1\n")
    assert ig.cycles(ig.graph(pkg)) == []
