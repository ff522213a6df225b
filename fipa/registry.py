"""Named registries: aggregators, client methods, tasks and partition schemes."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from fipa.errors import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError, KeyError):
    """A config asked for a name that no registry entry carries (a user error, fipa.errors)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0])


class Registry(Generic[T]):
    """A mapping from config names to classes or functions.

    Adding an entry is one decorator on its definition: ``@AGGREGATORS.register("fedavg")``;
    a function entry that takes options names their dataclass there too:
    ``@SCHEMES.register("iid", params=IIDParams)`` (it becomes ``entry.Params``).
    A registry may declare attributes every entry carries (``declares``: name -> default),
    set on the entry by ``register(name, attr=value)`` or from the default, so readers of an
    entry never probe for them (the vision data sets' ``train_size``, the models' ``cost``).

    A registry whose entries live one module each in a package names it: ``discover="fipa.tasks"``.
    At the first lookup every module of the package (but ``skip`` and ``_private`` ones) is
    announced, so that adding an entry is adding its file. ``lazy=True``: module ``<name>``
    registers the entry ``<name>`` and is imported when that name is first asked for (keeps heavy
    imports, DeepXDE and torchvision, out of jobs that do not need them); else every module is
    imported at the first lookup (a module may then register several names, or others than its own).
    """

    def __init__(self, kind: str, declares: dict[str, Any] | None = None, discover: str | None = None,
                 lazy: bool = False, skip: tuple[str, ...] = ("base",)) -> None:
        self.kind = kind
        self.declares = dict(declares or {})
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._pending = discover  # the package still to announce (None: done, or none)
        self._discover_lazily = lazy
        self._skip = skip

    def register(self, name: str, params: type | None = None, **attrs: Any) -> Callable[[T], T]:
        """Decorator that files ``obj`` under ``name`` (and sets ``obj.Params = params`` and the
        registry's declared attributes: ``attrs`` where given, else their defaults)."""
        unknown = sorted(set(attrs) - set(self.declares))
        if unknown:
            raise ValueError(f"{self.kind} {name!r}: unknown attribute {unknown[0]!r}; this registry "
                             f"declares {', '.join(self.declares) or 'none'}")

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            for attr, value in {**self.declares, **attrs}.items():
                setattr(obj, attr, value)
            if params is not None:  # after the defaults: a declared default Params gives way
                obj.Params = params  # type: ignore[attr-defined]
            self._entries[name] = obj
            return obj

        return deco

    def register_lazy(self, name: str, module: str) -> None:
        """Announce ``name`` now, import ``module`` (which registers it) on first use.

        Keeps heavy imports (DeepXDE, torchvision) out of jobs that do not need them.
        """
        self._lazy[name] = module

    def _discover(self) -> None:
        """Announce (``lazy``) or import every module of the ``discover`` package, once."""
        package, self._pending = self._pending, None
        if package is None:
            return
        for module in package_modules(package, self._skip):
            if self._discover_lazily:
                self.register_lazy(module, f"{package}.{module}")
            else:
                importlib.import_module(f"{package}.{module}")

    def get(self, name: str, key: str | None = None) -> T:
        """Entry for ``name``; the error names the config key and the valid choices."""
        self._discover()
        if not isinstance(name, str):
            where = f"{key}: " if key else ""
            raise UnknownNameError(f"{where}expected a {self.kind} name, got {name!r}; choose one of "
                                   f"{', '.join(self.names())}")
        if name not in self._entries and name in self._lazy:
            importlib.import_module(self._lazy.pop(name))
        if name not in self._entries:
            where = f"{key}: " if key else ""
            raise UnknownNameError(
                f"{where}unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}"
            )
        return self._entries[name]

    def name_problems(self, name: object, key: str) -> list[tuple[str, str]]:
        """``[(key, why)]`` when ``name`` is no entry (the format of a Params ``check()``), else []."""
        if isinstance(name, str) and name in self:
            return []
        return [(key, f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")]

    def names(self) -> list[str]:
        self._discover()
        return sorted({*self._entries, *self._lazy})

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def package_modules(package: str, skip: tuple[str, ...] = ()) -> list[str]:
    """The names of ``package``'s modules and subpackages, found on disk without importing them
    (``skip`` and names starting with ``_`` left out), sorted."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise ValueError(f"discover={package!r}: not an importable package")
    found = pkgutil.iter_modules(spec.submodule_search_locations)
    return sorted(m.name for m in found if m.name not in skip and not m.name.startswith("_"))
