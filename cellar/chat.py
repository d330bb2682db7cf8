"""Chat templates: where they come from and how a conversation becomes a prompt.

The server and (later) fine-tuning render conversations through this one module, so a model is
trained on exactly the text it is served with.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from cellar.errors import InvalidRequest

BUILTIN_TEMPLATES = ("gemma", "chatml")


def builtin_template(name: str) -> str:
    return (resources.files("cellar.chat_templates") / f"{name}.jinja").read_text("utf-8")


def load_template_spec(spec: str, base_dir: Path) -> str:
    """Template text for a config value: a built-in name, a .jinja path, or the text itself.

    Raises ValueError with the reason when the value is none of these.
    """
    if spec in BUILTIN_TEMPLATES:
        return builtin_template(spec)
    if "{{" in spec or "{%" in spec:
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise ValueError(
        f"{spec!r} is neither a built-in template ({', '.join(BUILTIN_TEMPLATES)}), "
        f"nor an existing file ({path}), nor template text"
    )


def _raise(message: str) -> None:
    raise InvalidRequest(f"chat template: {message}", param="messages")


class ChatTemplate:
    """A compiled Jinja chat template (sandboxed: templates may come from model files)."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(source)
        self._tokens = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=add_generation_prompt, **self._tokens
            )
        except InvalidRequest:
            raise
        except (TemplateError, TypeError) as exc:
            raise InvalidRequest(
                f"the chat template failed on these messages: {exc}", param="messages"
            ) from None
