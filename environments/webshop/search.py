"""Full-text product search: a tantivy (BM25) index over the catalog, built once, cached on disk.

WebShop searches with Pyserini/Lucene (BM25) and shows the top 50 hits. Pyserini needs Java, so
this uses tantivy, an in-process Rust engine with the same BM25 ranking. The index covers the
title, bullet points, description and option values of every product, with English stemming.

The index lives in ``cache_dir("webshop", "index", <catalog digest>)``: the first process that
needs it builds it in a private temporary folder and renames it into place (an atomic rename,
so concurrent builders never see half an index; a loser of the race discards its copy). Every
env copy then opens the same files read-only; within a process one :class:`SearchIndex` per
catalog is shared (:func:`get_index`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

from agentgym.environments.webshop.data import Catalog
from agentgym.utils import cache_dir

__all__ = ["SearchIndex", "get_index", "build_index", "index_path", "SEARCH_RETURN_N"]

#: Number of hits a search returns (WebShop shows these 10 per page).
SEARCH_RETURN_N = 50

_WORD = re.compile(r"[a-z0-9]+")
_lock = threading.Lock()
_open: dict[str, SearchIndex] = {}


def _schema():  # noqa: ANN202 - tantivy.Schema, imported lazily
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("asin", stored=True, tokenizer_name="raw")
    sb.add_text_field("title", stored=False, tokenizer_name="en_stem")
    sb.add_text_field("contents", stored=False, tokenizer_name="en_stem")
    return sb.build()


def index_path(catalog: Catalog) -> Path:
    """Where the index of ``catalog`` is cached."""
    return cache_dir("webshop", "index") / catalog.digest


def build_index(catalog: Catalog, *, force: bool = False) -> Path:
    """Build the index of ``catalog`` unless it is cached; return its folder. Process-safe."""
    import tantivy

    final = index_path(catalog)
    if final.exists() and not force:
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        index = tantivy.Index(_schema(), path=str(tmp))
        writer = index.writer(heap_size=64_000_000, num_threads=1)
        for p in catalog.products:
            opts = " ".join(v for vals in p.options.values() for v in vals)
            writer.add_document(
                tantivy.Document(
                    asin=p.asin,
                    title=p.title,
                    contents=" ".join((p.title, " ".join(p.bullet_points), p.description, opts)),
                )
            )
        writer.commit()
        writer.wait_merging_threads()
        if force and final.exists():
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            # Another process finished first: its index is identical, keep it.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


class SearchIndex:
    """A read-only searcher over a built index."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import tantivy

        self.path = Path(path)
        self._index = tantivy.Index.open(str(self.path))
        self._searcher = self._index.searcher()
        self._cache: dict[str, tuple[str, ...]] = {}

    @staticmethod
    def normalize(query: str) -> str:
        """Lowercase words of ``query``: the query language's operators are not for agents."""
        return " ".join(_WORD.findall(query.lower()))

    def search(self, query: str, k: int = SEARCH_RETURN_N) -> tuple[str, ...]:
        """The asins of the top ``k`` products for ``query`` (BM25, ties by index order)."""
        q = self.normalize(query)
        if not q:
            return ()
        key = f"{k}\x00{q}"
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        parsed = self._index.parse_query(q, ["title", "contents"])
        res = self._searcher.search(parsed, k, count=False)
        ranked = sorted(res.hits, key=lambda h: (-h[0], h[1].segment_ord, h[1].doc))
        out = [self._searcher.doc(addr)["asin"][0] for _, addr in ranked]
        result = tuple(out)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = result
        return result


def get_index(catalog: Catalog) -> SearchIndex:
    """The shared searcher of ``catalog`` in this process (built and cached on first use)."""
    with _lock:
        idx = _open.get(catalog.digest)
        if idx is None:
            idx = SearchIndex(build_index(catalog))
            _open[catalog.digest] = idx
        return idx
