"""The docs a newcomer reads: the generated references say what the code says, and every relative link leads
somewhere (a file that exists, and a heading of it when the link names one)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from lambda_pipeline.cli.reference import REFERENCES, REGENERATE, main, stale_references

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").rglob("*.md")])

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(path: Path) -> str:
    """The text of a Markdown file without its code blocks and code spans, where nothing is a link."""
    return _CODE_SPAN.sub("", _FENCE.sub("", path.read_text(encoding="utf-8")))


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``path``: lower case, punctuation but '-' and '_' dropped,
    spaces as '-', and '-1', '-2' after a repeated heading."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _relative_links(path: Path) -> list[str]:
    return [link for link in _LINK.findall(_prose(path)) if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]


def test_the_docs_are_there() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in DOCS}
    assert {"README.md", "CONTRIBUTING.md", "docs/index.md", "docs/getting-started.md"} <= names
    assert {"docs/troubleshooting.md", *REFERENCES} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_to_a_file_and_heading(doc: Path) -> None:
    broken = []
    for link in _relative_links(doc):
        target, _, anchor = link.partition("#")
        file = (doc.parent / target).resolve() if target else doc
        if not file.exists():
            broken.append(f"{link}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{link}: no heading with the anchor #{anchor} in {file.relative_to(ROOT)}")
    assert broken == [], f"{doc.relative_to(ROOT)}: broken links"


def test_every_doc_page_is_in_the_index() -> None:
    index = ROOT / "docs" / "index.md"
    linked = {(index.parent / link.partition("#")[0]).resolve() for link in _relative_links(index)}
    pages = {path.resolve() for path in (ROOT / "docs").rglob("*.md") if path != index}
    assert sorted(str(page.relative_to(ROOT)) for page in pages - linked) == []


def test_the_committed_references_are_what_the_code_generates() -> None:
    stale = stale_references(ROOT)
    assert stale == [], f"{', '.join(stale)} differ from the code: regenerate with '{REGENERATE}' and commit them"


def test_the_generator_writes_the_references_and_checks_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert main(["--root", str(tmp_path)]) == 0
    for relative in REFERENCES:
        assert (tmp_path / relative).read_text(encoding="utf-8") == (ROOT / relative).read_text(encoding="utf-8")
    assert main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / "docs/reference/cli.md").write_text("stale\n", encoding="utf-8")
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert "docs/reference/cli.md" in capsys.readouterr().err
