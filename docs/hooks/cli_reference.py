"""MkDocs hook: the command-line reference, written at build time from cnnzoo's own argparse
parsers (``cnnzoo.cli.main.build_parser``), so it can never disagree with ``--help``.

A page asks for it with the line ``<!-- cnnzoo-cli-reference -->``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

MARKER = "<!-- cnnzoo-cli-reference -->"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    found: dict[str, tuple[argparse.ArgumentParser, str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found[name] = (sub, helps.get(name, ""))
    return found


def _option_rows(parser: argparse.ArgumentParser) -> Iterator[tuple[str, list[str]]]:
    """(group title, table rows) for each argument group with visible arguments."""
    for group in parser._action_groups:
        rows = []
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            if action.option_strings:
                names = ", ".join(f"`{flag}`" for flag in action.option_strings)
                if action.nargs != 0:
                    metavar = action.metavar or action.dest.upper()
                    if isinstance(metavar, tuple):
                        metavar = " ".join(metavar)
                    names += f" `{metavar}`"
            else:
                names = f"`{action.metavar or action.dest}`"
            details = _cell(parser._get_formatter()._expand_help(action) if action.help else "")
            if action.choices and not isinstance(action.choices, dict):
                details += " Choices: " + ", ".join(f"`{c}`" for c in action.choices) + "."
            default = action.default
            if (action.option_strings and action.nargs != 0 and default not in (None, False)
                    and default != argparse.SUPPRESS):  # fmt: skip
                details += f" Default: `{_cell(str(default))}`."
            rows.append(f"| {names} | {details.strip()} |")
        if rows:
            yield group.title or "arguments", rows


def _command(parser: argparse.ArgumentParser, summary: str, level: int) -> list[str]:
    lines = [f"{'#' * level} `{parser.prog}`", ""]
    description = parser.description or summary
    if description:
        lines += [_cell(description), ""]
    usage = parser.format_usage().strip()
    lines += ["```text", usage.removeprefix("usage: "), "```", ""]
    for title, rows in _option_rows(parser):
        lines += [f"**{title.capitalize()}**", "", "| argument | meaning |", "|---|---|", *rows, ""]
    children = _subcommands(parser)
    if children:
        lines += ["| command | what it does |", "|---|---|"]
        lines += [f"| [`{sub.prog}`](#{sub.prog.replace(' ', '-')}) | {_cell(text)} |"
                  for sub, text in children.values()]  # fmt: skip
        lines.append("")
    for sub, text in children.values():
        lines += _command(sub, text, level + 1)
    return lines


def cli_reference() -> str:
    from cnnzoo.cli.main import build_parser

    return "\n".join(_command(build_parser(), "", 1)[2:])  # the page has its own title


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
