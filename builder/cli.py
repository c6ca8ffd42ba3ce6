"""The command line: argv in, exit code out.

Parses arguments into request values, calls the operation behind each verb, prints its result, and is the one
place that turns errors into messages and exit codes: 0 success, 1 the command failed, 2 bad usage, 130/143 on
SIGINT/SIGTERM. Errors are one line on standard error; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

from builder import __version__
from builder.commit import source_date_epoch
from builder.errors import BuildError, UsageError
from builder.images import inspect_image, list_images
from builder.importer import ImportRequest, import_rootfs
from builder.platforms import host_platform
from builder.progress import Progress
from builder.root import Store, open_store, store_root
from oci.compression import Compression
from oci.descriptor import Platform
from oci.errors import InvalidReference, OCIError
from oci.reference import Reference

__all__ = ["main"]

PROG = "pybuild"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, hint=f"see '{self.prog} --help'")


class _Context:
    """What every verb gets: the parsed arguments, the environment, the output stream, the store (lazily)."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str], out: TextIO) -> None:
        self.args = args
        self.environ = environ
        self.out = out
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(store_root(self.args.root, self.environ))
        return self._store

    @property
    def platform(self) -> Platform:
        text = getattr(self.args, "platform", None)
        if not text:
            return host_platform()
        try:
            return Platform.parse(text)
        except ValueError as err:
            raise UsageError(str(err)) from None


# ----------------------------------------------------------------------------------------------------- verbs


def _parse_refs(names: Sequence[str]) -> tuple[Reference, ...]:
    refs = []
    for name in names:
        try:
            ref = Reference.parse(name)
        except InvalidReference as err:
            raise UsageError(str(err)) from None
        if ref.digest is not None:
            raise UsageError(f"{name}: a tag cannot contain a digest")
        refs.append(ref)
    return tuple(refs)


def cmd_import(ctx: _Context) -> int:
    args = ctx.args
    names = list(args.tag) + ([args.reference] if args.reference else [])
    try:
        compression = Compression.parse(args.compression)
    except ValueError as err:
        raise UsageError(str(err)) from None
    request = ImportRequest(
        source=args.source,
        tags=_parse_refs(names),
        platform=ctx.platform,
        changes=tuple(args.change),
        message=args.message or "",
        compression=compression,
        epoch=source_date_epoch(ctx.environ),
    )
    progress = Progress("quiet" if args.quiet else args.progress)
    try:
        image = import_rootfs(ctx.store, request, progress)
    finally:
        progress.done()
    print(str(image.id), file=ctx.out)
    return 0


def _ago(created: str) -> str:
    try:
        moment = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        try:
            moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            return created or "N/A"
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    for unit, size in (("year", 31536000), ("month", 2592000), ("week", 604800), ("day", 86400), ("hour", 3600)):
        if seconds >= 2 * size:
            return f"{seconds // size} {unit}s ago"
        if seconds >= size:
            return f"About a{'n' if unit == 'hour' else ''} {unit} ago"
    if seconds >= 120:
        return f"{seconds // 60} minutes ago"
    if seconds >= 60:
        return "About a minute ago"
    return "Less than a second ago" if seconds < 1 else f"{seconds} seconds ago"


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.3g}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1000
    raise AssertionError("unreachable")


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")


def cmd_images(ctx: _Context) -> int:
    args = ctx.args
    rows = list_images(ctx.store.layout, ctx.platform)
    if args.filter_reference:
        rows = [r for r in rows if r.reference and _matches(r.reference, args.filter_reference)]
    if args.format == "json":
        for row in rows:
            ctx.out.write(json.dumps(row.to_json(), sort_keys=True) + "\n")
        return 0
    if args.quiet:
        seen: set[str] = set()
        for row in rows:
            image_id = str(row.image.id) if args.no_trunc else row.image.id.short
            if image_id not in seen:
                seen.add(image_id)
                ctx.out.write(image_id + "\n")
        return 0
    header = ["REPOSITORY", "TAG"] + (["DIGEST"] if args.digests else []) + ["IMAGE ID", "CREATED", "SIZE"]
    table = [header]
    for row in rows:
        ref = row.reference
        cells = [ref.familiar() if ref else "<none>", ref.tag if ref and ref.tag else "<none>"]
        if args.digests:
            cells.append(str(row.image.digest))
        cells += [
            str(row.image.id) if args.no_trunc else row.image.id.short,
            _ago(row.image.config.created),
            _human_size(row.image.size()),
        ]
        table.append(cells)
    _table(table, ctx.out)
    return 0


def _matches(ref: Reference, pattern: str) -> bool:
    candidates = {str(ref), ref.name, ref.familiar(), f"{ref.familiar()}:{ref.tag}"}
    return any(fnmatch.fnmatchcase(c, pattern) for c in candidates)


def cmd_inspect(ctx: _Context) -> int:
    results: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in ctx.args.names:
        try:
            results.append(inspect_image(ctx.store.layout, name, ctx.platform))
        except BuildError as err:
            missing.append(str(err))
    ctx.out.write(json.dumps(results, indent=4, sort_keys=False) + "\n")
    if missing:
        raise BuildError(missing[0] if len(missing) == 1 else "; ".join(missing))
    return 0


