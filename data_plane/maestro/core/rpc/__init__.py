"""gRPC plumbing shared by every server: interceptors, health, reflection, server construction."""
