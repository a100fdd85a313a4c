"""The WebShop purchase reward (Yao et al. 2022, web_agent_site/engine/goal.py).

.. math::

    r = \\frac{n_{attr} + n_{opt} + 1[price \\le price_{upper}]}
             {|attrs_{goal}| + |opts_{goal}| + 1} \\cdot r_{type}

* an attribute of the goal matches when ``rapidfuzz.fuzz.token_set_ratio`` with one of the
  product's attributes is > 85, or when it is a substring of the lowercased title, bullet
  points or description;
* a chosen option matches exactly (option ``size``) or fuzzily (ratio > 85, any other option)
  one of the goal's option values, after color normalisation (first color word found); an
  unmatched option still counts when it is a substring of title, bullets or description;
* ``r_type`` in {1, 0.5, 0.1, 0}: 1 when the product's search query equals the goal's, or at
  least two category levels are shared, or more than 20% of the goal title's nouns appear in
  the bought title; 0.5 when none holds; 0.1 when under 10% of the nouns match; 0 when none do.

One deliberate fix: the option count is capped at the number of goal options (WebShop counts
every chosen option, so a product with more options than the goal could score above 1).
Nouns come from :mod:`.nouns` (a rule-based tagger) instead of spaCy; see docs/webshop.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rapidfuzz import fuzz

from agentgym.environments.webshop.data import Goal, Product
from agentgym.environments.webshop.nouns import title_nouns

__all__ = [
    "COLOR_SET",
    "EXACT_MATCH_OPTIONS",
    "normalize_color",
    "type_reward",
    "attribute_matches",
    "option_matches",
    "RewardInfo",
    "compute_reward",
]

EXACT_MATCH_OPTIONS = ("size",)
FUZZY_THRESHOLD = 85

#: Colour words; an option value is normalised to the first of these it contains.
COLOR_SET = (
    "alabaster", "almond", "amber", "apricot", "aqua", "ash", "beige", "berry", "black", "blue",
    "blush", "bronze", "brown", "burgundy", "camel", "camo", "caramel", "champagne", "charcoal",
    "cherry", "chocolate", "clear", "coffee", "copper", "coral", "cream", "denim", "emerald",
    "fuchsia", "gold", "gray", "green", "grey", "indigo", "ivory", "khaki", "lavender",
    "lemon", "lilac", "lime", "magenta", "maroon", "mauve", "mint", "mocha", "multicolor",
    "mustard", "navy", "nude", "olive", "orange", "peach", "pink", "plum", "purple", "red",
    "rose", "rust", "sand", "silver", "tan", "taupe", "teal", "turquoise", "violet", "white",
    "wine", "yellow",
)  # fmt: skip


def normalize_color(value: str) -> str:
    """The first color of :data:`COLOR_SET` contained in ``value``, else ``value`` unchanged."""
    for c in COLOR_SET:
        if c in value:
            return c
    return value


def type_reward(bought: Product, goal: Goal, *, nouns: Any = title_nouns) -> dict[str, Any]:
    """``r_type`` and its parts (query match, category match, title noun score)."""
    query_match = bought.query == goal.query
    cats_b = {x.strip() for x in bought.product_category.split("›")}
    cats_g = {x.strip() for x in goal.product_category.split("›")}
    category_match = len(cats_b & cats_g) >= 2
    want = nouns(goal.name)
    got = set(nouns(bought.title))
    title_score = 0.2 if not want else len(got & set(want)) / len(want)
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {
        "r_type": r_type,
        "query_match": query_match,
        "category_match": category_match,
        "title_score": title_score,
    }


def _text_fields(p: Product) -> tuple[str, str, str]:
    return p.title.lower(), " ".join(p.bullet_points).lower(), p.description.lower()


def attribute_matches(bought: Product, goal_attributes: Sequence[str]) -> int:
    """How many goal attributes the product has (fuzzy attribute match or text substring)."""
    title, bullets, desc = _text_fields(bought)
    n = 0
    for g in goal_attributes:
        if (
            any(fuzz.token_set_ratio(p, g) > FUZZY_THRESHOLD for p in bought.attributes)
            or g in title
            or g in bullets
            or g in desc
        ):
            n += 1
    return n


def option_matches(bought: Product, goal_options: Iterable[str], chosen: Mapping[str, str]) -> int:
    """How many chosen options match a goal option value (capped at the number of goal options)."""
    goal_vals = [normalize_color(v) for v in goal_options]
    title, bullets, desc = _text_fields(bought)
    n = 0
    for name, value in chosen.items():
        v = normalize_color(value)
        if name.lower() in EXACT_MATCH_OPTIONS:
            matched = v in goal_vals
        else:
            matched = any(fuzz.token_set_ratio(g, v) > FUZZY_THRESHOLD for g in goal_vals)
        if matched or v in title or v in bullets or v in desc:
            n += 1
    return min(n, len(goal_vals))


@dataclasses.dataclass(frozen=True)
class RewardInfo:
    """The reward and its terms, as shown on the done page and returned in ``info``."""

    reward: float
    r_type: float
    query_match: bool
    category_match: bool
    title_score: float
    n_attributes: int
    n_attributes_matched: int
    n_options: int
    n_options_matched: int
    price: float
    price_upper: float
    price_ok: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compute_reward(
    bought: Product, goal: Goal, chosen: Mapping[str, str], *, price: float | None = None
) -> RewardInfo:
    """The WebShop reward for buying ``bought`` with options ``chosen`` under ``goal``."""
    price = bought.price if price is None else price
    t = type_reward(bought, goal)
    n_att = attribute_matches(bought, goal.attributes)
    goal_vals = goal.option_values
    n_opt = option_matches(bought, goal_vals, chosen)
    price_ok = goal.price_upper <= 0 or price <= goal.price_upper
    total = (n_att + n_opt + int(price_ok)) / (len(goal.attributes) + len(goal_vals) + 1)
    return RewardInfo(
        reward=total * t["r_type"],
        r_type=t["r_type"],
        query_match=t["query_match"],
        category_match=t["category_match"],
        title_score=t["title_score"],
        n_attributes=len(goal.attributes),
        n_attributes_matched=n_att,
        n_options=len(goal_vals),
        n_options_matched=n_opt,
        price=price,
        price_upper=goal.price_upper,
        price_ok=price_ok,
    )