# ---------------------------------------------------------------------------------------------------- parser

_EXAMPLES = {
    "import": """examples:
  pybuild import rootfs.tar -t mybase:1.0
  pybuild import rootfs.tar.zst -t mybase --change 'CMD ["sh"]' --change 'ENV LANG=C.UTF-8'
  tar -C rootfs -c . | pybuild import - mybase:latest""",
    "images": """examples:
  pybuild images
  pybuild images --format json | jq -r .Name
  pybuild images -q --filter 'reference=busybox*'""",
    "inspect": """examples:
  pybuild inspect busybox
  pybuild inspect busybox | jq -r '.[0].Config.Cmd'""",
}


def _build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Build OCI images from Dockerfiles, with no daemon. The local store is an OCI image layout.",
        epilog="Run 'pybuild COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_global_options(parser, after_verb=False)
    # The same options are accepted after the verb (pybuild images --root DIR), as buildah and podman accept them.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, after_verb=True)
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def verb(name: str, help_text: str, run: Callable[[_Context], int]) -> _Parser:
        sub = verbs.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        sub.set_defaults(run=run)
        return sub

    p = verb("import", "Create a one-layer image from a root filesystem tarball", cmd_import)
    p.add_argument("source", metavar="ROOTFS", help="a tar, tar.gz or tar.zst file, or - for standard input")
    p.add_argument("reference", metavar="NAME[:TAG]", nargs="?", help="name the image (same as -t)")
    p.add_argument("-t", "--tag", action="append", default=[], metavar="NAME[:TAG]", help="name the image (repeatable)")
    p.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        metavar="INSTRUCTION",
        help="apply a Dockerfile instruction to the config: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, "
        "STOPSIGNAL, USER, VOLUME, WORKDIR (repeatable)",
    )
    p.add_argument("-m", "--message", help="the history comment (default: 'Imported from ROOTFS')")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="the platform to record (default: this machine's)")
    p.add_argument("--compression", default="gzip", metavar="gzip|zstd|none", help="layer compression (default gzip)")
    p.add_argument("--progress", default="auto", choices=("auto", "tty", "plain", "quiet"), help="progress output")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")

    p = verb("images", "List images in the store", cmd_images)
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    p.add_argument("--digests", action="store_true", help="show manifest digests")
    p.add_argument("--no-trunc", action="store_true", help="full image IDs")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument(
        "--filter",
        dest="filter_reference",
        metavar="reference=PATTERN",
        type=_reference_filter,
        help="only references matching a glob",
    )
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index to show")

    p = verb("inspect", "Show an image's configuration, manifest and layers as JSON", cmd_inspect)
    p.add_argument("names", metavar="IMAGE", nargs="+", help="a name, image ID (or prefix) or manifest digest")
    p.add_argument("--format", choices=("json",), default="json", help="output format (JSON)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index to show")
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, after_verb: bool) -> None:
    # After the verb, an option left out must not reset the value given before it: SUPPRESS leaves it alone.
    parser.add_argument(
        "--root",
        metavar="DIR",
        default=argparse.SUPPRESS if after_verb else None,
        help="the store (default: $PYBUILD_ROOT, else $XDG_DATA_HOME/pybuild)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if after_verb else False,
        help="show tracebacks on errors",
    )


def _reference_filter(text: str) -> str:
    key, eq, value = text.partition("=")
    if key != "reference" or not eq or not value:
        raise argparse.ArgumentTypeError(f"unsupported filter {text!r} (supported: reference=PATTERN)")
    return value


def _check_verb(parser: _Parser, argv: Sequence[str]) -> None:
    """A clear message (with a suggestion) for a mistyped command, before argparse's generic one."""
    known = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    rest = list(argv)
    while rest:
        word = rest.pop(0)
        if word == "--root":
            rest = rest[1:]
            continue
        if word.startswith("-"):
            continue
        if word not in known:
            close = difflib.get_close_matches(word, sorted(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see 'pybuild --help'"
            raise UsageError(f"unknown command {word!r}", hint=hint)
        return


# ------------------------------------------------------------------------------------------------------- main


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    debug = "--debug" in argv
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        parser = _build_parser()
        _check_verb(parser, argv)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return int(args.run(_Context(args, environ, sys.stdout)))
    except BrokenPipeError:
        # The reader went away (``pybuild images | head``): not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (BuildError, OCIError, OSError) as err:
        if debug:
            traceback.print_exc()
        _report(err)
        return err.exit_code if isinstance(err, BuildError) else 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else 0 if code is None else 1
    except Exception as err:  # noqa: BLE001 - the one place that turns anything into an exit code
        if debug:
            traceback.print_exc()
        print(f"{PROG}: internal error: {type(err).__name__}: {err} (run with --debug for details)", file=sys.stderr)
        return 1


def _report(err: BaseException) -> None:
    if isinstance(err, OSError) and not isinstance(err, OCIError):
        where = f": {err.filename}" if err.filename else ""
        message = f"{err.strerror or err}{where}"
    else:
        message = str(err)
    hint = getattr(err, "hint", "")
    line = f"{PROG}: {message}" + (f" ({hint})" if hint else "")
    print(line.replace("\n", " "), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
