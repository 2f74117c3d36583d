"""Remembered defenses: a defense already run on the same inputs is read back instead of run again.

A teacher defends a model with `finemix defend` before class; in class the lab's one-click defense of the same model
shows that result at once instead of a two-minute wait. The key is everything a defense's output depends on — θ_FT's
weights, θ_PT, the defender's data (labelled, dev and pool texts), the defense config, the scan suspects recovery
teaches away and the device type (the scan runs first; an identical one is read back from its own cache) — so a read-back result is the one a new run would make. What
is read back says so (`DefenseResult.read_back`); its `seconds` are the stored run's.

Who writes and who reads is the caller's choice (`Remember`): the CLI always runs and stores (its timing and folder
are a real run's), the lab reads back and stores, the report, sweeps and benchmarks do neither.
Entries live in $FINEMIX_HOME/cache/defense/<key>/ (weights + result.json), written atomically; only the newest
`KEEP` stay, since each holds a whole model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from enum import Enum
from pathlib import Path

import torch
from safetensors import SafetensorError as safetensors_error
from safetensors.torch import load_file, save_file

from finemix_core.atomic import save_dir
from finemix_core.defender import DefenderData
from finemix_core.errors import FinemixError
from finemix_core.models import ModelPair, hash_weights
from finemix_core.store import finemix_home

KEEP = 4  # entries kept (each is one model's weights: ~90 MB for all-MiniLM-L6-v2)


class Remember(Enum):
    OFF = "off"  # neither read nor write (report, sweeps, benchmarks: every run is its own)
    STORE = "store"  # always run, then store the result (the CLI; the lab's "run it again")
    REUSE = "reuse"  # read back an identical earlier run, else run and store (the lab)


def folder() -> Path:
    return finemix_home() / "cache" / "defense"


def defense_key(pair: ModelPair, dd: DefenderData, cfg, device: torch.device, suspects: list) -> str:
    """`suspects`: the (token ids, target) pairs trigger-aware recovery teaches away (from a scan handed in or run)."""
    digest = hashlib.sha256()
    for state in (pair.ft.state_dict(), pair.pt_state):
        hash_weights(digest, state)
    parts = [dd.train.input_ids, dd.train.labels, dd.dev.input_ids, dd.dev.labels, dd.texts, dd.unlabeled_texts]
    parts += [dd.unlabeled.input_ids if dd.unlabeled is not None else None]  # the texts, not their label (a file name)
    parts += [dataclasses.asdict(cfg), device.type, suspects]
    digest.update(json.dumps(parts, default=str).encode())
    return digest.hexdigest()[:20]


def read(key: str) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """The stored (result fields, defended weights) for `key`, or None (absent or unreadable: run again)."""
    entry = folder() / key
    if not (entry / "result.json").is_file():
        return None
    try:
        raw = json.loads((entry / "result.json").read_text())
        state = load_file(entry / "model.safetensors")
    except (OSError, ValueError, safetensors_error):
        return None
    os.utime(entry)  # newest use: kept longest
    return raw, state


def write(key: str, raw: dict, model: torch.nn.Module) -> None:
    """Store the result fields `raw` and `model`'s weights under `key` (atomically), then drop all but the newest KEEP
    entries. A home that cannot be written only costs the next identical defense a re-run."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}  # clone: no shared storage

    def fill(tmp: Path) -> None:
        save_file(state, tmp / "model.safetensors")
        (tmp / "result.json").write_text(json.dumps(raw))

    try:
        save_dir(folder() / key, fill, overwrite=True)
    except (OSError, FinemixError):
        return
    entries = sorted((p for p in folder().iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    for old in entries[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
