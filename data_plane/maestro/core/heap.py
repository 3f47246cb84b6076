"""Keep start-up's long-lived objects out of the garbage collector's way.

Importing LiteLLM for its catalog leaves several hundred thousand long-lived objects; every
full collection walks them all again, which made one streamed batch parse about five times
slower (1.0 ms bare, 4.9 ms with them, back to 1.0 ms frozen) and cost the relay about a third
of its throughput (bench/results/data_plane_bench.md). Freezing moves what exists after start-up
into a permanent generation that collections skip.
"""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Collect once, then freeze every object alive now. Call when start-up is done."""
    gc.collect()
    gc.freeze()
