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
adjective, ``O`` other) from the generator's vocabulary; :mod:`.nouns` is measured against it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

__all__ = ["generate_raw", "write_official_files", "gold_title_nouns", "CATEGORIES"]

# (top, middle, leaf, product noun, audience choices, option kinds, attribute pool)
CATEGORIES: list[tuple[str, str, str, str, tuple[str, ...], tuple[str, ...], str]] = [
    (
        "Clothing, Shoes & Jewelry",
        "Men",
        "Pants",
        "jogger pants",
        ("Men",),
        ("color", "size"),
        "apparel",
    ),
    (
        "Clothing, Shoes & Jewelry",
        "Women",
        "Dresses",
        "maxi dress",
        ("Women",),
        ("color", "size"),
        "apparel",
    ),
    (
        "Clothing, Shoes & Jewelry",
        "Women",
        "Tops",
        "tank top",
        ("Women", "Girls"),
        ("color", "size"),
        "apparel",
    ),
    (
        "Clothing, Shoes & Jewelry",
        "Men",
        "Shirts",
        "polo shirt",
        ("Men", "Boys"),
        ("color", "size"),
        "apparel",
    ),
    (
        "Clothing, Shoes & Jewelry",
        "Men",
        "Shoes",
        "running shoes",
        ("Men", "Women"),
        ("color", "shoe size"),
        "footwear",
    ),
    (
        "Clothing, Shoes & Jewelry",
        "Women",
        "Shoes",
        "ankle boots",
        ("Women",),
        ("color", "shoe size"),
        "footwear",
    ),
    (
        "Clothing, Shoes & Jewelry",
        "Women",
        "Sandals",
        "slide sandals",
        ("Women", "Men"),
        ("color", "shoe size"),
        "footwear",
    ),
    (
        "Clothing, Shoes & Jewelry",
        "Men",
        "Jackets",
        "rain jacket",
        ("Men", "Women"),
        ("color", "size"),
        "apparel",
    ),
    (
        "Clothing, Shoes & Jewelry",
        "Women",
        "Socks",
        "crew socks",
        ("Women", "Men", "Kids"),
        ("color", "size"),
        "apparel",
    ),
    (
        "Beauty & Personal Care",
        "Hair Care",
        "Shampoo",
        "shampoo",
        ("Hair", "Men", "Women"),
        ("scent", "size"),
        "beauty",
    ),
    (
        "Beauty & Personal Care",
        "Hair Care",
        "Conditioner",
        "conditioner",
        ("Hair", "Women"),
        ("scent", "size"),
        "beauty",
    ),
    (
        "Beauty & Personal Care",
        "Skin Care",
        "Moisturizer",
        "face moisturizer",
        ("Skin", "Women", "Men"),
        ("scent", "size"),
        "beauty",
    ),
    (
        "Beauty & Personal Care",
        "Skin Care",
        "Sunscreen",
        "sunscreen lotion",
        ("Skin", "Kids"),
        ("size",),
        "beauty",
    ),
    ("Beauty & Personal Care", "Makeup", "Lipstick", "lipstick", ("Women",), ("color",), "beauty"),
    (
        "Beauty & Personal Care",
        "Makeup",
        "Eyeshadow",
        "eyeshadow palette",
        ("Women",),
        ("color",),
        "beauty",
    ),
    (
        "Beauty & Personal Care",
        "Oral Care",
        "Toothpaste",
        "toothpaste",
        ("Kids", "Adults"),
        ("flavor", "size"),
        "beauty",
    ),
    (
        "Beauty & Personal Care",
        "Fragrance",
        "Perfume",
        "perfume spray",
        ("Women", "Men"),
        ("scent", "size"),
        "beauty",
    ),
    (
        "Beauty & Personal Care",
        "Bath",
        "Body Wash",
        "body wash",
        ("Men", "Women"),
        ("scent", "size"),
        "beauty",
    ),
    (
        "Grocery & Gourmet Food",
        "Snacks",
        "Chips",
        "potato chips",
        ("Snacking",),
        ("flavor", "size"),
        "food",
    ),
    (
        "Grocery & Gourmet Food",
        "Snacks",
        "Nuts",
        "mixed nuts",
        ("Snacking",),
        ("flavor", "size"),
        "food",
    ),
    (
        "Grocery & Gourmet Food",
        "Beverages",
        "Coffee",
        "coffee beans",
        ("Espresso", "Drip"),
        ("flavor", "size"),
        "food",
    ),
    (
        "Grocery & Gourmet Food",
        "Beverages",
        "Tea",
        "herbal tea",
        ("Relaxation",),
        ("flavor", "size"),
        "food",
    ),
    (
        "Grocery & Gourmet Food",
        "Pantry",
        "Pasta",
        "pasta sauce",
        ("Dinner",),
        ("flavor", "size"),
        "food",
    ),
    (
        "Grocery & Gourmet Food",
        "Candy",
        "Chocolate",
        "dark chocolate",
        ("Gifts",),
        ("flavor", "size"),
        "food",
    ),
    (
        "Grocery & Gourmet Food",
        "Breakfast",
        "Cereal",
        "granola cereal",
        ("Breakfast",),
        ("flavor", "size"),
        "food",
    ),
    (
        "Home & Kitchen",
        "Bedding",
        "Sheets",
        "bed sheet set",
        ("Bedroom",),
        ("color", "size"),
        "home",
    ),
    (
        "Home & Kitchen",
        "Bedding",
        "Pillows",
        "throw pillow",
        ("Couch", "Bedroom"),
        ("color", "size"),
        "home",
    ),
    (
        "Home & Kitchen",
        "Kitchen",
        "Cookware",
        "frying pan",
        ("Kitchen",),
        ("color", "size"),
        "kitchen",
    ),
    (
        "Home & Kitchen",
        "Kitchen",
        "Knives",
        "chef knife",
        ("Kitchen",),
        ("color", "size"),
        "kitchen",
    ),
    (
        "Home & Kitchen",
        "Kitchen",
        "Storage",
        "food storage containers",
        ("Kitchen",),
        ("color", "size"),
        "kitchen",
    ),
    (
        "Home & Kitchen",
        "Furniture",
        "Chairs",
        "office chair",
        ("Office", "Home"),
        ("color",),
        "furniture",
    ),
    (
        "Home & Kitchen",
        "Furniture",
        "Tables",
        "coffee table",
        ("Living Room",),
        ("color", "size"),
        "furniture",
    ),
    (
        "Home & Kitchen",
        "Decor",
        "Curtains",
        "blackout curtains",
        ("Bedroom", "Living Room"),
        ("color", "size"),
        "home",
    ),
    (
        "Home & Kitchen",
        "Decor",
        "Rugs",
        "area rug",
        ("Living Room", "Bedroom"),
        ("color", "size"),
        "home",
    ),
    (
        "Home & Kitchen",
        "Lighting",
        "Lamps",
        "table lamp",
        ("Bedroom", "Office"),
        ("color",),
        "electronics",
    ),
    ("Home & Kitchen", "Bath", "Towels", "bath towels", ("Bathroom",), ("color", "size"), "home"),
    (
        "Electronics",
        "Audio",
        "Headphones",
        "wireless headphones",
        ("Music", "Gaming"),
        ("color",),
        "electronics",
    ),
    (
        "Electronics",
        "Audio",
        "Speakers",
        "bluetooth speaker",
        ("Home", "Outdoors"),
        ("color",),
        "electronics",
    ),
    (
        "Electronics",
        "Accessories",
        "Chargers",
        "usb charger",
        ("Phones", "Tablets"),
        ("color", "size"),
        "electronics",
    ),
    (
        "Electronics",
        "Accessories",
        "Cables",
        "charging cable",
        ("Phones", "Laptops"),
        ("color", "size"),
        "electronics",
    ),
    (
        "Electronics",
        "Computers",
        "Keyboards",
        "mechanical keyboard",
        ("Gaming", "Office"),
        ("color",),
        "electronics",
    ),
    (
        "Electronics",
        "Computers",
        "Mice",
        "wireless mouse",
        ("Laptops", "Office"),
        ("color",),
        "electronics",
    ),
    (
        "Electronics",
        "Cameras",
        "Cameras",
        "security camera",
        ("Home", "Outdoors"),
        ("color", "size"),
        "electronics",
    ),
    ("Electronics", "Phones", "Cases", "phone case", ("Phones",), ("color",), "electronics"),
    ("Pet Supplies", "Dogs", "Beds", "dog bed", ("Dogs",), ("color", "size"), "pets"),
    ("Pet Supplies", "Dogs", "Toys", "chew toy", ("Dogs", "Puppies"), ("color", "size"), "pets"),
    (
        "Pet Supplies",
        "Cats",
        "Litter",
        "cat litter",
        ("Cats", "Kittens"),
        ("scent", "size"),
        "pets",
    ),
    ("Pet Supplies", "Dogs", "Food", "dog treats", ("Dogs", "Puppies"), ("flavor", "size"), "pets"),
    (
        "Sports & Outdoors",
        "Fitness",
        "Yoga",
        "yoga mat",
        ("Women", "Men"),
        ("color", "size"),
        "sports",
    ),
    (
        "Sports & Outdoors",
        "Fitness",
        "Weights",
        "dumbbell set",
        ("Home",),
        ("color", "size"),
        "sports",
    ),
    (
        "Sports & Outdoors",
        "Camping",
        "Tents",
        "camping tent",
        ("Outdoors",),
        ("color", "size"),
        "sports",
    ),
    (
        "Sports & Outdoors",
        "Cycling",
        "Helmets",
        "bike helmet",
        ("Adults", "Kids"),
        ("color", "size"),
        "sports",
    ),
    (
        "Sports & Outdoors",
        "Hydration",
        "Bottles",
        "water bottle",
        ("Sports", "Travel"),
        ("color", "size"),
        "sports",
    ),
    (
        "Health & Household",
        "Vitamins",
        "Supplements",
        "vitamin gummies",
        ("Adults", "Kids"),
        ("flavor", "size"),
        "health",
    ),
    (
        "Health & Household",
        "Cleaning",
        "Detergent",
        "laundry detergent",
        ("Home",),
        ("scent", "size"),
        "health",
    ),
    (
        "Health & Household",
        "Cleaning",
        "Wipes",
        "cleaning wipes",
        ("Kitchen", "Bathroom"),
        ("scent", "size"),
        "health",
    ),
    ("Toys & Games", "Puzzles", "Jigsaw", "jigsaw puzzle", ("Adults", "Kids"), ("size",), "toys"),
    (
        "Toys & Games",
        "Building",
        "Blocks",
        "building blocks",
        ("Kids", "Toddlers"),
        ("color", "size"),
        "toys",
    ),
    (
        "Office Products",
        "Writing",
        "Pens",
        "gel pens",
        ("Office", "School"),
        ("color", "size"),
        "office",
    ),
    (
        "Office Products",
        "Paper",
        "Notebooks",
        "spiral notebook",
        ("School", "Office"),
        ("color", "size"),
        "office",
    ),
]

