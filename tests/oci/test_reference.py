"""Image references parse and normalise as Docker's distribution/reference does (ParseNormalizedNamed)."""

from __future__ import annotations

import pytest

from oci.digest import Digest
from oci.errors import InvalidReference, OCIError
from oci.reference import DOCKER_HUB, Reference

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"


def _parts(text: str) -> tuple[str, str, str, str | None]:
    ref = Reference.parse(text)
    return ref.registry, ref.repository, ref.tag, str(ref.digest) if ref.digest else None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", ("docker.io", "library/busybox", "latest", None)),
        ("busybox:1.36", ("docker.io", "library/busybox", "1.36", None)),
        ("user/app", ("docker.io", "user/app", "latest", None)),
        ("user/app/sub", ("docker.io", "user/app/sub", "latest", None)),
        ("docker.io/busybox", ("docker.io", "library/busybox", "latest", None)),
        ("docker.io/library/busybox:1", ("docker.io", "library/busybox", "1", None)),
        ("index.docker.io/library/x", ("docker.io", "library/x", "latest", None)),
        ("index.docker.io/x", ("docker.io", "library/x", "latest", None)),
        ("localhost:5000/app:1", ("localhost:5000", "app", "1", None)),
        ("localhost/app", ("localhost", "app", "latest", None)),
        ("example.com/a/b/c:tag", ("example.com", "a/b/c", "tag", None)),
        ("example.com:443/app", ("example.com:443", "app", "latest", None)),
        ("[::1]:5000/app", ("[::1]:5000", "app", "latest", None)),
        ("[2001:db8::1]/app:v1", ("[2001:db8::1]", "app", "v1", None)),
        ("Foo/bar", ("Foo", "bar", "latest", None)),
        ("a.b-c.d/x__y.z-w---v", ("a.b-c.d", "x__y.z-w---v", "latest", None)),
        ("app:Tag_1.2-rc", ("docker.io", "library/app", "Tag_1.2-rc", None)),
        ("app:_x", ("docker.io", "library/app", "_x", None)),
        ("localhost:5000", ("docker.io", "library/localhost", "5000", None)),
    ],
)
def test_parse_normalises(text: str, expected: tuple[str, str, str, str | None]) -> None:
    assert _parts(text) == expected


def test_digest_reference_gets_no_default_tag() -> None:
    ref = Reference.parse(f"app@{DIGEST}")
    assert (ref.registry, ref.repository, ref.tag) == (DOCKER_HUB, "library/app", "")
    assert ref.digest == Digest.parse(DIGEST)


def test_tag_and_digest_are_both_kept() -> None:
    ref = Reference.parse(f"app:1@{DIGEST}")
    assert (ref.repository, ref.tag, ref.digest) == ("library/app", "1", Digest.parse(DIGEST))


def test_registry_with_port_and_digest() -> None:
    ref = Reference.parse(f"localhost:5000/ns/app@{DIGEST}")
    assert (ref.registry, ref.repository, ref.tag) == ("localhost:5000", "ns/app", "")


def test_default_tag_can_be_changed() -> None:
    assert Reference.parse("app", default_tag="edge").tag == "edge"
    assert Reference.parse("app:1", default_tag="edge").tag == "1"


def test_registry_1_docker_io_is_kept_as_docker_does() -> None:
    # distribution/reference rewrites only "index.docker.io" to "docker.io" (and only then adds "library/");
    # "registry-1.docker.io/x" stays a reference to repository "x" on registry "registry-1.docker.io".
    ref = Reference.parse("registry-1.docker.io/x")
    assert (ref.registry, ref.repository) == ("registry-1.docker.io", "x")


def test_uppercase_single_name_must_be_lowercase() -> None:
    with pytest.raises(InvalidReference, match="lowercase"):
        Reference.parse("Busybox")


@pytest.mark.parametrize("text", ["user/App", "docker.io/library/Busybox", "example.com/a/B:1"])
def test_uppercase_repository_component_must_be_lowercase(text: str) -> None:
    with pytest.raises(InvalidReference, match="lowercase"):
        Reference.parse(text)


