"""The documents a reader follows: citations of the method point into the repository, and every
command a note names exists.

The method's specification is docs/method.md; code, tests and documents cite it as
``docs/method.md, "Section"``. Nothing tracked may point at a specification outside the
repository, and the notes' numbers come from commands in it (benchmarks/ scripts, make targets),
never from a script under /tmp.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
SECTIONS = ("Notation", "Update rule", "Damping", "Complement", "Curvature uploads", "Diagonal baseline")
CITATION = re.compile(r'docs/method\.md,\s*"([^"]+)"')
# the two ways an outside specification was cited; split so that this file does not match itself
OUTSIDE = ("fipa" + "-spec", "/work" + "/shared")


@cache
def tracked_texts() -> dict[str, str]:
    """Every tracked file that reads as UTF-8 text, by path relative to the repository root."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    texts = {}
    for name in filter(None, out.decode().split("\0")):
        path = ROOT / name
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def method_sections() -> list[str]:
    return re.findall(r"^## (.+?)\s*$", METHOD.read_text(encoding="utf-8"), flags=re.MULTILINE)


def test_method_has_the_cited_sections():
    """docs/method.md carries the six sections that code and documents cite."""
    assert [s for s in SECTIONS if s not in method_sections()] == []


def test_no_tracked_file_cites_a_specification_outside_the_repository():
    """No tracked file (but this one) names the outside specification or its machine's path."""
    offenders = sorted(name for name, text in tracked_texts().items()
                       if name != "tests/test_docs.py" and any(s in text for s in OUTSIDE))
    assert offenders == [], f"cite docs/method.md, \"Section\" instead, in: {', '.join(offenders)}"


def test_every_method_citation_names_an_existing_section():
    """Each citation of docs/method.md in a tracked file (but this one, whose text shows the form)
    names a heading of docs/method.md."""
    sections = set(method_sections())
    bad = [f"{name}: {section!r}" for name, text in tracked_texts().items() if name != "tests/test_docs.py"
           for section in CITATION.findall(text) if section not in sections]
    assert bad == [], f"sections of docs/method.md are {sorted(sections)}; bad citations: {bad}"


def notes_and_docs() -> dict[str, str]:
    return {name: text for name, text in tracked_texts().items()
            if name.startswith(("notes/", "docs/")) and name.endswith(".md")}


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.MULTILINE))


def test_commands_named_by_notes_exist():
    """Every benchmarks/*.py script and every `make <target>` a note or document names exists."""
    targets = make_targets()
    missing = []
    for name, text in notes_and_docs().items():
        missing += [f"{name}: {s}" for s in re.findall(r"benchmarks/[\w.-]+\.py", text)
                    if not (ROOT / s).is_file()]
        missing += [f"{name}: make {t}" for t in re.findall(r"`make ([\w-]+)", text) if t not in targets]
    assert missing == []


def test_notes_name_no_script_outside_the_repository():
    """A note's numbers come from a command in the repository, not from a script under /tmp."""
    found = [f"{name}: {s}" for name, text in notes_and_docs().items()
             for s in re.findall(r"/tmp/[\w./-]+\.py", text)]
    assert found == []


def test_relative_links_of_the_documents_resolve():
    """Markdown links of docs/ point at files or folders that exist."""
    broken = []
    for name, text in notes_and_docs().items():
        if not name.startswith("docs/"):
            continue
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if "://" not in target and not (ROOT / name).parent.joinpath(target).exists():
                broken.append(f"{name}: {target}")
    assert broken == []
