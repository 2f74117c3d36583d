import hashlib

import pytest
import torch

from finemix_core.errors import FinemixError
from finemix_core.mixing import MixConfig, layer_of, masks, mix
from finemix_core.models import load_pair


@pytest.fixture(scope="module")
def pair(tiny_pair_dirs):
    return load_pair(*tiny_pair_dirs)


def checksum(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("mode", ["random", "sorted"])
def test_rho_one_is_theta_ft_bit_exact_and_rho_zero_is_theta_pt(pair, mode):
    ft = pair.ft_state()
    full = mix(pair, MixConfig(rho=1.0, mode=mode))
    assert all(torch.equal(full[k], ft[k]) for k in ft)
    none = mix(pair, MixConfig(rho=0.0, mode=mode))
    assert all(torch.equal(none[k], pair.pt_state[k]) for k in pair.shared_keys)
    assert all(torch.equal(none[k], ft[k]) for k in pair.head_keys)  # head kept from θ_FT


@pytest.mark.parametrize("rho", [0.1, 0.37, 0.5, 0.9])
@pytest.mark.parametrize("mode", ["random", "sorted"])
def test_kept_share_is_rho_within_one_element_per_tensor(pair, rho, mode):
    ft = pair.ft_state()
    mixed = mix(pair, MixConfig(rho=rho, mode=mode))
    for k, pt in pair.pt_state.items():
        differs = ft[k] != pt  # positions where kept and reset can be told apart
        kept = (mixed[k] == ft[k]) & differs
        reset = (mixed[k] == pt) & differs
        assert bool((kept | reset | ~differs).all())
        n = pt.numel()
        assert abs(int(masks(pair, MixConfig(rho=rho, mode=mode))[k].sum()) - rho * n) <= 1


def test_same_seed_same_mask_other_seed_other_mask(pair):
    a = masks(pair, MixConfig(rho=0.3, seed=7))
    b = masks(pair, MixConfig(rho=0.3, seed=7))
    c = masks(pair, MixConfig(rho=0.3, seed=8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_sorted_keeps_the_largest_deltas(pair):
    m = masks(pair, MixConfig(rho=0.25, mode="sorted"))
    for k, d in pair.delta.items():
        if m[k].any() and (~m[k]).any():
            assert d.abs()[m[k]].min() >= d.abs()[~m[k]].max()


def test_global_sorted_scope_uses_one_threshold(pair):
    m = masks(pair, MixConfig(rho=0.25, mode="sorted", scope="global"))
    kept = torch.cat([pair.delta[k].abs()[m[k]] for k in m])
    dropped = torch.cat([pair.delta[k].abs()[~m[k]] for k in m])
    assert kept.min() >= dropped.max()
    total = sum(d.numel() for d in pair.delta.values())
    assert abs(len(kept) - 0.25 * total) <= 1


def test_mix_never_changes_its_inputs(pair):
    before_ft, before_pt = checksum(pair.ft_state()), checksum(pair.pt_state)
    for rho in (0.0, 0.3, 1.0):
        out = mix(pair, MixConfig(rho=rho, reinit_head=True))
        for v in out.values():
            v.add_(1.0)  # a caller writing into the result must not reach θ_FT or θ_PT
    assert checksum(pair.ft_state()) == before_ft and checksum(pair.pt_state) == before_pt


def test_reinit_head_replaces_the_classifier(pair):
    out = mix(pair, MixConfig(rho=1.0, reinit_head=True))
    assert not torch.equal(out["classifier.weight"], pair.ft_state()["classifier.weight"])
    assert torch.equal(out["classifier.bias"], torch.zeros_like(out["classifier.bias"]))


@pytest.mark.parametrize(
    "cfg,msg",
    [
        (MixConfig(rho=1.5), "outside"),
        (MixConfig(rho=-0.1), "outside"),
        (MixConfig(mode="x"), "mask mode"),
        (MixConfig(rho=1.0, mode="x"), "mask mode"),
        (MixConfig(scope="x"), "scope"),
        (MixConfig(whole_top_layers=-1), "negative"),
        (MixConfig(rho=0.3, whole_top_layers=3), "2 numbered encoder layers; use 0 to 2"),
    ],
)
def test_bad_mix_configs(pair, cfg, msg):
    with pytest.raises(FinemixError, match=msg):
        mix(pair, cfg)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.77, 1.0])
def test_cached_rank_masks_equal_the_direct_definitions(pair, rho):
    gen = torch.Generator().manual_seed(5)  # same generator, same tensor order as the cached ranks
    got = masks(pair, MixConfig(rho=rho, seed=5))
    for k, d in pair.delta.items():
        assert torch.equal(got[k], random_mask(d.shape, rho, gen))
    srt = masks(pair, MixConfig(rho=rho, mode="sorted"))
    for k, d in pair.delta.items():
        assert torch.equal(srt[k], sorted_mask(d, rho))  # no ties in a random Δ


def test_mix_into_writes_in_place_and_matches_mix(pair):
    from finemix_core.mixing import mix_into

    model = pair.working_copy()
    params = model.state_dict()
    ptrs = {k: v.data_ptr() for k, v in params.items()}
    for rho, mode in ((0.2, "random"), (0.6, "sorted"), (1.0, "random")):
        mix_into(pair, MixConfig(rho=rho, mode=mode), params)
        ref = mix(pair, MixConfig(rho=rho, mode=mode))
        now = model.state_dict()
        assert all(torch.equal(now[k], ref[k]) for k in ref)
        assert all(now[k].data_ptr() == ptrs[k] for k in ptrs)  # the same storage: nothing re-allocated


def test_rank_cache_is_bounded(pair):
    for seed in range(5):
        masks(pair, MixConfig(rho=0.5, seed=seed))
    assert len(pair.mask_ranks) <= 2


@pytest.mark.parametrize("device", ["meta"] + (["cuda"] if torch.cuda.is_available() else []))
def test_mix_into_a_working_model_on_another_device(pair, device):
    """The cached pair stays in host memory; a GPU working model gets each mixed tensor by one transfer.
    Without a GPU, the meta device exercises that path on shapes alone."""
    from finemix_core.mixing import mix_into

    params = pair.working_copy().to(device).state_dict()
    for rho, mode in ((0.4, "random"), (0.7, "sorted")):
        mix_into(pair, MixConfig(rho=rho, mode=mode), params)
        assert all(v.device.type == device for v in params.values())
        assert all(v.device.type == "cpu" for v in pair.ft_state().values())
        if device != "meta":  # meta tensors carry shapes only
            ref = mix(pair, MixConfig(rho=rho, mode=mode))
            assert all(torch.equal(params[k].cpu(), ref[k]) for k in ref)


# ---- oracles: the masks drawn directly, which the cached ranks must reproduce exactly ----


def random_mask(shape: torch.Size, rho: float, generator: torch.Generator) -> torch.Tensor:
    """Exactly round(ρ·n) ones at uniformly random positions."""
    n = shape.numel()
    keep = round(rho * n)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:keep]] = True
    return mask.view(shape)


