"""fastconv.timing: every timed call follows calls of its own for SETTLE_S."""

import itertools
import time

from fastconv import timing

CALL_S = 1e-4


def test_each_timed_call_follows_its_own_calls_for_the_settling_time(monkeypatch):
    monkeypatch.setattr(timing, "SETTLE_S", 0.004)
    log = []

    def call(name, seconds):
        def fn():
            log.append((name, time.perf_counter()))
            time.sleep(seconds)

        return fn

    medians = timing.interleaved_medians({"short": call("short", 0.0005), "long": call("long", 0.006)}, rounds=3, budget_s=10)
    assert medians["short"] < 0.005 <= medians["long"]
    runs = [(name, [t for _, t in group]) for name, group in itertools.groupby(log, key=lambda entry: entry[0])]
    # the warm-up calls, then a run of each per round: settling calls for SETTLE_S,
    # then the timed one
    assert [name for name, _ in runs] == ["short", "long"] + ["short", "long"] * 3
    # (the settling time runs from the clock reading just before the first settling
    # call, which that call's own reading follows by its call overhead: up to
    # CALL_S less between the calls' readings)
    for name, times in runs[2:]:
        assert len(times) >= (2 if name == "long" else 5)
        assert times[-1] - times[0] >= timing.SETTLE_S - CALL_S
