"""Plugins: the modules a config's ``plugins`` key names, imported before any registry is read.

A plugin is an ordinary Python module whose import registers entries, e.g. an aggregator with
``@AGGREGATORS.register("fedmedian")`` or a task with ``@TASKS.register("toy")``; the package
itself is not edited. An entry of ``plugins`` is either a dotted module name, found on
``sys.path`` (``PYTHONPATH``, an installed package), or the path of a ``.py`` file, relative to
the working directory like every other path of a config (its folder then joins ``sys.path``, so
the plugin's sibling modules import too). The workflow passes its ``plugins`` on to every job's
run config, so a job imports what the DAG was validated with.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from fipa.errors import ConfigError

KEY = "plugins"
FIX = ("put the module's folder on PYTHONPATH, install it, or list the path of its .py file "
       "(relative to the working directory)")

# where the workflow schema enumerates each registry's names: (path of keys, registry)
SCHEMA_ENUMS = (
    (("aggregators", "additionalProperties", "properties", "name"), "aggregator"),
    (("client_methods", "additionalProperties", "properties", "method"), "client method"),
    (("tasks", "additionalProperties", "properties", "task", "properties", "name"), "task"),
    (("tasks", "additionalProperties", "properties", "partitions", "additionalProperties",
      "properties", "scheme"), "partition scheme"),
)


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


def registered_names() -> dict[str, list[str]]:
    """Every registry's names (kind -> sorted names), plugins' entries included."""
    from fipa.aggregators import AGGREGATORS
    from fipa.clients import CLIENT_METHODS
    from fipa.partition import SCHEMES
    from fipa.tasks import TASKS

    return {reg.kind: reg.names() for reg in (AGGREGATORS, CLIENT_METHODS, TASKS, SCHEMES)}


def with_registered_names(schema: dict[str, Any]) -> dict[str, Any]:
    """The workflow schema with each name enum replaced by its registry's names (in place)."""
    names = registered_names()
    for path, kind in SCHEMA_ENUMS:
        node = schema["properties"]
        for k in path:
            node = node[k]
        node["enum"] = names[kind]
    return schema


@contextmanager
def workflow_schema(config: dict[str, Any], schema_path: str) -> Iterator[str]:
    """The schema file to validate a workflow ``config`` against, after importing its plugins.

    Without plugins that is ``schema_path`` itself. With plugins, a temporary copy whose name
    enums are the registries' names, so that a plugin's aggregator, client method, task or
    scheme passes the schema (``snakemake.utils.validate`` reads only files); removed on exit.
    """
    if not load(config.get(KEY)):
        yield schema_path
        return
    from fipa.io import read_yaml

    schema = with_registered_names(read_yaml(schema_path))
    fd, tmp = tempfile.mkstemp(prefix="fipa-schema-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(schema, fh)
        yield tmp
    finally:
        os.unlink(tmp)
