"""The self-hosted serving lane: a Ray Serve application around vLLM's async engine.

It runs in its own venv (`make serving-setup`, `.venv-serving`), apart from the control and data
planes: the data plane calls it over the OpenAI chat protocol like any OpenAI-compatible host, and
reads its saturation from the lane-status application (`serving.status`).
"""
