"""A name -> class registry, filled by a class decorator (algorithms, inner-loop optimizers)."""

from __future__ import annotations

from typing import Generic, TypeVar

C = TypeVar("C", bound=type)


class Registry(dict[str, C], Generic[C]):
    """``@registry.register`` makes a class available by its ``name`` attribute."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, cls: C) -> C:
        name = cls.name  # type: ignore[attr-defined]
        if name in self:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self[name] = cls
        return cls

    def lookup(self, name: str) -> C:
        """The class registered as ``name``; a ValueError listing the choices otherwise."""
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {sorted(self)}") from None
