"""The `seaweed` fixture (conftest.py) that tiered-storage end-to-end tests
build on: a real SeaweedFS S3 server that takes signed writes, serves them
back, goes down when killed and comes back with its data on restart."""

from __future__ import annotations

import pytest

from conftest import http


def test_seaweed_serves_signed_s3_requests_and_keeps_data_across_a_restart(seaweed):
    seaweed.put_object("kilonova-fixture", "a/b/one", b"first object")
    seaweed.put_object("kilonova-fixture", "a/b/two", b"")
    seaweed.put_object("kilonova-fixture", "a/c/three", b"x" * 100_000)
    assert seaweed.get_object("kilonova-fixture", "a/b/one") == b"first object"
    assert sorted(seaweed.list_keys("kilonova-fixture", "a/b/")) == ["a/b/one", "a/b/two"]

    # Unsigned requests are refused: the identity file is in force.
    status, _ = http("GET", f"{seaweed.endpoint}/kilonova-fixture/a/b/one")
    assert status == 403

    seaweed.kill()
    with pytest.raises(OSError):
        seaweed.request("GET", "kilonova-fixture", "a/b/one", timeout=2.0)

    seaweed.restart()
    assert seaweed.get_object("kilonova-fixture", "a/c/three") == b"x" * 100_000


def test_seaweed_offload_config_names_the_object_store_settings(seaweed):
    cfg = seaweed.offload_config("kilonova-offload")
    assert f'endpoint = "{seaweed.endpoint}"' in cfg
    assert "path_style = true" in cfg and 'bucket = "kilonova-offload"' in cfg
