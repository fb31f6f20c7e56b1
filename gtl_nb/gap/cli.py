"""``gtl gap``: wrap, transform, parse and graph GAP messages from the command line.

Register it in the main ``gtl`` parser with::

    from gtl_nb.gap import cli as gap_cli
    gap_cli.add_subcommands(subparsers)      # then dispatch with args.handler(args)

or run it alone: ``python -m gtl_nb.gap.cli wrap notes.txt --platform claude.ai``.

Unlike the library, the CLI may read the clock: ``wrap`` stamps the message with the current UTC
time unless ``--timestamp`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TextIO

from gtl_nb.gap.errors import GAPFormatError
from gtl_nb.gap.jsonfmt import decode, from_dict, from_json, to_json
from gtl_nb.gap.markdown import parse_all, to_markdown
from gtl_nb.gap.model import ROLES, WrappedMessage
from gtl_nb.gap.platforms import PLATFORMS, transform_for_platform
from gtl_nb.gap.wrap import wrap_message


def add_subcommands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``gap`` command (with ``wrap``, ``transform``, ``parse``, ``graph``) to ``subparsers``."""
    gap = subparsers.add_parser("gap", help="GAP context transfer: wrap, transform, parse, graph")
    gap.set_defaults(handler=run, gap_parser=gap)
    commands = gap.add_subparsers(dest="gap_command", metavar="{wrap,transform,parse,graph}")

    wrap = commands.add_parser("wrap", help="wrap content (a file or stdin) in GAP metadata")
    wrap.add_argument("file", nargs="?", default="-", help="content file ('-' or absent: stdin)")
    wrap.add_argument("--platform", required=True, help="where the content was written, e.g. claude.ai")
    wrap.add_argument("--chat-id", help="the message id (default: a new random id)")
    wrap.add_argument("--role", choices=ROLES, default="assistant")
    wrap.add_argument("--thread", help="thread id")
    wrap.add_argument("--model", help="model that wrote the content")
    wrap.add_argument("--parent", action="append", default=[], help="parent message id (repeatable)")
    wrap.add_argument("--entity", action="append", default=[], metavar="KEY=VALUE", help="define an entity")
    wrap.add_argument("--timestamp", help="ISO-8601 time (default: now, UTC)")
    wrap.add_argument("--no-detect", action="store_true", help="do not detect entities")
    wrap.add_argument("--to-json", action="store_true", help="print GAP JSON instead of markdown")

    transform = commands.add_parser("transform", help="render GAP message(s) for a target platform")
    transform.add_argument("file", help="GAP markdown or JSON ('-': stdin)")
    transform.add_argument("--to", required=True, dest="target", help=f"one of: {', '.join(PLATFORMS)}")

    parse = commands.add_parser("parse", help="print every GAP block of a markdown file as JSON lines")
    parse.add_argument("file", help="markdown with GAP blocks ('-': stdin)")

    graph = commands.add_parser("graph", help="build the context graph of GAP messages")
    graph.add_argument("file", help="GAP JSON lines or markdown with several blocks ('-': stdin)")
    graph.add_argument("--out", help="write the graph as node-link JSON to this file")
    return gap


def _read(path: str, stdin: TextIO) -> str:
    """The file's (or stdin's) text, without a leading byte-order mark."""
    if path == "-":
        text = stdin.read()
    else:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    # Windows editors start UTF-8 files with a BOM: kept, it hides the first [GAP:START] or "{"
    return text.removeprefix("\ufeff")


def load_messages(text: str) -> list[WrappedMessage]:
    """GAP JSON (one document, a JSON array, or JSON lines) or markdown with any number of blocks."""
    stripped = text.strip()
    if not (stripped.startswith("{") or (stripped.startswith("[") and not stripped.startswith("[GAP:"))):
        return parse_all(text)
    try:
        data = decode(stripped)  # bounded like from_json: a deep or odd document is a format error
    except GAPFormatError:
        lines = [line for line in stripped.split("\n") if line.strip()]
        if len(lines) < 2 or not any(_whole_json(line) for line in lines[:2]):
            raise  # one document, pretty-printed perhaps: its own error, not its first line's
        data = None  # JSON lines, each read (and its error reported) by from_json
    if isinstance(data, list):
        return [from_dict(item) for item in data]
    if isinstance(data, dict):
        return [from_dict(data)]
    messages = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                messages.append(from_json(line))
            except GAPFormatError as exc:
                raise GAPFormatError(exc.reason, line=number, path=exc.path) from None
    return messages


