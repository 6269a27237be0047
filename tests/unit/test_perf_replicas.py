"""The interleaved-rounds report (the 1-vs-N replicas benchmark's): medians over the rounds,
ratios to the first layout."""

from __future__ import annotations

from resnet18_triton.perf.report import RoundMeasurement, rounds_report


def test_report_gives_each_round_the_median_and_the_ratio_to_the_first_layout() -> None:
    measurements = [
        RoundMeasurement("one", 1, 10.0, 100.0, 200.0, 4.0),
        RoundMeasurement("two", 1, 16.0, 60.0, 150.0, 6.0),
        RoundMeasurement("one", 2, 12.0, 90.0, 210.0, 5.0),
        RoundMeasurement("two", 2, 14.0, 70.0, 130.0, 7.5),
        RoundMeasurement("one", 3, 11.0, 95.0, 220.0, 4.5),
        RoundMeasurement("two", 3, 18.0, 50.0, 120.0, 6.5),
    ]
    lines = rounds_report(measurements, ["one", "two"], "header").splitlines()
    assert lines[0] == "header"
    one = next(line for line in lines if line.startswith("| one |"))
    two = next(line for line in lines if line.startswith("| two |"))
    assert one == "| one | 10.0 | 12.0 | 11.0 | 11.0 | 1.00x | 95 / 210 | 4.0-5.0 |"
    assert two == "| two | 16.0 | 14.0 | 18.0 | 16.0 | 1.45x | 60 / 130 | 6.0-7.5 |"