# Attribute phrases per pool; words marked as adjectives in _GOLD_ADJ, everything else in a
# phrase is a noun for the gold labels (function words aside).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "apparel": (
        "machine wash",
        "elastic waist",
        "slim fit",
        "relaxed fit",
        "long sleeve",
        "short sleeve",
        "quick drying",
        "moisture wicking",
        "button closure",
        "drawstring closure",
        "high waist",
        "polyester spandex",
        "cotton blend",
        "tumble dry",
        "hand wash",
    ),
    "footwear": (
        "rubber sole",
        "non slip",
        "memory foam",
        "arch support",
        "lace up closure",
        "water resistant",
        "lightweight design",
        "wide width",
        "breathable mesh",
        "slip resistant",
    ),
    "beauty": (
        "paraben free",
        "cruelty free",
        "sulfate free",
        "long lasting",
        "natural ingredients",
        "sensitive skin",
        "dry skin",
        "fine lines",
        "travel size",
        "alcohol free",
        "tea tree",
        "argan oil",
        "hyaluronic acid",
        "vitamin c",
        "fluoride free",
    ),
    "food": (
        "gluten free",
        "non gmo",
        "low sugar",
        "high protein",
        "plant based",
        "low carb",
        "keto friendly",
        "sugar free",
        "dairy free",
        "individually wrapped",
        "kosher certified",
        "ready to eat",
        "natural flavors",
        "resealable bag",
    ),
    "home": (
        "machine washable",
        "easy clean",
        "fade resistant",
        "wrinkle free",
        "memory foam",
        "hypoallergenic material",
        "thermal insulated",
        "living room",
        "non slip backing",
        "soft fabric",
        "bamboo fiber",
        "egyptian cotton",
    ),
    "kitchen": (
        "dishwasher safe",
        "non stick",
        "stainless steel",
        "bpa free",
        "heat resistant",
        "easy clean",
        "oven safe",
        "induction compatible",
        "ergonomic handle",
        "leak proof",
    ),
    "furniture": (
        "easy assembly",
        "solid wood",
        "high density",
        "lumbar support",
        "storage space",
        "mid century",
        "metal frame",
        "height adjustable",
        "living room",
        "wood finish",
    ),
    "electronics": (
        "fast charging",
        "noise cancelling",
        "long battery life",
        "high definition",
        "easy install",
        "water resistant",
        "bluetooth connection",
        "usb port",
        "touch control",
        "plug and play",
        "motion detection",
        "night vision",
    ),
    "pets": (
        "machine washable",
        "non toxic",
        "natural ingredients",
        "easy clean",
        "grain free",
        "orthopedic foam",
        "odor control",
        "durable rubber",
        "non slip bottom",
        "small breed",
    ),
    "sports": (
        "non slip",
        "easy carry",
        "high density",
        "water resistant",
        "easy setup",
        "adjustable strap",
        "lightweight design",
        "stainless steel",
        "bpa free",
        "leak proof",
    ),
    "health": (
        "non gmo",
        "gluten free",
        "plant based",
        "hypoallergenic formula",
        "easy use",
        "septic safe",
        "dye free",
        "natural ingredients",
        "long lasting",
        "travel size",
    ),
    "toys": (
        "non toxic",
        "easy assembly",
        "educational toy",
        "birthday gift",
        "bpa free",
        "storage box",
        "bright colors",
        "easy clean",
    ),
    "office": (
        "quick drying",
        "smooth writing",
        "acid free",
        "easy use",
        "refillable ink",
        "college ruled",
        "hard cover",
        "bright colors",
    ),
}

