"""The command line: argv in, exit code out.

Parses arguments into request values, calls the operation behind each verb, prints its result, and is the one
place that turns errors into messages and exit codes: 0 success, 1 the command failed, 2 bad usage, 130/143 on
SIGINT/SIGTERM. Errors are one line on standard error; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from builder import __version__
from builder.errors import BuildError, DockerfileError, UsageError
from oci.errors import InvalidReference, LimitExceeded, OCIError

# Start-up time is import time: ``pybuild --help`` imports the parser and nothing else, and each verb imports the
# operations it runs when it runs (tests/builder/test_startup.py keeps it so). Names only annotations use come
# from this block, which only type checkers read (a constant, because importing typing alone costs 5 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from typing import Any, NoReturn, TextIO

    from builder import layerview
    from builder.cache import CacheIndex
    from builder.cacheshare import CacheSpec
    from builder.compressed import Precompressor
    from builder.export import OutputSpec
    from builder.frontend.dockerfile import DockerfileAST
    from builder.plan import BuildPlan, PlanOptions
    from builder.remote import PushResult, Remote
    from builder.request import BuildRequest
    from builder.root import Store
    from oci.apply import ApplyLimits
    from oci.compression import Compression
    from oci.descriptor import Platform
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
        self.limits = _layer_limits(args, environ)
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            from builder.root import open_store, store_root

            self._store = open_store(store_root(self.args.root, self.environ), self.limits)
        return self._store

    @property
    def platform(self) -> Platform:
        from builder.platforms import host_platform
        from oci.descriptor import Platform

        text = getattr(self.args, "platform", None)
        if not text:
            return host_platform()
        try:
            return Platform.parse(text, default=host_platform())
        except ValueError as err:
            raise UsageError(str(err)) from None


def _layer_limits(args: argparse.Namespace, environ: Mapping[str, str]) -> ApplyLimits:
    """--max-layer-size and --max-layer-entries, else $PYBUILD_MAX_LAYER_SIZE and $PYBUILD_MAX_LAYER_ENTRIES."""
    from builder.limits import ENTRIES_ENV, SIZE_ENV, layer_limits
    from builder.units import parse_size

    def setting(given: int | None, name: str, parse: Callable[[str], int]) -> int | None:
        if given is not None or not environ.get(name):
            return given
        try:
            return parse(environ[name])
        except ValueError as err:
            raise UsageError(f"${name}: {err}") from None

    return layer_limits(
        setting(getattr(args, "max_layer_size", None), SIZE_ENV, parse_size),
        setting(getattr(args, "max_layer_entries", None), ENTRIES_ENV, _count),
    )


# ----------------------------------------------------------------------------------------------------- verbs


def _parse_refs(names: Sequence[str]) -> tuple[Reference, ...]:
    from oci.reference import Reference

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


def _remote(ctx: _Context, *, refresh: bool = False) -> Remote:
    from builder.remote import RegistrySettings, Remote

    args = ctx.args
    settings = RegistrySettings(
        insecure=frozenset(getattr(args, "insecure_registry", None) or ()),
        chunk_size=getattr(args, "chunk_size", None) or 0,
    )
    return Remote(ctx.store, settings, ctx.environ, refresh=refresh)


def _registry_name(text: str) -> str:
    """``pybuild login HOST``: a registry name, with Docker Hub's spellings folded into docker.io."""
    name = text.strip().removeprefix("https://").removeprefix("http://").split("/", 1)[0]
    if not name:
        raise UsageError(f"invalid registry {text!r}")
    return "docker.io" if name in ("index.docker.io", "registry-1.docker.io", "docker.io") else name


def cmd_pull(ctx: _Context) -> int:
    from builder.progress import Progress
    from oci.reference import Reference

    args = ctx.args
    try:
        ref = Reference.parse(args.name)
    except InvalidReference as err:
        raise UsageError(str(err)) from None
    remote = _remote(ctx, refresh=True)
    progress = Progress("quiet" if args.quiet else args.progress)
    try:
        before = remote.local(ref, ctx.platform)
        image = remote.pull(ref, ctx.platform, progress.status)
    finally:
        progress.done()
    if args.quiet:
        print(str(ref), file=ctx.out)
        return 0
    fresh = before is None or before.digest != image.digest
    print(f"Digest: {image.digest}", file=ctx.out)
    status = "Downloaded newer image for" if fresh else "Image is up to date for"
    print(f"Status: {status} {ref}", file=ctx.out)
    print(str(ref), file=ctx.out)
    return 0


def cmd_push(ctx: _Context) -> int:
    from builder.images import find_image
    from builder.progress import Progress
    from oci.compression import Compression
    from oci.reference import Reference
    from oci.store import atomic_file

    args = ctx.args
    try:
        compression = Compression.parse(args.compression)
        source = Reference.parse(args.name)
        dest = Reference.parse(args.destination) if args.destination else source
    except (ValueError, InvalidReference) as err:
        raise UsageError(str(err)) from None
    image, _ = find_image(ctx.store.layout, args.name, ctx.platform)
    key = _signing_key(ctx, args.sign_key) if args.sign_key else None  # a bad key or password fails before the push
    remote = _remote(ctx)
    progress = Progress("quiet" if args.quiet else args.progress)
    try:
        results = remote.push(image, [dest], compression, on_status=progress.status)
        signed = _sign_pushed(remote, results, key, progress.status) if key is not None else []
    finally:
        progress.done()
    for result in results:
        if args.digestfile:
            with atomic_file(Path(args.digestfile).absolute()) as f:
                f.write(str(result.digest).encode())
        if args.quiet:
            print(str(result.digest), file=ctx.out)
        else:
            print(f"{result.ref.tag or 'pushed'}: digest: {result.digest} size: {result.size}", file=ctx.out)
    if not args.quiet:
        _print_signed(ctx, signed)
    return 0


def cmd_login(ctx: _Context) -> int:
    from oci.auth import Credential

    args = ctx.args
    registry = _registry_name(args.server or "docker.io")
    username = args.username
    if args.password_stdin:
        if args.password:
            raise UsageError("--password and --password-stdin are mutually exclusive")
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = args.password
    if not username or password is None:
        if not sys.stdin.isatty():
            raise UsageError("give --username and --password-stdin (no terminal to ask on)")
        import getpass

        username = username or input("Username: ").strip()
        password = password if password is not None else getpass.getpass("Password: ")
    if not username or not password:
        raise UsageError("a user name and a password are required")
    credential = Credential(username, password)
    remote = _remote(ctx)
    remote.client.check_login(registry, credential)
    where = remote.docker_config.store(registry, credential)
    if args.password:
        print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", file=sys.stderr)
    print(f"Login Succeeded (credentials saved in {where})", file=ctx.out)
    return 0


def cmd_logout(ctx: _Context) -> int:
    from oci.credentials import DockerConfig, docker_config_dir

    registry = _registry_name(ctx.args.server or "docker.io")
    if DockerConfig(docker_config_dir(ctx.environ)).erase(registry):
        print(f"Removing login credentials for {registry}", file=ctx.out)
    else:
        print(f"Not logged in to {registry}", file=ctx.out)
    return 0


# ----------------------------------------------------------------------------------------------------- signing


def _signing_key(ctx: _Context, path: str) -> Any:
    from builder.signing import key_password, load_private_key

    return load_private_key(Path(path), key_password(ctx.environ))


def _registry_ref(name: str) -> Reference:
    from oci.reference import Reference

    try:
        return Reference.parse(name)
    except InvalidReference as err:
        raise UsageError(str(err)) from None


def _sign_pushed(remote: Remote, results: Sequence[PushResult], key: Any, say: Callable[[str], None]) -> list[Any]:
    """``push --sign-key``: sign each pushed manifest digest where it was pushed."""
    from builder.signing import sign

    return [sign(remote, result.ref, key, digest=result.digest, on_status=say) for result in results]


def _print_signed(ctx: _Context, signed: Sequence[Any]) -> None:
    for done in signed:
        if done.added:
            print(f"Signed {done.image}: {done.signature} holds {done.signatures} signature(s)", file=ctx.out)
        else:
            print(f"{done.image} is already signed by this key ({done.signature})", file=ctx.out)


def cmd_key_generate(ctx: _Context) -> int:
    from builder.signing import PASSWORD_ENV, generate_key, key_password

    password = key_password(ctx.environ)
    files = generate_key(Path(ctx.args.output), password)
    if password is None:
        print(f"WARNING: {files.private} is not encrypted (set {PASSWORD_ENV} to encrypt it)", file=sys.stderr)
    print(f"Private key written to {files.private}", file=ctx.out)
    print(f"Public key written to {files.public}", file=ctx.out)
    return 0


def cmd_sign(ctx: _Context) -> int:
    from builder.signing import sign

    ref = _registry_ref(ctx.args.name)
    key = _signing_key(ctx, ctx.args.key)
    _print_signed(ctx, [sign(_remote(ctx), ref, key)])
    return 0


def cmd_verify(ctx: _Context) -> int:
    from builder.signing import load_public_key, verify

    args = ctx.args
    ref = _registry_ref(args.name)
    verified = verify(_remote(ctx), ref, load_public_key(Path(args.key)))
    if args.format == "json":
        _json_out(ctx, [payload.to_json() for payload in verified.payloads])
        return 0
    count = f"{len(verified.payloads)} of {verified.signatures} signatures"
    print(f"Verified {verified.image}: {count} match {args.key}", file=ctx.out)
    return 0


def cmd_run(ctx: _Context) -> int:
    from builder import cgroups
    from builder.container import ContainerRequest, run_image
    from builder.progress import Progress
    from oci.reference import Reference

    args = ctx.args
    if args.tty:
        raise UsageError("pybuild run has no pseudo-terminal yet (-t)", hint="standard input and output pass through")
    env = []
    for item in args.env:
        name, eq, _ = item.partition("=")
        if eq:
            env.append(item)
        elif name in ctx.environ:
            env.append(f"{name}={ctx.environ[name]}")  # -e NAME passes the caller's value, as docker does
    if args.commit:
        _parse_refs([args.commit])
    request = ContainerRequest(
        command=tuple(args.command),
        entrypoint=None if args.entrypoint is None else tuple(args.entrypoint.split()) if args.entrypoint else (),
        env=tuple(env),
        user=args.user or "",
        workdir=args.workdir or "",
        network=args.network,
        hostname=args.hostname or "",
        commit=args.commit or "",
        limits=cgroups.Limits(args.memory, args.pids_limit),
    )
    progress = Progress("quiet" if args.quiet else "plain")
    try:
        image = _remote(ctx).image(args.image, ctx.platform, progress.status)
    finally:
        progress.done()
    named = Reference.parse(args.commit) if args.commit else None

    def name_image(committed: Any) -> None:
        assert named is not None
        ctx.store.layout.tag(str(named), committed.descriptor)
        print(f"{named}: {committed.id}", file=sys.stderr)

    sys.stdout.flush()
    result = run_image(ctx.store, image, request, name_image=name_image)
    if result.oom_killed:
        print(f"{PROG}: killed: out of memory (--memory {cgroups.format_size(args.memory)})", file=sys.stderr)
    return result.status


