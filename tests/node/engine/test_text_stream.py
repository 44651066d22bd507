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


def test_streamed_text_is_the_whole_text_cut_at_the_earliest_stop_for_any_split() -> None:
    import random

    rng = random.Random(26)
    alphabet = ["a", "b", "#", "<", "/", "s", ">", "é", "€", "\n"]
    stop_sets = [(), ("</s>",), ("##",), ("ab", "b#"), ("\n\n", "<s"), ("€€",)]
    for _ in range(400):
        whole = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        stops = rng.choice(stop_sets)
        data = whole.encode()
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 8)))) if len(data) > 1 else []
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        ts = TextStream(stops)
        out = "".join(ts.feed(p) for p in pieces) + ts.flush()
        hits = [i for i in (whole.find(s) for s in stops) if i >= 0]
        expected = whole[: min(hits)] if hits else whole
        assert out == expected == ts.text, (whole, stops, pieces)
        assert ts.stopped == bool(hits)
