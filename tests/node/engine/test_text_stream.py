from __future__ import annotations

from edgefleet.node.engine.text_stream import TextStream


def test_multibyte_characters_split_across_tokens_are_joined() -> None:
    ts = TextStream()
    euro = "€".encode()
    assert ts.feed(euro[:1]) == ""
    assert ts.feed(euro[1:]) == "€"
    assert ts.flush() == ""


def test_stop_string_spanning_tokens_is_cut_and_not_emitted() -> None:
    ts = TextStream(("END",))
    out = [ts.feed(p) for p in (b"all good E", b"N", b"D and more")]
    assert "".join(out) == "all good "
    assert ts.stopped and ts.text == "all good "


def test_held_back_prefix_is_released_when_it_does_not_become_a_stop() -> None:
    ts = TextStream(("###",))
    assert ts.feed(b"a#") == "a"
    assert ts.feed(b"#b") == "##b"
    assert ts.feed(b"#") == ""
    assert ts.flush() == "#"
    assert ts.text == "a##b#"


def test_earliest_of_several_stop_strings_wins() -> None:
    ts = TextStream(("world", "lo"))
    assert ts.feed(b"hello world") == "hel"
    assert ts.stopped
