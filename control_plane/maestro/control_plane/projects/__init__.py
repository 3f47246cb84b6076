"""Projects (tenants) and their API keys."""
