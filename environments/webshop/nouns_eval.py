"""Measures the rule-based noun tagger (:mod:`.nouns`) against the generator's gold labels.

Two numbers matter: how well the tagger finds the nouns of a title (token precision / recall,
share of titles whose noun set is exactly right), and how often that changes the type reward
``r_type``: for each goal, the products a shopper would plausibly buy (the top 10 search hits of
the instruction) are scored with tagger nouns and with gold nouns, and the two ``r_type`` are
compared. Run it with ``agentgym webshop nouns``.
"""

from __future__ import annotations

from typing import Any

from agentgym.environments.webshop.generate import gold_title_nouns
from agentgym.environments.webshop.nouns import title_nouns

__all__ = ["evaluate"]


def evaluate(seed: int = 0, num_products: int = 3000, n_goals: int = 500) -> dict[str, Any]:
    from agentgym.environments.webshop.env import open_shop
    from agentgym.environments.webshop.reward import type_reward

    shop = open_shop(seed=seed, num_products=num_products)
    tp = fp = fn = exact = 0
    for p in shop.catalog.products:
        pred, gold = set(title_nouns(p.title)), set(gold_title_nouns(p.title))
        tp += len(pred & gold)
        fp += len(pred - gold)
        fn += len(gold - pred)
        exact += pred == gold
    pairs = agree = 0
    diff = 0.0
    for g in shop.catalog.goals[:n_goals]:
        q = g.instruction_text.split(", and price lower than")[0]
        for asin in shop.results(q)[:10]:
            p = shop.product(asin)
            a = type_reward(p, g)
            b = type_reward(p, g, nouns=gold_title_nouns)
            pairs += 1
            agree += a["r_type"] == b["r_type"]
            diff += abs(a["title_score"] - b["title_score"])
    n = len(shop.catalog.products)
    return {
        "titles": n,
        "noun_precision": round(tp / max(1, tp + fp), 4),
        "noun_recall": round(tp / max(1, tp + fn), 4),
        "titles_exact": round(exact / n, 4),
        "r_type_pairs": pairs,
        "r_type_agreement": round(agree / max(1, pairs), 4),
        "mean_abs_title_score_diff": round(diff / max(1, pairs), 4),
    }
