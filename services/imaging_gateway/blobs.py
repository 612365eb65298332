"""Local filesystem blob store: content-addressed, crash-safe writes, and an on-disk record of what was announced.

Layout: <root>/<h[:2]>/<h[2:4]>/<SOPInstanceUID>/<sha256>.dcm, h = sha256(SOPInstanceUID); next to each file an
empty `<sha256>.announced` once its claim check is in Kafka. That marker is the duplicate index: a file without one
(a crash between the write and the announcement) is announced again on the next send, never lost.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

_PLAIN_UID = re.compile(r"^[0-9.]{1,64}$")


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sop_instance_uid: str, sha256: str) -> Path:
        h = hashlib.sha256(sop_instance_uid.encode()).hexdigest()
        # A UID with characters outside the DICOM UID alphabet never becomes a path component.
        folder = sop_instance_uid if _PLAIN_UID.match(sop_instance_uid) else f"uid-{h}"
        return self.root / h[:2] / h[2:4] / folder / f"{sha256}.dcm"

    def uri(self, path: Path) -> str:
        return path.resolve().as_uri()

    def announced(self, path: Path) -> bool:
        return path.with_suffix(".announced").exists()

    def put(self, sop_instance_uid: str, sha256: str, data: bytes) -> Path:
        """Write once: temp file, fsync, atomic rename, fsync of the folder. Idempotent for the same content."""
        path = self.path_for(sop_instance_uid, sha256)
        if path.exists():
            return path
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
        return path

    def mark_announced(self, path: Path) -> None:
        marker = path.with_suffix(".announced")
        marker.touch()
        _fsync_dir(marker.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
