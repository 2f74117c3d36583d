"""`finemix bench`: what a live slider move costs, measured as ratios in one process.

Everything runs side by side on the same model pair, the same live set and the same threads, so the
ratios hold even on a noisy machine where absolute seconds drift:
- bare_forward: one inference_mode forward over the pre-tokenised, length-bucketed live set (the floor);
- slider_step: what the lab does on a move — mix at a new ρ from the cached Δ, load into the working
  model, score CACC and ASR — reported as slider_step / bare_forward;
- hf_pipeline: transformers `pipeline("text-classification", batch_size=64)` on the same texts vs our
  tokenise-and-predict path;
- fast path: the lab's bf16 live scoring (weights cast into a bf16 twin, cast included) vs its fp32 scoring on
  the live set (CPU with bf16 support, or CUDA), with the CACC/ASR each gives;
- fine_mix_end_to_end: mix + fine-tune on 128 clean examples + score, wall seconds;
- zoo build seconds per entry, from the cards (measured when each entry was built);
- tokens/s and achieved GFLOP/s (≈ 2 × non-embedding parameters per token) of the forward pass.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from finemix_core import lab, zoo
from finemix_core.defenses import DefenseConfig, defend
from finemix_core.encoding import encode
from finemix_core.errors import FinemixError
from finemix_core.evaluate import Scores, bf16_supported, predict, score
from finemix_core.mixing import MixConfig, mix_into


@dataclass(frozen=True)
class BenchConfig:
    model: str | None = None  # zoo entry (None: word-cf, else the first backdoored entry)
    pretrained: str = "default"  # θ_PT
    device: str = "cpu"  # cpu | cuda
    repeats: int = 5  # timed repetitions per measurement (median reported)
    n_live: int = lab.N_INTERACTIVE  # live set: clean and triggered examples each
    end_to_end: bool = True  # include the fine-tune measurement (~25 s on 2 CPU cores)


@dataclass(frozen=True)
class LiveSetSize:
    clean: int  # clean examples scored per move
    triggered: int  # triggered non-target examples scored per move
    tokens: int  # real tokens over both


@dataclass(frozen=True)
class FastPath:
    """The lab's bf16 live scoring against fp32 on the same weights."""

    kind: str
    seconds: float
    fp32_seconds: float
    speedup_vs_fp32: float
    cacc_fp32: float
    cacc_bf16: float
    asr_fp32: float | None
    asr_bf16: float | None


@dataclass(frozen=True)
class BenchResult:
    """Every measure of one `finemix bench` run (as_dict for --json)."""

    model: str
    device: str
    gpu: str | None
    cpu: str
    threads: int
    torch: str
    live_set: LiveSetSize
    bare_forward_s: float  # one forward over the live set (the floor)
    slider_step_s: float  # mix + load + score, what a slider move costs (its full numbers)
    slider_first_s: float  # mix + score the first slice (lab.N_FIRST clean + triggered): a move's first numbers
    first_slice: int  # examples per side in that slice
    mix_only_s: float
    slider_over_bare: float
    ours_eval_s: float
    hf_pipeline_s: float
    ours_over_hf_throughput: float
    tokens_per_s: float
    gflops_per_s: float
    fast_path: FastPath | None  # None: no bf16 support
    fine_mix_end_to_end_s: float | None  # None: skipped
    zoo_build_s: dict[str, float | None]  # from the cards
    peak_rss_mib: float
    lab_two_models_rss_mib: float | None
    lab_memory_models: list[str] | None
    repeats: int

    def as_dict(self) -> dict:
        return asdict(self)


