"""README.md's and the docs pages' images and relative links point at files and headings that exist.

Checked: markdown links and images ([text](target), ![alt](target)), reference definitions
([name]: target) and HTML <img src> / <a href>, outside code blocks and code spans. External
targets (a scheme such as https:, or //host) are not fetched. A relative path must exist in the
repository (file or directory, relative to README.md): where git is at hand, a file git tracks
(committed or added), since a file only on this disk shows as a broken image on the hosted
README; a #anchor must match a heading of the
README (or of the Markdown file it follows) as GitHub makes its id: lower case, punctuation
other than "-" and "_" dropped, spaces to "-", a repeated id suffixed -1, -2, ...
"""

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]"  # [text] or ![alt], one level of nested brackets
                    r"\(\s*(<[^>]*>|[^)\s]+(?:\([^)\s]*\)[^)\s]*)*)"  # (target: <...>, or balanced parentheses
                    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")  # an optional "title")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href|srcset)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with code spans blanked."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            continue
        if fence is not None:
            if line.strip().startswith(fence) and set(line.strip()) <= {fence[0]}:
                fence = None
            continue
        yield number, re.sub(r"(`+)(.+?)\1", lambda c: " " * len(c.group(0)), line)


def targets(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link and image in the prose."""
    found = []
    for number, line in prose_lines(text):
        found += [(number, m.group(1).strip("<>")) for m in INLINE.finditer(line)]
        found += [(number, m.group(1).strip("<>")) for m in REFERENCE.finditer(line)]
        found += [(number, m.group(1) if m.group(1) is not None else m.group(2)) for m in HTML.finditer(line)]
    return found


def slug(heading: str) -> str:
    """GitHub's id for a heading's text (inline markup removed first)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"(\*\*|__|\*|~~)", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for number, line in prose_lines(text):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def tracked(root: Path) -> set[Path] | None:
    """The files git tracks under `root` (resolved paths), or None without git or a repository."""
    if shutil.which("git") is None or not (root / ".git").exists():
        return None
    done = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True)
    if done.returncode != 0:
        return None
    return {(root / name).resolve() for name in done.stdout.decode().split("\0") if name}


def broken(markdown: Path, root: Path, files: set[Path] | None = None) -> list[str]:
    """'line N: target (why)' for each target of `markdown` that does not resolve. With `files`
    (the tracked files), a target must be one of them or a directory holding one."""
    text = markdown.read_text(encoding="utf-8")
    problems = []
    for number, target in targets(text):
        if not target or EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        path = (markdown.parent / unquote(path_part)).resolve() if path_part else markdown
        if path_part and root.resolve() not in path.parents and path != root.resolve():
            problems.append(f"line {number}: {target} (outside the repository)")
        elif not path.exists():
            problems.append(f"line {number}: {target} (no such file or directory)")
        elif files is not None and path not in files and not any(path in f.parents for f in files):
            problems.append(f"line {number}: {target} (not tracked by git)")
        elif anchor and path.suffix.lower() == ".md" and unquote(anchor).lower() not in anchors(
                path.read_text(encoding="utf-8")):
            problems.append(f"line {number}: {target} (no heading with the id #{anchor})")
    return problems


def test_readme_links_and_images_resolve():
    problems = broken(README, ROOT, tracked(ROOT))
    assert not problems, "README.md has broken links or images:\n" + "\n".join(problems)


def test_the_docs_pages_links_and_images_resolve():
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert len(pages) >= 5
    problems = [f"{page.name} {p}" for page in pages for p in broken(page, ROOT, tracked(ROOT))]
    assert not problems, "docs pages have broken links or images:\n" + "\n".join(problems)


def test_the_readme_check_sees_the_readmes_links():
    """The check above is not vacuous: it finds the README's images, anchors, pages and external link."""
    text = README.read_text(encoding="utf-8")
    found = {t for _, t in targets(text)}
    assert {"https://flower.ai", "docs/running.md#flower", "docs/quantizers.md#entropy-and-the-bit-width",
            "docs/privacy.md", "docs/results.md"} <= found
    assert any(t.endswith(".png") for t in found)
    ids = anchors(text)
    assert {"quickstart", "how-a-run-goes", "run-configuration", "extending-it", "documentation"} <= ids
    assert "flwr-leaves-its-local-superlink-running-stop-it-by-its-pid-when-done" not in anchors(
        (ROOT / "docs" / "running.md").read_text(encoding="utf-8"))  # a comment in code


def test_every_docs_page_is_linked_from_the_readme_and_the_readme_stays_short():
    found = {t.partition("#")[0] for _, t in targets(README.read_text(encoding="utf-8"))}
    assert {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} <= found
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def test_slugs_follow_github():
    assert slug("Entropy and the bit width") == "entropy-and-the-bit-width"
    assert slug("The Flower experiment (`make experiment`)") == "the-flower-experiment-make-experiment"
    assert slug("Centralized reference and in-process split (`python -m sltestbed.train`)") == \
        "centralized-reference-and-in-process-split-python--m-sltestbedtrain"
    assert slug("Accuracy and bytes against bits: the sweep") == "accuracy-and-bytes-against-bits-the-sweep"
    assert slug("A [linked](https://x.org) *bold* name_with_underscores") == "a-linked-bold-name_with_underscores"


def test_the_check_flags_what_is_broken(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.png").write_bytes(b"")
    (tmp_path / "other.md").write_text("# Other page\n")
    page = tmp_path / "page.md"
    page.write_text("\n".join([
        "# Title", "## Same", "## Same",
        "![ok](docs/here.png) ![gone](docs/gone.png) [dir](docs) [ext](https://example.org/x)",
        "[up](#title) [second](#same-1) [third](#same-2) [other](other.md#other-page) [bad](other.md#nope)",
        '<img src="docs/missing.svg" width="40"> <img src="docs/here.png">',
        "[ref]: missing.txt",
        "`[in code](nowhere.md)`",
        "```", "![in a fence](fenced.png)", "```",
        "[out](../../outside.md)",
    ]) + "\n")
    problems = broken(page, tmp_path)
    assert broken(page, tmp_path, {tmp_path / "page.md", tmp_path / "other.md"})[:2] == [
        "line 4: docs/here.png (not tracked by git)", "line 4: docs/gone.png (no such file or directory)"]
    assert problems == ["line 4: docs/gone.png (no such file or directory)",
                        "line 5: #same-2 (no heading with the id #same-2)",
                        "line 5: other.md#nope (no heading with the id #nope)",
                        "line 6: docs/missing.svg (no such file or directory)",
                        "line 7: missing.txt (no such file or directory)",
                        "line 12: ../../outside.md (outside the repository)"]
