"""A destination in an S3-compatible object store (AWS, MinIO, Ceph RGW, B2, Wasabi, and
older stores that speak only classic Signature V4 without the newer checksum headers).

Client: botocore through boto3, synchronous, since writers run on the runner's threads
(obstore would need an event loop of its own per writer, leaves a cancelled upload pending
and cannot list pending uploads, which ``discard`` must do). It is configured for old
S3-compatibles: Signature V4, path-style addressing for a custom endpoint, and checksums
only where an operation requires one (boto3 >= 1.36 sends CRC32 headers by default, which
many such stores refuse with ``NotImplemented``).

How the writer keeps the local writer's semantics in a store without rename:

* ``open``/``write`` stream the artifact to a temporary object of this attempt,
  ``<dir>/.<name>.<tag>.partial``: one PutObject when the artifact is smaller than a part,
  else a multipart upload of ``part_size`` parts (a part at most is buffered here; no
  local copy of the artifact is ever made).
* ``seal`` completes it, then verifies what landed: its size by HEAD and its SHA-256 by
  reading it back (a store-computed checksum is not a whole-object SHA-256 for multipart
  uploads, so it cannot stand in); a mismatch fails this destination and removes the
  object. The manifest then goes beside it as ``<dir>/.<name>.<tag>.manifest``.
* ``commit`` (called only once the lease is confirmed) copies the sealed object to the
  final key server-side and removes the temporary one: the final key is written once,
  by the holder of the lease, and never by an attempt's streaming. A runner that lost the
  backup only ever writes and removes objects named by its own tag (``abort``); the final
  key is removed only by ``discard``, which the executor calls after a write fenced by the
  lease, so never by a runner that lost it.
* ``abort`` aborts this attempt's multipart upload (retried a few times) or removes its
  unsealed temporary object; a sealed one stays as the proof a later attempt adopts.
* ``discard`` removes the final object, every attempt's temporary objects and manifests,
  and aborts every pending multipart upload of the artifact; what is already gone is fine.

Errors name the operation and the store's error code, never a credential, and never the
store's message (a store may echo what it was sent).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from tidemark_contracts.backup import S3DestinationConfig

from tidemark_backup_runner.storage.proof import SealedCopy, verify

# S3's rules: parts of 5 MiB at least (but the last), 10,000 parts at most.
MIN_PART_SIZE = 5 * 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000
# CopyObject copies up to 5 GiB; beyond, the copy goes in parts (UploadPartCopy).
MAX_SINGLE_COPY = 5 * 1024**3
COPY_PART_SIZE = 512 * 1024 * 1024
# How often abort/cleanup calls are tried, and the first pause between tries.
CLEANUP_ATTEMPTS = 4
CLEANUP_DELAY = 0.5
DEFAULT_REGION = "us-east-1"
NOT_FOUND = frozenset({"NoSuchKey", "NoSuchUpload", "NoSuchBucket", "404", "NotFound"})

# A reference resolved to its value (None: not set), for the organization owning the
# destination; raises when it cannot be (the message never repeats the reference).
Resolve = Callable[[str | None], str | None]


class StorageFailed(OSError):
    """An S3 operation failed; the message names the destination, the operation and the
    store's error code, nothing the store or the tenant sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)

    def __str__(self) -> str:
        return str(self.args[0])


