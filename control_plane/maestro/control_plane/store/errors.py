"""What a store reports, whichever database is behind it, so domain code never sees a driver.

Each backend maps its driver's integrity errors onto these; a slice's store may raise them
itself when a statement's outcome says so (a row to update that is not there).
"""

from __future__ import annotations


class StoreError(Exception):
    """A statement was refused by the database's constraints."""


class RowConflict(StoreError):
    """A row with the same key (primary or unique) already exists."""


class RowNotFound(StoreError):
    """A row the statement needs is missing: the row referenced by a foreign key, or the row to
    change."""
