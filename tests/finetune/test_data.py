"""Training data: every bad line named with its number, loss only on what the model should say."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellar.chat import ChatTemplate, builtin_template
from cellar.finetune.data import IGNORE, DataError, Encoder, encode_all, read_examples

BOS, EOS = 2, 1


def chars(text: str) -> list[int]:
    """A stand-in tokenizer: one token per character (ids above the specials)."""
    return [1000 + ord(c) for c in text]


def text_of(ids: list[int]) -> str:
    return "".join(chr(i - 1000) for i in ids if i >= 1000)


def encoder() -> Encoder:
    template = ChatTemplate(builtin_template("gemma"), bos_token="", eos_token="")
    return Encoder(chars, template, bos=BOS, eos=EOS)


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_every_bad_line_is_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
        '{"messages": [{"role": "user", "content": "hi"}',
        '{"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]}',
        '{"messages": [{"role": "robot", "content": "hi"}]}',
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}',
        "",
        '{"prompt": "a", "completion": ""}',
        '{"text": "free text"}',
        "[1, 2]",
    )
    with pytest.raises(DataError) as caught:
        read_examples(path)
    lines = str(caught.value).splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"{path}:{n}" for n in (2, 3, 4, 5, 7, 8, 9)
    ]
    message = str(caught.value)
    assert "bad JSON" in message and "messages[0] has no role" in message
    assert "'robot' is not one of system, user, assistant" in message
    assert message.count("empty example") == 2
    assert "expected `messages`, or `prompt` and `completion`" in message


def test_only_the_assistant_turns_are_learned(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"messages": [{"role": "system", "content": "Be brief."}, '
        '{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, '
        '{"role": "user", "content": "Name?"}, {"role": "assistant", "content": "Bart."}]}',
    )
    (item,) = encode_all(encoder(), read_examples(path), path, 512)
    assert item.input_ids[0] == BOS and item.labels[0] == IGNORE
    learned = text_of(
        [t for t, label in zip(item.input_ids, item.labels, strict=True) if label != IGNORE]
    )
    assert learned == "Hello!<end_of_turn>\nBart.<end_of_turn>\n"
    # the whole sequence is what the server renders for this conversation
    assert text_of(item.input_ids) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        "Hello!<end_of_turn>\n<start_of_turn>user\nName?<end_of_turn>\n<start_of_turn>model\n"
        "Bart.<end_of_turn>\n"
    )


def test_completion_pairs_learn_the_completion_and_eos(tmp_path: Path) -> None:
    path = write(tmp_path, '{"prompt": "The mascot is", "completion": " Bart."}')
    (item,) = encode_all(encoder(), read_examples(path), path, 512)
    assert item.input_ids == [BOS, *chars("The mascot is"), *chars(" Bart."), EOS]
    assert item.labels == [IGNORE] * 14 + [*chars(" Bart."), EOS]


def test_too_long_examples_are_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"prompt": "short", "completion": " ok"}',
        '{"prompt": "' + "x" * 40 + '", "completion": " too long"}',
    )
    with pytest.raises(DataError, match=r"train\.jsonl:2: 51 tokens, longer than the context"):
        encode_all(encoder(), read_examples(path), path, 32)


def test_tool_conversations_are_learned_as_they_are_served(tmp_path: Path) -> None:
    """The shipped tool-use set reads cleanly; a call is learned as its Hermes block, and the
    function list the server writes is part of the (unlearned) prompt."""
    shipped = Path(__file__).parents[2] / "finetune" / "examples"
    train = read_examples(shipped / "tool-use-train.jsonl")
    assert len(train) >= 100 and len(read_examples(shipped / "tool-use-eval.jsonl")) == 30
    called = next(e for e in train if e.messages and "<tool_call>" in e.messages[-1]["content"])
    assert called.messages is not None and called.messages[0]["role"] == "system"
    assert "<tools>" in called.messages[0]["content"]
    encoded = encoder().encode(called)
    learned = text_of(
        [i for i, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE]
    )
    assert learned.startswith('<tool_call>\n{"name": "') and "<tools>" not in learned
    stray = '{"messages": [{"role": "tool", "tool_call_id": "x", "content": "1"}, ' + (
        '{"role": "assistant", "content": "ok"}]}'
    )
    with pytest.raises(DataError, match=r"train.jsonl:1: .*messages\[0\].tool_call_id"):
        read_examples(write(tmp_path, stray))