def cmd_import(ctx: _Context) -> int:
    from builder.commit import source_date_epoch
    from builder.importer import ImportRequest, import_rootfs
    from builder.progress import Progress
    from oci.compression import Compression

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


def _build_request(ctx: _Context) -> BuildRequest:
    from builder.request import BuildRequest, parse_build_args, parse_key_values, parse_platform, resolve_paths

    args = ctx.args
    context, dockerfile = resolve_paths(args.context, args.file)
    contexts = parse_key_values(args.build_context, "--build-context")
    _parse_refs(args.tag)
    return BuildRequest(
        context=context,
        dockerfile=dockerfile,
        build_args=parse_build_args(args.build_arg, ctx.environ),
        target=args.target or "",
        platform=parse_platform(args.platform),
        labels=parse_key_values(args.label, "--label"),
        contexts=contexts,
        tags=tuple(args.tag),
    )


def _read_dockerfile(request: BuildRequest) -> DockerfileAST:
    from builder.frontend.dockerfile import parse_dockerfile
    from builder.request import read_dockerfile

    return parse_dockerfile(read_dockerfile(request, sys.stdin.buffer), request.dockerfile_label)


def _plan_options(request: BuildRequest, all_stages: bool) -> PlanOptions:
    from builder.plan import PlanOptions
    from builder.platforms import host_platform

    return PlanOptions(
        build_args=request.build_args,
        target=request.target,
        platform=request.platform,
        build_platform=host_platform(),
        contexts=frozenset(request.contexts),
        labels=request.labels,
        all_stages=all_stages,
    )


def _plan(
    ctx: _Context,
    request: BuildRequest,
    *,
    all_stages: bool,
    remote: Remote | None = None,
    ast: DockerfileAST | None = None,
) -> BuildPlan:
    from builder.images import base_config
    from builder.plan import plan_build
    from builder.root import store_root

    if ast is None:
        ast = _read_dockerfile(request)
    options = _plan_options(request, all_stages)
    if remote is not None:  # a build: base images' configs come from the store, else from their registries
        return plan_build(ast, options, remote.base_config)
    # Base images' configs come from the store when it exists; printing a plan never creates one.
    root = store_root(ctx.args.root, ctx.environ)
    if not (root / "oci-layout").exists():
        return plan_build(ast, options)
    layout = ctx.store.layout
    return plan_build(ast, options, lambda ref, platform: base_config(layout, ref, platform))


def _note_syntax(plan: BuildPlan, quiet: bool) -> None:
    syntax = plan.directives.syntax
    if syntax and not quiet:
        print(
            f"NOTE: {plan.path}:{plan.directives.syntax_line}: syntax={syntax} is noted and not fetched: "
            "pybuild reads Dockerfile syntax 1.x with its own front end",
            file=sys.stderr,
        )


def _warn(plan: BuildPlan) -> None:
    for warning in plan.warnings:
        print(f"WARNING: {warning.render(plan.path)}", file=sys.stderr)
    if plan.unused_build_args:
        names = ", ".join(plan.unused_build_args)
        print(f"WARNING: one or more build args were not consumed: [{names}]", file=sys.stderr)
    if plan.checks.error and plan.warnings:
        raise DockerfileError(f"{len(plan.warnings)} build check warnings and the check directive says error=true")


def _epoch(ctx: _Context, request: BuildRequest) -> int | None:
    """SOURCE_DATE_EPOCH from the environment or a build arg (as BuildKit reads it); --reproducible means 0."""
    from builder.commit import source_date_epoch

    epoch = source_date_epoch(ctx.environ)
    if epoch is None and "SOURCE_DATE_EPOCH" in request.build_args:
        epoch = source_date_epoch({"SOURCE_DATE_EPOCH": request.build_args["SOURCE_DATE_EPOCH"]})
    if epoch is None and ctx.args.reproducible:
        epoch = 0
    return epoch


def cmd_build(ctx: _Context) -> int:
    args = ctx.args
    request = _build_request(ctx)
    if args.print_plan or args.check:
        plan = _plan(ctx, request, all_stages=args.check and not request.target)
        _note_syntax(plan, args.quiet)
        if args.check:
            return _report_checks(ctx, plan)
        _warn(plan)
        ctx.out.write(_json(plan.to_json(), indent=2, ensure_ascii=False) + "\n")
        return 0
    from builder import cgroups
    from builder.mounts import parse_allow, read_agents, read_secrets
    from builder.plan import check_dockerfile
    from builder.progress import Progress
    from builder.solve import BuildOptions, BuildResult, solve
    from oci.compression import Compression
    from oci.frozen import FrozenMap

    # The whole Dockerfile is read and checked before anything touches the store or the network.
    ast = _read_dockerfile(request)
    check_dockerfile(ast, _plan_options(request, all_stages=False))
    try:
        compression = Compression.parse(args.compression)
    except ValueError as err:
        raise UsageError(str(err)) from None
    outputs: list[OutputSpec] = []
    if args.output or args.push:  # only a build that exports needs the exporters (and docker archives, and tar)
        from builder.export import check_compression, check_destination, export_image, parse_output

        outputs = [parse_output(text) for text in args.output]
        if args.push:
            outputs.append(parse_output("type=registry"))
        for spec in outputs:
            check_destination(spec, store=ctx.store)
            check_compression(spec, compression)
    if sum(spec.to_stdout for spec in outputs) > 1:
        raise UsageError("only one --output can write to standard output")
    names = _parse_refs(request.tags)
    cache_from: tuple[CacheSpec, ...] = ()
    cache_to: tuple[CacheSpec, ...] = ()
    if args.cache_from or args.cache_to:  # only a build that shares its cache needs the cache formats
        from builder.cacheshare import check_cache_destination, parse_cache_option

        cache_from = tuple(parse_cache_option(text, "--cache-from") for text in args.cache_from)
        cache_to = tuple(parse_cache_option(text, "--cache-to") for text in args.cache_to)
        for spec in cache_to:
            check_cache_destination(spec.path, ctx.store)
    secrets = read_secrets(args.secret, ctx.environ)
    agents = FrozenMap(read_agents(args.ssh, ctx.environ))
    allow = parse_allow(args.allow)
    epoch = _epoch(ctx, request)
    remote = _remote(ctx, refresh=args.pull)
    plan = _plan(ctx, request, all_stages=False, remote=remote, ast=ast)
    _note_syntax(plan, args.quiet)
    _warn(plan)
    log_file = open(args.log_file, "w", encoding="utf-8") if args.log_file else None  # noqa: SIM115
    progress = Progress("quiet" if args.quiet else args.progress, log_file=log_file)
    options = BuildOptions(
        context=request.context,
        dockerfile=request.dockerfile,
        contexts=request.contexts,
        network=args.network,
        epoch=epoch,
        build_args=request.build_args,
        no_cache=args.no_cache,
        no_cache_filter=frozenset(name for text in args.no_cache_filter for name in text.split(",") if name),
        names=tuple(str(ref) for ref in names),
        cache_from=cache_from,
        cache_to=cache_to,
        remote=remote,
        jobs=args.jobs,
        secrets=secrets,
        ssh=agents,
        allow=allow,
        run_limits=cgroups.Limits(args.memory, args.pids_limit),
        precompressor=_precompressor(ctx, outputs, compression),
    )
    result: BuildResult | None = None
    try:
        result = solve(plan, ctx.store, options, progress)
        image = result.image
        for ref in names:
            ctx.store.layout.tag(str(ref), image.descriptor)
            progress.status(f"naming to {ref}")
        if options.precompressor is not None:
            options.precompressor.wait(progress.status)
        for spec in outputs:
            export_image(
                spec,
                image,
                store=ctx.store,
                compression=compression,
                names=names,
                epoch=epoch,
                stdout=sys.stdout.buffer,
                on_status=progress.status,
                remote=remote,
            )
        progress.status(f"image {image.id}")
    finally:
        if options.precompressor is not None:
            options.precompressor.close()
        if result is not None:
            result.release()
        progress.done()
        if log_file is not None:
            log_file.close()
    if args.iidfile:
        _write_iidfile(Path(args.iidfile), str(image.id))
    if args.quiet and not any(spec.to_stdout for spec in outputs):
        print(str(image.id), file=ctx.out)
    return 0


def _precompressor(ctx: _Context, outputs: list[OutputSpec], compression: Compression) -> Precompressor | None:
    """What compresses the image's layers while the build runs, when an output will carry them compressed."""
    from oci.compression import Compression

    kinds = {spec.compression or compression for spec in outputs if spec.type in ("oci", "docker") or spec.push}
    kinds.discard(Compression.NONE)
    if not kinds:
        return None
    from builder.compressed import Precompressor

    return Precompressor(ctx.store, sorted(kinds, key=lambda kind: kind.value))


def _write_iidfile(path: Path, text: str) -> None:
    from oci.store import atomic_file

    with atomic_file(path.absolute()) as f:
        f.write(text.encode())


def _report_checks(ctx: _Context, plan: BuildPlan) -> int:
    if ctx.args.format == "json":
        for warning in plan.warnings:
            record = {"rule": warning.rule, "line": warning.line, "message": warning.message, "file": plan.path}
            ctx.out.write(_json(record) + "\n")
    else:
        for warning in plan.warnings:
            ctx.out.write(f"{warning.render(plan.path)}\n")
        count = len(plan.warnings)
        summary = "no warnings found" if not count else f"{count} warning{'s' if count > 1 else ''} found"
        print(f"Check complete, {summary}.", file=sys.stderr)
    return 1 if plan.warnings else 0


def _no_subcommand(ctx: _Context) -> int:
    raise UsageError(f"{ctx.args.command} needs a subcommand", hint=f"see 'pybuild {ctx.args.command} --help'")


