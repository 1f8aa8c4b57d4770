"""Freeze the embedded corpus: CPython 3.11 standard-library sources cut into documents.

The corpus is shipped (``src/prunemem/resources/stdlib311.jsonl.xz``) rather than rebuilt at
run time because the standard library differs between Python patch releases; the shipped
file's sha256 is pinned in ``prunemem.embedded`` and verified on every load.

Rebuild (only to change the corpus; then update ``CORPUS_SHA256``)::

    python3.11 tools/build_embedded_corpus.py src/prunemem/resources/stdlib311.jsonl.xz

Licence: the Python Software Foundation License (copied beside the corpus as
``stdlib311.LICENSE.txt``), which permits redistribution with the licence notice.
"""

from __future__ import annotations

import json
import lzma
import re
import shutil
import sys
import sysconfig
from pathlib import Path

MAX_CHARS = 3000
# Whole packages of prose or tables (pydoc topics, codec tables, test data) would be an
# unnatural, highly repetitive corpus; leave them out.
EXCLUDED = {"test", "idlelib", "lib2to3", "encodings", "pydoc_data", "site-packages",
            "ensurepip", "tkinter", "turtledemo", "__pycache__", "distutils", "config-3.11-x86_64-linux-gnu"}
TOP_LEVEL = re.compile(r"^(?=(?:async\s+def|def|class)\s)", re.M)


def documents(text: str) -> list[str]:
    """Pack consecutive top-level def/class segments into documents of at most MAX_CHARS.

    A segment longer than MAX_CHARS on its own is cut into MAX_CHARS pieces.
    """
    starts = sorted({0, *(m.start() for m in TOP_LEVEL.finditer(text))})
    segments = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
    docs, current = [], ""
    for segment in segments:
        if current and len(current) + len(segment) > MAX_CHARS:
            docs.append(current)
            current = ""
        while len(segment) > MAX_CHARS:
            docs.append(segment[:MAX_CHARS])
            segment = segment[MAX_CHARS:]
        current += segment
    docs.append(current)
    return [d for d in docs if d.strip()]


def main(out: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert sys.version_info[:2] == (3, 11), "freeze from CPython 3.11"
    files = sorted(p for p in stdlib.rglob("*.py")
                   if not EXCLUDED.intersection(p.relative_to(stdlib).parts)
                   and not p.name.startswith("_sysconfigdata"))
    with lzma.open(out, "wt", encoding="utf-8", preset=9) as fh:
        n = 0
        for path in files:
            rel = path.relative_to(stdlib).as_posix()
            for i, doc in enumerate(documents(path.read_text(encoding="utf-8", errors="replace"))):
                fh.write(json.dumps({"id": f"{rel}#{i}", "text": doc}, ensure_ascii=False) + "\n")
                n += 1
    shutil.copyfile(stdlib / "LICENSE.txt", out.with_name("stdlib311.LICENSE.txt"))
    print(f"{n} documents from {len(files)} files -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
