"""The wire format against the Java Avro reference implementation (the avro jar from Maven Central):
fingerprints and canonical forms as Java computes them, and Java decoding our messages."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from infaas import launcher
from infaas.schemas.codec import AVRO_DIR, canonical_form
from infaas.settings import load_settings
from tests.unit.test_codec import CODEC, sample_query


@pytest.fixture(scope="module")
def avro_java():
    """The Java Avro library (from Maven Central, cached like the stack's jars) and a runner."""
    if shutil.which("java") is None:
        pytest.fail("java is required for the interoperability tests")
    settings = load_settings()
    launcher.fetch_jars(settings, ("avro",), say=print)
    classpath = str(launcher.jar_dir(settings, "avro") / "*")
    tool = str(launcher.INFRA_DIR / "jvm" / "AvroCheck.java")

    def run(*args: str) -> str:
        proc = subprocess.run(["java", "-cp", classpath, tool, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    return run


def test_fingerprints_and_canonical_forms_match_java(avro_java):
    names = sorted(CODEC.current)
    lines = avro_java("fingerprint", str(AVRO_DIR), *[f"infaas.{n}" for n in names]).splitlines()
    assert len(lines) == len(names)
    for name, line in zip(names, lines, strict=True):
        java_fp, java_form = line.split(" ", 1)
        assert canonical_form(CODEC.schema(name).resolved) == java_form, name
        assert f"{CODEC.schema(name).fingerprint:016x}" == java_fp, name


def test_java_decodes_our_messages(avro_java, tmp_path):
    message = tmp_path / "query.bin"
    message.write_bytes(CODEC.encode("Query", sample_query(model="mlp-large")))
    decoded = json.loads(avro_java("decode", str(AVRO_DIR), "infaas.Query", str(message)))
    assert decoded["model"] == "mlp-large" and decoded["sent_at"] == 1_795_000_000_123
    assert decoded["inputs"]["shape"] == [2, 64]
