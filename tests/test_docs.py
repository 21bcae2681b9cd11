"""The README is a front page whose numbers come from committed result files.

A table in README.md or docs/*.md is *cited* when the line before it (blank lines aside) is an HTML
comment ``<!-- source: PATH [PATH ...] -->`` naming committed JSON files. Every number in a cited
table's data cells (not its header row or first column, which label) must be a value of one of those
files, as shown: rounded to the digits shown, or as a percentage. In the README every table with a
number in its data cells must be cited, or say ``<!-- not measured -->`` (names such as SD 2.1). In
docs/ it may instead be a record of runs whose outputs were not kept: ``<!-- history: ... -->``, naming
when (a date) and on what machine it was measured.
"""

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCE = re.compile(r"<!--\s*source:\s*(.+?)\s*-->")
NOT_MEASURED = "<!-- not measured -->"
HISTORY = re.compile(r"<!--\s*history:(.+?)-->")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:[ ,]\d{3})*(?:\.\d+)?(?![\w.])")


def tables(text: str):
    """(sources or None, header cells, data rows) of every Markdown table in ``text``."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1]):
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            label = lines[j].strip() if j >= 0 else ""
            k = i + 2
            rows = []
            while k < len(lines) and lines[k].startswith("|"):
                rows.append([c.strip() for c in lines[k].strip().strip("|").split("|")])
                k += 1
            if label != NOT_MEASURED:
                m = SOURCE.search(label)
                yield (m.group(1).split() if m else None), HISTORY.search(label), lines[i], rows
            i = k
        else:
            i += 1


def numbers_of(path: Path) -> list[float]:
    out = []

    def walk(v):
        if isinstance(v, bool):
            return
        if isinstance(v, (int, float)):
            out.append(float(v))
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(json.loads(path.read_text()))
    return out


def shown(token: str, values: list[float]) -> bool:
    text = token.replace(" ", "").replace(",", "")
    digits = len(text.partition(".")[2])
    x = float(text)
    tol = 0.5 * 10**-digits + 1e-9
    return any(abs(v - x) <= tol or abs(100 * v - x) <= tol for v in values)


def cell_numbers(cell: str) -> list[str]:
    cell = re.sub(r"`[^`]*`", "", cell)  # code: names, commands, paths
    cell = re.sub(r"\([^)]*\)", "", cell)  # an aside in parentheses labels (e.g. "(chance 33 %)")
    return NUMBER.findall(cell)


def check_tables(name: str, text: str) -> None:
    """Raise AssertionError at the first table of ``text`` (the page ``name``) that breaks the rules above."""
    for sources, history, header, rows in tables(text):
        data = [c for r in rows for c in r[1:] if cell_numbers(c)]
        if sources is None:
            assert not data or (name != "README.md" and history), (
                f"{name}: a table with numbers cites no source (nor, in docs/, is it marked history): {header}"
            )
            if history:
                said = history.group(1)
                assert re.search(r"\b20\d\d-\d\d\b", said) and re.search(r"AMD|Intel|CPU|H200|machine", said), (
                    f"{name}: a history table must say when and on what machine it was measured: {header}"
                )
            continue
        values = []
        for s in sources:
            path = ROOT / s
            assert path.is_file(), f"{name} cites {s}, which is not a file"
            values += numbers_of(path)
        for cell in data:
            for token in cell_numbers(cell):
                assert shown(token, values), f"{name}: {token!r} ({cell!r}, table {header!r}) is in none of {sources}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_cited_tables_show_only_values_of_their_sources(doc):
    check_tables(doc.name, doc.read_text())


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines"
    first_table = next(i for i, line in enumerate(lines) if line.startswith("| "))
    assert first_table < 60, "the results table is not within the first 60 lines"
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "a date in the README: it belongs in a result file"
    hashes = [h for h in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"\d", h) and re.search(r"[a-f]", h)]
    assert not hashes, f"commit hashes in the README: {hashes}"


def test_the_check_catches_a_number_its_source_does_not_hold(tmp_path):
    src = tmp_path / "r.json"
    src.write_text(json.dumps({"a": {"coverage": 0.598, "rating": 2.3}}))
    good = f"<!-- source: {src} -->\n| captioner | coverage | rating |\n|---|---|---|\n| VLV 4 000 | 59.8 % | 2.30 |\n"
    (_, _, _, rows), *_ = list(tables(good))
    assert all(shown(t, numbers_of(src)) for c in rows[0][1:] for t in cell_numbers(c))
    assert not shown("61.0", numbers_of(src)) and not shown("2.4", numbers_of(src))


def test_a_table_of_numbers_in_docs_says_where_they_come_from():
    table = "| variant | coverage |\n|---|---|\n| MLP | 8.5 % |\n"
    with pytest.raises(AssertionError, match="cites no source"):
        check_tables("results.md", table)
    with pytest.raises(AssertionError, match="when and on what machine"):
        check_tables("results.md", "<!-- history: an earlier run -->\n" + table)
    check_tables("results.md", "<!-- history: 2026-12-02, Intel Xeon; outputs not kept -->\n" + table)
    with pytest.raises(AssertionError, match="cites no source"):
        check_tables("README.md", "<!-- history: 2026-12-02, Intel Xeon -->\n" + table)
    check_tables("README.md", "<!-- not measured -->\n" + table)
