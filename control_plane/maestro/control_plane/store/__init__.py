"""The one store layer: every slice stores through `sql.Sql`, on SQLite (the embedded default)
or PostgreSQL (shared by replicas), with per-slice migrations (`migrations`) and typed errors
(`errors`) so domain code never sees a driver."""
