"""`S3Store`: a cache's objects in an S3-compatible object store (`s3://bucket/prefix`).

Client: obstore (Rust `object_store` under a small Python API). Through its zarr wrapper
(`zarr.storage.ObjectStore`) a 3% low-shot subset and whole shards read about 2x faster than
through fsspec/s3fs from the same server (docs/performance.md, "Caches in an object store");
it offers the conditional puts the commit protocol needs (`If-None-Match: *`,
`If-Match: <etag>`), and it needs no event loop.

Credentials, region and endpoint come from the standard AWS environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`,
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`), else from an AWS profile (`AWS_PROFILE`, the
shared credentials file; read with boto3). An `http://` endpoint (a local S3-compatible server)
is allowed as given.

Claims are leases (docs/cache-format.md, "Object stores"): `claims/NNNNN` is created with
`If-None-Match: *` and holds its owner and an expiry; the holder renews it (a put with
`If-Match` on the lease's etag) every third of its lifetime. A lease that expired, or that a
dead process on this host holds, is taken over with `If-Match`, so two writers never both win.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from madcache.cache.store import Claim, Store
from madcache.core.errors import CacheError

LEASE_SECONDS = 120.0
POLL_SECONDS = 0.5


class ObjectStoreError(CacheError):
    """The object store cannot be used (no bucket, refused credentials, unreachable endpoint)."""


class S3Store(Store):
    """The objects under `s3://bucket/prefix`, through obstore."""

    renames = False

    def __init__(self, url: str, *, lease_seconds: float = LEASE_SECONDS) -> None:
        self._url = url.rstrip("/")
        self.bucket, self.prefix = split_s3_url(self._url)
        self.lease_seconds = float(lease_seconds)
        self.client = _client(self.bucket, self.prefix)
        self._zarr = None

    @property
    def url(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"S3Store({self._url!r})"

    def check(self) -> None:
        """One request, so that a missing bucket, refused credentials or an unreachable
        endpoint fail here, in one line naming the URL."""
        import obstore

        try:
            obstore.list_with_delimiter(self.client, None)
        except Exception as exc:  # obstore raises many error types for one failed request
            raise ObjectStoreError(f"{self._url}: {_reason(exc)}") from None

    # ------------------------------------------------------------------ small objects

    def read_bytes(self, key: str) -> bytes:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            return obstore.get(self.client, key).bytes().to_bytes()
        except (NotFoundError, FileNotFoundError):
            raise FileNotFoundError(f"{self._url}/{key}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        import obstore

        obstore.put(self.client, key, data)

    def create(self, key: str, data: bytes) -> bool:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            obstore.put(self.client, key, data, mode="create")
        except (AlreadyExistsError, PreconditionError):
            return False
        return True

    def exists(self, key: str) -> bool:
        """An object `key`, or a folder `key` with at least one object under it."""
        return self._head(key) is not None or bool(self._keys_under(key, limit=1))

    def list(self, prefix: str) -> list[str]:
        import obstore

        folder = prefix.strip("/")
        found = obstore.list_with_delimiter(self.client, folder or None)
        names = [p.rsplit("/", 1)[-1] for p in found["common_prefixes"]]
        names += [o["path"].rsplit("/", 1)[-1] for o in found["objects"]]
        return sorted(f"{folder}/{n}" if folder else n for n in set(names) if not n.startswith("."))

    def delete(self, key: str) -> None:
        import obstore

        obstore.delete(self.client, key)  # S3 DELETE of an absent key succeeds

    def delete_tree(self, key: str) -> None:
        import obstore

        keys = self._keys_under(key)
        if keys:
            obstore.delete(self.client, keys)
        self.delete(key)

    def size(self, key: str) -> int:
        import obstore

        head = self._head(key) if key else None
        if head is not None:
            return int(head["size"])
        prefix = f"{key.strip('/')}/" if key else None
        return sum(int(o["size"]) for batch in obstore.list(self.client, prefix) for o in batch)

    def zarr_store(self):
        if self._zarr is None:
            from zarr.storage import ObjectStore

            self._zarr = ObjectStore(self.client)
        return self._zarr

    def _head(self, key: str) -> dict[str, Any] | None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            return obstore.head(self.client, key)
        except (NotFoundError, FileNotFoundError):
            return None

    def _keys_under(self, key: str, limit: int | None = None) -> list[str]:
        import obstore

        keys: list[str] = []
        for batch in obstore.list(self.client, f"{key.strip('/')}/", chunk_size=limit or 1000):
            keys += [o["path"] for o in batch]
            if limit is not None and len(keys) >= limit:
                return keys[:limit]
        return keys

    # ------------------------------------------------------------------ leases

    def claim(self, key: str, *, wait: bool) -> Claim | None:
        while True:
            lease = self._try_lease(key)
            if lease is not None:
                return Claim(key, lease.end, lost=lambda: lease.lost)
            if not wait:
                return None
            time.sleep(POLL_SECONDS)

    def _try_lease(self, key: str) -> _Lease | None:
        """Create the lease, or take over one that expired or whose holder died here."""
        import obstore
        from obstore.exceptions import PreconditionError

        lease = _Lease(self, key)
        if self.create(key, lease.record()):
            return lease.started(self._head(key))
        head = self._head(key)
        if head is None:
            return None  # released meanwhile: the next poll creates it
        try:
            holder = json.loads(self.read_bytes(key))
        except (FileNotFoundError, ValueError):
            holder = {}
        if not _stale(holder):
            return None
        try:
            result = obstore.put(self.client, key, lease.record(), mode={"e_tag": head["e_tag"]})
        except (PreconditionError, FileNotFoundError):
            return None  # another writer took it over first
        return lease.started({"e_tag": result["e_tag"]})


class _Lease:
    """One held lease: renewed in a thread until `end`, which deletes it if still ours."""

    def __init__(self, store: S3Store, key: str) -> None:
        self.store = store
        self.key = key
        self.owner = uuid.uuid4().hex
        self.e_tag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "expires": time.time() + self.store.lease_seconds,
            }
        ).encode()

    def started(self, head: dict[str, Any] | None) -> _Lease:
        self.e_tag = head["e_tag"] if head else None
        self._thread = threading.Thread(target=self._renew, name=f"lease {self.key}", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        import obstore

        while not self._stop.wait(self.store.lease_seconds / 3):
            try:
                result = obstore.put(
                    self.store.client, self.key, self.record(), mode={"e_tag": self.e_tag}
                )
                self.e_tag = result["e_tag"]
            except Exception:  # taken over after expiring, or the store is unreachable
                self.lost = True
                return

    def end(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        head = self.store._head(self.key)
        if not self.lost and head is not None and head["e_tag"] == self.e_tag:
            self.store.delete(self.key)


def _stale(holder: dict[str, Any]) -> bool:
    """A lease nobody holds any more: past its expiry, or held by a dead process on this host
    (the local analogue of the kernel dropping a dead process's `flock`)."""
    if float(holder.get("expires", 0)) < time.time():
        return True
    if holder.get("host") == socket.gethostname() and holder.get("pid") != os.getpid():
        return not _alive(int(holder.get("pid", -1)))
    return False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    rest = url[len("s3://") :] if url.startswith("s3://") else ""
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ObjectStoreError(f"{url}: an object-store location is s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")


def _client(bucket: str, prefix: str):
    """An obstore S3 client configured from the AWS environment (or profile)."""
    try:
        from obstore.store import S3Store as ObstoreS3
    except ImportError:
        raise ObjectStoreError(
            f"s3://{bucket}: s3:// caches need the obstore client: pip install 'madcache[s3]'"
        ) from None
    env = os.environ
    config: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        config["endpoint"] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    config["region"] = region or "us-east-1"
    client_options: dict[str, Any] = {"connect_timeout": timedelta(seconds=10)}
    if endpoint and endpoint.startswith("http://"):
        client_options["allow_http"] = True
    return ObstoreS3(
        bucket,
        prefix=prefix or None,
        config=config,
        client_options=client_options,
        retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=30)},
        credential_provider=_profile_credentials(),
    )


