"""RouteService: stored config revisions, their publication (WatchConfig), Choose/Explain, and
observations reported by data planes. Compilation and decisions are the routing core's
(`maestro.routing`)."""