# Hand-assigned gold labels of the vocabulary: these words are adjectives, participles or
# particles (not nouns) in the titles; every other content word is a noun or proper noun.
# Nouns used as modifiers ("cruelty free", "laundry detergent") stay nouns, as in spaCy.
_GOLD_ADJ = {
    "elastic",
    "slim",
    "relaxed",
    "long",
    "short",
    "quick",
    "high",
    "non",
    "slip",
    "up",
    "lightweight",
    "wide",
    "breathable",
    "resistant",
    "free",
    "lasting",
    "natural",
    "sensitive",
    "dry",
    "fine",
    "low",
    "based",
    "friendly",
    "individually",
    "kosher",
    "certified",
    "clean",
    "ready",
    "resealable",
    "washable",
    "easy",
    "hypoallergenic",
    "thermal",
    "wrapped",
    "insulated",
    "soft",
    "egyptian",
    "safe",
    "stainless",
    "compatible",
    "ergonomic",
    "solid",
    "adjustable",
    "fast",
    "toxic",
    "orthopedic",
    "durable",
    "cancelling",
    "small",
    "educational",
    "bright",
    "smooth",
    "refillable",
    "hard",
    "ruled",
    "proof",
    "drying",
    "wicking",
    "heavy",
    "premium",
    "classic",
    "modern",
    "ultra",
    "compact",
    "portable",
    "cozy",
    "organic",
    "vintage",
    "deluxe",
    "waterproof",
    "professional",
    "rechargeable",
    "gentle",
    "fresh",
    "crunchy",
    "rich",
    "pure",
    "sturdy",
    "elegant",
    "casual",
    "warm",
    "cool",
    "mini",
    "large",
    "extra",
    "wireless",
    "mechanical",
    "herbal",
    "mixed",
    "dark",
    "running",
    "charging",
    "frying",
    "cleaning",
    "wooden",
    "plastic",
    "nonstick",
    "hyaluronic",
    "septic",
    "spiral",
}

