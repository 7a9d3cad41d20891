"""`infaas bench pipeline`: the serving pipeline's speed, measured on this machine
(and `infaas bench overload`: goodput and shedding beyond capacity, at the end of this file).

1. Selection: decision latency (p50/p99) with 100, 1,000 and 4,032 variants in one task.
2. Dispatcher: sustained queries/s of one dispatcher process, then of two sharing the queries
   topic (queries pre-loaded in Kafka), with the CPU each process and the broker spent per query.
3. End-to-end overhead at low load: a variant-specific query through the pipeline versus the same
   variant run directly with its executor on the same input, one query at a time.
4. Throughput: the whole pipeline flooded with queries for one variant versus that variant's raw
   executor throughput at its batch size on the same cores, with the CPU the broker, the dispatcher and
   the worker spent per query (from /proc), the model's own execution time taken out of the worker's.
Each prints its numbers; all of them go to a JSON file. Runs use a topic prefix of their own
(`<prefix>-bench`), deleted at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import bus
from .catalog import Variant
from .client import InfaasClient
from .paths import PROFILES_CSV, proteus_dir
from .policies.selection import Request, select
from .policies.snapshot import ACTIVE, Snapshot, VariantLive
from .schemas.codec import default_codec
from .serve import Pipeline, ServeOptions
from .settings import Settings
from .tensors import to_tensor

TASK = "digits-classification"
PARTS = ("selection", "dispatcher", "variants", "activation", "gateway")


def percentiles(values_ms: list[float]) -> dict[str, float]:
    data = np.asarray(values_ms, dtype=float)
    return {"p50_ms": float(np.percentile(data, 50)), "p99_ms": float(np.percentile(data, 99)),
            "mean_ms": float(data.mean()), "n": int(len(data))}


# --- 1. selection -----------------------------------------------------------------------------------
def one_task_catalogue(size: int, seed: int = 0) -> list[Variant]:
    """`size` variants in one task, drawn from the synthetic catalogue built on the Proteus profiles."""
    from .sim.catalogue import synthetic_catalogue
    pool = synthetic_catalogue(proteus_dir() / PROFILES_CSV)
    rng = random.Random(seed)
    chosen = rng.sample(pool, size) if size <= len(pool) else [rng.choice(pool) for _ in range(size)]
    return [dataclasses.replace(v, task="bench", variant_id=f"{v.variant_id}#{i}") for i, v in enumerate(chosen)]


def bench_selection(sizes=(100, 1000, 4032), decisions: int = 20_000, seed: int = 0, rounds: int = 5) -> dict:
    """p50/p99 of one decision, per round of `decisions / rounds`; the median round is reported, so
    a burst of work elsewhere on this shared machine moves one round, not the figure."""
    rng = random.Random(seed)
    results = {}
    for size in sizes:
        variants = one_task_catalogue(size, seed)
        live = {v.variant_id: VariantLive(ACTIVE, replicas=1, queue_len=rng.randint(0, 20))
                for v in rng.sample(variants, max(size // 100, 1))}  # ~1% loaded, as in a real deployment
        snapshot = Snapshot({v.variant_id: v for v in variants}, live=live, at_ms=1)
        accuracies = sorted(v.accuracy for v in variants)
        requests = [Request("bench", task="bench", min_accuracy=rng.choice([None, *accuracies[::max(size // 20, 1)]]),
                            latency_ms=rng.choice([None, 5.0, 20.0, 50.0, 100.0, 300.0, 1000.0]))
                    for _ in range(2000)]
        for request in requests:  # warm: builds the per-task index once, as the dispatcher does
            select(snapshot, request)
        per_round = [percentiles(time_decisions(snapshot, requests, decisions // rounds)) for _ in range(rounds)]
        results[size] = {"p50_us": 1000 * float(np.median([r["p50_ms"] for r in per_round])),
                         "p99_us": 1000 * float(np.median([r["p99_ms"] for r in per_round])),
                         "p99_us_per_round": [1000 * r["p99_ms"] for r in per_round], "decisions": decisions}
    return results


def time_decisions(snapshot: Snapshot, requests: list[Request], decisions: int) -> list[float]:
    timings = []
    for i in range(decisions):
        request = requests[i % len(requests)]
        started = time.perf_counter()
        select(snapshot, request)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


# --- CPU per query ---------------------------------------------------------------------------------
def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a process has used so far, from /proc (0 when it is unknown or gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class CpuMeter:
    """CPU seconds that named processes spend between `start` and `stop`. The broker is measured when
    it runs on this machine (the local stack); elsewhere it is left out."""

    def __init__(self, settings: Settings, pids: dict[str, int | None]):
        from .launcher import running_pid
        self.pids = {**pids, "broker": running_pid(settings, "kafka")}
        self.pids = {name: pid for name, pid in self.pids.items() if pid is not None}
        self.spent: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._at = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        self.spent = {name: cpu_seconds(pid) - self._at[name] for name, pid in self.pids.items()}
        return self.spent

    def us_per_query(self, queries: int, subtract: dict[str, float] | None = None) -> dict[str, float]:
        """Microseconds per query by process (`subtract`: seconds to take off a process first), and total."""
        per = {name: 1e6 * max(spent - (subtract or {}).get(name, 0.0), 0.0) / max(queries, 1)
               for name, spent in self.spent.items()}
        return {**per, "total": sum(per.values())}


# --- 2. dispatcher throughput ---------------------------------------------------------------------
def bench_dispatcher(settings: Settings, inputs: np.ndarray, queries: int = 20_000,
                     say: Callable[[str], None] = print, processes: int = 1) -> dict:
    """Pre-load `queries` in the queries topic, start `processes` dispatchers, and once all are ready
    time the rest until every query is routed (what was routed while they joined is not counted)."""
    from confluent_kafka import TopicPartition

    from .scaler.processes import ServiceProcess
    codec = default_codec()
    producer = bus.producer(settings, **{"linger.ms": 5})
    topic = settings.topic("queries")
    sample = to_tensor(inputs[:1])
    for i in range(queries):
        record = {"query_id": f"b{i}", "app_id": "demo", "task": TASK, "model": None, "variant": None,
                  "inputs": sample, "min_accuracy": None, "latency_ms": 1e6, "max_cost": None,
                  "reply_topic": None, "sent_at": int(time.time() * 1000)}
        while True:
            try:
                producer.produce(topic, key=str(i).encode(), value=codec.encode("Query", record))
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    consumer = bus.consumer(settings, f"{settings.topic_prefix}-dispatcher")
    partitions = [TopicPartition(topic, p) for p in consumer.list_topics(topic).topics[topic].partitions]
    first = bus.committed_total(consumer, partitions)  # an earlier run's

    def routed() -> int:
        return bus.committed_total(consumer, partitions) - first

    services = [ServiceProcess(f"bench-dispatcher-{i + 1}", ["dispatcher"], settings.state_dir / "logs" / "bench",
                               {**os.environ, **settings.as_env()}).start() for i in range(processes)]
    try:
        for service in services:
            service.wait_ready(120)
        meter = CpuMeter(settings, {f"dispatcher-{i + 1}": s.pid for i, s in enumerate(services)}).start()
        started, at_start = time.monotonic(), routed()
        done = at_start
        while done < queries and time.monotonic() - started < 300:
            time.sleep(0.25)
            done = routed()
        elapsed = time.monotonic() - started
        meter.stop()
    finally:
        consumer.close()
        for service in services:
            service.stop()
    timed = done - at_start
    cpu = meter.us_per_query(timed)
    say(f"dispatcher x{processes}: {timed} queries routed in {elapsed:.1f} s once ready ({at_start} while joining); "
        f"CPU per query: {', '.join(f'{k} {v:.0f} us' for k, v in cpu.items())}")
    return {"processes": processes, "queries": timed, "seconds": elapsed, "queries_per_s": timed / elapsed,
            "cpu_us_per_query": cpu}


# --- 3 and 4. the pipeline against the raw executor ---------------------------------------------
def raw_executor(settings: Settings, variant: Variant):
    from .consumers.executors import open_executor
    from .repository import Repository
    return open_executor(variant, Repository.from_settings(settings).fetch(variant.artifact))


def bench_overhead(client: InfaasClient, executor, variant: Variant, inputs: np.ndarray, n: int = 300) -> dict:
    direct, piped = [], []
    for i in range(n):
        x = inputs[i % len(inputs)][None]
        started = time.perf_counter()
        executor.run(x)
        direct.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        result = client.query(x, variant=variant.variant_id)
        piped.append((time.perf_counter() - started) * 1000)
        if not result.ok:
            raise RuntimeError(f"query through the pipeline failed: {result.status}: {result.error}")
    d, p = percentiles(direct), percentiles(piped)
    return {"direct": d, "pipeline": p, "overhead_p50_ms": p["p50_ms"] - d["p50_ms"],
            "overhead_p99_ms": p["p99_ms"] - d["p99_ms"]}


def bench_raw_throughput(executor, variant: Variant, inputs: np.ndarray, seconds: float = 5.0) -> float:
    batch = np.resize(inputs, (variant.batch_size, *inputs.shape[1:])).astype(inputs.dtype)
    rows, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        executor.run(batch)
        rows += len(batch)
    return rows / (time.perf_counter() - started)


def bench_pipeline_throughput(client: InfaasClient, variant: Variant, inputs: np.ndarray, n: int = 5000,
                              meter: CpuMeter | None = None) -> float:
    if meter is not None:
        meter.start()
    started = time.perf_counter()
    futures = [client.submit(inputs[i % len(inputs)][None], variant=variant.variant_id) for i in range(n)]
    client.flush()
    results = [client.wait(f, timeout_s=300) for f in futures]
    elapsed = time.perf_counter() - started
    if meter is not None:
        meter.stop()
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} queries failed, e.g. {failed[0].status}: {failed[0].error}")
    return n / elapsed


def run_benchmarks(settings: Settings, quick: bool = False, out: Path | None = None,
                   say: Callable[[str], None] = print, parts: tuple[str, ...] = PARTS) -> dict:
    from .loadgen import validation_inputs
    from .registration.zoo import ensure_zoo
    bench = settings.replace(topic_prefix=f"{settings.topic_prefix}-bench-{uuid.uuid4().hex[:6]}")
    bus.ensure_core_topics(bench)
    ensure_zoo(settings, quick=True, zoo="digits", say=say)  # the dispatcher benchmark queries its task
    inputs = validation_inputs(settings, TASK)
    report: dict = {"machine": _machine(), "parts": list(parts)}
    try:
        if "selection" in parts:
            say("1/4 selection decision latency ...")
            report["selection"] = bench_selection(decisions=5_000 if quick else 20_000)
            for size, row in report["selection"].items():
                say(f"  {size:5d} variants: p50 {row['p50_us']:.1f} us, p99 {row['p99_us']:.1f} us (median of "
                    f"{len(row['p99_us_per_round'])} rounds; p99 per round "
                    f"{', '.join(f'{x:.0f}' for x in row['p99_us_per_round'])} us)")
        if "dispatcher" in parts:
            say("2/4 dispatcher throughput ...")
            report["dispatcher"] = bench_dispatcher(bench, inputs, 5_000 if quick else 20_000, say)
            say(f"  {report['dispatcher']['queries_per_s']:.0f} queries/s")
            # Two processes share the queries topic's partitions; on this machine's cores, with the broker
            # beside them, the gain is bounded by the cores left, which the report states.
            report["dispatcher_2"] = bench_dispatcher(bench, inputs, 5_000 if quick else 20_000, say, processes=2)
            report["dispatcher_2"]["cores"] = os.cpu_count()
            say(f"  {report['dispatcher_2']['queries_per_s']:.0f} queries/s with two dispatchers "
                f"({report['dispatcher_2']['queries_per_s'] / report['dispatcher']['queries_per_s']:.2f}x one; "
                f"{os.cpu_count()} cores)")
        if {"variants", "activation", "gateway"} & set(parts):
            bench_variants(settings, bench, inputs, quick, say, report, parts)
    finally:
        bus.delete_prefixed_topics(bench)
    return write_report(report, out or Path("bench-results") / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}.json", say)


def bench_variants(settings: Settings, bench: Settings, inputs: np.ndarray, quick: bool, say: Callable[[str], None],
                   report: dict, parts: tuple[str, ...]) -> None:
    """3 and 4 (and the gateway) on one running pipeline that hosts every variant measured."""
    from .loadgen import validation_inputs
    from .registration.zoo import ensure_zoo
    report["variants"] = {}
    if "variants" in parts:
        zoo = {v.variant_id: v for v in ensure_zoo(settings, quick=True, say=say)}  # the demo's mnist1d zoo
        rows = pick_variants(zoo, quick) + [("compute-bound reference", v) for v in heavy_variants(settings)]
    else:  # the gateway or activation alone: small variants of the digits zoo, which the dispatcher part uses too
        zoo = {v.variant_id: v for v in ensure_zoo(settings, quick=True, zoo="digits", say=say)}
        rows = pick_variants(zoo, quick)[:1]
    chosen = [v for _, v in rows]
    cold = cold_variants(zoo, chosen, 3)  # not preloaded: the activation part loads them on demand
    inputs_of = {TASK: inputs, "bench-heavy": inputs}
    inputs_of.update({v.task: validation_inputs(settings, v.task) for v in zoo.values()})
    pipeline = Pipeline(bench, ServeOptions(workers=1, preload=[v.variant_id for v in chosen], scaler=False),
                        env={**os.environ, **bench.as_env()})
    pipeline.start()
    try:
        with InfaasClient(bench, app_id="demo", timeout_s=120) as client:
            if "variants" in parts:
                pids = {("worker" if "worker" in name else name): s.pid for name, s in pipeline.services.items()
                        if name == "dispatcher" or "worker" in name}
                for row, variant in rows:
                    say(f"pipeline vs raw executor: {row}")
                    measured = measure_variant(bench, client, variant, inputs_of[variant.task], quick, say,
                                               CpuMeter(bench, pids))
                    report["variants"][variant.variant_id] = {"row": row, **measured}
                tiny = report["variants"][rows[0][1].variant_id]
                report["cpu_us_per_query"] = {**tiny["cpu_us_per_query"], "variant": rows[0][1].variant_id}
            if "activation" in parts:
                report["activation"] = bench_activation(client, cold, inputs_of, say)
            if "gateway" in parts:
                report["gateway"] = bench_gateway(bench, client, chosen[0], inputs_of[chosen[0].task], quick, say)
    finally:
        pipeline.stop()


def write_report(report: dict, out: Path, say: Callable[[str], None]) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    say(f"written to {out}")
    return report


REAL_COST_MS = 2.0  # a model that takes this long a row is where the pipeline's cost matters, not tiny ones


def pick_variants(variants: dict[str, Variant], quick: bool) -> list[tuple[str, Variant]]:
    """(row, variant) pairs from a zoo's ONNX Runtime fp32 one-thread variants: every model of at least
    REAL_COST_MS a row at batch 1 (at batch 1 and, unless quick, 8), and the fastest model at batch 1 as
    a separate row, where the pipeline's own cost shows most. With no model that slow, the slowest."""
    fp32 = [v for v in variants.values() if v.optimizer == "ort-fp32" and v.threads == 1 and v.hardware == "cpu"]
    batches = (1,) if quick else (1, 8)
    at_one = [v for v in fp32 if v.batch_size == 1]
    tiny = min(at_one, key=lambda v: v.latency_at(1))
    costly = {v.model for v in at_one if v.latency_at(1) >= REAL_COST_MS}
    row = f"models >= {REAL_COST_MS:g} ms a row"
    if not costly:
        costly = {max(at_one, key=lambda v: v.latency_at(1)).model}
        row = f"slowest model (none reaches {REAL_COST_MS:g} ms a row)"
    chosen = [(row, v) for v in sorted(fp32, key=lambda v: (v.model, v.batch_size))
              if v.model in costly and v.batch_size in batches]
    return [("tiny model (pipeline overhead)", tiny)] + chosen


