"""gRPC plumbing shared by every servicer: interceptors, validation helpers, pagination."""
