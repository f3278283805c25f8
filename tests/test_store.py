"""KernelStore against a real Redis: atomic batches, versions, seed-style kernels, promotion."""

from __future__ import annotations

import json

import pytest
import redis

from pyrecks.compiler.compiler import MAGIC, compile_kernel
from pyrecks.compiler.store import RECORD_FIELDS, KernelStore
from pyrecks.errors import KernelNotFound, KernelRejected, PyrecksError
from pyrecks.keys import Keyspace


def src(name: str, body: str = "return ''") -> str:
    return f"def {name}(x: str):\n    {body}\n"


def test_record_has_exactly_the_documented_fields(r: redis.Redis) -> None:
    store = KernelStore(r)
    kernel = compile_kernel("k", "PYRECKS_TIMEOUT = 2\nPYRECKS_RETRIES = 1\n" + src("k"))
    assert store.put_many([kernel]) == [1]
    fields = {f.decode() for f in r.hkeys("k")}
    assert fields == set(RECORD_FIELDS)
    raw = r.hgetall("k")
    assert raw[b"compiled"] == b"1"
    assert raw[b"magic"].decode() == MAGIC
    assert json.loads(raw[b"signature"])[0]["annotation"] == "str"
    assert r.smembers(Keyspace().kernels) == {b"k"}


def test_optional_fields_are_omitted(r: redis.Redis) -> None:
    KernelStore(r).put(compile_kernel("k", src("k")))
    assert not r.hexists("k", "timeout") and not r.hexists("k", "retries")


def test_versions_increase_and_stale_fields_disappear(r: redis.Redis) -> None:
    store = KernelStore(r)
    store.put(compile_kernel("k", "PYRECKS_TIMEOUT = 2\n" + src("k")))
    assert store.put(compile_kernel("k", src("k", "return 'f(1)'"))) == 2
    record = store.require("k")
    assert (record.version, record.timeout) == (2, None)
    assert record.code() is not None


def test_a_batch_is_all_or_nothing(r: redis.Redis) -> None:
    """The CLI compiles first, so a bad kernel never reaches the store: nothing is written."""
    sources = {f"k{i}": src(f"k{i}") for i in range(10)}
    sources["k7"] = "import os\n" + src("k7")
    compiled = []
    with pytest.raises(KernelRejected):
        for name, source in sources.items():
            compiled.append(compile_kernel(name, source))
    assert r.dbsize() == 0


def test_a_batch_that_hits_non_kernel_data_writes_nothing(r: redis.Redis) -> None:
    r.set("k5", "user data")
    batch = [compile_kernel(f"k{i}", src(f"k{i}")) for i in range(10)]
    with pytest.raises(PyrecksError, match="not a kernel"):
        KernelStore(r).put_many(batch)
    assert r.keys("*") == [b"k5"]
    assert r.get("k5") == b"user data"


def test_force_overwrites_non_kernel_data(r: redis.Redis) -> None:
    r.rpush("k", "a list")
    assert KernelStore(r).put(compile_kernel("k", src("k")), force=True) == 1
    assert r.type("k") == b"hash"


def test_seed_style_string_is_read_as_an_uncompiled_record(r: redis.Redis) -> None:
    source = "def func0(x):\n\treturn ''"
    r.set("func0", source)
    record = KernelStore(r).require("func0")
    assert record.seed_style and not record.compiled and record.needs_compile
    assert record.source == source and record.code() is None


def test_hand_written_hash_with_compiled_0_needs_compile(r: redis.Redis) -> None:
    r.hset("k", mapping={"source": src("k"), "compiled": "0"})
    record = KernelStore(r).require("k")
    assert not record.seed_style and record.needs_compile


def test_editing_the_source_field_makes_the_record_stale(r: redis.Redis) -> None:
    store = KernelStore(r)
    store.put(compile_kernel("k", src("k")))
    r.hset("k", "source", src("k", "return 'f(2)'"))
    assert store.require("k").needs_compile


