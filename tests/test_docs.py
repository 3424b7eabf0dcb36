"""The documentation is self-contained: every citation and README link resolves inside the repository."""
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if p.endswith((".py", ".md", ".cfg", ".toml", ".sh", ".yaml"))]


def _read(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_nothing_cites_a_file_outside_the_repository():
    outside = re.compile(r"DESIGN\.md|\.\./shared|(?<![#\w])[Tt]rap \d")
    hits = [f"{p}:{n}" for p in _tracked() if p != "tests/test_docs.py"
            for n, line in enumerate(_read(p).splitlines(), 1) if outside.search(line)]
    assert hits == []


def test_design_anchors_cited_in_the_code_exist():
    design = _read("docs/design.md")
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', design))
    headings = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", design, flags=re.M)}
    cited = {(p, a) for p in _tracked() for a in re.findall(r"docs/design\.md#([\w-]+)", _read(p))}
    assert cited, "no citation found: the pattern is wrong"
    missing = sorted((p, a) for p, a in cited if a not in anchors | headings)
    assert missing == []


def test_relative_links_in_the_docs_resolve():
    broken = []
    for p in [p for p in _tracked() if p.endswith(".md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _read(p)):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not os.path.exists(os.path.normpath(os.path.join(ROOT, os.path.dirname(p), target))):
                broken.append(f"{p}: {target}")
    assert broken == []
