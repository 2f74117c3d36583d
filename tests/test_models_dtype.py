"""Half-precision checkpoints are loaded as float32: training in fp16 with AdamW overflows to NaN."""

import torch
from safetensors.torch import load_file, save_file

from finemix_core.models import load_classifier, load_pair


def test_fp16_checkpoints_load_as_float32(tiny_pair_dirs, tmp_path):
    ft, pt = tiny_pair_dirs
    half = tmp_path / "ft16"
    half.mkdir()
    for f in ft.iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            (half / f.name).write_bytes(f.read_bytes())
    sd = load_file(ft / "model.safetensors")
    save_file({k: v.half() for k, v in sd.items()}, half / "model.safetensors", metadata={"format": "pt"})
    model, _ = load_classifier(half)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    pair = load_pair(half, pt)
    assert {v.dtype for v in pair.pt_state.values()} == {torch.float32}
