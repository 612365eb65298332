"""Blob stores for DICOM instances and imaging outputs: the local filesystem (file:// URIs) or S3 (s3:// URIs).

Instances are content-addressed: <root or prefix>/<h[:2]>/<h[2:4]>/<SOPInstanceUID>/<sha256>.dcm, h =
sha256(SOPInstanceUID). Next to each one an empty `<sha256>.announced` (a file, or a zero-byte S3 object) once its
claim check is in Kafka: that marker is the duplicate index. An instance without one (a crash between the write and
the announcement) is announced again on the next send, never lost. Derived outputs (SEG/SR, key images) live under
`outputs/<name>` and are overwritten in place.

Errors are OSErrors: FileNotFoundError for a missing blob, PermissionError for a refused one, BlobStoreUnavailable
for what is worth retrying (S3 unreachable, timed out, throttled or 5xx); any other OSError means unreadable.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from services.common.config import Settings, get_settings

_PLAIN_UID = re.compile(r"^[0-9.]{1,64}$")
_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
OUTPUTS = "outputs"


class BlobStoreUnavailable(OSError):
    """The store could not be reached or answered with a transient failure: retry later, the blob may be fine."""


class BlobStore(Protocol):
    def put(self, sop_instance_uid: str, sha256: str, data: bytes) -> str:
        """Store an instance durably (idempotent for the same content); its URI."""
        ...

    def announced(self, uri: str) -> bool: ...

    def mark_announced(self, uri: str) -> None: ...

    def put_output(self, name: str, data: bytes, content_type: str) -> str:
        """Store (or overwrite) a derived output under outputs/<name>; its URI."""
        ...

    def get(self, uri: str) -> bytes: ...


def instance_key(sop_instance_uid: str, sha256: str) -> str:
    """The relative location of an instance, the same in both stores."""
    h = hashlib.sha256(sop_instance_uid.encode()).hexdigest()
    # A UID with characters outside the DICOM UID alphabet never becomes a path component or key segment.
    folder = sop_instance_uid if _PLAIN_UID.match(sop_instance_uid) else f"uid-{h}"
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    return f"{h[:2]}/{h[2:4]}/{folder}/{sha256}.dcm"


def output_key(name: str) -> str:
    if not _OUTPUT_NAME.match(name) or any(part in (".", "..") for part in name.split("/")):
        raise ValueError(f"output name {name!r}: use letters, digits, '._-' and '/' between plain segments")
    return f"{OUTPUTS}/{name}"


def _marker(key: str) -> str:
    return key.removesuffix(".dcm") + ".announced"


# ---------------------------------------------------------------- local filesystem


class LocalBlobStore:
    """Files under `root`: temp file, fsync, atomic rename, fsync of the folder."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    def path_for(self, sop_instance_uid: str, sha256: str) -> Path:
        return self.root / instance_key(sop_instance_uid, sha256)

    def put(self, sop_instance_uid: str, sha256: str, data: bytes) -> str:
        path = self.path_for(sop_instance_uid, sha256)
        if not path.exists():
            _write_atomically(path, data)
        return path.as_uri()

    def announced(self, uri: str) -> bool:
        return Path(_marker(str(file_path(uri)))).exists()

    def mark_announced(self, uri: str) -> None:
        marker = Path(_marker(str(file_path(uri))))
        marker.touch()
        _fsync_dir(marker.parent)

    def put_output(self, name: str, data: bytes, content_type: str) -> str:
        """`content_type` is not kept on disk: the name's suffix says it (.dcm, .png)."""
        path = self.root / output_key(name)
        _write_atomically(path, data)
        return path.as_uri()

    def get(self, uri: str) -> bytes:
        return file_path(uri).read_bytes()


def file_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise OSError(f"not a file:// URI: {uri!r}")
    return Path(unquote(parsed.path))


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- S3 (and S3-compatible stores)


