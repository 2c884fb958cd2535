"""The code on the documentation's pages: found, run, and its output and figures kept.

A page's fenced ``python`` and ``bash`` blocks run in order, like the cells of a notebook: the
Python blocks share one namespace, and every block runs in one scratch folder that the page has
to itself. A block that is only shown is marked in its info string::

    ```{ .bash .no-run title="Shown only: downloads 100 MB" }

``text`` blocks are listings (a file, an output) and never run; any other language must be
marked ``.no-run``. A block marked ``.no-output`` runs but its output is not shown on the page.

A page's figures are the files its code writes: ``![...](../figures/NAME.png)`` on the page
means that the page's code writes ``NAME.png`` into its folder. :func:`refresh` runs a page when
its code, cnnzoo's source or this file changed and copies the figures into ``docs/figures/``
beside a record of every block's output; the site build (``run_code.py``) and the tests
(``tests/test_docs.py``) both go through it, so a site built after the tests reuses their run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
FIGURES = DOCS / "figures"
RECORDS = FIGURES / "_runs"
RUN_LANGUAGES = ("python", "bash")
LISTING_LANGUAGES = ("text",)
SHOWN_LINES = 40  # longer outputs keep their first and last lines
BASH_TIMEOUT_S = 900

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_ATTR = re.compile(r'(?P<key>[\w-]+)="(?P<value>[^"]*)"|\.(?P<cls>[\w-]+)|(?P<bad>\S+)')
_FIGURE = re.compile(r"!\[[^\]]*\]\((?P<path>[^)\s]*figures/(?P<name>[\w.-]+\.png))\)")


class DocsCodeError(Exception):
    """A page's code is malformed or failed; the message names the page and line."""


@dataclass(frozen=True)
class Block:
    """One fenced block: ``line`` is the 1-based line of its first code line on the page."""

    lang: str
    classes: tuple[str, ...]
    attrs: tuple[tuple[str, str], ...]
    code: str
    line: int
    end_line: int  # the closing fence's line
    indent: str

    @property
    def runs(self) -> bool:
        return self.lang in RUN_LANGUAGES and "no-run" not in self.classes

    @property
    def shows_output(self) -> bool:
        return self.runs and "no-output" not in self.classes

    def signature(self) -> tuple[str, tuple[str, ...], str]:
        """What must be the same on a page and its translation: the code (titles and the words of
        a ``text`` listing may be translated, but not its place among the blocks)."""
        return self.lang, self.classes, "" if self.lang in LISTING_LANGUAGES else self.code


def _parse_info(info: str, where: str) -> tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]:
    info = info.strip()
    if not info.startswith("{"):
        words = info.split()
        if len(words) > 1:
            raise DocsCodeError(
                f"{where}: write options as {{ .{words[0]} .no-run }}, got {info!r}"
            )
        return (words[0] if words else ""), (), ()
    if not info.endswith("}"):
        raise DocsCodeError(f"{where}: unclosed '{{' in the fence's info string {info!r}")
    classes: list[str] = []
    attrs: list[tuple[str, str]] = []
    for match in _ATTR.finditer(info[1:-1]):
        if match["bad"]:
            raise DocsCodeError(f"{where}: cannot read {match['bad']!r} in {info!r}")
        if match["cls"]:
            classes.append(match["cls"])
        else:
            attrs.append((match["key"], match["value"]))
    if not classes:
        raise DocsCodeError(f"{where}: name the language first, e.g. {{ .python .no-run }}")
    return classes[0], tuple(classes[1:]), tuple(attrs)


