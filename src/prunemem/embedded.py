"""The embedded default: a tiny Pythia-architecture model trained on a bundled corpus with planted canaries.

    prunemem checkpoint --model tiny         # trains it into data/checkpoints/tiny/

The corpus is CPython 3.11 standard-library source (PSF License), frozen into
``resources/stdlib311.jsonl.xz`` and verified against ``CORPUS_SHA256`` on every load.

Canaries follow the duplication study of Carlini et al., "Quantifying Memorization Across
Neural Language Models" (arXiv 2202.07646): windows of held-apart text are planted in the
training stream 0, 1, 2, ... 32 times each, so that extraction can be read off against the
number of copies. A canary planted 0 times is never trained on and measures how much of the
text is guessable without memorization.
"""

from __future__ import annotations

import json
import logging
import lzma
import math
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from prunemem.data.canaries import canary_counts, planted_tokens  # noqa: F401 (re-exported)
from prunemem.errors import PrunememError
from prunemem.provenance import sha256_file

log = logging.getLogger(__name__)

CORPUS_FILE = "resources/stdlib311.jsonl.xz"
CORPUS_SHA256 = "cf587597409a0e57bd27de0c26022d297d0f75a120a111bf1d17d9aa8f9f652c"
EOS = "<|endoftext|>"
TRAINING_ROWS = "training_rows.safetensors"
CANARIES = "canaries.parquet"


def corpus_path() -> Path:
    return Path(str(resources.files("prunemem").joinpath(CORPUS_FILE)))


def load_corpus(path: Path | None = None, expected_sha256: str | None = CORPUS_SHA256) -> list[dict]:
    """The bundled documents, ``[{"id", "text"}]``, after checking the file's pinned hash."""
    path = path or corpus_path()
    if not path.is_file():
        raise PrunememError(f"{path}: embedded corpus not found")
    if expected_sha256 and (actual := sha256_file(path)) != expected_sha256:
        raise PrunememError(f"{path}: corpus sha256 {actual[:12]}... does not match the pinned {expected_sha256[:12]}...")
    with lzma.open(path, "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    if not docs:
        raise PrunememError(f"{path}: embedded corpus is empty")
    return docs


def split_corpus(docs: list[dict], split: dict, seed: int) -> dict[str, list[dict]]:
    """Seeded, disjoint split into ``train``, ``heldout`` and ``canary_pool`` documents."""
    order = sorted(docs, key=lambda d: d["id"])
    random.Random(seed).shuffle(order)
    if "max_documents" in split:
        order = order[: split["max_documents"]]
    n_heldout = max(1, round(split["heldout"] * len(order)))
    n_canary = max(1, round(split["canary_pool"] * len(order)))
    return {
        "heldout": order[:n_heldout],
        "canary_pool": order[n_heldout : n_heldout + n_canary],
        "train": order[n_heldout + n_canary :],
    }


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE trained on the training split, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                   pad_token=EOS, model_max_length=1 << 30)


def tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class Canary:
    canary_id: int
    doc_id: str
    offset: int  # token offset of the window in its document
    copies: int
    tokens: list[int]


def spaced_windows(docs: list[tuple[str, list[int]]], length: int, rng: random.Random
                   ) -> list[tuple[str, int, list[int]]]:
    """(doc id, offset, tokens) of windows of ``length`` cut from each document at a random phase,
    every other window kept, so that two windows of one document are at least a window apart."""
    windows = []
    for doc_id, ids in docs:
        if len(ids) >= length:
            phase = rng.randrange(min(length, len(ids) - length + 1))
            windows.extend((doc_id, offset, ids[offset : offset + length])
                           for offset in range(phase, len(ids) - length + 1, 2 * length))
    return windows


def choose_canaries(pool: list[dict], pool_ids: list[list[int]], cfg: dict, seed: int) -> list[Canary]:
    """Seeded windows of ``cfg['tokens']`` tokens from the canary pool, several per document
    (``spaced_windows``), shuffled and dealt to the copy counts."""
    length, counts = cfg["tokens"], canary_counts(cfg)
    rng = random.Random(seed + 1)
    windows = spaced_windows([(doc["id"], ids) for doc, ids in zip(pool, pool_ids)], length, rng)
    rng.shuffle(windows)
    needed = sum(counts.values())
    if len(windows) < needed:
        raise PrunememError(f"embedded.canaries.per_copy_count: asks for {needed} canaries of {length} tokens but the "
                            f"canary pool can supply {len(windows)}; lower per_copy_count or tokens, or raise "
                            "embedded.split.canary_pool")
    copies = [c for c, n in counts.items() for _ in range(n)]
    return [Canary(i, d, o, c, t) for i, ((d, o, t), c) in enumerate(zip(windows[:needed], copies))]


@dataclass
class TrainingStream:
    """The exact rows the model is trained on, in order: batch i is rows[i*B:(i+1)*B]."""

    rows: torch.Tensor  # int32 [n_rows, seq_len]
    row_canary: torch.Tensor  # int32 [n_rows], canary_id planted in the row or -1
    row_canary_offset: torch.Tensor  # int32 [n_rows], where in the row it starts, or -1
    epochs: float = 1.0  # passes over the training text (ordinary tokens / training-split tokens)


