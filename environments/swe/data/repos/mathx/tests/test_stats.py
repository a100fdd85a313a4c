import pytest
from mathx.stats import is_prime, mean, median, round_half_up, variance


def test_mean():
    assert mean([1, 2, 3]) == 2


def test_mean_empty():
    with pytest.raises(ValueError):
        mean([])


def test_median_odd_sorted():
    assert median([1, 5, 9]) == 5


def test_variance_population():
    assert variance([1, 2, 3, 4]) == pytest.approx(1.25)


def test_is_prime_small():
    assert is_prime(7)
    assert not is_prime(8)
    assert not is_prime(1)


def test_round_half_up_below_half():
    assert round_half_up(1.4) == 1.0
