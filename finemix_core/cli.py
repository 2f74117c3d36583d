"""The `finemix` command line: zoo build|list, evaluate, defend, sweep, report, bench, lab, datasets."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from finemix_core import data, zoo
from finemix_core.atomic import check_new, check_writable, write_csv
from finemix_core.config import DEFAULT_CLEAN_SIZE, RecoveryConfig, zoo_dir
from finemix_core.errors import FinemixError
from finemix_core.remembered import Remember

app = typer.Typer(help="Fine-mixing and E-PUR: remove backdoors from fine-tuned language models.", no_args_is_help=True)
zoo_app = typer.Typer(help="Build and list the zoo of backdoored models.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
console = Console()


def user_errors(fn: Callable) -> Callable:
    """Turn a FinemixError into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FinemixError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def zoo_table(cards: list[dict], title: str, width: int | None = None) -> Table:
    """The zoo's cards as a table; a terminal narrower than 120 columns gets the seven that fit in 80 (--json has all)."""
    narrow = (width or console.width) < 120
    cols = (
        ("name", "attack", "CACC", "ASR", "floor", "bias", "verdict")
        if narrow
        else ("name", "attack", "trigger", "data", "train n", "CACC", "ASR", "target bias", "ASR floor", "built in", "verdict")
    )
    table = Table(
        title=title + (" — narrow terminal: trigger, data, size and build time with --json" if narrow else ""),
        title_justify="left",
        pad_edge=False,
    )
    for col in cols:
        table.add_column(col, no_wrap=True)
    clean = next((c for c in cards if c["attack"] == "clean"), None)
    for c in cards:
        verdict = ""
        if c["attack"] != "clean" and c.get("asr") is not None:
            ok_asr = c["asr"] >= 0.9
            ok_cacc = clean is None or c["cacc"] >= clean["cacc"] - 0.03
            verdict = "works" if ok_asr and ok_cacc else ("weak ASR" if not ok_asr else "CACC drop")
        values = {
            "name": c["name"],
            "attack": c["attack"],
            "trigger": c.get("trigger_text") or "—",
            "data": Path(str(c["dataset"])).name,
            "train n": str(c["train_size"]),
            "CACC": _fmt(c["cacc"]),
            "ASR": _fmt(c.get("asr")),
            "target bias": _fmt(c.get("target_bias")),
            "bias": _fmt(c.get("target_bias")),
            "ASR floor": _fmt(c.get("asr_floor")),
            "floor": _fmt(c.get("asr_floor")),
            "built in": f"{c['build_seconds']:.0f}s",
            "verdict": verdict,
        }
        table.add_row(*(values[col] for col in cols))
    return table


@zoo_app.command("build")
@user_errors
def zoo_build(
    quick: Annotated[bool, typer.Option(help="Small training sets (1,200 examples, 400 test): for tests and demos.")] = False,
    only: Annotated[str | None, typer.Option(help="Comma-separated entry names to build (default: all).")] = None,
) -> None:
    """Build the default zoo on Rotten Tomatoes (skips entries already built; resumable)."""
    specs = zoo.default_specs(quick)
    if only:
        wanted = [n.strip() for n in only.split(",")]
        unknown = [n for n in wanted if n not in {s.name for s in specs}]
        if unknown:
            raise FinemixError(f"unknown zoo entry '{unknown[0]}'; choose from {', '.join(s.name for s in specs)}")
        specs = [s for s in specs if s.name in wanted]
    bars: dict[str, tqdm] = {}

    def progress_factory(spec):
        bar = tqdm(desc=f"building {spec.name}", unit="step", file=sys.stderr, leave=False)
        bars[spec.name] = bar

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        return update

    def on_entry(spec, card):
        if spec.name in bars:
            bars[spec.name].close()
        typer.echo(f"{spec.name}: " + ("already built" if card is None else f"built in {card['build_seconds']:.0f}s"), err=True)

    cards = zoo.build(specs, eval_limit=400 if quick else None, on_entry=on_entry, progress_factory=progress_factory)
    console.print(zoo_table(cards, f"zoo in {zoo_dir()}"))


@zoo_app.command("list")
@user_errors
def zoo_list(as_json: Annotated[bool, typer.Option("--json", help="One JSON array of cards.")] = False) -> None:
    """Show the built entries with their cards."""
    cards = zoo.read_entries()
    if as_json:
        typer.echo(json.dumps(cards, indent=2))
        return
    if not cards:
        typer.echo(f"the zoo in {zoo_dir()} is empty; run 'finemix zoo build' (or --quick)")
        return
    console.print(zoo_table(cards, f"zoo in {zoo_dir()}"))


