"""The embedded default's own lm-eval tasks, over lines of the held-out split of the bundled corpus.

Two tasks, defined as lm-eval YAML in ``resources/tasks/`` and read by lm-eval's ``json`` loader:

- ``prunemem_nextline`` (multiple choice, ``acc``/``acc_norm``): given the code just before a
  held-out line, which of ``choices`` lines is the real next one? The distractors are lines of
  other held-out documents, so a model that reads code well beats chance (1/choices) by far;
- ``prunemem_completeline`` (generative, ``exact_match``, greedy until the newline): given the
  code before a held-out line and that line up to its last space, the line's last word, exactly
  (a whole line is out of the tiny model's reach: 1% exact, against ~20% for its last word).

The held-out documents are ``prunemem.embedded.split_corpus``'s, so the embedded model never
trained on them. Everything is a function of params (``embedded.seed``/``split`` and
``downstream.local``) and of the pinned corpus: the same params give byte-identical files.
Contexts are cut to whole lines within ``context_chars`` characters, so that prompt and answer
fit the embedded model's 160-token context (2.2 characters per token).
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

from prunemem import embedded
from prunemem.errors import PrunememError
from prunemem.provenance import atomic_path, sha256_file

TASKS_DIR = "resources/tasks"  # the YAMLs, in the package (a bundled folder: codedeps counts its files)
NEXTLINE, COMPLETELINE = "prunemem_nextline", "prunemem_completeline"
TASKS = (NEXTLINE, COMPLETELINE)
# The defaults of downstream.local (params.schema.yaml documents each).
LOCAL_DEFAULTS = {"documents": 500, "choices": 4, "context_chars": 200, "min_line_chars": 16, "max_line_chars": 80,
                  "min_word_chars": 3, "max_word_chars": 6}


def task_yaml(name: str) -> str:
    """The shipped YAML of one of our tasks."""
    return resources.files("prunemem").joinpath(TASKS_DIR, f"{name}.yaml").read_text(encoding="utf-8")


def _context(lines: list[str], i: int, budget: int) -> str:
    """The whole lines before ``lines[i]`` that fit in ``budget`` characters, newline-terminated."""
    kept, used = [], 0
    for line in reversed(lines[:i]):
        if used + len(line) + 1 > budget:
            break
        kept.append(line)
        used += len(line) + 1
    return "".join(f"{line}\n" for line in reversed(kept))


def candidates(docs: list[dict], cfg: dict) -> list[tuple[str, int, str, str]]:
    """(doc id, line number, context, line) of every held-out line a task may ask about.

    A line qualifies when it has ``min_line_chars``..``max_line_chars`` characters of code, more
    than one word (the completion task's prompt and answer) and a context of at least one whole line.
    """
    out = []
    for doc in docs:
        lines = doc["text"].split("\n")
        for i in range(1, len(lines)):
            line = lines[i]
            if not cfg["min_line_chars"] <= len(line.strip()) <= len(line) <= cfg["max_line_chars"]:
                continue
            if " " not in line.strip():
                continue
            context = _context(lines, i, cfg["context_chars"])
            if context.strip():
                out.append((doc["id"], i, context, line))
    return out


def split_last_word(line: str) -> tuple[str, str]:
    """``"    return x + total"`` -> ``("    return x +", " total")``: the prompt ends on a word and
    the answer starts with its space, as byte-level BPE tokenizes running text (a prompt ending
    in whitespace would end on a token the model rarely saw)."""
    cut = line.rindex(" ")
    return line[:cut], line[cut:]


def build(params: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``<task>.jsonl`` for both tasks into ``out_dir``; returns {task: file}.

        >>> build(plan.params, "data/downstream/tiny/dense/0/tasks")
    """
    if "embedded" not in params:
        raise PrunememError(f"downstream.tasks: {NEXTLINE} and {COMPLETELINE} are built from the embedded corpus's "
                            "held-out split, which needs the embedded: section in params")
    ds = params["downstream"]
    cfg = {**LOCAL_DEFAULTS, **ds.get("local", {})}
    split = embedded.split_corpus(embedded.load_corpus(), params["embedded"]["split"], params["embedded"]["seed"])
    pool = candidates(split["heldout"], cfg)
    n = cfg["documents"]
    if len(pool) < 2 * n:
        raise PrunememError(f"downstream.local.documents: {n} per task needs at least {2 * n} held-out lines; the "
                            f"held-out split has {len(pool)} that qualify")
    rng = random.Random(ds["seed"])
    order = rng.sample(range(len(pool)), len(pool))
    mc_rows, gen_rows = [], []
    for j, idx in enumerate(order[:n]):
        doc_id, line_no, context, line = pool[idx]
        distractors, seen = [], {line}
        while len(distractors) < cfg["choices"] - 1:  # seeded draws of lines of other documents
            other = pool[rng.randrange(len(pool))]
            if other[0] != doc_id and other[3] not in seen:
                distractors.append(other[3])
                seen.add(other[3])
        label = rng.randrange(cfg["choices"])
        choices = distractors[:label] + [line] + distractors[label:]
        mc_rows.append({"id": j, "source": doc_id, "line": line_no, "context": context, "choices": choices,
                        "label": label})
    for idx in order[n:]:
        doc_id, line_no, context, line = pool[idx]
        head, word = split_last_word(line)
        if cfg["min_word_chars"] <= len(word.strip()) <= cfg["max_word_chars"] and head.strip():
            gen_rows.append({"id": len(gen_rows), "source": doc_id, "line": line_no, "context": context + head,
                             "target": word})
            if len(gen_rows) == n:
                break
    if len(gen_rows) < n:
        raise PrunememError(f"downstream.local.documents: {n} per task; the held-out split has only "
                            f"{len(gen_rows)} lines left for {COMPLETELINE} whose last word has "
                            f"{cfg['min_word_chars']}-{cfg['max_word_chars']} characters")
    files = {}
    for name, rows in ((NEXTLINE, mc_rows), (COMPLETELINE, gen_rows)):
        files[name] = Path(out_dir) / f"{name}.jsonl"
        with atomic_path(files[name]) as tmp:
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    return files


def include_dir(params: dict, out_dir: str | Path, cache_dir: str | Path | None = None) -> tuple[Path, dict[str, str]]:
    """A task directory for lm-eval's ``TaskManager(include_path=...)``: our YAMLs beside their data.

    The shipped YAMLs name their data file relative to themselves; here it is made absolute
    (``datasets`` resolves ``data_files`` against the working directory), and ``cache_dir``
    (default: ``out_dir/.datasets``) keeps the Arrow copy ``datasets`` makes of it out of the
    user's cache. Returns the directory and the sha256 of each task's data file.
    """
    import yaml

    out_dir = Path(out_dir)
    files = build(params, out_dir)
    hashes = {}
    for name, data in files.items():
        config = yaml.safe_load(task_yaml(name))
        config["dataset_kwargs"]["data_files"] = {split: str(data.resolve())
                                                  for split in config["dataset_kwargs"]["data_files"]}
        config["dataset_kwargs"]["cache_dir"] = str(Path(cache_dir or out_dir / ".datasets").resolve())
        with atomic_path(out_dir / f"{name}.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        hashes[name] = sha256_file(data)
    return out_dir, hashes
