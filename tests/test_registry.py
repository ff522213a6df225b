"""Registries that discover their entries: every module of a package announced on first lookup,
so that adding an entry is adding its file (fipa/registry.py)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from fipa.registry import Registry, UnknownNameError, package_modules

ENTRY = textwrap.dedent('''
    from toyreg import REG

    @REG.register("{name}")
    class Entry:
        pass
''')


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """A package ``toyreg`` with a registry discovering it, the module ``base`` (skipped), a
    ``_private`` helper (skipped), ``alpha.py`` (registers alpha) and ``pair.py`` (two names)."""
    pkg = tmp_path / "toyreg"
    pkg.mkdir()

    def write(name: str, text: str) -> Path:
        (pkg / name).write_text(text)
        return pkg / name

    write("__init__.py", "import os\nfrom fipa.registry import Registry\n"
                         "REG = Registry('toy', discover='toyreg', lazy=os.environ.get('TOY_LAZY') == '1')\n")
    write("base.py", "raise RuntimeError('base must not be imported as an entry')\n")
    write("_helpers.py", "raise RuntimeError('private modules are no entries')\n")
    write("alpha.py", ENTRY.format(name="alpha"))
    write("pair.py", ENTRY.format(name="pair_one") + ENTRY.format(name="pair_two").replace("class Entry",
                                                                                        "class Entry2"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in [m for m in sys.modules if m == "toyreg" or m.startswith("toyreg.")]:
        del sys.modules[name]


def test_package_modules_lists_files_without_importing_them(toy_package):
    assert package_modules("toyreg", skip=("base",)) == ["alpha", "pair"]
    assert "toyreg.alpha" not in sys.modules


def test_eager_discovery_imports_every_module_on_first_lookup(toy_package, monkeypatch):
    """A module may register several names, or others than its own: all are found."""
    monkeypatch.setenv("TOY_LAZY", "0")
    from toyreg import REG

    assert "toyreg.alpha" not in sys.modules  # nothing imported before a lookup
    assert REG.names() == ["alpha", "pair_one", "pair_two"]
    assert REG.get("pair_two").__name__ == "Entry2"


def test_a_new_file_is_a_new_entry(toy_package, monkeypatch):
    """Adding an entry is adding its file: no list, no import line."""
    monkeypatch.setenv("TOY_LAZY", "0")
    toy_package("gamma.py", ENTRY.format(name="gamma"))
    from toyreg import REG

    assert "gamma" in REG and REG.get("gamma").__module__ == "toyreg.gamma"


def test_lazy_discovery_imports_a_module_when_its_name_is_asked(toy_package, monkeypatch):
    """lazy=True (the task families): module <name> is entry <name>, imported on that name's lookup."""
    monkeypatch.setenv("TOY_LAZY", "1")
    from toyreg import REG

    assert REG.names() == ["alpha", "pair"]
    assert "toyreg.alpha" not in sys.modules
    assert REG.get("alpha").__module__ == "toyreg.alpha"
    assert "toyreg.pair" not in sys.modules
    with pytest.raises(UnknownNameError, match="unknown toy 'beta'; choose one of alpha, pair"):
        REG.get("beta", key="x.name")


def test_task_families_are_discovered_lazily():
    """The task registry uses the mechanism: every family of fipa/tasks/ announced, none imported
    for the announcement (DeepXDE and torchvision stay out of jobs that do not need them)."""
    import subprocess

    code = ("import json, sys; from fipa.tasks import TASKS; names = TASKS.names(); "
            "print(json.dumps([names, 'fipa.tasks.pde' in sys.modules, 'fipa.tasks.vision' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [["pde", "regression", "vision"], False, False]


def test_not_a_package_is_named():
    reg: Registry = Registry("thing", discover="fipa.errors")
    with pytest.raises(ValueError, match="discover='fipa.errors': not an importable package"):
        reg.names()
