"""Avro single-object encoding of infaas messages.

Wire format (Avro specification, "Single-object encoding"): the two bytes `C3 01`, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then the
Avro binary body. Any Avro library can decode it given the schema; nothing here is specific to
Python.

The fingerprint is computed here rather than by fastavro or avro-python because both give other
values for our schemas (named types referenced across files, logical types): we build the fully
resolved schema (each named type inlined at its first use), reduce it to the canonical form exactly
as Java's `SchemaNormalization` does, and hash that.

Every schema version ever shipped is kept under `avro/history/<Name>/<fingerprint>.avsc`, so a
message written with an older version is still decoded (resolved to the current reader schema).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from ..errors import InfaasError

AVRO_DIR = Path(__file__).with_name("avro")
HISTORY_DIR = AVRO_DIR / "history"
MAGIC = b"\xc3\x01"
HEADER_LEN = 10
PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})
# Parsing Canonical Form keeps these attributes, in this order ([STRIP] and [ORDER]).
CANONICAL_KEYS = ("name", "type", "fields", "symbols", "items", "values", "size")
# A dead letter keeps at most this much of the message that failed, so that with its other fields it
# still fits in one Kafka message (1 MB by default), as large as the failed message may have been.
DEAD_LETTER_PAYLOAD_BYTES = 512 << 10


class CodecError(InfaasError, ValueError):
    """A message could not be encoded or decoded; `reason` says why in plain words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DecodeError(CodecError):
    """Bytes that are not a valid infaas message (garbage, truncated, unknown schema)."""


class EncodeError(CodecError):
    """A record that does not fit its schema."""


# --- CRC-64-AVRO ---------------------------------------------------------------------------------
_EMPTY = 0xC15D213AA4D7A795


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _crc_table()


def crc64_avro(data: bytes) -> int:
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


