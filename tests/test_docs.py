"""The docs stay true: the CLI reference is the parser's, README's results table is the result files', links resolve."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_reference_is_generated_from_the_parser():
    from datafree.cli.reference import reference

    assert (ROOT / "docs" / "cli.md").read_text() == reference(), \
        "docs/cli.md is stale: python -m datafree.cli.reference > docs/cli.md"


def test_readme_is_short_and_its_results_table_is_rendered_from_the_results():
    import os

    from benchmarks.glance import glance_table, imagenet_glance

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    block = text.split("<!-- glance:start -->")[1].split("<!-- glance:end -->")[0].strip()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        assert block == glance_table().strip(), "README's table is stale: python -m benchmarks.report"
        block = text.split("<!-- glance-imagenet:start -->")[1].split("<!-- glance-imagenet:end -->")[0].strip()
        assert block == imagenet_glance().strip(), "README's ImageNet table is stale: python -m benchmarks.report"
    finally:
        os.chdir(cwd)


def test_every_relative_link_in_the_docs_resolves():
    pages = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(list((ROOT / "docs").glob("*.md"))) >= 5
    bad = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                bad.append(f"{page.name} -> {target}")
    assert not bad, bad