def cold_variants(zoo: dict[str, Variant], hosted: list[Variant], count: int) -> list[Variant]:
    """The `count` fastest-loading ONNX Runtime fp32 one-thread CPU variants of the zoo not hosted (the
    first TVM variant in a worker also imports TVM, most of a second that its profile does not count)."""
    taken = {v.variant_id for v in hosted}
    spare = [v for v in zoo.values() if v.variant_id not in taken and v.hardware == "cpu" and v.threads == 1
             and v.optimizer == "ort-fp32"]
    return sorted(spare, key=lambda v: (v.load_ms, v.variant_id))[:count]


def bench_activation(client: InfaasClient, variants: list[Variant], inputs_of: dict[str, np.ndarray],
                     say: Callable[[str], None], warm: int = 20) -> dict:
    """Activation: the first query to a variant nobody hosts waits for the dispatcher's LOAD command, the
    load, the replica joining the variant's consumer group and its first fetch. Per variant: that first
    query's latency, less the same query's p50 once warm (routing and the run itself)."""
    rows = {}
    for variant in variants:
        x = inputs_of[variant.task][:1]
        started = time.perf_counter()
        first = client.query(x, variant=variant.variant_id, timeout_s=120)
        first_ms = (time.perf_counter() - started) * 1000
        if not first.ok:
            raise RuntimeError(f"first query to {variant.variant_id} failed: {first.status}: {first.error}")
        warm_ms = []
        for _ in range(warm):
            started = time.perf_counter()
            client.query(x, variant=variant.variant_id, timeout_s=120)
            warm_ms.append((time.perf_counter() - started) * 1000)
        warm_p50 = float(np.percentile(warm_ms, 50))
        rows[variant.variant_id] = {"profiled_load_ms": variant.load_ms, "first_query_ms": first_ms,
                                    "warm_p50_ms": warm_p50, "activation_ms": first_ms - warm_p50}
        say(f"activation, {variant.variant_id} (profiled load {variant.load_ms:.1f} ms): first query {first_ms:.0f} ms, "
            f"warm p50 {warm_p50:.1f} ms: activation {first_ms - warm_p50:.0f} ms")
    activations = [row["activation_ms"] for row in rows.values()]
    return {"variants": rows, "activation_ms_median": float(np.median(activations)) if activations else None}


