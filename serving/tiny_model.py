"""A tiny Llama for tests and CPU benchmarks, built locally: no weights can be downloaded here.

Two layers, hidden size 256, head_dim 64 (vLLM's CPU attention kernel rejects head_dim 16), random
weights with a fixed seed, and a byte-level BPE tokenizer trained on a generated corpus, with a
chat template. Output is gibberish at a real model's speed per token for its size, which is what
the lane's tests and benchmarks need; greedy streams never stop before `max_tokens`, so tests can
hold a stream open for as long as they need. Builds in a few seconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}\n{{ message['content'] }}</s>"
    "{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
_TEXT = (
    "the lane serves tokens from a tiny model while the router weighs quality latency cost "
    "reliability and sovereignty for every step of an agent graph under policy and budget"
)
_WORDS = _TEXT.split()


def _corpus(lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 24))) for _ in range(lines)]


def build_tiny_model(out: Path, *, seed: int = 0, vocab_size: int = 512, layers: int = 2) -> Path:
    """Writes a Hugging Face model directory at `out` (idempotent: an existing build is kept)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        _corpus(2000, seed),
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        # EOS's logit is then always 0 while the others spread around it: greedy decoding
        # (temperature 0) never picks it among hundreds, so a greedy stream runs to max_tokens.
        model.lm_head.weight[fast.eos_token_id].zero_()
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id})
    )
    return out
