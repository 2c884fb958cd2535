"""MkDocs hook: fail the build when a page would load anything from another host (fonts,
scripts, styles, images), so that the site reads the same offline. Links (``<a href>``) may
point anywhere."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

_LOADED = re.compile(
    r"<(?:script|img|iframe|source|audio|video)\b[^>]*\bsrc=[\"'](?P<src>(?:https?:)?//[^\"']+)"
    r"|<link\b[^>]*\bhref=[\"'](?P<href>(?:https?:)?//[^\"']+)"
    r"|url\(\s*[\"']?(?P<url>(?:https?:)?//[^\"')]+)"
    r"|@import\s+[\"'](?P<imp>(?:https?:)?//[^\"']+)",
    re.IGNORECASE,
)


def remote_assets(text: str) -> list[str]:
    """The addresses on other hosts that a browser would load for this HTML or CSS text."""
    return [next(v for v in match.groupdict().values() if v) for match in _LOADED.finditer(text)]


def on_post_build(config: Any) -> None:
    found = []
    for path in sorted(Path(config["site_dir"]).rglob("*")):
        if path.suffix in (".html", ".css"):
            for address in remote_assets(path.read_text(encoding="utf-8", errors="replace")):
                found.append(f"{path.relative_to(config['site_dir'])}: {address}")
    if found:
        raise PluginError("the site loads from other hosts:\n  " + "\n  ".join(found[:20]))