def heavy_variants(settings: Settings) -> list[Variant]:
    """The compute-bound case: the heavy reference model at batch 1 and 8 (registered once)."""
    import tempfile

    from .registration import compute_bound
    from .registration.register import register_model
    narrow = settings.replace(variant_batch_sizes=(1, 8), variant_optimizers=("ort-fp32",), variant_threads=(1,))
    with tempfile.TemporaryDirectory() as directory:
        model, validation = compute_bound.build(Path(directory))
        report = register_model(narrow, "demo", "bench-heavy", "deep-mlp", model, validation, public=True,
                                quick=True, name="bench-heavy-mlp")
    return sorted(report.variants, key=lambda v: v.batch_size)


def measure_variant(settings: Settings, client: InfaasClient, variant: Variant, inputs: np.ndarray, quick: bool,
                    say: Callable[[str], None], meter: CpuMeter) -> dict:
    executor = raw_executor(settings, variant)
    try:
        client.query(inputs[:1], variant=variant.variant_id)  # the replica has joined and warmed up
        say(f"3/4 end-to-end overhead, {variant.variant_id} ...")
        overhead = bench_overhead(client, executor, variant, inputs, 100 if quick else 300)
        say(f"  direct p50 {overhead['direct']['p50_ms']:.2f} ms; pipeline p50 {overhead['pipeline']['p50_ms']:.2f}"
            f" / p99 {overhead['pipeline']['p99_ms']:.2f} ms; overhead p50 {overhead['overhead_p50_ms']:.2f} ms, "
            f"p99 {overhead['overhead_p99_ms']:.2f} ms")
        say(f"4/4 throughput, {variant.variant_id} ...")
        raw = bench_raw_throughput(executor, variant, inputs, 2.0 if quick else 5.0)
        flood = int(min(5000, max(200, raw * (3 if quick else 10))))
        piped = bench_pipeline_throughput(client, variant, inputs, flood, meter)
        # The worker's CPU less the model's own: the flood's rows at the raw executor's rate (one thread).
        cpu = meter.us_per_query(flood, subtract={"worker": flood / raw})
        say(f"  raw executor {raw:.0f} rows/s at batch {variant.batch_size}; pipeline {piped:.0f} queries/s "
            f"({100 * piped / raw:.1f}% of raw); service CPU per query: "
            f"{', '.join(f'{k} {v:.0f} us' for k, v in cpu.items())}")
    finally:
        executor.close()
    return {"overhead": overhead, "raw_rows_per_s": raw, "pipeline_queries_per_s": piped, "cpu_us_per_query": cpu,
            "pipeline_share_of_raw": piped / raw, "batch_size": variant.batch_size,
            "latency_at_batch_ms": variant.latency_at(variant.batch_size)}


