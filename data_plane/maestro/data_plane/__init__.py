"""Maestro data plane: InferenceService and the OpenAI-compatible ingress, the relay that streams
tokens from providers and the serving lane with fallbacks, breakers and cancellation, and the
followers of a remote control plane.

It depends on the routing core, the common core and the generated API only; it never imports the
control plane (an import-linter contract in `make test` holds it to that).
"""
