"""Maestro data plane: token streaming between callers, providers and the serving lane.

The contract is `maestro.v1.InferenceService`; the implementation is not built yet.
"""
