"""MkDocs hook: run the pages' code before the build (or reuse its last run, see
``code_blocks.refresh``), so that the figures exist, and show each block's output under it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import code_blocks  # noqa: E402  (beside this file, not a package)
from mkdocs.exceptions import PluginError  # noqa: E402

log = logging.getLogger("mkdocs.hooks.run_code")
OUTPUT_TITLE = {"ko": "출력"}
_runs: dict[Path, code_blocks.PageRun] = {}


def on_pre_build(config: Any) -> None:
    _runs.clear()
    for path in code_blocks.pages_with_code(Path(config["docs_dir"])):
        cached = code_blocks.read_record(path)
        if cached is None:
            log.info("running the code of %s", code_blocks._rel(path))
            try:
                cached = code_blocks.run_page(path)
            except code_blocks.DocsCodeError as exc:
                raise PluginError(str(exc)) from exc
            log.info("%s: %.0f s", code_blocks._rel(path), cached.seconds)
        _runs[path.resolve()] = cached


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    path = Path(page.file.abs_src_path)
    run = _runs.get(code_blocks.source_page(path).resolve())
    if run is None:
        return markdown
    language = path.name.split(".")[1] if path.name.count(".") == 2 else "en"
    return code_blocks.with_outputs(markdown, run, title=OUTPUT_TITLE.get(language, "Output"))