def bench_gateway(settings: Settings, client: InfaasClient, variant: Variant, inputs: np.ndarray, quick: bool,
                  say: Callable[[str], None]) -> dict:
    """The V2 gateway in front of the running pipeline: its overhead over the Kafka client (one query at a
    time, the same variant, interleaved) and its queries/s with many HTTP requests in flight."""
    import asyncio

    from .scaler.processes import ServiceProcess
    gateway = ServiceProcess("bench-gateway", ["gateway", "--port", "0", "--timeout", "120"],
                             settings.state_dir / "logs" / "bench", {**os.environ, **settings.as_env()}).start()
    try:
        gateway.wait_ready(120)
        base = gateway.ready_line.split("http://")[1].split(" ")[0].rstrip(",")
        url = f"http://{base}/models/{variant.variant_id}/infer"
        say(f"gateway: overhead and throughput, {variant.variant_id} ...")
        result = asyncio.run(_drive_gateway(url, client, variant, inputs, 100 if quick else 300,
                                            1000 if quick else 3000, 32))
    finally:
        gateway.stop()
    say(f"  client p50 {result['client']['p50_ms']:.2f} ms; gateway p50 {result['gateway']['p50_ms']:.2f} / p99 "
        f"{result['gateway']['p99_ms']:.2f} ms; overhead p50 {result['overhead_p50_ms']:.2f} ms; "
        f"{result['queries_per_s']:.0f} queries/s with {result['concurrency']} requests in flight (the client "
        f"alone: {result['client_queries_per_s']:.0f})")
    return result


