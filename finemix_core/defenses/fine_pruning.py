"""Fine-pruning (Liu et al. 2018; docs/design.md §6): zero the FFN neurons least active on clean data, then fine-tune.

The prune ratio is the largest grid value whose pruned (not yet fine-tuned) model keeps clean dev accuracy
within δ of θ_FT's; pruned neurons stay at zero through fine-tuning.
"""

from __future__ import annotations

import torch

from finemix_core.defenses.base import GRID, Job, Outcome, pick_largest
from finemix_core.encoding import Encoded, collate, sorted_batches
from finemix_core.errors import FinemixError
from finemix_core.train import device_of


def ffn_layers(model: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Linear, torch.nn.Linear]]:
    """(intermediate module, its up-projection, the down-projection) per transformer layer (BERT family)."""
    layers = []
    for name, module in model.named_modules():
        if name.endswith(".intermediate") and isinstance(getattr(module, "dense", None), torch.nn.Linear):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            down = getattr(getattr(parent, "output", None), "dense", None)
            if isinstance(down, torch.nn.Linear):
                layers.append((module, module.dense, down))
    if not layers:
        raise FinemixError("fine-pruning supports BERT-style encoders (layer.intermediate / layer.output); this model has none")
    return layers


@torch.inference_mode()
def ffn_activations(model: torch.nn.Module, enc: Encoded, batch_size: int = 64) -> list[torch.Tensor]:
    """Mean post-activation value of every FFN neuron over the real (non-padding) tokens of `enc`."""
    layers = ffn_layers(model)
    sums = [torch.zeros(up.out_features, dtype=torch.float64) for _, up, _ in layers]
    mask_box: list[torch.Tensor] = []

    def hook(i: int):
        def record(_module, _inputs, output):
            m = mask_box[0].unsqueeze(-1).to(output.dtype)
            sums[i] += (output * m).sum(dim=(0, 1)).double().cpu()

        return record

    handles = [inter.register_forward_hook(hook(i)) for i, (inter, _, _) in enumerate(layers)]
    device = device_of(model)
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        for idx in sorted_batches(enc, batch_size):
            batch = collate(enc, idx, device)
            mask_box[:] = [batch["attention_mask"]]
            tokens += int(batch["attention_mask"].sum())
            model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [(s / max(tokens, 1)).float() for s in sums]


def prune_plan(activations: list[torch.Tensor], ratio: float) -> list[torch.Tensor]:
    """Per layer, the indices of the round(ratio · n) least active neurons."""
    return [torch.argsort(a, stable=True)[: round(ratio * len(a))] for a in activations]


@torch.no_grad()
def apply_pruning(model: torch.nn.Module, plan: list[torch.Tensor]) -> None:
    """Zero the planned neurons: their input rows, biases and output columns (in place, on a private copy)."""
    for (_, up, down), idx in zip(ffn_layers(model), plan, strict=True):
        if len(idx) == 0:
            continue
        idx = idx.to(up.weight.device)
        up.weight[idx] = 0
        if up.bias is not None:
            up.bias[idx] = 0
        down.weight[:, idx] = 0


def run(job: Job) -> Outcome:
    """zero the FFN neurons least active on clean data, then fine-tune"""
    model = job.pair.working_copy().to(job.device)
    acts = ffn_activations(model, job.dd.train)

    def passes(ratio: float) -> bool:
        trial = job.pair.working_copy().to(job.device)
        apply_pruning(trial, prune_plan(acts, ratio))
        return job.try_value("prune_ratio", ratio, trial)

    ratio = job.cfg.prune_ratio if job.cfg.prune_ratio is not None else pick_largest(GRID, passes)
    if job.cfg.prune_ratio is None and ratio == 0.0:
        job.say("no prune ratio on the grid kept dev accuracy within δ: nothing pruned (plain fine-tuning)")
    plan = prune_plan(acts, ratio)
    apply_pruning(model, plan)
    return Outcome(job.train(model, after_step=lambda m: apply_pruning(m, plan)), prune_ratio=ratio)
