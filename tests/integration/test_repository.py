"""The model repository: content addressing on a local directory and on S3 (moto_server on loopback)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from infaas.repository import Repository, RepositoryError, digest_of
from infaas.settings import load_settings
from tests.conftest import free_port

BUCKET = "infaas-test"


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """An S3-compatible endpoint: moto_server on a free loopback port, for this test session."""
    executable = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    assert executable, "moto_server is missing: install the dev extra (moto[server])"
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert process.poll() is None, "moto_server exited at start"
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    import boto3
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    process.terminate()
    process.wait(timeout=10)
    log.close()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def s3_settings(endpoint: str, home: Path, prefix: str = "models"):
    return load_settings(environ={}, repository_url=f"s3://{BUCKET}/{prefix}", s3_endpoint_url=endpoint,
                         home=str(home))


def test_file_repository_is_content_addressed_and_idempotent(tmp_path):
    settings = load_settings(environ={}, repository_url=f"file://{tmp_path / 'repo'}", home=str(tmp_path))
    repo = Repository.from_settings(settings)
    data = b"some model bytes"
    url = repo.put_bytes(data, ".onnx")
    digest = hashlib.sha256(data).hexdigest()
    assert url == f"file://{tmp_path / 'repo'}/sha256/{digest}.onnx"
    assert digest_of(url) == digest
    assert repo.put_bytes(data, ".onnx") == url  # idempotent
    path = repo.fetch(url)
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o444  # stored objects are read-only
    source = tmp_path / "weights.bin"
    source.write_bytes(b"x" * 100_000)
    file_url = repo.put_file(source, ".bin")
    assert repo.fetch(file_url).read_bytes() == source.read_bytes()
    assert repo.exists(file_url)
    repo.delete(file_url)
    assert not repo.exists(file_url)
    with pytest.raises(RepositoryError, match="no such object"):
        repo.fetch(file_url)
    with pytest.raises(RepositoryError, match="suffix"):
        repo.put_bytes(b"x", "/../../etc")
    with pytest.raises(RepositoryError, match="not a repository URL"):
        repo.fetch("file:///etc/passwd")


def test_s3_round_trip_against_moto_server(moto_endpoint, tmp_path):
    repo = Repository.from_settings(s3_settings(moto_endpoint, tmp_path))
    data = np.arange(1000, dtype=np.float32).tobytes()
    url = repo.put_bytes(data, ".npz")
    assert url == f"s3://{BUCKET}/models/sha256/{hashlib.sha256(data).hexdigest()}.npz"
    assert repo.exists(url) and repo.put_bytes(data, ".npz") == url
    local = repo.fetch(url)
    assert local.read_bytes() == data
    assert local.is_relative_to(tmp_path / "cache")  # cached under <state_dir>/cache
    assert repo.fetch(url) == local  # served from the cache the second time
    source = tmp_path / "model.onnx"
    source.write_bytes(b"\x08\x07" * 5000)
    file_url = repo.put_file(source)
    assert file_url.endswith(".onnx") and repo.fetch(file_url).read_bytes() == source.read_bytes()
    repo.delete(url)
    assert not repo.exists(url) and not local.exists()
    with pytest.raises(RepositoryError, match="S3 download_fileobj"):
        repo.fetch(url)


def test_s3_detects_corrupt_objects(moto_endpoint, tmp_path):
    """A downloaded object must hash to its own name; a replaced object is refused."""
    import boto3
    repo = Repository.from_settings(s3_settings(moto_endpoint, tmp_path, prefix="corrupt"))
    url = repo.put_bytes(b"the real content", ".onnx")
    bucket, key = url[len("s3://"):].split("/", 1)
    boto3.client("s3", endpoint_url=moto_endpoint).put_object(Bucket=bucket, Key=key, Body=b"tampered")
    with pytest.raises(RepositoryError, match="does not match its sha256"):
        repo.fetch(url, refresh=True)
    assert not (tmp_path / "cache" / "s3" / bucket / key).exists()


def test_s3_missing_bucket_is_a_clear_error(moto_endpoint, tmp_path):
    settings = load_settings(environ={}, repository_url="s3://no-such-bucket/x", s3_endpoint_url=moto_endpoint,
                             home=str(tmp_path))
    with pytest.raises(RepositoryError, match="NoSuchBucket"):
        Repository.from_settings(settings).put_bytes(b"data", ".onnx")


def test_registration_into_an_s3_repository(moto_endpoint, settings, store, tmp_path):
    """A model registered with an S3 repository: every artifact is an s3:// object that a fresh
    host (an empty cache) downloads, verifies and runs."""
    import boto3

    from infaas.consumers.executors import open_executor
    from infaas.registration import register_model
    from tests.unit.test_executors import tiny_model
    model = tiny_model(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "val.npz", inputs=rng.standard_normal((30, 16)).astype(np.float32),
             labels=rng.integers(0, 4, 30))
    s3 = settings.replace(repository_url=f"s3://{BUCKET}/registry", s3_endpoint_url=moto_endpoint,
                          home=str(tmp_path / "host-a"), variant_batch_sizes=(1, 4))
    report = register_model(s3, "s3-app", "s3-task", "tiny-mlp", model, tmp_path / "val.npz", quick=True,
                            name="s3-tiny", store=store)
    urls = {report.model.artifact, report.model.validation_artifact} | {v.artifact for v in report.variants}
    assert all(u.startswith(f"s3://{BUCKET}/registry/sha256/") for u in urls)
    listed = boto3.client("s3", endpoint_url=moto_endpoint).list_objects_v2(Bucket=BUCKET, Prefix="registry/")
    assert {f"s3://{BUCKET}/{o['Key']}" for o in listed["Contents"]} >= urls
    other_host = Repository.from_settings(s3.replace(home=str(tmp_path / "host-b")))
    x = np.load(other_host.fetch(report.model.validation_artifact))["inputs"][:4]
    for v in store.variants_for_model("s3-task", "s3-tiny"):
        with open_executor(v, other_host.fetch(v.artifact)) as executor:
            assert executor.run(x[: v.batch_size])[0].shape == (min(v.batch_size, 4), 4)
