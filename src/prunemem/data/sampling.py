"""Draw member, non-member, perplexity and calibration sets from sample sources (docs/architecture.md, "Semantics").

    prunemem samples --model pythia-1_4b     # a hub model: members / heldout sources from params

- A sample is the first ``max(k) + suffix`` tokens of a document (a preshuffled row is one
  document): the suffix is the last ``suffix`` tokens and the prompt for each k ends at it, so
  every k tests the same suffixes. Only documents at least that long qualify.
- Selection is seeded and streaming: of all qualifying documents, those with the smallest
  seeded hash of their text are drawn (bounded heaps; memory does not grow with the corpus).
  A document is tokenized only when its key could still enter a heap, and then only as far as
  needed, so a scan costs about one JSON parse and one hash per document.
- Held-out documents go to non-members, perplexity or calibration by their key (one bucket
  each), so the three never share a document; none may share a document or a window with the
  members. The manifest traces every sample to its source document with hashes, and the
  pairwise overlaps, recomputed from it, are recorded (all zero, or the build fails).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import polars as pl

from prunemem.errors import PrunememError

log = logging.getLogger(__name__)

BATCH = 256  # documents tokenized per call
# A space between a non-space and a letter: no pre-token of GPT-2/NeoX byte-level BPE spans it,
# so the tokens of text[:cut] are exactly the first tokens of text.
_SAFE_CUT = re.compile(r"(?<=\S) (?=[^\W\d_])")
_CHARS_PER_TOKEN = 6  # first guess of the prefix to tokenize; grown when it falls short


def token_prefixes(tokenizer, texts: list[str], n: int) -> list[np.ndarray]:
    """The first ``n`` tokens of each text (all, when shorter), tokenizing only a safe prefix of long texts."""
    backend = tokenizer.backend_tokenizer
    out: list[np.ndarray | None] = [None] * len(texts)
    todo = list(range(len(texts)))
    chars = _CHARS_PER_TOKEN * n
    while todo:
        cuts = []
        for i in todo:
            match = _SAFE_CUT.search(texts[i], chars) if len(texts[i]) > chars else None
            cuts.append(match.start() if match else len(texts[i]))
        encoded = backend.encode_batch([texts[i][:c] for i, c in zip(todo, cuts)], add_special_tokens=False)
        retry = []
        for i, cut, enc in zip(todo, cuts, encoded):
            if len(enc.ids) >= n or cut == len(texts[i]):
                out[i] = np.asarray(enc.ids[:n], dtype=np.int32)
            else:
                retry.append(i)
        todo, chars = retry, chars * 4
    return out


def sha256_tokens(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i4").tobytes()).hexdigest()


class _Item:
    __slots__ = ("doc_id", "doc_sha256", "key", "tokens", "window_sha256")

    def __init__(self, key, doc_id, doc_sha256, tokens):
        self.key, self.doc_id, self.doc_sha256, self.tokens = key, doc_id, doc_sha256, tokens
        self.window_sha256 = sha256_tokens(tokens)


class _Selector:
    """Keeps the smallest-key documents that qualify; ``threshold`` is the key a newcomer must beat."""

    def __init__(self, name: str, tokens: int, exclude_docs=frozenset(), exclude_windows=frozenset()):
        self.name, self.tokens = name, tokens
        self.exclude_docs, self.exclude_windows = set(exclude_docs), set(exclude_windows)
        self.heap: list[tuple[int, int, _Item]] = []  # (-key, tiebreak, item): a max-heap on key
        self.docs: set[str] = set()
        self.seen = self.qualified = self.excluded = 0
        self._tick = itertools.count()

    def threshold(self) -> float:
        return -self.heap[0][0] if self.full() else math.inf

    def offer(self, item: _Item) -> None:
        if not self.accepts(item):
            return
        if item.doc_sha256 in self.exclude_docs or item.window_sha256 in self.exclude_windows:
            self.excluded += 1
            return
        self.qualified += 1
        if item.doc_sha256 in self.docs or item.key >= self.threshold():
            return  # a duplicate text, or beaten since it was queued
        heapq.heappush(self.heap, (-item.key, next(self._tick), item))
        self.docs.add(item.doc_sha256)
        self.pushed(item)
        while self.overfull():
            dropped = heapq.heappop(self.heap)[2]
            self.docs.discard(dropped.doc_sha256)
            self.popped(dropped)

    def pushed(self, item: _Item) -> None:
        pass

    def popped(self, item: _Item) -> None:
        pass

    def items(self) -> list[_Item]:
        """The drawn documents in key order."""
        return [entry[2] for entry in sorted(self.heap, key=lambda e: (-e[0], e[1]))]


class WindowSelector(_Selector):
    """``n`` windows of exactly ``tokens`` tokens."""

    def __init__(self, name, n, tokens, exclude_docs=frozenset(), exclude_windows=frozenset()):
        super().__init__(name, tokens, exclude_docs, exclude_windows)
        self.n = n

    def accepts(self, item):
        return len(item.tokens) >= self.tokens

    def full(self):
        return len(self.heap) >= self.n

    def overfull(self):
        return len(self.heap) > self.n

    def rows_wanted(self):
        return self.n

    @property
    def min_size(self):
        return self.tokens

    def check(self, where: str) -> None:
        if len(self.heap) < self.n:
            also = f" ({self.excluded} more excluded as members)" if self.excluded else ""
            raise PrunememError(f"{where}: too few long-enough documents for {self.name}: {self.qualified} of "
                                f"{self.seen} read have >= {self.tokens} tokens{also}; {self.n} needed")


class BudgetSelector(_Selector):
    """Whole documents (each plus EOS) until ``tokens`` tokens; the last one is cut at the budget."""

    def __init__(self, name, tokens, exclude_docs=frozenset(), exclude_windows=frozenset()):
        super().__init__(name, tokens, exclude_docs, exclude_windows)
        self.total = 0

    def accepts(self, item):
        return len(item.tokens) > 0

    def pushed(self, item):
        self.total += len(item.tokens) + 1

    def popped(self, item):
        self.total -= len(item.tokens) + 1

    def full(self):
        return self.total >= self.tokens

    def overfull(self):
        """Whether the budget is met without the largest-key document."""
        return self.total - len(self.heap[0][2].tokens) - 1 >= self.tokens

    def rows_wanted(self):
        return self.tokens  # an upper bound: every document has at least one token

    min_size = 1

    def check(self, where: str) -> None:
        if self.total < self.tokens:
            raise PrunememError(f"{where}: too little text for {self.name}: the {self.seen} documents read hold "
                                f"{self.total} tokens; {self.tokens} needed")


def scan(source, seed: int, selectors: list[_Selector], tokenizer, where: str) -> None:
    """Feed every record of ``source`` to the selector of its bucket (key mod number of selectors).

    Records are queued while their key beats the selector's threshold and tokenized in batches;
    a source with rising keys (preshuffled rows, tokenized) stops as soon as every selector is full.
    """
    pending: list[list] = [[] for _ in selectors]
    batch = 1 if source.tokenized else BATCH
    want = len(selectors) * max(sel.rows_wanted() for sel in selectors)

    def flush(b: int) -> None:
        recs, pending[b] = pending[b], []
        sel = selectors[b]
        if not recs:
            return
        if source.tokenized:
            tokens = [rec.tokens[: sel.tokens] for rec in recs]
            docs = [sha256_tokens(rec.tokens) for rec in recs]
        else:
            tokens = token_prefixes(tokenizer, [rec.text for rec in recs], sel.tokens)
            docs = [hashlib.sha256(rec.text.encode("utf-8", "surrogatepass")).hexdigest() for rec in recs]
        for rec, toks, doc in zip(recs, tokens, docs):
            sel.offer(_Item(rec.key, rec.doc_id, doc, np.asarray(toks, dtype=np.int32)))

    for rec in source.records(seed, want):
        b = rec.key % len(selectors)
        sel = selectors[b]
        sel.seen += 1
        # A token covers at least one byte: a text of fewer bytes than a window is never tokenized.
        if rec.size >= sel.min_size and rec.key < sel.threshold():
            pending[b].append(rec)
            if len(pending[b]) >= batch:
                flush(b)
        if source.ordered and all(s.full() for s in selectors):
            break
    for b in range(len(selectors)):
        flush(b)
    for sel in selectors:
        sel.check(where)


def hub_sets(checkpoint_dir: Path, params: dict, model_name: str, fetched: dict | None = None,
             fetch_command: str = "prunemem fetch") -> tuple[dict[str, pl.DataFrame], dict]:
    """The four sample sets of a hub model, its manifest, and what provenance records about the sources.

    ``fetched``: the fetch record's ``sources`` (by role), for ``kind: hf`` sources.
    """
    from prunemem.checkpoints import load_tokenizer
    from prunemem.data.windows import (
        SAMPLE_SCHEMA,
        _calibration_windows,
        _perplexity_docs,
        calibration_pool_size,
    )
    from prunemem.data.sources import open_source

    model, samples = params["models"][model_name], params["samples"]
    window = max(samples["k"]) + samples["suffix_tokens"]
    from prunemem.arch import context_length

    context = context_length(json.loads((checkpoint_dir / "config.json").read_text()))
    for key, need in (("samples.k", window), ("perplexity.window", params["perplexity"]["window"]),
                      ("samples.calibration.tokens", samples["calibration"]["tokens"])):
        if context is not None and need > context:
            raise PrunememError(f"{key}: needs {need} tokens of context but {model_name} has {context}")
    tokenizer = load_tokenizer(checkpoint_dir)
    eos = tokenizer.eos_token_id
    seed = samples["seed"]

    where_m, where_h = f"models.{model_name}.members", f"models.{model_name}.heldout"
    fetched = fetched or {}
    members_src = open_source(model["members"], where_m, params, model, "members", fetched.get("members"),
                              fetch_command)
    heldout_src = open_source(model["heldout"], where_h, params, model, "heldout", fetched.get("heldout"),
                              fetch_command)
    n_search = samples.get("search_members", 0)
    members = WindowSelector("members", samples["training_members"] + n_search, window)
    scan(members_src, seed, [members], tokenizer, where_m)
    # keys are random: the first documents are the evaluation members (the same ones as without a
    # search split), the rest EvoP's search split, from other documents
    drawn = members.items()
    m_items, s_items = drawn[: samples["training_members"]], drawn[samples["training_members"]:]
    member_docs, member_windows = {i.doc_sha256 for i in drawn}, {i.window_sha256 for i in drawn}
    cal = samples["calibration"]
    held = [WindowSelector("non-members", samples.get("nonmembers", samples["training_members"]), window,
                           member_docs, member_windows),
            BudgetSelector("perplexity", samples["perplexity_tokens"], member_docs, member_windows),
            BudgetSelector("calibration", calibration_pool_size(cal) * cal["tokens"], member_docs, member_windows)]
    scan(heldout_src, seed, held, tokenizer, where_h)
    n_items, p_items, c_items = (sel.items() for sel in held)

    def window_rows(items, prefix, kind, member):
        return [{"sample_id": f"{prefix}-{i:05d}", "kind": kind, "copies": None, "member": member,
                 "source": it.doc_id, "position": 0, "tokens": it.tokens.tolist()} for i, it in enumerate(items)]

    ppl, _ = _perplexity_docs([(it.doc_id, it.tokens.tolist()) for it in p_items], eos, samples["perplexity_tokens"])
    calibration = _calibration_windows([(it.doc_id, it.tokens.tolist()) for it in c_items], eos, cal)
    sets = {
        "members.parquet": pl.DataFrame(window_rows(m_items, "member", "train", True), schema=SAMPLE_SCHEMA),
        "search.parquet": pl.DataFrame(window_rows(s_items, "search", "train", True), schema=SAMPLE_SCHEMA),
        "nonmembers.parquet": pl.DataFrame(window_rows(n_items, "nonmember", "heldout", False), schema=SAMPLE_SCHEMA),
        "perplexity.parquet": pl.DataFrame(ppl, schema={"doc_id": pl.String, "tokens": pl.List(pl.Int32)}),
        "calibration.parquet": pl.DataFrame(calibration, schema={"doc_ids": pl.String, "tokens": pl.List(pl.Int32)}),
    }
    manifest = pl.DataFrame(
        [{"set": name, "source": src.label(), "doc_id": it.doc_id, "position": 0, "doc_sha256": it.doc_sha256,
          "window_sha256": it.window_sha256, "tokens": len(it.tokens)}
         for name, src, items in (("members", members_src, m_items), ("search", members_src, s_items),
                                  ("nonmembers", heldout_src, n_items),
                                  ("perplexity", heldout_src, p_items), ("calibration", heldout_src, c_items))
         for it in items],
        schema={"set": pl.String, "source": pl.String, "doc_id": pl.String, "position": pl.Int64,
                "doc_sha256": pl.String, "window_sha256": pl.String, "tokens": pl.Int64})
    overlaps = disjointness(manifest)
    if any(overlaps.values()):
        raise PrunememError(f"samples for {model_name}: sets overlap ({overlaps}); this is a bug in the selection")
    info = {"members": members_src.identity(), "heldout": heldout_src.identity(), "overlaps": overlaps,
            "read": {sel.name: sel.seen for sel in [members, *held]},
            "excluded_as_members": {sel.name: sel.excluded for sel in held}}
    return {**sets, "manifest.parquet": manifest}, info


def disjointness(manifest: pl.DataFrame) -> dict[str, int]:
    """Documents (and, for members against non-members, windows) that two sets share: all zero when disjoint."""
    docs = {name: set(g["doc_sha256"]) for (name,), g in manifest.group_by("set")}
    wins = {name: set(g["window_sha256"]) for (name,), g in manifest.group_by("set")}
    names = ["members", "search", "nonmembers", "perplexity", "calibration"]
    out = {f"{a}&{b}": len(docs.get(a, set()) & docs.get(b, set())) for a, b in itertools.combinations(names, 2)}
    for a, b in (("members", "nonmembers"), ("members", "search"), ("search", "nonmembers")):
        out[f"{a}&{b} windows"] = len(wins.get(a, set()) & wins.get(b, set()))
    return out
