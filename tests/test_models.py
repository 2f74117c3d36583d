import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from finemix_core.errors import FinemixError
from finemix_core.models import load_classifier, load_pair
from tests.conftest import save_finetuned, save_pretrained_encoder


def test_pair_loads_with_shared_encoder_and_head(tiny_pair_dirs):
    ft, pt = tiny_pair_dirs
    pair = load_pair(ft, pt)
    assert set(pair.head_keys) == {"classifier.weight", "classifier.bias"}
    assert "bert.embeddings.word_embeddings.weight" in pair.shared_keys
    assert "bert.pooler.dense.weight" in pair.shared_keys  # both have a pooler
    d = pair.delta["bert.encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(
        d,
        pair.ft_state()["bert.encoder.layer.0.attention.self.query.weight"]
        - pair.pt_state["bert.encoder.layer.0.attention.self.query.weight"],
    )
    assert d.abs().sum() > 0


def test_shape_mismatch_names_the_first_bad_tensor(tmp_path, tiny_pair_dirs):
    other_pt = save_pretrained_encoder(tmp_path / "pt48", intermediate_size=48)
    with pytest.raises(FinemixError, match=r"shape mismatch at bert\.encoder\.layer\.0\.intermediate\.dense\.weight"):
        load_pair(tiny_pair_dirs[0], other_pt)


def test_vocabulary_mismatch_is_refused(tmp_path, tiny_pair_dirs):
    pt = save_pretrained_encoder(tmp_path / "ptv", extra_vocab=("zebra",))
    ft = save_finetuned(tmp_path / "ftv", pt)
    with pytest.raises(FinemixError, match="shape mismatch at bert.embeddings.word_embeddings.weight"):
        load_pair(ft, tiny_pair_dirs[1])


def test_pickle_only_folder_is_refused_with_the_fix(tmp_path, tiny_pair_dirs):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_pair_dirs[0], folder)
    sd = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(FinemixError, match="only pickle weights.*--allow-pickle"):
        load_classifier(folder)


def test_nan_weights_are_refused(tmp_path, tiny_pair_dirs):
    folder = tmp_path / "nan"
    shutil.copytree(tiny_pair_dirs[0], folder)
    sd = load_file(folder / "model.safetensors")
    sd["classifier.weight"][0, 0] = float("nan")
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FinemixError, match="classifier.weight contains NaN"):
        load_classifier(folder)


def test_missing_model_is_one_line(finemix_home):
    with pytest.raises(FinemixError, match="not found.*zoo"):
        load_classifier("no-such-entry")
