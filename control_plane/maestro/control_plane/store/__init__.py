"""State of the control plane.

The embedded default is SQLite; PostgreSQL joins with the durable run store.
"""
