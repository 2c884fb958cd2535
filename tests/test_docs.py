"""The course and reference site (docs/): every page has its Korean pair with the same code,
every code block runs (tests/test_docs.py records the outputs and figures that `make docs`
then shows), the command-line reference covers every command, and nothing loads from the web."""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
sys.path.insert(0, str(DOCS / "hooks"))

import cli_reference  # noqa: E402
import code_blocks  # noqa: E402
import offline  # noqa: E402

LANGUAGES = ("ko",)
# Committed records of `cnnzoo experiment`, kept in the words they were written in.
ENGLISH_ONLY = ("results",)


def _markdown_pages() -> list[Path]:
    skip = ("hooks", "figures", *ENGLISH_ONLY)
    return [p for p in sorted(DOCS.rglob("*.md")) if p.relative_to(DOCS).parts[0] not in skip]


def _originals() -> list[Path]:
    return [p for p in _markdown_pages() if code_blocks.source_page(p) == p]


def test_every_page_has_its_translation() -> None:
    pages = set(_markdown_pages())
    missing = [f"{p.relative_to(DOCS)} has no {p.stem}.{lang}.md"
               for p in _originals() for lang in LANGUAGES
               if p.with_name(f"{p.stem}.{lang}.md") not in pages]  # fmt: skip
    orphans = [str(p.relative_to(DOCS)) for p in pages
               if code_blocks.source_page(p) not in pages]  # fmt: skip
    assert len(_originals()) >= 16
    assert not missing, missing
    assert not orphans, f"translations without their original: {orphans}"


@pytest.mark.parametrize("page", _originals(), ids=lambda p: str(p.relative_to(DOCS)))
def test_translation_has_the_same_code_and_figures(page: Path) -> None:
    original = code_blocks.check_page(page)
    text = page.read_text(encoding="utf-8")
    for lang in LANGUAGES:
        translated_page = page.with_name(f"{page.stem}.{lang}.md")
        translated = code_blocks.check_page(translated_page)
        assert [b.signature() for b in translated] == [b.signature() for b in original], (
            f"{translated_page.name}: its code blocks differ from {page.name}'s"
        )
        assert code_blocks.figure_names(translated_page.read_text(encoding="utf-8")) == (
            code_blocks.figure_names(text)
        )


def test_nav_lists_every_page() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))

    def flatten(items: list) -> list[str]:
        found = []
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            found += flatten(value) if isinstance(value, list) else [value]
        return found

    listed = set(flatten(config["nav"]))
    unlisted = [str(p.relative_to(DOCS)) for p in _originals()
                if str(p.relative_to(DOCS)) not in listed]  # fmt: skip
    assert not unlisted, f"pages missing from mkdocs.yml's nav: {unlisted}"


def _is_png(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", code_blocks.pages_with_code(),
                         ids=lambda p: str(p.relative_to(DOCS)))  # fmt: skip
def test_page_code_runs(page: Path, fashion_mnist: None) -> None:
    run = code_blocks.run_page(page)  # raises with the page and line of a failing block
    blocks = code_blocks.check_page(page)
    assert run.outputs, "a page's code should show something"
    assert set(run.outputs) <= {i for i, b in enumerate(blocks) if b.shows_output}
    for name in run.figures:
        width, height = _is_png(code_blocks.FIGURES / name)
        # A real picture, not an empty axes: LeNet-5's six kernels in a row are 295 px wide.
        assert width >= 250 and height >= 150, f"{name} is {width}x{height}"
    assert code_blocks.read_record(page) is not None  # `make docs` reuses this run


# --- the runner itself ------------------------------------------------------------------


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(code_blocks, "FIGURES", tmp_path / "figures")
    monkeypatch.setattr(code_blocks, "RECORDS", tmp_path / "figures" / "_runs")
    return tmp_path


def _page(folder: Path, text: str) -> Path:
    path = folder / "page.md"
    path.write_text(text, encoding="utf-8")
    return path


FENCE = "```"


def test_blocks_share_names_and_folder_and_outputs_follow_them(scratch: Path) -> None:
    page = _page(scratch, f"""# t

{FENCE}python
x = 6 * 7
open("answer.txt", "w").write(str(x))
{FENCE}

{FENCE}{{ .python .no-run title="not run" }}
raise SystemExit("a shown block must not run")
{FENCE}

{FENCE}bash
echo "bash sees $(cat answer.txt)"
{FENCE}

{FENCE}python
import matplotlib.pyplot as plt
print("python sees", x)
plt.figure(figsize=(4, 2)).savefig("plot.png")
{FENCE}

![a plot](../figures/plot.png)
""")
    run = code_blocks.run_page(page)
    assert run.outputs == {2: "bash sees 42", 3: "python sees 42"}
    assert run.figures == ["plot.png"] and (scratch / "figures" / "plot.png").is_file()
    shown = code_blocks.with_outputs(page.read_text(), run, title="Output")
    assert shown.index("bash sees 42") > shown.index('echo "bash sees')
    assert shown.count('title="Output"') == 2
    assert code_blocks.read_record(page).outputs == run.outputs
    page.write_text(page.read_text().replace("6 * 7", "7 * 6"))
    assert code_blocks.read_record(page) is None  # changed code: run again