async def _drive_gateway(url: str, client: InfaasClient, variant: Variant, inputs: np.ndarray, n: int, flood: int,
                         concurrency: int) -> dict:
    import asyncio

    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(url.rsplit("/", 1)[0]) as response:  # the metadata: the input's name
            input_name = (await response.json())["inputs"][0]["name"]

        async def post(i: int) -> None:
            row = inputs[i % len(inputs)][None]
            body = {"inputs": [{"name": input_name, "shape": list(row.shape), "datatype": "FP32",
                                "data": row.reshape(-1).tolist()}]}
            async with session.post(url, json=body) as response:
                if response.status != 200:
                    raise RuntimeError(f"gateway answered {response.status}: {await response.text()}")
                await response.read()

        await post(0)
        via_client, via_gateway = [], []
        for i in range(n):
            started = time.perf_counter()
            result = await client.aquery(inputs[i % len(inputs)][None], variant=variant.variant_id)
            via_client.append((time.perf_counter() - started) * 1000)
            if not result.ok:
                raise RuntimeError(f"query failed: {result.status}: {result.error}")
            started = time.perf_counter()
            await post(i)
            via_gateway.append((time.perf_counter() - started) * 1000)
        slots = asyncio.Semaphore(concurrency)

        async def by_client(i: int) -> None:
            async with slots:
                await client.aquery(inputs[i % len(inputs)][None], variant=variant.variant_id)

        async def by_gateway(i: int) -> None:
            async with slots:
                await post(i)

        rates = {}
        for name, send in (("client", by_client), ("gateway", by_gateway)):
            started = time.perf_counter()
            await asyncio.gather(*(send(i) for i in range(flood)))
            rates[name] = flood / (time.perf_counter() - started)
    c, g = percentiles(via_client), percentiles(via_gateway)
    return {"client": c, "gateway": g, "overhead_p50_ms": g["p50_ms"] - c["p50_ms"],
            "overhead_p99_ms": g["p99_ms"] - c["p99_ms"], "queries_per_s": rates["gateway"],
            "client_queries_per_s": rates["client"], "concurrency": concurrency, "queries": flood}


