from __future__ import annotations

from pathlib import Path

import pytest

from cellar.chat import ChatTemplate, builtin_template, load_template_spec
from cellar.errors import InvalidRequest


def test_gemma_template_folds_system_into_first_user_turn() -> None:
    template = ChatTemplate(builtin_template("gemma"), bos_token="<bos>")
    text = template.render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )


def test_template_spec_forms(tmp_path: Path) -> None:
    assert "im_start" in load_template_spec("chatml", tmp_path)
    (tmp_path / "t.jinja").write_text("{{ messages[0].content }}")
    assert load_template_spec("t.jinja", tmp_path) == "{{ messages[0].content }}"
    assert load_template_spec("{{ 'x' }}", tmp_path) == "{{ 'x' }}"
    with pytest.raises(ValueError, match="neither"):
        load_template_spec("nope", tmp_path)


def test_template_failures_are_client_errors() -> None:
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InvalidRequest, match="roles must alternate"):
        template.render([{"role": "user", "content": "x"}])
    broken = ChatTemplate("{{ messages[5].content.upper() }}")
    with pytest.raises(InvalidRequest):
        broken.render([{"role": "user", "content": "x"}])


def test_templates_are_sandboxed() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(InvalidRequest):
        template.render([])
