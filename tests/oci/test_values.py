"""Value types of the oci library: digests, frozen maps, canonical JSON, descriptors, manifests, configs."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from oci import mediatypes as mt
from oci.canonical import MAX_DOCUMENT_SIZE, canonical_json, load_json_object
from oci.config import Healthcheck, History, ImageConfig, RuntimeConfig, parse_config
from oci.descriptor import REF_NAME, Descriptor, Platform
from oci.digest import Digest, Hasher, VerifyingReader
from oci.errors import (
    DigestMismatch,
    InvalidDigest,
    InvalidDocument,
    OCIError,
    SizeMismatch,
    UnsupportedMediaType,
)
from oci.frozen import FrozenMap
from oci.manifest import Index, Manifest, parse_document, parse_index, parse_manifest

HEX64 = "a" * 64
SHA_ABC = hashlib.sha256(b"abc").hexdigest()


def _digest(seed: bytes) -> Digest:
    return Digest.of_bytes(seed)


# ------------------------------------------------------------------------------------------------- digest


def test_digest_parses_sha256() -> None:
    d = Digest.parse(f"sha256:{SHA_ABC}")
    assert (d.algorithm, d.encoded) == ("sha256", SHA_ABC)


def test_digest_parses_sha512() -> None:
    hexed = hashlib.sha512(b"abc").hexdigest()
    d = Digest.parse(f"sha512:{hexed}")
    assert (d.algorithm, d.encoded) == ("sha512", hexed)


@pytest.mark.parametrize(
    "text",
    [
        "sha256:" + SHA_ABC.upper(),
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha512:" + "a" * 64,
        "md5:" + "a" * 32,
        "sha1:" + "a" * 40,
        "sha256" + "a" * 64,
        "a" * 64,
        "",
        "sha256:",
        ":" + "a" * 64,
        "sha256:../../etc",
        "sha256:../../etc/passwd",
        "sha256:" + "a" * 62 + "/.",
        "sha256:" + "g" * 64,
        "sha256:" + "a" * 64 + "\n",
        " sha256:" + "a" * 64,
        "SHA256:" + "a" * 64,
    ],
)
def test_digest_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(text)


@pytest.mark.parametrize("value", [None, 42, b"sha256:" + b"a" * 64, ["sha256", "a" * 64]])
def test_digest_rejects_non_string(value: object) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(value)  # type: ignore[arg-type]


def test_invalid_digest_is_an_oci_error_and_a_value_error() -> None:
    with pytest.raises(OCIError):
        Digest.parse("nope")
    with pytest.raises(ValueError):
        Digest.parse("nope")


def test_digest_constructor_validates_too() -> None:
    with pytest.raises(InvalidDigest):
        Digest("sha256", "xyz")
    with pytest.raises(InvalidDigest):
        Digest("sha384", "a" * 96)


def test_digest_of_bytes_matches_hashlib() -> None:
    assert Digest.of_bytes(b"abc") == Digest("sha256", SHA_ABC)
    assert Digest.of_bytes(b"abc", "sha512").encoded == hashlib.sha512(b"abc").hexdigest()


def test_digest_str_round_trips() -> None:
    text = f"sha256:{SHA_ABC}"
    assert str(Digest.parse(text)) == text
    assert Digest.parse(str(Digest.of_bytes(b"x"))) == Digest.of_bytes(b"x")


def test_digest_short_is_first_twelve_hex_digits() -> None:
    assert Digest.parse(f"sha256:{SHA_ABC}").short == SHA_ABC[:12]


def test_digests_are_ordered_and_hashable() -> None:
    low, high = Digest("sha256", "0" * 64), Digest("sha256", "f" * 64)
    assert low < high
    assert sorted([high, low]) == [low, high]
    assert len({low, Digest("sha256", "0" * 64), high}) == 2
    assert {low: 1}[Digest.parse("sha256:" + "0" * 64)] == 1


def test_digest_is_immutable() -> None:
    d = Digest.of_bytes(b"x")
    with pytest.raises(AttributeError):
        d.encoded = "0" * 64  # type: ignore[misc]


def test_hasher_counts_and_hashes() -> None:
    h = Hasher()
    h.update(b"ab")
    h.update(memoryview(b"c"))
    h.update(bytearray())
    assert h.size == 3
    assert h.digest() == Digest.of_bytes(b"abc")


def test_hasher_refuses_unknown_algorithm() -> None:
    with pytest.raises(InvalidDigest):
        Hasher("md5")


def test_verifying_reader_passes_right_content() -> None:
    reader = VerifyingReader(io.BytesIO(b"hello"), Digest.of_bytes(b"hello"), 5)
    assert reader.read() == b"hello"


def test_verifying_reader_passes_right_content_in_small_reads() -> None:
    reader = VerifyingReader(io.BytesIO(b"hello world"), Digest.of_bytes(b"hello world"), 11)
    chunks = []
    while chunk := reader.read(3):
        chunks.append(chunk)
    assert b"".join(chunks) == b"hello world"


def test_verifying_reader_without_size_checks_digest_only() -> None:
    assert VerifyingReader(io.BytesIO(b"abc"), Digest.of_bytes(b"abc")).read() == b"abc"
    with pytest.raises(DigestMismatch):
        VerifyingReader(io.BytesIO(b"abd"), Digest.of_bytes(b"abc")).read()


def test_verifying_reader_raises_digest_mismatch_at_eof() -> None:
    reader = VerifyingReader(io.BytesIO(b"hellO"), Digest.of_bytes(b"hello"), 5)
    assert reader.read(5) == b"hellO"  # not detectable before end of file
    with pytest.raises(DigestMismatch):
        reader.read(1)


def test_verifying_reader_raises_size_mismatch_on_too_many_bytes() -> None:
    with pytest.raises(SizeMismatch):
        VerifyingReader(io.BytesIO(b"hello!"), Digest.of_bytes(b"hello"), 5).read()


def test_verifying_reader_raises_size_mismatch_on_too_few_bytes() -> None:
    with pytest.raises(SizeMismatch):
        VerifyingReader(io.BytesIO(b"hell"), Digest.of_bytes(b"hell"), 5).read()


def test_verifying_reader_works_on_a_source_without_readinto() -> None:
    class OnlyRead:
        def __init__(self, data: bytes) -> None:
            self._buf = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self._buf.read(n)

        def close(self) -> None:
            pass

    assert VerifyingReader(OnlyRead(b"xyz"), Digest.of_bytes(b"xyz"), 3).read() == b"xyz"  # type: ignore[arg-type]
    with pytest.raises(DigestMismatch):
        VerifyingReader(OnlyRead(b"xyZ"), Digest.of_bytes(b"xyz"), 3).read()  # type: ignore[arg-type]


def test_verifying_reader_close_closes_source() -> None:
    source = io.BytesIO(b"x")
    VerifyingReader(source, Digest.of_bytes(b"x")).close()
    assert source.closed


# ------------------------------------------------------------------------------------------------- frozen


def test_frozen_map_has_no_item_assignment() -> None:
    m = FrozenMap({"a": "1"})
    with pytest.raises(TypeError):
        m["b"] = "2"  # type: ignore[index]
    with pytest.raises(TypeError):
        del m["a"]  # type: ignore[attr-defined]
    assert not hasattr(m, "update")
    assert not hasattr(m, "pop")


def test_frozen_map_copies_its_input() -> None:
    source = {"a": "1"}
    m = FrozenMap(source)
    source["a"] = "changed"
    assert m["a"] == "1"


def test_frozen_map_equals_dict_both_ways() -> None:
    m = FrozenMap({"a": "1", "b": "2"})
    assert m == {"b": "2", "a": "1"}
    assert {"a": "1", "b": "2"} == m
    assert m != {"a": "1"}
    assert m != {"a": "1", "b": "3"}
    assert FrozenMap() == {}


def test_frozen_map_hash_ignores_insertion_order() -> None:
    a = FrozenMap([("x", "1"), ("y", "2")])
    b = FrozenMap([("y", "2"), ("x", "1")])
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_frozen_map_with_unhashable_values_is_not_hashable() -> None:
    with pytest.raises(TypeError):
        hash(FrozenMap({"a": []}))


def test_frozen_map_set_returns_a_new_map() -> None:
    m = FrozenMap({"a": "1"})
    n = m.set("b", "2")
    assert n == {"a": "1", "b": "2"}
    assert m == {"a": "1"}
    assert isinstance(n, FrozenMap)


def test_frozen_map_without_returns_a_new_map() -> None:
    m = FrozenMap({"a": "1", "b": "2"})
    n = m.without("a")
    assert n == {"b": "2"}
    assert m == {"a": "1", "b": "2"}
    assert m.without("missing") == m


def test_frozen_map_to_dict_is_a_mutable_copy() -> None:
    m = FrozenMap({"a": "1"})
    d = m.to_dict()
    d["a"] = "2"
    assert m["a"] == "1"


# ---------------------------------------------------------------------------------------------- canonical


def test_canonical_json_sorts_keys_without_whitespace() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": None, "c": True}]}) == b'{"a":[1,{"c":true,"d":null}],"b":1}'


def test_canonical_json_keeps_non_ascii_as_utf8() -> None:
    assert canonical_json({"k": "é✓"}) == '{"k":"é✓"}'.encode()
    assert b"\\u" not in canonical_json({"k": "é"})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_canonical_json_refuses_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": value})


def test_canonical_json_is_stable() -> None:
    doc = {"z": {"y": [3, 2, 1]}, "a": "b"}
    assert canonical_json(doc) == canonical_json(json.loads(canonical_json(doc)))


def test_load_json_object_parses_an_object() -> None:
    assert load_json_object(b'{"a": [1, "x"]}', "doc") == {"a": [1, "x"]}


def test_load_json_object_refuses_duplicate_keys() -> None:
    with pytest.raises(InvalidDocument):
        load_json_object(b'{"a": 1, "a": 2}', "doc")


def test_load_json_object_refuses_nested_duplicate_keys() -> None:
    with pytest.raises(InvalidDocument):
        load_json_object(b'{"a": {"b": 1, "b": 1}}', "doc")


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"s"', b"null", b"true"])
def test_load_json_object_refuses_non_objects(raw: bytes) -> None:
    with pytest.raises(InvalidDocument):
        load_json_object(raw, "doc")


@pytest.mark.parametrize("raw", [b'{"a": "\xff"}', b'{"a": "\xc3"}', b"\xfe\xff{}"])
def test_load_json_object_refuses_invalid_utf8(raw: bytes) -> None:
    with pytest.raises(InvalidDocument):
        load_json_object(raw, "doc")


@pytest.mark.parametrize("raw", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}'])
def test_load_json_object_refuses_nan_and_infinity(raw: bytes) -> None:
    with pytest.raises(InvalidDocument):
        load_json_object(raw, "doc")


@pytest.mark.parametrize("raw", [b"", b"{", b'{"a":1,}', b"{'a': 1}", b'{"a": 1} x'])
def test_load_json_object_refuses_malformed_json(raw: bytes) -> None:
    with pytest.raises(InvalidDocument):
        load_json_object(raw, "doc")


def test_load_json_object_refuses_deep_array_nesting_without_recursion_error() -> None:
    raw = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidDocument):
        load_json_object(raw, "doc")


def test_load_json_object_refuses_deep_object_nesting_without_recursion_error() -> None:
    raw = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    with pytest.raises(InvalidDocument):
        load_json_object(raw, "doc")


def test_load_json_object_reports_huge_integers_as_invalid_document() -> None:
    # Python refuses int conversion beyond 4300 digits with a bare ValueError; it must surface as an OCIError.
    raw = b'{"size": ' + b"1" * 5000 + b"}"
    with pytest.raises(InvalidDocument):
        load_json_object(raw, "doc")


def test_load_json_object_error_names_the_document() -> None:
    with pytest.raises(InvalidDocument, match="my manifest"):
        load_json_object(b"[]", "my manifest")


# --------------------------------------------------------------------------------------------- platform


def test_platform_parse_os_arch() -> None:
    assert Platform.parse("linux/amd64") == Platform("linux", "amd64")


def test_platform_parse_arm64_v8_normalises_variant_away() -> None:
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "")


def test_platform_parse_arm_defaults_to_v7() -> None:
    assert Platform.parse("linux/arm") == Platform("linux", "arm", "v7")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/x86-64", Platform("linux", "amd64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/aarch64/v8", Platform("linux", "arm64")),
        ("linux/arm/6", Platform("linux", "arm", "v6")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("linux/amd64/v1", Platform("linux", "amd64")),
        ("linux/amd64/v3", Platform("linux", "amd64", "v3")),
        ("Linux/AMD64", Platform("linux", "amd64")),
    ],
)
def test_platform_parse_normalises_like_containerd(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected


def test_platform_parse_armel_is_arm_v6_like_containerd() -> None:
    # containerd's normalizeArch: "armel" -> arm, variant v6 ("armhf" -> v7).
    assert Platform.parse("linux/armel") == Platform("linux", "arm", "v6")


def test_platform_parse_i386_is_386_like_containerd() -> None:
    # containerd's normalizeArch: "i386" -> "386"; images are published as linux/386.
    assert Platform.parse("linux/i386") == Platform("linux", "386")


@pytest.mark.parametrize("text", ["", "linux", "linux/", "/amd64", "linux//v7", "linux/arm/v7/x", "/", "a/b/c/d"])
def test_platform_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        Platform.parse(text)


def test_platform_str() -> None:
    assert str(Platform.parse("linux/arm")) == "linux/arm/v7"
    assert str(Platform.parse("linux/amd64")) == "linux/amd64"


def test_platform_matches_after_normalisation() -> None:
    assert Platform("linux", "arm64", "v8").matches(Platform("linux", "aarch64"))
    assert Platform("linux", "arm").matches(Platform("linux", "arm", "v7"))
    assert Platform("linux", "x86_64").matches(Platform("linux", "amd64"))


def test_platform_does_not_match_other_os_arch_or_variant() -> None:
    assert not Platform("linux", "amd64").matches(Platform("linux", "arm64"))
    assert not Platform("linux", "amd64").matches(Platform("windows", "amd64"))
    assert not Platform("linux", "arm", "v6").matches(Platform("linux", "arm", "v7"))


def test_platform_json_round_trip() -> None:
    p = Platform("windows", "amd64", "", "10.0.17763.1", ("win32k",))
    data = p.to_json()
    assert data == {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1", "os.features": ["win32k"]}
    assert Platform.from_json(data) == p


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "linux/amd64",
        {"architecture": "amd64"},
        {"os": "linux"},
        {"os": "linux", "architecture": 1},
        {"os": "linux", "architecture": "amd64", "variant": 8},
        {"os": "linux", "architecture": "amd64", "os.features": "sse4"},
        {"os": "linux", "architecture": "amd64", "os.features": [1]},
    ],
)
def test_platform_from_json_type_checks(data: object) -> None:
    with pytest.raises(InvalidDocument):
        Platform.from_json(data)


# ------------------------------------------------------------------------------------------- descriptor


def _desc_json(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {"mediaType": mt.OCI_LAYER_GZIP, "digest": f"sha256:{SHA_ABC}", "size": 3}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not ...}


def test_descriptor_from_json_minimal() -> None:
    d = Descriptor.from_json(_desc_json())
    assert d == Descriptor(mt.OCI_LAYER_GZIP, Digest("sha256", SHA_ABC), 3)
    assert d.annotations == {} and d.platform is None and d.urls == ()


@pytest.mark.parametrize("size", [True, False, -1, "3", 3.0, None, [3]])
def test_descriptor_from_json_refuses_bad_size(size: object) -> None:
    with pytest.raises(InvalidDocument):
        Descriptor.from_json(_desc_json(size=size))


def test_descriptor_from_json_refuses_missing_size() -> None:
    with pytest.raises(InvalidDocument):
        Descriptor.from_json(_desc_json(size=...))


@pytest.mark.parametrize("digest", ["sha256:abc", "sha256:../../x", 12, "", None, "sha256:" + SHA_ABC.upper()])
def test_descriptor_from_json_refuses_bad_digest(digest: object) -> None:
    with pytest.raises(InvalidDocument):
        Descriptor.from_json(_desc_json(digest=digest))


@pytest.mark.parametrize("media_type", [None, 1, ["x"]])
def test_descriptor_from_json_refuses_bad_media_type(media_type: object) -> None:
    with pytest.raises(InvalidDocument):
        Descriptor.from_json(_desc_json(mediaType=media_type))


@pytest.mark.parametrize("annotations", [{"a": 1}, {"a": None}, {"a": ["x"]}, ["a"], "a=b"])
def test_descriptor_from_json_refuses_bad_annotations(annotations: object) -> None:
    with pytest.raises(InvalidDocument):
        Descriptor.from_json(_desc_json(annotations=annotations))


@pytest.mark.parametrize("platform", ["linux/amd64", ["linux", "amd64"], 1, {"os": "linux"}])
def test_descriptor_from_json_refuses_bad_platform(platform: object) -> None:
    with pytest.raises(InvalidDocument):
        Descriptor.from_json(_desc_json(platform=platform))


@pytest.mark.parametrize("urls", ["http://x", [1], {"a": "b"}])
def test_descriptor_from_json_refuses_bad_urls(urls: object) -> None:
    with pytest.raises(InvalidDocument):
        Descriptor.from_json(_desc_json(urls=urls))


@pytest.mark.parametrize("data", [None, [], "x", 1])
def test_descriptor_from_json_refuses_non_objects(data: object) -> None:
    with pytest.raises(InvalidDocument):
        Descriptor.from_json(data)


def test_descriptor_constructor_refuses_bad_size() -> None:
    with pytest.raises(InvalidDocument):
        Descriptor(mt.OCI_LAYER, _digest(b"x"), -1)
    with pytest.raises(InvalidDocument):
        Descriptor(mt.OCI_LAYER, _digest(b"x"), True)


def test_descriptor_json_round_trip_with_every_field() -> None:
    d = Descriptor(
        mt.OCI_MANIFEST,
        _digest(b"m"),
        1234,
        annotations=FrozenMap({REF_NAME: "v1", "x": "é"}),
        platform=Platform("linux", "arm", "v7"),
        urls=("https://example.com/blob",),
        artifact_type="application/x-thing",
    )
    data = d.to_json()
    assert data["digest"] == str(_digest(b"m"))
    assert data["platform"] == {"os": "linux", "architecture": "arm", "variant": "v7"}
    assert Descriptor.from_json(json.loads(canonical_json(data))) == d


def test_descriptor_to_json_omits_empty_optional_fields() -> None:
    assert Descriptor(mt.OCI_LAYER, _digest(b"x"), 1).to_json() == {
        "mediaType": mt.OCI_LAYER,
        "digest": str(_digest(b"x")),
        "size": 1,
    }


def test_descriptor_with_ref_name_sets_and_removes() -> None:
    d = Descriptor(mt.OCI_MANIFEST, _digest(b"m"), 1, annotations=FrozenMap({"keep": "me"}))
    tagged = d.with_ref_name("v1")
    assert tagged.ref_name == "v1"
    assert tagged.annotations == {"keep": "me", REF_NAME: "v1"}
    assert d.ref_name is None  # the original is untouched
    untagged = tagged.with_ref_name(None)
    assert untagged.ref_name is None
    assert untagged.annotations == {"keep": "me"}
    assert untagged == d


def test_descriptor_is_hashable() -> None:
    a = Descriptor(mt.OCI_LAYER, _digest(b"x"), 1, annotations=FrozenMap({"a": "b"}))
    b = Descriptor(mt.OCI_LAYER, _digest(b"x"), 1, annotations=FrozenMap({"a": "b"}))
    assert len({a, b}) == 1


# --------------------------------------------------------------------------------------- manifest/index


def _layer(seed: bytes, media_type: str = mt.OCI_LAYER_GZIP) -> dict[str, object]:
    return {"mediaType": media_type, "digest": str(_digest(seed)), "size": 100 + len(seed)}


def _oci_manifest(**extra: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": str(_digest(b"cfg")), "size": 42},
        "layers": [_layer(b"l1"), _layer(b"l2")],
    }
    doc.update(extra)
    return {k: v for k, v in doc.items() if v is not ...}


def _raw(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_parse_oci_manifest() -> None:
    m = parse_manifest(_raw(_oci_manifest(annotations={"a": "b"})))
    assert m.media_type == mt.OCI_MANIFEST
    assert m.config.digest == _digest(b"cfg") and m.config.size == 42
    assert [layer.digest for layer in m.layers] == [_digest(b"l1"), _digest(b"l2")]
    assert m.annotations == {"a": "b"}
    assert m.subject is None


def test_parse_docker_schema2_manifest() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "size": 1469, "digest": str(_digest(b"c"))},
        "layers": [
            {"mediaType": mt.DOCKER_LAYER, "size": 2811321, "digest": str(_digest(b"a"))},
            {
                "mediaType": mt.DOCKER_FOREIGN_LAYER,
                "size": 5,
                "digest": str(_digest(b"f")),
                "urls": ["https://example.com/f"],
            },
        ],
    }
    m = parse_manifest(_raw(doc), mt.DOCKER_MANIFEST)
    assert m.media_type == mt.DOCKER_MANIFEST
    assert m.config.media_type == mt.DOCKER_CONFIG
    assert [layer.media_type for layer in m.layers] == [mt.DOCKER_LAYER, mt.DOCKER_FOREIGN_LAYER]
    assert m.layers[1].urls == ("https://example.com/f",)
    assert parse_manifest(_raw(doc)).media_type == mt.DOCKER_MANIFEST


def test_parse_docker_manifest_list() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST_LIST,
        "manifests": [
            {
                "mediaType": mt.DOCKER_MANIFEST,
                "size": 528,
                "digest": str(_digest(b"amd")),
                "platform": {"architecture": "amd64", "os": "linux"},
            },
            {
                "mediaType": mt.DOCKER_MANIFEST,
                "size": 528,
                "digest": str(_digest(b"arm")),
                "platform": {"architecture": "arm", "os": "linux", "variant": "v6"},
            },
        ],
    }
    index = parse_index(_raw(doc))
    assert index.media_type == mt.DOCKER_MANIFEST_LIST
    assert [d.platform for d in index.manifests] == [Platform("linux", "amd64"), Platform("linux", "arm", "v6")]


def test_manifest_without_media_type_defaults_to_oci() -> None:
    assert parse_manifest(_raw(_oci_manifest(mediaType=...))).media_type == mt.OCI_MANIFEST


@pytest.mark.parametrize("version", [1, "2", None, True, 3])
def test_manifest_refuses_other_schema_versions(version: object) -> None:
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(_oci_manifest(schemaVersion=version)))


def test_manifest_refuses_missing_schema_version() -> None:
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(_oci_manifest(schemaVersion=...)))


def test_manifest_refuses_schema1_document() -> None:
    doc = {"schemaVersion": 1, "name": "library/x", "tag": "latest", "fsLayers": [], "history": []}
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(doc), mt.DOCKER_MANIFEST)


def test_manifest_refuses_layers_and_manifests_together() -> None:
    doc = _oci_manifest(manifests=[_layer(b"m")])
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(doc))
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw({**doc, "mediaType": None}))


def test_index_refuses_manifests_and_layers_together() -> None:
    doc = {"schemaVersion": 2, "manifests": [_layer(b"m")], "layers": [_layer(b"l")]}
    with pytest.raises(InvalidDocument):
        parse_index(_raw(doc))


def test_index_refuses_a_config_member() -> None:
    doc = {"schemaVersion": 2, "manifests": [], "config": _layer(b"c")}
    with pytest.raises(InvalidDocument):
        parse_index(_raw(doc))


def test_manifest_refuses_declared_type_contradicting_expected() -> None:
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(_oci_manifest()), mt.DOCKER_MANIFEST)
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(_oci_manifest(mediaType=mt.OCI_INDEX)), mt.OCI_MANIFEST)


def test_manifest_refuses_an_index_media_type() -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_manifest(_raw(_oci_manifest(mediaType=mt.OCI_INDEX)))
    with pytest.raises(UnsupportedMediaType):
        parse_manifest(_raw(_oci_manifest(mediaType=...)), mt.OCI_INDEX)


def test_index_refuses_declared_manifest_type() -> None:
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "manifests": []}
    with pytest.raises(InvalidDocument):
        parse_index(_raw(doc))
    with pytest.raises(InvalidDocument):
        parse_index(_raw({**doc, "mediaType": mt.DOCKER_MANIFEST_LIST}), mt.OCI_INDEX)


def test_manifest_refuses_non_string_media_type() -> None:
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(_oci_manifest(mediaType=2)))


def test_manifest_refuses_documents_over_4_mib() -> None:
    doc = _oci_manifest(annotations={"pad": "x" * MAX_DOCUMENT_SIZE})
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(doc))


def test_manifest_accepts_a_document_just_under_the_limit() -> None:
    base = _raw(_oci_manifest(annotations={"pad": ""}))
    doc = _oci_manifest(annotations={"pad": "x" * (MAX_DOCUMENT_SIZE - len(base))})
    raw = _raw(doc)
    assert len(raw) == MAX_DOCUMENT_SIZE
    assert len(parse_manifest(raw).annotations["pad"]) == MAX_DOCUMENT_SIZE - len(base)


@pytest.mark.parametrize("layers", [None, {}, "layers", _layer(b"x")])
def test_manifest_refuses_layers_that_are_not_a_list(layers: object) -> None:
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(_oci_manifest(layers=layers)))


def test_manifest_refuses_missing_layers() -> None:
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(_oci_manifest(layers=...)))


def test_manifest_refuses_missing_or_bad_config() -> None:
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(_oci_manifest(config=...)))
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(_oci_manifest(config={"mediaType": mt.OCI_CONFIG, "digest": "x", "size": 1})))


def test_manifest_refuses_bad_layer_descriptor() -> None:
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(_oci_manifest(layers=[{**_layer(b"x"), "size": -5}])))


def test_manifest_refuses_bad_annotations_and_artifact_type() -> None:
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(_oci_manifest(annotations={"a": 1})))
    with pytest.raises(InvalidDocument):
        parse_manifest(_raw(_oci_manifest(artifactType=["x"])))


def test_manifest_refuses_duplicate_keys() -> None:
    raw = _raw(_oci_manifest())[:-1] + b', "layers": []}'
    with pytest.raises(InvalidDocument):
        parse_manifest(raw)


def test_manifest_encode_is_canonical_and_round_trips() -> None:
    m = parse_manifest(
        _raw(
            _oci_manifest(
                annotations={"z": "1", "a": "é"},
                subject=_layer(b"subject", mt.OCI_MANIFEST),
                artifactType="application/x-sig",
            )
        )
    )
    raw = m.encode()
    assert raw == canonical_json(json.loads(raw))
    assert b" " not in raw and b"\n" not in raw
    assert "é".encode() in raw
    assert parse_manifest(raw) == m


def test_docker_manifest_round_trip_keeps_media_type() -> None:
    m = Manifest(
        config=Descriptor(mt.DOCKER_CONFIG, _digest(b"c"), 10),
        layers=(Descriptor(mt.DOCKER_LAYER, _digest(b"l"), 20),),
        media_type=mt.DOCKER_MANIFEST,
    )
    assert parse_manifest(m.encode()) == m
    assert json.loads(m.encode())["mediaType"] == mt.DOCKER_MANIFEST


def test_index_encode_is_canonical_and_round_trips() -> None:
    index = Index(
        manifests=(
            Descriptor(mt.OCI_MANIFEST, _digest(b"a"), 1, platform=Platform("linux", "amd64")),
            Descriptor(mt.OCI_MANIFEST, _digest(b"b"), 2, annotations=FrozenMap({REF_NAME: "v1"})),
        ),
        annotations=FrozenMap({"k": "v"}),
    )
    raw = index.encode()
    assert raw == canonical_json(json.loads(raw))
    assert parse_index(raw) == index


def test_parse_document_by_declared_media_type() -> None:
    assert isinstance(parse_document(_raw(_oci_manifest())), Manifest)
    doc = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST_LIST, "manifests": []}
    index = parse_document(_raw(doc))
    assert isinstance(index, Index) and index.media_type == mt.DOCKER_MANIFEST_LIST


def test_parse_document_by_shape() -> None:
    assert isinstance(parse_document(_raw(_oci_manifest(mediaType=...))), Manifest)
    index = parse_document(_raw({"schemaVersion": 2, "manifests": []}))
    assert isinstance(index, Index) and index.media_type == mt.OCI_INDEX


def test_parse_document_by_given_media_type() -> None:
    doc = {"schemaVersion": 2, "manifests": []}
    assert isinstance(parse_document(_raw(doc), mt.OCI_INDEX), Index)
    with pytest.raises(InvalidDocument):
        parse_document(_raw(doc), mt.OCI_MANIFEST)


def test_parse_document_refuses_ambiguous_or_shapeless_documents() -> None:
    with pytest.raises(InvalidDocument):
        parse_document(_raw({"schemaVersion": 2, "manifests": [], "layers": []}))
    with pytest.raises(InvalidDocument):
        parse_document(_raw({"schemaVersion": 2}))


def test_parse_document_refuses_unknown_media_type() -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_document(_raw(_oci_manifest(mediaType="application/json")))
    with pytest.raises(UnsupportedMediaType):
        parse_document(_raw(_oci_manifest()), mt.OCI_CONFIG)


# ---------------------------------------------------------------------------------------------- config

DIFF1 = _digest(b"diff1")
DIFF2 = _digest(b"diff2")


def _config_doc(**runtime: object) -> dict[str, object]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "author": "someone",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": [str(DIFF1), str(DIFF2)]},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:abc in /"},
            {"created_by": '/bin/sh -c #(nop)  CMD ["sh"]', "empty_layer": True},
            {"created_by": "RUN make", "comment": "buildkit.dockerfile.v0", "author": "me"},
        ],
    }


REALISTIC_RUNTIME = {
    "User": "1000:1000",
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
    "Entrypoint": ["/docker-entrypoint.sh"],
    "Cmd": ["nginx", "-g", "daemon off;"],
    "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
    "Volumes": {"/var/cache/nginx": {}, "/data": {}},
    "WorkingDir": "/srv",
    "Labels": {"maintainer": "NGINX <x@example.com>", "org.opencontainers.image.version": "1.25"},
    "StopSignal": "SIGQUIT",
    "ArgsEscaped": True,
    "Healthcheck": {
        "Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
        "Interval": 30_000_000_000,
        "Timeout": 5_000_000_000,
        "StartPeriod": 1_000_000_000,
        "Retries": 3,
    },
    "OnBuild": ["RUN echo hi"],
    "Shell": ["/bin/bash", "-c"],
    "Image": "sha256:" + HEX64,
    "AttachStdout": False,
}


def test_parse_realistic_config() -> None:
    cfg = parse_config(_raw(_config_doc(**REALISTIC_RUNTIME)))
    assert (cfg.architecture, cfg.os, cfg.created, cfg.author) == ("amd64", "linux", "2024-01-02T03:04:05Z", "someone")
    assert cfg.diff_ids == (DIFF1, DIFF2)
    rc = cfg.config
    assert rc.user == "1000:1000"
    assert rc.env == tuple(REALISTIC_RUNTIME["Env"])  # type: ignore[arg-type]
    assert rc.entrypoint == ("/docker-entrypoint.sh",)
    assert rc.cmd == ("nginx", "-g", "daemon off;")
    assert rc.exposed_ports == ("443/tcp", "80/tcp")
    assert rc.volumes == ("/data", "/var/cache/nginx")
    assert rc.working_dir == "/srv"
    assert rc.labels == REALISTIC_RUNTIME["Labels"]
    assert rc.stop_signal == "SIGQUIT"
    assert rc.args_escaped is True
    assert rc.healthcheck == Healthcheck(
        ("CMD-SHELL", "curl -f http://localhost/ || exit 1"), 30_000_000_000, 5_000_000_000, 1_000_000_000, 0, 3
    )
    assert rc.on_build == ("RUN echo hi",)
    assert rc.shell == ("/bin/bash", "-c")
    assert [h.empty_layer for h in cfg.history] == [False, True, False]
    assert cfg.history[2] == History("", "RUN make", "me", "buildkit.dockerfile.v0", False)
    assert cfg.platform == Platform("linux", "amd64")


def test_config_cmd_null_and_empty_list_differ() -> None:
    assert parse_config(_raw(_config_doc(Cmd=None))).config.cmd is None
    assert parse_config(_raw(_config_doc(Cmd=[]))).config.cmd == ()
    assert parse_config(_raw(_config_doc())).config.cmd is None
    assert parse_config(_raw(_config_doc(Entrypoint=[]))).config.entrypoint == ()


def test_config_null_is_an_empty_runtime_config() -> None:
    doc = _config_doc()
    doc["config"] = None
    assert parse_config(_raw(doc)).config == RuntimeConfig()
    del doc["config"]
    assert parse_config(_raw(doc)).config == RuntimeConfig()


def test_config_null_fields_are_empty() -> None:
    cfg = parse_config(_raw(_config_doc(Env=None, Labels=None, ExposedPorts=None, Volumes=None, User=None)))
    assert cfg.config == RuntimeConfig()


def test_config_refuses_env_with_nul() -> None:
    with pytest.raises(InvalidDocument):
        parse_config(_raw(_config_doc(Env=["A=1", "B=x\u0000y"])))


@pytest.mark.parametrize("env", [[1], ["A=1", None], "A=1", {"A": "1"}])
def test_config_refuses_env_that_is_not_strings(env: object) -> None:
    with pytest.raises(InvalidDocument):
        parse_config(_raw(_config_doc(Env=env)))


@pytest.mark.parametrize("rootfs", [None, {"type": "squashfs", "diff_ids": []}, {"diff_ids": []}, [], "layers"])
def test_config_refuses_rootfs_not_of_type_layers(rootfs: object) -> None:
    doc = _config_doc()
    doc["rootfs"] = rootfs
    with pytest.raises(InvalidDocument):
        parse_config(_raw(doc))


@pytest.mark.parametrize("diff_ids", [["sha256:abc"], ["sha256:" + HEX64.upper()], [1], "sha256:" + HEX64])
def test_config_refuses_bad_diff_ids(diff_ids: object) -> None:
    doc = _config_doc()
    doc["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    with pytest.raises(InvalidDocument):
        parse_config(_raw(doc))


@pytest.mark.parametrize("value", ["true", 1, 0, [], {}])
def test_config_refuses_args_escaped_non_bool(value: object) -> None:
    with pytest.raises(InvalidDocument):
        parse_config(_raw(_config_doc(ArgsEscaped=value)))


@pytest.mark.parametrize(
    "runtime",
    [
        {"Cmd": "echo hi"},
        {"Entrypoint": [1]},
        {"User": 0},
        {"WorkingDir": ["/"]},
        {"Labels": {"a": 1}},
        {"ExposedPorts": ["80/tcp"]},
        {"Volumes": "/data"},
        {"Healthcheck": ["CMD", "true"]},
        {"Healthcheck": {"Test": ["CMD"], "Interval": "30s"}},
        {"Healthcheck": {"Test": ["CMD"], "Retries": True}},
        {"Shell": "/bin/sh"},
        {"OnBuild": [None]},
    ],
)
def test_config_type_checks_runtime_fields(runtime: dict[str, object]) -> None:
    with pytest.raises(InvalidDocument):
        parse_config(_raw(_config_doc(**runtime)))


def test_config_refuses_runtime_config_that_is_not_an_object() -> None:
    doc = _config_doc()
    doc["config"] = ["Cmd"]
    with pytest.raises(InvalidDocument):
        parse_config(_raw(doc))


@pytest.mark.parametrize("history", [{"created_by": "x"}, ["x"], [{"empty_layer": "yes"}], [{"created_by": 1}]])
def test_config_refuses_bad_history(history: object) -> None:
    doc = _config_doc()
    doc["history"] = history
    with pytest.raises(InvalidDocument):
        parse_config(_raw(doc))


def test_config_refuses_non_string_top_level_fields() -> None:
    doc = _config_doc()
    doc["architecture"] = 64
    with pytest.raises(InvalidDocument):
        parse_config(_raw(doc))


def test_config_refuses_documents_over_4_mib() -> None:
    with pytest.raises(InvalidDocument):
        parse_config(_raw(_config_doc(Labels={"pad": "x" * MAX_DOCUMENT_SIZE})))


def test_config_refuses_duplicate_keys() -> None:
    raw = _raw(_config_doc())[:-1] + b', "os": "windows"}'
    with pytest.raises(InvalidDocument):
        parse_config(raw)


def test_env_dict_later_entry_wins() -> None:
    rc = RuntimeConfig(env=("A=1", "B=2", "A=3", "C=x=y", "D"))
    assert rc.env_dict() == {"A": "3", "B": "2", "C": "x=y", "D": ""}


def test_config_encode_round_trip() -> None:
    cfg = parse_config(_raw(_config_doc(**REALISTIC_RUNTIME)))
    raw = cfg.encode()
    assert raw == canonical_json(json.loads(raw))
    assert parse_config(raw) == cfg


@pytest.mark.parametrize("cmd", [None, (), ("sh",)])
def test_config_encode_round_trip_preserves_cmd_none_vs_empty(cmd: tuple[str, ...] | None) -> None:
    cfg = ImageConfig("arm64", "linux", RuntimeConfig(cmd=cmd, entrypoint=cmd), (DIFF1,))
    again = parse_config(cfg.encode())
    assert again.config.cmd == cmd
    assert again.config.entrypoint == cmd
    assert again == cfg


def test_config_encode_round_trip_with_every_field() -> None:
    cfg = ImageConfig(
        architecture="arm",
        os="linux",
        config=RuntimeConfig(
            user="u",
            exposed_ports=("53/udp",),
            env=("A=1",),
            volumes=("/v",),
            working_dir="/w",
            labels=FrozenMap({"l": "v"}),
            stop_signal="SIGTERM",
            args_escaped=True,
            healthcheck=Healthcheck(("NONE",)),
            on_build=("RUN x",),
            shell=("sh", "-c"),
        ),
        diff_ids=(DIFF1, DIFF2),
        history=(History(created_by="x", empty_layer=True), History(comment="c")),
        created="1970-01-01T00:00:00Z",
        author="a",
        variant="v7",
        os_version="1",
        os_features=("f",),
    )
    assert parse_config(cfg.encode()) == cfg
    assert cfg.platform == Platform("linux", "arm", "v7", "1", ("f",))