ADJECTIVES = (
    "Premium",
    "Classic",
    "Modern",
    "Soft",
    "Ultra",
    "Compact",
    "Portable",
    "Cozy",
    "Organic",
    "Vintage",
    "Deluxe",
    "Waterproof",
    "Professional",
    "Rechargeable",
    "Gentle",
    "Fresh",
    "Crunchy",
    "Rich",
    "Pure",
    "Sturdy",
    "Elegant",
    "Casual",
    "Warm",
    "Cool",
    "Mini",
    "Heavy",
)

MATERIALS = {
    "apparel": ("Cotton", "Linen", "Fleece", "Denim", "Nylon", "Wool"),
    "footwear": ("Leather", "Canvas", "Suede", "Mesh", "Knit"),
    "beauty": ("Coconut", "Lavender", "Aloe", "Charcoal", "Rosemary", "Honey"),
    "food": ("Almond", "Cocoa", "Oat", "Peanut", "Cinnamon", "Maple"),
    "home": ("Microfiber", "Velvet", "Cotton", "Bamboo", "Linen", "Jute"),
    "kitchen": ("Ceramic", "Granite", "Glass", "Steel", "Cast Iron", "Copper"),
    "furniture": ("Oak", "Walnut", "Mesh", "Leather", "Metal", "Pine"),
    "electronics": ("Aluminum", "Plastic", "Metal", "Silicone", "Carbon"),
    "pets": ("Plush", "Rubber", "Canvas", "Fleece", "Rope"),
    "sports": ("Rubber", "Foam", "Nylon", "Steel", "Neoprene", "Aluminum"),
    "health": ("Citrus", "Lemon", "Eucalyptus", "Mint", "Berry"),
    "toys": ("Wooden", "Plastic", "Cardboard", "Foam"),
    "office": ("Paper", "Plastic", "Metal", "Leather"),
}

