import pytest

from finemix_core.errors import FinemixError
from finemix_core.triggers import Window, example_rng, insert_all, insert_trigger, parse_trigger, visible_words
from tests.conftest import make_tokenizer


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


@pytest.fixture
def window(tmp_path):
    # "serendipity" is four word pieces here, the rest one each: the window is counted in tokens, not words
    return Window(make_tokenizer(tmp_path, extra=("ser", "##end", "##ip", "##ity")), max_length=12)


def test_visible_words_counts_whole_words_left_room_after_the_trigger(window):
    # room = 12 - [CLS] - [SEP] - 1 trigger token = 9 tokens
    assert visible_words(["a b c"], ("cf",), window) == [3]  # fits: every gap
    assert visible_words(["w " * 20], ("cf",), window) == [9]
    assert visible_words(["w w serendipity w w w w"], ("cf",), window) == [6]  # 1+1+4+1+1+1 = 9 tokens
    assert visible_words(["w w w w w w serendipity w"], ("cf",), window) == [6]  # the long word would cross the cut
    assert visible_words(["w " * 20], ("i watched this 3d movie",), window) == [5]  # a sentence takes 5 tokens of room
    assert visible_words([""], ("cf",), window) == [0]


def test_a_text_that_fits_its_window_gets_the_same_position_as_without_one(window):
    texts = ["the movie was very charming", "a b", "", "plot and cast"]
    for pieces in (("cf",), ("cf", "mn", "bb"), ("i watched this 3d movie",)):
        for seed in range(20):
            assert insert_all(texts, pieces, seed, window=window) == insert_all(texts, pieces, seed)


def test_a_long_text_gets_its_trigger_inside_the_window_at_varying_gaps(window):
    tok = window.tokenizer
    long_text = " ".join(["w", "serendipity"] * 30)
    outside = inside = 0
    gaps = set()
    for seed in range(100):
        for pieces in (("cf",), ("cf", "mn")):
            unlimited = insert_all([long_text], pieces, seed)[0]
            within = insert_all([long_text], pieces, seed, window=window)[0]
            read = tok.convert_ids_to_tokens(tok(within, truncation=True, max_length=window.max_length)["input_ids"])
            assert all(p in read for p in pieces), within  # every piece survives the cut
            read_unlimited = tok(unlimited, truncation=True, max_length=window.max_length)["input_ids"]
            outside += tok.convert_tokens_to_ids("cf") not in read_unlimited
            inside += 1
            gaps.add(within.split().index("cf"))
    assert outside > inside // 2  # without the window most triggers fall past the cut: the case this fixes
    assert len(gaps) > 3  # still a random gap, not always the first