def _machine() -> dict:
    import os
    import platform
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S")}


# --- `infaas bench overload` ---------------------------------------------------------------------------
# A compute-bound model at batch 1 on one replica, offered 1x and 3x its profiled capacity, with the
# machine otherwise idle and with one extra process busy-looping on a core (as on a shared machine,
# where the profile, measured alone, promises more than the replica then serves).
OVERLOAD_TASK = "heavy-task"
OVERLOAD_SLO_MS = 200.0
SHED = ("DEADLINE_EXCEEDED", "NO_FEASIBLE_VARIANT", "THROTTLED")  # THROTTLED: by the client (client_throttle_k)


def register_overload_model(settings: Settings, directory: Path) -> Variant:
    """The heavy reference model as one variant: ORT fp32, one thread, batch 1."""
    from .registration import compute_bound
    from .registration.register import register_model
    model, validation = compute_bound.build(directory, layers=12, width=2048)
    narrow = settings.replace(variant_batch_sizes=(1,), variant_optimizers=("ort-fp32",), variant_threads=(1,))
    return register_model(narrow, "demo", OVERLOAD_TASK, "deep-mlp", model, validation, public=True, quick=True,
                          name="heavy-mlp").variants[0]


def offer(client: InfaasClient, x: np.ndarray, rate: float, seconds: float) -> list:
    """Open-loop load at `rate` queries/s for `seconds`; (sent at, result) of every query, all answered."""
    sent, began = [], time.monotonic()
    while time.monotonic() - began < seconds:
        sent.append((time.time(), client.submit(x, task=OVERLOAD_TASK, latency_ms=OVERLOAD_SLO_MS)))
        time.sleep(max(began + len(sent) / rate - time.monotonic(), 0))
    client.flush()
    return [(at, future.result(180)) for at, future in sent]