def _profile_credentials():
    """boto3's credentials for an AWS profile, when the keys are not in the environment."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") or not (env.get("AWS_PROFILE") or _has_shared_files()):
        return None  # obstore reads the environment (and instance metadata) itself
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        raise ObjectStoreError(
            "an AWS profile needs boto3 to read it: pip install "
            "'madcache[s3]', or set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        ) from None
    return Boto3CredentialProvider(boto3.Session(profile_name=env.get("AWS_PROFILE")))


def _has_shared_files() -> bool:
    home = os.path.expanduser("~/.aws")
    files = (
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, "credentials"),
        os.environ.get("AWS_CONFIG_FILE") or os.path.join(home, "config"),
    )
    return any(os.path.isfile(f) for f in files)


def _reason(exc: Exception) -> str:
    """A one-line reason from an obstore error, with what to check."""
    text = str(exc)
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return "the bucket does not exist: create it, or check the URL and AWS_ENDPOINT_URL"
    if any(
        code in text
        for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "401")
    ):
        return (
            "the credentials were refused: check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if any(word in text.lower() for word in ("connect", "dns", "timed out", "timeout")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return (
            f"the endpoint {endpoint or 'of AWS S3'} cannot be reached: check "
            "AWS_ENDPOINT_URL and the network"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"the object store refused the request ({first[:200]})"
