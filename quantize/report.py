"""The quality and speed report of a quantization, as table rows and as Markdown."""

from __future__ import annotations

from typing import Any


def _change(a: float, b: float) -> str:
    return f"{b / a - 1:+.1%}" if a else "-"


MIB = 2**20


def _measured(
    report: dict[str, Any], speeds: tuple[tuple[str, str], ...]
) -> list[tuple[str, str, str, str]]:
    """Size, memory and the given speed figures of source and result."""
    lines = []
    figures = (
        ("file size (MiB)", "file_bytes", MIB),
        ("RAM at load (MiB)", "ram_at_load_bytes", MIB),
    )
    for label, key, scale in (*figures, *((label, key, 1) for label, key in speeds)):
        before, after = report["source"][key], report["result"][key]
        lines.append(
            (label, f"{before / scale:,.1f}", f"{after / scale:,.1f}", _change(before, after))
        )
    return lines


def rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, source, result, change) for the table."""
    if report.get("task") == "embed":
        return embedding_rows(report)
    source, result = report["source"], report["result"]
    lines = [
        (
            "perplexity",
            f"{report['source_ppl']:.3f}",
            f"{report['result_ppl']:.3f}",
            f"{report['ppl_increase']:+.2%}",
        ),
        ("KL divergence (mean, nats)", "-", f"{report['kl_mean']:.5f}", ""),
    ]
    lines += _measured(
        report, (("prompt tokens/s", "prompt_tps"), ("decode tokens/s", "decode_tps"))
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


def embedding_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The table of an embedding model: its vectors against the source's, then speed."""
    lines = [
        ("cosine to the source (mean)", "1", f"{report['mean_cosine']:.5f}", ""),
        ("cosine to the source (lowest)", "1", f"{report['min_cosine']:.5f}", ""),
        ("top-5 neighbours agreeing", "100%", f"{report['top5_agreement']:.1%}", ""),
    ]
    return lines + _measured(report, (("inputs/s", "inputs_per_s"), ("tokens/s", "tokens_per_s")))


def _method_and_gate(report: dict[str, Any]) -> tuple[str, str]:
    gate = report["gate"]
    verdict = "passed" if gate["passed"] else "**failed**"
    if report.get("task") == "embed":
        return (
            f"Evaluation text: `{report['eval_file']}`, {report['eval_texts']} sentences "
            f"({report['eval_tokens']} tokens), each embedded by both models and each a query "
            "for its 5 nearest neighbours among the others.",
            f"Gate: mean cosine at least {gate['min_cosine']:.5f} (it is "
            f"{report['mean_cosine']:.5f}) and top-5 agreement at least "
            f"{gate['min_top5_agreement']:.1%} (it is {report['top5_agreement']:.1%}): {verdict}.",
        )
    return (
        f"Evaluation text: `{report['eval_file']}`, {report['eval_tokens']} tokens, "
        f"{report['scored_tokens']} scored (windows of 512, second halves).",
        f"Gate: perplexity may rise by {gate['max_ppl_increase']:.2%}; it rose "
        f"{report['ppl_increase']:.2%}: {verdict}.",
    )


def markdown(report: dict[str, Any]) -> str:
    method, verdict = _method_and_gate(report)
    lines = [
        f"# {report['source_name']} ({report['source_type']}) -> {report['target']}",
        "",
        method,
        "",
        "| figure | source | result | change |",
        "|---|---:|---:|---:|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(report)],
        "",
        verdict,
        "",
    ]
    return "\n".join(lines)