def served_rate(results: list, slo_ms: float | None = None) -> float:
    """OK answers per second, from the first query sent to the last answer; with `slo_ms`, only those
    the client received within it (goodput: an answer after its SLO is of no use to the client)."""
    ok = [r for at, r in results if r.ok and (slo_ms is None or (r.received_at - at) * 1000 <= slo_ms)]
    return len(ok) / max(max(r.received_at for _, r in results) - results[0][0], 1e-9)


def wait_for_empty_queue(settings: Settings, variant_id: str, after_s: float, timeout_s: float = 60.0) -> None:
    """Until a worker report made after `after_s` (epoch seconds) shows no query queued for the variant:
    the next phase then starts on an idle replica and a dispatcher that knows it."""
    codec = default_codec()
    consumer = bus.consumer(settings, f"bench-overload-{uuid.uuid4().hex[:8]}", **{"auto.offset.reset": "latest"})
    consumer.subscribe([settings.topic("metrics")])
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            _, report = codec.decode(message.value())
            queued = sum(m["queue_len"] for m in report["variants"] if m["variant_id"] == variant_id)
            if report["reported_at"] / 1000 > after_s and queued == 0:
                return
        raise TimeoutError(f"{variant_id}: no report of an empty queue within {timeout_s:g} s")
    finally:
        consumer.close()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process (VmRSS: now; VmHWM: its peak), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_times() -> tuple[int, int]:
    """(stolen, all) CPU time of the machine so far, in clock ticks (/proc/stat; (0, 0) where there is none)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    # user nice system idle iowait irq softirq steal guest guest_nice: guest time is counted in user already
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """The share of the CPU time between two `cpu_times` that the hypervisor gave to other guests: on a
    shared VM it slows every process alike (20-40% in some runs here, 1x goodput down from 76 to 28 q/s)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else None


def overload_phase(client: InfaasClient, x: np.ndarray, rate: float, seconds: float) -> dict:
    """Offer `rate` queries/s: goodput, what each query's status was, how fast shed ones were told, and
    the CPU time stolen by the hypervisor meanwhile."""
    stolen_before = cpu_times()
    results = offer(client, x, rate, seconds)
    steal = steal_share(stolen_before, cpu_times())
    statuses: dict[str, int] = {}
    for _, r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    shed = [(r.received_at - at) * 1000 for at, r in results if r.status in SHED]
    shed_by_status = {status: float(np.percentile([(r.received_at - at) * 1000 for at, r in results
                                                   if r.status == status], 99))
                      for status in SHED if status in statuses}
    late = sum(r.ok and (r.received_at - at) * 1000 > OVERLOAD_SLO_MS for at, r in results)
    return {"offered_qps": len(results) / seconds, "sent": len(results), "statuses": statuses,
            "goodput_qps": served_rate(results), "within_slo_qps": served_rate(results, OVERLOAD_SLO_MS),
            "ok_after_slo": late, "finished_at": max(r.received_at for _, r in results),
            "shed_latency_p50_ms": float(np.percentile(shed, 50)) if shed else None,
            "shed_latency_p99_ms": float(np.percentile(shed, 99)) if shed else None,
            "shed_latency_p99_ms_by_status": shed_by_status, "cpu_steal_share": steal}


def latency_now_ms(settings: Settings, variant: Variant) -> float:
    """The variant's batch-1 latency on this machine now, timed alone as the profiler times it.

    The catalogue's profile is the one measured when the model was first registered: registering the same
    file again keeps it, and a shared or busier host serves slower than it did then (on one VM the heavy
    model profiled 5.1 ms and ran 7-12 ms hours later). 1x is what the model serves here today."""
    from .registration.profiler import Budget, time_batch
    executor = raw_executor(settings, variant)
    try:
        return time_batch(executor, heavy_query(), Budget(warmup=20, runs=200, max_s=5.0)).p50_ms
    finally:
        executor.close()


