"""Streaming analytics over infaas: SLO attainment, throughput and cost per minute, per app and per
variant, as a Faust application of your own.

    python examples/analytics/app.py --apps demo,shop       # 1-minute tumbling windows

It reads two streams infaas already publishes:
- `infaas.results.<app>` for each app named: every answer, with its status, variant and latency;
- `infaas.load`: the load monitor's 1 s windows per variant (served, deadline missed, latency).
It keeps the totals in Faust windowed tables (tumbling, by the events' own clock, with changelog
topics: a restarted app resumes its open windows), and once a window is over it publishes an
`AnalyticsWindow` record (Avro, `infaas/schemas/avro/AnalyticsWindow.avsc`) to `infaas.analytics`
and writes it to Cassandra (`analytics_windows`). Cost is each OK answer priced at its variant's
cost per query from the catalogue. It is built the way the load monitor keeps its windows
(`infaas/streams/monitor.py`); in secure mode it runs as a principal made by
`infaas app create NAME --analytics --apps A,B`: run it with `--name NAME` (its own Faust group and
output topic `infaas.analytics.NAME`) and `--no-cassandra` (that principal has no Cassandra role,
so windows go to the topic only, unpriced).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from infaas import bus  # noqa: E402
from infaas.schemas.codec import DecodeError, default_codec  # noqa: E402
from infaas.settings import Settings, load_settings  # noqa: E402

log = logging.getLogger("analytics")

EMPTY = {"answered": 0, "ok": 0, "latency_sum": 0.0, "cost_usd": 0.0, "published": False}


# --- the windows: pure bookkeeping on plain dicts (what the tables hold) ------------------------------
def from_result(result: dict, cost_per_query: dict[str, float]) -> tuple[tuple[str, str], dict]:
    """What one answer adds to its app's window."""
    ok = result["status"] == "OK"
    return ("APP", result["app_id"]), {
        "answered": 1, "ok": int(ok), "latency_sum": result["latency_ms"] if ok else 0.0,
        "cost_usd": cost_per_query.get(result["variant"] or "", 0.0) if ok else 0.0}


def from_load(window: dict, cost_per_query: dict[str, float]) -> tuple[tuple[str, str], dict] | None:
    """What one of the monitor's 1 s variant windows adds to the variant's window (None: not a variant's)."""
    if window["scope"] != "VARIANT" or window["window_s"] != 1:
        return None
    served = window["served"]
    return ("VARIANT", window["key"]), {
        "answered": served + window["deadline_missed"], "ok": served,
        "latency_sum": window["avg_latency_ms"] * served, "cost_usd": cost_per_query.get(window["key"], 0.0) * served}


def add(window: dict | None, part: dict) -> dict:
    window = window or EMPTY
    return {name: window[name] + part[name] for name in ("answered", "ok", "latency_sum", "cost_usd")} | {
        "published": False}


def analytics_record(scope: str, key: str, window_s: int, start_ms: int, w: dict) -> dict:
    return {"scope": scope, "key": key, "window_s": window_s, "window_start": start_ms, "answered": w["answered"],
            "ok": w["ok"], "slo_attainment": w["ok"] / w["answered"] if w["answered"] else 0.0,
            "throughput_qps": w["ok"] / window_s, "avg_latency_ms": w["latency_sum"] / w["ok"] if w["ok"] else 0.0,
            "cost_usd": w["cost_usd"]}