def parse_blocks(markdown: str, name: str = "<page>") -> list[Block]:
    """Every fenced block of ``markdown``, in order."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        indent, fence = match["indent"], match["fence"]
        lang, classes, attrs = _parse_info(match["info"], f"{name}:{index + 1}")
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            stripped = lines[end].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(lines[end][len(indent):] if lines[end].startswith(indent) else lines[end])
            end += 1
        else:
            raise DocsCodeError(f"{name}:{index + 1}: the block opened here is never closed")
        blocks.append(Block(lang, classes, attrs, "\n".join(body) + "\n", index + 2, end + 1,
                            indent))  # fmt: skip
        index = end + 1
    return blocks


def figure_names(markdown: str) -> list[str]:
    """The generated figures a page shows, in order of first appearance."""
    return list(dict.fromkeys(match["name"] for match in _FIGURE.finditer(markdown)))


def check_page(path: Path) -> list[Block]:
    """The page's blocks, after checking that each is either run, marked, or a listing."""
    text = path.read_text(encoding="utf-8")
    blocks = parse_blocks(text, _rel(path))
    for block in blocks:
        known = block.lang in RUN_LANGUAGES or block.lang in LISTING_LANGUAGES
        if not known and "no-run" not in block.classes:
            raise DocsCodeError(
                f"{_rel(path)}:{block.line - 1}: a {block.lang or 'plain'} block can neither run "
                "nor be a listing: make it python or bash, text, or mark it .no-run"
            )
    return blocks


# --- running -------------------------------------------------------------------------------


@dataclass
class PageRun:
    """What running a page gave: each run block's output (by block index) and the seconds."""

    page: str
    key: str
    outputs: dict[int, str] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    block_seconds: dict[int, float] = field(default_factory=dict)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def page_key(path: Path, blocks: list[Block]) -> str:
    """Changes when the page's code or figures, cnnzoo's source or this runner change."""
    digest = hashlib.sha256()
    digest.update(json.dumps([b.signature() for b in blocks if b.runs]).encode())
    digest.update(json.dumps(figure_names(path.read_text(encoding="utf-8"))).encode())
    digest.update(_tree_digest(REPO / "src" / "cnnzoo").encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[dict[str, str]]:
    """cwd = folder, a headless matplotlib and no downloads, for the page's code and its
    commands; everything restored afterwards."""
    saved_cwd, saved_env, saved_argv = os.getcwd(), dict(os.environ), list(sys.argv)
    os.chdir(folder)
    os.environ.update(MPLBACKEND="Agg", CNNZOO_OFFLINE="1", COLUMNS="100", NO_COLOR="1")
    src = str(REPO / "src")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [src, *[p for p in saved_env.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]]
    )
    # The cnnzoo command of the Python running this, ahead of any other on PATH.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), saved_env["PATH"]])
    try:
        yield dict(os.environ)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv[:] = saved_argv


def _shown(text: str) -> str:
    lines = [line.rstrip() for line in text.rstrip().splitlines()]
    if len(lines) <= SHOWN_LINES:
        return "\n".join(lines)
    head, tail = 8, SHOWN_LINES - 9
    cut = len(lines) - head - tail
    return "\n".join([*lines[:head], f"... ({cut} lines not shown)", *lines[-tail:]])


def _run_python(block: Block, namespace: dict, page: str) -> str:
    # Blank lines in front keep the page's line numbers in tracebacks.
    code = compile("\n" * (block.line - 1) + block.code, page, "exec")
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            exec(code, namespace)
    except BaseException as exc:  # noqa: BLE001 - reported with the page's line
        if isinstance(exc, KeyboardInterrupt):
            raise
        trace = "".join(traceback.format_exception(exc)[-6:])
        raise DocsCodeError(
            f"{page}: the python block at line {block.line} failed:\n{buffer.getvalue()[-2000:]}"
            f"{trace}"
        ) from exc
    return buffer.getvalue()


def _run_bash(block: Block, env: dict[str, str], page: str) -> str:
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=BASH_TIMEOUT_S, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise DocsCodeError(f"{page}: the bash block at line {block.line} ran past "
                            f"{BASH_TIMEOUT_S} s") from exc  # fmt: skip
    if done.returncode != 0:
        raise DocsCodeError(
            f"{page}: the bash block at line {block.line} exited {done.returncode}:\n"
            f"{shlex.join(['bash', '-c', block.code.strip()])}\n{done.stdout[-3000:]}"
        )
    return done.stdout