def cmd_context_ls(ctx: _Context) -> int:
    from builder.context import list_context

    args = ctx.args
    context = Path(args.context)
    if not context.is_dir():
        raise UsageError(f'unable to prepare context: path "{args.context}" not found')
    listing = list_context(context, Path(args.file) if args.file else None, show_excluded=args.why)
    if args.format == "json":
        for row in listing.entries:
            ctx.out.write(_json(row.to_json(), ensure_ascii=False) + "\n")
        return 0
    source = str(listing.ignore_file) if listing.ignore_file else "no ignore file"
    print(f"context {context} ({source})", file=sys.stderr)
    header = ["PATH", "KIND", "SIZE"] + (["SENT", "WHY"] if args.why else [])
    table = [header]
    for row in listing.entries:
        cells = [row.path, row.kind.value, _human_size(row.size) if row.kind.value == "file" else "-"]
        if args.why:
            cells += ["yes" if row.included else "no", row.reason]
        table.append(cells)
    _table(table, ctx.out)
    return 0


def _ago(created: str) -> str:
    from datetime import UTC, datetime

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
    if seconds < 1:
        return "Less than a second ago"
    return "1 second ago" if seconds == 1 else f"{seconds} seconds ago"


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
    from builder.images import filter_images, list_images, parse_image_filters

    args = ctx.args
    texts = list(args.filter) + ([f"reference={args.reference}"] if args.reference else [])
    filters = parse_image_filters(texts)
    layout = ctx.store.layout
    rows = filter_images(layout, list_images(layout, ctx.platform), filters, ctx.platform)
    if args.format == "json":
        for row in rows:
            ctx.out.write(_json(row.to_json(), sort_keys=True) + "\n")
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


def cmd_inspect(ctx: _Context) -> int:
    from builder.images import inspect_image

    results: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in ctx.args.names:
        try:
            results.append(inspect_image(ctx.store.layout, name, ctx.platform))
        except BuildError as err:
            missing.append(str(err))
    ctx.out.write(_json(results, indent=4, sort_keys=False) + "\n")
    if missing:
        raise BuildError(missing[0] if len(missing) == 1 else "; ".join(missing))
    return 0


# ------------------------------------------------------------------------------------------------ store verbs


def _familiar_ref(ref: Reference | str) -> str:
    """A name as docker prints it: ``busybox:latest``, ``registry.example.com/app@sha256:…``."""
    if isinstance(ref, str):
        return ref
    return ref.familiar() + (f":{ref.tag}" if ref.tag else "") + (f"@{ref.digest}" if ref.digest else "")


def _ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_tag(ctx: _Context) -> int:
    from builder.images import tag_image

    tag_image(ctx.store.layout, ctx.args.source, ctx.args.target, ctx.platform)
    return 0


def cmd_rmi(ctx: _Context) -> int:
    from builder import storeops

    args = ctx.args
    failed = 0
    for name in args.names:
        try:
            removed = storeops.remove_image(ctx.store, name, force=args.force, platform=ctx.platform)
        except BuildError as err:  # as docker rmi: report it, go on with the other names, fail at the end
            _report(err)
            failed += 1
            continue
        for ref in removed.untagged:
            print(f"Untagged: {_familiar_ref(ref)}", file=ctx.out)
        if removed.image is not None:
            print(f"Deleted: {removed.image}", file=ctx.out)
            for digest, _size in removed.swept.blobs:
                if digest != removed.image:
                    print(f"Deleted: {digest}", file=ctx.out)
    return 1 if failed else 0


def cmd_prune(ctx: _Context) -> int:
    from builder import storeops

    args = ctx.args
    options = storeops.PruneOptions(until=min((seconds for _, seconds in args.filter), default=None))
    agreed = None
    if sys.stdin.isatty() and not args.force and args.format != "json":
        planned = storeops.plan_prune(ctx.store, options)
        if planned.images or planned.swept.blobs or planned.swept.snapshots:
            swept = planned.swept
            sys.stderr.write(
                "WARNING! This will remove:\n"
                f"  - all dangling images ({len(planned.images)})\n"
                f"  - all blobs no image, running build or cached step needs ({len(swept.blobs)})\n"
                f"  - all snapshots no image or cached step needs ({len(swept.snapshots)})\n"
                f"({_human_size(planned.reclaimed)} in all)\n"
                "Are you sure you want to continue? [y/N] "
            )
            sys.stderr.flush()
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                raise BuildError("aborted")
        agreed = {image.digest for image in planned.images}
    result = storeops.prune(ctx.store, options, only=agreed)
    if args.format == "json":
        _json_out(ctx, result.to_json())
        return 0
    for title, lines in (
        ("Deleted Images:", [f"deleted: {image.id or image.digest}" for image in result.images]),
        ("Deleted Blobs:", [f"deleted: {digest} ({_human_size(size)})" for digest, size in result.swept.blobs]),
        ("Deleted Snapshots:", [f"deleted: {d} ({_human_size(size)})" for d, size in result.swept.snapshots]),
    ):
        if lines:
            ctx.out.write(title + "\n" + "".join(line + "\n" for line in lines) + "\n")
    ctx.out.write(f"Total reclaimed space: {_human_size(result.reclaimed)}\n")
    return 0


def cmd_fsck(ctx: _Context) -> int:
    from builder import fsck
    from builder.root import store_root

    args = ctx.args
    store = fsck.open_for_check(store_root(args.root, ctx.environ))  # not ctx.store: its sweep hides leftovers
    report = fsck.check_store(store, repair=args.repair)
    if args.format == "json":
        _json_out(ctx, report.to_json())
    else:
        for finding in report.findings:
            ctx.out.write(finding.line() + "\n")
        checked = report.checked
        counts = [
            (checked.blobs, f"blob ({_human_size(checked.bytes)})", f"blobs ({_human_size(checked.bytes)})"),
            (checked.images, "image", "images"),
            (checked.cache_records, "cache record", "cache records"),
            (checked.snapshots, "snapshot", "snapshots"),
            (checked.cache_mounts, "cache mount", "cache mounts"),
            (checked.memos, "compressed-copy memo", "compressed-copy memos"),
        ]
        text = ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in counts)
        ctx.out.write(f"checked {text}\n{report.summary()}\n")
    return 0 if report.clean else 1


def cmd_info(ctx: _Context) -> int:
    from builder import info

    found = info.collect(ctx.store)
    if ctx.args.format == "json":
        _json_out(ctx, found.to_json())
    else:
        ctx.out.write(info.render(found))
    return 0


