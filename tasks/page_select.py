"""Choosing which pages of a long PDF go into the model's context (tasks.md §1.5; issue "kvl pdf ask").

MMLongBench-Doc gives a model up to 120 pages at 144 dpi. When those do not fit the context budget
(max context minus the answer budget), `kvl pdf ask` keeps the pages most relevant to the question: BM25
(rank_bm25's Okapi variant) over each page's text, then the best pages each with their neighbours, since
answers often continue across a page break (a table, a paragraph), until the budget is spent.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

_WORD = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-cased NFKC word tokens; one-letter words (a, I, x) carry no signal for ranking pages."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return [w for w in _WORD.findall(text) if len(w) > 1 or w.isdigit()]


def rank_pages(texts: Sequence[str], query: str) -> list[float]:
    """BM25 score of every page for `query` (0 for all when no page has text or the query no words)."""
    from rank_bm25 import BM25Okapi

    docs = [tokenize(t) for t in texts]
    q = tokenize(query)
    if not q or not any(docs):
        return [0.0] * len(texts)
    # rank_bm25 divides by the mean page length: an empty page is given one inert token instead.
    bm25 = BM25Okapi([d or ["\x00"] for d in docs])
    return [float(s) for s in bm25.get_scores(q)]


def select_pages(scores: Sequence[float], costs: Sequence[int], budget: int, max_pages: int = 120) -> list[int]:
    """Indexes of the pages to keep, in the order they were taken (most wanted first; sort for document order).

    Pages are visited best first (ties: earlier page first); each brings itself, then the next page, then
    the previous one, whenever they still fit `budget` (the sum of `costs`). What is left of the budget is
    filled in rank order, so a question with no matching words still sees the document's first pages.
    """
    n = len(scores)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    chosen: list[int] = []
    used = 0

    def take(i: int) -> None:
        nonlocal used
        if 0 <= i < n and i not in chosen and len(chosen) < max_pages and used + costs[i] <= budget:
            chosen.append(i)
            used += costs[i]

    for i in order:
        if scores[i] <= 0:
            break
        for j in (i, i + 1, i - 1):
            take(j)
    for i in order:
        take(i)
    return chosen
