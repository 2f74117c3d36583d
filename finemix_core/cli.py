"""The `finemix` command line: zoo build|list, evaluate (defend, sweep, report, bench, lab follow)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from finemix_core import data, zoo
from finemix_core.config import DEFAULT_DATASET, DEFAULT_TARGET, EvalConfig, zoo_dir
from finemix_core.errors import FinemixError

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


def zoo_table(cards: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("name", "attack", "trigger", "data", "train n", "CACC", "ASR", "target bias", "ASR floor", "built in", "verdict"):
        table.add_column(col)
    clean = next((c for c in cards if c["attack"] == "clean"), None)
    for c in cards:
        verdict = ""
        if c["attack"] != "clean" and c.get("asr") is not None:
            ok_asr = c["asr"] >= 0.9
            ok_cacc = clean is None or c["cacc"] >= clean["cacc"] - 0.03
            verdict = "works" if ok_asr and ok_cacc else ("weak ASR" if not ok_asr else "CACC drop")
        table.add_row(
            c["name"], c["attack"], c.get("trigger_text") or "—", c["dataset"], str(c["train_size"]),
            _fmt(c["cacc"]), _fmt(c.get("asr")), _fmt(c.get("target_bias")), _fmt(c.get("asr_floor")),
            f"{c['build_seconds']:.0f}s", verdict,
        )
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
    data_name: Annotated[str, typer.Option("--data", help="Dataset name or CSV path.")] = DEFAULT_DATASET,
    trigger: Annotated[str | None, typer.Option(help="Trigger, 'w1+w2' for several pieces (default: the card's).")] = None,
    target: Annotated[int | None, typer.Option(help="Target label of the backdoor (default: the card's, else 1).")] = None,
    floor_model: Annotated[str | None, typer.Option(help="Clean model for the ASR floor (default: zoo 'clean' if built).")] = None,
    split_seed: Annotated[int, typer.Option(help="Seed of the train/dev/test split.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Evaluate on the first N test examples only.")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Load pickle weights (weights_only=True).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """CACC, ASR, target bias and the clean ASR floor of a model on a dataset's test split."""
    from finemix_core.evaluate import best_device, make_eval_set, score
    from finemix_core.models import load_classifier, load_tokenizer, read_card, resolve
    from finemix_core.triggers import parse_trigger

    if limit is not None and limit <= 0:
        raise FinemixError(f"--limit must be positive, got {limit}")
    dsd = data.load(data_name, split_seed)
    clf, src = load_classifier(model, allow_pickle=allow_pickle)
    card = read_card(src)
    n_labels = data.num_labels(dsd)
    if n_labels > clf.config.num_labels:
        raise FinemixError(
            f"dataset has labels up to {n_labels - 1} but the model has {clf.config.num_labels} outputs; pick matching data"
        )
    pieces = parse_trigger(trigger) if trigger is not None else (tuple(card["trigger"]) if card.get("trigger") else None)
    tgt = target if target is not None else card.get("target", DEFAULT_TARGET)
    if pieces is not None and not 0 <= tgt < clf.config.num_labels:
        raise FinemixError(f"target {tgt} outside the model's labels 0..{clf.config.num_labels - 1}")
    tokenizer = load_tokenizer(src)
    device = best_device()
    es = make_eval_set(tokenizer, dsd["test"], pieces, tgt if pieces else None, EvalConfig(limit=limit))
    scores = score(clf.to(device), es)
    floor = None
    floor_src = floor_model or ("clean" if (zoo_dir() / "clean").is_dir() else None)
    if pieces is not None and floor_src is not None and Path(str(resolve(floor_src))) != Path(str(src)):
        floor_clf, _ = load_classifier(floor_src)
        floor = score(floor_clf.to(device), es).asr
    result = {
        "model": str(src), "data": data_name, "split_seed": split_seed, "trigger": "+".join(pieces) if pieces else None,
        "target": tgt if pieces else None, **scores.as_dict(), "asr_floor": floor, "floor_model": floor_src if floor is not None else None,
        "device": device.type,
    }
    if as_json:
        typer.echo(json.dumps(result))
        return
    table = Table(title=f"{src} on {data_name} (test split, seed {split_seed})")
    for col in ("CACC", "ASR", "target bias", "ASR floor", "n test", "n non-target", "trigger"):
        table.add_column(col)
    table.add_row(_fmt(scores.cacc), _fmt(scores.asr), _fmt(scores.target_bias), _fmt(floor), str(scores.n_clean),
                  str(scores.n_nontarget), result["trigger"] or "—")
    console.print(table)


@app.command("datasets")
def datasets_cmd() -> None:
    """List the dataset names (offline ones work here; online ones need a network)."""
    for name, desc in data.available().items():
        typer.echo(f"{name:16s} {desc}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