def test_promote_replaces_an_unchanged_seed_string(r: redis.Redis) -> None:
    store = KernelStore(r)
    source = src("k")
    r.set("k", source)
    assert store.promote("k", compile_kernel("k", source), source)
    record = store.require("k")
    assert (record.compiled, record.version, record.needs_compile) == (True, 1, False)
    assert store.names() == ["k"]
    # A second VM that compiled the same string finds the work done and writes nothing.
    assert not store.promote("k", compile_kernel("k", source), source)


def test_promote_loses_to_a_concurrent_hot_patch(r: redis.Redis) -> None:
    store = KernelStore(r)
    old = src("k")
    r.set("k", old)
    compiled = compile_kernel("k", old)
    r.set("k", src("k", "return 'f(9)'"))  # redis-cli SET between read and promote
    assert not store.promote("k", compiled, old)
    assert r.get("k") == src("k", "return 'f(9)'").encode()


def test_promote_of_uncompiled_hash_bumps_version(r: redis.Redis) -> None:
    store = KernelStore(r)
    store.put(compile_kernel("k", src("k")))
    new = src("k", "return 'f(3)'")
    r.hset("k", mapping={"source": new, "compiled": "0"})
    assert store.promote("k", compile_kernel("k", new), new)
    assert store.require("k").version == 2


def test_promote_after_magic_change_keeps_version(r: redis.Redis) -> None:
    store = KernelStore(r)
    store.put(compile_kernel("k", src("k")))
    r.hset("k", "magic", "00000000")
    assert store.require("k").code() is None
    assert store.promote("k", compile_kernel("k", src("k")), src("k"))
    record = store.require("k")
    assert (record.version, record.magic) == (1, MAGIC)


def test_rm_deletes_kernels_and_refuses_other_data(r: redis.Redis) -> None:
    store = KernelStore(r)
    store.put(compile_kernel("k", src("k")))
    store.remove("k")
    assert r.exists("k") == 0 and store.names() == []
    r.set("greeting", "hello")
    r.hset("profile", "name", "ann")
    r.sadd("tags", "a")
    for name in ("greeting", "profile", "tags"):
        with pytest.raises(PyrecksError, match="refusing"):
            store.remove(name)
    with pytest.raises(KernelNotFound):
        store.remove("missing")
    r.set("func0", "def func0(x):\n    return ''\n")
    store.remove("func0")  # a seed-style kernel is a kernel
    assert r.exists("func0") == 0


def test_prefix_keeps_kernels_apart(r: redis.Redis) -> None:
    store = KernelStore(r, Keyspace(kernel_prefix="kern:"))
    store.put(compile_kernel("k", src("k")))
    assert r.type("kern:k") == b"hash" and r.exists("k") == 0
    assert store.require("k").key == "kern:k"
    assert KernelStore(r).get("k") is None


def test_get_of_missing_or_foreign_keys(r: redis.Redis) -> None:
    store = KernelStore(r)
    assert store.get("nothing") is None
    r.hset("h", "a", "b")
    assert store.get("h") is None
    with pytest.raises(KernelNotFound, match="pyrecksc compile"):
        store.require("nothing")


def test_decode_responses_clients_are_refused(redis_url: str) -> None:
    with pytest.raises(PyrecksError, match="decode_responses"):
        KernelStore(redis.Redis.from_url(redis_url, decode_responses=True))


def test_summaries(r: redis.Redis) -> None:
    store = KernelStore(r)
    store.put_many([compile_kernel("a", src("a")), compile_kernel("b", src("b"))])
    rows = store.summaries()
    assert [(s["name"], s["version"], s["compiled"]) for s in rows] == [
        ("a", 1, True),
        ("b", 1, True),
    ]


def test_names_follow_the_keys_not_the_index(r: redis.Redis) -> None:
    store = KernelStore(r)
    store.put_many([compile_kernel(n, src(n)) for n in ("a", "b", "c", "d")])
    r.delete("a")
    r.set("b", "not source")
    r.set("c", src("c"))  # a seed-style string written over the record: still a kernel
    assert store.names() == ["c", "d"]
    assert [s["name"] for s in store.summaries()] == ["c", "d"]
    assert r.smembers("pyrecks:kernels") == {b"a", b"b", b"c", b"d"}
