"""Producer access modes, as a Pulsar broker applies them (PIP-68), seen
through the Python client's exceptions:

* Exclusive: refused with ProducerFenced while another producer (exclusive or
  shared) or a waiting exclusive one holds the topic;
* Shared: refused with ProducerBusy while an exclusive producer holds it;
* ExclusiveWithFencing: takes the topic; the current producers are closed,
  reconnect with their topic epoch, are refused with ProducerFenced, and fail
  their sends with ProducerFenced (not a timeout); producers waiting for
  exclusive access are refused with ProducerFenced too;
* WaitForExclusive: queued until every producer has left, then holds the topic.
"""

import threading

import pulsar
import pytest

from conftest import payloads, receive_n, topic_name, unique, wait_until

Mode = pulsar.ProducerAccessMode

# Absence checks (a queued producer stays queued) wait this long: the only
# way to observe that something does not happen.
ABSENCE_WINDOW_S = 0.5


def producer(client, topic, mode, **kwargs):
    return client.create_producer(topic, access_mode=mode, batching_enabled=False,
                                  send_timeout_millis=10_000, **kwargs)


class Waiting:
    """A WaitForExclusive producer being created on a thread (the call blocks
    until the broker hands it the topic)."""

    def __init__(self, client, topic):
        self.producer = None
        self.error = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._create, args=(client, topic), daemon=True)
        self.thread.start()

    def _create(self, client, topic):
        try:
            self.producer = producer(client, topic, Mode.WaitForExclusive)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            self.error = e
        finally:
            self.done.set()

    def assert_still_waiting(self, what):
        assert not self.done.wait(ABSENCE_WINDOW_S), (
            f"{what}: the WaitForExclusive producer was answered ({self.producer!r}, {self.error!r})")

    def result(self, what, timeout=10.0):
        assert self.done.wait(timeout), f"{what}: no answer within {timeout}s"
        return self.producer, self.error


def test_a_second_exclusive_producer_is_fenced(client):
    topic = topic_name("excl")
    first = producer(client, topic, Mode.Exclusive)
    with pytest.raises(pulsar.ProducerFenced):
        producer(client, topic, Mode.Exclusive)
    first.send(b"still-mine")
    first.close()
    # Gone: the topic is free again.
    producer(client, topic, Mode.Exclusive).send(b"next")


def test_an_exclusive_producer_is_fenced_while_shared_producers_exist(client):
    topic = topic_name("excl-shared")
    shared = producer(client, topic, Mode.Shared)
    with pytest.raises(pulsar.ProducerFenced):
        producer(client, topic, Mode.Exclusive)
    shared.send(b"shared")


def test_a_shared_producer_is_busy_while_an_exclusive_one_holds_the_topic(client):
    topic = topic_name("shared-excl")
    exclusive = producer(client, topic, Mode.Exclusive)
    with pytest.raises(pulsar.ProducerBusy):
        producer(client, topic, Mode.Shared)
    exclusive.send(b"mine")


def test_exclusive_with_fencing_fences_the_current_exclusive_producer(client):
    topic = topic_name("fencing")
    consumer = client.subscribe(topic, unique("sub"), initial_position=pulsar.InitialPosition.Earliest)
    old = producer(client, topic, Mode.Exclusive)
    old.send(b"old-0")
    new = producer(client, topic, Mode.ExclusiveWithFencing)
    new.send(b"new-0")
    # The old producer's next sends fail as fenced, not by timing out.
    for i in (1, 2):
        with pytest.raises(pulsar.ProducerFenced):
            old.send(f"old-{i}".encode())
    new.send(b"new-1")
    assert payloads(receive_n(consumer, 3)) == [b"old-0", b"new-0", b"new-1"]
    # The fencing producer holds the topic as an exclusive one does.
    with pytest.raises(pulsar.ProducerFenced):
        producer(client, topic, Mode.Exclusive)


def test_exclusive_with_fencing_closes_shared_producers_which_retry_until_it_leaves(client):
    # As with Pulsar: a closed shared producer reconnects, is busy while the
    # fencing producer holds the topic (its sends time out), and goes on
    # once it has left.
    topic = topic_name("fencing-shared")
    shared = client.create_producer(topic, batching_enabled=False, send_timeout_millis=1_000)
    shared.send(b"shared-0")
    fencer = producer(client, topic, Mode.ExclusiveWithFencing)
    with pytest.raises(pulsar.Timeout):
        shared.send(b"shared-1")
    fencer.send(b"fencer")
    fencer.close()

    def sent_again():
        try:
            shared.send(b"shared-2")
            return True
        except pulsar.Timeout:
            return False

    wait_until(sent_again, 30, "the shared producer sending again once the fencing producer left")


def test_exclusive_with_fencing_refuses_the_waiting_producers(client):
    topic = topic_name("fencing-waiters")
    holder = producer(client, topic, Mode.Exclusive)
    waiting = Waiting(client, topic)
    waiting.assert_still_waiting("while an exclusive producer holds the topic")
    fencer = producer(client, topic, Mode.ExclusiveWithFencing)
    got, error = waiting.result("after an ExclusiveWithFencing producer took the topic")
    assert got is None and isinstance(error, pulsar.ProducerFenced), (got, error)
    with pytest.raises(pulsar.ProducerFenced):
        holder.send(b"fenced")
    fencer.send(b"mine")


def test_wait_for_exclusive_gets_the_topic_when_the_exclusive_producer_leaves(client):
    topic = topic_name("wait-excl")
    consumer = client.subscribe(topic, unique("sub"), initial_position=pulsar.InitialPosition.Earliest)
    holder = producer(client, topic, Mode.Exclusive)
    waiting = Waiting(client, topic)
    waiting.assert_still_waiting("while an exclusive producer holds the topic")
    holder.send(b"holder")
    holder.close()
    got, error = waiting.result("after the exclusive producer closed")
    assert error is None, error
    got.send(b"waiter")
    assert payloads(receive_n(consumer, 2)) == [b"holder", b"waiter"]
    # It now holds the topic exclusively.
    with pytest.raises(pulsar.ProducerBusy):
        producer(client, topic, Mode.Shared)


def test_wait_for_exclusive_waits_until_every_shared_producer_left(client):
    topic = topic_name("wait-shared")
    shared = [producer(client, topic, Mode.Shared) for _ in range(2)]
    waiting = Waiting(client, topic)
    waiting.assert_still_waiting("while two shared producers are connected")
    shared[0].close()
    waiting.assert_still_waiting("while one shared producer is connected")
    # A shared producer arriving while one waits for exclusive access is busy.
    with pytest.raises(pulsar.ProducerBusy):
        producer(client, topic, Mode.Shared)
    shared[1].close()
    got, error = waiting.result("after the last shared producer closed")
    assert error is None, error
    got.send(b"exclusive-now")
    wait_until(lambda: got.is_connected(), 5, "the waiting producer connected")
