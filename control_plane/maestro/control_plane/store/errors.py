"""What a store reports, whichever database is behind it, so domain code never sees a driver.

Each backend maps its driver's integrity errors onto these; a slice's store may raise them
itself when a statement's outcome says so (a row to update that is not there).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class StoreError(Exception):
    """A statement was refused by the database's constraints."""


class RowConflict(StoreError):
    """A row with the same key (primary or unique) already exists."""


class RowNotFound(StoreError):
    """A row the statement needs is missing: the row referenced by a foreign key, or the row to
    change."""


def once_more_on_conflict(method: Callable[P, T]) -> Callable[P, T]:
    """Run a check-then-write transaction again when a concurrent one committed the same key
    between its check and its write (PostgreSQL's READ COMMITTED lets both checks pass): the
    second run's checks see that row and answer as they would have (exists already, the retried
    request's row, or a write over it)."""

    @functools.wraps(method)
    def again(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except RowConflict:
            return method(*args, **kwargs)

    return again
