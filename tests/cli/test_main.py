"""The `cellar` commands, run in-process through typer's runner on a real store."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cellar.cli.main import app
from tests.files import fake_gguf

runner = CliRunner()


def test_import_list_show_verify(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    src = fake_gguf(tmp_path / "tiny.gguf")
    result = runner.invoke(app, ["models", "import", str(src), "--name", "tiny", "--store", store])
    assert result.exit_code == 0, result.output
    assert "imported tiny" in result.output
    again = runner.invoke(app, ["models", "import", str(src), "--name", "tiny", "--store", store])
    assert again.exit_code == 0 and "already in the store" in again.output

    listed = runner.invoke(app, ["models", "list", "--store", store])
    assert listed.exit_code == 0 and "tiny" in listed.output

    shown = runner.invoke(app, ["models", "show", "tiny", "--store", store])
    assert json.loads(shown.output)["size"] == 68

    assert runner.invoke(app, ["models", "verify", "--store", store]).exit_code == 0
    stored = tmp_path / "store" / "tiny" / "tiny.gguf"
    stored.write_bytes(b"GGUF" + b"\x01" * 64)
    failed = runner.invoke(app, ["models", "verify", "tiny", "--store", store])
    assert failed.exit_code == 1
    assert "FAIL" in failed.output and "sha256" in failed.output


def test_import_errors_exit_2_with_the_reason(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    args = ["models", "import", str(text), "--name", "n", "--store", str(tmp_path / "s")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "not a GGUF file" in result.output


def test_config_check_reports_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"store: {{path: {tmp_path}}}\nmodels:\n  - {{name: a, source: gone.gguf}}\n")
    result = runner.invoke(app, ["config", "check", "--config", str(config)])
    assert result.exit_code == 2
    assert "c.yaml" in result.output and "models[0].source" in result.output
    fake_gguf(tmp_path / "gone.gguf")
    assert runner.invoke(app, ["config", "check", "--config", str(config)]).exit_code == 0


def test_help_on_every_command() -> None:
    for args in (["--help"], ["models", "--help"], ["serve", "--help"], ["config", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output


def test_listings_for_scripts_and_pipes(tmp_path: Path) -> None:
    """Without a terminal, names and digests are printed whole; `--json` gives JSON."""
    store = ["--store", str(tmp_path / "store")]
    name = "a-model-whose-name-is-much-too-long-for-an-eighty-column-table"
    src = fake_gguf(tmp_path / "tiny.gguf")
    assert runner.invoke(app, ["models", "import", str(src), "--name", name, *store]).exit_code == 0
    listed = runner.invoke(app, ["models", "list", *store])
    [model] = json.loads(runner.invoke(app, ["models", "list", "--json", *store]).output)["models"]
    assert model["name"] == name and model["tags"] == ["latest"]
    assert name in listed.output and model["sha256"] in listed.output and "…" not in listed.output
    history = json.loads(runner.invoke(app, ["models", "history", name, "--json", *store]).output)
    assert [entry["action"] for entry in history["history"]] == ["add"]
    du = json.loads(runner.invoke(app, ["models", "du", "--json", *store]).output)
    assert du["models"][0]["name"] == name and du["total_bytes"] == model["size_bytes"]
    keys = ["--keys-file", str(tmp_path / "keys.json")]
    assert runner.invoke(app, ["keys", "create", "--name", "ops", *keys]).exit_code == 0
    [key] = json.loads(runner.invoke(app, ["keys", "list", "--json", *keys]).output)["keys"]
    assert key["name"] == "ops" and key["state"] == "active" and "hash" not in key
