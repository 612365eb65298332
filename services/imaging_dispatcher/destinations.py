"""Where the imaging evidence goes: DIMSE C-STORE to a PACS, or DICOMweb STOW-RS to an archive.

A destination is configured as `name=url`:

    pacs=dicom://PACS@10.0.0.5:104            C-STORE SCU, called AE title PACS
    archive=https://vna.example.org/dicomweb  STOW-RS to <url>/studies

Sending either works or fails in one of two ways, and the difference decides what the dispatcher does:

- `Unreachable`: the destination could not take the objects now (connection refused, association aborted or
  rejected as transient, out of resources 0xA7xx, HTTP 5xx/429/401/403). The dispatcher waits and tries again;
  nothing is committed meanwhile.
- `Refused`: the destination answered that it will never take these objects (C-STORE failure status, association
  rejected as permanent, no accepted presentation context, HTTP 4xx or a STOW-RS failed-SOP list). Trying again
  would give the same answer: the report goes to the dead-letter topic with the destination's reason.
"""

from __future__ import annotations

import io
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

import httpx
import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

DICOM = "application/dicom"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
# C-STORE statuses that mean "stored" (Success and the three standard Warnings, PS3.4 B.2.3).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}
# Association rejected: result 1 is rejected-permanent, 2 rejected-transient (PS3.8 9.3.4).
_REJECTED_TRANSIENT = 2


class Unreachable(Exception):
    """The destination could not take the objects now; try again later."""


class Refused(Exception):
    """The destination will not take these objects; trying again would give the same answer."""


class Destination(Protocol):
    @property
    def name(self) -> str: ...

    def send(self, objects: Sequence[bytes]) -> None:
        """Deliver every object or raise `Unreachable` / `Refused` (blocking; run it in a thread)."""

    def describe(self) -> str:
        """Where it sends, without credentials."""


def parse_destination(entry: str, *, calling_ae: str, timeout_s: float, stow_token: str | None) -> Destination:
    """One `name=url` entry of MEDSTREAM_DISPATCH_DESTINATIONS."""
    name, sep, url = entry.partition("=")
    name = name.strip()
    if not sep or not _NAME.match(name):
        raise ValueError(f"dispatch destination {entry!r}: expected name=url with a lower-case name (a-z, 0-9, -)")
    parsed = urlparse(url.strip())
    if parsed.scheme == "dicom":
        if not parsed.username or not parsed.hostname or not parsed.port:
            raise ValueError(f"dispatch destination {name!r}: expected dicom://CALLED_AE@host:port")
        if len(parsed.username) > 16:
            raise ValueError(f"dispatch destination {name!r}: an AE title has at most 16 characters")
        return DimseDestination(name, parsed.hostname, parsed.port, parsed.username, calling_ae, timeout_s)
    if parsed.scheme in ("http", "https"):
        if not parsed.hostname:
            raise ValueError(f"dispatch destination {name!r}: no host in {url!r}")
        return StowDestination(name, url.strip().rstrip("/"), stow_token, timeout_s)
    raise ValueError(f"dispatch destination {name!r}: scheme must be dicom, http or https, not {parsed.scheme!r}")


def parse_destinations(
    entries: Sequence[str], *, calling_ae: str, timeout_s: float, stow_token: str | None
) -> list[Destination]:
    out = [parse_destination(e, calling_ae=calling_ae, timeout_s=timeout_s, stow_token=stow_token) for e in entries]
    names = [d.name for d in out]
    if len(set(names)) != len(names):
        raise ValueError(f"dispatch destination names must be unique: {names}")
    return out