# --- schema resolution and canonical form --------------------------------------------------------
def _fullname(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _namespace_of(fullname: str) -> str | None:
    return fullname.rsplit(".", 1)[0] if "." in fullname else None


def resolve_schema(schema: Any, named: dict[str, Any], namespace: str | None = None,
                   seen: set[str] | None = None) -> Any:
    """Inline named types at their first use; later uses become full-name references.

    `named` maps full names to the definitions in our .avsc files. Names are made full and
    namespaces dropped, so the result is self-contained and namespace-independent.
    """
    seen = set() if seen is None else seen
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return schema
        full = _fullname(schema, namespace)
        if full in seen:
            return full
        if full not in named:
            raise KeyError(f"unknown Avro type {schema!r}")
        return resolve_schema(named[full], named, _namespace_of(full), seen)
    if isinstance(schema, list):
        return [resolve_schema(branch, named, namespace, seen) for branch in schema]
    kind = schema["type"]
    if isinstance(kind, (dict, list)) or (isinstance(kind, str) and kind not in PRIMITIVES
                                          and kind not in NAMED_KINDS and kind not in ("array", "map")):
        # {"type": <a schema>} wraps another schema
        return resolve_schema(kind, named, namespace, seen)
    out = dict(schema)
    if kind in NAMED_KINDS:
        full = _fullname(schema["name"], schema.get("namespace", namespace))
        seen.add(full)
        out["name"] = full
        out.pop("namespace", None)
        namespace = _namespace_of(full)
        if kind in ("record", "error"):
            out["fields"] = [{**fld, "type": resolve_schema(fld["type"], named, namespace, seen)}
                             for fld in schema["fields"]]
    elif kind == "array":
        out["items"] = resolve_schema(schema["items"], named, namespace, seen)
    elif kind == "map":
        out["values"] = resolve_schema(schema["values"], named, namespace, seen)
    return out


def _canonical(schema: Any) -> Any:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return [_canonical(branch) for branch in schema]
    if schema["type"] in PRIMITIVES:
        return schema["type"]  # [PRIMITIVES]; logical types reduce to their primitive
    out: dict[str, Any] = {}
    for key in CANONICAL_KEYS:
        if key not in schema:
            continue
        value = schema[key]
        if key == "fields":
            value = [{"name": fld["name"], "type": _canonical(fld["type"])} for fld in value]
        elif key in ("items", "values"):
            value = _canonical(value)
        out[key] = value
    return out


def canonical_form(resolved: Any) -> str:
    """Parsing Canonical Form of a fully resolved schema (no whitespace, fixed key order)."""
    return json.dumps(_canonical(resolved), separators=(",", ":"), ensure_ascii=False)


def fingerprint(resolved: Any) -> int:
    return crc64_avro(canonical_form(resolved).encode("utf-8"))


def _without_logical_types(schema: Any) -> Any:
    """Same wire encoding, but timestamps stay epoch-millisecond ints in Python."""
    if isinstance(schema, list):
        return [_without_logical_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if "fields" in schema:
        out["fields"] = [{**f, "type": _without_logical_types(f["type"])} for f in schema["fields"]]
    return out


# --- index check ---------------------------------------------------------------------------------
# fastavro looks an enum symbol or a union branch up with the index as read, so a negative index
# wraps around like a Python list index (-1 is the last symbol: a WorkerCommand's LOAD, one bit
# off, would become STOP). Avro allows only 0..n-1; this walk over a body fastavro accepted checks
# every index on the path and is cheap (it skips bytes and strings without reading them).
Walk = Callable[[bytes, int], int]  # (data, position of a value) -> position after it


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro int/long at `pos` (zigzag varint) and the position after it."""
    n = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7


def _sized(data: bytes, pos: int) -> int:
    size, pos = _varint(data, pos)
    if size < 0:
        raise DecodeError(f"negative length {size}")
    return pos + size


_FIXED_WIDTH = {"null": 0, "boolean": 1, "float": 4, "double": 8}


def _walker(schema: Any, named: dict[str, Walk]) -> Walk:
    """A function that steps over one value of a resolved schema, checking enum and union indices."""
    if isinstance(schema, str):
        if schema in _FIXED_WIDTH:
            width = _FIXED_WIDTH[schema]
            return lambda data, pos: pos + width
        if schema in ("int", "long"):
            return lambda data, pos: _varint(data, pos)[1]
        if schema in ("bytes", "string"):
            return _sized
        return lambda data, pos: named[schema](data, pos)  # a named type defined earlier
    if isinstance(schema, list):
        branches = [_walker(branch, named) for branch in schema]
        if len(branches) == 2 and schema[0] == "null":
            second = branches[1]

            def optional(data: bytes, pos: int) -> int:
                """The common ["null", X]: index 0 or 1 is one byte (zigzag 0x00 or 0x02); anything
                else is out of range, and read in full for the message."""
                index = data[pos]
                if index == 0:
                    return pos + 1
                if index == 2:
                    return second(data, pos + 1)
                index, _ = _varint(data, pos)
                raise DecodeError(f"union branch {index} is out of range 0..1")
            return optional

        def union(data: bytes, pos: int) -> int:
            index, pos = _varint(data, pos)
            if not 0 <= index < len(branches):
                raise DecodeError(f"union branch {index} is out of range 0..{len(branches) - 1}")
            return branches[index](data, pos)
        return union
    kind = schema["type"]
    if kind in ("record", "error"):
        fields: list[Walk] = []

        def record(data: bytes, pos: int) -> int:
            for field in fields:
                pos = field(data, pos)
            return pos
        named[schema["name"]] = record
        fields += [_walker(f["type"], named) for f in schema["fields"]]
        return record
    if kind == "enum":
        name, count = schema["name"], len(schema["symbols"])

        def enum(data: bytes, pos: int) -> int:
            index, pos = _varint(data, pos)
            if not 0 <= index < count:
                raise DecodeError(f"enum {name} index {index} is out of range 0..{count - 1}")
            return pos
        named[name] = enum
        return enum
    if kind == "fixed":
        size = schema["size"]

        def fixed(data: bytes, pos: int) -> int:
            return pos + size
        named[schema["name"]] = fixed
        return fixed
    if kind in ("array", "map"):
        item = _walker(schema["items"] if kind == "array" else schema["values"], named)
        keyed = kind == "map"

        def blocks(data: bytes, pos: int) -> int:
            while True:
                count, pos = _varint(data, pos)
                if count == 0:
                    return pos
                if count < 0:  # a block that also states its size in bytes
                    count = -count
                    pos = _varint(data, pos)[1]
                for _ in range(count):
                    pos = item(data, _sized(data, pos) if keyed else pos)
        return blocks
    return _walker(kind, named)  # {"type": "long", "logicalType": ...}


# --- the codec -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchemaVersion:
    name: str  # short record name, e.g. "Query"
    fingerprint: int
    resolved: Any  # fully resolved JSON schema
    parsed: Any  # fastavro-parsed schema
    walk: Walk  # the index check

    @property
    def header(self) -> bytes:
        return MAGIC + self.fingerprint.to_bytes(8, "little")


def load_definitions(directory: Path = AVRO_DIR) -> dict[str, Any]:
    named: dict[str, Any] = {}
    for path in sorted(directory.glob("*.avsc")):
        schema = json.loads(path.read_text())
        named[_fullname(schema["name"], schema.get("namespace"))] = schema
    return named


def _version(name: str, resolved: Any) -> SchemaVersion:
    parsed = fastavro.parse_schema(_without_logical_types(resolved), _write_hint=False)
    return SchemaVersion(name, fingerprint(resolved), resolved, parsed, _walker(resolved, {}))


class Codec:
    """Encodes and decodes every infaas message type; thread-safe and cheap to share."""

    def __init__(self, directory: Path = AVRO_DIR):
        named = load_definitions(directory)
        self.current: dict[str, SchemaVersion] = {}
        for full in named:
            short = full.rsplit(".", 1)[-1]
            self.current[short] = _version(short, resolve_schema(full, named))
        self.by_fingerprint: dict[int, SchemaVersion] = {v.fingerprint: v for v in self.current.values()}
        self._tails: dict[str, Any] = {}
        for path in sorted((directory / "history").glob("*/*.avsc")):
            old = _version(path.parent.name, json.loads(path.read_text()))
            self.by_fingerprint.setdefault(old.fingerprint, old)

    def schema(self, name: str) -> SchemaVersion:
        try:
            return self.current[name]
        except KeyError:
            raise CodecError(f"no schema named {name!r}") from None

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        version = self.schema(name)
        buf = io.BytesIO()
        buf.write(version.header)
        try:
            fastavro.schemaless_writer(buf, version.parsed, record)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:
            raise EncodeError(f"{name} record does not fit its schema: {err}") from None
        return buf.getvalue()

    def encode_wrapping(self, name: str, inner: bytes, rest: dict[str, Any]) -> bytes:
        """Encode a record whose first field is a record we already hold encoded (`inner`, a
        single-object message of that field's type), without decoding and re-encoding it.

        Avro's binary form of a record is its fields' forms in order, so the body is `inner`'s
        body followed by the other fields: the same bytes fastavro would write, much cheaper.
        """
        version = self.schema(name)
        first = version.resolved["fields"][0]["type"]
        inner_name = first["name"].rsplit(".", 1)[-1] if isinstance(first, dict) else str(first).rsplit(".", 1)[-1]
        if inner[:HEADER_LEN] != self.schema(inner_name).header:
            raise EncodeError(f"{name}: the wrapped message is not a current {inner_name}")
        tail = self._tails.get(name)
        if tail is None:
            rest_schema = {"type": "record", "name": f"{name}Tail", "fields": version.resolved["fields"][1:]}
            tail = self._tails[name] = fastavro.parse_schema(_without_logical_types(rest_schema), _write_hint=False)
        buf = io.BytesIO()
        buf.write(version.header)
        buf.write(inner[HEADER_LEN:])
        try:
            fastavro.schemaless_writer(buf, tail, rest)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:
            raise EncodeError(f"{name} record does not fit its schema: {err}") from None
        return buf.getvalue()

    def decode(self, data: bytes, expected: str | None = None) -> tuple[str, dict[str, Any]]:
        """Return (schema name, record); raise DecodeError with the reason on any bad input."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        if len(data) < HEADER_LEN:
            raise DecodeError(f"message of {len(data)} bytes is shorter than the 10-byte Avro header")
        if bytes(data[:2]) != MAGIC:
            raise DecodeError(f"not Avro single-object encoding (starts with {bytes(data[:2]).hex()}, not c301)")
        fp = int.from_bytes(data[2:HEADER_LEN], "little")
        writer = self.by_fingerprint.get(fp)
        if writer is None:
            raise DecodeError(f"unknown schema fingerprint {fp:016x}")
        if expected is not None and writer.name != expected:
            raise DecodeError(f"expected a {expected} message, got {writer.name}")
        reader = self.current.get(writer.name, writer)
        body = io.BytesIO(data[HEADER_LEN:])
        try:
            if reader is writer:
                record = fastavro.schemaless_reader(body, writer.parsed, None)
            else:
                record = fastavro.schemaless_reader(body, writer.parsed, reader.parsed)
        except Exception as err:  # fastavro raises many types on garbage; all mean "bad bytes"
            raise DecodeError(f"malformed {writer.name} body: {type(err).__name__}: {err}") from None
        if body.tell() != len(data) - HEADER_LEN:
            raise DecodeError(f"malformed {writer.name} body: {len(data) - HEADER_LEN - body.tell()} trailing bytes")
        try:
            writer.walk(data, HEADER_LEN)
        except (DecodeError, IndexError) as err:
            raise DecodeError(f"malformed {writer.name} body: {err}") from None
        if not isinstance(record, dict):
            raise DecodeError(f"malformed {writer.name} body")
        return writer.name, record

    def decode_as(self, expected: str, data: bytes) -> dict[str, Any]:
        return self.decode(data, expected)[1]


_default: Codec | None = None


def default_codec() -> Codec:
    global _default
    if _default is None:
        _default = Codec()
    return _default
