"""Sharing decode threads among busy runners (actors/cpu.py)."""

from __future__ import annotations

import pytest

from trillama.actors.cpu import share_threads


def test_a_runner_working_alone_keeps_all_its_threads():
    assert share_threads({"a": 8, "b": 8}, busy={"a"}, budget=8) == {"a": 8, "b": 8}
    assert share_threads({"a": 8, "b": 8}, busy=set(), budget=8) == {"a": 8, "b": 8}


@pytest.mark.parametrize(("budget", "expected"), [
    (2, {"a": 1, "b": 1}),
    (8, {"a": 4, "b": 4}),
    (7, {"a": 4, "b": 3}),  # the remainder goes to the first
    (1, {"a": 1, "b": 1}),  # never below one thread
])
def test_busy_runners_split_the_budget(budget, expected):
    assert share_threads({"a": 8, "b": 8}, busy={"a", "b"}, budget=budget) == expected


def test_idle_runners_keep_their_count_and_nobody_gets_more_than_configured():
    shares = share_threads({"big": 16, "small": 2, "idle": 16}, busy={"big", "small"}, budget=16)
    assert shares == {"big": 8, "small": 2, "idle": 16}
    # three busy runners on two cores: one each (one-thread runners do not spin at barriers)
    assert share_threads({"a": 2, "b": 2, "c": 2}, busy={"a", "b", "c"}, budget=2) == {"a": 1, "b": 1, "c": 1}


def test_the_budget_caps_a_runner_working_alone_unless_its_count_was_pinned():
    # a busy neighbour left one core: the unpinned runner drops to it, the pinned one keeps its own
    assert share_threads({"a": 2, "b": 4}, busy={"a"}, budget=1, pinned={"b"}) == {"a": 1, "b": 4}
    # several busy runners share the budget whether pinned or not: they would only fight
    assert share_threads({"a": 2, "b": 2}, busy={"a", "b"}, budget=2, pinned={"b"}) == {"a": 1, "b": 1}


# ---------------------------------------------------------------------- cgroup quotas
def _cgroup_tree(tmp_path, files: dict[str, str]):
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_v2_quota_is_read_from_the_process_cgroup_and_its_parents(tmp_path):
    from trillama.actors.cpu import cgroup_cpu_limit

    root = _cgroup_tree(tmp_path, {
        "cpu.max": "max 100000\n",
        "kubepods/cpu.max": "250000 100000\n",  # the pod: 2.5 cores
        "kubepods/ctr/cpu.max": "max 100000\n",  # the container inherits it
    })
    assert cgroup_cpu_limit("0::/kubepods/ctr\n", root) == pytest.approx(2.5)
    assert cgroup_cpu_limit("0::/\n", root) is None


def test_a_v1_cfs_quota_is_read_and_unlimited_is_none(tmp_path):
    from trillama.actors.cpu import cgroup_cpu_limit

    root = _cgroup_tree(tmp_path, {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_limit("4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n", root) == pytest.approx(0.5)
    assert cgroup_cpu_limit("4:cpu,cpuacct:/\n", root) is None


def test_default_threads_follow_affinity_and_quota(monkeypatch):
    from trillama.actors import cpu

    monkeypatch.setattr(cpu, "_affinity", lambda: 8)
    monkeypatch.setattr(cpu, "cgroup_cpu_limit", lambda: 1.5)
    monkeypatch.setattr("psutil.cpu_count", lambda logical=True: 16 if logical else 8)
    assert cpu.available_cpus() == 1.5
    assert cpu.default_threads() == 1  # a second spinning thread would be throttled every period
    monkeypatch.setattr(cpu, "cgroup_cpu_limit", lambda: None)
    monkeypatch.setattr(cpu, "_affinity", lambda: 3)  # taskset -c 0-2
    assert cpu.default_threads() == 3


# ---------------------------------------------------------------------- busy neighbours
@pytest.mark.parametrize(("foreign", "current", "expected"), [
    (0.0, 2, 2),
    (0.1, 1, 2),   # quiet again: take the thread back
    (0.4, 2, 2),   # between the marks: keep what is in force…
    (0.4, 1, 1),   # …either way
    (0.6, 2, 1),   # a neighbour busy half a core and more: give a thread up
    (1.0, 2, 1),
    (2.0, 2, 1),   # never below one
])
def test_decode_budget_gives_up_a_thread_per_core_a_neighbour_keeps_busy(foreign, current, expected):
    from trillama.actors.cpu import decode_budget

    assert decode_budget(2, foreign, current) == expected


def test_neighbours_on_cpus_beyond_the_quota_do_not_count():
    from trillama.actors.cpu import decode_budget

    # a 2-core quota on a 64-CPU host whose other tenants keep 30 CPUs busy: nothing to give up
    assert decode_budget(2, 30.0, 2, cpus=64) == 2
    assert decode_budget(2, 62.8, 2, cpus=64) == 1


def test_foreign_load_counts_a_busy_process_that_is_not_ours_and_not_one_that_is():
    import subprocess
    import sys
    import time

    import psutil

    from trillama.actors.cpu import ForeignLoad

    # One meter is told the hog is one of its processes, the other is not: whatever else the
    # machine does shows in both alike, so their difference is the hog's own CPU use.
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        inside, outside = ForeignLoad(), ForeignLoad(pid=server.pid)
        time.sleep(0.2)
        inside.sample([hog.pid]), outside.sample()
        hog_before, t0 = sum(psutil.Process(hog.pid).cpu_times()[:2]), time.monotonic()
        time.sleep(1.5)
        seen_inside, seen_outside = inside.sample([hog.pid]), outside.sample()
        hog_rate = (sum(psutil.Process(hog.pid).cpu_times()[:2]) - hog_before) / (time.monotonic() - t0)
    finally:
        for p in (server, hog):
            p.kill()
            p.wait()
    assert hog_rate > 0.2, "the hog never ran"
    assert seen_outside - seen_inside == pytest.approx(hog_rate, abs=0.15)


def test_a_process_named_for_the_first_time_counts_whole_when_it_is_new():
    import subprocess
    import sys
    import time

    from trillama.actors.cpu import ForeignLoad

    meter = ForeignLoad()
    meter.sample()
    time.sleep(0.2)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a runner starting to load
    try:
        time.sleep(1.0)
        with_hog = meter.sample([hog.pid])
    finally:
        hog.kill()
        hog.wait()
    assert with_hog is not None
    old = ForeignLoad()
    old.sample()
    time.sleep(0.2)
    # a process older than the gap since the last sample: its share of the gap is unknowable
    assert old.sample([1]) is None


def test_a_request_may_ask_for_the_cores_the_process_may_use_and_no_more(monkeypatch):
    from trillama.actors import cpu

    monkeypatch.setattr(cpu, "available_cpus", lambda: 2.0)
    assert cpu.thread_limit() == 2
    monkeypatch.setattr(cpu, "available_cpus", lambda: 1.5)  # a fractional quota: every core it touches
    assert cpu.thread_limit() == 2
    monkeypatch.setattr(cpu, "available_cpus", lambda: 0.5)
    assert cpu.thread_limit() == 1