def test_uppercase_first_component_followed_by_slash_is_a_registry() -> None:
    assert Reference.parse("Example.COM/app").registry == "Example.COM"
    assert Reference.parse("LOCALHOST/app").registry == "LOCALHOST"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "app:",
        "app:tag:x",
        "app:" + "t" * 129,
        "app:.tag",
        "app:-tag",
        "app:ta/g",
        "a//b",
        "app/",
        "/app",
        ".",
        "..",
        "app@",
        "app@sha256:abc",
        f"app@sha256:{HEX.upper()}",
        f"app@md5:{HEX[:32]}",
        f"@{DIGEST}",
        "-app",
        "app-",
        "app_",
        "a...b",
        "a___b",
        "app name",
        "app\n",
        "exa_mple.com/app",
        "example.com:port/app",
        "-example.com/app",
        "[::1/app",
        "example.com/",
        "example.com//app",
        "http://example.com/app",
    ],
)
def test_invalid_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidReference):
        Reference.parse(text)


def test_tag_of_128_characters_is_the_maximum() -> None:
    assert Reference.parse("app:" + "t" * 128).tag == "t" * 128


def test_non_ascii_tag_is_refused() -> None:
    # The tag grammar is [\w][\w.-]{0,127} with Go's ASCII-only \w; "café" is not a valid tag.
    with pytest.raises(InvalidReference):
        Reference.parse("app:caf\u00e9")


def test_non_ascii_digit_tag_is_refused() -> None:
    with pytest.raises(InvalidReference):
        Reference.parse("app:\u0661\u0662")  # ARABIC-INDIC DIGITS ONE, TWO


def test_64_hex_name_is_refused_as_docker_does() -> None:
    # ParseNormalizedNamed: "cannot specify 64-byte hexadecimal strings" (they are image IDs).
    with pytest.raises(InvalidReference):
        Reference.parse(HEX)


def test_name_of_255_characters_is_accepted_after_normalisation() -> None:
    repo = "a" * (255 - len("example.com/"))
    ref = Reference.parse(f"example.com/{repo}")
    assert len(ref.name) == 255


def test_name_over_255_characters_is_refused() -> None:
    with pytest.raises(InvalidReference):
        Reference.parse("example.com/" + "a" * (256 - len("example.com/")))


def test_name_length_counts_the_normalised_name() -> None:
    # "docker.io/library/" is part of the name whose length is limited.
    name = "a" * (256 - len("docker.io/library/"))
    with pytest.raises(InvalidReference):
        Reference.parse(name)
    assert Reference.parse(name[:-1]).name == "docker.io/library/" + name[:-1]


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidReference):
        Reference.parse(None)  # type: ignore[arg-type]


def test_invalid_reference_is_an_oci_error() -> None:
    with pytest.raises(OCIError):
        Reference.parse("a//b")


@pytest.mark.parametrize(
    ("text", "familiar"),
    [
        ("busybox", "busybox"),
        ("docker.io/library/busybox:1", "busybox"),
        ("user/app", "user/app"),
        ("library/a/b", "library/a/b"),
        ("localhost:5000/app", "localhost:5000/app"),
        ("example.com/library/app", "example.com/library/app"),
    ],
)
def test_familiar_name(text: str, familiar: str) -> None:
    assert Reference.parse(text).familiar() == familiar


@pytest.mark.parametrize(
    ("text", "full"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("user/app:1", "docker.io/user/app:1"),
        (f"app@{DIGEST}", f"docker.io/library/app@{DIGEST}"),
        (f"app:1@{DIGEST}", f"docker.io/library/app:1@{DIGEST}"),
        ("[::1]:5000/app", "[::1]:5000/app:latest"),
    ],
)
def test_str_is_the_fully_qualified_reference(text: str, full: str) -> None:
    assert str(Reference.parse(text)) == full
    assert Reference.parse(full) == Reference.parse(text)


def test_name_property_has_no_tag_or_digest() -> None:
    assert Reference.parse(f"localhost:5000/ns/app:1@{DIGEST}").name == "localhost:5000/ns/app"
    assert Reference.parse("busybox").name == "docker.io/library/busybox"


def test_with_tag_replaces_tag_and_drops_digest() -> None:
    ref = Reference.parse(f"app:1@{DIGEST}").with_tag("2")
    assert (ref.tag, ref.digest) == ("2", None)
    assert str(ref) == "docker.io/library/app:2"


def test_references_are_hashable_values() -> None:
    assert Reference.parse("busybox") == Reference.parse("docker.io/library/busybox:latest")
    assert len({Reference.parse("busybox"), Reference.parse("index.docker.io/busybox")}) == 1
    assert Reference.parse("busybox:1") != Reference.parse("busybox:2")
