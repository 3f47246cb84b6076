"""The packaged sentence-embedding model behind the `semantic_sim` metric: the real
all-MiniLM-L6-v2 weights, loaded from an installed package, never from the network."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from maestro.control_plane.evals import embeddings
from maestro.control_plane.evals.embeddings import (
    EmbeddingModelUnavailableError,
    SentenceEmbedder,
)


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    loaded = SentenceEmbedder()
    loaded.load()
    return loaded


def test_model_id_names_the_model_and_its_package_version(embedder: SentenceEmbedder) -> None:
    model, _, package = embedder.model_id.partition("@")
    assert model == "sentence-transformers/all-MiniLM-L6-v2"
    distribution, _, version = package.partition("==")
    assert version == importlib.metadata.version(distribution)


def test_reproduces_the_reference_scores_of_the_model(embedder: SentenceEmbedder) -> None:
    # The sentence-transformers README's example for all-MiniLM-L6-v2, computed there with torch.
    vectors = embedder.encode(
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    )
    scores = vectors @ vectors.T
    assert scores[0, 1] == pytest.approx(0.6660, abs=1e-3)
    assert scores[0, 2] == pytest.approx(0.1046, abs=1e-3)
    assert scores[1, 2] == pytest.approx(0.1411, abs=1e-3)


def test_vectors_are_float32_and_unit_length(embedder: SentenceEmbedder) -> None:
    vectors = embedder.encode(["Paris", "", "a much longer sentence " * 200])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, embedder.dimension) == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_identical_texts_score_one(embedder: SentenceEmbedder) -> None:
    assert embedder.similarity(
        [("Paris", "Paris"), ("The answer is 42.", "The answer is 42.")]
    ) == [
        1.0,
        1.0,
    ]
    (vector,) = embedder.encode(["The answer is 42."])
    assert float(vector @ vector) == pytest.approx(1.0, abs=1e-6)


def test_paraphrases_score_above_unrelated_texts(embedder: SentenceEmbedder) -> None:
    city, number, paraphrase, unrelated = embedder.similarity(
        [
            ("Paris", "paris, france"),
            ("Paris", "42"),
            ("The capital of France is Paris.", "Paris is France's capital."),
            ("The capital of France is Paris.", "I like turtles."),
        ]
    )
    assert city > 0.8
    assert number < 0.3
    assert paraphrase > 0.9
    assert unrelated < 0.2
    assert all(0.0 <= score <= 1.0 for score in (city, number, paraphrase, unrelated))


def test_repeated_texts_are_encoded_once() -> None:
    fresh = SentenceEmbedder()
    encoded: list[str] = []
    encode = fresh.encode

    def counting_encode(texts: Sequence[str]) -> np.ndarray:
        encoded.extend(texts)
        return encode(texts)

    fresh.encode = counting_encode  # type: ignore[method-assign]
    answers = [("Paris", "Paris, France"), ("Paris", "paris"), ("Paris", "Paris, France")] * 20
    first = fresh.similarity(answers)
    assert sorted(encoded) == ["Paris", "Paris, France", "paris"]
    assert fresh.cache_info().misses == 3

    encoded.clear()
    assert fresh.similarity(answers) == first
    assert encoded == []
    assert fresh.cache_info().hits == 3
    assert first[0] == first[2]


def test_the_cache_evicts_the_least_recently_used_text() -> None:
    small = SentenceEmbedder(cache_size=2)
    small.similarity([("one", "two")])
    small.similarity([("one", "three")])  # "two" is now the least recently used
    assert small.cache_info().size == 2
    before = small.cache_info().misses
    small.similarity([("one", "three")])
    assert small.cache_info().misses == before
    small.similarity([("two", "three")])
    assert small.cache_info().misses == before + 1


def test_batch_encoding_equals_one_at_a_time(embedder: SentenceEmbedder) -> None:
    texts = [
        "Paris",
        "The capital of France is Paris, a city on the Seine.",
        "42",
        "short",
        "A sentence of middling length about models.",
    ]
    together = embedder.encode(texts)
    alone = np.stack([embedder.encode([text])[0] for text in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    in_pairs = SentenceEmbedder(batch_size=2).encode(texts)
    np.testing.assert_allclose(in_pairs, alone, atol=1e-5)


def test_concurrent_callers_share_one_load_and_agree() -> None:
    shared = SentenceEmbedder()
    pairs = [("Paris", "paris, france"), ("Paris", "42")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: shared.similarity(pairs), range(8)))
    assert all(result == pytest.approx(results[0], abs=1e-6) for result in results)


def test_a_missing_model_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EmbeddingModelUnavailableError, match=r"model\.safetensors"):
        SentenceEmbedder(model_dir=tmp_path).load()
    monkeypatch.setattr(
        embeddings, "_BUNDLES", (embeddings._Bundle("no-such-dist", "no_such_package", "x"),)
    )
    with pytest.raises(EmbeddingModelUnavailableError, match="no-such-dist"):
        _ = SentenceEmbedder().model_id


def test_loading_and_scoring_never_touch_the_network() -> None:
    # A fresh interpreter whose sockets refuse to resolve or connect, with the proxies pointed at
    # a closed port and the Hugging Face clients told they are offline.
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise OSError("network access attempted")

        socket.getaddrinfo = refuse
        socket.create_connection = refuse
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse

        from maestro.control_plane.evals.embeddings import SentenceEmbedder

        embedder = SentenceEmbedder()
        print(embedder.model_id)
        print(embedder.similarity([("Paris", "paris, france"), ("Paris", "42")]))
        """
    )
    env = {
        **os.environ,
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    model_id, scores = done.stdout.splitlines()
    assert model_id.startswith("sentence-transformers/all-MiniLM-L6-v2@")
    high, low = (float(score) for score in scores.strip("[]").split(","))
    assert high > 0.8 > 0.3 > low