# --- the Faust application ---------------------------------------------------------------------------
def make_app(settings: Settings, apps: list[str], window_s: int = 60, grace_s: float = 5.0,
             name: str | None = None, cassandra: bool = True):
    """`name`: an analytics app made by `infaas app create NAME --analytics` (its own Faust group and
    output topic `infaas.analytics.NAME`); `cassandra=False`: publish to the topic only."""
    import faust

    from infaas.store import BufferedWriter, Store
    from infaas.streams.faust_support import faust_app
    from infaas.views import Catalog

    app = faust_app(settings, "analytics" if name is None else f"analytics-{name}")
    codec = default_codec()
    output = settings.topic("analytics") if name is None else bus.analytics_names(settings, name)[1]
    bus.ensure_topics(settings, {output: bus.TopicSpec(1, bus.ANALYTICS_RETENTION),
                                 **{settings.results_topic(a): bus.TopicSpec(settings.result_partitions) for a in apps}})
    producer = bus.producer(settings)
    writer = BufferedWriter(Store(settings)) if cassandra else None
    cost_per_query: dict[str, float] = {}
    clock = {"ms": 0, "closed_until": 0}  # the newest event time seen; windows ending before it less grace close

    @functools.lru_cache(maxsize=4)
    def event_ms(payload: bytes) -> int:
        """An answer counts at its completion time, a load window at its start: the events' own clock."""
        name, record = codec.decode(payload)
        return record["completed_at"] if name == "Result" else record["window_start"]

    def event_time(event) -> float:
        return event_ms(event.value) / 1000.0

    # One windowed table, keyed by (scope, key); its value is a window's totals (see `add`), as JSON.
    table = (app.Table("analytics", default=None, partitions=1)
             .tumbling(window_s, expires=timedelta(seconds=10 * window_s))
             .relative_to(event_time))
    bus.ensure_topics(settings, {table.table.changelog_topic.get_topic_name(): bus.TopicSpec(1, {
        "cleanup.policy": "compact,delete", "retention.ms": str(20 * window_s * 1000)})})

    def refresh_costs() -> None:
        if not cassandra:  # no catalogue to price from: cost stays 0
            return
        try:
            with Store(settings, connect_timeout=3.0) as store:
                for variant in Catalog.load(store).variants.values():
                    cost_per_query[variant.variant_id] = variant.cost_per_1k / 1000.0
        except Exception as err:  # Cassandra away: price with what we know
            log.warning("catalogue refresh failed: %s", err)

    refresh_costs()  # before the first event: answers are priced from the start

    @app.timer(interval=30.0)
    async def reload_costs() -> None:
        await asyncio.get_running_loop().run_in_executor(None, refresh_costs)

    def count(key: tuple[str, str], part: dict, at_ms: int) -> None:
        # The window is the one of the event's own time (`event_time`): late events land in their window.
        table[key] = add(table[key].value() if key in table else None, part)
        clock["ms"] = max(clock["ms"], at_ms)
        closing = int(clock["ms"] - grace_s * 1000)
        window_end = (at_ms // (window_s * 1000) + 1) * window_s * 1000
        # Publish when the clock has moved on (once a second at most), or at once when this event
        # updated a window that is already closed (a late event: its window is published again).
        if closing - clock["closed_until"] >= 1000 or window_end <= clock["closed_until"]:
            clock["closed_until"] = max(clock["closed_until"], closing)
            publish_closed(clock["closed_until"])

    results = app.topic(*[settings.results_topic(a) for a in apps], value_serializer="raw", key_serializer="raw")
    load = app.topic(settings.topic("load"), value_serializer="raw", key_serializer="raw")

    async def decoded(stream: faust.Stream, name: str):
        """The stream's records of schema `name`; undecodable bytes are logged and skipped."""
        async for event in stream.events():
            try:
                yield codec.decode_as(name, event.value)
            except DecodeError as err:
                log.warning("ignoring an undecodable %s: %s", name, err.reason)

    @app.agent(results)
    async def answers(stream: faust.Stream) -> None:
        async for result in decoded(stream, "Result"):
            count(*from_result(result, cost_per_query), result["completed_at"])

    @app.agent(load)
    async def variant_load(stream: faust.Stream) -> None:
        async for window in decoded(stream, "LoadWindow"):
            counted = from_load(window, cost_per_query)
            if counted is not None:
                count(*counted, window["window_start"])

    def publish_closed(closing_ms: int) -> None:
        """Publish the windows that ended by `closing_ms` and are not published yet; mark them in the
        table, so that a restarted app does not publish them again."""
        for (key, window_range), window in list(table.table.items()):
            start_ms = int(round(window_range[0] * 1000))
            if window is None or window["published"] or start_ms + window_s * 1000 > closing_ms:
                continue
            record = analytics_record(*key, window_s, start_ms, window)
            producer.produce(output, key=key[1].encode(), value=codec.encode("AnalyticsWindow", record))
            if writer is not None:
                writer.submit("put_analytics_window", record)
            table.table[(key, window_range)] = {**window, "published": True}
            log.info("%s %s from %d: %d answered, SLO %.1f%%, %.2f q/s, $%.6f", key[0], key[1], start_ms,
                     record["answered"], 100 * record["slo_attainment"], record["throughput_qps"],
                     record["cost_usd"])
        producer.poll(0)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", required=True, help="comma-separated app ids whose results to analyse")
    parser.add_argument("--window", type=int, default=60, help="tumbling window, seconds")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds a window stays open for late events")
    parser.add_argument("--name", help="run as the analytics app NAME (`infaas app create NAME --analytics --apps "
                                       "...`): its own group, and output topic infaas.analytics.NAME")
    parser.add_argument("--no-cassandra", action="store_true",
                        help="publish to the topic only, unpriced (a principal without a Cassandra role)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from infaas.streams.faust_support import run_app
    settings = load_settings()
    apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    app = make_app(settings, apps, args.window, args.grace, args.name, cassandra=not args.no_cassandra)
    return run_app(app, "analytics")


if __name__ == "__main__":
    sys.exit(main())
