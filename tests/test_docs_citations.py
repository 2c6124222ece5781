"""Every section the repository cites exists: ``docs/<name>.md §N`` (or ``§N.M``) names a document in
``docs/`` with a heading ``## N.`` (or ``### N.M``).

Citations are collected from every tracked ``*.py``, ``*.md`` and ``*.yaml`` file, in every form the code
uses: one section (``§7``, ``§7's``), a range (``§4-§6``, ``§15–16``: every section in between is
cited) and a list (``§4, §6``, ``§10/§12``: the later numbers belong to the same document). The code
cites nothing outside the repository either: no tracked Python file names the briefs or papers the
documents were written from. Plain text only: no import of the project.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".py", ".md", ".yaml")
NUM = r"\d+(?:\.\d+)?"
# a dash joins a range (its second "§" optional); a comma, slash or "and" joins a list (with "§")
CITATION = re.compile(rf"docs/(?P<doc>[\w-]+)\.md\s+§\s*(?P<first>{NUM})"
                      rf"(?P<rest>(?:\s*(?:[-–—]\s*§?|(?:,|/|\band\b)\s*§)\s*{NUM})*)")
FOLLOWING = re.compile(rf"([-–—]|,|/|and)\s*§?\s*({NUM})")
DOCUMENT = re.compile(r"docs/([\w-]+)\.md")
SECTION = re.compile(r"^##\s+(\d+)\.(?:\s|$)")
SUBSECTION = re.compile(r"^###\s+(\d+\.\d+)\.?(?:\s|$)")
# documents outside the repository that code must not point at (this file names them to forbid them)
OUTSIDE = ("METHODS.md", "DESIGN.md", "../shared", "papers/")


def tracked_files(suffixes=SUFFIXES) -> list[Path]:
    """The repository's tracked files with these suffixes (the working tree when git is unavailable)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "runs", "node_modules", "__pycache__"}
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    return sorted(ROOT / n for n in names if n.endswith(suffixes) and (ROOT / n).is_file())


def _expand_range(start: str, end: str) -> list[str]:
    """The sections a range cites: every integer of ``§4-§6``; every subsection of ``§5.2-5.4``."""
    if "." not in start and "." not in end:
        a, b = int(start), int(end)
        return [str(n) for n in range(a, b + 1)] if a <= b else [start, end]
    (ma, _, na), (mb, _, nb) = start.partition("."), end.partition(".")
    if na and nb and ma == mb and int(na) <= int(nb):
        return [f"{ma}.{n}" for n in range(int(na), int(nb) + 1)]
    return [start, end]


def parse_citation(first: str, rest: str) -> list[str]:
    """``("4", ", §6")`` -> ``["4", "6"]``; ``("15", "–16")`` -> ``["15", "16"]``; ``("8", "-§12")`` -> 8..12."""
    sections, previous = [first], first
    for separator, number in FOLLOWING.findall(rest):
        if separator in "-–—":
            sections += _expand_range(previous, number)[1:]
        else:
            sections.append(number)
        previous = number
    return sections


def citations() -> list[tuple[str, int, str, str]]:
    """(file, line, document name, section) of every citation in the tracked files."""
    found = []
    for path in tracked_files():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        rel = str(path.relative_to(ROOT))
        for number, line in enumerate(lines, start=1):
            for m in CITATION.finditer(line):
                for section in parse_citation(m["first"], m["rest"]):
                    found.append((rel, number, m["doc"], section))
    return found


def headings(doc: Path) -> set[str]:
    """Section numbers with a heading: ``## 7.`` gives "7", ``### 7.2`` gives "7.2"."""
    out = set()
    for line in doc.read_text(encoding="utf-8").splitlines():
        m = SECTION.match(line) or SUBSECTION.match(line)
        if m:
            out.add(m.group(1))
    return out


def test_the_parser_reads_every_form_the_code_uses():
    def cited(text):
        return [s for m in CITATION.finditer(text) for s in parse_citation(m["first"], m["rest"])]

    assert cited("(docs/methods.md §7: one zero in six)") == ["7"]
    assert cited("docs/methods.md §7's score") == ["7"]
    assert cited("docs/methods.md §4-§6, study §3.3") == ["4", "5", "6"]
    assert cited("docs/methods.md §15–16 wiring") == ["15", "16"]
    assert cited("(docs/design.md §4, §6,") == ["4", "6"]
    assert cited("dropped at inference, docs/methods.md §10/§12)") == ["10", "12"]
    assert cited("docs/methods.md §5, Eq. 4") == ["5"]
    assert cited("docs/methods.md §8. It changes") == ["8"]
    assert cited("docs/methods.md §5.2") == ["5.2"]


def test_every_cited_section_exists():
    found = citations()
    assert found, "no docs/<name>.md §N citation found: is the scan looking at the repository?"
    documents: dict[str, set[str] | None] = {}
    dangling = []
    for rel, line, doc, section in found:
        if doc not in documents:
            path = ROOT / "docs" / f"{doc}.md"
            documents[doc] = headings(path) if path.is_file() else None
        have = documents[doc]
        if have is None:
            dangling.append(f"{rel}:{line}: docs/{doc}.md §{section}: the document docs/{doc}.md does not exist")
        elif section not in have:
            want = f"### {section}" if "." in section else f"## {section}."
            dangling.append(f"{rel}:{line}: docs/{doc}.md §{section}: no heading '{want}' in docs/{doc}.md")
    assert not dangling, f"{len(dangling)} dangling citation(s):\n" + "\n".join(dangling)


def test_every_named_document_exists():
    missing = []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for m in DOCUMENT.finditer(line):
                if not (ROOT / "docs" / f"{m[1]}.md").is_file():
                    missing.append(f"{path.relative_to(ROOT)}:{number}: docs/{m[1]}.md does not exist")
    assert not missing, "\n".join(missing)


def test_nothing_points_outside_the_repository():
    me = Path(__file__).resolve()
    checked = [p for p in tracked_files((".py",)) if p.resolve() != me]
    checked += [p for p in (ROOT / "docs" / "methods.md", ROOT / "docs" / "design.md") if p.is_file()]
    outside = []
    for path in checked:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for name in OUTSIDE:
                if name in line:
                    outside.append(f"{path.relative_to(ROOT)}:{number}: names {name!r} (not in the repository)")
    assert not outside, "citations must point into the repository (docs/):\n" + "\n".join(outside)
