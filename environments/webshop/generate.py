"""The built-in generated WebShop catalog, written in the official raw file format.

Without the official data (1.18M scraped products, not downloadable here), the env plays on a
catalog generated from a fixed seed: products over many categories, each with a title, bullet
points, a description, attribute phrases, customization options (color, size, scent, ...),
a price or price range, reviews, and one or two human-style instructions that ask for some of
its attributes and options. The records have exactly the keys of ``items_shuffle.json``,
``items_ins_v2.json``, ``items_human_ins.json`` and ``reviews.json``, so
:func:`~.data.parse_raw` loads them like the official files and :func:`write_official_files`
can write them to disk.

Every title word also carries a gold part-of-speech label (``N`` noun / proper noun, ``A``
adjective, ``O`` other) from the generator's vocabulary (:mod:`.vocabulary`, data tables only);
:mod:`.nouns` is measured against it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from agentgym.environments.webshop.vocabulary import (
    ADJECTIVES,
    ATTRIBUTES,
    BRAND_SYLLABLES,
    CATEGORIES,
    COLORS,
    FLAVORS,
    FUNCTION_WORDS,
    GOLD_ADJ,
    MATERIALS,
    SCENTS,
    SHOE_SIZES,
    SIZE_BY_POOL,
)

__all__ = ["generate_raw", "write_official_files", "gold_title_nouns", "CATEGORIES"]


def _brand(rng: random.Random) -> str:
    return "".join(rng.choice(BRAND_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def gold_title_nouns(title: str) -> list[str]:
    """The nouns (incl. proper nouns) of a generated title by the generator's gold labels."""
    out = []
    for raw in title.replace(",", " ").replace("-", " ").split():
        w = raw.lower()
        if not w.isalpha() or w in FUNCTION_WORDS or w in GOLD_ADJ or w in _COLOR_WORDS:
            continue
        out.append(w)
    return out


_COLOR_WORDS = {w for c in COLORS for w in c.split()} - {"blue", "grey"}  # "navy blue": adj+noun


def _option_values(kind: str, pool: str, rng: random.Random) -> list[str]:
    if kind == "color":
        vals = rng.sample(COLORS, rng.randint(2, 6))
    elif kind == "shoe size":
        start = rng.randint(0, 6)
        vals = list(SHOE_SIZES[start : start + rng.randint(3, 8)])
    elif kind == "size":
        src = SIZE_BY_POOL[pool]
        start = rng.randint(0, max(0, len(src) - 3))
        vals = list(src[start : start + rng.randint(2, 5)])
    elif kind == "scent":
        vals = rng.sample(SCENTS, rng.randint(2, 5))
    else:
        vals = rng.sample(FLAVORS, rng.randint(2, 5))
    return vals


def _instruction(
    rng: random.Random, noun: str, audience: str, attrs: list[str], opts: dict[str, str]
) -> str:
    opener = rng.choice(
        (
            "i am looking for",
            "i need",
            "i want to buy",
            "find me",
            "i'm searching for",
            "get me",
            "i would like",
        )
    )
    art = "an" if noun[0] in "aeiou" else "a"
    att = " and ".join(attrs) if len(attrs) <= 2 else ", ".join(attrs[:-1]) + " and " + attrs[-1]
    body = rng.choice(
        (
            f"{art} {att} {noun}",
            f"{art} {noun} that is {att}",
            f"{art} {noun} for {audience.lower()} that is {att}",
        )
    )
    if opts:
        parts = [
            f"{v} {k}" if k in ("color", "flavor", "scent") else f"{k} {v}" for k, v in opts.items()
        ]
        body += " in " + " and ".join(parts)
    return f"{opener} {body}"