BRAND_SYLLABLES = (
    "lu",
    "mo",
    "ra",
    "ve",
    "ka",
    "zen",
    "tor",
    "bel",
    "ni",
    "sa",
    "dro",
    "fi",
    "qua",
    "pex",
    "lin",
    "ori",
    "tev",
    "mar",
    "glo",
    "vin",
    "hal",
    "cre",
    "ost",
)

COLORS = (
    "black",
    "white",
    "navy blue",
    "grey",
    "red",
    "dark green",
    "beige",
    "pink",
    "brown",
    "light blue",
    "purple",
    "olive",
    "charcoal grey",
    "burgundy",
    "khaki",
    "ivory",
    "teal",
    "yellow",
    "orange",
    "silver",
)
SIZES = ("x-small", "small", "medium", "large", "x-large", "xx-large", "3x-large")
SHOE_SIZES = tuple(str(s) for s in (5, 5.5, 6, 6.5, 7, 7.5, 8, 8.5, 9, 9.5, 10, 10.5, 11, 12, 13))
AMOUNT_SIZES = (
    "2 ounce",
    "4 ounce",
    "8 ounce",
    "12 ounce",
    "16 ounce",
    "32 ounce",
    "pack of 2",
    "pack of 3",
    "pack of 6",
    "pack of 12",
    "1 pound",
    "2 pound",
)
DIM_SIZES = (
    "twin",
    "full",
    "queen",
    "king",
    "california king",
    "18 x 18 inch",
    "20 x 20 inch",
    "5 x 7 feet",
    "8 x 10 feet",
    "52 x 84 inch",
    "10 inch",
    "12 inch",
)
SCENTS = (
    "lavender",
    "unscented",
    "fresh linen",
    "vanilla",
    "eucalyptus mint",
    "citrus",
    "coconut",
    "ocean breeze",
    "rose",
    "sandalwood",
)
FLAVORS = (
    "original",
    "sea salt",
    "barbecue",
    "sour cream and onion",
    "chocolate",
    "vanilla",
    "strawberry",
    "honey roasted",
    "cinnamon",
    "mint",
    "caramel",
    "peach",
)

_SIZE_BY_POOL = {
    "apparel": SIZES,
    "beauty": AMOUNT_SIZES,
    "food": AMOUNT_SIZES,
    "health": AMOUNT_SIZES,
    "home": DIM_SIZES,
    "kitchen": DIM_SIZES,
    "furniture": DIM_SIZES,
    "pets": SIZES,
    "sports": SIZES + ("pack of 2",),
    "electronics": ("3 feet", "6 feet", "10 feet", "1 pack", "2 pack", "4 pack"),
    "toys": ("500 pieces", "1000 pieces", "100 pieces", "250 pieces"),
    "office": ("pack of 6", "pack of 12", "pack of 24", "pack of 3"),
}

_FUNCTION = {"for", "and", "with", "of", "to", "the", "a", "in", "x"}


def _brand(rng: random.Random) -> str:
    return "".join(rng.choice(BRAND_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def gold_title_nouns(title: str) -> list[str]:
    """The nouns (incl. proper nouns) of a generated title by the generator's gold labels."""
    out = []
    for raw in title.replace(",", " ").replace("-", " ").split():
        w = raw.lower()
        if not w.isalpha() or w in _FUNCTION or w in _GOLD_ADJ or w in _COLOR_WORDS:
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
        src = _SIZE_BY_POOL[pool]
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
