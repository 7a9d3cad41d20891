"""The model repository: content-addressed objects in a local directory or in S3.

Every object is stored under `sha256/<hex digest><suffix>`, so a URL names its content: storing the
same bytes twice is a no-op, and a downloaded copy can be checked against its own name. URLs are
`file:///abs/root/sha256/<hex>.onnx` or `s3://bucket/prefix/sha256/<hex>.onnx`. S3 objects are read
through a local cache (`<state_dir>/cache/s3/...`); cached files are read-only and verified by hash.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import InfaasError
from .settings import Settings

SUFFIX_RE = re.compile(r"^(\.[A-Za-z0-9_-]{1,32}){0,4}$")
KEY_RE = re.compile(r"sha256/([0-9a-f]{64})((?:\.[A-Za-z0-9_-]{1,32}){0,4})$")
CHUNK = 1 << 20


class RepositoryError(InfaasError, RuntimeError):
    """The repository is unreachable, an object is missing or corrupt; the message says which."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest_of(url: str) -> str:
    """The sha256 a repository URL names (its object key is `sha256/<hex><suffix>`)."""
    match = KEY_RE.search(url)
    if not match:
        raise RepositoryError(f"{url!r} is not a repository URL (…/sha256/<hex digest><suffix>)")
    return match.group(1)


def _check_suffix(suffix: str) -> str:
    if not SUFFIX_RE.fullmatch(suffix or ""):
        raise RepositoryError(f"object suffix {suffix!r} is invalid: use up to four parts like '.onnx' or '.tvm.so'")
    return suffix or ""


def _write_read_only(path: Path, write) -> None:
    """Write through a temporary file and rename, so readers never see a partial object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Repository:
    """Content-addressed object store; `from_settings` picks the backend from the repository URL."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = settings.model_repository_url.rstrip("/")
        self.cache_dir = settings.state_dir / "cache"
        self._s3 = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Repository:
        return cls(settings)

    # --- writing ------------------------------------------------------------------------------
    def put_bytes(self, data: bytes, suffix: str = "") -> str:
        """Store `data` (once) and return its URL."""
        suffix = _check_suffix(suffix)
        url = f"{self.url}/sha256/{sha256_bytes(data)}{suffix}"
        if self.exists(url):
            return url
        if url.startswith("file://"):
            _write_read_only(self._file_path(url), lambda handle: handle.write(data))
        else:
            bucket, key = self._bucket_key(url)
            self._call_s3("put_object", url, Bucket=bucket, Key=key, Body=data)
        return url

    def put_file(self, path: str | os.PathLike, suffix: str | None = None) -> str:
        path = Path(path)
        if not path.is_file():
            raise RepositoryError(f"cannot store {path}: no such file")
        suffix = _check_suffix("".join(path.suffixes[-1:]) if suffix is None else suffix)
        url = f"{self.url}/sha256/{sha256_file(path)}{suffix}"
        if self.exists(url):
            return url
        if url.startswith("file://"):
            def copy(handle):
                with path.open("rb") as source:
                    for chunk in iter(lambda: source.read(CHUNK), b""):
                        handle.write(chunk)
            _write_read_only(self._file_path(url), copy)
        else:
            bucket, key = self._bucket_key(url)
            self._call_s3("upload_file", url, Filename=str(path), Bucket=bucket, Key=key)
        return url

    def delete(self, url: str) -> None:
        """Remove an object (and its cached copy); a missing object is not an error."""
        if url.startswith("file://"):
            self._file_path(url).unlink(missing_ok=True)
            return
        bucket, key = self._bucket_key(url)
        self._call_s3("delete_object", url, Bucket=bucket, Key=key)
        self._cache_path(url).unlink(missing_ok=True)

    # --- reading ------------------------------------------------------------------------------
    def exists(self, url: str) -> bool:
        if url.startswith("file://"):
            return self._file_path(url).is_file()
        bucket, key = self._bucket_key(url)
        from botocore.exceptions import ClientError
        try:
            self._client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise RepositoryError(f"cannot check {url}: {_s3_reason(err)}") from None
        except Exception as err:
            raise RepositoryError(f"cannot check {url}: {_s3_reason(err)}") from None

    def fetch(self, url: str, refresh: bool = False) -> Path:
        """A local, read-only copy of the object. S3 objects are downloaded once into the cache
        (again when `refresh` is set, e.g. to time a cold load) and verified against their hash."""
        if url.startswith("file://"):
            path = self._file_path(url)
            if not path.is_file():
                raise RepositoryError(f"{url}: no such object in the repository")
            return path
        path = self._cache_path(url)
        if path.is_file() and not refresh:
            return path
        bucket, key = self._bucket_key(url)
        expected = digest_of(url)

        def download(handle):
            self._call_s3("download_fileobj", url, Bucket=bucket, Key=key, Fileobj=handle)
        _write_read_only(path, download)
        if sha256_file(path) != expected:
            path.unlink(missing_ok=True)
            raise RepositoryError(f"{url}: downloaded content does not match its sha256; object corrupt")
        return path

    def read_bytes(self, url: str) -> bytes:
        return self.fetch(url).read_bytes()

    # --- helpers ------------------------------------------------------------------------------
    def _file_path(self, url: str) -> Path:
        parsed = urlparse(url)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise RepositoryError(f"{url!r} is not a file:// URL of this host")
        digest_of(url)
        return Path(unquote(parsed.path))

    def _bucket_key(self, url: str) -> tuple[str, str]:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise RepositoryError(f"{url!r} is neither file:// nor s3://BUCKET/KEY")
        digest_of(url)
        return parsed.netloc, parsed.path.lstrip("/")

    def _cache_path(self, url: str) -> Path:
        bucket, key = self._bucket_key(url)
        return self.cache_dir / "s3" / bucket / key

    def _client(self):
        if self._s3 is None:
            self._s3 = s3_client(self.settings)
        return self._s3

    def _call_s3(self, method: str, url: str, **kwargs):
        try:
            return getattr(self._client(), method)(**kwargs)
        except Exception as err:
            raise RepositoryError(f"S3 {method} of {url} failed: {_s3_reason(err)}") from None


def s3_client(settings: Settings):
    """A boto3 S3 client for the configured endpoint (an S3-compatible store when set)."""
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None,
                        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                                      read_timeout=60))


def _s3_reason(err: Exception) -> str:
    response = getattr(err, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        error = response["Error"]
        return f"{error.get('Code', '?')}: {error.get('Message', '')}".strip()
    return f"{type(err).__name__}: {err}"