def run_page(path: Path, workdir: Path | None = None) -> PageRun:
    """Run the page's blocks in order in ``workdir`` (a fresh temporary folder by default) and
    check that they wrote every figure the page shows."""
    path = path.resolve()
    page = _rel(path)
    blocks = check_page(path)
    result = PageRun(page, page_key(path, blocks))
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        folder = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="docs-")))
        env = stack.enter_context(_inside(folder))
        namespace: dict = {"__name__": "__main__"}
        for index, block in enumerate(blocks):
            if not block.runs:
                continue
            started = time.perf_counter()
            if block.lang == "python":
                output = _run_python(block, namespace, page)
            else:
                output = _run_bash(block, env, page)
            result.block_seconds[index] = round(time.perf_counter() - started, 1)
            if block.shows_output and output.strip():
                result.outputs[index] = _shown(output)
        names = figure_names(path.read_text(encoding="utf-8"))
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise DocsCodeError(f"{page}: the page shows {', '.join(missing)}, which its code "
                                "did not write")  # fmt: skip
        FIGURES.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(folder / name, FIGURES / name)
        result.figures = names
    result.seconds = round(time.perf_counter() - start, 1)
    _write_record(path, result)
    return result


def _record_path(path: Path) -> Path:
    return RECORDS / (_rel(path).replace("/", "__") + ".json")


def _write_record(path: Path, result: PageRun) -> None:
    RECORDS.mkdir(parents=True, exist_ok=True)
    record = {"page": result.page, "key": result.key, "seconds": result.seconds,
              "figures": result.figures, "outputs": {str(k): v for k, v in result.outputs.items()}}
    temporary = _record_path(path).with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    temporary.replace(_record_path(path))


def read_record(path: Path) -> PageRun | None:
    """The page's last run if it is still current (same code, same cnnzoo, figures present)."""
    try:
        record = json.loads(_record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    blocks = check_page(path)
    if record.get("key") != page_key(path, blocks):
        return None
    if not all((FIGURES / name).is_file() for name in record["figures"]):
        return None
    return PageRun(record["page"], record["key"], {int(k): v for k, v in record["outputs"].items()},
                   record["figures"], record["seconds"])  # fmt: skip


def refresh(path: Path) -> PageRun:
    """The page's current run: the recorded one, or a new run."""
    return read_record(path) or run_page(path)


def source_page(path: Path) -> Path:
    """The page whose code runs for ``path``: a translation (``x.ko.md``) shares its
    original's (``x.md``) code and so its run."""
    parts = path.name.split(".")
    if len(parts) == 3 and parts[2] == "md":
        return path.with_name(f"{parts[0]}.md")
    return path


def translations(path: Path) -> list[Path]:
    """The translations of an original page that exist (``x.ko.md`` for ``x.md``)."""
    return sorted(path.parent.glob(f"{path.stem}.*.md"))


def pages_with_code(docs: Path = DOCS) -> list[Path]:
    """The original (untranslated) pages with at least one block that runs."""
    pages = []
    for path in sorted(docs.rglob("*.md")):
        if "hooks" in path.relative_to(docs).parts or source_page(path) != path:
            continue
        if any(block.runs for block in check_page(path)):
            pages.append(path)
    return pages


def with_outputs(markdown: str, run: PageRun, *, title: str) -> str:
    """``markdown`` with each block's recorded output as a text block after it."""
    blocks = parse_blocks(markdown)
    lines = markdown.splitlines()
    for index in sorted(run.outputs, reverse=True):
        if index >= len(blocks):
            continue
        block = blocks[index]
        fence = "`" * 3
        output = ["", f"{block.indent}{fence}{{ .text .output title=\"{title}\" }}",
                  *[f"{block.indent}{line}" if line else "" for line in
                    run.outputs[index].replace("```", "'''").splitlines()],
                  f"{block.indent}{fence}"]  # fmt: skip
        lines[block.end_line:block.end_line] = output
    return "\n".join(lines) + "\n"
