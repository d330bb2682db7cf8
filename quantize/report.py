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
        (
            "file size (MiB)",
            f"{source['file_bytes'] / mib:,.1f}",
            f"{result['file_bytes'] / mib:,.1f}",
            change(source["file_bytes"], result["file_bytes"]),
        ),
        (
            "RAM at load (MiB)",
            f"{source['ram_at_load_bytes'] / mib:,.1f}",
            f"{result['ram_at_load_bytes'] / mib:,.1f}",
            change(source["ram_at_load_bytes"], result["ram_at_load_bytes"]),
        ),
        (
            "prompt tokens/s",
            f"{source['prompt_tps']:,.1f}",
            f"{result['prompt_tps']:,.1f}",
            change(source["prompt_tps"], result["prompt_tps"]),
        ),
        (
            "decode tokens/s",
            f"{source['decode_tps']:,.1f}",
            f"{result['decode_tps']:,.1f}",
            change(source["decode_tps"], result["decode_tps"]),
        ),
    ]
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
