"""Fuzzer for everything that takes untrusted bytes: the Avro decoder, the tensor checks, the worker's
admission and the dispatcher (tests/fuzz/harness.py, `one_input`, holds the oracles).

    .venv/bin/python tests/fuzz/fuzz_decoder.py --seconds 600         # seeded mutation fuzzer
    .venv/bin/python tests/fuzz/fuzz_decoder.py --atheris -max_total_time=600 [CORPUS_DIR]

The default engine needs nothing beyond the project: it mutates valid messages of every schema (bit
flips, truncation, extension, splices, extreme varints, swapped fingerprints), keeps what decodes as
further seeds, and is reproducible from its seed. `--atheris` hands the same target to atheris
(coverage-guided libFuzzer; `pip install atheris`), which takes libFuzzer's own flags. A finding (an
oracle failing, or any unexpected exception) is saved as crash-<sha1>.bin under --crashes and the run
exits with status 1; replay one with `--replay FILE`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import re
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.fuzz.harness` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from infaas.schemas.codec import PRIMITIVES, DecodeError, EncodeError  # noqa: E402
from infaas.settings import load_settings  # noqa: E402
from tests.fuzz.harness import CODEC, make_dispatcher, named_types, one_input, sample_record, seed_messages  # noqa: E402

HEADERS = [version.header for version in CODEC.current.values()]
EXTREME_VARINTS = [b"\x01", b"\x03", b"\x7f", b"\x80\x01", b"\xff\xff\xff\xff\x0f", b"\xfe\xff\xff\xff\x0f",
                   b"\xff" * 9 + b"\x01", b"\xfe" + b"\xff" * 8 + b"\x01", b"\x80" * 11]
INTERESTING_BYTES = [0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF]
MAX_CORPUS = 4000


@dataclass
class Stats:
    execs: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)
    findings: dict[str, bytes] = field(default_factory=dict)  # first line of the error -> input


def mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(10)
        at = rng.randint(0, len(out))
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[min(at, len(out) - 1)] = rng.choice(INTERESTING_BYTES)
        elif op == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del out[at:at + rng.randint(1, 16)]
        elif op == 4:
            del out[at:]
        elif op == 5:
            out += rng.randbytes(rng.randint(1, 32))
        elif op == 6:  # where a length, count, enum or union index may be
            out[at:at] = rng.choice(EXTREME_VARINTS)
        elif op == 7:  # another message's tail after this one's head
            other = rng.choice(corpus)
            out[at:] = other[rng.randint(0, len(other)):]
        elif op == 8:  # the body read as another schema
            out[:10] = rng.choice(HEADERS)
        elif op == 9 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start:start + rng.randint(1, 32)]
    return bytes(out)


# --- structured mutations: decode, change a field to an extreme value, encode again -------------------
BIG = 600_000  # an enormous string or bytes value (the large ones are rare: they are slow)
EXTREMES = {
    "string": ["", "x" * BIG, "\x00", "é" * 300, "digits", "small:ort-fp32:cpu-1t:b8", "demo", "a" * 129],
    "bytes": [b"", b"\x00" * BIG, b"\xff" * 3],
    "int": [0, 1, -1, 2**31 - 1, -2**31],
    "long": [0, 1, -1, 2**31, 2**63 - 1, -2**63, 2**62],
    "float": [float("nan"), float("inf"), -float("inf"), -0.0, 3.4e38, 1e-45, -1.0],
    "double": [float("nan"), float("inf"), -float("inf"), -0.0, 1.7e308, 5e-324, -1.0],
    "boolean": [True, False], "null": [None],
}


def mutate_record(data: bytes, rng: random.Random) -> bytes | None:
    """A valid message with one to three fields set to extreme values (None if `data` is not valid)."""
    try:
        name, record = CODEC.decode(data)
    except DecodeError:
        return None
    schema = CODEC.current[name].resolved
    named = named_types(schema)
    for _ in range(rng.randint(1, 3)):
        record = _tweak(record, schema, rng, named)
    try:
        return CODEC.encode(name, record)
    except EncodeError:
        return None


def _tweak(value, schema, rng: random.Random, named: dict):
    if isinstance(schema, str) and schema not in PRIMITIVES:
        schema = named[schema]
    if isinstance(schema, str):
        extremes = EXTREMES[schema]
        big = [v for v in extremes if isinstance(v, (str, bytes)) and len(v) >= BIG]
        pick = rng.choice(extremes)
        return pick if pick not in big or rng.random() < 0.02 else extremes[0]
    if isinstance(schema, list):  # our unions are ["null", X]: flip to the other branch, or change X
        other = next(branch for branch in schema if branch != "null")
        if value is None:
            return sample_record(other, rng, named)
        return None if rng.random() < 0.2 else _tweak(value, other, rng, named)
    kind = schema["type"]
    if kind in ("record", "error"):
        field = rng.choice(schema["fields"])
        value[field["name"]] = _tweak(value[field["name"]], field["type"], rng, named)
        return value
    if kind == "enum":
        return rng.choice(schema["symbols"])
    if kind == "fixed":
        return rng.randbytes(schema["size"])
    if kind in ("array", "map"):
        items = schema["items"] if kind == "array" else schema["values"]
        keys = list(range(len(value))) if kind == "array" else list(value)
        roll = rng.random()
        if keys and roll < 0.6:
            key = rng.choice(keys)
            value[key] = _tweak(value[key], items, rng, named)
        elif roll < 0.75:
            value.clear()
        elif kind == "array":
            value += [sample_record(items, rng, named) for _ in range(rng.choice([1, 2, 9, 300]))]
        return value
    return _tweak(value, kind, rng, named)  # {"type": "long", "logicalType": ...}


def run(seconds: float, max_execs: int | None = None, seed: int = 0, crashes: Path | None = None) -> Stats:
    """Mutation fuzzing for up to `seconds` (and `max_execs` inputs); never raises on a finding."""
    rng = random.Random(seed)
    dispatcher = make_dispatcher(load_settings())
    seeds = seed_messages(seed)
    corpus = list(seeds)
    seen_outcomes: set[str] = set()
    stats = Stats()
    started = time.monotonic()
    logging.disable(logging.CRITICAL)  # the services log every dead letter; millions of lines here
    try:
        while time.monotonic() - started < seconds and (max_execs is None or stats.execs < max_execs):
            parent = rng.choice(seeds if rng.random() < 0.5 else corpus)
            data = (rng.random() < 0.3 and mutate_record(parent, rng)) or mutate(parent, rng, corpus)
            stats.execs += 1
            try:
                outcome = one_input(data, dispatcher)
            except Exception as err:  # an oracle failed (AssertionError) or something raised: a finding
                # One finding per kind of failure: numbers (sizes, ids) differ between inputs of one kind.
                key = re.sub(r"\d+", "N", f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}")
                if key not in stats.findings:
                    stats.findings[key] = data
                    _save(crashes, data, traceback.format_exc())
                continue
            stats.outcomes[outcome] += 1
            # A new outcome, or now and then a mutant that still decodes, becomes a seed: mutations stack.
            keep = outcome not in seen_outcomes or (not outcome.startswith("undecodable") and rng.random() < 0.05)
            if keep and len(corpus) < MAX_CORPUS:
                corpus.append(data)
            seen_outcomes.add(outcome)
    finally:
        logging.disable(logging.NOTSET)
        stats.seconds = time.monotonic() - started
    return stats


def _save(crashes: Path | None, data: bytes, trace: str) -> None:
    if crashes is None:
        return
    crashes.mkdir(parents=True, exist_ok=True)
    name = f"crash-{hashlib.sha1(data).hexdigest()}"
    (crashes / f"{name}.bin").write_bytes(data)
    (crashes / f"{name}.txt").write_text(trace)


def run_atheris(argv: list[str]) -> None:
    import tempfile

    import atheris
    dispatcher = make_dispatcher(load_settings())
    logging.disable(logging.CRITICAL)
    atheris.instrument_all()  # coverage of the project's (and fastavro's Python) code guides the mutations
    if not any(not arg.startswith("-") for arg in argv[1:]):  # no corpus directory given: start from the seeds
        corpus = Path(tempfile.mkdtemp(prefix="infaas-fuzz-corpus-"))
        for index, message in enumerate(seed_messages()):
            (corpus / f"seed-{index}").write_bytes(message)
        argv = [*argv, str(corpus)]
    atheris.Setup(argv, lambda data: one_input(data, dispatcher))
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-execs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crashes", type=Path, default=Path("fuzz-crashes"))
    parser.add_argument("--replay", type=Path, help="run one saved input through the oracles and show the error")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided; further arguments go to libFuzzer")
    args, rest = parser.parse_known_args()
    if args.atheris:
        run_atheris([sys.argv[0], *rest])
        return 0
    if args.replay:
        print(one_input(args.replay.read_bytes(), make_dispatcher(load_settings())))
        return 0
    stats = run(args.seconds, args.max_execs, args.seed, args.crashes)
    print(f"{stats.execs} executions in {stats.seconds:.0f} s ({stats.execs / max(stats.seconds, 1e-9):.0f}/s), "
          f"seed {args.seed}, {len(stats.findings)} finding(s)")
    for outcome, count in stats.outcomes.most_common():
        print(f"  {count:9d}  {outcome}")
    for key in stats.findings:
        print(f"FINDING {key}  (saved under {args.crashes})")
    return 1 if stats.findings else 0


if __name__ == "__main__":
    sys.exit(main())
