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
