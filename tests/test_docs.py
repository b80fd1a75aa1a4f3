"""The guide and the documents it points to link to files and sections that exist (the README was
split into docs/ and benchmarks/results/: a moved section must not leave a dead link behind)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "docs/reference.md", "docs/training.md", "docs/DESIGN.md", "benchmarks/results/README.md",
             "benchmarks/results/v3/README.md"]


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # '#' lines in code are no headings
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def test_slug_follows_github():
    assert slug("7.1 The method protocol (`timm_reid/train/protocol.py`)") == \
        "71-the-method-protocol-timm_reidtrainprotocolpy"
    assert slug("Pretrain without downloads (`python -m timm_reid.pretrain`)") == \
        "pretrain-without-downloads-python--m-timm_reidpretrain"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_reach_files_and_sections(document):
    source = ROOT / document
    dead = []
    for target in re.findall(r"\]\(([^)\s]+)\)", source.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        if not file.exists():
            dead.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            dead.append(target)
    assert not dead, f"{document}: {dead}"


def test_the_readme_is_a_guide_with_the_set_up_commands():
    text = (ROOT / "README.md").read_text()
    assert 200 <= len(text.splitlines()) <= 320
    assert "pip install torch==2.14.1 torchvision==0.29.1 && pip install -e . && python -m timm_reid.train" in text
    assert 'pip install -e ".[test]" && python -m pytest -n 2' in text
