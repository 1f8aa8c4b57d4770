"""How sample-source files are laid out: torch-free facts the params checks (``prunemem.plan``) and the
readers (``prunemem.data.sources``) share, kept below both so a reader never imports the plan.

    python -c "from prunemem.data.layout import local_format; print(local_format({'path': 'a.jsonl.zst'}))"
"""

from __future__ import annotations

from prunemem.errors import PrunememError

PRESHUFFLED_ROW = 2049  # tokens per row of Pythia's preshuffled memmap (2048 context + 1 label)


def local_format(spec: dict) -> str:
    """A local file's format: explicit, else from its extension."""
    if "format" in spec:
        return spec["format"]
    for fmt in ("jsonl.zst", "jsonl", "parquet", "txt"):
        if spec["path"].endswith("." + fmt):
            return fmt
    raise PrunememError(f"{spec['path']}: unknown file type; allowed: .jsonl, .jsonl.zst, .parquet, .txt, "
                        "or set format")


def preshuffled_step(model: dict) -> int | None:
    """The training step of a hub revision named stepN: rows before step * 1024 were trained on."""
    revision = model.get("revision", "")
    return int(revision[4:]) if revision.startswith("step") and revision[4:].isdigit() else None
