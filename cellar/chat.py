"""Chat templates: where they come from and how a conversation becomes a prompt.

The server and (later) fine-tuning render conversations through this one module, so a model is
trained on exactly the text it is served with.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Node
from jinja2.runtime import Context
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


RENDER_TIMEOUT_S = 2.0
MAX_RENDER_CHARS = 8 * 2**20
MAX_RANGE_TOTAL = 1_000_000
"""Items that all of one rendering's `range()` calls may produce together."""
MAX_WIDTH = 4096
"""Largest width a template may pad or format to (`center`, `%10000d`)."""
_range_left: ContextVar[list[int]] = ContextVar("range_left")
_deadline: ContextVar[float] = ContextVar("deadline")
_FORMAT_WIDTH = re.compile(r"%[-+ #0]*(\d+)")


def _raise(message: str) -> None:
    raise InvalidRequest(f"chat template: {message}", param="messages")


def _too_much(why: str) -> InvalidRequest:
    return InvalidRequest(f"the chat template went over its bounds: {why}", param="messages")


def _bounded_range(*args: int) -> range:
    items = range(*args)
    left = _range_left.get([MAX_RANGE_TOTAL])
    left[0] -= len(items)
    if left[0] < 0:
        raise _too_much(f"its loops ask for more than {MAX_RANGE_TOTAL} items")
    return items


class _Ticking(CodeGenerator):
    """Compiles a check of the rendering's deadline into every block (each loop iteration,
    each branch taken), so no loop can run on past it, even one that writes nothing."""

    def blockvisit(self, nodes: Iterable[Node], frame: Frame) -> None:
        self.writeline("environment.tick()")
        super().blockvisit(nodes, frame)


def _center(value: str, width: int = 80) -> str:
    if width > MAX_WIDTH:
        raise _too_much(f"a width of {width}")
    return str(value).center(width)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's sandbox, plus bounds on what a template from a model file can make it do:
    a deadline checked in every block, `range` counting against a budget per rendering, and
    no huge values from `*`, `**`, `%` or `center`."""

    code_generator_class = _Ticking
    intercepted_binops = frozenset({"*", "**", "%"})

    @staticmethod
    def tick() -> None:
        if time.monotonic() > _deadline.get(math.inf):
            raise _too_much(f"it took longer than {RENDER_TIMEOUT_S:g} s")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and isinstance(left, str):
            widths = [int(w) for w in _FORMAT_WIDTH.findall(left)]
            if widths and max(widths) > MAX_WIDTH:
                raise _too_much(f"a width of {max(widths)}")
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise _too_much(f"an exponent of {right}")
        if operator == "*":
            for sized, count in ((left, right), (right, left)):
                if (
                    isinstance(sized, str | list | tuple)
                    and isinstance(count, int)
                    and len(sized) * count > MAX_RENDER_CHARS
                ):
                    raise _too_much("a repeated string or list would be too large")
        return super().call_binop(context, operator, left, right)


class ChatTemplate:
    """A compiled Jinja chat template, sandboxed and bounded (templates may come from model
    files): rendering stops with a 400 past RENDER_TIMEOUT_S or MAX_RENDER_CHARS of output.
    Rendering can take that long: a server calls it off its event loop."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = _Sandbox(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["range"] = _bounded_range
        env.filters["center"] = _center
        self._template = env.from_string(source)
        self.source = source
        self._tokens = {"bos_token": bos_token, "eos_token": eos_token}

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text; `tools` reach a template that renders them (cellar/toolcalls.py)."""
        extra = {"tools": tools} if tools else {}
        budget = _range_left.set([MAX_RANGE_TOTAL])
        deadline = _deadline.set(time.monotonic() + RENDER_TIMEOUT_S)
        pieces: list[str] = []
        size = 0
        try:
            for piece in self._template.generate(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                **self._tokens,
                **extra,
            ):
                size += len(piece)
                if size > MAX_RENDER_CHARS:
                    raise _too_much(f"it wrote more than {MAX_RENDER_CHARS} characters")
                pieces.append(piece)
        except InvalidRequest:
            raise
        except (TemplateError, TypeError, OverflowError, MemoryError) as exc:
            raise InvalidRequest(
                f"the chat template failed on these messages: {exc}", param="messages"
            ) from None
        finally:
            _range_left.reset(budget)
            _deadline.reset(deadline)
        return "".join(pieces)
