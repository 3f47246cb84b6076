"""Open the store the settings name, with every slice's migrations applied."""

from __future__ import annotations

from collections.abc import Sequence

from maestro.control_plane.config import StoreConfig
from maestro.control_plane.store.migrations import Migration
from maestro.control_plane.store.sql import Sql
from maestro.control_plane.store.sqlite import SqliteSql


def open_store(config: StoreConfig, schema: Sequence[Migration]) -> Sql:
    """Blocking (connects and migrates): call it off the event loop."""
    if config.backend == "postgres":
        from maestro.control_plane.store.postgres import PostgresSql

        return PostgresSql(config.postgres_dsn, schema, max_size=config.postgres_pool_size)
    return SqliteSql(config.sqlite_path, schema, config.sqlite_synchronous)
