from __future__ import annotations

from cellar.engines.llamacpp.textstream import TextStream


def _run(pieces: list[bytes], stops: tuple[str, ...] = ()) -> tuple[list[str], bool]:
    stream = TextStream(stops)
    out = [stream.push(p) for p in pieces]
    out.append(stream.flush())
    return out, stream.stopped


def test_multibyte_characters_split_across_tokens_are_never_broken() -> None:
    data = "Phở ngon 🍜!".encode()
    pieces = [data[i : i + 1] for i in range(len(data))]
    out, _ = _run(pieces)
    assert "".join(out) == "Phở ngon 🍜!"
    assert all("\ufffd" not in part for part in out)


def test_stop_string_across_tokens_is_cut_and_not_emitted() -> None:
    out, stopped = _run([b"Hello wo", b"rld, EN", b"D here", b" more"], stops=("END",))
    assert stopped
    assert "".join(out) == "Hello world, "
    assert all("EN" not in part for part in out)


def test_partial_stop_that_does_not_complete_is_released() -> None:
    out, stopped = _run([b"ab", b"c", b"x"], stops=("abcd",))
    assert not stopped
    assert out[:2] == ["", ""]
    assert "".join(out) == "abcx"


def test_earliest_of_several_stops_wins() -> None:
    out, _ = _run([b"one two three"], stops=("three", "two"))
    assert "".join(out) == "one "


def test_nothing_after_stop() -> None:
    stream = TextStream(("x",))
    assert stream.push(b"ax") == "a"
    assert stream.push(b"more") == ""
    assert stream.flush() == ""