def overload_pair(settings: Settings, services: dict, client: InfaasClient, variant: Variant, seconds: float,
                  latency_ms: float | None = None) -> dict:
    """1x then 3x of the capacity (1000 / `latency_ms`, by default the profile's) on the running services;
    goodput ratio and their memory."""
    capacity = 1000.0 / (latency_ms or variant.latency_at(1))
    x = heavy_query()
    client.query(x, variant=variant.variant_id, timeout_s=180)  # loaded and warm before 1x is measured
    one = overload_phase(client, x, capacity, seconds)
    wait_for_empty_queue(settings, variant.variant_id, one["finished_at"])
    rss_before = {name: rss_mb(s.pid) for name, s in services.items()}
    three = overload_phase(client, x, 3 * capacity, seconds)
    return {"profiled_capacity_qps": capacity, "1x": one, "3x": three,
            "goodput_3x_vs_1x": three["goodput_qps"] / one["goodput_qps"] if one["goodput_qps"] else 0.0,
            "within_slo_3x_vs_1x": three["within_slo_qps"] / one["within_slo_qps"] if one["within_slo_qps"] else 0.0,
            "rss_mb_before_3x": rss_before, "rss_mb_after_3x": {name: rss_mb(s.pid) for name, s in services.items()},
            "peak_rss_mb": {name: rss_mb(s.pid, "VmHWM") for name, s in services.items()}}


def heavy_query() -> np.ndarray:
    from .registration import compute_bound
    return np.zeros((1, compute_bound.INPUT), np.float32)


class BusyLoop:
    """One extra process spinning on a core for the duration of a `with` block."""

    def __enter__(self) -> BusyLoop:
        import subprocess
        import sys
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *_exc) -> None:
        self.process.kill()
        self.process.wait()


def bench_overload(settings: Settings, seconds: float = 10.0, out: Path | None = None,
                   say: Callable[[str], None] = print, conditions: tuple[str, ...] = ("idle", "busy")) -> dict:
    """`infaas bench overload`: 1x and 3x, idle and beside a busy loop, on one worker (no scaler)."""
    import tempfile
    bench = settings.replace(topic_prefix=f"{settings.topic_prefix}-bench-{uuid.uuid4().hex[:6]}")
    bus.ensure_core_topics(bench)
    report: dict = {"machine": _machine(), "seconds_per_phase": seconds, "slo_ms": OVERLOAD_SLO_MS}
    try:
        with tempfile.TemporaryDirectory() as directory:
            variant = register_overload_model(settings, Path(directory))
        latency_ms = latency_now_ms(settings, variant)
        report["latency_ms"] = {"profiled": variant.latency_at(1), "now": latency_ms}
        say(f"{variant.variant_id}: {latency_ms:.1f} ms a query timed alone now ({1000 / latency_ms:.0f} queries/s "
            f"= 1x; the catalogue's profile says {variant.latency_at(1):.1f} ms)")
        options = ServeOptions(workers=1, preload=[variant.variant_id], scaler=False)
        with Pipeline(bench, options, env={**os.environ, **bench.as_env()}) as running, \
                InfaasClient(bench, app_id="demo", timeout_s=180) as client:
            for condition in conditions:
                say(f"{condition}: 1x then 3x, {seconds:g} s each ...")
                with BusyLoop() if condition == "busy" else contextlib.nullcontext():
                    report[condition] = overload_pair(bench, running.services, client, variant, seconds, latency_ms)
                say(overload_summary(report[condition]))
    finally:
        bus.delete_prefixed_topics(bench)
    return write_report(report, out or Path("bench-results") / f"overload-{time.strftime('%Y%m%d-%H%M%S')}.json", say)


def overload_summary(pair: dict) -> str:
    one, three = pair["1x"], pair["3x"]
    p99 = three["shed_latency_p99_ms"]
    growth = {name: pair["rss_mb_after_3x"][name] - pair["rss_mb_before_3x"][name] for name in pair["rss_mb_after_3x"]}
    return (f"  goodput 1x {one['goodput_qps']:.1f} q/s, 3x {three['goodput_qps']:.1f} q/s "
            f"(3x/1x {pair['goodput_3x_vs_1x']:.2f}; within the SLO {one['within_slo_qps']:.1f} and "
            f"{three['within_slo_qps']:.1f} q/s, {pair['within_slo_3x_vs_1x']:.2f}); 3x statuses {three['statuses']}, "
            f"{three['ok_after_slo']} OK after the SLO; shed p99 "
            + (f"{p99:.0f} ms (SLO {OVERLOAD_SLO_MS:g} ms; "
               + ", ".join(f"{k} {v:.0f}" for k, v in three["shed_latency_p99_ms_by_status"].items()) + ")"
               if p99 is not None else "-")
            + "; RSS MB after 3x " + ", ".join(f"{n} {v:.0f} ({growth[n]:+.0f})" for n, v in pair["rss_mb_after_3x"].items())
            + "; CPU stolen by the hypervisor 1x " + _percent(one["cpu_steal_share"]) + ", 3x "
            + _percent(three["cpu_steal_share"]))


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"
