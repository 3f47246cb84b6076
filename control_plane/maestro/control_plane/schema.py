"""Every slice's migrations, in the order a fresh database needs them (route revisions refer to
projects). A new slice appends its own list here."""

from __future__ import annotations

from maestro.control_plane.evals.schema import MIGRATIONS as EVALS
from maestro.control_plane.graph.schema import MIGRATIONS as GRAPH
from maestro.control_plane.projects.schema import MIGRATIONS as PROJECTS
from maestro.control_plane.rollouts.schema import MIGRATIONS as ROLLOUTS
from maestro.control_plane.route.schema import MIGRATIONS as ROUTE
from maestro.control_plane.store.migrations import Migration

MIGRATIONS: tuple[Migration, ...] = (*PROJECTS, *ROUTE, *GRAPH, *EVALS, *ROLLOUTS)
