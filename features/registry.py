"""A registry of named declarations (tasks, candidate sources): one place that refuses a name
registered twice and names the known ones when asked for an unknown one."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    """Anything with a ``name``."""

    @property
    def name(self) -> str:
        """The unique name."""
        ...


T = TypeVar("T", bound=Named)


class Registry(dict[str, T], Generic[T]):
    """Name -> declaration, in registration order.

    Args:
        kind: What is registered, for messages ("task", "candidate source").
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, item: T) -> T:
        """Add ``item``.

        Raises:
            ValueError: An item of that name exists already.
        """
        if item.name in self:
            raise ValueError(f"{self.kind} {item.name!r} is registered twice")
        self[item.name] = item
        return item

    def get_named(self, name: str) -> T:
        """The item called ``name``.

        Raises:
            ValueError: No such item.
        """
        try:
            return self[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; expected one of {tuple(self)}"
            ) from None
