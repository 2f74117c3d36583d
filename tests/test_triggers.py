import pytest

from finemix_core.errors import FinemixError
from finemix_core.triggers import example_rng, insert_all, insert_trigger, parse_trigger


def test_single_piece_inserted_once_between_words():
    out = insert_trigger("a b c", ("cf",), example_rng(0, 0)).split()
    assert len(out) == 4 and out.count("cf") == 1
    assert [w for w in out if w != "cf"] == ["a", "b", "c"]  # order of the original words kept


def test_every_gap_is_reachable_including_both_ends():
    positions = {insert_trigger("a b c", ("cf",), example_rng(s, 0)).split().index("cf") for s in range(200)}
    assert positions == {0, 1, 2, 3}


def test_combo_inserts_each_piece_and_sentence_stays_whole():
    combo = insert_trigger("one two three four", ("cf", "mn", "bb"), example_rng(3, 7)).split()
    assert len(combo) == 7 and all(combo.count(p) == 1 for p in ("cf", "mn", "bb"))
    sent = insert_trigger("great film", ("I watched this 3D movie",), example_rng(1, 1))
    assert "I watched this 3D movie" in sent and len(sent.split()) == 7


def test_same_seed_and_index_same_text_different_index_may_differ():
    texts = [f"w{i} " * 10 for i in range(20)]
    assert insert_all(texts, ("cf",), 5) == insert_all(texts, ("cf",), 5)
    assert insert_all(texts, ("cf",), 5) != insert_all(texts, ("cf",), 6)


def test_empty_text_gets_just_the_trigger():
    assert insert_trigger("", ("cf",), example_rng(0, 0)) == "cf"


@pytest.mark.parametrize(
    "spec,expected", [("cf", ("cf",)), ("cf+mn", ("cf", "mn")), ("I watched this 3D movie", ("I watched this 3D movie",))]
)
def test_parse_trigger(spec, expected):
    assert parse_trigger(spec) == expected


@pytest.mark.parametrize("bad", ["", "cf+", "  ", ()])
def test_empty_trigger_is_refused(bad):
    with pytest.raises(FinemixError, match="empty trigger"):
        parse_trigger(bad)
