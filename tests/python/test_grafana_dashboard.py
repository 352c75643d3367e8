"""docs/grafana/kilonova.json: valid JSON, and every metric its queries and
variables read is exported by a running broker (after some traffic, so
per-topic and per-subscription series exist)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pulsar

from conftest import receive_n, unique, wait_until
from test_metrics import scrape

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "kilonova.json"
# A metric name in PromQL: the prefixes Kilonova exports. Label names and
# functions never start with these.
METRIC = re.compile(r"\b((?:pulsar|kilonova|process)_[a-zA-Z0-9_]+)")


def queries(node) -> list[str]:
    """Every `expr` of a target and every variable query, anywhere in the document."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(queries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(queries(item))
    return found


def test_dashboard_is_valid_json_with_panels_and_queries():
    doc = json.loads(DASHBOARD.read_text())
    assert doc.get("title") and doc.get("panels"), "a dashboard with panels"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert len(queries(doc)) >= 20


def test_every_metric_the_dashboard_queries_is_exported(broker, client):
    topic = f"persistent://public/default/{unique('dash')}"
    consumer = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared)
    producer = client.create_producer(topic, batching_enabled=False)
    for i in range(3):
        producer.send(f"m{i}".encode())
    receive_n(consumer, 3)

    wanted = sorted({m for q in queries(json.loads(DASHBOARD.read_text())) for m in METRIC.findall(q)})
    assert len(wanted) > 30, wanted
    missing = wanted

    def all_exported() -> bool:
        nonlocal missing
        exported = {s.name for f in scrape(broker).families for s in f.samples}
        missing = [m for m in wanted if m not in exported]
        return not missing

    # Per-subscription series appear at the topic's next stats tick.
    try:
        wait_until(all_exported, 10.0, "every dashboard metric to be exported")
    except AssertionError:
        raise AssertionError(f"the dashboard queries metrics the broker does not export: {missing}") from None
    consumer.close()
    producer.close()