def build_training_stream(train_ids: list[list[int]], canaries: list[Canary], eos_id: int,
                          n_rows: int, seq_len: int, seed: int) -> TrainingStream:
    """Pack training documents (EOS-separated) into rows, planting each canary copy whole inside one row.

    Canary copies go to distinct, seeded-random rows at a random offset, so the model always
    sees a canary with its full prefix, as a prompt of any k will present it. When the rows
    need more text than the training split holds, the split is passed over again (an epoch),
    each pass in its own seeded document order, as a multi-epoch LM run would.
    """
    import torch

    rng = random.Random(seed + 2)
    copies = [c for c in canaries for _ in range(c.copies)]
    rng.shuffle(copies)
    if len(copies) > n_rows:
        raise PrunememError(f"embedded.canaries: {len(copies)} planted copies need as many training rows; allowed: "
                            f"<= steps x batch_size = {n_rows}")
    planted_rows = rng.sample(range(n_rows), len(copies))
    plan = dict(zip(planted_rows, copies))
    needed = n_rows * seq_len - sum(len(c.tokens) for c in copies)
    if not any(train_ids):
        raise PrunememError("embedded.split: the training split has no text")
    # More rows than the training text fills: further passes (epochs), each in a fresh seeded document order.
    filler: list[int] = []
    epoch_order = list(range(len(train_ids)))
    epochs = 0
    while len(filler) < needed:
        if epochs:
            random.Random(seed * 1_000_003 + epochs).shuffle(epoch_order)
        for i in epoch_order:
            filler.extend(train_ids[i])
            filler.append(eos_id)
        epochs += 1
    rows = torch.empty((n_rows, seq_len), dtype=torch.int32)
    row_canary = torch.full((n_rows,), -1, dtype=torch.int32)
    row_offset = torch.full((n_rows,), -1, dtype=torch.int32)
    pos = 0
    for r in range(n_rows):
        canary = plan.get(r)
        if canary is None:
            rows[r] = torch.tensor(filler[pos : pos + seq_len], dtype=torch.int32)
            pos += seq_len
            continue
        offset = rng.randrange(seq_len - len(canary.tokens) + 1)
        tail = seq_len - offset - len(canary.tokens)
        row = filler[pos : pos + offset] + canary.tokens + filler[pos + offset : pos + offset + tail]
        pos += offset + tail
        rows[r] = torch.tensor(row, dtype=torch.int32)
        row_canary[r], row_offset[r] = canary.canary_id, offset
    one_pass = sum(len(ids) + 1 for ids in train_ids)
    return TrainingStream(rows, row_canary, row_offset, epochs=pos / one_pass)


def heldout_windows_tensor(ids: list[list[int]], eos_id: int, seq_len: int, n: int):
    """The first ``n`` whole ``seq_len`` windows of the EOS-joined held-out documents (for the training log)."""
    import torch

    flat = [t for doc in ids for t in (*doc, eos_id)][: n * seq_len]
    return torch.tensor(flat[: len(flat) // seq_len * seq_len], dtype=torch.int32).view(-1, seq_len)


def model_config(arch: dict, vocab_size: int, eos_id: int):
    """A Pythia-style GPT-NeoX config (parallel residual, 25% rotary, untied embeddings)."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=arch["hidden_size"], num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"], intermediate_size=4 * arch["hidden_size"],
        max_position_embeddings=arch["seq_len"], rotary_pct=0.25, use_parallel_residual=True,
        tie_word_embeddings=False, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
        hidden_dropout=0.0, attention_dropout=0.0,
    )


def train(config, stream: TrainingStream, cfg: dict, seed: int, progress=None, heldout=None):
    """Deterministic AdamW training with a cosine schedule; returns the model in eval mode.

    ``heldout`` (int [n, seq_len] windows of held-out text) is scored every tenth of the run and
    logged, so the training log shows the learning curve; scoring touches no random state, so the
    weights do not depend on it.
    """
    import torch
    from transformers import GPTNeoXForCausalLM, get_cosine_schedule_with_warmup

    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                               {"params": no_decay, "weight_decay": 0.0}], lr=cfg["lr"], betas=(0.9, 0.95))
    sched = get_cosine_schedule_with_warmup(optim, cfg["warmup_steps"], cfg["steps"])
    batch = cfg["batch_size"]
    steps = range(cfg["steps"]) if progress is None else progress(range(cfg["steps"]))
    for step in steps:
        ids = stream.rows[step * batch : (step + 1) * batch].long()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == cfg["steps"] - 1:
            log.info("step %d/%d loss %.4f lr %.2e", step + 1, cfg["steps"], loss.item(), sched.get_last_lr()[0])
        if heldout is not None and len(heldout) and ((step + 1) % max(1, cfg["steps"] // 10) == 0):
            model.eval()
            with torch.no_grad():
                ppl = math.exp(model(input_ids=heldout.long(), labels=heldout.long()).loss.item())
            log.info("step %d/%d held-out perplexity %.2f (%d windows)", step + 1, cfg["steps"], ppl, len(heldout))
            model.train()
    model.eval()
    return model