def _whole_json(line: str) -> bool:
    """Whether ``line`` is a JSON object of its own, as a line of JSON lines is (one of the first two
    is: the first may be the broken one; a pretty-printed GAP document has no such line)."""
    try:
        return isinstance(decode(line), dict)
    except GAPFormatError:
        return False


def _wrap(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    entities = {}
    for item in args.entity:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--entity expects KEY=VALUE, got {item!r}")
        entities[key.strip()] = value
    # the notebook's form (``%%gap``): UTC to the second, written with Z
    timestamp = args.timestamp or datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    wrapped = wrap_message(
        _read(args.file, stdin),
        args.platform,
        args.chat_id or f"msg-{uuid.uuid4().hex[:12]}",
        role=args.role,
        model=args.model,
        timestamp=timestamp,
        thread_id=args.thread,
        parent_messages=args.parent,
        entities=entities,
        detect=not args.no_detect,
    )
    stdout.write((to_json(wrapped) if args.to_json else to_markdown(wrapped)) + "\n")
    return 0


def _transform(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    messages = load_messages(_read(args.file, stdin))
    if not messages:
        raise GAPFormatError("no GAP message found")
    rendered = [transform_for_platform(message, args.target) for message in messages]
    stdout.write("\n\n---\n\n".join(rendered) + "\n")
    return 0


class _NothingFound(Exception):
    """A command found nothing to print: ``run`` says so on stderr and exits 1, as grep does."""


def _parse(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    messages = parse_all(_read(args.file, stdin))
    if not messages:  # silence and exit 0 read as "parsed, all fine": a wrong file, or markers off their lines
        where = "standard input" if args.file == "-" else args.file
        raise _NothingFound(
            f"no GAP blocks found in {where} (a block is a [GAP:START] line through a [GAP:END] line, "
            "each marker on a line of its own)"
        )
    for message in messages:
        stdout.write(to_json(message) + "\n")
    return 0


def _graph(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    from gtl_nb.gap.graph import create_context_graph, graph_to_json, undefined_entities

    graph = create_context_graph(load_messages(_read(args.file, stdin)))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(graph_to_json(graph), handle, ensure_ascii=False, indent=2)
        stdout.write(f"wrote {graph.number_of_nodes()} nodes and {graph.number_of_edges()} edges to {args.out}\n")
        return 0
    nodes = Counter(data["kind"] for _node, data in graph.nodes(data=True))
    edges = Counter(kind for _s, _t, kind in graph.edges(keys=True))
    stdout.write(f"nodes: {graph.number_of_nodes()} ({_counts(nodes)})\n")
    stdout.write(f"edges: {graph.number_of_edges()} ({_counts(edges)})\n")
    undefined = undefined_entities(graph)
    stdout.write(f"undefined entities: {len(undefined)}\n")
    for _entity, thread, key in undefined:
        stdout.write(f"  {key}" + (f" (thread {thread})" if thread is not None else "") + "\n")
    for child, parent in graph.graph["refused_edges"]:
        stdout.write(f"refused cross-thread link: {child} -> {parent}\n")
    return 0


def _counts(counter: Counter) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(counter.items())) or "none"


_HANDLERS = {"wrap": _wrap, "transform": _transform, "parse": _parse, "graph": _graph}


def run(
    args: argparse.Namespace,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run a parsed ``gtl gap ...`` command; returns the exit status (1 for bad input, and for ``parse``
    finding no GAP block)."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    handler = _HANDLERS.get(getattr(args, "gap_command", None) or "")
    if handler is None:
        args.gap_parser.print_help(stderr)
        return 2
    try:
        return handler(args, stdin, stdout)
    except _NothingFound as exc:  # a note, not an error: the input was read and held nothing
        stderr.write(f"gtl gap {args.gap_command}: {exc}\n")
        return 1
    except (GAPFormatError, ValueError, OSError) as exc:
        stderr.write(f"gtl gap {args.gap_command}: error: {exc}\n")
        return 1


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``gtl gap`` on its own: ``argv`` are the words after ``gap`` (``["parse", "file.md"]``)."""
    parser = argparse.ArgumentParser(prog="gtl")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["gap", *(sys.argv[1:] if argv is None else argv)])
    return run(args, stdin=stdin, stdout=stdout, stderr=stderr)


if __name__ == "__main__":
    sys.exit(main())