def test_a_failing_block_names_its_page_and_line(scratch: Path) -> None:
    page = _page(scratch, f"# t\n\ntext\n\n{FENCE}python\ny = 1\nz = y / 0\n{FENCE}\n")
    failure = r"page.md: the python block at line 6"
    with pytest.raises(code_blocks.DocsCodeError, match=failure) as e:
        code_blocks.run_page(page)
    assert 'page.md", line 7' in str(e.value) and "ZeroDivisionError" in str(e.value)

    page = _page(scratch, f"# t\n\n{FENCE}bash\necho before\nfalse\n{FENCE}\n")
    with pytest.raises(code_blocks.DocsCodeError, match=r"bash block at line 4 exited 1"):
        code_blocks.run_page(page)


def test_a_figure_the_code_does_not_write_fails(scratch: Path) -> None:
    page = _page(scratch, f"{FENCE}python\npass\n{FENCE}\n\n![missing](../figures/none.png)\n")
    with pytest.raises(code_blocks.DocsCodeError, match="shows none.png, which its code did not"):
        code_blocks.run_page(page)


def test_a_block_must_run_be_a_listing_or_be_marked(scratch: Path) -> None:
    page = _page(scratch, f"{FENCE}yaml\nepochs: 3\n{FENCE}\n")
    with pytest.raises(code_blocks.DocsCodeError, match="mark it .no-run"):
        code_blocks.check_page(page)
    _page(scratch, f"{FENCE}{{ .yaml .no-run }}\nepochs: 3\n{FENCE}\n\n{FENCE}text\nout\n{FENCE}\n")
    assert [b.runs for b in code_blocks.check_page(scratch / "page.md")] == [False, False]
    page = _page(scratch, f"{FENCE}python no-run\npass\n{FENCE}\n")
    with pytest.raises(code_blocks.DocsCodeError, match=r"write options as \{ .python .no-run \}"):
        code_blocks.check_page(page)


# --- generated reference and offline site -----------------------------------------------


def test_cli_reference_covers_every_command_and_option() -> None:
    from cnnzoo.cli.main import build_parser

    text = cli_reference.cli_reference()
    checked = 0

    def walk(parser: argparse.ArgumentParser) -> None:
        nonlocal checked
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    assert f"`{sub.prog}`" in text
                    walk(sub)
            elif action.help != argparse.SUPPRESS:
                for flag in action.option_strings:
                    assert f"`{flag}`" in text, f"{parser.prog} {flag}"
                    checked += 1

    walk(build_parser())
    assert checked > 100
    assert "`--precise-bn` `N`" in text and "Default: `20`" in text


def test_cli_reference_is_placed_on_its_pages() -> None:
    for page in (DOCS / "reference").glob("cli*.md"):
        assert cli_reference.MARKER in page.read_text(encoding="utf-8")
    assert cli_reference.on_page_markdown(f"# x\n\n{cli_reference.MARKER}\n", None, None, None) \
        .count("## `cnnzoo train`") == 1


def test_remote_assets_are_found() -> None:
    html = ('<a href="https://example.org/">a link is fine</a>'
            '<link rel="stylesheet" href="https://fonts.example.com/css?family=Roboto">'
            '<script src="//cdn.example.com/x.js"></script><img src="../figures/local.png">'
            "<style>@font-face { src: url('https://fonts.example.com/a.woff2') }</style>")
    assert offline.remote_assets(html) == [
        "https://fonts.example.com/css?family=Roboto",
        "//cdn.example.com/x.js",
        "https://fonts.example.com/a.woff2",
    ]


def test_readme_is_a_landing_page_whose_links_resolve() -> None:
    """The README links into docs/ (readable on GitHub too); every link must name a file."""
    import re

    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    missing = [t for t in local if not (REPO / t).is_file()]
    assert len(local) >= 15 and not missing, missing
    assert "make demo" in text and "make test" in text  # the two quick-start commands
    assert len(text) < 12_000, "the README is a landing page; details belong on the site"
