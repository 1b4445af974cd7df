"""Ranking candidates for one query as the official retrieval recipe does: every candidate by ITC similarity, the
best `rerank` re-ranked by ITM; ITM over every candidate without ITC heads; ITC alone without an ITM head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class SearchResult:
    """Ranked matches (best first), the files that could not be read, and how the ranking was made."""

    matches: list[dict]
    ranked_by: str
    skipped: list[dict] = field(default_factory=list)
    embedded: int = 0  # images run through the image tower for this query
    cached: int = 0  # images whose states came from the cache

    def to_dict(self) -> dict:
        return {
            "matches": self.matches,
            "ranked_by": self.ranked_by,
            "skipped": self.skipped,
            "embedded": self.embedded,
            "cached": self.cached,
        }


def rank(
    candidates: int,
    top: int,
    rerank: int,
    itc: torch.Tensor | None,
    itm_of: Callable[[list[int]], torch.Tensor] | None,
) -> tuple[list[int], list[float] | None]:
    """(the best `top` candidate indices, best first; their ITM probabilities, None without ITM). `itc`: every
    candidate's ITC similarity (None without ITC heads); `itm_of(indices)`: those candidates' ITM probabilities
    (None without an ITM head)."""
    if itc is not None:
        shortlist = itc.argsort(descending=True)[: max(top, rerank)].tolist()
    else:
        shortlist = list(range(candidates))
    if itm_of is None:  # a contrastive-only checkpoint: ITC alone
        return shortlist[:top], None
    itm = itm_of(shortlist)
    order = itm.argsort(descending=True)[:top].tolist()
    return [shortlist[i] for i in order], [float(itm[i]) for i in order]


def ranked_matches(key: str, values: list, order: list[int], itm: list[float] | None, itc) -> list[dict]:
    """One {key: value[, "itm"][, "itc"]} per ranked candidate."""
    matches = []
    for position, index in enumerate(order):
        match = {key: values[index]}
        if itm is not None:
            match["itm"] = itm[position]
        if itc is not None:
            match["itc"] = float(itc[index])
        matches.append(match)
    return matches


def ranking_description(candidates: int, has_itm: bool, has_itc: bool, rerank: int) -> str:
    """How `rank` ranked `candidates` candidates, in words (the `ranked_by` of a SearchResult)."""
    if not has_itm:
        return f"ITC similarity over all {candidates} (no ITM head in this checkpoint)"
    if has_itc:
        return f"ITC similarity, best {min(candidates, rerank)} re-ranked by ITM"
    return f"ITM over all {candidates} (no ITC head in this checkpoint)"
