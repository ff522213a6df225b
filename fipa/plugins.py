"""Plugins: the modules a config's ``plugins`` key names, imported before any registry is read.

A plugin is an ordinary Python module whose import registers entries, e.g. an aggregator with
``@AGGREGATORS.register("fedmedian")`` or a task with ``@TASKS.register("toy")``; the package
itself is not edited. An entry of ``plugins`` is either a dotted module name, found on
``sys.path`` (``PYTHONPATH``, an installed package), or the path of a ``.py`` file, relative to
the working directory like every other path of a config (its folder then joins ``sys.path``, so
the plugin's sibling modules import too). The workflow passes its ``plugins`` on to every job's
run config, so a job imports what the DAG was validated with (whose schema names the plugins'
entries too: fipa/schema.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from fipa.errors import ConfigError

KEY = "plugins"
FIX = ("put the module's folder on PYTHONPATH, install it, or list the path of its .py file "
       "(relative to the working directory)")


def entries(raw: Any, key: str = KEY) -> list[str]:
    """The ``plugins`` value as a list of names; None (key absent) is the empty list."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(e, str) and e.strip() for e in raw):
        raise ConfigError(f"{key}: expected a list of module names or .py file paths, got {raw!r}")
    return list(raw)


def load(raw: Any, key: str = KEY) -> list[str]:
    """Import every plugin of ``raw`` (a config's ``plugins`` value), in order; importing one
    again is a no-op, as for any module. Returns the entries."""
    names = entries(raw, key)
    for i, entry in enumerate(names):
        import_plugin(entry, f"{key}[{i}]")
    return names


def is_file_entry(entry: str) -> bool:
    """A path (``dir/name.py``), not a dotted module name."""
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def import_plugin(entry: str, key: str = KEY) -> ModuleType:
    """Import one plugin; any failure is one ConfigError naming ``key``, the plugin and the cause."""
    if is_file_entry(entry):
        name, origin = _file_on_path(entry, key)
    else:
        name, origin = entry, _module_origin(entry, key)
    try:
        module = importlib.import_module(name)
    except SystemExit as e:  # sys.exit() at import would end the job with its status and no run
        raise ConfigError(f"{key}: plugin {entry!r} called sys.exit({e.code!r}) while importing"
                          f"{_where(e, origin)}; a plugin must only define and register entries") from None
    except Exception as e:  # the plugin's own code failed: report it where it failed
        raise ConfigError(f"{key}: plugin {entry!r} failed to import: {type(e).__name__}: {e}"
                          f"{_where(e, origin)}") from None
    if origin is not None and Path(getattr(module, "__file__", "") or "").resolve() != Path(origin).resolve():
        raise ConfigError(f"{key}: plugin {entry!r}: a module named {name!r} is already imported from "
                          f"{module.__file__}; rename the plugin file")
    return module


def _file_on_path(entry: str, key: str) -> tuple[str, str]:
    """(module name, file) of a ``.py`` plugin, its folder put first on ``sys.path``."""
    path = Path(entry).resolve()
    if path.suffix != ".py" or not path.is_file():
        raise ConfigError(f"{key}: plugin file {entry} not found (paths are relative to the working "
                          f"directory, {os.getcwd()}); give an existing .py file or a module name")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # first: the named file wins over a same-named installed module
    return path.stem, str(path)


def _module_origin(name: str, key: str) -> str | None:
    """The file a module name resolves to on ``sys.path`` (None: a namespace or built-in module)."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError as e:  # a parent package of a dotted name is missing
        raise ConfigError(f"{key}: cannot import plugin module {name!r} ({e}); {FIX}") from None
    except Exception as e:  # a parent package failed while importing
        raise ConfigError(f"{key}: plugin {name!r} failed to import: {type(e).__name__}: {e}") from None
    if spec is None:
        raise ConfigError(f"{key}: cannot import plugin module {name!r}: no such module on sys.path; {FIX}")
    return spec.origin if spec.has_location else None


def _where(err: BaseException, origin: str | None) -> str:
    """`` (at file:line)``: the plugin's innermost line in the traceback, else the innermost line."""
    frames = traceback.extract_tb(err.__traceback__)
    mine = [f for f in frames if origin is not None and Path(f.filename) == Path(origin)]
    frame = (mine or frames or [None])[-1]
    return f" (at {frame.filename}:{frame.lineno})" if frame is not None else ""
