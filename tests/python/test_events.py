"""KV events end to end: a real ZeroMQ subscriber (pyzmq + msgpack, as a vLLM router would
read them) against a real kvtierd — every event type decoded and checked against what the test
did, contiguous sequence numbers, and a reconnect that asks the replay socket for exactly the
batches it missed (docs/events.md)."""
import time

import msgpack
import numpy as np
import pytest
import zmq

import kvtier
from conftest import Daemon

END_SEQ = -1


@pytest.fixture(scope="module")
def events_daemon(tmp_path_factory):
    d = tmp_path_factory.mktemp("events")
    pub, replay = "ipc://%s/pub" % d, "ipc://%s/replay" % d
    daemon = Daemon(extra_toml="[events]\nendpoint = \"%s\"\nreplay_endpoint = \"%s\"\n"
                               "batch_ms = 5\nmax_batch_events = 4\n" % (pub, replay))
    daemon.pub, daemon.replay = pub, replay
    yield daemon
    daemon.stop()


class Subscriber:
    def __init__(self, daemon):
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(daemon.pub)
        self.replay_endpoint = daemon.replay
        time.sleep(0.2)  # ZeroMQ's slow joiner: let the subscription reach the publisher

    def receive(self, timeout_ms=5000):
        if not self.sub.poll(timeout_ms):
            return None
        topic, seq, payload = self.sub.recv_multipart()
        assert topic == b""  # vLLM's default topic
        return int.from_bytes(seq, "big", signed=True), msgpack.unpackb(payload, raw=False)

    def replay(self, start):
        # A DEALER framed like a REQ socket (empty delimiter first): a REQ socket takes one
        # message per request, and a replay is one message per batch.
        req = self.ctx.socket(zmq.DEALER)
        req.connect(self.replay_endpoint)
        req.send_multipart([b"", start.to_bytes(8, "big")])
        out = []
        while True:
            assert req.poll(5000), "no answer from the replay socket"
            empty, seq, payload = req.recv_multipart()
            assert empty == b""
            seq = int.from_bytes(seq, "big", signed=True)
            if seq == END_SEQ:
                assert payload == b""
                break
            out.append((seq, msgpack.unpackb(payload, raw=False)))
        req.close(linger=0)
        return out

    def close(self):
        self.sub.close(linger=0)
        self.ctx.term()


def check_batch(batch):
    # vLLM's KVEventBatch as msgspec encodes it: a map, fields in declaration order.
    assert list(batch) == ["ts", "events", "data_parallel_rank"]
    assert isinstance(batch["ts"], float) and abs(batch["ts"] - time.time()) < 60
    assert batch["data_parallel_rank"] == 0
    assert 1 <= len(batch["events"]) <= 4  # max_batch_events
    for e in batch["events"]:
        if e["type"] == "BlockStored":
            assert list(e) == ["type", "block_hashes", "parent_block_hash", "token_ids",
                               "block_size", "lora_id", "medium", "lora_name", "kvtier_namespace"]
            assert e["parent_block_hash"] is None and e["token_ids"] == []
            assert e["lora_id"] is None and e["lora_name"] is None
        elif e["type"] == "BlockRemoved":
            assert list(e) == ["type", "block_hashes", "medium", "kvtier_namespace"]
        else:
            assert e == {"type": "AllBlocksCleared"}
    return batch["events"]


def summary(events):
    """(type, medium, namespace, [key hex]) per event."""
    return [(e["type"], e.get("medium"), e.get("kvtier_namespace"),
             [h.hex() for h in e.get("block_hashes", [])]) for e in events]


def receive_events(sub, n, last_seq):
    """n events from the live stream; the batches' sequence numbers follow last_seq."""
    events = []
    while len(events) < n:
        got = sub.receive()
        assert got is not None, "only %d of %d events arrived" % (len(events), n)
        seq, batch = got
        if seq <= last_seq:  # published while we subscribed: the replay had it already
            continue
        assert seq == last_seq + 1, "sequence %d after %d" % (seq, last_seq)
        last_seq = seq
        events += check_batch(batch)
    assert len(events) == n
    assert sub.receive(timeout_ms=100) is None  # nothing more than what the test did
    return events, last_seq


def put(client, ns, key):
    client.put(ns, key, {"x": np.full(256, 1.0, np.float32)})


def test_events_stream_and_replay(events_daemon):
    ns = "test/events"
    keys = kvtier.chain_keys(ns, range(12), 2)  # 6 chained blocks
    sub = Subscriber(events_daemon)
    # What kvtierd published before we subscribed: the AllBlocksCleared it starts with.
    before = sub.replay(0)
    assert before[0][0] == 0 and check_batch(before[0][1])[0] == {"type": "AllBlocksCleared"}
    last_seq = before[-1][0]

    with kvtier.Client(events_daemon.socket, name="events") as client:
        for k in keys:
            put(client, ns, k)
        assert client.remove(ns, keys[1:2])["removed"] == 1
        assert client.evict(ns, keys[2:3])["evicted"] == 1
        client.evict(all=True)
        events, last_seq = receive_events(sub, 9, last_seq)
        hexes = [k.hex() for k in keys]
        assert summary(events) == (
            [("BlockStored", "CPU", ns, [h]) for h in hexes] +
            [("BlockRemoved", "CPU", ns, [hexes[1]]),
             ("BlockRemoved", "CPU", ns, [hexes[2]]),
             ("AllBlocksCleared", None, None, [])])
        assert all(e["block_size"] == 0 for e in events if e["type"] == "BlockStored")

        # The subscriber goes away; kvtierd goes on.
        sub.close()
        more = kvtier.chain_keys(ns, range(100, 106), 2)
        for k in more:
            put(client, ns, k)
        assert client.remove(ns, more[:1])["removed"] == 1
        time.sleep(0.2)  # batch_ms: published

        # Back again: exactly the missed batches, from the replay socket.
        sub = Subscriber(events_daemon)
        missed = sub.replay(last_seq + 1)
        assert [s for s, _ in missed] == list(range(last_seq + 1, last_seq + 1 + len(missed)))
        replayed = [e for _, b in missed for e in check_batch(b)]
        assert summary(replayed) == (
            [("BlockStored", "CPU", ns, [k.hex()]) for k in more] +
            [("BlockRemoved", "CPU", ns, [more[0].hex()])])
        last_seq = missed[-1][0]

        # And the live stream goes on from there.
        client.remove(ns, more[1:2])
        events, last_seq = receive_events(sub, 1, last_seq)
        assert summary(events) == [("BlockRemoved", "CPU", ns, [more[1].hex()])]

        stats = client.stats()["events"]
        assert stats["replays"] == 2
        assert stats["published"] == 1 + 9 + 4 + 1
        assert stats["next_sequence"] == last_seq + 1
        assert stats["dropped"] == 0
    sub.close()
