"""Both blob stores: the local filesystem (tmp_path) and S3 against a real S3-compatible server (tools/s3server)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.blobs import (
    BlobStore,
    BlobStoreUnavailable,
    LocalBlobStore,
    S3BlobStore,
    blob_store,
    read_blob,
    s3_client,
)
from services.common.config import Settings
from tests.s3server import S3Server

pytestmark = pytest.mark.unit
S3_PORT, DEAD_PORT = 18200, 18209  # nothing listens on DEAD_PORT


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(S3_PORT, tmp_path_factory.mktemp("s3") / "data").start()
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return blob_store(Settings(blob_store="local", dicom_blob_dir=tmp_path / "blobs"))
    server: S3Server = request.getfixturevalue("s3")
    return blob_store(server.settings(s3_prefix=f"t/{tmp_path.name}"))


# ---------------------------------------------------------------- the interface, on both stores


def test_put_get_round_trip_and_idempotent(store: BlobStore) -> None:
    data = b"\0" * 128 + b"DICM one"
    uri = store.put("1.2.3.4", sha(data), data)
    assert store.put("1.2.3.4", sha(data), data) == uri
    assert store.get(uri) == data
    assert uri.endswith(f"/1.2.3.4/{sha(data)}.dcm")


def test_same_uid_new_bytes_is_a_second_blob(store: BlobStore) -> None:
    first, second = b"version 1", b"version 2"
    a, b = store.put("1.2.3.5", sha(first), first), store.put("1.2.3.5", sha(second), second)
    assert a != b and store.get(a) == first and store.get(b) == second


def test_announced_marker(store: BlobStore) -> None:
    uri = store.put("1.2.3.6", sha(b"x"), b"x")
    assert not store.announced(uri)
    store.mark_announced(uri)
    store.mark_announced(uri)
    assert store.announced(uri) and store.get(uri) == b"x"
    other = store.put("1.2.3.6", sha(b"y"), b"y")
    assert not store.announced(other), "the marker belongs to one version"


def test_outputs_are_overwritten_in_place(store: BlobStore) -> None:
    uri = store.put_output("1.2.3/seg.dcm", b"first", "application/dicom")
    assert "/outputs/1.2.3/seg.dcm" in uri and store.get(uri) == b"first"
    assert store.put_output("1.2.3/seg.dcm", b"second", "application/dicom") == uri
    assert store.get(uri) == b"second"


@pytest.mark.parametrize("name", ["", "/etc/passwd", "a/../b", "../b", "a//b", "a b.png", "./x"])
def test_output_names_never_escape_outputs(store: BlobStore, name: str) -> None:
    with pytest.raises(ValueError):
        store.put_output(name, b"x", "image/png")


def test_missing_blob_is_file_not_found(store: BlobStore) -> None:
    uri = store.put("1.2.3.7", sha(b"z"), b"z")
    gone = uri.replace(sha(b"z"), sha(b"never stored"))
    with pytest.raises(FileNotFoundError):
        store.get(gone)
    assert not store.announced(gone)


def test_a_uid_with_odd_characters_never_becomes_a_key_segment(store: BlobStore) -> None:
    uri = store.put("../../etc/passwd", "cd" * 32, b"x")
    assert ".." not in uri and "passwd" not in uri and store.get(uri) == b"x"


# ---------------------------------------------------------------- local layout


def test_local_layout_and_no_temp_files(tmp_path: Path) -> None:
    local = LocalBlobStore(tmp_path)
    uri = local.put("1.2.3", "ab" * 32, b"one")
    path = local.path_for("1.2.3", "ab" * 32)
    h = sha(b"1.2.3")
    assert uri == path.as_uri() and path == tmp_path.resolve() / h[:2] / h[2:4] / "1.2.3" / f"{'ab' * 32}.dcm"
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    local.mark_announced(uri)
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{'ab' * 32}.announced", path.name]
    out = local.put_output("key/image.png", b"png", "image/png")
    assert out == (tmp_path.resolve() / "outputs" / "key" / "image.png").as_uri()
    assert [p.name for p in (tmp_path / "outputs" / "key").iterdir()] == ["image.png"]


# ---------------------------------------------------------------- S3 layout, dispatch, errors, persistence


def test_s3_layout_mirrors_the_local_one(s3: S3Server) -> None:
    store = blob_store(s3.settings(s3_prefix="instances"))
    assert isinstance(store, S3BlobStore)
    uri = store.put("1.2.3", "ab" * 32, b"one")
    h = sha(b"1.2.3")
    key = f"instances/{h[:2]}/{h[2:4]}/1.2.3/{'ab' * 32}.dcm"
    assert uri == f"s3://{s3.bucket}/{key}"
    store.mark_announced(uri)
    client = s3_client(s3.settings())
    listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=key.rsplit("/", 1)[0])
    assert sorted(o["Key"] for o in listed["Contents"]) == [key.removesuffix(".dcm") + ".announced", key]
    head = client.head_object(Bucket=s3.bucket, Key=key)
    assert head["ContentType"] == "application/dicom" and head["ContentLength"] == 3
    out = store.put_output("key/image.png", b"png", "image/png")
    assert out == f"s3://{s3.bucket}/instances/outputs/key/image.png"
    assert client.head_object(Bucket=s3.bucket, Key="instances/outputs/key/image.png")["ContentType"] == "image/png"


def test_one_client_per_process_and_configuration(s3: S3Server) -> None:
    assert s3_client(s3.settings()) is s3_client(s3.settings(s3_prefix="other"))
    assert s3_client(s3.settings()) is not s3_client(s3.settings(s3_endpoint_url=f"http://127.0.0.1:{DEAD_PORT}"))


def test_read_blob_dispatches_on_the_scheme(s3: S3Server, tmp_path: Path) -> None:
    on_s3 = blob_store(s3.settings()).put("1.2.4", sha(b"s3"), b"s3")
    on_disk = LocalBlobStore(tmp_path).put("1.2.4", sha(b"disk"), b"disk")
    # A worker configured for the local store still reads what an S3-configured gateway wrote, and vice versa.
    worker = s3.settings(blob_store="local")
    assert read_blob(on_s3, worker) == b"s3" and read_blob(on_disk, worker) == b"disk"
    assert read_blob(on_disk) == b"disk"
    with pytest.raises(FileNotFoundError):
        read_blob(f"s3://{s3.bucket}/no/such/key.dcm", worker)
    with pytest.raises(FileNotFoundError):
        read_blob(f"s3://no-such-bucket/{'a' * 10}.dcm", worker)
    with pytest.raises(FileNotFoundError):
        read_blob((tmp_path / "missing.dcm").as_uri())
    with pytest.raises(OSError) as unsupported:
        read_blob("https://example.invalid/a.dcm")
    assert not isinstance(unsupported.value, BlobStoreUnavailable | FileNotFoundError)


def test_s3_required_bucket() -> None:
    with pytest.raises(ValueError, match="MEDSTREAM_S3_BUCKET"):
        blob_store(Settings(blob_store="s3", s3_bucket=""))


def test_server_down_is_retryable(s3: S3Server) -> None:
    down = s3.settings(s3_endpoint_url=f"http://127.0.0.1:{DEAD_PORT}")
    store = blob_store(down)
    for call in (
        lambda: store.put("1.2.5", sha(b"d"), b"d"),
        lambda: store.announced(f"s3://{s3.bucket}/k.dcm"),
        lambda: store.put_output("x.png", b"d", "image/png"),
        lambda: read_blob(f"s3://{s3.bucket}/k.dcm", down),
    ):
        with pytest.raises(BlobStoreUnavailable):
            call()
    assert issubclass(BlobStoreUnavailable, OSError)


def test_objects_survive_a_server_restart(tmp_path: Path) -> None:
    server = S3Server(S3_PORT + 1, tmp_path / "data").start()
    try:
        store = blob_store(server.settings())
        uri = store.put("1.2.6", sha(b"kept"), b"kept")
        store.mark_announced(uri)
        out = store.put_output("r/report.dcm", b"sr", "application/dicom")
        server.stop()
        with pytest.raises(BlobStoreUnavailable):
            store.get(uri)
        server.start()
        assert store.get(uri) == b"kept" and store.announced(uri) and store.get(out) == b"sr"
    finally:
        server.stop()
