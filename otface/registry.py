"""A tiny name -> factory registry, used for heads, losses and backbones."""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Generic, TypeVar

from otface.errors import UnknownNameError, UnknownParameterError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) that build a ``T``.

    >>> HEADS = Registry("head")
    >>> @HEADS.register("arcface")
    ... class ArcFace: ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, *names: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a factory under one or more names (aliases)."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            for name in names:
                if name in self._factories:
                    raise KeyError(f"{self.kind} {name!r} is already registered")
                self._factories[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``; an :class:`UnknownNameError` (a ``KeyError``)
        lists the known names otherwise."""
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(sorted(self._factories))
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def build(self, name: str, **kwargs: Any) -> T:
        """Build the object registered as ``name`` with the given keyword arguments; one it does
        not take is an :class:`UnknownParameterError` (a ``TypeError``) listing those it does."""
        factory = self.get(name)
        accepted = accepted_parameters(factory)
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise UnknownParameterError(f"{self.kind} {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                                        f"it accepts: {', '.join(accepted)}")
        return factory(**kwargs)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories


def accepted_parameters(factory: Callable[..., Any]) -> list[str]:
    """The keyword arguments ``factory`` takes: its named parameters and, when it passes
    ``**kwargs`` on to the class it is annotated to return, that class's parameters that have
    defaults (those without are the factory's to supply)."""
    params = inspect.signature(factory).parameters
    names = [p.name for p in params.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        returned = typing.get_type_hints(factory).get("return")
        if isinstance(returned, type):
            names += [p.name for p in inspect.signature(returned).parameters.values()
                      if p.default is not p.empty and p.name not in names]
    return names
