"""The runner SDK: how a Python module says which callables implement which declared functions.

    from emirax.runner import function

    @function                 # serves the declared function `encode`
    def encode(uri, recipe): ...

    @function("index")        # serves `index` under another Python name
    def index_file(uri): ...

`functions_of(module)` gives the callables of a module by declared name: decorated ones, and any
other public callable defined in the module itself (so plain functions named like the declared
ones work without the decorator, as `emirax run` promises). Issue 5's runner process leases work
for exactly these names.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar, overload

__all__ = ["function", "functions_of"]

F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "__emirax_function__"


@overload
def function(fn: F) -> F: ...


@overload
def function(name: str) -> Callable[[F], F]: ...


def function(arg: Any) -> Any:
    """Mark a callable as the implementation of a declared function (its own name, or `name`)."""
    if callable(arg):
        setattr(arg, _ATTR, arg.__name__)
        return arg

    def mark(fn: F) -> F:
        setattr(fn, _ATTR, str(arg))
        return fn

    return mark


def functions_of(module: ModuleType) -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {}
    for name, value in vars(module).items():
        if not callable(value):
            continue
        declared = getattr(value, _ATTR, None)
        if declared is not None:
            found[declared] = value
        elif not name.startswith("_") and getattr(value, "__module__", None) == module.__name__:
            found.setdefault(name, value)
    return found
