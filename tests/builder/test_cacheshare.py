"""The portable cache, in a directory or a registry: option parsing, export → load → get → fetch, push → pull →
fetch (lazily, counted on a fake registry), clean-up, and refusing bad caches."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool
from fakeregistry import FakeRegistry, Fault
from registryserver import RegistryServer

import builder.compressed
from builder.cache import CacheEntry
from builder.cacheshare import (
    CACHE_ARTIFACT_TYPE,
    CACHE_CONFIG_TYPE,
    DIFF_ID_ANNOTATION,
    CacheSpec,
    ImportedCache,
    export_cache,
    parse_cache_option,
    push_cache,
    write_cache,
)
from builder.errors import BuildError, UsageError
from builder.remote import RegistrySettings, Remote
from builder.root import Store, open_store
from oci import mediatypes as mt
from oci.apply import ApplyLimits
from oci.compression import Compression
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.layer import LayerItem, write_layer
from oci.layout import ImageLayout
from oci.reference import Reference
from oci.tarformat import EntryType, TarEntry

KINDS = [Compression.NONE, Compression.GZIP, Compression.ZSTD]

# ------------------------------------------------------------------------------------------------ parsing


def test_cache_to_defaults() -> None:
    assert parse_cache_option("type=local,dest=/tmp/c", "--cache-to") == CacheSpec(
        "local", Path("/tmp/c"), "min", Compression.GZIP, "latest"
    )


def test_cache_to_takes_every_key() -> None:
    spec = parse_cache_option("type=local,dest=out/cache,mode=max,compression=zstd,tag=v1.2", "--cache-to")
    assert spec == CacheSpec("local", Path("out/cache"), "max", Compression.ZSTD, "v1.2")
    spec = parse_cache_option("Type=local,DEST=c,Compression=uncompressed", "--cache-to")
    assert (spec.path, spec.compression) == (Path("c"), Compression.NONE)


def test_cache_from_takes_src_and_tag() -> None:
    assert parse_cache_option("type=local,src=c,tag=main", "--cache-from") == CacheSpec("local", Path("c"), tag="main")
    assert parse_cache_option('type=local,"src=a,b"', "--cache-from").path == Path("a,b")


def test_buildkit_attributes_that_change_nothing_are_accepted() -> None:
    spec = parse_cache_option(
        "type=local,dest=c,oci-mediatypes=true,image-manifest=true,force-compression=true", "--cache-to"
    )
    assert spec.path == Path("c")


@pytest.mark.parametrize(
    ("flag", "text", "message"),
    [
        ("--cache-to", "type=local", "--cache-to type=local: dest is required"),
        ("--cache-to", "type=local,dest=", "dest is required"),
        ("--cache-from", "type=local,tag=x", "--cache-from type=local: src is required"),
        ("--cache-from", "type=local,dest=c", "--cache-from type=local: dest is an attribute of --cache-to"),
        ("--cache-to", "type=local,src=c", "--cache-to type=local: src is an attribute of --cache-from"),
        ("--cache-from", "type=local,src=c,mode=max", "mode is an attribute of --cache-to"),
        ("--cache-to", "type=local,dest=c,mode=maxi", "--cache-to type=local: mode='maxi' is not min or max"),
        ("--cache-to", "type=local,dest=c,compression=lz4", "--cache-to type=local: unknown compression 'lz4'"),
        ("--cache-to", "type=local,dest=c,destt=d", "unknown attribute 'destt' (did you mean dest?)"),
        ("--cache-to", "dest=c,mode=max", "--cache-to 'dest=c,mode=max': type is required"),
        ("--cache-from", "src=c", "--cache-from 'src=c': type is required"),
        ("--cache-to", "type=locall,dest=c", "--cache-to: unknown cache type 'locall' (did you mean local?)"),
        ("--cache-to", "", "--cache-to: empty value"),
        ("--cache-to", "type=local,dest=c,tag=a/b", "--cache-to type=local: tag='a/b' is not a valid tag"),
        ("--cache-from", "type=local,src=c,tag=", "tag='' is not a valid tag"),
        ("--cache-to", "type=local,dest=c,compression-level=9", "compression-level is not supported by pybuild"),
        ("--cache-to", "type=local,dest=c,ignore-error=maybe", "ignore-error='maybe' is not a boolean"),
        ("--cache-from", "type=local,src=c,ignore-error=true", "ignore-error is an attribute of --cache-to"),
        ("--cache-from", "type=local,src=c,digest=sha256:ab", "digest is not supported by pybuild"),
        ("--cache-to", "type=local,dest=c,oci-mediatypes=false", "oci-mediatypes=false is not supported"),
        ("--cache-to", "type=local,dest=c,image-manifest=no", "image-manifest='no' is not a boolean"),
        ("--cache-to", "type=local,dest=c,novalue", "invalid value 'novalue' (expected key=value)"),
    ],
)
def test_bad_options_are_usage_errors_naming_the_flag(flag: str, text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_cache_option(text, flag)
    assert message in str(caught.value)
    assert str(caught.value).startswith(flag)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("kind", ["inline", "gha", "s3", "azblob"])
@pytest.mark.parametrize("flag", ["--cache-to", "--cache-from"])
def test_other_cache_types_are_not_supported_yet(flag: str, kind: str) -> None:
    with pytest.raises(BuildError) as caught:
        parse_cache_option(f"type={kind},ref=registry.example/app:cache", flag)
    assert not isinstance(caught.value, UsageError)
    assert caught.value.exit_code == 1
    assert str(caught.value) == f"{flag} type={kind} is not supported yet"


def test_ignore_error_is_a_cache_to_boolean() -> None:
    assert parse_cache_option("type=local,dest=c", "--cache-to").ignore_error is False
    assert parse_cache_option("type=local,dest=c,ignore-error=true", "--cache-to").ignore_error is True
    assert parse_cache_option("type=registry,ref=r.example/a,ignore-error=1", "--cache-to").ignore_error is True
    assert parse_cache_option("type=registry,ref=r.example/a,ignore-error=false", "--cache-to").ignore_error is False


def test_registry_takes_ref_mode_and_compression() -> None:
    spec = parse_cache_option(
        "type=registry,ref=registry.example:5000/team/app:cache,mode=max,compression=zstd", "--cache-to"
    )
    assert spec == CacheSpec(
        "registry",
        None,
        "max",
        Compression.ZSTD,
        ref=Reference("registry.example:5000", "team/app", "cache"),
    )
    assert spec.location == "registry.example:5000/team/app:cache"
    spec = parse_cache_option("type=registry,ref=registry.example/app:cache", "--cache-from")
    assert (spec.type, spec.path, str(spec.ref)) == ("registry", None, "registry.example/app:cache")


def test_registry_references_are_normalised_as_docker_does() -> None:
    assert str(parse_cache_option("type=registry,ref=user/app", "--cache-to").ref) == "docker.io/user/app:latest"
    digest = "sha256:" + "ab" * 32
    spec = parse_cache_option(f"type=registry,ref=registry.example/app@{digest}", "--cache-from")
    assert spec.ref is not None and str(spec.ref.digest) == digest


@pytest.mark.parametrize("flag", ["--cache-to", "--cache-from"])
def test_a_bare_value_is_a_registry_reference_as_in_buildx(flag: str) -> None:
    spec = parse_cache_option("registry.example/app:cache", flag)
    assert spec == parse_cache_option("type=registry,ref=registry.example/app:cache", flag)
    assert spec.type == "registry" and spec.mode == "min"


@pytest.mark.parametrize(
    ("flag", "text", "message"),
    [
        ("--cache-from", "a.example/x:1,b.example/y:2", "one registry reference per --cache-from"),
        (
            "--cache-to",
            "type=registry",
            "--cache-to type=registry: ref is required (e.g. --cache-to type=registry,ref=",
        ),
        ("--cache-from", "type=registry,ref=", "--cache-from type=registry: ref is required"),
        ("--cache-from", "ref=registry.example/app", "type is required (e.g. type=registry,ref=REPO:TAG)"),
        ("--cache-to", "type=registry,ref=Registry.example/App:x", "--cache-to type=registry: invalid"),
        (
            "--cache-to",
            f"type=registry,ref=r.example/a@sha256:{'ab' * 32}",
            "names a digest; a cache is pushed under a tag",
        ),
        ("--cache-to", "type=registry,ref=r.example/a,tag=v1", "tag is an attribute of type=local, not type=registry"),
        ("--cache-to", "type=registry,ref=r.example/a,dest=d", "dest is an attribute of type=local, not type=registry"),
        ("--cache-to", "type=local,dest=d,ref=r.example/a", "ref is an attribute of type=registry, not type=local"),
        ("--cache-from", "type=registry,ref=r.example/a,mode=max", "mode is an attribute of --cache-to"),
        ("--cache-from", "type=registry,ref=r.example/a,src=d", "src is an attribute of type=local, not type=registry"),
        ("--cache-to", "type=registry,ref=r.example/a,compression-level=3", "compression-level is not supported"),
        ("--cache-to", "type=registry,ref=r.example/a,image-manifest=false", "image-manifest=false is not supported"),
        ("--cache-to", "type=registry,ref=r.example/a,reff=x", "unknown attribute 'reff' (did you mean ref?)"),
    ],
)
def test_bad_registry_options_are_usage_errors(flag: str, text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_cache_option(text, flag)
    assert message in str(caught.value)
    assert str(caught.value).startswith(flag)


def test_a_registry_tag_attribute_says_where_the_tag_goes() -> None:
    with pytest.raises(UsageError) as caught:
        parse_cache_option("type=registry,ref=r.example/a,tag=v1", "--cache-to")
    assert "ref=REPO:TAG" in caught.value.hint


def test_buildkit_attributes_that_change_nothing_are_accepted_for_a_registry() -> None:
    spec = parse_cache_option(
        "type=registry,ref=r.example/a,oci-mediatypes=true,image-manifest=true,force-compression=true", "--cache-to"
    )
    assert str(spec.ref) == "r.example/a:latest"


# ------------------------------------------------------------------------------------------------ entries


def _tar(seed: int, size: int = 120_000) -> bytes:
    content = random.Random(seed).randbytes(size // 2) + bytes([seed]) * (size // 2)
    out = io.BytesIO()
    entry = TarEntry(f"file{seed}.bin", EntryType.FILE, size=len(content), mtime=1_700_000_000)
    write_layer([LayerItem(entry, lambda: io.BytesIO(content))], out, Compression.NONE)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(tmp_path / "root")


class Built:
    """Four cache entries over two real layers in ``store``, as a build would have recorded them."""

    def __init__(self, store: Store) -> None:
        self.tars = {seed: _tar(seed) for seed in (1, 2)}
        self.layers: dict[int, Descriptor] = {}
        for seed, data in self.tars.items():
            digest = store.layout.store.put_bytes(data)
            self.layers[seed] = Descriptor(mt.OCI_LAYER, digest, len(data))
        one, two = self.layers[1], self.layers[2]
        base_gz = Digest.of_bytes(b"a base image layer, gzip")  # a pulled base's layer: never exported
        base = Descriptor(mt.OCI_LAYER_GZIP, base_gz, 1234)
        base_diff = Digest.of_bytes(b"its diff_id")
        self.run = self.entry("RUN make", 2, one, created=1_700_000_100.5, parents=((base, base_diff),))
        self.copy = self.entry("COPY . /src", 3, two, created=1_700_000_200.25, parents=((base, base_diff), one))
        self.env = self.entry("ENV A=1", 4, None, created=1_700_000_300.0, parents=((base, base_diff), one, two))
        self.older = self.entry("RUN make", 2, one, created=1_700_000_050.0, extra="older")

    def entry(
        self,
        step: str,
        line: int,
        layer: Descriptor | None,
        *,
        created: float,
        parents: tuple[Any, ...] = (),
        extra: str = "",
    ) -> CacheEntry:
        record = {"v": 1, "op": step.split()[0].lower(), "argv": step.split()[1:], "parent": {"x": extra}}
        return CacheEntry(
            key=Digest.of_bytes(json.dumps(record).encode()),
            record=record,
            layer=layer,
            diff_id=layer.digest if layer is not None else None,
            history=step,
            step=step,
            stage="build",
            line=line,
            dockerfile="Dockerfile",
            image="app:1",
            about={"base": "debian:12"},
            created=created,
            last_used=created + 10,
            hits=3,
            parents=tuple(p if isinstance(p, tuple) else (p, p.digest) for p in parents),
        )

    @property
    def all(self) -> list[CacheEntry]:
        return [self.run, self.copy, self.env, self.older]


@pytest.fixture
def built(store: Store) -> Built:
    return Built(store)


def _imported(entry: CacheEntry) -> CacheEntry:
    """What the cache directory gives back: everything but the local counters."""
    return replace(entry, last_used=entry.created, hits=0)


def _manifest(directory: Path, tag: str = "latest") -> tuple[Descriptor, dict[str, Any], dict[str, Any]]:
    layout = ImageLayout.open(directory)
    desc = layout.resolve(tag)
    assert desc is not None
    manifest = json.loads(layout.store.read(desc.digest))
    config = json.loads(layout.store.read(Digest.parse(manifest["config"]["digest"])))
    return desc, manifest, config


# ------------------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_round_trip_gives_the_entries_and_byte_identical_layers(
    built: Built, store: Store, tmp_path: Path, kind: Compression
) -> None:
    directory = tmp_path / "cache"
    desc = export_cache(directory, built.all, store, compression=kind)

    index_entry, manifest, config = _manifest(directory)
    assert index_entry.digest == desc.digest and desc.media_type == mt.OCI_MANIFEST
    assert manifest["artifactType"] == CACHE_ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == CACHE_CONFIG_TYPE
    assert [layer["mediaType"] for layer in manifest["layers"]] == [kind.layer_media_type] * 2  # shared layer once
    diff_ids = [layer["annotations"][DIFF_ID_ANNOTATION] for layer in manifest["layers"]]
    assert sorted(diff_ids) == sorted(str(d.digest) for d in built.layers.values())
    if kind is Compression.NONE:
        assert [layer["digest"] for layer in manifest["layers"]] == diff_ids
    else:
        assert not {layer["digest"] for layer in manifest["layers"]} & set(diff_ids)
    assert config["version"] == 1
    assert [e["key"] for e in config["entries"]] == sorted(str(e.key) for e in built.all)
    by_key = {e["key"]: e for e in config["entries"]}
    assert by_key[str(built.env.key)]["layer"] is None and by_key[str(built.env.key)]["diff_id"] is None
    assert by_key[str(built.copy.key)]["size"] == len(built.tars[2])
    assert diff_ids[by_key[str(built.copy.key)]["layer"]] == str(built.layers[2].digest)

    cache = ImportedCache.load(directory)
    assert cache.warning == "" and len(cache) == 4 and cache.manifest == index_entry
    for entry in built.all:
        assert cache.get(entry.key) == _imported(entry)
    assert cache.get(Digest.of_bytes(b"no such step")) is None

    other = open_store(tmp_path / "other")
    for entry in built.all:
        cache.fetch(entry, other.layout.store)
    for seed, layer in built.layers.items():
        assert other.layout.store.read(layer.digest) == built.tars[seed]
    assert sorted(other.layout.store) == sorted(layer.digest for layer in built.layers.values())


def test_fetch_does_nothing_when_the_store_has_the_layer(built: Built, store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    export_cache(directory, built.all, store, compression=Compression.GZIP)
    cache = ImportedCache.load(directory)
    _, manifest, _ = _manifest(directory)
    for layer in manifest["layers"]:
        ImageLayout(directory).store.delete(Digest.parse(layer["digest"]))
    cache.fetch(built.run, store.layout.store)  # the local store has it: the missing cache blob is never read
    cache.fetch(built.env, open_store(tmp_path / "other").layout.store)  # no layer: nothing to fetch


def test_candidates_are_the_entries_of_a_stage_and_line_newest_first(
    built: Built, store: Store, tmp_path: Path
) -> None:
    export_cache(tmp_path / "cache", built.all, store, compression=Compression.ZSTD)
    cache = ImportedCache.load(tmp_path / "cache")
    assert cache.candidates("build", 2) == [_imported(built.run), _imported(built.older)]
    assert cache.candidates("build", 4) == [_imported(built.env)]
    assert cache.candidates("build", 9) == [] and cache.candidates("other", 2) == []
    assert [e.key for e in cache.entries()] == [e.key for e in (built.env, built.copy, built.run, built.older)]


def test_parents_in_the_directory_come_back_uncompressed_and_others_as_they_were(
    built: Built, store: Store, tmp_path: Path
) -> None:
    directory = tmp_path / "cache"
    export_cache(directory, built.all, store, compression=Compression.GZIP)
    _, manifest, config = _manifest(directory)
    parents = {e["key"]: e["parents"] for e in config["entries"]}[str(built.env.key)]
    assert parents[0][0]["mediaType"] == mt.OCI_LAYER_GZIP and parents[0][0]["size"] == 1234  # the base, as held
    assert parents[1][0] in manifest["layers"] and parents[2][0] in manifest["layers"]  # as the directory holds them
    got = ImportedCache.load(directory).get(built.env.key)
    assert got is not None and got.parents == built.env.parents


def test_export_is_deterministic_and_compresses_each_layer_once(
    built: Built, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Compression] = []
    real = builder.compressed.compressor

    def counting(kind: Compression, out: Any, level: int | None = None) -> Any:
        calls.append(kind)
        return real(kind, out, level)

    monkeypatch.setattr(builder.compressed, "compressor", counting)
    first = export_cache(tmp_path / "a", built.all, store, compression=Compression.GZIP)
    assert calls == [Compression.GZIP, Compression.GZIP]
    second = export_cache(tmp_path / "b", list(reversed(built.all)), store, compression=Compression.GZIP)
    assert calls == [Compression.GZIP, Compression.GZIP]  # remembered
    assert first == second
    assert not (tmp_path / "a" / "ingest").exists()


def test_tags_share_a_directory_and_replacing_one_keeps_the_others(built: Built, store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    export_cache(directory, [built.run], store, compression=Compression.GZIP, tag="a")
    export_cache(directory, built.all, store, compression=Compression.GZIP, tag="b")
    export_cache(directory, [built.copy], store, compression=Compression.GZIP, tag="a")
    assert sorted(d.ref_name or "" for d in ImageLayout.open(directory).tags()) == ["a", "b"]
    a = ImportedCache.load(directory, tag="a")
    assert [e.key for e in a.entries()] == [built.copy.key]
    b = ImportedCache.load(directory, tag="b")
    assert len(b) == 4
    other = open_store(tmp_path / "other")
    for entry in built.all:
        b.fetch(entry, other.layout.store)
    assert sorted(other.layout.store) == sorted(layer.digest for layer in built.layers.values())


def test_re_export_with_fewer_entries_removes_unreachable_blobs(built: Built, store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    export_cache(directory, built.all, store, compression=Compression.GZIP)
    layout = ImageLayout.open(directory)
    assert len(list(layout.store)) == 4  # two layers, the config, the manifest
    stray = layout.store.put_bytes(b"left behind by something else")
    desc = export_cache(directory, [built.copy], store, compression=Compression.GZIP)
    _, manifest, _ = _manifest(directory)
    left = set(layout.store)
    assert stray not in left
    expected = {desc.digest, Digest.parse(manifest["config"]["digest"])}
    expected |= {Digest.parse(layer["digest"]) for layer in manifest["layers"]}
    assert left == expected == layout.reachable()
    assert len(manifest["layers"]) == 1
    export_cache(directory, [built.env], store, compression=Compression.GZIP)  # no layer at all
    assert len(list(layout.store)) == 2
    assert ImportedCache.load(directory).get(built.env.key) == _imported(built.env)


def test_clean_up_keeps_what_other_tags_reach(built: Built, store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    export_cache(directory, built.all, store, compression=Compression.ZSTD, tag="keep")
    export_cache(directory, [built.env], store, compression=Compression.ZSTD)
    kept = ImportedCache.load(directory, tag="keep")
    other = open_store(tmp_path / "other")
    for entry in built.all:
        kept.fetch(entry, other.layout.store)
    assert other.layout.store.read(built.layers[2].digest) == built.tars[2]


# ------------------------------------------------------------------------------------------------ refusals


def _layer_blob(directory: Path, diff_id: Digest) -> Path:
    _, manifest, _ = _manifest(directory)
    [layer] = [x for x in manifest["layers"] if x["annotations"][DIFF_ID_ANNOTATION] == str(diff_id)]
    return ImageLayout(directory).store.path(Digest.parse(layer["digest"]))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_a_tampered_layer_is_refused_and_nothing_is_stored(
    built: Built, store: Store, tmp_path: Path, kind: Compression
) -> None:
    directory = tmp_path / "cache"
    export_cache(directory, built.all, store, compression=kind)
    cache = ImportedCache.load(directory)
    blob = _layer_blob(directory, built.layers[1].digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    other = open_store(tmp_path / "other")
    with pytest.raises(BuildError) as caught:
        cache.fetch(built.run, other.layout.store)
    message = str(caught.value)
    assert message.startswith(f"--cache-from type=local,src={directory}: blob sha256:{blob.name} is corrupt")
    assert not other.layout.store.has(built.layers[1].digest)
    assert not any(other.layout.store.ingest_dir.iterdir())  # the half-written copy was discarded
    cache.fetch(built.copy, other.layout.store)  # the other layer is fine
    assert other.layout.store.read(built.layers[2].digest) == built.tars[2]


def test_a_missing_layer_blob_is_refused_by_name(built: Built, store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    export_cache(directory, built.all, store, compression=Compression.GZIP)
    cache = ImportedCache.load(directory)
    blob = _layer_blob(directory, built.layers[2].digest)
    blob.unlink()
    with pytest.raises(BuildError) as caught:
        cache.fetch(built.copy, open_store(tmp_path / "other").layout.store)
    assert str(caught.value) == f"--cache-from type=local,src={directory}: blob sha256:{blob.name} is missing"


@pytest.mark.parametrize("document", ["config", "manifest"])
def test_a_tampered_document_is_refused(built: Built, store: Store, tmp_path: Path, document: str) -> None:
    directory = tmp_path / "cache"
    desc = export_cache(directory, built.all, store, compression=Compression.GZIP)
    _, manifest, _ = _manifest(directory)
    digest = desc.digest if document == "manifest" else Digest.parse(manifest["config"]["digest"])
    path = ImageLayout(directory).store.path(digest)
    path.write_bytes(path.read_bytes().replace(b'"Dockerfile"', b'"Dockerfilf"').replace(b'"layers"', b'"layerz"'))
    with pytest.raises(BuildError) as caught:
        ImportedCache.load(directory)
    message = str(caught.value)
    assert message.startswith(f"--cache-from type=local,src={directory}: tag 'latest' is not a usable pybuild cache")
    assert f"{digest}: content has digest" in message


def _rewrite(
    directory: Path,
    manifest_change: Callable[[dict[str, Any]], None] | None = None,
    config_change: Callable[[dict[str, Any]], Any] | None = None,
) -> None:
    """Store a changed manifest and config with correct digests, so only their content is wrong."""
    layout = ImageLayout.open(directory)
    _, manifest, config = _manifest(directory)
    if config_change is not None:
        raw = config_change(config)
        raw = raw if isinstance(raw, bytes) else json.dumps(config).encode()
        manifest["config"]["digest"] = str(layout.store.put_bytes(raw))
        manifest["config"]["size"] = len(raw)
    if manifest_change is not None:
        manifest_change(manifest)
    raw = json.dumps(manifest).encode()
    layout.tag("latest", Descriptor(mt.OCI_MANIFEST, layout.store.put_bytes(raw), len(raw)))


def _with_layer(config: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in config["entries"] if e["layer"] is not None)


def _set(target: Callable[[dict[str, Any]], dict[str, Any]], name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        target(document)[name] = value

    return change


def _other_layer(config: dict[str, Any]) -> None:
    entry = _with_layer(config)
    other = next(e for e in config["entries"] if e["layer"] is not None and e["layer"] != entry["layer"])
    entry["diff_id"] = other["diff_id"]


@pytest.mark.parametrize(
    ("manifest_change", "config_change", "message"),
    [
        (None, _set(_with_layer, "layer", 7), "layer 7 is not one of the manifest's 2 layers"),
        (None, _set(_with_layer, "layer", -1), "layer -1 is not one of the manifest's 2 layers"),
        (None, _set(_with_layer, "layer", True), "layer True is not one of the manifest's 2 layers"),
        (None, _set(lambda c: c, "version", 2), "cache config version 2 is not 1"),
        (None, _set(lambda c: c, "entries", {}), "'entries' must be an array"),
        (None, _other_layer, "is not layer"),
        (None, _set(_with_layer, "line", "2"), "'line' is missing or of the wrong type"),
        (None, _set(_with_layer, "key", "sha256:nothex"), "invalid"),
        (None, lambda c: c["entries"].append(c["entries"][0]), "appears twice"),
        (None, lambda c: b"not json", "config is not valid JSON"),
        (None, lambda c: b'{"version": 1, "version": 1, "entries": []}', "repeated key 'version'"),
        (_set(lambda m: m, "artifactType", "application/vnd.example"), None, "application/vnd.example, not"),
        (lambda m: m.pop("artifactType"), None, "no artifactType"),
        (_set(lambda m: m["config"], "mediaType", mt.OCI_CONFIG), None, "not a application/vnd.pybuild.cache.config"),
        (lambda m: m["layers"][0].pop("annotations"), None, f"layer 0 has no {DIFF_ID_ANNOTATION} annotation"),
        (_set(lambda m: m["layers"][0], "mediaType", mt.OCI_CONFIG), None, "not a layer's"),
        (lambda m: m.pop("layers"), None, "'layers' must be an array"),
    ],
)
def test_a_malformed_cache_is_refused_with_a_clear_message(
    built: Built,
    store: Store,
    tmp_path: Path,
    manifest_change: Callable[[dict[str, Any]], None] | None,
    config_change: Callable[[dict[str, Any]], Any] | None,
    message: str,
) -> None:
    directory = tmp_path / "cache"
    export_cache(directory, built.all, store, compression=Compression.GZIP)
    _rewrite(directory, manifest_change, config_change)
    with pytest.raises(BuildError) as caught:
        ImportedCache.load(directory)
    assert str(caught.value).startswith(f"--cache-from type=local,src={directory}: tag 'latest' is not a usable")
    assert message in str(caught.value)


def test_an_image_index_under_the_tag_is_refused(built: Built, store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    desc = export_cache(directory, built.all, store, compression=Compression.GZIP)
    ImageLayout.open(directory).tag("latest", replace(desc, media_type=mt.OCI_INDEX))
    with pytest.raises(BuildError, match="the tag points at a application/vnd.oci.image.index.v1"):
        ImportedCache.load(directory)


def test_a_missing_directory_or_tag_is_an_empty_cache_with_a_warning(
    built: Built, store: Store, tmp_path: Path
) -> None:
    missing = ImportedCache.load(tmp_path / "nowhere")
    assert (
        missing.warning == f"--cache-from type=local,src={tmp_path / 'nowhere'}: no cache imported (it does not exist)"
    )
    assert len(missing) == 0 and missing.get(built.run.key) is None and missing.candidates("build", 2) == []
    (tmp_path / "empty").mkdir()
    assert "it has no index.json" in ImportedCache.load(tmp_path / "empty").warning
    export_cache(tmp_path / "cache", built.all, store, compression=Compression.GZIP)
    untagged = ImportedCache.load(tmp_path / "cache", tag="other")
    assert untagged.warning.endswith(f"no cache imported (no tag 'other' in {tmp_path / 'cache'})")
    assert len(untagged) == 0 and untagged.entries() == []
    assert "\n" not in missing.warning + untagged.warning


def test_a_directory_that_is_not_a_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "index.json").write_text("{}")
    with pytest.raises(BuildError, match=r"^--cache-from type=local,src=.*: .*no oci-layout file"):
        ImportedCache.load(tmp_path / "cache")


# ------------------------------------------------------------------------------------------------ destinations


def test_export_refuses_the_store_itself_and_foreign_directories(built: Built, store: Store, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is pybuild's own store"):
        export_cache(store.root, built.all, store, compression=Compression.GZIP)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="neither empty nor an OCI image layout"):
        export_cache(foreign, built.all, store, compression=Compression.GZIP)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is not a directory"):
        export_cache(tmp_path / "file", built.all, store, compression=Compression.GZIP)


def test_a_failed_export_leaves_no_new_directory(built: Built, store: Store, tmp_path: Path) -> None:
    store.layout.store.delete(built.layers[2].digest)
    with pytest.raises(BuildError) as caught:
        export_cache(tmp_path / "cache", built.all, store, compression=Compression.GZIP)
    assert str(caught.value).startswith(f"--cache-to type=local,dest={tmp_path / 'cache'}: the layer of 'COPY . /src'")
    assert not (tmp_path / "cache").exists()


def test_a_damaged_compressed_copy_fails_the_export_and_leaves_no_new_directory(
    built: Built, store: Store, tmp_path: Path
) -> None:
    export_cache(tmp_path / "first", built.all, store, compression=Compression.GZIP)
    packed = _layer_blob(tmp_path / "first", built.layers[1].digest).name
    damaged = store.layout.store.path(Digest("sha256", packed))  # the remembered gzip copy in the local store
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(BuildError) as caught:
        export_cache(tmp_path / "second", built.all, store, compression=Compression.GZIP)
    assert str(caught.value).startswith(f"--cache-to type=local,dest={tmp_path / 'second'}: blob sha256:{packed}")
    assert not (tmp_path / "second").exists()


def test_re_export_leaves_blobs_the_directory_has_in_place(built: Built, store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    export_cache(directory, built.all, store, compression=Compression.GZIP)
    blob = _layer_blob(directory, built.layers[1].digest)
    before = blob.stat().st_ino
    export_cache(directory, built.all, store, compression=Compression.GZIP, tag="again")
    assert blob.stat().st_ino == before


def test_export_into_an_existing_image_layout_keeps_its_images(built: Built, store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    layout = ImageLayout.open(directory, create=True)
    raw = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}).encode()
    image = Descriptor(mt.OCI_INDEX, layout.store.put_bytes(raw), len(raw))
    layout.tag("app", image)
    export_cache(directory, built.all, store, compression=Compression.GZIP)
    assert layout.resolve("app") == image.with_ref_name("app") and layout.store.has(image.digest)


# ------------------------------------------------------------------------------------------------ other tools


def test_skopeo_reads_and_copies_the_cache(built: Built, store: Store, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    directory = tmp_path / "cache"
    desc = export_cache(directory, built.all, store, compression=Compression.ZSTD, tag="v1")
    run = subprocess.run([skopeo, "inspect", "--raw", f"oci:{directory}:v1"], capture_output=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ImageLayout(directory).store.read(desc.digest)
    # A cache moves like any OCI artifact; the copy imports as the original does.
    copy = tmp_path / "copy"
    run = subprocess.run([skopeo, "copy", "-q", f"oci:{directory}:v1", f"oci:{copy}:v1"], capture_output=True)
    assert run.returncode == 0, run.stderr
    cache = ImportedCache.load(copy, tag="v1")
    assert cache.get(built.copy.key) == _imported(built.copy)
    other = open_store(tmp_path / "other")
    cache.fetch(built.copy, other.layout.store)
    assert other.layout.store.read(built.layers[2].digest) == built.tars[2]


def test_oci_image_tool_validates_the_index_and_the_manifest(built: Built, store: Store, tmp_path: Path) -> None:
    # oci-image-tool 1.0 cannot validate a whole layout whose manifest is an artifact (it reads every config as an
    # image config), so the layout's documents are validated one by one against the image-spec schemas.
    tool = require_tool("oci-image-tool")
    directory = tmp_path / "cache"
    desc = export_cache(directory, built.all, store, compression=Compression.GZIP)
    for kind, path in (
        ("imageIndex", directory / "index.json"),
        ("manifest", ImageLayout(directory).store.path(desc.digest)),
    ):
        run = subprocess.run([tool, "validate", "--type", kind, str(path)], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Validation succeeded" in run.stdout + run.stderr


# ------------------------------------------------------------------------------------------------ registries


def _remote(store: Store, retries: int = 0) -> Remote:
    return Remote(store, RegistrySettings(retries=retries, backoff=0.0), os.environ)


def _ref(registry: FakeRegistry, name: str = "cache:app") -> Reference:
    return Reference.parse(f"{registry.host}/{name}")


def _gets(registry: FakeRegistry, kind: str = r".*") -> list[str]:
    """The paths of the GET requests made so far (``kind``: ``manifests`` or ``blobs``)."""
    return [r.path for r in registry.requests_to(rf"/v2/.+/{kind}/.+", "GET")]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_a_pushed_cache_is_the_artifact_a_directory_holds(
    built: Built, store: Store, tmp_path: Path, fake_registry: FakeRegistry, kind: Compression
) -> None:
    directory = tmp_path / "cache"
    local = export_cache(directory, built.all, store, compression=kind)
    pushed = push_cache(_ref(fake_registry), built.all, store, _remote(store), compression=kind)
    assert pushed == local
    stored = fake_registry.get_manifest("cache", "app")
    assert stored is not None and stored.media_type == mt.OCI_MANIFEST
    layout = ImageLayout(directory).store
    assert stored.raw == layout.read(local.digest)
    _, manifest, _ = _manifest(directory)
    for desc in (manifest["config"], *manifest["layers"]):
        assert fake_registry.blobs["cache"][desc["digest"]] == layout.read(Digest.parse(desc["digest"]))
    assert len(fake_registry.blobs["cache"]) == 3  # two layers and the config: nothing else


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_a_registry_cache_loads_the_records_only_and_fetches_a_layer_when_asked(
    built: Built, store: Store, tmp_path: Path, fake_registry: FakeRegistry, kind: Compression
) -> None:
    ref = _ref(fake_registry)
    desc = push_cache(ref, built.all, store, _remote(store), compression=kind)
    other = open_store(tmp_path / "other")
    fake_registry.requests.clear()

    cache = ImportedCache.pull(ref, _remote(other))
    assert cache.warning == "" and cache.manifest is not None and cache.manifest.digest == desc.digest
    assert _gets(fake_registry) == ["/v2/cache/manifests/app", f"/v2/cache/blobs/{desc_config(fake_registry)}"]
    for entry in built.all:
        assert cache.get(entry.key) == _imported(entry)
    assert cache.candidates("build", 2) == [_imported(built.run), _imported(built.older)]
    assert list(other.layout.store) == []  # the config went through the store and is gone

    cache.fetch(built.copy, other.layout.store)
    assert len(_gets(fake_registry, "blobs")) == 2  # the config, then this one layer
    assert other.layout.store.read(built.layers[2].digest) == built.tars[2]
    assert list(other.layout.store) == [built.layers[2].digest]  # uncompressed only: the download is removed
    assert not any(other.layout.store.ingest_dir.iterdir())
    cache.fetch(built.copy, other.layout.store)
    cache.fetch(built.env, other.layout.store)  # no layer
    assert len(_gets(fake_registry, "blobs")) == 2  # the store has it: nothing fetched again
    cache.fetch(built.run, other.layout.store)
    assert other.layout.store.read(built.layers[1].digest) == built.tars[1]
    assert sorted(other.layout.store) == sorted(layer.digest for layer in built.layers.values())


def desc_config(registry: FakeRegistry) -> str:
    stored = registry.get_manifest("cache", "app")
    assert stored is not None
    return str(json.loads(stored.raw)["config"]["digest"])


def test_a_compressed_copy_the_store_has_is_used_and_kept(
    built: Built, store: Store, fake_registry: FakeRegistry
) -> None:
    ref = _ref(fake_registry)
    push_cache(ref, built.all, store, _remote(store), compression=Compression.GZIP)
    store.layout.store.delete(built.layers[1].digest)  # the gzip copy stays, memoised by the push
    cache = ImportedCache.pull(ref, _remote(store))
    fake_registry.requests.clear()
    cache.fetch(built.run, store.layout.store)
    assert _gets(fake_registry) == []
    assert store.layout.store.read(built.layers[1].digest) == built.tars[1]
    stored = json.loads(fake_registry.get_manifest("cache", "app").raw)  # type: ignore[union-attr]
    assert all(store.layout.store.has(Digest.parse(layer["digest"])) for layer in stored["layers"])


def test_a_second_push_uploads_nothing_and_another_repository_mounts(
    built: Built, store: Store, fake_registry: FakeRegistry
) -> None:
    remote = _remote(store)
    push_cache(_ref(fake_registry), built.all, store, remote, compression=Compression.ZSTD)
    uploads = fake_registry.requests_to(r"/v2/cache/blobs/uploads/?", "POST")
    assert len(uploads) == 3
    fake_registry.requests.clear()
    push_cache(_ref(fake_registry, "cache:again"), built.all, store, remote, compression=Compression.ZSTD)
    assert fake_registry.requests_to(r"/v2/.+/blobs/uploads/.*") == []  # every blob was there
    assert fake_registry.get_manifest("cache", "again") == fake_registry.get_manifest("cache", "app")
    push_cache(_ref(fake_registry, "elsewhere:x"), built.all, store, remote, compression=Compression.ZSTD)
    posts = fake_registry.requests_to(r"/v2/elsewhere/blobs/uploads/?", "POST")
    assert len(posts) == 3 and all(p.param("from") == "cache" for p in posts)  # mounted, not uploaded
    assert fake_registry.requests_to(r"/v2/elsewhere/blobs/uploads/.+", "PUT") == []


def test_the_manifest_goes_last(built: Built, store: Store, fake_registry: FakeRegistry) -> None:
    push_cache(_ref(fake_registry), built.all, store, _remote(store), compression=Compression.GZIP)
    writes = [r for r in fake_registry.requests if r.method in ("PUT", "POST", "PATCH")]
    assert writes[-1].path == "/v2/cache/manifests/app" and writes[-1].method == "PUT"
    assert all("/manifests/" not in r.path for r in writes[:-1])


def test_a_failed_push_is_a_build_error_naming_the_cache(
    built: Built, store: Store, fake_registry: FakeRegistry
) -> None:
    fake_registry.faults.append(Fault("PUT", r"/v2/cache/manifests/.*", "status", status=403, times=None))
    with pytest.raises(BuildError) as caught:
        push_cache(_ref(fake_registry), built.all, store, _remote(store), compression=Compression.GZIP)
    message = str(caught.value)
    assert message.startswith(f"--cache-to type=registry,ref={fake_registry.host}/cache:app: ")
    assert "403" in message and "\n" not in message
    assert fake_registry.get_manifest("cache", "app") is None


def test_write_cache_and_open_follow_the_spec(
    built: Built, store: Store, tmp_path: Path, fake_registry: FakeRegistry
) -> None:
    remote = _remote(store)
    to = parse_cache_option(f"type=registry,ref={fake_registry.host}/cache:app,compression=zstd", "--cache-to")
    desc = write_cache(to, built.all, store, remote=remote)
    cache = ImportedCache.open(parse_cache_option(f"{fake_registry.host}/cache:app", "--cache-from"), remote)
    assert cache.manifest is not None and cache.manifest.digest == desc.digest and len(cache) == 4
    local = write_cache(parse_cache_option(f"type=local,dest={tmp_path / 'c'}", "--cache-to"), built.all, store)
    loaded = ImportedCache.open(parse_cache_option(f"type=local,src={tmp_path / 'c'}", "--cache-from"))
    assert loaded.manifest == local.with_ref_name("latest")
    with pytest.raises(BuildError, match="this build has no registry access"):
        write_cache(to, built.all, store)
    with pytest.raises(BuildError, match="this build has no registry access"):
        ImportedCache.open(parse_cache_option(f"{fake_registry.host}/cache:app", "--cache-from"))


def test_a_missing_reference_is_an_empty_cache_with_a_warning(
    built: Built, store: Store, fake_registry: FakeRegistry
) -> None:
    missing = ImportedCache.pull(_ref(fake_registry, "nothing:here"), _remote(store))
    where = f"--cache-from type=registry,ref={fake_registry.host}/nothing:here"
    assert missing.warning == f"{where}: no cache imported ({fake_registry.host}/nothing:here not found)"
    assert len(missing) == 0 and missing.get(built.run.key) is None
    push_cache(_ref(fake_registry), built.all, store, _remote(store), compression=Compression.GZIP)
    untagged = ImportedCache.pull(_ref(fake_registry, "cache:other"), _remote(store))
    assert untagged.warning.endswith("not found)") and len(untagged) == 0


def test_a_registry_that_fails_is_an_empty_cache_with_a_warning(
    built: Built, store: Store, fake_registry: FakeRegistry
) -> None:
    push_cache(_ref(fake_registry), built.all, store, _remote(store), compression=Compression.GZIP)
    fake_registry.faults.append(Fault("GET", r"/v2/cache/manifests/app", "status", status=401, times=1))
    denied = ImportedCache.pull(_ref(fake_registry), _remote(store))
    assert "no cache imported" in denied.warning and "401" in denied.warning and len(denied) == 0
    fake_registry.faults.append(Fault("GET", r"/v2/cache/blobs/.*", "status", status=503, times=None))
    unavailable = ImportedCache.pull(_ref(fake_registry), _remote(store))
    assert "no cache imported" in unavailable.warning and "503" in unavailable.warning


def test_a_transient_fault_is_retried(built: Built, store: Store, tmp_path: Path, fake_registry: FakeRegistry) -> None:
    ref = _ref(fake_registry)
    push_cache(ref, built.all, store, _remote(store), compression=Compression.GZIP)
    other = open_store(tmp_path / "other")
    fake_registry.faults.append(Fault("GET", r"/v2/cache/blobs/.*", "truncate", times=2))
    cache = ImportedCache.pull(ref, _remote(other, retries=2))
    cache.fetch(built.copy, other.layout.store)
    assert other.layout.store.read(built.layers[2].digest) == built.tars[2]


def test_a_corrupt_layer_from_a_registry_is_refused_and_nothing_is_stored(
    built: Built, store: Store, tmp_path: Path, fake_registry: FakeRegistry
) -> None:
    ref = _ref(fake_registry)
    push_cache(ref, built.all, store, _remote(store), compression=Compression.GZIP)
    other = open_store(tmp_path / "other")
    cache = ImportedCache.pull(ref, _remote(other))
    fake_registry.faults.append(Fault("GET", r"/v2/cache/blobs/.*", "corrupt", times=None))
    with pytest.raises(BuildError) as caught:
        cache.fetch(built.run, other.layout.store)
    assert str(caught.value).startswith(f"--cache-from type=registry,ref={ref}: blob sha256:")
    assert list(other.layout.store) == [] and not any(other.layout.store.ingest_dir.iterdir())


def test_a_layer_whose_content_is_not_its_diff_id_is_refused(
    built: Built, store: Store, tmp_path: Path, fake_registry: FakeRegistry
) -> None:
    """A registry verifies digests, not diff_ids: a manifest whose annotation lies is caught on the way in."""
    ref = _ref(fake_registry)
    push_cache(ref, [built.run], store, _remote(store), compression=Compression.GZIP)
    stored = json.loads(fake_registry.get_manifest("cache", "app").raw)  # type: ignore[union-attr]
    config = json.loads(fake_registry.blobs["cache"][stored["config"]["digest"]])
    wrong = str(built.layers[2].digest)
    stored["layers"][0]["annotations"][DIFF_ID_ANNOTATION] = wrong
    for entry in config["entries"]:
        entry["diff_id"] = wrong if entry["layer"] is not None else None
    raw_config = json.dumps(config).encode()
    stored["config"] = {
        **stored["config"],
        "digest": fake_registry.put_blob("cache", raw_config),
        "size": len(raw_config),
    }
    fake_registry.put_manifest("cache", "app", json.dumps(stored).encode())
    other = open_store(tmp_path / "other")
    cache = ImportedCache.pull(ref, _remote(other))
    entry = cache.get(built.run.key)
    assert entry is not None and entry.diff_id == built.layers[2].digest
    with pytest.raises(BuildError, match="is corrupt"):
        cache.fetch(entry, other.layout.store)
    assert list(other.layout.store) == []


def test_a_blob_the_registry_lost_is_missing(
    built: Built, store: Store, tmp_path: Path, fake_registry: FakeRegistry
) -> None:
    ref = _ref(fake_registry)
    push_cache(ref, built.all, store, _remote(store), compression=Compression.GZIP)
    cache = ImportedCache.pull(ref, _remote(open_store(tmp_path / "other")))
    stored = json.loads(fake_registry.get_manifest("cache", "app").raw)  # type: ignore[union-attr]
    for layer in stored["layers"]:
        del fake_registry.blobs["cache"][layer["digest"]]
    with pytest.raises(BuildError) as caught:
        cache.fetch(built.copy, open_store(tmp_path / "other").layout.store)
    assert str(caught.value).endswith(" is missing")
    del fake_registry.blobs["cache"][stored["config"]["digest"]]
    with pytest.raises(BuildError, match=r"not found in 127\.0\.0\.1"):
        ImportedCache.pull(ref, _remote(store))


def test_an_image_under_the_reference_is_refused(built: Built, store: Store, fake_registry: FakeRegistry) -> None:
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    digest = fake_registry.put_blob("cache", config)
    image = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": digest, "size": len(config)},
        "layers": [],
    }
    fake_registry.put_manifest("cache", "app", json.dumps(image).encode())
    with pytest.raises(BuildError) as caught:
        ImportedCache.pull(_ref(fake_registry), _remote(store))
    assert str(caught.value) == (
        f"--cache-from type=registry,ref={fake_registry.host}/cache:app: {fake_registry.host}/cache:app is not a "
        f"usable pybuild cache: the manifest has no artifactType, not {CACHE_ARTIFACT_TYPE}"
    )


def test_skopeo_copies_a_pushed_cache_into_a_directory_that_imports_the_same(
    built: Built, store: Store, tmp_path: Path, registry: RegistryServer
) -> None:
    """Against distribution itself: it takes the artifact, and skopeo moves it back into a cache directory."""
    skopeo = require_tool("skopeo")
    ref = Reference.parse(f"{registry.host}/team/cache:v1")
    desc = push_cache(ref, built.all, store, _remote(store), compression=Compression.ZSTD)
    pulled = ImportedCache.pull(ref, _remote(open_store(tmp_path / "other")))
    assert pulled.manifest is not None and pulled.manifest.digest == desc.digest
    copy = tmp_path / "copy"
    run = subprocess.run(
        [skopeo, "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{copy}:v1"], capture_output=True
    )
    assert run.returncode == 0, run.stderr
    loaded = ImportedCache.load(copy, tag="v1")
    assert loaded.manifest is not None and loaded.manifest.digest == desc.digest
    for entry in built.all:
        assert loaded.get(entry.key) == pulled.get(entry.key) == _imported(entry)
    other = open_store(tmp_path / "third")
    pulled.fetch(built.copy, other.layout.store)
    assert other.layout.store.read(built.layers[2].digest) == built.tars[2]


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD], ids=lambda k: k.value)
def test_a_layer_beyond_the_size_limit_is_refused_while_it_streams(
    built: Built, store: Store, tmp_path: Path, kind: Compression
) -> None:
    directory = tmp_path / "cache"
    export_cache(directory, built.all, store, compression=kind)
    cache = ImportedCache.load(directory)
    other = open_store(tmp_path / "other")
    with pytest.raises(BuildError) as caught:
        cache.fetch(built.run, other.layout.store, ApplyLimits(max_bytes=64 << 10))
    layer = built.layers[1].digest
    assert str(caught.value) == (
        f"--cache-from type=local,src={directory}: layer {layer} expands to more than the 64 KiB limit"
    )
    assert caught.value.hint == "raise it with --max-layer-size"
    assert not other.layout.store.has(layer)
    assert not any(other.layout.store.ingest_dir.iterdir())
    cache.fetch(built.run, other.layout.store, ApplyLimits(max_bytes=len(built.tars[1])))  # exactly at the bound
    assert other.layout.store.read(layer) == built.tars[1]
