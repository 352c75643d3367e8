"""Several data directories (`[storage] more_dirs`): topics spread over the
journals, nothing acknowledged is lost to kill -9 in any of them, and a
directory left out of the configuration stops the broker instead of losing
the topics' segments."""

import os
import random
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

import kill9
from conftest import Broker, make_client, payloads, receive_n, topic_name

KILL_ROUNDS = 3
WRITTEN = "kilonova_storage_written_bytes_total"


def two_dir_broker(kilonova_bin, tmp_path, more: list) -> Broker:
    dirs = ", ".join(f'"{d}"' for d in more)
    return Broker(kilonova_bin, tmp_path / "data", tmp_path / "kilonova.log",
                  config=f"[storage]\nmore_dirs = [{dirs}]\n")


def written_bytes_by_dir(broker) -> dict:
    with urllib.request.urlopen(broker.http_url + "/metrics", timeout=15) as r:
        text = r.read().decode()
    return {s.labels["dir"]: s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == WRITTEN}


def test_topics_spread_over_both_journals_and_survive_kill9(kilonova_bin, tmp_path):
    second = tmp_path / "disk2"
    broker = two_dir_broker(kilonova_bin, tmp_path, [second])
    broker.start()
    try:
        seed = int(os.environ.get("KILONOVA_KILL_SEED", random.randrange(2**32)))
        print(f"seed {seed} (rerun with KILONOVA_KILL_SEED={seed})")
        result = kill9.soak(broker, lambda: make_client(broker), rounds=KILL_ROUNDS,
                            seed=seed, kill_after_s=(0.1, 0.5))
        assert result.acknowledged > 0, "no message was acknowledged: the test proved nothing"
        assert result.ok, (f"lost {result.lost} (+{result.lost_on_recheck} on recheck) of "
                           f"{result.acknowledged}; seed {seed}\n" + "\n".join(result.problems[:20]))
        # Both journals took appends: each round's four topics take turns.
        written = written_bytes_by_dir(broker)
        first = str(tmp_path / "data" / "storage")
        assert set(written) == {first, str(second)}, written
        assert all(v > 0 for v in written.values()), written
        logs = [p for p in os.listdir(second) if p.endswith(".log")]
        assert logs, f"no journal file in {second}: {os.listdir(second)}"
    finally:
        if broker.running:
            broker.stop()


def test_a_directory_left_out_stops_the_broker_and_loses_nothing(kilonova_bin, tmp_path):
    second = tmp_path / "disk2"
    broker = two_dir_broker(kilonova_bin, tmp_path, [second])
    broker.start()
    client = make_client(broker)
    topics = [topic_name("dirs") for _ in range(4)]
    sent = {}
    dirs_used = set()
    for t in topics:
        producer = client.create_producer(t)
        client.subscribe(t, "keep").close()
        sent[t] = [f"{t}-{i}".encode() for i in range(10)]
        for p in sent[t]:
            # A ledger id's top bits are its directory's number.
            dirs_used.add(producer.send(p).ledger_id() >> 56)
        producer.close()
    assert dirs_used == {0, 1}, f"four new topics should take turns: {dirs_used}"
    client.close()
    broker.stop()

    # Without the second directory the broker refuses to start, naming it.
    config = tmp_path / "without.toml"
    config.write_text("[storage]\nmore_dirs = []\n")
    refused = subprocess.run(
        [str(kilonova_bin), "standalone", "--data-dir", str(broker.data_dir),
         "--bind-address", "127.0.0.1", "--pulsar-port", "0", "--http-port", "0",
         "--config", str(config)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
    )
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0, out
    assert "directory 1" in out and str(second) in out, out

    # With it again, every topic has every message.
    broker.start()
    client = make_client(broker)
    for t in topics:
        consumer = client.subscribe(t, "keep")
        assert payloads(receive_n(consumer, len(sent[t]))) == sent[t], t
    client.close()
    broker.stop()
