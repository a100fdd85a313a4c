"""An in-memory stock list: add and remove items, value the stock, find what runs low."""

from dataclasses import dataclass


@dataclass
class Item:
    sku: str
    name: str
    price: float
    qty: int = 0


class OutOfStock(Exception):
    """Raised when removing more of an item than is in stock."""


class Inventory:
    def __init__(self):
        self._items = {}

    def add(self, sku, name, price, qty=1):
        if qty <= 0:
            raise ValueError(f"qty must be positive, got {qty}")
        if sku in self._items:
            self._items[sku].qty += qty
        else:
            self._items[sku] = Item(sku, name, price, qty)

    def remove(self, sku, qty=1):
        item = self._items.get(sku)
        if item is None or item.qty < qty:
            raise OutOfStock(sku)
        item.qty -= qty
        if item.qty == 0:
            del self._items[sku]

    def quantity(self, sku):
        item = self._items.get(sku)
        return item.qty if item else 0

    def total_value(self):
        return round(sum(i.price * i.qty for i in self._items.values()), 2)

    def low_stock(self, threshold=5):
        """SKUs with fewer than ``threshold`` units, sorted."""
        return sorted(i.sku for i in self._items.values() if i.qty < threshold)
