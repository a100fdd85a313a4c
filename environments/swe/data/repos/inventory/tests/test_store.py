import pytest
from inventory.store import Inventory, OutOfStock


def test_add_and_quantity():
    inv = Inventory()
    inv.add("a", "Apple", 0.5, 3)
    assert inv.quantity("a") == 3
    assert inv.quantity("zzz") == 0


def test_add_rejects_nonpositive():
    with pytest.raises(ValueError):
        Inventory().add("a", "Apple", 0.5, 0)


def test_remove_unknown_raises():
    with pytest.raises(OutOfStock):
        Inventory().remove("nope")


def test_total_value_single():
    inv = Inventory()
    inv.add("a", "Apple", 2.5)
    assert inv.total_value() == 2.5


def test_low_stock():
    inv = Inventory()
    inv.add("a", "Apple", 1.0, 2)
    inv.add("b", "Banana", 1.0, 10)
    assert inv.low_stock() == ["a"]
