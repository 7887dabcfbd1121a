"""Feature column names that depend on a configuration or a declaration (one place)."""

from __future__ import annotations


def popularity_column(window: int) -> str:
    """The feature column of the popularity share over ``window`` days."""
    return f"prod_pop_{window}"


def source_columns(source: str) -> tuple[str, str]:
    """The score and rank feature columns of a candidate source."""
    return f"src_{source}_score", f"src_{source}_rank"