def sorted_mask(delta: torch.Tensor, rho: float) -> torch.Tensor:
    """Keep the round(ρ·n) entries with the largest |Δ| (ties broken by position)."""
    n = delta.numel()
    keep = round(rho * n)
    mask = torch.zeros(n, dtype=torch.bool)
    if keep:
        mask[torch.topk(delta.abs().flatten(), keep, sorted=False).indices] = True
    return mask.view(delta.shape)


@pytest.mark.parametrize("mode", ["random", "sorted"])
def test_whole_top_layers_keep_theta_ft_there_and_mix_the_rest_exactly_as_without(pair, mode):
    """Per-layer ρ: the top layer's tensors are θ_FT bit-exact, every other tensor is what the plain mix gives."""
    ft = pair.ft_state()
    plain = mix(pair, MixConfig(rho=0.0, mode=mode))
    top = mix(pair, MixConfig(rho=0.0, mode=mode, whole_top_layers=1))
    layers = {layer_of(k) for k in pair.shared_keys} - {None}
    assert layers == {0, 1}  # the tiny model's two encoder layers
    in_top = [k for k in pair.shared_keys if layer_of(k) == 1]
    assert in_top and all(torch.equal(top[k], ft[k]) for k in in_top)
    assert any(not torch.equal(ft[k], pair.pt_state[k]) for k in in_top)  # so the check above could fail
    rest = [k for k in pair.shared_keys if layer_of(k) != 1]
    assert any(k.endswith("word_embeddings.weight") for k in rest)  # embeddings are never a "layer"
    assert all(torch.equal(top[k], plain[k]) for k in rest)
    both = mix(pair, MixConfig(rho=0.0, mode=mode, whole_top_layers=2))
    assert all(torch.equal(both[k], ft[k]) for k in pair.shared_keys if layer_of(k) is not None)


def test_layer_of_reads_the_layer_number_of_common_architectures():
    assert layer_of("bert.encoder.layer.11.attention.self.query.weight") == 11
    assert layer_of("distilbert.transformer.layer.3.ffn.lin1.weight") == 3
    assert layer_of("bert.embeddings.word_embeddings.weight") is None