def describe(exc: BaseException) -> str:
    """Why an S3 call failed, in words that carry no value of the request."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = re.sub(r"[^A-Za-z0-9.]", "", str(error.get("Code", "")))[:64] or "error"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{code} (HTTP {status})" if status else code
    if isinstance(exc, BotoCoreError):
        # The class says what happened (EndpointConnectionError, ReadTimeoutError, ...);
        # its message would repeat the endpoint and the request.
        return type(exc).__name__
    return type(exc).__name__


def not_found(exc: BaseException) -> bool:
    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code")) in NOT_FOUND or status == 404


def object_key(prefix: str, key: str) -> str:
    """``<prefix>/<key>`` with empty segments dropped (no leading, doubled or trailing
    slash), as every S3-compatible store reads it alike."""
    parts = [p for p in f"{prefix}/{key}".split("/") if p]
    return "/".join(parts)


def client_config(*, custom_endpoint: bool) -> Config:
    return Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if custom_endpoint else "auto"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        tcp_keepalive=True,
    )


# Parts may differ in size (all but the last at least 5 MiB) and a multipart upload has
# at most 10,000 of them: the part size doubles every PARTS_PER_SIZE parts, so an 8 MiB
# start carries ~7.8 GiB in its first thousand parts and ~7.8 TiB in all ten thousand,
# while small artifacts keep small parts (and at most one part is buffered).
PARTS_PER_SIZE = 1000
MAX_PART_SIZE = 5 * 1024**3


def part_size_at(number: int, first: int) -> int:
    """The size of part ``number`` (1, 2, …) of an upload whose first parts are ``first``."""
    return min(first << ((number - 1) // PARTS_PER_SIZE), MAX_PART_SIZE)


class S3ArtifactWriter:
    """Writes the artifact ``key`` (relative to the destination) under the destination's
    prefix in its bucket; see the module's docstring for the protocol."""

    def __init__(
        self,
        config: S3DestinationConfig,
        key: str,
        tag: str | None,
        resolve: Resolve,
        *,
        label: str = "s3 destination",
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        self.config = config
        self.key = key
        self.bucket = config.bucket
        self.object = object_key(config.prefix, key)
        directory, _, self.name = self.object.rpartition("/")
        self._dir = f"{directory}/" if directory else ""
        self.tag = tag or uuid.uuid4().hex
        self.partial = self._partial_of(self.tag)
        self.manifest = f"{self._dir}.{self.name}.{self.tag}.manifest"
        self._resolve = resolve
        self._label = label
        self._part_size = part_size
        self._client_: Any = None
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._digest = hashlib.sha256()
        self._size = 0
        self._opened = False
        self._landed = False  # the temporary object exists (completed or put)
        self._sealed = False

    # --- plumbing ----------------------------------------------------------------------

    def _partial_of(self, tag: str) -> str:
        return f"{self._dir}.{self.name}.{tag}.partial"

    @property
    def _artifact_prefix(self) -> str:
        """Every temporary object and manifest of this artifact starts with this."""
        return f"{self._dir}.{self.name}."

    def _client(self) -> Any:
        if self._client_ is None:
            access_key = self._resolve(self.config.access_key_ref)
            secret_key = self._resolve(self.config.secret_key_ref)
            if not access_key or not secret_key:
                # Never the runner's own credentials (its environment, ~/.aws): a tenant's
                # destination is written with the tenant's keys or not at all.
                raise StorageFailed(
                    f"{self._label}: config.accessKeyRef and config.secretKeyRef must both "
                    "name credentials"
                )
            session = boto3.session.Session(
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                region_name=self.config.region or DEFAULT_REGION,
            )
            self._client_ = session.client(
                "s3",
                endpoint_url=self.config.endpoint_url,
                config=client_config(custom_endpoint=self.config.endpoint_url is not None),
            )
        return self._client_

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client(), operation)(Bucket=self.bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise StorageFailed(f"{self._label}: {operation} failed: {describe(exc)}") from None

    def _cleanup(self, operation: str, **kwargs: Any) -> None:
        """An idempotent removal, tried a few times; already gone counts as done."""
        delay = CLEANUP_DELAY
        for attempt in range(1, CLEANUP_ATTEMPTS + 1):
            try:
                getattr(self._client(), operation)(Bucket=self.bucket, **kwargs)
                return
            except ClientError as exc:
                if not_found(exc):
                    return
                failure: BaseException = exc
            except BotoCoreError as exc:
                failure = exc
            if attempt == CLEANUP_ATTEMPTS:
                raise StorageFailed(
                    f"{self._label}: {operation} failed {attempt} times: {describe(failure)}"
                )
            time.sleep(delay)
            delay *= 2

    # --- streaming ---------------------------------------------------------------------

    def open(self) -> None:
        self._client()  # credentials resolved (or refused) before a byte is dumped
        self._buffer.clear()
        self._parts = []
        self._upload_id = None
        self._digest = hashlib.sha256()
        self._size = 0
        self._opened = True
        self._landed = self._sealed = False

    def write(self, chunk: bytes) -> None:
        assert self._opened
        self._buffer += chunk
        self._digest.update(chunk)
        self._size += len(chunk)
        while len(self._buffer) >= (size := part_size_at(len(self._parts) + 1, self._part_size)):
            part = bytes(self._buffer[:size])
            del self._buffer[:size]
            self._upload_part(part)

    def _upload_part(self, data: bytes) -> None:
        if self._upload_id is None:
            answer = self._call("create_multipart_upload", Key=self.partial)
            self._upload_id = answer["UploadId"]
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StorageFailed(f"{self._label}: the artifact needs more than {MAX_PARTS} parts")
        answer = self._call(
            "upload_part",
            Key=self.partial,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
        )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def _land(self) -> None:
        """Finish the upload of the temporary object."""
        if self._upload_id is None:
            self._call("put_object", Key=self.partial, Body=bytes(self._buffer))
        else:
            if self._buffer:
                self._upload_part(bytes(self._buffer))
            self._call(
                "complete_multipart_upload",
                Key=self.partial,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
            self._upload_id = None
        self._buffer.clear()
        self._landed = True

    def seal(self, manifest: Mapping[str, Any]) -> None:
        assert self._opened
        self._land()
        checksum = f"sha256:{self._digest.hexdigest()}"
        if manifest.get("sizeBytes") != self._size or manifest.get("checksum") != checksum:
            raise StorageFailed(f"{self._label}: the manifest is not of what this writer stored")
        if self._verified(self.partial, dict(manifest)) is None:
            raise StorageFailed(
                f"{self._label}: the stored object could not be verified (its size or "
                "SHA-256 read back differ from what was sent, or it could not be read back)"
            )
        self._call(
            "put_object",
            Key=self.manifest,
            Body=json.dumps(dict(manifest)).encode(),
            ContentType="application/json",
        )
        self._sealed = True

    def _verified(self, key: str, manifest: dict[str, Any]) -> SealedCopy | None:
        """``key`` as a sealed copy when its size (HEAD) and SHA-256 (read back) are the
        manifest's; None when they are not, or it cannot be read."""
        try:
            head = self._client().head_object(Bucket=self.bucket, Key=key)
            if head.get("ContentLength") != manifest.get("sizeBytes"):
                return None
            body = self._client().get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return verify(body, key, manifest)
            finally:
                body.close()
        except (BotoCoreError, ClientError):
            return None

    def commit(self) -> str:
        assert self._opened
        if not self._landed:
            self._land()
        return self._publish(self.partial, self._size)

    def _publish(self, source: str, size: int) -> str:
        self._copy(source, size)
        head = self._call("head_object", Key=self.object)
        if head.get("ContentLength") != size:
            raise StorageFailed(f"{self._label}: the copied object has the wrong size")
        # The source stays until ``forget_proofs``, which runs only once the outcome is
        # saved under the lease: a runner that lost the backup while its commit was still
        # running (a blocking call outlives the cancelled task) must not delete the copy
        # the new owner is adopting, and a failed removal here must not fail a good copy.
        self._opened = False
        return self.key

    def _copy(self, source: str, size: int) -> None:
        copy_source = {"Bucket": self.bucket, "Key": source}
        if size <= MAX_SINGLE_COPY:
            self._call("copy_object", Key=self.object, CopySource=copy_source)
            return
        upload = self._call("create_multipart_upload", Key=self.object)["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, COPY_PART_SIZE), start=1):
                end = min(start + COPY_PART_SIZE, size) - 1
                answer = self._call(
                    "upload_part_copy",
                    Key=self.object,
                    UploadId=upload,
                    PartNumber=number,
                    CopySource=copy_source,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            self._call(
                "complete_multipart_upload",
                Key=self.object,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with contextlib.suppress(OSError):
                self._cleanup("abort_multipart_upload", Key=self.object, UploadId=upload)
            raise

    # --- earlier attempts --------------------------------------------------------------

    def _listed(self, prefix: str) -> Iterator[str]:
        token: dict[str, str] = {}
        while True:
            answer = self._call("list_objects_v2", Prefix=prefix, **token)
            for item in answer.get("Contents", []):
                yield item["Key"]
            if not answer.get("IsTruncated"):
                return
            token = {"ContinuationToken": answer["NextContinuationToken"]}

    def sealed(self) -> SealedCopy | None:
        try:
            manifests = sorted(
                k for k in self._listed(self._artifact_prefix) if k.endswith(".manifest")
            )
            for manifest_key in manifests:
                content = self._read_json(manifest_key)
                if content is None:
                    continue
                tag = manifest_key[len(self._artifact_prefix) : -len(".manifest")]
                for candidate in (self._partial_of(tag), self.object):
                    copy = self._verified(candidate, content)
                    if copy is not None:
                        return copy
        except OSError:
            return None
        return None

    def _read_json(self, key: str) -> dict[str, Any] | None:
        try:
            body = self._client().get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                content = json.loads(body.read(1 << 16))
            finally:
                body.close()
        except (BotoCoreError, ClientError, ValueError):
            return None
        return content if isinstance(content, dict) else None

    def adopt(self, copy: SealedCopy) -> str:
        if copy.name == self.object:
            return self.key
        return self._publish(copy.name, copy.size_bytes)

    def forget_proofs(self) -> None:
        """The artifact is recorded: remove every attempt's manifest and sealed temporary
        object (the committed copy's source among them)."""
        for key in list(self._listed(self._artifact_prefix)):
            if key.endswith((".manifest", ".partial")):
                self._cleanup("delete_object", Key=key)

    # --- removal -----------------------------------------------------------------------

    def abort(self) -> None:
        if self._sealed or not self._opened:
            # Never opened, committed, or sealed: a sealed copy is the proof a later attempt
            # records instead of dumping again.
            return
        try:
            if self._upload_id is not None:
                self._cleanup("abort_multipart_upload", Key=self.partial, UploadId=self._upload_id)
                self._upload_id = None
            if self._landed:
                self._cleanup("delete_object", Key=self.partial)
                self._landed = False
        except OSError:
            # Left for ``discard`` (which lists what is pending) once the outcome is
            # recorded; abort itself must be safe to call at any point.
            return
        finally:
            self._buffer.clear()
        self._opened = False

    def discard(self) -> None:
        """Remove every trace of the artifact; raises ``StorageFailed`` when the store
        cannot be reached (after a few tries), so a caller can say the cleanup failed."""
        self.abort()
        self._sealed = False
        try:
            leftovers = [self.object, *self._listed(self._artifact_prefix)]
        except StorageFailed as exc:
            if "NoSuchBucket" in str(exc):
                return
            raise
        for key in leftovers:
            self._cleanup("delete_object", Key=key)
        for prefix in (self.object, self._artifact_prefix):
            for key, upload_id in self._pending_uploads(prefix):
                if key == self.object or key.startswith(self._artifact_prefix):
                    self._cleanup("abort_multipart_upload", Key=key, UploadId=upload_id)

    def _pending_uploads(self, prefix: str) -> Iterator[tuple[str, str]]:
        markers: dict[str, str] = {}
        while True:
            answer = self._call("list_multipart_uploads", Prefix=prefix, **markers)
            for upload in answer.get("Uploads", []):
                yield upload["Key"], upload["UploadId"]
            if not answer.get("IsTruncated"):
                return
            markers = {
                "KeyMarker": answer["NextKeyMarker"],
                "UploadIdMarker": answer["NextUploadIdMarker"],
            }
