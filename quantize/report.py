"""The quality and speed report of a quantization, as table rows and as Markdown."""

from __future__ import annotations

from typing import Any


def rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, source, result, change) for the table."""
    source, result = report["source"], report["result"]

    def change(a: float, b: float) -> str:
        return f"{b / a - 1:+.1%}" if a else "-"

    mib = 2**20
    lines = [
        (
            "perplexity",
            f"{report['source_ppl']:.3f}",
            f"{report['result_ppl']:.3f}",
            f"{report['ppl_increase']:+.2%}",
        ),
        ("KL divergence (mean, nats)", "-", f"{report['kl_mean']:.5f}", ""),
    ]
    for label, key, scale in (
        ("file size (MiB)", "file_bytes", mib),
        ("RAM at load (MiB)", "ram_at_load_bytes", mib),
        ("prompt tokens/s", "prompt_tps", 1),
        ("decode tokens/s", "decode_tps", 1),
    ):
        before, after = source[key], result[key]
        lines.append(
            (label, f"{before / scale:,.1f}", f"{after / scale:,.1f}", change(before, after))
        )
    for before, after in zip(source["golden"], result["golden"], strict=True):
        lines.append(
            (
                f"golden: {before['name']}",
                "pass" if before["passed"] else "FAIL",
                "pass" if after["passed"] else "FAIL",
                "",
            )
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    gate = report["gate"]
    verdict = "passed" if gate["passed"] else "**failed**"
    lines = [
        f"# {report['source_name']} ({report['source_type']}) -> {report['target']}",
        "",
        f"Evaluation text: `{report['eval_file']}`, {report['eval_tokens']} tokens, "
        f"{report['scored_tokens']} scored (windows of 512, second halves).",
        "",
        "| figure | source | result | change |",
        "|---|---:|---:|---:|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(report)],
        "",
        f"Gate: perplexity may rise by {gate['max_ppl_increase']:.2%}; it rose "
        f"{report['ppl_increase']:.2%}: {verdict}.",
        "",
    ]
    return "\n".join(lines)