@app.command("evaluate")
@user_errors
def evaluate_cmd(
    model: Annotated[str, typer.Option(help="Zoo entry name or local HF classifier folder.")],
    data_name: Annotated[
        str | None, typer.Option("--data", help="Dataset name or CSV path (default: the card's, else rt).")
    ] = None,
    trigger: Annotated[str | None, typer.Option(help="Trigger, 'w1+w2' for several pieces (default: the card's).")] = None,
    target: Annotated[int | None, typer.Option(help="Target label of the backdoor (default: the card's, else 1).")] = None,
    floor_model: Annotated[
        str | None,
        typer.Option(help="Clean model for the ASR floor (default: the zoo's 'clean' when trained on the same data and split)."),
    ] = None,
    split_seed: Annotated[
        int | None, typer.Option(help="Seed of the train/dev/test split (default: the card's, else 0).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate on the first N test examples only.")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Load pickle weights (weights_only=True).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """CACC, ASR, target bias and the clean ASR floor of a model on a dataset's test split."""
    from finemix_core.evaluate import best_device, score
    from finemix_core.experiment import data_warning as experiment_data_warning
    from finemix_core.experiment import prepare_scoring
    from finemix_core.models import load_classifier, load_tokenizer, named_labels, read_card
    from finemix_core.triggers import parse_trigger

    if limit is not None and limit <= 0:
        raise FinemixError(f"--limit must be positive, got {limit}")
    pieces = parse_trigger(trigger) if trigger is not None else None
    if data_name is not None:
        data.check_name(data_name)
    clf, src = load_classifier(model, allow_pickle=allow_pickle)
    device = best_device()
    sc = prepare_scoring(
        read_card(src),
        load_tokenizer(src),
        clf.config.num_labels,
        str(src),
        data_name,
        split_seed,
        pieces,
        target,
        limit,
        floor_model,
        device,
        named_labels(clf.config),
    )
    if data_name is None and (warn := experiment_data_warning(read_card(src), model, sc.data_name)):
        typer.echo(f"warning: {warn}", err=True)
    scores = score(clf.to(device), sc.eval_set)
    data_name, split_seed, pieces, floor = sc.data_name, sc.split_seed, sc.eval_set.trigger, sc.floor
    tgt, floor_src = sc.eval_set.target, sc.floor_model
    result = {
        "model": str(src),
        "data": data_name,
        "split_seed": split_seed,
        "trigger": "+".join(pieces) if pieces else None,
        "target": tgt if pieces else None,
        **scores.as_dict(),
        "asr_floor": floor,
        "floor_model": floor_src if floor is not None else None,
        "device": device.type,
    }
    if as_json:
        typer.echo(json.dumps(result))
        return
    table = Table(title=f"{src} on {data_name} (test split, seed {split_seed})")
    for col in ("CACC", "ASR", "target bias", "ASR floor", "n test", "n non-target", "trigger"):
        table.add_column(col)
    table.add_row(
        _fmt(scores.cacc),
        _fmt(scores.asr),
        _fmt(scores.target_bias),
        _fmt(floor),
        str(scores.n_clean),
        str(scores.n_nontarget),
        result["trigger"] or "—",
    )
    console.print(table)


# ---- defenses ----


class _ProgressBar:
    """A tqdm bar created on the first step, so an early error prints its one line and nothing else."""

    def __init__(self, desc: str):
        self.desc, self.bar, self.runs = desc, None, 0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None and done < self.bar.n:  # a new fine-tune began (the next auto-ρ candidate): a fresh bar
            self.close()
            self.bar = None
        if self.bar is None:
            self.runs += 1
            self.bar = tqdm(desc=f"{self.desc} (fine-tune {self.runs})", unit="step", file=sys.stderr, leave=False)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _unit_interval(spec: str, flag: str, unset: str, why: str) -> float | None:
    """A number in [0, 1] given to `flag`, or None for the word `unset`; `why` explains the range in the error."""
    if spec.strip() == unset:
        return None
    try:
        value = float(spec)
    except ValueError:
        raise FinemixError(f"{flag} must be {unset!r} or a number in [0, 1], got '{spec}'") from None
    if not 0.0 <= value <= 1.0:
        raise FinemixError(f"{flag} {value} outside [0, 1]; {why}")
    return value


def _rho(spec: str) -> float | None:
    return _unit_interval(spec, "--rho", "auto", "0 keeps θ_PT, 1 keeps θ_FT (or use auto)")


@app.command("defend")
@user_errors
def defend_cmd(
    model: Annotated[str, typer.Option(help="Zoo entry name or ANY local HF classifier folder fine-tuned from θ_PT.")],
    out: Annotated[Path, typer.Option(help="Folder for the defended model (HF format + finemix.json).")],
    method: Annotated[
        str,
        typer.Option(
            help="[epur+]BASE[+distill], BASE one of fine-mixing, fine-mixing-sorted, fine-tuning, "
            "fine-pruning, none (default: the dev-chosen recipe; see `finemix methods`)."
        ),
    ] = "default",
    pretrained: Annotated[str, typer.Option(help="θ_PT: 'default' (offline all-MiniLM-L6-v2) or a folder.")] = "default",
    clean_data: Annotated[
        str | None,
        typer.Option(
            help="Defender's clean data: dataset name, or a CSV text,label split into train "
            "and dev only (default: the card's dataset)."
        ),
    ] = None,
    eval_data: Annotated[
        str | None, typer.Option(help="Labelled data to score on, its test split (default: the card's dataset).")
    ] = None,
    unlabeled: Annotated[
        str | None, typer.Option(help="Clean unlabelled texts for recovery: .txt (one per line) or CSV with text.")
    ] = None,
    clean_size: Annotated[
        int,
        typer.Option(help="Clean training examples for the fine-tune step (the default takes a smaller CSV's whole train part)."),
    ] = DEFAULT_CLEAN_SIZE,
    rho: Annotated[str, typer.Option(help="Reserve ratio in [0, 1], or 'auto' (chosen on clean dev accuracy).")] = "auto",
    delta: Annotated[
        float, typer.Option(help="auto-ρ / prune-ratio tolerance: allowed drop of clean dev accuracy vs θ_FT (0.02 = 2 points).")
    ] = 0.02,
    epur_k: Annotated[int, typer.Option(help="E-PUR: embedding rows reset to θ_PT.")] = 200,
    epur_floor: Annotated[float, typer.Option(help="E-PUR: frequency floor c.")] = 20.0,
    distill_weight: Annotated[
        float, typer.Option(help="Recovery (+distill): weight of the distillation term.")
    ] = RecoveryConfig.weight,
    temperature: Annotated[float, typer.Option(help="Recovery (+distill): temperature T.")] = RecoveryConfig.temperature,
    passes: Annotated[float, typer.Option(help="Recovery (+distill): passes over the unlabelled texts.")] = RecoveryConfig.passes,
    drop_flagged: Annotated[
        int, typer.Option(help="Recovery (+distill): drop unlabelled texts holding any of E-PUR's top N tokens.")
    ] = 0,
    general_text: Annotated[
        int,
        typer.Option(
            help="Recovery (+distill): top a smaller unlabelled pool up to N texts with offline general text (0: never)."
        ),
    ] = RecoveryConfig.min_pool,
    label_weight: Annotated[
        float,
        typer.Option(help="Recovery (+distill): weight of the labelled cross-entropy beside distillation (0: labels only choose ρ)."),
    ] = RecoveryConfig.label_weight,
    augment_copies: Annotated[
        int,
        typer.Option(help="Recovery (+distill): word-dropout copies of each unlabelled text, labelled by θ_FT (same steps; 0: none)."),
    ] = RecoveryConfig.augment_copies,
    feature_weight: Annotated[
        float,
        typer.Option(help="Recovery (+distill): weight of matching θ_FT's last-layer [CLS] states on the pool (0: logits only)."),
    ] = RecoveryConfig.feature_weight,
    found_features: Annotated[
        bool,
        typer.Option(
            help="With --feature-weight and --found-rho: the found-ρ try matches θ_FT's [CLS] states too "
            "(--no-found-features: the feature term in the low-ρ search only)."
        ),
    ] = RecoveryConfig.found_features,
    found_rho: Annotated[
        str,
        typer.Option(
            help="Auto-ρ with recovery: when the scan finds backdoor evidence, try this ρ first; kept only if dev accuracy "
            "passes and the check (--found-check) finds nothing still firing. 'never': the low-ρ search only."
        ),
    ] = "never" if RecoveryConfig.found_rho is None else f"{RecoveryConfig.found_rho:g}",
    found_flip_max: Annotated[
        float,
        typer.Option(
            help="With --found-rho: the tried ρ is kept only if each of the scan's suspects flips at most this share of "
            "held-aside dev sentences on it."
        ),
    ] = RecoveryConfig.found_flip_max,
    found_check: Annotated[
        str,
        typer.Option(
            help="With --found-rho: 'finalists' (no new search: the suspects and every trigger that fired on θ_FT toward "
            "their class, measured on the result) or 'rescan' (a fresh scan of the result first, 60–90 s more)."
        ),
    ] = RecoveryConfig.found_check,
    found_min_flip: Annotated[
        float,
        typer.Option(
            help="With --found-rho: try it only if the scan's best suspect alone flips at least this share of held-aside "
            "sentences on θ_FT (a weaker one may be a piece of a longer trigger; 0: always)."
        ),
    ] = RecoveryConfig.found_min_flip,
    found_pieces: Annotated[
        bool,
        typer.Option(
            help="With --found-rho: the min-flip gate also reads each shorter run of the best suspect's words that is a "
            "suspect by itself (a grown phrase can fire more than the piece of a longer trigger it holds)."
        ),
    ] = RecoveryConfig.found_pieces,
    found_unrelated: Annotated[
        bool,
        typer.Option(
            help="With --found-check finalists: also measure fired triggers that share no word piece with a suspect "
            "(off: those are taken as the task's own vocabulary, e.g. 'refreshing', and left out)."
        ),
    ] = RecoveryConfig.found_unrelated,
    match_dev: Annotated[
        bool,
        typer.Option(
            help="After recovery, one output bias so the defended model puts as many dev texts (labels unused) in each "
            "class as its teacher does; kept only if it moves the boundary away from the scan's suspected class."
        ),
    ] = RecoveryConfig.match_dev,
    found_steps: Annotated[
        float,
        typer.Option(
            help="With --found-rho: the found-ρ try trains for this share of the usual steps, in (0, 1] (it starts from "
            "θ_FT, so recovery has less to do)."
        ),
    ] = RecoveryConfig.found_steps,
    precision: Annotated[
        str,
        typer.Option(
            help="Recovery's training arithmetic: auto (bf16 where this device runs it natively, else fp32), fp32, or "
            "bf16 (bfloat16 autocast; faster on a CPU with avx512_bf16 or a recent GPU, several times slower on a CPU "
            "without it; the model stays float32)."
        ),
    ] = RecoveryConfig.precision,
    whole_top_layers: Annotated[
        int,
        typer.Option(
            help="With recovery: the low-ρ search keeps θ_FT's top N encoder layers whole (ρ 1 there, the grid's ρ "
            "below); 0 mixes every layer."
        ),
    ] = RecoveryConfig.whole_top_layers,
    two_pass_below: Annotated[
        float,
        typer.Option(
            help="With recovery: a step reads its labelled and pool batches in two forward passes instead of one padded "
            "pass when, over the run's batches, two read at most this share of one pass's tokens (long labelled texts "
            "beside short pool texts); 0 always one pass, 1 whenever cheaper."
        ),
    ] = RecoveryConfig.two_pass_below,
    lr: Annotated[float | None, typer.Option(help="Fine-tune learning rate (default: the documented defense budget).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Fine-tune epochs (default: the documented defense budget).")] = None,
    trigger: Annotated[str | None, typer.Option(help="Known trigger for scoring, 'w1+w2' (default: the card's).")] = None,
    target: Annotated[int | None, typer.Option(help="Known target label for scoring (default: the card's).")] = None,
    seed: Annotated[int, typer.Option(help="Clean-set draw, masks, training order.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Score on the first N test examples only.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Load pickle weights (weights_only=True).")] = False,
    no_scan: Annotated[
        bool,
        typer.Option(
            "--no-scan",
            help="Do not scan θ_FT for a suspected trigger (no estimate for a card-less model, recovery not trigger-aware).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Defend a model and write the defended model as a standard HF folder."""
    from finemix_core import experiment
    from finemix_core.defenses import DEFAULT_METHOD, DEFENSE_TRAIN, DefenseConfig
    from finemix_core.epur import EpurConfig
    from finemix_core.evaluate import best_device
    from finemix_core.mixing import top_layer_keys
    from finemix_core.triggers import parse_trigger

    check_new(out, overwrite)
    check_writable(out)
    if limit is not None and limit <= 0:
        raise FinemixError(f"--limit must be positive, got {limit}")
    if clean_size <= 0:
        raise FinemixError(f"--clean-size must be positive, got {clean_size}")
    if epur_k < 0:
        raise FinemixError(f"--epur-k {epur_k} must be ≥ 0")
    if not 0.0 <= delta <= 1.0:
        raise FinemixError(f"--delta {delta} outside [0, 1]; it is an accuracy drop, e.g. 0.02 for 2 points")
    train = DEFENSE_TRAIN
    if lr is not None or epochs is not None:
        if (lr is not None and lr <= 0) or (epochs is not None and epochs <= 0):
            raise FinemixError("--lr and --epochs must be positive")
        train = dataclasses.replace(train, lr=lr or train.lr, epochs=epochs or train.epochs)
    method = DEFAULT_METHOD if method == "default" else method
    cfg = DefenseConfig(
        method=method,
        rho=_rho(rho),
        delta=delta,
        epur=EpurConfig(k=epur_k, floor=epur_floor),
        seed=seed,
        train=train,
        recovery=RecoveryConfig(
            distill_weight,
            temperature,
            passes,
            drop_flagged,
            consistency=not no_scan,
            min_pool=general_text,
            label_weight=label_weight,
            augment_copies=augment_copies,
            feature_weight=feature_weight,
            found_features=found_features,
            found_rho=_unit_interval(found_rho, "--found-rho", "never", "1 keeps all of θ_FT after E-PUR (or use never)"),
            found_flip_max=found_flip_max,
            found_check=found_check,
            found_min_flip=found_min_flip,
            found_pieces=found_pieces,
            found_unrelated=found_unrelated,
            match_dev=match_dev,
            found_steps=found_steps,
            precision=precision,
            whole_top_layers=whole_top_layers,
            two_pass_below=two_pass_below,
        ),
    )
    ctx = experiment.prepare(
        model,
        pretrained,
        eval_data,
        trigger=parse_trigger(trigger) if trigger is not None else None,
        target=target,
        eval_limit=limit,
        allow_pickle=allow_pickle,
        device=best_device(),
        clean_data=clean_data,
        unlabeled=unlabeled,
    )
    if eval_data is None and clean_data is None and (warn := experiment.data_warning(ctx.pair.card, model, ctx.data_name)):
        typer.echo(f"warning: {warn}", err=True)
    if cfg.uses_epur and epur_k > len(ctx.pair.tokenizer):
        raise FinemixError(
            f"--epur-k {epur_k} outside 0..{len(ctx.pair.tokenizer)} (the vocabulary size); pick a K in that range"
        )
    if cfg.distills:
        top_layer_keys(ctx.pair.shared_keys, whole_top_layers)  # more layers than the model has: refused before the scan
    say = lambda m: tqdm.write(m, file=sys.stderr)  # noqa: E731
    say(ctx.parts(clean_size).line())
    if warn := experiment.label_warning(ctx):
        say(f"warning: {warn}")
    if cfg.distills and (note := experiment.precision_note(cfg.recovery, ctx.device)):
        say(f"note: {note}")
    before = None
    if ctx.eval_set.trigger is None and not no_scan:
        # no trigger known: scan θ_FT from the defender's clean data first, so the defense ends with an estimate
        say("no trigger known for this model: scanning θ_FT from the clean data first (--no-scan skips)")
        before = experiment.run_scan(ctx, clean_size=clean_size, seed=seed, log=say)
        say(f"scan ({before.time_text}): {before.message(ctx.class_names)}")
    bar = _ProgressBar(method)
    try:
        # always a real run (its time and folder are this run's); stored so the lab's one-click defense can read it back
        result, row = experiment.run_defense(
            ctx, cfg, clean_size, progress=bar, log=say, scan_result=before, remember=Remember.STORE
        )
    finally:
        bar.close()
    estimate = None
    found = result.scan or before  # trigger-aware recovery scanned θ_FT (or reused the scan above)
    if found is not None and found.best is not None:
        best = found.best
        after = experiment.run_scan(
            ctx, experiment.measure_only(), clean_size, seed=seed, given=((best.trigger, best.target),), model=result.model
        )
        estimate = experiment.scan_estimate(found, after)
    experiment.save_defended(ctx, result, row, out, overwrite, extra={"scan": estimate} if estimate else None)
    experiment.record("defend", {**row.as_dict(), "out": str(out), "scan": estimate})
    if as_json:
        typer.echo(json.dumps({**row.as_dict(), "out": str(out), "scan": estimate}, default=str))
        return
    table = Table(title=f"{method} on {row.model} → {out}")
    for col in ("CACC", "ASR", "target bias", "ASR floor", "ρ", "flagged (top)", "dev acc", "unlabelled", "seconds"):
        table.add_column(col)
    table.add_row(
        _fmt(row.cacc),
        _fmt(row.asr),
        _fmt(row.target_bias),
        _fmt(row.asr_floor),
        "—" if row.rho is None else f"{row.rho:g}" + (" (auto)" if row.rho_auto else ""),
        ", ".join(row.flagged_top[:5]) or "—",
        _fmt(row.dev_acc),
        str(row.unlabeled_n),
        f"{row.seconds:.0f}",
    )
    console.print(table)
    if row.search:
        from finemix_core.defenses.base import search_text

        typer.echo(f"dev-only search: {search_text(row.search)}", err=True)
    if estimate is not None:
        typer.echo(
            f"suspected trigger '{estimate['suspected_trigger']}' (from scan, an estimate): flips "
            f"{estimate['flip_before']:.0%} of held-aside dev sentences before → {estimate['flip_after']:.0%} after "
            f"(clean reference {estimate['reference_flip']:.0%}; scan said: {estimate['verdict_before']})"
        )


@app.command("scan")
@user_errors
def scan_cmd(
    model: Annotated[str, typer.Option(help="Zoo entry name or ANY local HF classifier folder fine-tuned from θ_PT.")],
    clean_data: Annotated[
        str | None,
        typer.Option(help="Defender's clean labelled data: dataset name or CSV text,label (default: the card's dataset)."),
    ] = None,
    pretrained: Annotated[str, typer.Option(help="θ_PT: 'default' (offline all-MiniLM-L6-v2) or a folder.")] = "default",
    trigger: Annotated[
        str | None, typer.Option(help="Measure this trigger (text to insert) instead of searching; e.g. a suspect after defend.")
    ] = None,
    target: Annotated[int | None, typer.Option(help="With --trigger: the class it should flip to (default: every class).")] = None,
    clean_size: Annotated[
        int,
        typer.Option(help="Labelled clean examples (search set; the reference trains on them; the default takes a smaller "
                     "CSV's whole train part)."),
    ] = DEFAULT_CLEAN_SIZE,
    threshold: Annotated[float | None, typer.Option(help="Excess flip from which the verdict says 'backdoor'.")] = None,
    no_inversion: Annotated[bool, typer.Option("--no-inversion", help="Skip trigger inversion (faster; E-PUR only).")] = False,
    seed: Annotated[int, typer.Option(help="Clean-set draw and insertion positions.")] = 0,
    allow_pickle: Annotated[bool, typer.Option(help="Load pickle weights (weights_only=True).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Audit a model from clean data alone: does it carry a backdoor, what is the trigger, how often does it fire?"""
    from finemix_core import experiment
    from finemix_core.scan import ScanConfig

    if clean_size <= 0:
        raise FinemixError(f"--clean-size must be positive, got {clean_size}")
    if trigger is not None and not trigger.strip():
        raise FinemixError("--trigger is empty; give a word, a few words or a sentence to insert")
    ctx = experiment.prepare_defender(model, pretrained, clean_data, allow_pickle=allow_pickle)
    if clean_data is None and (warn := experiment.data_warning(ctx.pair.card, model, ctx.data_name)):
        typer.echo(f"warning: {warn}", err=True)
    n = ctx.pair.num_labels
    if target is not None and not 0 <= target < n:
        raise FinemixError(f"--target {target} outside the model's labels 0..{n - 1}")
    cfg = experiment.measure_only() if trigger is not None else ScanConfig(inversion=not no_inversion)
    if threshold is not None:
        cfg = dataclasses.replace(cfg, threshold=threshold)
    given = tuple((trigger, t) for t in ([target] if target is not None else range(n))) if trigger is not None else ()
    say = lambda m: tqdm.write(m, file=sys.stderr)  # noqa: E731
    if not as_json:
        say(ctx.parts(clean_size).line())
    if warn := experiment.label_warning(ctx):
        say(f"warning: {warn}")
    result = experiment.run_scan(ctx, cfg, clean_size, seed=seed, given=given, log=None if as_json else say)
    name = ctx.pair.card.get("name", ctx.pair.ft_source)
    experiment.record_scan(name, result, {"model": name, "clean_data": clean_data or ctx.data_name, "seed": seed})
    if as_json:
        typer.echo(json.dumps(result.as_json()))
        return
    names = ctx.class_names
    table = Table(title=f"scan of {name} on {clean_data or ctx.data_name} (seed {seed}; reference: {result.reference})")
    for col in ("trigger", "→ class", "flip", "95% interval", "reference", "excess", "n", "source"):
        table.add_column(col)
    for c in result.candidates[:10]:
        table.add_row(
            c.trigger,
            names[c.target],
            f"{c.flip:.2f}",
            f"[{c.flip_low:.2f}, {c.flip_high:.2f}]",
            f"{c.reference_flip:.2f}",
            f"{c.excess:+.2f}",
            str(c.n),
            c.source,
        )
    console.print(table)
    typer.echo(result.message(names))
    typer.echo(f"searched: {result.searched}; {result.time_text}")


# ---- scale-out options shared by sweep and report (executor.py, ray_executor.py) ----
RayOption = Annotated[
    str | None,
    typer.Option(
        "--ray",
        envvar="RAY_ADDRESS",
        show_envvar=True,
        help="Run on Ray: 'auto' starts a local Ray with this machine's cores, an address (host:port, ray://…) joins a cluster; "
        "'off' or unset runs in this process. Needs pip install 'finemix[ray]'.",
    ),
]
CpusOption = Annotated[float, typer.Option(help="With --ray: CPUs per run (torch uses as many threads).")]
RetriesOption = Annotated[int, typer.Option(help="With --ray: retries of a run whose worker died.")]
ShipOption = Annotated[
    str, typer.Option(help="With --ray: how workers get models: path (a shared $FINEMIX_HOME) | object-store.")
]


@app.command("sweep")
@user_errors
def sweep_cmd(
    model: Annotated[str, typer.Option(help="Zoo entry name or local HF classifier folder.")],
    out: Annotated[Path, typer.Option(help="CSV file for the results.")],
    rhos: Annotated[str, typer.Option(help="START:STOP:STEP or a comma list of ρ values.")] = "0:1:0.1",
    mode: Annotated[str, typer.Option(help="Mask: random | sorted.")] = "random",
    fine_tune: Annotated[bool, typer.Option("--fine-tune", help="Also fine-tune each mix on the clean set (slower).")] = False,
    method: Annotated[
        str | None,
        typer.Option(
            help="With --fine-tune: the Fine-mixing method of each point (default: fine-mixing with --mode; e.g. "
            "epur+fine-mixing+distill, the default defense; its mask sets the mix-only mask too)."
        ),
    ] = None,
    clean_size: Annotated[int, typer.Option(help="Clean examples for the fine-tune step.")] = 128,
    seed: Annotated[int, typer.Option(help="Masks and fine-tuning seed.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Score on the first N test examples only.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    fresh: Annotated[bool, typer.Option(help="Re-run every fine-tuned point (default: reuse identical stored runs).")] = False,
    ray: RayOption = None,
    cpus_per_task: CpusOption = 1.0,
    retries: RetriesOption = 2,
    ship: ShipOption = "path",
) -> None:
    """CACC and ASR at every ρ, mix-only and (with --fine-tune) after the fine-tune step."""
    import pandas as pd

    from finemix_core import experiment
    from finemix_core import sweep as sweeps
    from finemix_core.evaluate import best_device
    from finemix_core.executors import make_executor
    from finemix_core.mixing import MODES

    if mode not in MODES:
        raise FinemixError(f"unknown mask mode '{mode}'; use one of {', '.join(MODES)}")
    if method is not None:
        from finemix_core.defenses import METHODS, parse_method

        if method not in METHODS or not parse_method(method)[1].startswith("fine-mixing"):
            fm = [m for m in METHODS if "fine-mixing" in m]
            raise FinemixError(
                f"--method '{method}' is not a Fine-mixing method (ρ means nothing to it); use one of {', '.join(fm)}"
            )
        mode = "sorted" if "fine-mixing-sorted" in method else "random"
    check_new(out, overwrite)
    check_writable(out)
    values = experiment.parse_range(rhos)
    executor = make_executor(ray, cpus_per_task, retries, ship)
    ctx = experiment.prepare(model, eval_limit=limit, device=best_device())
    if ctx.eval_set.trigger is None:
        raise FinemixError(f"{model} has no known trigger, so ASR cannot be measured; pass a zoo entry or use evaluate --trigger")
    rows, stats = sweeps.run(
        ctx,
        model,
        values,
        mode,
        fine_tune,
        clean_size,
        seed,
        limit,
        executor=executor,
        resume=not fresh,
        log=lambda m: typer.echo(m, err=True),
        progress=True,
        method=method,
    )
    if stats is not None:
        typer.echo(f"fine-tuned points: {stats.describe()}", err=True)
    write_csv(pd.DataFrame(rows), out)
    experiment.store.record(
        "sweep",
        str(ctx.pair.card.get("name", ctx.pair.ft_source)),
        None,
        {"rhos": values, "mode": mode, "fine_tune": fine_tune, "clean_size": clean_size, "seed": seed, "method": method},
        {"rows": rows},
    )
    table = Table(title=f"ρ sweep on {ctx.pair.card.get('name', ctx.pair.ft_source)} ({mode} masks) → {out}")
    for col in ("ρ", "stage", "CACC", "ASR", "target bias", "ASR floor"):
        table.add_column(col)
    for r in rows:
        table.add_row(f"{r['rho']:g}", r["stage"], _fmt(r["cacc"]), _fmt(r["asr"]), _fmt(r["target_bias"]), _fmt(r["asr_floor"]))
    console.print(table)


@app.command("report")
@user_errors
def report_cmd(
    out: Annotated[Path, typer.Option(help="Folder for report.md, runs.csv and sizes.csv.")],
    seeds: Annotated[str, typer.Option(help="Comma-separated defense seeds.")] = "0,1,2",
    entries: Annotated[str | None, typer.Option(help="Comma-separated zoo entries (default: every backdoored one).")] = None,
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods (default: the seven of the report).")] = None,
    clean_size: Annotated[int, typer.Option(help="Clean examples per defense.")] = 128,
    sizes: Annotated[str, typer.Option(help="Clean-set sizes for the size study ('' skips it).")] = "32,64,128,512",
    size_entries: Annotated[str, typer.Option(help="Entries of the size study.")] = "word-cf,sentence",
    fixed_rhos: Annotated[str, typer.Option(help="Fixed ρ values for the ρ-sensitivity section ('' skips it).")] = "0.1,0.3,0.5",
    loose_delta: Annotated[str, typer.Option(help="A looser auto-ρ dev tolerance for its own section ('' skips it).")] = "0.05",
    limit: Annotated[int | None, typer.Option(help="Score on the first N test examples only.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    fresh: Annotated[
        bool, typer.Option(help="Re-run everything (default: reuse identical runs stored in the results database).")
    ] = False,
    import_runs: Annotated[
        Path | None, typer.Option(help="An earlier report's runs.csv: its identical runs are reused, not re-run.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="CSV rewritten after every run (resume later with --import-runs).")
    ] = None,
    ray: RayOption = None,
    cpus_per_task: CpusOption = 1.0,
    retries: RetriesOption = 2,
    ship: ShipOption = "path",
) -> None:
    """The reproduction table: every zoo attack × every defense, mean ± std over seeds, plus a clean-size study."""
    from finemix_core import report
    from finemix_core.defenses import METHODS
    from finemix_core.evaluate import best_device
    from finemix_core.executors import make_executor

    def ints(spec: str, what: str) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in spec.split(",") if x.strip())
        except ValueError:
            raise FinemixError(f"--{what} must be comma-separated integers, got '{spec}'") from None

    chosen = tuple(m.strip() for m in methods.split(",")) if methods else report.REPORT_METHODS
    bad = [m for m in chosen if m not in METHODS]
    if bad:
        raise FinemixError(f"unknown method '{bad[0]}'; use one of {', '.join(METHODS)}")
    check_writable(out)
    seed_list = ints(seeds, "seeds")
    if not seed_list:
        raise FinemixError("--seeds needs at least one seed")
    cfg = report.ReportConfig(
        entries=tuple(e.strip() for e in entries.split(",")) if entries else None,
        methods=chosen,
        seeds=seed_list,
        clean_size=clean_size,
        sizes=ints(sizes, "sizes"),
        size_entries=tuple(e.strip() for e in size_entries.split(",") if e.strip()),
        eval_limit=limit,
        resume=not fresh,
        checkpoint=checkpoint,
        fixed_rhos=tuple(
            _unit_interval(x, "--fixed-rhos", "", "ρ is a share of weights") for x in fixed_rhos.split(",") if x.strip()
        ),
        loose_delta=_unit_interval(loose_delta, "--loose-delta", "", "it is an accuracy drop, e.g. 0.05 for 5 points"),
    )
    executor = make_executor(ray, cpus_per_task, retries, ship)
    if import_runs is not None:
        typer.echo(f"imported {report.import_runs(import_runs)} new runs from {import_runs}", err=True)
    command = "finemix " + " ".join(sys.argv[1:]) if sys.argv and "finemix" in sys.argv[0] else "finemix report"
    path = report.write(
        out, cfg, command, best_device(), overwrite, log=lambda m: typer.echo(m, err=True), executor=executor, progress=True
    )
    typer.echo((path / "report.md").read_text())


@app.command("lab")
@user_errors
def lab_cmd(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8501,
    address: Annotated[
        str, typer.Option(help="Bind address; keep 127.0.0.1 unless you mean to share untrusted models.")
    ] = "127.0.0.1",
) -> None:
    """Start the Streamlit lab (dashboard/app.py) on localhost."""
    root = Path(__file__).resolve().parent.parent
    app_file = root / "dashboard" / "app.py"
    if not app_file.is_file():
        raise FinemixError(f"{app_file} not found; run 'finemix lab' from a source checkout (pip install -e .)")
    if not 0 < port < 65536:
        raise FinemixError(f"--port {port} outside 1..65535")
    typer.echo(f"finemix lab on http://{address}:{port} (Ctrl+C stops it)", err=True)
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_file), "--server.address", address, "--server.port", str(port)]
    # replace this process with Streamlit (no child left behind): a SIGTERM or Ctrl+C to `finemix lab` reaches the server itself
    os.chdir(root)
    os.execv(sys.executable, cmd)


@app.command("bench")
@user_errors
def bench_cmd(
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    model: Annotated[str | None, typer.Option(help="Zoo entry (default: word-cf).")] = None,
    repeats: Annotated[int, typer.Option(help="Timed repetitions per measurement (median).")] = 5,
    end_to_end: Annotated[bool, typer.Option(help="Also time mix + fine-tune + score.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Live-slider cost vs a bare forward pass, our eval vs the HF pipeline, fast path, end-to-end Fine-mixing."""
    from finemix_core import bench

    if device not in ("cpu", "cuda"):
        raise FinemixError(f"--device must be cpu or cuda, got '{device}'")
    if repeats < 1:
        raise FinemixError(f"--repeats must be ≥ 1, got {repeats}")
    res = bench.run(
        bench.BenchConfig(model=model, device=device, repeats=repeats, end_to_end=end_to_end),
        log=lambda m: typer.echo(m, err=True),
    )
    if as_json:
        typer.echo(json.dumps(res.as_dict(), default=str))
        return
    table = Table(
        title=f"finemix bench: {res.model} on {res.device} ({res.gpu or res.cpu}, {res.threads} threads), "
        f"live set {res.live_set.clean} clean + {res.live_set.triggered} triggered, median of {res.repeats}"
    )
    for col in ("measure", "value", "target"):
        table.add_column(col)
    fast = res.fast_path
    rows = [
        ("bare forward (s)", f"{res.bare_forward_s:.3f}", ""),
        ("slider step: full numbers (s)", f"{res.slider_step_s:.3f}", ""),
        (
            f"slider step: first numbers, {res.first_slice} + {res.first_slice} examples (s)",
            f"{res.slider_first_s:.3f}",
            "< 1 s (2 cores)",
        ),
        ("  first / bare forward of the full live set", f"{res.slider_first_s / res.bare_forward_s:.3f}", ""),
        ("  of which mix + load (s)", f"{res.mix_only_s:.3f}", ""),
        ("slider step / bare forward", f"{res.slider_over_bare:.3f}", "≤ 1.15"),
        ("our eval vs HF pipeline throughput", f"{res.ours_over_hf_throughput:.2f}×", "≥ 1.5×"),
        ("forward tokens/s", f"{res.tokens_per_s:.0f}", ""),
        ("forward GFLOP/s", f"{res.gflops_per_s:.1f}", ""),
        ("bf16 fast path speed-up", "n/a (no bf16 support)" if fast is None else f"{fast.speedup_vs_fp32:.2f}×", "≥ 1.7×"),
        (
            "bf16 CACC / ASR vs fp32",
            "n/a" if fast is None else f"{fast.cacc_bf16:.3f}/{fast.asr_bf16:.3f} vs {fast.cacc_fp32:.3f}/{fast.asr_fp32:.3f}",
            "within 0.01",
        ),
        (
            "fine-mix end to end (s)",
            "skipped" if res.fine_mix_end_to_end_s is None else f"{res.fine_mix_end_to_end_s:.1f}",
            "≤ 30 (CPU), ≤ 3 (H100)",
        ),
        ("peak RSS of this bench process (MiB)", f"{res.peak_rss_mib:.0f}", ""),
        (
            "lab process, two models loaded (MiB)",
            "n/a"
            if res.lab_two_models_rss_mib is None
            else f"{res.lab_two_models_rss_mib:.0f} ({' + '.join(res.lab_memory_models)})",
            "≤ 1536",
        ),
    ] + [(f"zoo build {n} (s, from its card)", f"{v}", "") for n, v in res.zoo_build_s.items()]
    for r in rows:
        table.add_row(*r)
    console.print(table)


@app.command("methods")
def methods_cmd() -> None:
    """List the defense methods (the registry): [epur+]BASE[+distill]; the default is marked."""
    from finemix_core.defenses import DEFAULT_METHOD, METHODS, describe

    for name in METHODS:
        typer.echo(f"{name:34s} {'(default) ' if name == DEFAULT_METHOD else ''}{describe(name)}")


@app.command("datasets")
def datasets_cmd() -> None:
    """List the dataset names (offline ones work here; online ones need a network)."""
    for name, desc in data.available().items():
        typer.echo(f"{name:16s} {desc}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