def _median_seconds(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up: allocator, kernels, caches
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _default_model() -> str:
    cards = zoo.read_entries()
    names = [c["name"] for c in cards if c["attack"] != "clean"]
    if not names:
        raise FinemixError("the zoo has no backdoored entry; run 'finemix zoo build --quick --only clean,word-cf' first")
    return "word-cf" if "word-cf" in names else names[0]


def _live_texts(lm: lab.LabModel) -> list[str]:
    from finemix_core.data import text_columns

    test = lm.ctx.dsd["test"]
    if text_columns(test) != ["text"]:
        raise FinemixError("bench compares against the HF pipeline on single-sentence data; pick a single-sentence model")
    return list(test.select(range(len(lm.interactive.clean)))["text"])


LAB_MEMORY_PROBE = """
import json, sys
from finemix_core import lab
names = sys.argv[1:]
held = []
for name in names:
    lm = lab.load(name, device="cpu")
    bench = lab.Workbench(lm)
    bench.mix_scores(0.5)
    held.append((lm, bench))
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
print(json.dumps({"models": names, "rss_mib": rss / 1024}))
"""


def lab_memory(names: list[str]) -> dict | None:
    """RSS of a fresh process holding what the lab holds for each model: pair, Δ, data, live set, one workbench."""
    import json
    import subprocess
    import sys

    if not Path("/proc/self/status").exists():
        return None
    out = subprocess.run([sys.executable, "-c", LAB_MEMORY_PROBE, *names], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise FinemixError(
            f"lab memory probe failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(cfg: BenchConfig, log: Callable[[str], None] = lambda _m: None) -> BenchResult:
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FinemixError("--device cuda but no CUDA GPU is visible; use --device cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = cfg.model or _default_model()
    log(f"loading {name} …")
    lm = lab.load(name, cfg.pretrained, n_interactive=cfg.n_live, device=device)
    bench = lab.Workbench(lm)
    es = lm.interactive
    sets = [es.clean] + ([es.triggered] if es.triggered is not None else [])
    model = bench.model

    def bare() -> None:
        for enc in sets:
            predict(model, enc)

    rhos = iter(np.tile(np.round(np.linspace(0.05, 0.95, 19), 2), 100))

    def slider() -> None:
        bench.mix_scores(float(next(rhos)))

    def mix_only() -> None:
        mix_into(lm.pair, MixConfig(rho=float(next(rhos))), bench.params)

    def slider_first() -> None:
        bench.mix(float(next(rhos)))
        bench.score(first=lab.N_FIRST)

    log("timing bare forward, slider step, mix alone …")
    t_bare = _median_seconds(bare, cfg.repeats, sync)
    t_slider = _median_seconds(slider, cfg.repeats, sync)
    t_first = _median_seconds(slider_first, cfg.repeats, sync)
    t_mix = _median_seconds(mix_only, cfg.repeats, sync)

    # ours vs the HF pipeline: same texts, same model weights, same threads, tokenisation included on both sides
    texts = _live_texts(lm)
    from datasets import Dataset
    from transformers import pipeline

    tok = lm.pair.tokenizer
    pipe = pipeline("text-classification", model=model, tokenizer=tok, batch_size=64, device=device)

    def ours_eval() -> None:
        predict(model, encode(tok, Dataset.from_dict({"text": texts, "label": [0] * len(texts)})))

    def hf_eval() -> None:
        pipe(texts, truncation=True, max_length=128)

    log("timing our eval vs the HF pipeline …")
    t_ours = _median_seconds(ours_eval, cfg.repeats, sync)
    t_hf = _median_seconds(hf_eval, cfg.repeats, sync)

    # reduced precision: the lab's live scoring in bf16 vs fp32, same working weights (θ_FT), speed and agreement
    fast = None
    if bf16_supported(device):
        bench.mix_scores(1.0)

        def live(fast_on: bool) -> Scores:
            bench.fast = fast_on
            return bench.score()

        t_fp32_live = _median_seconds(lambda: live(False), cfg.repeats, sync)
        t_bf16 = _median_seconds(lambda: live(True), cfg.repeats, sync)
        fp32, low = live(False), live(True)
        bench.fast = False
        fast = FastPath(
            "bf16 weights (cast once per move)", t_bf16, t_fp32_live, t_fp32_live / t_bf16, fp32.cacc, low.cacc, fp32.asr, low.asr
        )

    tokens = sum(len(ids) for enc in sets for ids in enc.input_ids)
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    non_embedding = sum(p.numel() for p in model.parameters()) - emb

    e2e = None
    if cfg.end_to_end:
        log("timing mix + fine-tune on 128 clean examples + score …")
        dd = lm.ctx.defender(128, 256, 0)
        start = time.perf_counter()
        result = defend(lm.pair, dd, DefenseConfig(method="fine-mixing", rho=0.3), device)
        score(result.model, es)
        sync()
        e2e = time.perf_counter() - start

    cards = {c["name"]: c for c in zoo.read_entries()}
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    others = [n for n, c in cards.items() if n != name and c["attack"] != "clean"]
    log("measuring a fresh lab process with two models loaded …")
    memory = lab_memory([name, others[0]]) if others and device.type == "cpu" else None
    return BenchResult(
        model=name,
        device=device.type,
        gpu=torch.cuda.get_device_name() if device.type == "cuda" else None,
        cpu=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        live_set=LiveSetSize(len(es.clean), len(es.triggered or []), tokens),
        bare_forward_s=t_bare,
        slider_step_s=t_slider,
        slider_first_s=t_first,
        first_slice=lab.N_FIRST,
        mix_only_s=t_mix,
        slider_over_bare=t_slider / t_bare,
        ours_eval_s=t_ours,
        hf_pipeline_s=t_hf,
        ours_over_hf_throughput=t_hf / t_ours,
        tokens_per_s=tokens / t_bare,
        gflops_per_s=2 * non_embedding * tokens / t_bare / 1e9,
        fast_path=fast,
        fine_mix_end_to_end_s=e2e,
        zoo_build_s={n: c.get("build_seconds") for n, c in cards.items()},
        peak_rss_mib=rss_mib,
        lab_two_models_rss_mib=None if memory is None else memory["rss_mib"],
        lab_memory_models=None if memory is None else memory["models"],
        repeats=cfg.repeats,
    )
