"""The thread governor: decode-step timings in, a compute thread count out."""

from __future__ import annotations

import itertools

from edgefleet.node.engine.thread_governor import ThreadGovernor


class Clock:
    """Feeds the governor steps at a given duration per thread count, advancing time."""

    def __init__(self, gov: ThreadGovernor) -> None:
        self.gov, self.now = gov, 0.0
        self.changes: list[str] = []

    def run(self, steps: int, seconds: dict[int, float], n_tokens: int = 4) -> list[int]:
        used = []
        for _ in range(steps):
            t = self.gov.threads_for_step(self.now)
            used.append(t)
            took = seconds[t]
            self.now += took
            reason = self.gov.observe(t, n_tokens, took, self.now)
            if reason:
                self.changes.append(reason)
        return used


QUIET = {2: 0.010, 1: 0.013}  # 2 threads are faster when the cores are free
CONTENDED = {2: 2.0, 1: 0.009}  # another process holds a core: 2 threads spin at every barrier


def test_quiet_machine_keeps_every_thread_and_probes_less_often() -> None:
    gov = ThreadGovernor(2, first_interval_s=1.0)
    clock = Clock(gov)
    used = clock.run(3000, QUIET)
    assert gov.current == 2 and gov.switches == 0
    probes = sum(1 for a, b in itertools.pairwise(used) if a == 2 and b == 1)
    assert 3 <= probes <= 6  # 1 s, then 2, 4, 8, 16 s apart over ~30 s: the interval doubles
    assert used.count(1) <= probes * gov.probe_steps


def test_contention_drops_to_one_thread_within_a_step_and_says_why() -> None:
    gov = ThreadGovernor(2)
    clock = Clock(gov)
    clock.run(200, QUIET)
    used = clock.run(20, CONTENDED)
    assert used[0] == 2 and used[1] == 1  # one collapsed step, then the probe
    assert gov.current == 1 and gov.switches == 1
    assert "1 threads decoded 8 steps" in clock.changes[0]


def test_back_to_every_thread_when_the_cores_are_free_again() -> None:
    gov = ThreadGovernor(2, first_interval_s=1.0)
    clock = Clock(gov)
    clock.run(200, QUIET)
    clock.run(50, CONTENDED)
    assert gov.current == 1
    clock.run(400, QUIET)
    assert gov.current == 2 and gov.switches == 2


def test_a_probe_into_a_contended_setting_costs_one_step() -> None:
    gov = ThreadGovernor(2, first_interval_s=1.0)
    clock = Clock(gov)
    clock.run(200, QUIET)
    clock.run(20, CONTENDED)
    assert gov.current == 1
    used = clock.run(600, CONTENDED)  # ~5.4 s at one thread: probes of 2 threads come and fail
    runs = [i for i, t in enumerate(used) if t == 2]
    assert runs, "the governor never tried every thread again"
    assert all(used[i + 1] == 1 for i in runs if i + 1 < len(used))  # each probe ends after its first step
    assert gov.current == 1


def test_a_busier_machine_for_both_settings_is_taken_as_the_new_usual() -> None:
    gov = ThreadGovernor(2, first_interval_s=1.0)
    clock = Clock(gov)
    clock.run(200, QUIET)
    slower = {2: 0.050, 1: 0.065}  # both five times slower: nothing to gain by switching
    used = clock.run(400, slower)
    assert gov.current == 2 and gov.switches == 0
    assert used.count(1) <= 3 * gov.probe_steps  # one probe for the slowdown, then the usual doubling


def test_one_thread_profiles_are_left_alone() -> None:
    gov = ThreadGovernor(1)
    assert Clock(gov).run(50, {1: 0.01}) == [1] * 50


def four_cores(busy: int) -> dict[int, float]:
    """Step times on a 4-core device with `busy` cores held by others: threads beyond the free cores collapse."""
    return {t: (0.040 / t + 0.002) if t + busy <= 4 else 2.0 for t in range(1, 5)}


def test_a_four_core_device_settles_on_the_free_cores_and_climbs_back() -> None:
    gov = ThreadGovernor(4, first_interval_s=1.0)
    clock = Clock(gov)
    clock.run(300, four_cores(0))
    assert gov.current == 4
    clock.run(300, four_cores(1))
    assert gov.current == 3
    clock.run(300, four_cores(2))
    assert gov.current == 2
    clock.run(3000, four_cores(0))
    assert gov.current == 4
