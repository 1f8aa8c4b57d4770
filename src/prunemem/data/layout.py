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


SOURCE_ROLES = ("members", "heldout")  # a hub or local model's two sample sources


def hf_specs(model: dict) -> dict[str, dict]:
    """The ``kind: hf`` sample sources of a model, by role: what its fetch stage downloads."""
    return {role: model[role] for role in SOURCE_ROLES if model.get(role, {}).get("kind") == "hf"}


def file_format(spec: dict, name: str) -> str:
    """The format of one file of a ``kind: hf`` source: its ``format``, else from the file's name."""
    return local_format({"path": name, **({"format": spec["format"]} if "format" in spec else {})})
