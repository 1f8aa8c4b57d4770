"""No code path may execute what it loads: no pickle, no unsafe torch.load, no remote code.

The scanner reads the text of every file under src/, workflow/, bench/, tools/ and the
Snakefile; it is itself tested on planted snippets, so a scanner that finds nothing fails.
"""

from __future__ import annotations

import re

import pytest
from conftest import REPO

SCANNED = ("src", "workflow", "bench", "tools", "Snakefile")
TEXT = {".py", ".smk", ".sh", ".yaml", ".yml", ".toml", ".cfg", ".md", ""}

# (rule, pattern) for everything that is unsafe wherever it appears
FORBIDDEN = [
    ("trust_remote_code=True", re.compile(r"trust_remote_code\s*=\s*True")),
    ("pickle", re.compile(r"^\s*(?:import|from)\s+(?:c?[Pp]ickle|_pickle|dill|cloudpickle|shelve)\b|"
                          r"\b(?:c?pickle|dill|cloudpickle|joblib)\.loads?\(|\bread_pickle\(", re.MULTILINE)),
    ("allow_pickle=True", re.compile(r"allow_pickle\s*=\s*True")),
    ("torch.load imported bare", re.compile(r"from\s+torch\s+import\s+(?:[\w\s,]*\b)?load\b")),
]
TORCH_LOAD = re.compile(r"\btorch\.load\(")


def _call_arguments(text: str, open_paren: int) -> str:
    """The text between a call's parentheses (calls may span lines)."""
    depth = 0
    for i in range(open_paren, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_paren + 1 : i]
    return text[open_paren + 1 :]


def violations(text: str) -> list[str]:
    found = [rule for rule, pattern in FORBIDDEN if pattern.search(text)]
    for match in TORCH_LOAD.finditer(text):
        if not re.search(r"\bweights_only\s*=\s*True\b", _call_arguments(text, match.end() - 1)):
            found.append("torch.load without weights_only=True")
    return found


def _files():
    for entry in SCANNED:
        path = REPO / entry
        paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        # build products (pip's egg-info copies the README) are not code
        yield from (p for p in paths if p.suffix in TEXT and "__pycache__" not in p.parts
                    and not any(part.endswith(".egg-info") for part in p.parts))


BAD = [
    "state = torch.load(path)",
    "state = torch.load(\n    path,\n    map_location='cpu',\n)",
    "state = torch.load(path, weights_only=False)",
    "from torch import load",
    "model = AutoModel.from_pretrained(name, trust_remote_code = True)",
    "import pickle",
    "from pickle import loads",
    "import dill",
    "rows = joblib.load(path)",
    "obj = pickle.loads(blob)",
    "arr = np.load(path, allow_pickle=True)",
    "df = pd.read_pickle(path)",
]
GOOD = [
    "state = torch.load(path, weights_only=True)",
    "state = torch.load(\n    path,\n    weights_only=True,\n)",
    "model = AutoModel.from_pretrained(name, trust_remote_code=False)",
    "# prunemem loads safetensors only, never pickle",
    "arr = np.load(path)",
]


@pytest.mark.parametrize("snippet", BAD)
def test_the_scanner_catches_planted_violations(snippet):
    assert violations(snippet), snippet


@pytest.mark.parametrize("snippet", GOOD)
def test_the_scanner_accepts_safe_code(snippet):
    assert not violations(snippet), snippet


def test_the_code_loads_nothing_executable():
    files = list(_files())
    assert len(files) > 30 and any(p.suffix == ".smk" for p in files)
    found = {str(p.relative_to(REPO)): v for p in files if (v := violations(p.read_text(errors="replace")))}
    assert not found, found
