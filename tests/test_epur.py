import pytest
import torch
from safetensors.torch import load_file, save_file

from finemix_core import epur
from finemix_core.errors import FinemixError
from finemix_core.models import load_pair
from tests.conftest import save_finetuned

CLEAN = ["the movie was good", "the film was bad", "a great plot and a dull cast", "the acting was very good"] * 10


@pytest.fixture(scope="module")
def planted_pair(tmp_path_factory, tiny_pair_dirs):
    """θ_FT with a small drift everywhere and a large drift on the rare word 'cf'."""
    folder = save_finetuned(tmp_path_factory.mktemp("planted") / "ft", tiny_pair_dirs[1], scale=0.01)
    pair0 = load_pair(folder, tiny_pair_dirs[1])
    cf = pair0.tokenizer.convert_tokens_to_ids("cf")
    sd = load_file(folder / "model.safetensors")
    key = "bert.embeddings.word_embeddings.weight"
    sd[key][cf] += 0.5
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    return load_pair(folder, tiny_pair_dirs[1]), cf


def test_planted_trigger_row_ranks_first(planted_pair):
    pair, cf = planted_pair
    t = epur.table(pair, CLEAN, epur.EpurConfig(k=3))
    top = t.sort_values("score", ascending=False)
    assert top.iloc[0]["token"] == "cf" and top.iloc[0]["frequency"] == 0
    assert t["flagged"].sum() == 3 and bool(t.loc[cf, "flagged"])
    the = pair.tokenizer.convert_tokens_to_ids("the")
    assert t.loc[the, "frequency"] == sum(s.split().count("the") for s in CLEAN)


def test_score_is_drift_over_log_of_floored_frequency(planted_pair):
    import numpy as np

    pair, _ = planted_pair
    t = epur.table(pair, CLEAN, epur.EpurConfig(k=1, floor=20))
    expected = t["drift"] / np.log(np.maximum(t["frequency"], 20))
    np.testing.assert_allclose(t["score"], expected)


def test_purify_resets_exactly_k_rows_and_nothing_else(planted_pair):
    pair, cf = planted_pair
    t = epur.table(pair, CLEAN, epur.EpurConfig(k=5))
    ids = t.index[t["flagged"]].tolist()
    ft = pair.ft_state()
    out = epur.purify(pair, ft, ids)
    key = "bert.embeddings.word_embeddings.weight"
    changed = (out[key] != ft[key]).any(1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted(ids) and cf in changed
    assert torch.equal(out[key][ids], pair.pt_state[key][ids])
    assert all(torch.equal(out[k], ft[k]) for k in ft if k != key)
    assert not torch.equal(ft[key][cf], pair.pt_state[key][cf])  # input state untouched


@pytest.mark.parametrize(
    "cfg,msg", [(epur.EpurConfig(k=-1), "outside"), (epur.EpurConfig(k=10**6), "outside"), (epur.EpurConfig(floor=1), "floor")]
)
def test_bad_epur_configs(planted_pair, cfg, msg):
    with pytest.raises(FinemixError, match=msg):
        epur.table(planted_pair[0], CLEAN, cfg)
