import pytest

from pi_classifier.meters import RateMeter, TemperatureReader


def test_rate_over_the_window():
    meter = RateMeter(window=2.0)
    for step in range(41):
        meter.tick(step * 0.05)
    assert meter.rate(2.0) == pytest.approx(20.0)


def test_slow_events_still_give_a_rate_that_decays_when_they_stop():
    meter = RateMeter(window=2.0)
    meter.tick(0.0)
    meter.tick(3.5)
    assert meter.rate(3.5) == pytest.approx(1 / 3.5)
    assert meter.rate(10.5) == pytest.approx(1 / 7.0)


def test_temperature_reader(tmp_path):
    zone = tmp_path / "temp"
    zone.write_text("48312\n")
    assert TemperatureReader(zone).read() == pytest.approx(48.312)
    assert TemperatureReader(tmp_path / "missing").read() is None
