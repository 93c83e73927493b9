"""README.md works as the package index page: every link is absolute or an anchor that exists.

PyPI renders the README (its long description) with no repository around it, so a relative link
such as `examples/README.md` leads nowhere there. Every link is therefore an absolute http(s)
URL or an in-page anchor of a heading; files of the repository are named in code font instead.
Headings get GitHub's anchors (lower case, punctuation dropped, spaces to `-`, `-1`, `-2`... for
repeats), which PyPI's renderer (readme_renderer with comrak) gives them too: the second test
renders the README as PyPI does and follows every link in the HTML.

`bash scripts/check-dist` checks the built distributions themselves (`twine check --strict`,
the wheel's contents, the API reference).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

FENCE = re.compile(r"^(```|~~~).*?^\1[^\S\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
ATX_HEADING = re.compile(r"^ {0,3}#{1,6}[^\S\n]+(.+?)(?:[^\S\n]+#+)?[^\S\n]*$", re.M)
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[^)]*)?\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^\s<>]*)>")
HTML_LINK = re.compile(r"\b(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.I)


def _prose(markdown: str) -> str:
    """The Markdown without its fenced code blocks (headings and links there are code)."""
    return FENCE.sub("", markdown)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation dropped, spaces to `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags are not text
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(markdown: str) -> list[tuple[int, str]]:
    """Every heading's level and anchor, in order; a repeated anchor gets `-1`, `-2`... as
    GitHub and PyPI number it."""
    found: list[tuple[int, str]] = []
    counts: dict[str, int] = {}
    for match in ATX_HEADING.finditer(_prose(markdown)):
        level = len(match.group(0).lstrip(" ")) - len(match.group(0).lstrip(" ").lstrip("#"))
        slug = github_slug(match.group(1))
        seen = counts.get(slug, 0)
        counts[slug] = seen + 1
        found.append((level, slug if seen == 0 else f"{slug}-{seen}"))
    return found


def heading_anchors(markdown: str) -> set[str]:
    """Every heading's anchor."""
    return {anchor for _, anchor in headings(markdown)}


def contents_anchors(markdown: str) -> list[str]:
    """The anchors the README's `Contents:` paragraph links to, in order."""
    found = re.search(r"^Contents:(.*?)(?:\n\s*\n|\Z)", _prose(markdown), re.M | re.S)
    assert found is not None, "the README has no `Contents:` paragraph"
    return [target[1:] for target in link_targets(found.group(1)) if target.startswith("#")]


def link_targets(markdown: str) -> list[str]:
    """Every link target: inline links and images, reference definitions, autolinks, HTML."""
    text = CODE_SPAN.sub("", _prose(markdown))
    targets = []
    for pattern in (INLINE_LINK, REFERENCE_DEFINITION, AUTOLINK, HTML_LINK):
        targets += [match.group(1) for match in pattern.finditer(text)]
    return targets


def test_the_link_parser_finds_every_kind_of_link() -> None:
    sample = (
        "# Top `x`\n\n## Top: x\n\n## Files\n\n### Files\n\n"
        '[a](#top-x) ![b](https://e.org/i.png) [`c`](d.md "t") [e][f] <https://g.org>\n'
        '[f]: https://h.org\n<a href="i.html">i</a> `[not](a-link)`\n\n'
        "```bash\n# not a heading\n[not](a-link)\n```\n"
    )
    assert {"top-x", "top-x-1", "files", "files-1"} == heading_anchors(sample)
    assert [(1, "top-x"), (2, "top-x-1"), (2, "files"), (3, "files-1")] == headings(sample)
    expected = ["#top-x", "https://e.org/i.png", "d.md", "https://h.org", "https://g.org"]
    assert [*expected, "i.html"] == link_targets(sample)


def test_every_readme_link_is_absolute_or_an_existing_anchor() -> None:
    markdown = README.read_text(encoding="utf-8")
    anchors = heading_anchors(markdown)
    targets = link_targets(markdown)
    assert targets, "the README has links; the parser found none"
    broken = [
        target
        for target in targets
        if not (
            re.match(r"https?://[^\s/]+", target)
            or (target.startswith("#") and target[1:] in anchors)
        )
    ]
    assert [] == broken, (
        "README.md is the package index page: link to https:// URLs or to an existing heading "
        f"(#anchor), and name repository files in code font; anchors: {sorted(anchors)}"
    )


def test_the_contents_line_names_every_section_in_order() -> None:
    """The `Contents:` paragraph at the top links to each `## ` section, in the README's order,
    and to nothing else."""
    markdown = README.read_text(encoding="utf-8")
    sections = [anchor for level, anchor in headings(markdown) if level == 2]
    assert sections, "the README has `## ` sections; the parser found none"
    assert sections == contents_anchors(markdown), (
        "README.md's Contents line must link to every `## ` section, in order"
    )


def test_the_readme_as_the_package_index_renders_it_has_no_dead_links() -> None:
    """Rendered by readme_renderer (PyPI's renderer, which `twine check` runs), every `href` and
    `src` is absolute or a fragment whose target id is on the page."""
    markdown_renderer = pytest.importorskip("readme_renderer.markdown")
    pytest.importorskip("comrak", reason="readme_renderer[md] renders Markdown with comrak")
    markdown = README.read_text(encoding="utf-8")
    html = markdown_renderer.render(markdown)
    assert html, "readme_renderer could not render README.md"
    ids = set(re.findall(r"\bid=\"([^\"]+)\"", html))
    targets = re.findall(r"\b(?:href|src)=\"([^\"]*)\"", html)
    broken = [
        target
        for target in targets
        if not (re.match(r"https?://", target) or (target[:1] == "#" and target[1:] in ids))
    ]
    assert [] == broken
    # The renderer's anchors are the ones the first test assumes (with its id prefix).
    assert {f"user-content-{anchor}" for anchor in heading_anchors(markdown)} <= ids