class S3BlobStore:
    """Objects in `bucket` under `prefix`. A PUT that S3 answers 200 is durable; the marker is a zero-byte object."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")

    def key_for(self, sop_instance_uid: str, sha256: str) -> str:
        return self._key(instance_key(sop_instance_uid, sha256))

    def put(self, sop_instance_uid: str, sha256: str, data: bytes) -> str:
        key = self.key_for(sop_instance_uid, sha256)
        # Content-addressed: an object already under this key has these bytes, so a resend uploads nothing.
        if not self._exists(key):
            self._put(key, data, "application/dicom")
        return self._uri(key)

    def announced(self, uri: str) -> bool:
        return self._exists(_marker(self._own_key(uri)))

    def mark_announced(self, uri: str) -> None:
        self._put(_marker(self._own_key(uri)), b"", "application/octet-stream")

    def put_output(self, name: str, data: bytes, content_type: str) -> str:
        key = self._key(output_key(name))
        self._put(key, data, content_type)
        return self._uri(key)

    def get(self, uri: str) -> bytes:
        bucket, key = s3_location(uri)
        return s3_get(self.client, bucket, key)

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{quote(key)}"

    def _own_key(self, uri: str) -> str:
        bucket, key = s3_location(uri)
        if bucket != self.bucket:
            raise OSError(f"{uri!r} is not in bucket {self.bucket!r}")
        return key

    def _exists(self, key: str) -> bool:
        try:
            with _s3_errors(f"s3://{self.bucket}/{key}"):
                self.client.head_object(Bucket=self.bucket, Key=key)
        except FileNotFoundError:
            return False
        return True

    def _put(self, key: str, data: bytes, content_type: str) -> None:
        with _s3_errors(f"s3://{self.bucket}/{key}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)


def s3_location(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise OSError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, unquote(parsed.path.lstrip("/"))


def s3_get(client: Any, bucket: str, key: str) -> bytes:
    with _s3_errors(f"s3://{bucket}/{key}"):
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()


# S3 error codes that mean "try again"; every other ClientError is a verdict on this blob.
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling"}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


@contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """botocore's exceptions -> the OSError subclasses the module docstring promises."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        reason = f"{what}: {code or status}"
        if code in _MISSING_CODES or status == 404:
            raise FileNotFoundError(reason) from exc
        if code in _DENIED_CODES or status == 403:
            raise PermissionError(reason) from exc
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            raise BlobStoreUnavailable(reason) from exc
        raise OSError(reason) from exc
    except (BotoConnectionError, HTTPClientError) as exc:
        raise BlobStoreUnavailable(f"{what}: {type(exc).__name__}") from exc
    except BotoCoreError as exc:  # credentials missing, bad parameters: not worth a retry
        raise OSError(f"{what}: {type(exc).__name__}: {exc}") from exc


_clients: dict[tuple[str | None, ...], Any] = {}
_clients_lock = threading.Lock()


def s3_client(settings: Settings) -> Any:
    """One boto3 client per process and configuration (clients are thread-safe; creating one costs ~50 ms)."""
    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    config_key = (settings.s3_endpoint_url, settings.s3_region, settings.s3_access_key_id, secret)
    with _clients_lock:
        if config_key not in _clients:
            _clients[config_key] = boto3.session.Session().client(
                "s3",
                endpoint_url=settings.s3_endpoint_url,
                region_name=settings.s3_region,
                # None: boto3's own chain (environment, web identity on Kubernetes, instance profile)
                aws_access_key_id=settings.s3_access_key_id,
                aws_secret_access_key=secret,
                config=Config(
                    # path style: S3-compatible servers (MinIO, Ceph, the test server) rarely have bucket DNS names
                    s3={"addressing_style": "path"},
                    connect_timeout=settings.s3_timeout_s,
                    read_timeout=settings.s3_timeout_s,
                    retries={"mode": "standard", "max_attempts": 3},
                ),
            )
        return _clients[config_key]


# ---------------------------------------------------------------- choosing and reading


def blob_store(settings: Settings) -> BlobStore:
    """The store the settings name (`blob_store`: local or s3)."""
    if settings.blob_store == "s3":
        if not settings.s3_bucket:
            raise ValueError("MEDSTREAM_S3_BUCKET is required with MEDSTREAM_BLOB_STORE=s3")
        return S3BlobStore(s3_client(settings), settings.s3_bucket, settings.s3_prefix)
    return LocalBlobStore(settings.dicom_blob_dir or settings.state_dir / "blobs")


def read_blob(uri: str, settings: Settings | None = None) -> bytes:
    """The bytes behind any URI a store returned (file:// or s3://), whichever store this process writes to."""
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return file_path(uri).read_bytes()
    if scheme == "s3":
        bucket, key = s3_location(uri)
        return s3_get(s3_client(settings or get_settings()), bucket, key)
    raise OSError(f"blob URI scheme {scheme!r} is not supported (file:// or s3://)")