def cmd_system_df(ctx: _Context) -> int:
    from builder import storeops
    from builder.commit import rfc3339

    args = ctx.args
    usage = storeops.system_df(ctx.store, ctx.platform)
    if args.format == "json":
        if args.verbose:
            _json_out(ctx, usage.to_json(verbose=True))
        else:
            for row in usage.rows:  # one object per line, as docker system df --format json
                ctx.out.write(_json(row.to_json()) + "\n")
        return 0
    if args.verbose:
        ctx.out.write("Images space usage:\n\n")
        table = [["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE", "UNIQUE SIZE", "CONTAINERS"]]
        for image in usage.images:
            ref = image.summary.reference
            table.append(
                [
                    ref.familiar() if ref else "<none>",
                    ref.tag if ref and ref.tag else "<none>",
                    image.summary.image.id.short,
                    _ago(image.summary.image.config.created),
                    _human_size(image.size),
                    _human_size(image.shared),
                    _human_size(image.unique),
                    str(image.containers),
                ]
            )
        _table(table, ctx.out)
        ctx.out.write(f"\nBuild cache usage: {_human_size(usage.cache.total)}\n\n")
        table = [["CACHE ID", "STEP", "SIZE", "LAST USED", "USAGE", "SHARED"]]
        for record in usage.cache.records:
            entry = record.entry
            table.append(
                [
                    entry.key.short,
                    _cut(entry.step, 40),
                    _human_size(entry.size),
                    _ago(rfc3339(entry.last_used)),
                    str(entry.hits),
                    "true" if record.shared else "false",
                ]
            )
        _table(table, ctx.out)
        ctx.out.write("\n")
    table = [["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]]
    for row in usage.rows:
        share = f" ({row.reclaimable * 100 // row.size}%)" if row.size else ""
        table.append(
            [row.type, str(row.total), str(row.active), _human_size(row.size), _human_size(row.reclaimable) + share]
        )
    _table(table, ctx.out)
    return 0


def cmd_history(ctx: _Context) -> int:
    from builder.images import image_history

    args = ctx.args
    rows = image_history(ctx.store.layout, args.image, ctx.platform)

    def shown_id(text: str) -> str:
        return text if args.no_trunc or text == "<missing>" else text.removeprefix("sha256:")[:12]

    if args.quiet:
        for row in rows:
            ctx.out.write(shown_id(row.id) + "\n")
        return 0
    if args.format == "json":
        for row in rows:  # one object per line, as docker history --format json
            data = {**row.to_json(), "CreatedSince": _ago(row.created) if row.created else "N/A"}
            ctx.out.write(_json(data, ensure_ascii=False) + "\n")
        return 0
    table = [["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]]
    for row in rows:
        created_by = " ".join(row.created_by.replace("\t", " ").splitlines())
        table.append(
            [
                shown_id(row.id),
                _ago(row.created) if row.created else "N/A",
                created_by if args.no_trunc else _ellipsis(created_by, 45),
                _human_size(row.size),
                row.comment,
            ]
        )
    _table(table, ctx.out)
    return 0


def _archive_compression(text: str | None) -> Compression | None:
    if not text:
        return None
    from oci.compression import Compression

    try:
        return Compression.parse(text)
    except ValueError as err:
        raise UsageError(str(err)) from None


def cmd_save(ctx: _Context) -> int:
    from builder import storeops

    args = ctx.args
    compression = _archive_compression(args.compression)
    with storeops.archive_output(args.output, sys.stdout.buffer) as out:
        storeops.save_images(
            ctx.store, args.images, out, format=args.format, platform=ctx.platform, compression=compression
        )
    return 0


def cmd_load(ctx: _Context) -> int:
    from builder import storeops

    args = ctx.args
    loaded = storeops.load_images(ctx.store, args.input or "-", sys.stdin.buffer, ctx.platform)
    for item in loaded:
        for ref, old in item.replaced:
            name = _familiar_ref(ref)
            print(f"The image {name} already exists, renaming the old one with ID {old} to empty string", file=ctx.out)
        for ref in item.names:
            print(f"Loaded image: {_familiar_ref(ref)}", file=ctx.out)
        if not item.names:
            print(f"Loaded image ID: {item.id}", file=ctx.out)
    return 0


def cmd_export(ctx: _Context) -> int:
    from builder import storeops

    args = ctx.args
    with storeops.archive_output(args.output, sys.stdout.buffer) as out:
        storeops.export_rootfs(ctx.store, args.image, out, ctx.platform)
    return 0


# ----------------------------------------------------------------------------------------------------- cache


def cmd_cache(ctx: _Context) -> int:
    raise UsageError(
        "cache needs a subcommand: ls, inspect, du, prune, explain or mounts", hint="see 'pybuild cache --help'"
    )


@contextmanager
def _cache_index(ctx: _Context) -> Iterator[CacheIndex]:
    from builder.cache import CacheIndex

    index = CacheIndex(ctx.store.root)
    try:
        yield index
    finally:
        index.close()


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _json(value: object, **options: Any) -> str:
    import json

    return json.dumps(value, **options)


def _json_out(ctx: _Context, value: object) -> None:
    ctx.out.write(_json(value, indent=2, ensure_ascii=False) + "\n")


def cmd_cache_ls(ctx: _Context) -> int:
    from builder import cacheops
    from builder.commit import rfc3339

    args = ctx.args
    with _cache_index(ctx) as index:
        entries = cacheops.list_entries(index)
    if args.quiet:
        for entry in entries:
            ctx.out.write(f"{entry.key}\n")
        return 0
    if args.format == "json":
        _json_out(ctx, [entry.to_json() for entry in entries])
        return 0
    table = [["KEY", "STEP", "STAGE", "CREATED", "LAST USED", "HITS", "SIZE"]]
    for entry in entries:
        table.append(
            [
                str(entry.key) if args.no_trunc else entry.key.short,
                entry.step if args.no_trunc else _cut(entry.step, 48),
                entry.stage,
                _ago(rfc3339(entry.created)),
                _ago(rfc3339(entry.last_used)),
                str(entry.hits),
                _human_size(entry.size),
            ]
        )
    _table(table, ctx.out)
    return 0


def cmd_cache_inspect(ctx: _Context) -> int:
    from builder import cacheops

    with _cache_index(ctx) as index:
        found, errors = cacheops.inspect_entries(ctx.store, index, ctx.args.keys)
    _json_out(ctx, found)
    if errors:
        raise BuildError("; ".join(errors))
    return 0


def cmd_cache_du(ctx: _Context) -> int:
    from builder import cacheops
    from builder.commit import rfc3339

    args = ctx.args
    with _cache_index(ctx) as index:
        usage = cacheops.disk_usage(ctx.store, index)
    if args.format == "json":
        _json_out(ctx, usage.to_json(verbose=args.verbose))
        return 0
    if args.verbose:
        table = [["KEY", "STEP", "SIZE", "SHARED", "LAST USED"]]
        for record in usage.records:
            entry = record.entry
            table.append(
                [
                    entry.key.short,
                    _cut(entry.step, 48),
                    _human_size(entry.size),
                    "yes" if record.shared else "no",
                    _ago(rfc3339(entry.last_used)),
                ]
            )
        _table(table, ctx.out)
        ctx.out.write("\n")
    for label, value in (
        ("Entries:", str(usage.entries)),
        ("Total:", _human_size(usage.total)),
        ("Shared:", _human_size(usage.shared)),
        ("Reclaimable:", _human_size(usage.reclaimable)),
    ):
        ctx.out.write(f"{label:<14}{value}\n")
    return 0


def cmd_cache_prune(ctx: _Context) -> int:
    from builder import cacheops

    args = ctx.args
    options = cacheops.PruneOptions(
        all=args.all,
        keep_storage=args.keep_storage,
        until=min((seconds for _, seconds in args.filter), default=None),
    )
    # Cache mounts are build cache too (buildx prune removes them): with --all, those no build uses go, unless
    # --keep-storage asks to trim the step cache only.
    mounts = _cache_mounts(ctx) if args.all and args.keep_storage is None else None
    with _cache_index(ctx) as index:
        agreed: set[str] | None = None
        mount_ids: list[str] | None = None
        if sys.stdin.isatty() and not args.force and args.format != "json":
            planned = cacheops.plan_prune(ctx.store, index, options)
            mount_ids = [m.id for m in mounts.plan_prune(until=options.until)] if mounts else []
            if planned or mount_ids:
                also = f" and {len(mount_ids)} cache mounts" if mount_ids else ""
                sys.stderr.write(
                    f"WARNING! This will remove {len(planned)} cache entries{also}. Are you sure you want to continue? "
                    "[y/N] "
                )
                sys.stderr.flush()
                if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                    raise BuildError("aborted")
            agreed = {str(entry.key) for entry in planned}
        result = cacheops.prune(ctx.store, index, options, only=agreed)
    removed = None
    if mounts is not None:
        removed = mounts.remove(mount_ids) if mount_ids is not None else mounts.prune(until=options.until)
    reclaimed = result.reclaimed + (removed.reclaimed if removed else 0)
    if args.format == "json":
        data = result.to_json()
        if removed is not None:
            data["cache_mounts"] = [m.id for m in removed.removed]
            data["reclaimed"] = reclaimed
        _json_out(ctx, data)
        return 0
    also = f" and {len(removed.removed)} cache mounts" if removed and removed.removed else ""
    ctx.out.write(f"Deleted {len(result.deleted)} cache entries{also}, reclaimed {_human_size(reclaimed)}\n")
    return 0


_STATUS = {"cached": "CACHED", "built": "MISS", "failed": "FAILED"}


def cmd_cache_explain(ctx: _Context) -> int:
    from builder import cacheops
    from builder.commit import rfc3339

    with _cache_index(ctx) as index:
        build = cacheops.last_build(index)
    if build is None:
        raise BuildError("no build has finished yet")
    if ctx.args.format == "json":
        _json_out(ctx, build.to_json())
        return 0
    ctx.out.write(f"{build.dockerfile} (finished {_ago(rfc3339(build.finished))})\n")
    for step in build.steps:
        line = f"{_STATUS.get(step.status, step.status.upper()):<8}[{step.stage}] line {step.line}: {step.step}"
        if step.status == "built" and not step.reason:
            line += f": after the miss at line {step.after}" if step.after is not None else ": after an earlier miss"
        elif step.status != "cached" and step.reason:
            line += f": {step.reason}"
        ctx.out.write(line.replace("\n", " ") + "\n")
    return 0


def _cache_mounts(ctx: _Context) -> Any:
    from builder.cachemounts import CacheMountStore

    return CacheMountStore(ctx.store.root, ctx.store.limits)


def cmd_cache_mounts(ctx: _Context) -> int:
    raise UsageError(
        "cache mounts needs a subcommand: ls, rm, export or import", hint="see 'pybuild cache mounts --help'"
    )


def cmd_cache_mounts_ls(ctx: _Context) -> int:
    from builder.commit import rfc3339

    mounts = _cache_mounts(ctx).list()
    if ctx.args.quiet:
        ctx.out.write("".join(f"{mount.id}\n" for mount in mounts))
        return 0
    if ctx.args.format == "json":
        _json_out(ctx, [mount.to_json() for mount in mounts])
        return 0
    table = [["ID", "SIZE", "LAST USED", "USES"]]
    for mount in mounts:
        size = _human_size(mount.size) if mount.size is not None else "-"
        used = "in use" if mount.in_use else _ago(rfc3339(mount.last_used))
        table.append([mount.id.replace("\n", "\\n"), size, used, str(mount.uses)])
    _table(table, ctx.out)
    return 0


def cmd_cache_mounts_rm(ctx: _Context) -> int:
    removed = _cache_mounts(ctx).remove(ctx.args.ids)
    for mount in removed.removed:
        print(f"Removed: {mount.id}", file=ctx.out)
    problems = [f"cache mount {id!r} is in use by a running build" for id in removed.in_use]
    problems += [f"no cache mount {id!r}" for id in removed.missing]
    if problems:
        raise BuildError("; ".join(problems))
    return 0


def _move_cache_mounts(ctx: _Context, where: str, verb: str) -> Any:
    """``cache mounts export|import``: move the mounts with progress, one line per mount moved; the result."""
    from builder.cachemountshare import export_mounts, import_mounts, parse_location
    from builder.progress import Progress

    args = ctx.args
    location = parse_location(where, verb)
    remote = _remote(ctx) if location.ref is not None else None
    operation = export_mounts if verb == "export" else import_mounts
    progress = Progress("quiet" if args.quiet else args.progress)
    try:
        moved = operation(_cache_mounts(ctx), location, args.ids, remote=remote, on_status=progress.status)
    finally:
        progress.done()
    if not args.quiet:
        for id, size in moved.mounts:
            print(f"{verb}ed {id} ({_human_size(size)})", file=ctx.out)
    return moved


def cmd_cache_mounts_export(ctx: _Context) -> int:
    exported = _move_cache_mounts(ctx, ctx.args.destination, "export")
    if not ctx.args.quiet:
        digest = f" ({exported.manifest})" if exported.manifest is not None else ""
        print(f"Exported {len(exported.mounts)} cache mounts to {exported.location}{digest}", file=ctx.out)
    return 0


def cmd_cache_mounts_import(ctx: _Context) -> int:
    imported = _move_cache_mounts(ctx, ctx.args.source, "import")
    if not ctx.args.quiet:
        print(f"Imported {len(imported.mounts)} cache mounts from {imported.location}", file=ctx.out)
    if imported.in_use:
        names = ", ".join(repr(id) for id in imported.in_use)
        raise BuildError(f"not replaced, in use by a running build: {names}", hint="import again once it is done")
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def _memory_arg(text: str) -> int:
    from builder import cgroups

    try:
        return cgroups.parse_memory(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _pids_arg(text: str) -> int | None:
    from builder import cgroups

    try:
        return cgroups.parse_pids(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_run_limits(p: argparse.ArgumentParser, what: str, note: str = "") -> None:
    """``--memory`` and ``--pids-limit`` (docker's and buildah's names), enforced by ``builder.cgroups``."""
    p.add_argument(
        "--memory",
        type=_memory_arg,
        metavar="SIZE",
        help=f"limit {what} to SIZE of memory, swap included (512m, 1g; at least 6m; a cgroup){note}",
    )
    p.add_argument(
        "--pids-limit",
        type=_pids_arg,
        metavar="N",
        help=f"limit {what} to N processes and threads at once (-1 or 0: no limit; a cgroup){note}",
    )


def _size_arg(text: str) -> int:
    from builder.units import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"expected a whole number (0: no limit), not {text!r}")
    return int(text)


def _count_arg(text: str) -> int:
    try:
        return _count(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _prune_filter(text: str) -> tuple[str, float]:
    key, eq, value = text.partition("=")
    if key != "until" or not eq:
        raise argparse.ArgumentTypeError(f"unsupported filter {text!r} (supported: until=DURATION)")
    from builder.units import parse_duration

    try:
        return key, parse_duration(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# ---------------------------------------------------------------------------------------------- diff, layers

_DIFF_EPILOG = """Layers are numbered from 1, bottom first, each with the history line that made it. A: added,
C: changed (the path existed in a lower layer), D: deleted (a whiteout, everything lower layers had
under an opaque directory, or what a file replaced). Sizes are the bytes each tar member stores.
Instead of an image, give a cache key (or a unique prefix, as 'pybuild cache ls' shows it): the
layers are then that cached step's chain, the layers under it and its own.

examples:
  pybuild diff app
  pybuild diff app --layer -1
  pybuild diff 3f2a9c81d0e4 --format json | jq -r '.[-1].changes[] | select(.kind == "D") | .path'"""

_LAYERS_EPILOG = """Image size: the bytes of every layer's regular files. Wasted: those the final filesystem
does not show, because a later layer overwrote or deleted the file (or its own layer wrote it
twice); hardlinks share one copy. Efficiency: 1 - wasted / image size. Unlike dive, the copy
the image still shows is never counted as waste. Inefficient files: the paths with wasted
bytes, each with the number of layers that wrote or deleted it. IMAGE may be a cache key.

examples:
  pybuild layers app
  pybuild layers app --top 0 --no-trunc
  pybuild layers app --format json | jq '.wasted_bytes, .efficiency'"""


def _layer_number(text: int, count: int, name: str) -> int:
    """``--layer N``: 1 is the bottom layer, -1 the top one."""
    number = text + count + 1 if text < 0 else text
    if not 1 <= number <= count:
        raise UsageError(f"--layer {text}: {name} has {count} layers (1 to {count}, or -1 for the top one)")
    return number


def _created_by(source: layerview.LayerSource, width: int | None) -> str:
    text = " ".join((source.created_by or source.comment).split()) or "-"
    return text if width is None else _cut(text, width)


def _warn_unread(seen: layerview.Browse, upto: int) -> None:
    for number, diff in enumerate(seen.analysis.layers[:upto], 1):
        if diff.error:
            print(f"WARNING: layer {number}: {diff.error}; the layers above it are read without it", file=sys.stderr)


def cmd_diff(ctx: _Context) -> int:
    from builder import layerview

    args = ctx.args
    target = layerview.find_target(ctx.store, args.image, ctx.platform)
    count = len(target.sources)
    number = _layer_number(args.layer, count, args.image) if args.layer is not None else None
    seen = layerview.browse(ctx.store.layout.store, target, upto=number, limits=ctx.store.limits)
    numbers = [number] if number is not None else list(range(1, count + 1))
    if args.format == "json":
        _json_out(ctx, [seen.layer_json(n, changes=True) for n in numbers])
    else:
        ctx.out.write(f"{target.title}\n")
        for n in numbers:
            source, diff = target.sources[n - 1], seen.analysis.layers[n - 1]
            size = "missing" if diff.error else _human_size(diff.size)
            ctx.out.write(f"\nlayer {n} of {count}  {source.descriptor.digest.encoded[:12]}  {size}  ")
            ctx.out.write(_created_by(source, None) + "\n")
            if diff.error:
                ctx.out.write(f"  ({diff.error})\n")
            elif not diff.changes:
                ctx.out.write("  (no changes)\n")
            sizes = ["-" if c.type == "dir" else _human_size(c.size) for c in diff.changes]
            width = max(map(len, sizes), default=0)
            for change, shown in zip(diff.changes, sizes, strict=True):
                link = f" -> {change.link}" if change.type == "symlink" else ""
                link = f" link to {change.link}" if change.type == "hardlink" else link
                ctx.out.write(f"{change.kind}  {shown:>{width}}  {change.path}{link}\n")
    _warn_unread(seen, number or count)
    return 0


def cmd_layers(ctx: _Context) -> int:
    from builder import layerview

    args = ctx.args
    target = layerview.find_target(ctx.store, args.image, ctx.platform)
    seen = layerview.browse(ctx.store.layout.store, target, limits=ctx.store.limits)
    analysis = seen.analysis
    if args.format == "json":
        _json_out(ctx, seen.summary_json())
        _warn_unread(seen, len(analysis.layers))
        return 0
    ctx.out.write(f"{target.title}\n\n")
    table = [["LAYER", "SIZE", "FILES", "ADDED", "CHANGED", "DELETED", "CREATED BY"]]
    for number, (source, diff) in enumerate(zip(target.sources, analysis.layers, strict=True), 1):
        counts = ["-"] * 4 if diff.error else [str(diff.files), *(str(diff.count(k)) for k in "ACD")]
        size = "missing" if diff.error else _human_size(diff.size)
        table.append([str(number), size, *counts, _created_by(source, None if args.no_trunc else 60)])
    _table(table, ctx.out)
    ctx.out.write("\n")
    for label, value in (
        ("Image size:", f"{_human_size(analysis.size)} ({analysis.size} bytes)"),
        ("Wasted:", f"{_human_size(analysis.wasted)} ({analysis.wasted} bytes)"),
        ("Efficiency:", f"{analysis.efficiency:.2%}"),
    ):
        ctx.out.write(f"{label:<13}{value}\n")
    shown = analysis.inefficient if args.top <= 0 else analysis.inefficient[: args.top]
    if shown:
        more = len(analysis.inefficient) - len(shown)
        ctx.out.write(f"\nInefficient files{f' (top {len(shown)}, {more} more)' if more else ''}:\n")
        rows = [["COUNT", "WASTED", "PATH"]]
        rows += [[str(waste.count), _human_size(waste.wasted), waste.path] for waste in shown]
        _table(rows, ctx.out)
    _warn_unread(seen, len(analysis.layers))
    return 0


# ---------------------------------------------------------------------------------------------------- parser

_EXAMPLES = {
    "context ls": """examples:
  pybuild context ls .
  pybuild context ls --why .
  pybuild context ls --why -f build/app.Dockerfile --format json . | jq 'select(.Included|not)'""",
    "build": """examples:
  pybuild build --print-plan .
  pybuild --print-plan --build-arg VERSION=1.2 --target runtime .
  pybuild build --check -f docker/app.Dockerfile .
  pybuild build --print-plan - < Dockerfile
  pybuild build --secret id=npmrc,src=$HOME/.npmrc --secret id=token,env=GITHUB_TOKEN -t app .
  pybuild build --ssh default -t app .        # RUN --mount=type=ssh git clone git@github.com:org/private.git
  pybuild build --allow security.insecure .   # RUN --security=insecure runs with every capability""",
    "import": """examples:
  pybuild import rootfs.tar -t mybase:1.0
  pybuild import rootfs.tar.zst -t mybase --change 'CMD ["sh"]' --change 'ENV LANG=C.UTF-8'
  tar -C rootfs -c . | pybuild import - mybase:latest""",
    "run": """examples:
  pybuild run --rm busybox echo hello
  pybuild run -e GREETING=hi -w /tmp busybox sh -c 'echo $GREETING from $(pwd)'
  pybuild run --network none myapp:dev ./run-tests.sh
  pybuild run --commit myapp:patched myapp:1.0 sh -c 'rm -rf /var/cache/apt/*'""",
    "pull": """examples:
  pybuild pull alpine:3.20
  pybuild pull registry.example.com/team/base@sha256:4f2a...
  pybuild --insecure-registry build-cache:5000 pull build-cache:5000/base:1""",
    "push": """examples:
  pybuild push registry.example.com/team/app:1.0
  pybuild push app:1.0 localhost:5000/app:1.0 --chunk-size 16MB
  pybuild push --compression zstd --digestfile app.digest registry.example.com/team/app:1.0
  pybuild push --sign-key pybuild.key registry.example.com/team/app:1.0""",
    "login": """examples:
  pybuild login registry.example.com -u ci --password-stdin < token.txt
  echo "$TOKEN" | pybuild login -u ci --password-stdin ghcr.io""",
    "logout": """examples:
  pybuild logout registry.example.com""",
    "key generate": """The private key is PKCS#8 PEM (not cosign's encrypted key format), encrypted when
PYBUILD_KEY_PASSWORD is set; the public key is SubjectPublicKeyInfo PEM, as cosign verify --key and
the containers policy's keyPath (skopeo, podman) take it.

examples:
  PYBUILD_KEY_PASSWORD=$(cat key-password) pybuild key generate
  pybuild key generate --output ci/release""",
    "sign": """Signs the manifest digest NAME names in its registry and pushes the signature beside it as
cosign does (tag sha256-HEX.sig in the same repository); earlier signatures are kept. skopeo and
podman (built with sigstore support) verify it with a sigstoreSigned policy (signedIdentity
matchRepository) and registries.d use-sigstore-attachments: true. An encrypted key's password
comes from PYBUILD_KEY_PASSWORD.

examples:
  pybuild sign --key pybuild.key registry.example.com/team/app:1.0
  pybuild sign --key pybuild.key registry.example.com/team/app@sha256:4f2a...
  pybuild push --sign-key pybuild.key app:1.0 registry.example.com/team/app:1.0""",
    "verify": """Exit status 0: a signature by KEY names this digest and repository; 1: none does.

examples:
  pybuild verify --key pybuild.pub registry.example.com/team/app:1.0
  pybuild verify --key pybuild.pub --format json registry.example.com/team/app:1.0 | jq '.[0].critical'""",
    "images": """Untagged images (a name moved to another image, or a load without names) are listed as
<none> <none>; 'pybuild prune' removes them. pybuild keeps no intermediate images, so -a lists
the same images (untagged ones included) as without it.

examples:
  pybuild images
  pybuild images busybox
  pybuild images --format json | jq -r .Name
  pybuild images -q --filter 'reference=busybox*' --filter 'reference=app*'
  pybuild images --filter dangling=true""",
    "inspect": """examples:
  pybuild inspect busybox
  pybuild inspect busybox app:1.0 | jq -r '.[].Id'
  pybuild inspect busybox | jq -r '.[0].Config.Cmd'""",
    "tag": """TARGET is normalised as docker does (app means docker.io/library/app:latest). The image TARGET
named before stays, untagged, unless another name holds it.

examples:
  pybuild tag busybox mybase:1.0
  pybuild tag 6dc5177be56f registry.example.com/team/base:1.0""",
    "rmi": """Each name is untagged; the image is deleted (with the blobs and snapshots only it needed) once no
other name holds it. Blobs the step cache holds stay until 'pybuild cache prune'.

examples:
  pybuild rmi app:1.0
  pybuild rmi -f 6dc5177be56f""",
    "prune": """Removes untagged (dangling) images, then every blob and snapshot that no image, running build,
running container or cached step needs. Names are never removed, so nothing a tagged image needs
goes, and a rebuild stays cached. docker image prune -a also deletes tagged images no container
uses; pybuild leaves names to 'pybuild rmi', and keeps no intermediate images, so -a removes the
same as without it. Asks first when standard input is a terminal, unless -f.

examples:
  pybuild prune
  pybuild prune -f --filter until=24h
  pybuild prune -f --format json | jq .SpaceReclaimed""",
    "system": """examples:
  pybuild system df
  pybuild system df -v""",
    "system df": """RECLAIMABLE is what 'pybuild prune' would free (for the build cache: 'pybuild cache prune --all').
Cache mounts (RUN --mount=type=cache): ACTIVE are those a running build uses; the rest is reclaimable by
'pybuild cache prune --all' ('pybuild prune' never removes them).

examples:
  pybuild system df
  pybuild system df -v
  pybuild system df --format json | jq -r 'select(.Type == "Images") | .Reclaimable'""",
    "fsck": """Hashes every blob, and checks index.json's images (manifests, configs and layers present and
whole), the step cache's records and leases, snapshots, cache mounts, the memos of compressed
copies and sources.db. One line per finding, then 'N problems'. Leftovers (files of killed
commands, snapshots nothing needs, leases of builds that died) are listed too, but harmless: only
problems make the exit status 1. --repair deletes corrupt blobs, then whatever needed them (index
entries and cache records, now dangling), then snapshots nothing needs (as 'pybuild prune' decides)
and leftovers; never what a running build or container holds. A corrupt index.json or cache.db is
reported, not repaired.

examples:
  pybuild fsck
  pybuild fsck --repair
  pybuild fsck --format json | jq -r '.findings[] | select(.repairable | not) | .subject'""",
    "history": """examples:
  pybuild history app
  pybuild history --no-trunc --format json app | jq -r .CreatedBy""",
    "save": """The docker format is what docker save writes (docker load and skopeo docker-archive: read it); the
oci format is an OCI image layout tar (skopeo oci-archive:, podman load). Layers go as the store
keeps them (uncompressed for what pybuild built, as docker save writes them) unless --compression
says otherwise; then the same image ID comes back from a load.

examples:
  pybuild save -o app.tar app:1.0
  pybuild save --format oci -o app-oci.tar app:1.0 busybox
  pybuild save app | ssh build-host docker load""",
    "load": """Reads either format (docker save's archive, or an OCI image layout tar), plain or gzip/zstd
compressed; every blob and layer is verified on the way into the store.

examples:
  pybuild load -i app.tar
  docker save busybox | pybuild load""",
    "export": """The image's flattened root filesystem (every layer applied, deleted files gone), as docker export.

examples:
  pybuild export -o rootfs.tar app
  pybuild export app | tar -t | head""",
    "cache": """examples:
  pybuild cache ls
  pybuild cache du --verbose
  pybuild cache explain
  pybuild cache prune --filter until=24h""",
    "cache ls": """examples:
  pybuild cache ls
  pybuild cache ls --no-trunc
  pybuild cache ls --format json | jq -r '.[] | select(.hits == 0) | .key'""",
    "cache inspect": """examples:
  pybuild cache inspect 3f2a9c
  pybuild cache inspect sha256:3f2a9c81d0e4 | jq '.[0].changes'""",
    "cache du": """examples:
  pybuild cache du
  pybuild cache du --verbose
  pybuild cache du --format json | jq .reclaimable""",
    "cache prune": """examples:
  pybuild cache prune
  pybuild cache prune --all --force
  pybuild cache prune --filter until=72h --keep-storage 10GB
  pybuild cache prune --all --format json | jq .reclaimed""",
    "cache explain": """examples:
  pybuild build -t app . && pybuild cache explain
  pybuild cache explain --format json | jq -r '.steps[] | select(.status == "built") | .reason'""",
    "cache mounts": """Cache mounts are what RUN --mount=type=cache,id=ID,target=DIR keeps between builds; they are
never part of an image or a cache key. 'pybuild prune' leaves them; 'pybuild cache prune --all'
removes those no running build uses.

examples:
  pybuild cache mounts ls
  pybuild cache mounts export /ci-cache/mounts && pybuild cache mounts import /ci-cache/mounts
  pybuild cache mounts export type=registry,ref=registry.example.com/team/app-mounts:main""",
    "cache mounts ls": """examples:
  pybuild cache mounts ls
  pybuild cache mounts ls --format json | jq -r '.[] | select(.size > 1e9) | .id'""",
    "cache mounts rm": """examples:
  pybuild cache mounts rm /root/.cache/pip
  pybuild cache mounts ls -q | grep go-build | xargs pybuild cache mounts rm""",
    "cache mounts export": """Tarballs are written deterministically: an unchanged mount gives the same bytes,
so exporting or pushing it again writes or uploads nothing new.

examples:
  pybuild cache mounts export ./mounts
  pybuild cache mounts export --id /var/cache/apt --id /var/lib/apt ./mounts
  pybuild cache mounts export type=registry,ref=registry.example.com/team/app-mounts:main""",
    "cache mounts import": """Every tarball is checked against the index, and refused if it holds anything
pybuild's writer never makes (absolute names, .., entries below a symlink); owners, modes and
times are kept.

examples:
  pybuild cache mounts import ./mounts
  pybuild cache mounts import --id /root/.cache/go-build ./mounts
  pybuild cache mounts import type=registry,ref=registry.example.com/team/app-mounts:main""",
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

    def verb(
        name: str,
        help_text: str,
        run: Callable[[_Context], int],
        *,
        group: Any = verbs,
        parent: str = "",
        description: str = "",
    ) -> _Parser:
        """A verb (or, in ``group``, a sub-verb of ``parent``: ``cache ls``), with its examples as the epilog."""
        full = f"{parent} {name}" if parent else name
        sub = group.add_parser(
            name,
            help=help_text,
            description=description or help_text,
            epilog=_EXAMPLES.get(full),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        sub.set_defaults(run=run)
        return sub

    p = verb("build", "Build an image from a Dockerfile", cmd_build)
    p.add_argument("context", metavar="CONTEXT", help="the build context directory, or - for a Dockerfile on stdin")
    p.add_argument("-f", "--file", metavar="PATH", help="the Dockerfile (default: CONTEXT/Dockerfile; - for stdin)")
    p.add_argument("-t", "--tag", action="append", default=[], metavar="NAME[:TAG]", help="name the image")
    p.add_argument("--build-arg", action="append", default=[], metavar="NAME[=VALUE]", help="set a build argument")
    p.add_argument("--target", metavar="STAGE", help="the stage to build (default: the last)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="the target platform (default: this machine's)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="add a label to the image")
    p.add_argument("--build-context", action="append", default=[], metavar="NAME=VALUE", help="an extra named context")
    p.add_argument("--print-plan", action="store_true", help="print the resolved build plan as JSON and stop")
    p.add_argument("--check", action="store_true", help="run the build checks and stop (exit 1 on warnings)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="--check output format")
    p.add_argument("--progress", default="auto", choices=("auto", "tty", "plain", "quiet"), help="progress output")
    p.add_argument("--log-file", metavar="FILE", help="also write the full plain progress log to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress; print the image ID")
    p.add_argument("--iidfile", metavar="FILE", help="write the image ID to FILE")
    p.add_argument(
        "-o",
        "--output",
        action="append",
        default=[],
        metavar="type=TYPE,dest=PATH",
        help="also export the image: type=oci|docker|local|tar (repeatable; DIR alone means type=local)",
    )
    p.add_argument(
        "--compression",
        default="gzip",
        metavar="gzip|zstd|uncompressed",
        help="layer compression in --output images (default gzip; the store keeps layers uncompressed)",
    )
    p.add_argument(
        "--network", default="default", choices=("default", "none", "host"), help="RUN's network (default: host's)"
    )
    _add_run_limits(p, "each RUN", "; not in the cache key, as in docker: a cached step is reused")
    p.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="id=ID[,src=FILE|,env=VAR]",
        help="a secret for RUN --mount=type=secret (repeatable; id=ID alone: the variable ID if set, else the file ID)",
    )
    p.add_argument(
        "--ssh",
        action="append",
        default=[],
        metavar="default|ID[=SOCKET]",
        help="an SSH agent for RUN --mount=type=ssh (repeatable; no SOCKET: $SSH_AUTH_SOCK)",
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="security.insecure|network.host",
        help="allow RUN --security=insecure (every capability); network.host is accepted (RUN's network is the host's)",
    )
    p.add_argument(
        "--reproducible",
        action="store_true",
        help="clamp every timestamp to SOURCE_DATE_EPOCH (0 when unset) so the same inputs give the same digest",
    )
    p.add_argument("--no-cache", action="store_true", help="run every step (the new results are still cached)")
    p.add_argument("--pull", action="store_true", help="ask the registry what each FROM tag names, even if stored")
    p.add_argument("--push", action="store_true", help="push the image under every -t name (= --output type=registry)")
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=0,
        metavar="N",
        help="build up to N independent stages at once (default: one per CPU; 1: one stage after another)",
    )
    _add_chunk_size(p)
    p.add_argument(
        "--cache-from",
        action="append",
        default=[],
        metavar="type=local,src=DIR|type=registry,ref=REF",
        help="also look for cached steps in this exported cache: a directory, or a registry (fetched lazily)",
    )
    p.add_argument(
        "--cache-to",
        action="append",
        default=[],
        metavar="type=local,dest=DIR|type=registry,ref=REF[,mode=min|max]",
        help="export the build's cached steps to a directory or a registry (mode=min: the image's; max: every stage's)",
    )
    p.add_argument(
        "--no-cache-filter",
        action="append",
        default=[],
        metavar="STAGE[,STAGE...]",
        help="run every step of these stages (repeatable)",
    )

    p = verb("run", "Run a command in a throwaway container of an image", cmd_run)
    p.add_argument("image", metavar="IMAGE", help="the image (a name, an ID, or pulled when the store lacks it)")
    p.add_argument("command", metavar="COMMAND", nargs=argparse.REMAINDER, help="replaces the image's CMD")
    p.add_argument("--rm", action="store_true", help="accepted for docker's sake: pybuild keeps no stopped containers")
    p.add_argument("-i", "--interactive", action="store_true", help="accepted: standard input always passes through")
    p.add_argument("-t", "--tty", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-e", "--env", action="append", default=[], metavar="NAME[=VALUE]", help="set a variable")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]", help="run as this user (default: the image's USER)")
    p.add_argument("-w", "--workdir", metavar="DIR", help="the working directory (default: the image's WORKDIR)")
    p.add_argument("--entrypoint", metavar="CMD", help="replace the image's ENTRYPOINT ('' clears it)")
    p.add_argument(
        "--network", default="default", choices=("default", "none", "host"), help="default/host: the host's network"
    )
    p.add_argument("--hostname", metavar="NAME", help="the container's hostname (default: its short ID)")
    _add_run_limits(p, "the container")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="the image's platform (default: this machine's)")
    p.add_argument("--commit", metavar="NAME", help="keep the container's changes as a new image NAME")
    p.add_argument("-q", "--quiet", action="store_true", help="no pull progress")

    p = verb("diff", "Show what each layer of an image (or a cached step) adds, changes and deletes", cmd_diff)
    p.epilog = _DIFF_EPILOG
    p.add_argument("image", metavar="IMAGE|KEY", help="an image (name, ID or digest), or a cache key or its prefix")
    p.add_argument("--layer", type=int, metavar="N", help="only layer N (1 is the bottom one, -1 the top one)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index to show")

    p = verb("layers", "Summarise the layers of an image (or a cached step) and the bytes they waste", cmd_layers)
    p.epilog = _LAYERS_EPILOG
    p.add_argument("image", metavar="IMAGE|KEY", help="an image (name, ID or digest), or a cache key or its prefix")
    p.add_argument("--top", type=int, default=10, metavar="N", help="inefficient files to list (default 10; 0: all)")
    p.add_argument("--no-trunc", action="store_true", help="show whole history lines")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index to show")

    p = verb("tag", "Give an image another name, as docker tag", cmd_tag)
    p.add_argument("source", metavar="SOURCE", help="the image: a name, an image ID (or prefix) or a manifest digest")
    p.add_argument("target", metavar="TARGET[:TAG]", help="the new name (it moves here if it named another image)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index SOURCE is")

    p = verb("rmi", "Remove image names, and images no name holds any more, as docker rmi", cmd_rmi)
    p.add_argument("names", metavar="IMAGE", nargs="+", help="a name, an image ID (or prefix) or a manifest digest")
    p.add_argument(
        "-f", "--force", action="store_true", help="remove an image named by ID even if several names hold it"
    )
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index is meant")

    p = verb("prune", "Remove dangling images, and the blobs and snapshots nothing needs", cmd_prune)
    p.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="accepted for docker's sake: names are never pruned (use rmi) and there are no intermediate images, "
        "so it removes the same untagged images",
    )
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        type=_prune_filter,
        metavar="until=DURATION",
        help="only images created, and blobs and snapshots written, longer ago than DURATION (24h, 90m, 7d)",
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    p = verb(
        "info",
        "Show pybuild's version, its store, and what this machine lets RUN do",
        cmd_info,
        description="Show pybuild's version, the store's root and what it holds (by count: 'system df' has sizes), "
        "and whether this machine has what RUN relies on (root, overlayfs, the cgroup controllers behind --memory "
        "and --pids-limit). Run by an ordinary user, it shows the rootless mode (with subordinate ids or one id), "
        "the id maps, and the snapshotter RUN uses: overlay, or copy where overlayfs does not mount in a user "
        "namespace (PYBUILD_SNAPSHOTTER=overlay|copy chooses).",
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    p = verb("system", "Show the store's disk usage", _no_subcommand)
    system_verbs = p.add_subparsers(dest="system_command", metavar="COMMAND", parser_class=_Parser)
    p = verb(
        "df",
        "Show disk usage by images, blobs, snapshots, the step cache and cache mounts",
        cmd_system_df,
        group=system_verbs,
        parent="system",
        description="Show disk usage by images, blobs, snapshots, the step cache and cache mounts, with what pruning "
        "would reclaim.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also each image's and each cache entry's space")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index to show")

    p = verb("fsck", "Check every blob, image, snapshot and cache record in the store, and repair", cmd_fsck)
    p.add_argument("--repair", action="store_true", help="remove what is corrupt, dangling or left over")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    p = verb("history", "Show an image's history: each step, its time, command and layer size", cmd_history)
    p.add_argument("image", metavar="IMAGE", help="a name, an image ID (or prefix) or a manifest digest")
    p.add_argument("--no-trunc", action="store_true", help="full IDs and commands")
    p.add_argument("-q", "--quiet", action="store_true", help="only the IDs (<missing> below the image itself)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index to show")

    p = verb("save", "Write images to an archive that docker load or skopeo reads", cmd_save)
    p.add_argument("images", metavar="IMAGE", nargs="+", help="a name (a repository alone: all its tags) or an ID")
    p.add_argument("-o", "--output", metavar="FILE", help="the archive (default: standard output, never a terminal)")
    p.add_argument(
        "--format", choices=("docker", "oci"), default="docker", help="docker (docker save's, default) or oci"
    )
    p.add_argument(
        "--compression",
        metavar="gzip|zstd|uncompressed",
        help="compress the layers (default: as the store keeps them; zstd only with --format oci)",
    )
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index to save")

    p = verb("load", "Load images from a docker or OCI archive into the store", cmd_load)
    p.add_argument("-i", "--input", metavar="FILE", help="the archive (default: standard input)")
    p.add_argument("-q", "--quiet", action="store_true", help="accepted for docker's sake (there is no progress)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform archive to load")

    p = verb("export", "Write an image's flattened root filesystem as a tar, as docker export", cmd_export)
    p.add_argument("image", metavar="IMAGE", help="a name, an image ID (or prefix) or a manifest digest")
    p.add_argument("-o", "--output", metavar="FILE", help="the tar (default: standard output, never a terminal)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index")

    p = verb("pull", "Pull an image from a registry into the store", cmd_pull)
    p.add_argument("name", metavar="NAME[:TAG|@DIGEST]", help="the image (short names are Docker Hub's)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="the platform to pull (default: this machine's)")
    p.add_argument("--progress", default="auto", choices=("auto", "tty", "plain", "quiet"), help="progress output")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image name")

    p = verb("push", "Push an image from the store to a registry", cmd_push)
    p.add_argument("name", metavar="NAME[:TAG]", help="the image in the store")
    p.add_argument("destination", metavar="DEST", nargs="?", help="push under this name instead (default: NAME)")
    p.add_argument(
        "--platform", metavar="OS/ARCH[/VARIANT]", help="which of NAME's platforms (default: this machine's)"
    )
    p.add_argument(
        "--compression",
        default="gzip",
        metavar="gzip|zstd|uncompressed",
        help="layer compression (default gzip; each layer is compressed once and remembered)",
    )
    _add_chunk_size(p)
    p.add_argument("--digestfile", metavar="FILE", help="write the pushed manifest's digest to FILE")
    p.add_argument(
        "--sign-key",
        metavar="KEY",
        help="then sign the pushed digest with this private key, as 'pybuild sign' does",
    )
    p.add_argument("--progress", default="auto", choices=("auto", "tty", "plain", "quiet"), help="progress output")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the manifest digest")

    p = verb("login", "Save credentials for a registry (in Docker's config.json)", cmd_login)
    p.add_argument("server", metavar="SERVER", nargs="?", help="the registry (default: docker.io)")
    p.add_argument("-u", "--username", metavar="USER", help="the user name")
    p.add_argument("-p", "--password", metavar="PASSWORD", help="the password (prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    p = verb("logout", "Forget the credentials saved for a registry", cmd_logout)
    p.add_argument("server", metavar="SERVER", nargs="?", help="the registry (default: docker.io)")

    p = verb("key", "Make a key pair for signing images", _no_subcommand)
    key_verbs = p.add_subparsers(dest="key_command", metavar="COMMAND", parser_class=_Parser)
    p = verb(
        "generate",
        "Write a new ECDSA P-256 key pair: PREFIX.key (private) and PREFIX.pub (public)",
        cmd_key_generate,
        group=key_verbs,
        parent="key",
        description="Write a new ECDSA P-256 key pair for 'pybuild sign': PREFIX.key and PREFIX.pub. Existing files "
        "are never overwritten.",
    )
    p.add_argument(
        "-o", "--output", metavar="PREFIX", default="pybuild", help="write PREFIX.key and PREFIX.pub (default: pybuild)"
    )

    p = verb("sign", "Sign an image in a registry (sigstore/cosign signature)", cmd_sign)
    p.add_argument("name", metavar="NAME[:TAG|@DIGEST]", help="the image in its registry")
    p.add_argument(
        "--key", required=True, metavar="KEY", help="the private key: PKCS#8 PEM, password in $PYBUILD_KEY_PASSWORD"
    )

    p = verb("verify", "Check an image's sigstore/cosign signature against a public key", cmd_verify)
    p.add_argument("name", metavar="NAME[:TAG|@DIGEST]", help="the image in its registry")
    p.add_argument("--key", required=True, metavar="KEY.pub", help="the public key (PEM)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="json: the verified payloads")

    p = verb("context", "Inspect build contexts", _no_subcommand)
    context_verbs = p.add_subparsers(dest="context_command", metavar="COMMAND", parser_class=_Parser)
    p = verb(
        "ls",
        "List what a build would send, and why anything is left out",
        cmd_context_ls,
        group=context_verbs,
        parent="context",
        description="List the files a build of CONTEXT would send, after .dockerignore. With --why, list the "
        "excluded paths too, each with the ignore rule (file:line: pattern) that decided it.",
    )
    p.add_argument("context", metavar="CONTEXT", help="the build context directory")
    p.add_argument(
        "-f", "--file", metavar="PATH", help="the Dockerfile (its PATH.dockerignore wins over .dockerignore)"
    )
    p.add_argument("--why", action="store_true", help="also list excluded paths, with the rule that decided each")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")

    p = verb("cache", "Manage the step cache and cache mounts", cmd_cache)
    cache_verbs = p.add_subparsers(dest="cache_command", metavar="COMMAND", parser_class=_Parser)

    def cache_verb(name: str, help_text: str, description: str, run: Callable[[_Context], int]) -> _Parser:
        return verb(name, help_text, run, group=cache_verbs, parent="cache", description=description)

    p = cache_verb(
        "ls",
        "List the step cache's entries",
        "List the step cache's entries, most recently used first.",
        cmd_cache_ls,
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--no-trunc", action="store_true", help="full keys and steps")
    p.add_argument("-q", "--quiet", action="store_true", help="only full keys")

    p = cache_verb(
        "inspect",
        "Show cache entries as JSON, with the files each one's layer changes",
        "Show cache entries as JSON: the key's record, the layers under the step, and the files its layer adds (A), "
        "changes (C) and deletes (D).",
        cmd_cache_inspect,
    )
    p.add_argument("keys", metavar="KEY", nargs="+", help="a key, or a unique prefix of its hex digits")
    p.add_argument("--format", choices=("json",), default="json", help="output format (JSON)")

    p = cache_verb(
        "du",
        "Show the step cache's disk usage",
        "Show the step cache's disk usage: the distinct layers its entries hold, how much of that images in the "
        "store also use (shared), and the rest, which 'cache prune --all' would free (reclaimable).",
        cmd_cache_du,
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the entries with a layer, largest first")

    p = cache_verb(
        "prune",
        "Remove step cache entries",
        "Remove step cache entries that no running build uses, and the layers, snapshots and compressed copies only "
        "they held. By default, only entries whose layer no image in the store uses.",
        cmd_cache_prune,
    )
    p.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="also entries whose layer an image uses, or with none, the cache mounts no build uses and the "
        "context stat caches (unless --keep-storage or --filter)",
    )
    p.add_argument(
        "--keep-storage",
        type=_size_arg,
        metavar="SIZE",
        help="remove least recently used entries only until the cache's layers fit in SIZE (10GB, 512MB, 2GiB)",
    )
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        type=_prune_filter,
        metavar="until=DURATION",
        help="only entries last used longer ago than DURATION (24h, 90m, 7d)",
    )
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    p = cache_verb(
        "explain",
        "Explain the cache hits and misses of the last build",
        "Show, for each step of the last finished build, whether it came from the cache and, if not, why.",
        cmd_cache_explain,
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    p = cache_verb(
        "mounts",
        "Manage RUN --mount=type=cache directories: list, remove, export, import",
        "Manage the directories RUN --mount=type=cache keeps in the store between builds, and carry them to other "
        "stores (CI runners) as zstd tarballs in a directory or as an OCI artifact in a registry.",
        cmd_cache_mounts,
    )
    mount_verbs = p.add_subparsers(dest="mounts_command", metavar="COMMAND", parser_class=_Parser)

    def mounts_verb(name: str, help_text: str, description: str, run: Callable[[_Context], int]) -> _Parser:
        return verb(name, help_text, run, group=mount_verbs, parent="cache mounts", description=description)

    p = mounts_verb(
        "ls",
        "List cache mounts",
        "List cache mounts, most recently used first, with the size of their files (measured when it changed).",
        cmd_cache_mounts_ls,
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument("-q", "--quiet", action="store_true", help="only the ids")

    p = mounts_verb("rm", "Remove cache mounts", "Remove cache mounts that no running build uses.", cmd_cache_mounts_rm)
    p.add_argument("ids", metavar="ID", nargs="+", help="a cache mount's id, as 'pybuild cache mounts ls' shows it")

    p = mounts_verb(
        "export",
        "Export cache mounts to a directory or a registry",
        "Write cache mounts (all, or those named with --id) to DEST: a directory (cachemounts.json and one zstd "
        "tarball per mount; it then holds exactly these) or type=registry,ref=REPO:TAG (an OCI artifact).",
        cmd_cache_mounts_export,
    )
    p.add_argument("destination", metavar="DEST", help="a directory, or type=registry,ref=REPO:TAG")
    p.add_argument("--id", dest="ids", action="append", default=[], metavar="ID", help="only this mount (repeatable)")
    p.add_argument("--progress", default="auto", choices=("auto", "tty", "plain", "quiet"), help="progress output")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")

    p = mounts_verb(
        "import",
        "Import cache mounts from a directory or a registry",
        "Read cache mounts (all, or those named with --id) from SRC, as export wrote them. Each replaces the "
        "store's mount of the same id whole (contents are not merged), unless a running build uses it: then it "
        "is left alone, the others are imported, and the command fails.",
        cmd_cache_mounts_import,
    )
    p.add_argument("source", metavar="SRC", help="a directory, or type=registry,ref=REPO:TAG")
    p.add_argument("--id", dest="ids", action="append", default=[], metavar="ID", help="only this mount (repeatable)")
    p.add_argument("--progress", default="auto", choices=("auto", "tty", "plain", "quiet"), help="progress output")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")

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
    p.add_argument(
        "--compression",
        default="uncompressed",
        metavar="gzip|zstd|uncompressed",
        help="how the store keeps the layer (default uncompressed: outputs and pushes compress it once, later)",
    )
    p.add_argument("--progress", default="auto", choices=("auto", "tty", "plain", "quiet"), help="progress output")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")

    p = verb("images", "List images in the store", cmd_images)
    p.add_argument("reference", metavar="REPOSITORY[:TAG]", nargs="?", help="only images matching this (a glob)")
    p.add_argument(
        "-a", "--all", action="store_true", help="the same list: pybuild keeps no intermediate images to add"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    p.add_argument("--digests", action="store_true", help="show manifest digests")
    p.add_argument("--no-trunc", action="store_true", help="full image IDs")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dangling=true|false, reference=GLOB, label=KEY[=VALUE], before=IMAGE, since=IMAGE (repeatable: "
        "values of one key match when any does, label when all do; different keys must all match)",
    )
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index to show")

    p = verb("inspect", "Show an image's configuration, manifest and layers as JSON", cmd_inspect)
    p.add_argument("names", metavar="IMAGE", nargs="+", help="a name, image ID (or prefix) or manifest digest")
    p.add_argument("--format", choices=("json",), default="json", help="output format (JSON)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index to show")
    return parser


def _add_chunk_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chunk-size",
        type=_size_arg,
        metavar="SIZE",
        help="upload blobs in chunks of SIZE (e.g. 16MB), resuming after a failed chunk (default: one request)",
    )


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
    parser.add_argument(
        "--insecure-registry",
        action="append",
        metavar="HOST[:PORT]",
        default=argparse.SUPPRESS if after_verb else [],
        help="allow plain HTTP and unverified TLS for this registry (loopback hosts need no flag)",
    )
    parser.add_argument(
        "--max-layer-size",
        type=_size_arg,
        metavar="SIZE",
        default=argparse.SUPPRESS if after_verb else None,
        help="refuse a layer or archive that expands to more than SIZE (512m, 2g; 0: no limit; default: "
        "$PYBUILD_MAX_LAYER_SIZE, else 32g)",
    )
    parser.add_argument(
        "--max-layer-entries",
        type=_count_arg,
        metavar="N",
        default=argparse.SUPPRESS if after_verb else None,
        help="refuse a layer or archive of more than N entries (0: no limit; default: $PYBUILD_MAX_LAYER_ENTRIES, "
        "else 10000000)",
    )


_GLOBAL_WITH_VALUE = ("--root", "--insecure-registry", "--max-layer-size", "--max-layer-entries")
_GLOBAL_FLAGS = ("--debug", "--version", "-h", "--help")


def _with_default_verb(parser: _Parser, argv: Sequence[str]) -> list[str]:
    """``pybuild -t app .`` means ``pybuild build -t app .``: build is the default verb.

    A first argument that is neither an option nor a command nor an existing path but is close to a command's
    name is a typo, and says so rather than being taken for a build context.
    """
    known = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    args = list(argv)
    i = 0
    while i < len(args):
        word = args[i]
        if word in _GLOBAL_WITH_VALUE:
            i += 2
            continue
        if word in _GLOBAL_FLAGS or word.startswith(tuple(f"{option}=" for option in _GLOBAL_WITH_VALUE)):
            if word in ("-h", "--help", "--version"):
                return args
            i += 1
            continue
        break
    if i >= len(args) or args[i] in known:
        return args
    word = args[i]
    if not word.startswith("-") and word != "-" and not os.path.exists(word):
        import difflib

        close = difflib.get_close_matches(word, sorted(known), n=1)
        if close:
            raise UsageError(f"unknown command {word!r}", hint=f"did you mean '{close[0]}'?")
    return args[:i] + ["build"] + args[i:]


# ------------------------------------------------------------------------------------------------------- main


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt: every ``finally`` on the way out
    runs (containers killed, scratch removed), and the exit status is 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated(signum)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    debug = "--debug" in argv
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        parser = _build_parser()
        args = parser.parse_args(_with_default_verb(parser, argv))
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        if environ.get("PYBUILD_SNAPSHOTTER") or "builder.copysnap" in sys.modules:
            from builder import copysnap

            copysnap.choose(environ.get("PYBUILD_SNAPSHOTTER", ""))
        if os.geteuid() != 0:
            _enter_user_namespace()
        return int(args.run(_Context(args, environ, sys.stdout)))
    except BrokenPipeError:
        # The reader went away (``pybuild images | head``): not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (BuildError, OCIError, OSError) as err:
        if debug:
            import traceback

            traceback.print_exc()
        _report(err)
        return err.exit_code if isinstance(err, BuildError) else 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except _Terminated as stop:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 128 + stop.signum
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else 0 if code is None else 1
    except Exception as err:  # noqa: BLE001 - the one place that turns anything into an exit code
        if debug:
            import traceback

            traceback.print_exc()
        print(f"{PROG}: internal error: {type(err).__name__}: {err} (run with --debug for details)", file=sys.stderr)
        return 1


def _enter_user_namespace() -> None:
    """Rootless: every verb runs as root of a user namespace of its own (``builder.userns``), so the store's files
    keep the owners they have in images, whoever runs pybuild."""
    from builder import userns

    try:
        userns.enter(userns.plan_for_me())
    except userns.NoUserNamespace as err:
        # Listing, inspecting or pushing needs no privilege; RUN says it needs a namespace when it is reached.
        userns.unavailable = err.message


def _report(err: BaseException) -> None:
    if isinstance(err, OSError) and not isinstance(err, OCIError):
        where = f": {err.filename}" if err.filename else ""
        message = f"{err.strerror or err}{where}"
    else:
        message = str(err)
    hint = getattr(err, "hint", "")
    if not hint and isinstance(err, LimitExceeded):  # only a verb hits a limit, and _Context imported builder.limits
        from builder.limits import limit_hint

        hint = limit_hint(err)
    line = f"{PROG}: {message}" + (f" ({hint})" if hint else "")
    print(line.replace("\n", " "), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
