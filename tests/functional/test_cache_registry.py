"""``--cache-to``/``--cache-from type=registry`` through real builds: one machine (store A) pushes its step cache to
a registry; another (store B), starting empty, hits every step, makes the very same image, and downloads only the
layers its result needs: a builder stage whose files only feed a cached ``COPY --from`` costs nothing.

Every test reads the plain progress, as tests/functional/test_cache.py does: ``#N CACHED`` for a hit,
``#N cache miss: REASON`` for the first missed step of a stage, ``#N DONE`` for a step that ran.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import requests
from conftest import CLIResult, run_pybuild, step_states, write_context
from fakeregistry import FakeRegistry, Fault
from registryserver import RegistryServer

EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

DOCKERFILE = """\
FROM {registry}/busybox:1 AS builder
RUN head -c 300000 /dev/urandom > /tool.bin && echo built > /built.txt
RUN echo again >> /built.txt
FROM {registry}/busybox:1
COPY --from=builder /built.txt /from-builder.txt
COPY app.txt /app/app.txt
WORKDIR /app
RUN cat /from-builder.txt app.txt > out.txt
"""


@dataclass
class Outcome:
    result: CLIResult
    steps: dict[str, str]  # step as shown (without the [stage i/n] label) -> "CACHED", "DONE" or "miss: REASON"
    image: str  # the image ID, from --iidfile

    def __getitem__(self, prefix: str) -> str:
        found = [state for title, state in self.steps.items() if title.startswith(prefix)]
        assert len(found) == 1, f"{prefix!r} is not one step of {list(self.steps)}"
        return found[0]


def build(root: Path, ctx: Path, *args: str) -> Outcome:
    iidfile = root.parent / f"{root.name}.iid"
    result = run_pybuild(
        "--root", str(root), "build", "--progress", "plain", "--iidfile", str(iidfile), *args, str(ctx), env=EPOCH
    )
    assert result.code == 0, result
    return Outcome(result, step_states(result.err), iidfile.read_text().strip())


def push_base(host: str) -> None:
    """busybox (the fixture's, in the default store) pushed as HOST/busybox:1, the base both stores pull."""
    pushed = run_pybuild("push", "busybox", f"{host}/busybox:1")
    assert pushed.code == 0, pushed


def blobs(root: Path) -> set[str]:
    return {f"sha256:{path.name}" for path in (root / "blobs" / "sha256").iterdir()}


def image_diff_ids(root: Path, image: str) -> set[str]:
    config = json.loads((root / "blobs" / "sha256" / image.removeprefix("sha256:")).read_text())
    return set(config["rootfs"]["diff_ids"])


def cache_layers(url: str, repository: str = "cache", tag: str = "app") -> dict[str, str]:
    """The cache manifest's layers: diff_id -> the compressed blob's digest."""
    answer = requests.get(f"{url}/v2/{repository}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}, timeout=10)
    answer.raise_for_status()
    manifest = answer.json()
    assert manifest["artifactType"] == "application/vnd.pybuild.cache.v1+json"
    return {layer["annotations"]["dev.pybuild.diff_id"]: layer["digest"] for layer in manifest["layers"]}


def test_an_empty_store_hits_every_step_from_a_registry_cache_and_fetches_only_what_the_image_needs(
    tmp_path: Path, busybox: str, registry: RegistryServer
) -> None:
    push_base(registry.host)
    ctx = write_context(tmp_path / "ctx", DOCKERFILE.format(registry=registry.host), {"app.txt": "app\n"})
    cache = f"{registry.host}/cache:app"
    first = build(tmp_path / "A", ctx, "-t", "app", "--cache-to", f"type=registry,ref={cache},mode=max")
    assert first.steps and all(state != "CACHED" for state in first.steps.values()), first.steps
    assert f"exporting cache to {cache}" in first.result.err

    out = tmp_path / "B-rootfs"
    from_cache = ("--cache-from", f"type=registry,ref={cache}")
    second = build(tmp_path / "B", ctx, "-t", "app", *from_cache, "-o", f"type=local,dest={out}")
    assert len(second.steps) == 6 and all(s == "CACHED" for s in second.steps.values()), second.steps
    assert second.image == first.image
    manifests = [json.loads(run_pybuild("--root", str(tmp_path / r), "inspect", "app").out) for r in "AB"]
    assert manifests[0][0]["Digest"] == manifests[1][0]["Digest"]  # the same image digest, not only the same ID

    # What B holds: the image's layers (uncompressed, as a store keeps them), none of the builder stage's, and no
    # compressed copy of anything in the cache (each went through the store and was removed once unpacked).
    layers = cache_layers(registry.url)
    needed = image_diff_ids(tmp_path / "B", second.image)
    builder_only = set(layers) - needed
    assert len(builder_only) == 2  # the builder stage's two RUN layers
    held = blobs(tmp_path / "B")
    assert not builder_only & held
    assert set(layers) & needed <= held
    assert not set(layers.values()) & held  # no compressed cache blob stayed behind
    assert (out / "app" / "out.txt").read_text() == "built\nagain\napp\n"


def test_a_changed_source_misses_from_its_step_on_and_still_builds(
    tmp_path: Path, busybox: str, registry: RegistryServer
) -> None:
    push_base(registry.host)
    ctx = write_context(tmp_path / "ctx", DOCKERFILE.format(registry=registry.host), {"app.txt": "app\n"})
    cache = f"{registry.host}/cache:app"
    first = build(tmp_path / "A", ctx, "--cache-to", f"type=registry,ref={cache},mode=max")
    (ctx / "app.txt").write_text("changed\n")

    out = tmp_path / "B-rootfs"
    second = build(tmp_path / "B", ctx, "--cache-from", cache, "-o", f"type=local,dest={out}")  # bare: as buildx
    assert second["RUN head"] == "CACHED" and second["RUN echo again"] == "CACHED"
    assert second["COPY --from=builder"] == "CACHED"
    assert second["COPY app.txt"] == "miss: app.txt changed"
    assert second["WORKDIR"] == "DONE" and second["RUN cat"] == "DONE"
    assert second.image != first.image
    assert (out / "app" / "out.txt").read_text() == "built\nagain\nchanged\n"
    # The missed COPY needed the stage's files up to it, not the builder stage's.
    builder_only = set(cache_layers(registry.url)) - image_diff_ids(tmp_path / "B", second.image)
    assert builder_only and not builder_only & blobs(tmp_path / "B")


def test_the_downloads_of_a_cached_build_are_the_manifest_the_config_and_the_image_layers(
    tmp_path: Path, busybox: str, fake_registry: FakeRegistry
) -> None:
    push_base(fake_registry.host)
    ctx = write_context(tmp_path / "ctx", DOCKERFILE.format(registry=fake_registry.host), {"app.txt": "app\n"})
    cache = f"{fake_registry.host}/cache:app"
    first = build(tmp_path / "A", ctx, "--cache-to", f"type=registry,ref={cache},mode=max,compression=zstd")
    stored = fake_registry.get_manifest("cache", "app")
    assert stored is not None
    manifest = json.loads(stored.raw)
    fake_registry.requests.clear()

    second = build(tmp_path / "B", ctx, "--cache-from", f"type=registry,ref={cache}")
    assert all(s == "CACHED" for s in second.steps.values()) and second.image == first.image
    needed = image_diff_ids(tmp_path / "B", second.image)
    wanted = {layer["digest"] for layer in manifest["layers"] if layer["annotations"]["dev.pybuild.diff_id"] in needed}
    gets = [r.path for r in fake_registry.requests_to(r"/v2/cache/.+", "GET")]
    assert sorted(gets) == sorted(
        ["/v2/cache/manifests/app", f"/v2/cache/blobs/{manifest['config']['digest']}"]
        + [f"/v2/cache/blobs/{digest}" for digest in wanted]
    )
    assert len(wanted) == 3 and len(manifest["layers"]) == 5  # the final stage's three; the builder's two RUNs


def test_a_layer_the_registry_lost_fails_the_build_that_needs_it(
    tmp_path: Path, busybox: str, fake_registry: FakeRegistry
) -> None:
    push_base(fake_registry.host)
    ctx = write_context(tmp_path / "ctx", DOCKERFILE.format(registry=fake_registry.host), {"app.txt": "app\n"})
    cache = f"{fake_registry.host}/cache:app"
    build(tmp_path / "A", ctx, "--cache-to", f"type=registry,ref={cache},mode=max")
    manifest = json.loads(fake_registry.get_manifest("cache", "app").raw)  # type: ignore[union-attr]
    for layer in manifest["layers"]:
        del fake_registry.blobs["cache"][layer["digest"]]
    result = run_pybuild("--root", str(tmp_path / "B"), "build", "--cache-from", cache, str(ctx), env=EPOCH)
    assert result.code == 1, result
    last = result.err.strip().splitlines()[-1]
    assert re.fullmatch(rf"pybuild: .*--cache-from type=registry,ref={re.escape(cache)}: blob (\S+) is missing", last)
    assert last.split(" blob ")[1].split()[0] in {layer["digest"] for layer in manifest["layers"]}


def test_a_store_that_exports_again_fetches_what_it_exports(
    tmp_path: Path, busybox: str, fake_registry: FakeRegistry
) -> None:
    """CI's usual pair, --cache-from and --cache-to the same ref with mode=max: the builder stage's layers are
    fetched, since the new cache must hold them, and the cache pushed back is the same artifact."""
    push_base(fake_registry.host)
    ctx = write_context(tmp_path / "ctx", DOCKERFILE.format(registry=fake_registry.host), {"app.txt": "app\n"})
    cache = f"type=registry,ref={fake_registry.host}/cache:app,mode=max"
    build(tmp_path / "A", ctx, "--cache-to", cache)
    before = fake_registry.get_manifest("cache", "app")
    fake_registry.requests.clear()
    second = build(tmp_path / "B", ctx, "--cache-from", cache.removesuffix(",mode=max"), "--cache-to", cache)
    assert all(s == "CACHED" for s in second.steps.values())
    assert fake_registry.get_manifest("cache", "app") == before
    assert fake_registry.requests_to(r"/v2/cache/blobs/uploads/.*") == []  # compression is deterministic


def test_a_missing_cache_only_warns_and_a_failed_export_fails_unless_ignored(
    tmp_path: Path, busybox: str, fake_registry: FakeRegistry
) -> None:
    push_base(fake_registry.host)
    ctx = write_context(tmp_path / "ctx", f"FROM {fake_registry.host}/busybox:1\nRUN echo hi > /hi\n")
    missing = f"{fake_registry.host}/cache:none"
    outcome = build(tmp_path / "A", ctx, "--cache-from", missing)
    assert f"WARNING: --cache-from type=registry,ref={missing}: no cache imported ({missing} not found)" in (
        outcome.result.err
    )
    assert outcome["RUN"].startswith("miss: ")

    fake_registry.faults.append(Fault("PUT", r"/v2/cache/manifests/.*", "status", status=403, times=None))
    to = f"type=registry,ref={fake_registry.host}/cache:app"
    failed = run_pybuild("--root", str(tmp_path / "A"), "build", "--progress", "plain", "--cache-to", to, str(ctx))
    assert failed.code == 1, failed
    assert f"--cache-to type=registry,ref={fake_registry.host}/cache:app: " in failed.err and "403" in failed.err
    ignored = build(tmp_path / "A", ctx, "--cache-to", to + ",ignore-error=true")
    assert "(ignore-error=true: the build goes on)" in ignored.result.err
