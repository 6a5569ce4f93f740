"""The documentation: the site builds with ``mkdocs build --strict`` (mkdocs.yml, docs/, the API reference
generated from the docstrings), the README stays the short front page, every relative link of the README
and of docs/ reaches a file, and the docstrings' ``>>>`` examples run as doctests.

The build is skipped when mkdocs, Material or mkdocstrings is not installed (they come with the ``dev``
extra); on CI (``CI=1``), which installs them, a missing one fails instead.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250
SITE_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def require_mkdocs() -> None:
    """Skip when the site's packages are missing (fail on CI, which must install them)."""
    missing = [name for name in SITE_PACKAGES if _find_spec(name) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not importable: pip install -e '.[dev]' (mkdocs, mkdocs-material, mkdocstrings[python])"
    if os.environ.get("CI"):
        pytest.fail(f"CI must install the documentation's packages: {message}", pytrace=False)
    pytest.skip(message)


def _find_spec(name: str) -> object:
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:  # the parent package of a dotted name is missing
        return None


# ---------------------------------------------------------------- the site


def test_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict``: no warning at all (a broken link or anchor, a page left out of the nav,
    an API reference directive naming something that no longer exists)."""
    require_mkdocs()
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False, env=env, timeout=600)
    assert result.returncode == 0, f"{' '.join(command[1:])} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()


# ---------------------------------------------------------------- the README and the links


def _two_commands(text: str) -> str:
    """The "## The two commands" section's code block, byte for byte."""
    match = re.search(r"^## The two commands\n.*?^(```bash\n.*?^```)$", text, re.S | re.M)
    assert match, "no '## The two commands' section with a bash code block"
    return match.group(1)


def test_readme_is_the_short_front_page() -> None:
    text = README.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the front page keeps to {README_MAX_LINES}: move the rest into docs/"
    # the site's home page shows the same two commands as the README, byte for byte
    assert _two_commands((DOCS / "index.md").read_text(encoding="utf-8")) == _two_commands(text)


def _markdown_files() -> List[Path]:
    return [README] + sorted(DOCS.rglob("*.md"))


def _without_code(text: str) -> str:
    """``text`` with fenced code blocks and inline code blanked out (links there are not links)."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)


def _relative_links(path: Path) -> Iterator[Tuple[str, Path]]:
    """Every relative link and image of a Markdown file, with the file it points to."""
    text = _without_code(path.read_text(encoding="utf-8"))
    for target in LINK.findall(text) + REFERENCE.findall(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "//")):
            continue  # a URL, mailto:, or an anchor on the same page (mkdocs --strict checks those)
        file_part = target.split("#", 1)[0].split("?", 1)[0]
        yield target, (path.parent / file_part).resolve()


def test_relative_links_reach_files() -> None:
    """README.md links into docs/ (so it reads on GitHub too); docs/ pages link to each other and to
    their pictures. Every relative link must name a file that exists."""
    broken, count = [], 0
    for path in _markdown_files():
        for target, resolved in _relative_links(path):
            count += 1
            if not resolved.is_file():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert count > 0
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_link_checker_sees_links() -> None:
    """The link finder itself: links across lines, images and reference links count; code does not."""
    sample = "a [two\nlines](x.md#y) ![p](pics/p.png) `[no](code.md)`\n```\n[no](block.md)\n```\n[r]: ref.md\n"
    text = _without_code(sample)
    assert LINK.findall(text) + REFERENCE.findall(text) == ["x.md#y", "pics/p.png", "ref.md"]


# ---------------------------------------------------------------- docstring examples


def _modules_with_examples() -> List[str]:
    """cnnlens's modules whose source holds a ``>>>`` example."""
    names = []
    for path in sorted((ROOT / "cnnlens").rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _modules_with_examples()


def test_some_docstrings_have_examples() -> None:
    assert MODULES, "no docstring in cnnlens/ has a >>> example"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    """Each module's ``>>>`` examples give exactly the output their docstring shows."""
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: List[str] = []
    for test in finder.find(module, name):
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0, f"{name} mentions >>> but no docstring example was found"
    assert results.failed == 0, "".join(report)