def generate_raw(seed: int = 0, num_products: int = 3000) -> dict[str, Any]:
    """Generate a catalog as official raw records; deterministic in ``(seed, num_products)``.

    Returns ``{"products", "attributes", "human_instructions", "reviews", "gold_nouns"}``:
    the contents of ``items_shuffle.json``, ``items_ins_v2.json``, ``items_human_ins.json``,
    ``reviews.json`` and the gold title nouns (keyed by asin).
    """
    if num_products < 1:
        raise ValueError(f"num_products must be >= 1, got {num_products}")
    rng = random.Random(f"webshop-catalog:{seed}")
    products, attributes, human, reviews = [], {}, {}, []
    asins: set[str] = set()
    alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    for i in range(num_products):
        top, mid, leaf, noun, audiences, kinds, pool = CATEGORIES[i % len(CATEGORIES)]
        while True:
            asin = "B0" + "".join(rng.choice(alnum) for _ in range(8))
            if asin not in asins:
                asins.add(asin)
                break
        brand = _brand(rng)
        adj = rng.choice(ADJECTIVES)
        material = rng.choice(MATERIALS[pool])
        audience = rng.choice(audiences)
        attrs = rng.sample(ATTRIBUTES[pool], rng.randint(3, 5))
        noun_title = " ".join(w.capitalize() for w in noun.split())
        title = f"{brand} {adj} {material} {noun_title} for {audience}"
        title_attr = attrs[0]
        title += ", " + " ".join(w.capitalize() for w in title_attr.split())
        if rng.random() < 0.5:
            title += f", {rng.choice(ADJECTIVES)} Design"
        bullets = [
            f"{a.capitalize()}: {rng.choice(('designed for', 'made for', 'great for'))} "
            f"everyday use"
            for a in attrs[1:]
        ]
        bullets.append(f"Package includes one {noun} from {brand}")
        desc = (
            f"The {brand} {noun} is {adj.lower()} and made of {material.lower()}. "
            f"{' '.join(a.capitalize() + '.' for a in attrs[1:])} "
            f"A {rng.choice(('thoughtful', 'practical', 'popular'))} choice for "
            f"{audience.lower()}."
        )
        opts: dict[str, list[dict[str, Any]]] = {}
        for kind in kinds:
            if rng.random() < 0.9:
                vals = _option_values(kind, pool, rng)
                opts[kind] = [{"value": v, "image": None} for v in vals]
        lo = round(rng.uniform(4, 120), 2)
        pricing = (
            f"${lo:.2f}" if rng.random() < 0.6 else f"${lo:.2f}${lo * rng.uniform(1.1, 1.8):.2f}"
        )
        products.append(
            {
                "asin": asin,
                "name": title,
                "full_description": desc,
                "small_description": bullets,
                "pricing": pricing,
                "customization_options": opts,
                "product_category": f"{top} › {mid} › {leaf}",
                "query": f"{leaf.lower()}",
                "category": top.split(",")[0].split(" &")[0].lower(),
                "images": [f"/static/img/{pool}.svg"],
            }
        )
        attributes[asin] = {"attributes": attrs}
        ins_list = []
        for _ in range(1 if rng.random() < 0.6 else 2):
            want = rng.sample(attrs, rng.randint(1, min(3, len(attrs))))
            gopts = {k: rng.choice(v)["value"] for k, v in opts.items()}
            ins_list.append(
                {
                    "instruction": _instruction(rng, noun, audience, want, gopts),
                    "instruction_attributes": want,
                    "instruction_options": list(gopts.values()),
                    "instruction_option_names": list(gopts.keys()),
                }
            )
        human[asin] = ins_list
        n_rev = rng.randint(0, 3)
        revs = [
            {
                "score": rng.randint(1, 5),
                "body": rng.choice(
                    (
                        "Works as described.",
                        "Great value for the price.",
                        "Not what I expected.",
                        "Would buy again.",
                        "Quality could be better.",
                    )
                ),
            }
            for _ in range(n_rev)
        ]
        reviews.append(
            {
                "asin": asin,
                "reviews": revs,
                "average_rating": round(sum(r["score"] for r in revs) / n_rev, 1)
                if n_rev
                else "N.A.",
            }
        )
    return {
        "products": products,
        "attributes": attributes,
        "human_instructions": human,
        "reviews": reviews,
    }


def write_official_files(
    out_dir: str | os.PathLike[str], seed: int = 0, num_products: int = 3000
) -> Path:
    """Write the generated catalog as ``items_shuffle.json`` etc. into ``out_dir``."""
    from agentgym.utils import atomic_write_json

    d = Path(out_dir)
    raw = generate_raw(seed=seed, num_products=num_products)
    atomic_write_json(d / "items_shuffle.json", raw["products"], indent=None)
    atomic_write_json(d / "items_ins_v2.json", raw["attributes"], indent=None)
    atomic_write_json(d / "items_human_ins.json", raw["human_instructions"], indent=None)
    atomic_write_json(d / "reviews.json", raw["reviews"], indent=None)
    return d


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(generate_raw(0, 2)["products"], indent=2))
