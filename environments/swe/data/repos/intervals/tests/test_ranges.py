from intervals.ranges import contains, merge, overlaps, total_length


def test_merge_sorted_input():
    assert merge([(1, 3), (2, 5), (7, 8)]) == [(1, 5), (7, 8)]


def test_overlaps():
    assert overlaps((1, 3), (2, 4))
    assert not overlaps((1, 2), (5, 6))


def test_total_length_disjoint():
    assert total_length([(0, 2), (5, 6)]) == 3


def test_contains():
    assert contains([(0, 5)], 3)
    assert not contains([(0, 5)], 7)