def read_dataset(data: bytes) -> Dataset:
    """A stored evidence object as a dataset; `Refused` when it is not a DICOM file (no destination would take it)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        _ = ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID
    except (pydicom.errors.InvalidDicomError, AttributeError, KeyError, ValueError, EOFError) as exc:
        raise Refused(f"not a readable DICOM file: {type(exc).__name__}: {exc}"[:300]) from exc
    return ds


@dataclass(frozen=True, slots=True)
class DimseDestination:
    name: str
    host: str
    port: int
    called_ae: str
    calling_ae: str
    timeout_s: float

    def describe(self) -> str:
        return f"dicom://{self.called_ae}@{self.host}:{self.port}"

    def _ae(self, datasets: Sequence[Dataset]) -> AE:
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        for sop_class, syntax in dict.fromkeys((ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets):
            ae.add_requested_context(sop_class, syntax)
        return ae

    def send(self, objects: Sequence[bytes]) -> None:
        datasets = [read_dataset(o) for o in objects]
        assoc = self._ae(datasets).associate(self.host, self.port, ae_title=self.called_ae)
        if assoc.is_rejected:
            rejection = assoc.acceptor.primitive
            result = getattr(rejection, "result", None)
            source, diagnostic = getattr(rejection, "result_source", None), getattr(rejection, "diagnostic", None)
            reason = f"association rejected (result {result}, source {source}, reason {diagnostic})"
            raise (Unreachable if result == _REJECTED_TRANSIENT else Refused)(reason)
        if not assoc.is_established:
            raise Unreachable("no association (connection refused, aborted or timed out)")
        _no_delay(assoc)
        try:
            for ds in datasets:
                try:
                    status = assoc.send_c_store(ds)
                except ValueError as exc:  # no accepted presentation context for this SOP class / syntax
                    raise Refused(f"{ds.SOPClassUID.name}: {exc}"[:300]) from exc
                if not status or "Status" not in status:
                    raise Unreachable("no C-STORE response (association aborted or timed out)")
                code = int(status.Status)
                if code in _STORED:
                    continue
                if 0xA700 <= code <= 0xA7FF:
                    raise Unreachable(f"C-STORE {ds.SOPClassUID.name}: out of resources 0x{code:04X}")
                comment = status.get("ErrorComment", "")
                raise Refused(f"C-STORE {ds.SOPClassUID.name}: status 0x{code:04X} {comment}".strip())
        finally:
            if assoc.is_established:
                assoc.release()

    def echo(self) -> bool:
        """C-ECHO: whether the destination answers (for the readiness check and operators)."""
        ae = AE(ae_title=self.calling_ae)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = ae.connection_timeout = min(self.timeout_s, 5.0)
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
        if not assoc.is_established:
            return False
        try:
            status = assoc.send_c_echo()
            return bool(status) and int(status.Status) == 0
        finally:
            assoc.release()


def _no_delay(assoc: Any) -> None:
    """Send each PDU at once. pynetdicom writes a C-STORE as several PDUs and waits for the response; with Nagle's
    algorithm on, a PDU can wait for the peer's delayed ACK (up to 40 ms on Linux) on every object. `make
    bench-dispatch` shows what is left when the PACS keeps Nagle on (dcmtk's default) and when it does not."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def multipart_related(objects: Sequence[bytes], boundary: str | None = None) -> tuple[str, bytes]:
    """A STOW-RS request body (PS3.18 10.5): its Content-Type and bytes."""
    boundary = boundary or f"medstream-{uuid.uuid4().hex}"
    body = io.BytesIO()
    for data in objects:
        body.write(f"--{boundary}\r\nContent-Type: {DICOM}\r\n\r\n".encode())
        body.write(data)
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return f'multipart/related; type="{DICOM}"; boundary={boundary}', body.getvalue()


def stow_failures(response: dict[str, Any]) -> list[str]:
    """The FailedSOPSequence (0008,1198) of a STOW-RS response as 'SOP instance: reason' lines."""
    failed = response.get("00081198", {}).get("Value", [])
    out = []
    for item in failed:
        reason = item.get("00081197", {}).get("Value", ["?"])[0]
        uid = item.get("00081155", {}).get("Value", ["?"])[0]
        out.append(f"{uid}: failure reason 0x{int(reason):04X}" if isinstance(reason, int) else f"{uid}: {reason}")
    return out


@dataclass(frozen=True, slots=True)
class StowDestination:
    name: str
    base_url: str
    token: str | None
    timeout_s: float

    def describe(self) -> str:
        return self.base_url

    def send(self, objects: Sequence[bytes]) -> None:
        for o in objects:
            read_dataset(o)  # a file that is not DICOM is refused here, not sent
        content_type, body = multipart_related(objects)
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            r = httpx.post(f"{self.base_url}/studies", content=body, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise Unreachable(f"STOW-RS: {type(exc).__name__}") from exc
        if r.status_code == 200:
            return
        details = "; ".join(stow_failures(_json(r)))
        if r.status_code in (401, 403, 408, 429) or r.status_code >= 500:
            # 401/403: a credential an operator can fix; dead-lettering every report meanwhile would lose them.
            raise Unreachable(f"STOW-RS HTTP {r.status_code}")
        raise Refused(f"STOW-RS HTTP {r.status_code}" + (f": {details}" if details else ""))


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
