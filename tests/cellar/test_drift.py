"""The drift statistics and report on audit lines written the way the gateway writes them:
English short answers against Vietnamese long ones drift in script and length and in nothing
else; the report's plots exist and carry their titles."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from cellar.cli.main import app
from cellar.drift import CONTINUOUS, FEATURES, Span, compare, split_lines
from cellar.driftreport import write_report
from cellar.features import script_label, script_mix
from tests.drift_data import ENGLISH, VIETNAMESE, audit_lines

START = datetime(2026, 11, 1, tzinfo=UTC)


def test_script_mix_tells_english_from_vietnamese_and_other_scripts() -> None:
    assert script_label(script_mix(ENGLISH)) == "latin"
    assert script_label(script_mix(VIETNAMESE)) == "latin-marked"
    assert script_label(script_mix("Привет, как дела?")) == "cyrillic"
    assert script_label(script_mix("東京の天気はどうですか")) == "cjk"
    assert script_label(script_mix("12345 !?")) == "none"
    mix = script_mix(VIETNAMESE)
    assert mix is not None and 0.2 < mix["latin-marked"] < 0.6
    assert abs(sum(mix.values()) - 1) < 0.01


DAY = timedelta(days=1)
SPANS = (Span(START, START + DAY), Span(START + DAY, START + 2 * DAY))
DRIFTING = {"prompt_script", "answer_script", "completion_tokens"}


def test_vietnamese_long_answers_drift_in_script_and_length_only() -> None:
    found = split_lines(audit_lines(300, START), SPANS, {"gemma"})
    base, window = found["gemma"]
    assert (base.seen, window.seen) == (300, 300)
    results = {r.feature: r for r in compare(base.lines, window.lines)}
    assert set(results) == set(FEATURES)
    for feature, result in results.items():
        assert result.psi is not None
        if feature in DRIFTING:
            assert result.psi > 0.25 and result.verdict == "drift", (feature, result.psi)
            assert result.p_value is not None and result.p_value < 1e-6
        else:
            assert result.psi < 0.1 and result.verdict == "stable", (feature, result.psi)


def test_too_few_requests_are_not_judged() -> None:
    found = split_lines(audit_lines(10, START), SPANS)
    results = compare(*(sample.lines for sample in found["gemma"]))
    assert all(r.psi is None and r.verdict.startswith("too few") for r in results)


def test_the_report_has_a_verdict_per_feature_and_titled_plots(tmp_path: Path) -> None:
    base, window = split_lines(audit_lines(100, START), SPANS)["gemma"]
    results = compare(base.lines, window.lines)
    report = write_report(results, "gemma", SPANS, tmp_path / "drift")
    text = report.read_text()
    for feature in FEATURES:
        assert f"| {feature} |" in text
        with Image.open(tmp_path / "drift" / f"{feature}.png") as image:
            assert image.size[0] > 300
            title = image.text["Title"]  # type: ignore[attr-defined]
        assert title.startswith(f"gemma: {feature} (PSI ")
    assert "| prompt_script | " in text and "latin 100%" in text and "latin-marked 100%" in text
    assert all(f"{feature}.png" in text for feature in CONTINUOUS)


def test_the_cli_reads_the_audit_log_and_names_what_it_lacks(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_text("\n".join(json.dumps(x) for x in audit_lines(60, START)) + "\nnot json\n")
    runner = CliRunner(env={"COLUMNS": "200"})
    args = ["drift", "gemma", "--file", str(audit), "--until", SPANS[1].end.isoformat()]
    args += ["--window", "1d", "--baseline", "1d", "--out", str(tmp_path / "out")]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "prompt_script" in done.output and "drift" in done.output
    assert (tmp_path / "out" / "report.md").is_file()
    missing = runner.invoke(app, [*args[:2], "--file", str(audit), "--window", "1h"])
    assert missing.exit_code == 2 and "no requests for model 'gemma'" in missing.output
    bad = runner.invoke(app, [*args, "--window", "soon"])
    assert bad.exit_code == 2 and "--window" in bad.output
