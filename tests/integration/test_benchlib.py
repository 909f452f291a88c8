"""The benchmarks' steady-rate estimator (bench/benchlib.py), on completion
times made up here: it needs no broker and no sink."""
import datetime
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import benchlib  # noqa: E402

BASE = 1.8e9  # an epoch second in 2027


def results(times):
    def iso(t):
        dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return [{"status": "sent", "completed_at": iso(t)} for t in times]


def bursts(count, size, period, spread):
    """@count bursts of @size completions, one every @period s, each spread
    evenly over @spread s (what a closed loop against a 1 s sink makes)."""
    return [BASE + k * period + spread * m / size for k in range(count) for m in range(size)]


@pytest.mark.parametrize("skip", [0, 1, 250, 500, 750, 999])
def test_steady_rate_of_bursts_counts_whole_cycles_wherever_the_fractions_fall(skip):
    # 1,000 slots completing every 1.1 s: 909 msgs/s. Dropping the first
    # completions moves where the 10 % and 90 % fractions fall in a burst.
    times = bursts(20, 1000, 1.1, 0.04)[skip:]
    st = benchlib.completion_stats(results(times))
    assert st["steady_method"] == "cycles"
    assert st["steady_cycles"] >= 14
    assert st["steady_rate"] == pytest.approx(1000 / 1.1, rel=0.005)
    # What the rate is taken over, for pooling runs: whole bursts.
    assert st["steady_count"] % 1000 == 0
    assert st["steady_count"] / st["steady_seconds"] == pytest.approx(st["steady_rate"])


def test_the_fractions_alone_would_be_off_by_a_burst():
    # What the cycles are for: the same bursts, measured between the 10 %
    # and 90 % completions, are up to a sixteenth off.
    errors = []
    for skip in (1, 999):
        times = bursts(20, 1000, 1.1, 0.04)[skip:]
        n = len(times)
        i, j = int(0.1 * (n - 1)), int(0.9 * (n - 1))
        errors.append(abs((j - i) / (times[j] - times[i]) * 1.1 / 1000 - 1))
    assert max(errors) > 0.04


def test_steady_rate_of_a_stream_without_bursts_is_between_the_fractions():
    # 20,000 completions at 1,000 msgs/s with a slow first second.
    times = [BASE + k * 0.005 for k in range(200)] + \
        [BASE + 1 + k * 0.001 for k in range(19800)]
    st = benchlib.completion_stats(results(times))
    assert st["steady_method"] == "fractions"
    assert st["steady_rate"] == pytest.approx(1000, rel=0.01)


def test_two_bursts_are_too_few_cycles_and_fall_back_to_the_fractions():
    times = bursts(2, 1000, 1.1, 0.04)
    st = benchlib.completion_stats(results(times))
    assert st["steady_method"] == "fractions"
    assert "steady_cycles" not in st


def test_too_few_completions_give_no_rate():
    st = benchlib.completion_stats(results([BASE + k for k in range(5)]))
    assert st == {"n": 5}


@pytest.mark.parametrize("skip", [0, 1, 500, 999])
def test_windows_of_in_flight_completions_measure_each_reply_cycle(skip):
    # 1,000 slots completing every 1.1 s: every window of 1,000 consecutive
    # completions spans exactly one cycle, wherever it starts.
    times = bursts(20, 1000, 1.1, 0.04)[skip:]
    st = benchlib.completion_stats(results(times), inflight=1000)
    assert st["steady_method"] == "windows"
    assert st["steady_rate"] == pytest.approx(1000 / 1.1, rel=0.001)
    assert st["steady_count"] / st["steady_seconds"] == pytest.approx(st["steady_rate"])
    assert st["cycles_rate"] == pytest.approx(1000 / 1.1, rel=0.005)
    assert all(r == pytest.approx(1000 / 1.1, rel=0.001) for r in st["cycle_rates"])


def test_windows_do_not_count_the_idle_end_of_the_first_burst():
    # 10 cycles of 10,000 slots, 1 s each; the first burst 0.3 s long, the
    # later ones spread over 0.9 s (as a just-started worker's do). The 10 %
    # completion is the last of the first burst: the 10 %-90 % rate holds that
    # burst's idle 0.7 s, and no gap between the later bursts is long enough to
    # find whole cycles; the windows give the cycle.
    times = [BASE + k * 1.0 + (0.3 if k == 0 else 0.9) * m / 10000
             for k in range(10) for m in range(10000)]
    st = benchlib.completion_stats(results(times), inflight=10000)
    assert st["steady_method"] == "windows"
    assert st["steady_rate"] == pytest.approx(10000, rel=0.001)
    assert st["fractions_rate"] < 0.95 * 10000
    assert "cycles_rate" not in st


def test_cycle_rates_show_a_slow_start():
    # 1,000 slots, each starting at its own offset: the first cycle takes
    # 1.3 s, every later one 1.0 s.
    times = sorted(BASE + s * 0.001 + 1.3 * min(k, 1) + max(0, k - 1) * 1.0
                   for s in range(1000) for k in range(0, 20))
    st = benchlib.completion_stats(results(times), inflight=1000)
    rates = st["cycle_rates"]
    assert rates[0] == pytest.approx(1000 / 1.3, rel=0.01)
    assert rates[1] == pytest.approx(1000 / 1.0, rel=0.01)
    assert st["steady_rate"] == pytest.approx(1000, rel=0.01)


def test_fewer_than_three_cycles_of_completions_give_no_windows():
    times = bursts(2, 1000, 1.1, 0.04)
    st = benchlib.completion_stats(results(times), inflight=1000)
    assert st["steady_method"] == "fractions"
    assert "cycle_rates" not in st
