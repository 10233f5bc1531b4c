"""The prompt cache on its own (no model): keys, longest-prefix lookup, LRU within its bound,
shrinking, and the disk tier's checksummed files (a torn file is ignored, never loaded)."""

from __future__ import annotations

import pytest

from trillama.actors.runner.prompt_cache import (
    MIN_ENTRY_TOKENS,
    DiskTier,
    PromptCache,
    default_limit,
    namespace,
    tokens_key,
)

N = MIN_ENTRY_TOKENS


def seq(start: int, n: int = N) -> list[int]:
    return list(range(start, start + n))


def state(tag: int, size: int = 1000) -> bytes:
    return bytes([tag % 256]) * size


def test_lookup_finds_the_longest_shared_prefix_and_its_length():
    cache = PromptCache(limit=10**6)
    a = seq(0, 2 * N)
    b = seq(0, N) + seq(10_000, N)  # shares the first N tokens with a
    cache.put(a, state(1))
    cache.put(b, state(2))
    prompt = seq(0, N) + seq(10_000, N // 2) + [7, 7, 7]
    entry, k = cache.best(prompt)
    assert entry is not None and entry.tokens == b and k == N + N // 2
    assert cache.load(entry).state == state(2)
    assert cache.hits["ram"] == 1
    assert cache.best([99_999] * 10) == (None, 0)


def test_keys_are_the_tokens_and_an_entry_extended_replaces_its_prefix():
    cache = PromptCache(limit=10**6)
    short, long = seq(0, N), seq(0, 2 * N)
    assert tokens_key(short) != tokens_key(long) and tokens_key(short) == tokens_key(list(short))
    cache.put(short, state(1))
    cache.put(long, state(2))
    assert [e.tokens for e in cache.entries()] == [long]  # the short one serves nothing more
    assert cache.covers(short) and cache.covers(long) and not cache.covers(seq(1, N))
    assert cache.bytes == len(state(2)) + 4 * len(long)


def test_least_recently_used_goes_first_and_the_bound_holds():
    one = len(state(0)) + 4 * N
    cache = PromptCache(limit=3 * one)
    for i in range(3):
        cache.put(seq(i * 1000), state(i))
    cache.load(cache.best(seq(0))[0])  # entry 0 is now the most recently used
    cache.put(seq(3000), state(3))
    kept = {e.tokens[0] for e in cache.entries()}
    assert kept == {0, 2000, 3000}  # entry 1000 was the least recently used
    assert cache.bytes <= cache.limit and cache.evicted == 1


def test_too_big_or_too_short_is_refused_and_set_limit_shrinks():
    one = len(state(0)) + 4 * N
    cache = PromptCache(limit=one)
    assert not cache.put(seq(0, N - 1), state(0))  # not worth a state
    assert not cache.put(seq(0), state(0, 5000))  # larger than the whole bound
    assert cache.put(seq(0), state(0))
    assert cache.set_limit(0) == 0 and len(cache) == 0


def test_default_limit_follows_the_ram():
    assert default_limit(24 * 2**30) == 3 * 2**30
    assert default_limit(512 * 2**30) == 8 * 2**30
    assert namespace("model", "f16") != namespace("model", "q8_0")


def test_disk_tier_survives_a_new_cache_and_is_read_back(tmp_path):
    disk = DiskTier(tmp_path, limit=10**6)
    cache = PromptCache(limit=10**6, disk=disk)
    cache.put(seq(5), state(9))
    disk.flush()
    again = PromptCache(limit=10**6, disk=DiskTier(tmp_path, limit=10**6))  # a restart
    entry, k = again.best(seq(5) + [1, 2])
    assert entry is not None and entry.tier == "disk" and k == N
    loaded = again.load(entry)
    assert loaded is not None and loaded.state == state(9) and loaded.tokens == seq(5)
    assert again.hits["disk"] == 1 and len(again) == 1  # now in RAM too


@pytest.mark.parametrize("damage", ["flip", "truncate", "grow"])
def test_a_torn_disk_file_is_ignored_and_removed(tmp_path, damage):
    disk = DiskTier(tmp_path, limit=10**6)
    PromptCache(limit=10**6, disk=disk).put(seq(5), state(9))
    disk.flush()
    (path,) = tmp_path.glob("*.bin")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-10] ^= 0xFF  # same size, bad checksum: found by the read
    elif damage == "truncate":
        data = data[:-100]  # sizes no longer add up: found by the scan
    else:
        data += b"junk"
    path.write_bytes(bytes(data))
    cache = PromptCache(limit=10**6, disk=DiskTier(tmp_path, limit=10**6))
    entry, _ = cache.best(seq(5))
    if entry is not None:
        assert cache.load(entry) is None
    assert not path.exists()
    assert cache.best(seq(5)) == (None, 0)
    assert cache.stats()["disk_torn"] == 1


def test_unfinished_writes_are_cleaned_and_the_disk_bound_holds(tmp_path):
    (tmp_path / "abc.123.tmp").write_bytes(b"half a file")
    one = len(state(0)) + 4 * N + 52
    disk = DiskTier(tmp_path, limit=2 * one)
    assert not (tmp_path / "abc.123.tmp").exists()
    cache = PromptCache(limit=10**6, disk=disk)
    for i in range(3):
        cache.put(seq(i * 1000), state(i))
        disk.flush()
    assert disk.bytes <= disk.limit
    assert len(list(tmp_path.glob("*.bin"))) == 2
    assert not disk.covers(seq(0)) and disk.covers(seq(1000)) and disk.covers(seq(2000))  # oldest out


def test_parked_streams_take_an_empty_stream_then_the_least_recently_used():
    from trillama.actors.runner.prompt_cache import ParkedStreams

    park = ParkedStreams([4, 5])
    a, b, c = seq(0), seq(1000), seq(2000)
    first = park.stream_for(a, busy=set())
    park.record(first, a)
    second = park.stream_for(b, busy=set())
    assert second != first  # an empty stream before an occupied one
    park.record(second, b)
    park.hit(first)  # a is now the more recently used
    assert park.stream_for(c, busy=set()) == second
    assert park.stream_for(a + [1, 2], busy=set()) == first  # a continuation replaces its prefix
    assert park.stream_for(c, busy={4, 5}) is None
    assert park.best(b[:50] + [7]) == (second, 50) and park.covers(a[:10]) and not park.covers(c)
    assert park.stats()["park_entries"] == 2 and park.stats()["hits_park"] == 1
