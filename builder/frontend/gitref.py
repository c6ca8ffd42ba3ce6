"""ADD's git sources, read as BuildKit's front end reads them (frontend/dockerfile/dfgitutil, util/gitutil).

A source is a git repository when it is an ``http(s)://`` URL whose path ends in ``.git``, a ``git://`` or
``ssh://`` URL, an SCP-style ``user@host:path``, or (pybuild's addition, for local repositories; BuildKit has no
file transport) a ``file://`` URL. After the ``#`` comes ``REF[:SUBDIR]`` (a branch, tag or commit, and a
directory of the repository), or BuildKit's CSV form ``##ref=R,commit=C,subdir=S``; the query may also say
``ref``, ``tag``, ``branch``, ``subdir``, ``checksum`` (or ``commit``), ``keep-git-dir`` and ``submodules``.

Pure: strings in, values and sentences out. ``pick_ref`` is BuildKit's choice among what ``git ls-remote``
lists for a ref (source/git/source.go): the ref as given, else a branch, else a tag; an annotated tag also
names the commit it points to.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from builder.errors import DockerfileError

__all__ = [
    "GitRef",
    "Picked",
    "check_checksum",
    "is_commit_sha",
    "is_git_source",
    "parse_git_ref",
    "pick_ref",
    "redact",
]

_SCHEME = re.compile(r"^[a-zA-Z0-9]+://")
_SCHEMES = ("http", "https", "ssh", "git", "file")
# sshutil's SCP-style form: USER@HOST:PATH (a user is required, so "C:/path" or "host:port" are not git).
_SCP = re.compile(r"^([a-zA-Z0-9\-_]+)@([a-zA-Z0-9\-.]+):(.*?)(?:#(.*))?$")
_COMMIT = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


@dataclass(frozen=True)
class GitRef:
    """One git source. ``remote`` is what git is given (no fragment, no BuildKit query)."""

    remote: str
    scheme: str  # "https", "http", "ssh", "git" or "file"
    ref: str = ""  # a branch, tag, commit or other ref; "" for the remote's default branch
    subdir: str = ""
    checksum: str = ""  # a commit (or annotated tag) the resolved ref must start with
    keep_git_dir: bool | None = None
    submodules: bool | None = None

    @property
    def shown(self) -> str:
        return redact(self.remote)


@dataclass(frozen=True)
class Picked:
    sha: str  # what the ref names (an annotated tag's tag object)
    ref: str  # the full ref it was found under ("" for a commit given by its hash)
    commit: str = ""  # an annotated tag's commit ("" otherwise)


def is_commit_sha(text: str) -> bool:
    return bool(_COMMIT.match(text))


@dataclass(frozen=True)
class _URL:
    """A URL split as RFC 3986 (and Go's net/url) splits it; the parts are kept as written."""

    scheme: str
    netloc: str
    path: str
    query: str
    fragment: str

    @classmethod
    def split(cls, url: str) -> _URL:
        scheme, _, rest = url.partition("://")
        rest, _, fragment = rest.partition("#")
        rest, _, query = rest.partition("?")
        slash = rest.find("/")
        netloc, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        return cls(scheme.lower(), netloc, path, query, fragment)

    def base(self, netloc: str | None = None) -> str:
        """The URL without query and fragment."""
        return f"{self.scheme}://{self.netloc if netloc is None else netloc}{self.path}"


def _unquote(text: str, query: bool = False) -> str:
    """%XX escapes decoded (and ``+``, a space in a query), as Go's net/url decodes them."""
    if query:
        text = text.replace("+", " ")
    raw = re.sub(rb"%([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "replace")


def redact(url: str) -> str:
    """The URL with its password masked (BuildKit's urlutil.RedactCredentials)."""
    if not _SCHEME.match(url):
        return url
    parts = _URL.split(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    shown = parts.base(f"{user}:xxxxx@{host}")
    return shown + (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def is_git_source(source: str) -> bool:
    try:
        return parse_git_ref(source) is not None
    except DockerfileError:
        return True  # a git source, badly written: parsing it again says what is wrong


def _fragment(fragment: str) -> tuple[str, str]:
    """(ref, subdir) from ``REF[:SUBDIR]`` or the CSV form ``#ref=R,commit=C,subdir=S``."""
    if fragment.startswith("#"):
        ref = commit = subdir = ""
        for field in fragment[1:].split(","):
            if not field:
                continue
            key, eq, value = field.partition("=")
            if not eq:
                raise DockerfileError(f"invalid field '{field}' must be a key=value pair")
            key = key.lower()
            if key == "ref":
                ref = value
            elif key == "commit":
                commit = value
            elif key == "subdir":
                subdir = value
            else:
                raise DockerfileError(f"unexpected key '{key}' in '{field}' (supported keys: ref, commit, subdir)")
        return ref or commit, subdir
    ref, _, subdir = fragment.partition(":")
    return ref, subdir


def _flag(name: str, values: list[str]) -> bool:
    if not values or values[0] == "":
        return True
    value = values[0].lower()
    if value in ("1", "t", "true"):
        return True
    if value in ("0", "f", "false"):
        return False
    raise DockerfileError(f"invalid {name} value: {values[0]!r}")


def _query(ref: GitRef, query: str) -> GitRef:
    """dfgitutil's loadQuery: the query's options, which may not contradict the fragment."""
    values: dict[str, list[str]] = {}
    for pair in query.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            values.setdefault(_unquote(key, query=True), []).append(_unquote(value, query=True))
    fields = dict(ref.__dict__)
    tag = branch = ""
    for key, given in values.items():
        if len(given) > 1:
            raise DockerfileError(f"query {key!r} has multiple values")
        if given[0] == "" and key not in ("submodules", "keep-git-dir"):
            raise DockerfileError(f"query {key!r} has no value")
        value = given[0]
        if key == "ref":
            if fields["ref"] and fields["ref"] != value:
                raise DockerfileError(f"ref conflicts: {fields['ref']!r} vs {value!r}")
            fields["ref"] = value
        elif key == "tag":
            tag = value
        elif key == "branch":
            branch = value
        elif key == "subdir":
            if fields["subdir"] and fields["subdir"] != value:
                raise DockerfileError(f"subdir conflicts: {fields['subdir']!r} vs {value!r}")
            fields["subdir"] = value
        elif key in ("checksum", "commit"):
            fields["checksum"] = value
        elif key == "keep-git-dir":
            fields["keep_git_dir"] = _flag(key, given)
        elif key == "submodules":
            fields["submodules"] = _flag(key, given)
        else:
            raise DockerfileError(f"unexpected query {key!r}")
    for name, value, prefix in (("tag", tag, "refs/tags/"), ("branch", branch, "refs/heads/")):
        if not value:
            continue
        if name == "branch" and tag:
            raise DockerfileError("branch conflicts with tag")
        full = value if value.startswith(prefix) else prefix + value
        if fields["ref"] and fields["ref"] != full:
            raise DockerfileError(f"ref conflicts: {fields['ref']!r} vs {full!r}")
        fields["ref"] = full
    if fields["checksum"] and not fields["ref"]:
        fields["ref"] = fields["checksum"]
    return GitRef(**fields)


def parse_git_ref(source: str) -> GitRef | None:
    """The git source ``source`` names, or None when it is not one (a local path or a plain http(s) URL)."""
    if source.startswith(("./", "../")):
        return None
    match = _SCHEME.match(source)
    if match is not None:
        scheme = match.group(0)[:-3].lower()
        if scheme not in _SCHEMES:
            return None
        parts = _URL.split(source)
        if scheme in ("http", "https") and not parts.path.endswith(".git"):
            return None
        remote = parts.base()
        ref, subdir = _fragment(_unquote(parts.fragment))
        git = GitRef(remote, scheme, ref, subdir)
        return _query(git, parts.query) if parts.query else git
    scp = _SCP.match(source)
    if scp is None:
        return None
    ref, subdir = _fragment(scp.group(4) or "")
    remote = source.split("#", 1)[0]
    return GitRef(remote, "ssh", ref, subdir)


def check_checksum(checksum: str) -> None:
    if checksum and not _HEX.match(checksum):
        raise DockerfileError(f"invalid checksum {checksum} for Git URL, expected hex commit hash")


def pick_ref(ref: str, listing: Sequence[str], checksum: str = "") -> Picked:
    """Which object ``ref`` names, from ``git ls-remote REMOTE REF REF^{}``'s lines, checked against ``checksum``
    (a prefix of the object or, for an annotated tag, of its commit)."""
    partial = "refs/" + ref.removeprefix("refs/")
    head = "refs/heads/" + ref.removeprefix("refs/heads/")
    tag = "refs/tags/" + ref.removeprefix("refs/tags/")
    found: dict[str, str] = {}
    for line in listing:
        sha, _, name = line.partition("\t")
        if name in (partial, head, tag, tag + "^{}"):
            found[name] = sha.strip()
    sha, used, annotated = found.get(partial, ""), partial, ""
    if not sha:
        sha, used = found.get(head, ""), head
    if not sha:
        sha, used = found.get(tag, ""), tag
        annotated = found.get(tag + "^{}", "")
    if not sha:
        raise DockerfileError(f"repository does not contain ref {ref}")
    if not is_commit_sha(sha):
        raise DockerfileError(f"invalid commit sha {sha!r}")
    if checksum and not sha.startswith(checksum) and not (annotated and annotated.startswith(checksum)):
        got = f"{sha} or {annotated}" if annotated else sha
        raise DockerfileError(f"expected checksum to match {checksum}, got {got}")
    return Picked(sha, used, annotated)
