"""The quality gates of `cellar quantize`: how much a quantized model may lose and still be
registered. A generation model is judged by perplexity on the evaluation text; an embedding model
by how close its vectors stay to the source's and whether its nearest neighbours stay the same."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    passed: bool
    limits: dict[str, float]
    """The bounds applied, as the report and the lineage record them."""
    failure: str
    """What fell short, for the refusal (empty when it passed)."""

    def record(self, forced: bool) -> dict[str, Any]:
        return {**self.limits, "passed": self.passed, "forced": forced}


def perplexity(report: dict[str, Any], max_increase: float, target: str) -> Verdict:
    increase = report["result_ppl"] / report["source_ppl"] - 1
    report["ppl_increase"] = increase
    passed = increase <= max_increase
    failure = (
        ""
        if passed
        else f"perplexity rose {increase:.2%} ({report['source_ppl']:.2f} -> "
        f"{report['result_ppl']:.2f}), more than the {max_increase:.2%} allowed for {target} "
        "(--max-ppl-increase)"
    )
    return Verdict(passed, {"max_ppl_increase": max_increase}, failure)


def embeddings(report: dict[str, Any], min_cosine: float, min_top5: float, target: str) -> Verdict:
    cosine, top5 = report["mean_cosine"], report["top5_agreement"]
    short = []
    if cosine < min_cosine:
        short.append(
            f"the mean cosine similarity to the source's vectors is {cosine:.5f}, below the "
            f"{min_cosine:.5f} required for {target} (--min-cosine)"
        )
    if top5 < min_top5:
        short.append(
            f"the top-5 neighbours agree {top5:.1%} of the time, below the {min_top5:.1%} "
            "required (--min-top5-agreement)"
        )
    limits = {"min_cosine": min_cosine, "min_top5_agreement": min_top5}
    return Verdict(not short, limits, "; ".join(short))
