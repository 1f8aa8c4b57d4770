"""The report never prints memorized text unless params ask for it (report.show_text)."""

from __future__ import annotations

import html

import polars as pl
import yaml

from .conftest import cli


def _suffixes(root, suffix_tokens: int) -> dict[str, str]:
    """Decoded member suffixes long enough that finding one in the report cannot be chance."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(root / "data/checkpoints/tiny/tokenizer.json"))
    members = pl.read_parquet(root / "data/samples/tiny/members.parquet")
    texts = {sid: tokenizer.decode(tokens[-suffix_tokens:])
             for sid, tokens in zip(members["sample_id"], members["tokens"].to_list())}
    return {sid: text for sid, text in texts.items() if len(text.strip()) >= 20}


def _leaks(root, texts: dict[str, str]) -> set[str]:
    outputs = [(root / "reports" / name).read_text() for name in ("report.html", "results.csv", "layer_sparsity.csv")]
    return {sid for sid, text in texts.items()
            if any(text in out or html.escape(text) in out or html.escape(text, quote=False) in out
                   for out in outputs)}


def test_report_redacts_memorized_text_by_default(study):
    params = yaml.safe_load((study / "params.yaml").read_text())
    assert "report" not in params  # the default, not an explicit false
    texts = _suffixes(study, params["samples"]["suffix_tokens"])
    page = (study / "reports/report.html").read_text()
    assert "Extracted members" in page and "sha256:" in page  # examples are listed, redacted
    assert texts and not _leaks(study, texts)


def test_show_text_prints_the_extracted_suffixes(study):
    (study / "show.yaml").write_text("report: {show_text: true}\n")
    assert cli("report", params=("params.yaml", "show.yaml")) == 0
    params = yaml.safe_load((study / "params.yaml").read_text())
    texts = _suffixes(study, params["samples"]["suffix_tokens"])
    per_sample = pl.read_parquet(study / "data/metrics/tiny/dense/0/memorization.parquet")
    extracted = set(per_sample.filter((pl.col("k") == max(params["samples"]["k"])) & pl.col("member")
                                      & pl.col("extracted"))["sample_id"]) & set(texts)
    assert extracted and _leaks(study, texts) == extracted  # exactly the extracted members, in full
    assert "sha256:" not in (study / "reports/report.html").read_text()
