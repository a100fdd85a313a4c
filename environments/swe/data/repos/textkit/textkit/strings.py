"""String helpers: slugs, truncation, case conversion, word counts, wrapping."""

import re


def slugify(text: str, sep: str = "-") -> str:
    """Lower-case ``text`` and join its alphanumeric words with ``sep``."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return sep.join(words)


def truncate(text: str, width: int, suffix: str = "...") -> str:
    """Shorten ``text`` to at most ``width`` characters, ending with ``suffix`` when cut."""
    if len(text) <= width:
        return text
    if width <= len(suffix):
        return suffix[:width]
    return text[: width - len(suffix)] + suffix


def camel_to_snake(name: str) -> str:
    """``getHTTPResponse`` -> ``get_http_response``."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


def count_words(text: str) -> dict:
    """How often each (lower-cased) word occurs in ``text``."""
    counts = {}
    for w in re.findall(r"[\w']+", text.lower()):
        counts[w] = counts.get(w, 0) + 1
    return counts


def is_palindrome(text: str) -> bool:
    """True when ``text`` reads the same backwards, ignoring case and punctuation."""
    chars = [c.lower() for c in text if c.isalnum()]
    return chars == chars[::-1]


def wrap(text: str, width: int) -> list:
    """Greedy word wrap: lines of at most ``width`` characters (longer words stay whole)."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return lines
