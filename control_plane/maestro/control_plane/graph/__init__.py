"""Agent graphs: recipes (YAML), and (to come) their durable runtime behind GraphService."""
