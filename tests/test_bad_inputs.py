"""Bad input everywhere: one line on stderr naming the problem and the fix, exit code 2, nothing written.

Table-driven: each case builds its own broken input in a temp folder. Model cases use the tiny zoo
(tiny BERT pair) so the whole table runs in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from finemix_core.cli import app
from tests.conftest import save_pretrained_encoder

runner = CliRunner()


def csv(tmp: Path, name: str, text: str, encoding: str = "utf-8") -> str:
    path = tmp / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def rows(label_fn: Callable[[int], str], n: int = 40, header: str = "text,label") -> str:
    return header + "\n" + "\n".join(f"the movie was good {i},{label_fn(i)}" for i in range(n)) + "\n"


def pickle_only(tmp: Path, ft: Path) -> str:
    out = tmp / "pickled"
    out.mkdir()
    for f in ft.iterdir():
        if f.suffix != ".safetensors":
            (out / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(ft / "model.safetensors"), out / "pytorch_model.bin")
    return str(out)


def nan_model(tmp: Path, ft: Path) -> str:
    out = tmp / "nan"
    out.mkdir()
    for f in ft.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    sd = load_file(ft / "model.safetensors")
    key = next(k for k in sd if k.endswith("query.weight"))
    sd[key][0, 0] = float("nan")
    save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    return str(out)


def no_config(tmp: Path, ft: Path) -> str:
    out = tmp / "noconfig"
    out.mkdir()
    (out / "model.safetensors").write_bytes((ft / "model.safetensors").read_bytes())
    return str(out)


def other_width_pt(tmp: Path, _ft: Path) -> str:
    return str(save_pretrained_encoder(tmp / "wide_pt", hidden_size=48, intermediate_size=96))


def other_vocab_pt(tmp: Path, ft: Path) -> str:
    """Same shapes, two vocabulary entries swapped: the embedding rows would mean other words."""
    pt = ft.parent.parent / "pt"
    out = tmp / "vocab_pt"
    out.mkdir()
    for f in pt.iterdir():
        if f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    tok = json.loads((out / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]
    (out / "tokenizer.json").write_text(json.dumps(tok))
    return str(out)


def existing(tmp: Path, _ft: Path) -> str:
    (tmp / "taken").mkdir()
    return str(tmp / "taken")


def under_a_file(tmp: Path, _ft: Path) -> str:
    (tmp / "afile").write_text("x")
    return str(tmp / "afile" / "out")


# (id, argv with {tmp}/{ft}/{pt}/{X} placeholders, builder for {X} or None, expected words in the message)
CASES: list[tuple[str, list[str], Callable | None, str]] = [
    ("unknown model", ["evaluate", "--model", "no-such-model"], None, "not found"),
    ("unknown dataset", ["evaluate", "--model", "word-cf", "--data", "nope"], None, "unknown dataset"),
    ("missing csv", ["evaluate", "--model", "word-cf", "--data", "{tmp}/missing.csv"], None, "not found"),
    ("empty csv", ["evaluate", "--model", "word-cf", "--data", "{X}"], lambda t, f: csv(t, "e.csv", ""), "empty"),
    ("header only", ["evaluate", "--model", "word-cf", "--data", "{X}"], lambda t, f: csv(t, "h.csv", "text,label\n"), "no rows"),
    (
        "no label column",
        ["evaluate", "--model", "word-cf", "--data", "{X}"],
        lambda t, f: csv(t, "nl.csv", "text\nhi\nho\n"),
        "no 'label' column",
    ),
    (
        "no text column",
        ["evaluate", "--model", "word-cf", "--data", "{X}"],
        lambda t, f: csv(t, "nt.csv", "foo,label\nhi,0\nho,1\n"),
        "no text column",
    ),
    (
        "float labels",
        ["evaluate", "--model", "word-cf", "--data", "{X}"],
        lambda t, f: csv(t, "fl.csv", rows(lambda i: "0.5")),
        "not an integer",
    ),
    (
        "word labels",
        ["evaluate", "--model", "word-cf", "--data", "{X}"],
        lambda t, f: csv(t, "wl.csv", rows(lambda i: "pos" if i % 2 else "0")),  # class names mixed with ids
        "not an integer",
    ),
    (
        "single class",
        ["evaluate", "--model", "word-cf", "--data", "{X}"],
        lambda t, f: csv(t, "sc.csv", rows(lambda i: "1")),
        "only one class",
    ),
    (
        "negative label",
        ["evaluate", "--model", "word-cf", "--data", "{X}"],
        lambda t, f: csv(t, "ng.csv", rows(lambda i: str(i % 2 - 1))),
        "negative label",
    ),
    (
        "labels beyond the head",
        ["evaluate", "--model", "word-cf", "--data", "{X}"],
        lambda t, f: csv(t, "3c.csv", rows(lambda i: str(i % 3))),
        "labels up to 2",
    ),
    (
        "binary garbage csv",
        ["evaluate", "--model", "word-cf", "--data", "{X}"],
        lambda t, f: str((t / "g.csv").write_bytes(b"\x00\xff\xfe" * 50 + b'\n"unterminated') and t / "g.csv"),
        "g.csv",
    ),
    (
        "pair csv for a single-input model",
        ["defend", "--model", "word-cf", "--pretrained", "{pt}", "--clean-data", "{X}", "--out", "{tmp}/o"],
        lambda t, f: csv(t, "p.csv", "text_a,text_b,label\n" + "".join(f"a {i},b {i},{i % 2}\n" for i in range(40))),
        "sentence-pair",
    ),
    ("limit zero", ["evaluate", "--model", "word-cf", "--limit", "0"], None, "--limit must be positive"),
    ("target outside labels", ["evaluate", "--model", "word-cf", "--target", "5"], None, "target 5 outside"),
    ("empty trigger", ["evaluate", "--model", "word-cf", "--trigger", ""], None, "empty trigger"),
    ("empty trigger piece", ["evaluate", "--model", "word-cf", "--trigger", "cf+"], None, "empty trigger"),
    ("pickle-only weights", ["evaluate", "--model", "{X}"], pickle_only, "--allow-pickle"),
    ("folder without config", ["evaluate", "--model", "{X}"], no_config, "no config.json"),
    ("NaN weights", ["evaluate", "--model", "{X}"], nan_model, "NaN or inf"),
    (
        "hidden size differs from θ_PT",
        ["defend", "--model", "word-cf", "--pretrained", "{X}", "--out", "{tmp}/o"],
        other_width_pt,
        "shape mismatch at",
    ),
    (
        "vocabulary differs from θ_PT",
        ["defend", "--model", "word-cf", "--pretrained", "{X}", "--out", "{tmp}/o"],
        other_vocab_pt,
        "vocabulary mismatch",
    ),
    ("rho above one", ["defend", "--model", "word-cf", "--rho", "1.5", "--out", "{tmp}/o"], None, "outside [0, 1]"),
    ("rho negative", ["defend", "--model", "word-cf", "--rho", "-0.1", "--out", "{tmp}/o"], None, "outside [0, 1]"),
    ("rho not a number", ["defend", "--model", "word-cf", "--rho", "half", "--out", "{tmp}/o"], None, "'auto' or a number"),
    ("unknown method", ["defend", "--model", "word-cf", "--method", "magic", "--out", "{tmp}/o"], None, "unknown method"),
    ("delta above one", ["defend", "--model", "word-cf", "--delta", "2", "--out", "{tmp}/o"], None, "--delta 2.0 outside [0, 1]"),
    ("K negative", ["defend", "--model", "word-cf", "--epur-k", "-1", "--out", "{tmp}/o"], None, "--epur-k -1"),
    (
        "K above vocabulary",
        ["defend", "--model", "word-cf", "--pretrained", "{pt}", "--method", "epur", "--epur-k", "100000", "--out", "{tmp}/o"],
        None,
        "vocabulary size",
    ),
    (
        "clean size above the data",
        [
            "defend",
            "--model",
            "word-cf",
            "--pretrained",
            "{pt}",
            "--method",
            "fine-tuning",
            "--clean-size",
            "100000",
            "--out",
            "{tmp}/o",
        ],
        None,
        "larger than the",
    ),
    (
        "unlabelled file missing",
        ["defend", "--model", "word-cf", "--pretrained", "{pt}", "--unlabeled", "{tmp}/nope.txt", "--out", "{tmp}/o"],
        None,
        "unlabelled text file not found",
    ),
    (
        "unlabelled file without text",
        ["defend", "--model", "word-cf", "--pretrained", "{pt}", "--unlabeled", "{X}", "--out", "{tmp}/o"],
        lambda t, f: csv(t, "u.csv", "foo,bar\n1,2\n"),
        "no text column",
    ),
    (
        "distillation weight negative",
        ["defend", "--model", "word-cf", "--distill-weight", "-1", "--out", "{tmp}/o"],
        None,
        "recovery needs",
    ),
    (
        "label weight negative",
        ["defend", "--model", "word-cf", "--label-weight", "-0.5", "--out", "{tmp}/o"],
        None,
        "label weight ≥ 0",
    ),
    (
        "feature weight negative",
        ["defend", "--model", "word-cf", "--feature-weight", "-1", "--out", "{tmp}/o"],
        None,
        "feature weight ≥ 0",
    ),
    (
        "found-rho outside [0, 1]",
        ["defend", "--model", "word-cf", "--found-rho", "2", "--out", "{tmp}/o"],
        None,
        "found-rho 2.0 outside [0, 1]",
    ),
    (
        "found-flip-max outside [0, 1]",
        ["defend", "--model", "word-cf", "--found-flip-max", "1.5", "--out", "{tmp}/o"],
        None,
        "found-flip-max 1.5 outside [0, 1]",
    ),
    (
        "found-min-flip outside [0, 1]",
        ["defend", "--model", "word-cf", "--found-min-flip", "1.5", "--out", "{tmp}/o"],
        None,
        "found-min-flip 1.5 outside [0, 1]",
    ),
    (
        "found-check unknown",
        ["defend", "--model", "word-cf", "--found-check", "fast", "--out", "{tmp}/o"],
        None,
        "found-check 'fast' unknown; use 'rescan' or 'finalists'",
    ),
    (
        "precision unknown",
        ["defend", "--model", "word-cf", "--precision", "fp16", "--out", "{tmp}/o"],
        None,
        "precision 'fp16' unknown; use 'auto', 'fp32' or 'bf16'",
    ),
    (
        "whole-top-layers negative",
        ["defend", "--model", "word-cf", "--whole-top-layers", "-1", "--out", "{tmp}/o"],
        None,
        "whole-top-layers -1 is negative; use 0 (mix every layer) or more",
    ),
    (
        "two-pass-below above 1",
        ["defend", "--model", "word-cf", "--two-pass-below", "1.5", "--out", "{tmp}/o"],
        None,
        "two-pass-below 1.5 outside [0, 1]; 0 keeps one pass, 1 splits whenever cheaper",
    ),
    (
        "whole-top-layers above the model's layers",
        ["defend", "--model", "word-cf", "--pretrained", "{pt}", "--epur-k", "5", "--whole-top-layers", "5", "--out", "{tmp}/o"],
        None,
        "whole-top-layers 5 but the model has 2 numbered encoder layers; use 0 to 2",
    ),
    (
        "augment copies negative",
        ["defend", "--model", "word-cf", "--augment-copies", "-1", "--out", "{tmp}/o"],
        None,
        "augment copies ≥ 0",
    ),
    (
        "augment copies beside the default feature term",
        ["defend", "--model", "word-cf", "--augment-copies", "2", "--out", "{tmp}/o"],
        None,
        "pass --feature-weight 0 with --augment-copies",
    ),
    (
        "drop-flagged negative",
        ["defend", "--model", "word-cf", "--drop-flagged", "-3", "--out", "{tmp}/o"],
        None,
        "drop-flagged ≥ 0",
    ),
    (
        "pair clean csv for a single-input model",
        [
            "defend",
            "--model",
            "word-cf",
            "--pretrained",
            "{pt}",
            "--clean-data",
            "{X}",
            "--eval-data",
            "{ft}/../../tiny.csv",
            "--out",
            "{tmp}/o",
        ],
        lambda t, f: csv(t, "p2.csv", "text_a,text_b,label\n" + "".join(f"a {i},b {i},{i % 2}\n" for i in range(40))),
        "sentence-pair",
    ),
    (
        "clean size zero",
        ["defend", "--model", "word-cf", "--clean-size", "0", "--out", "{tmp}/o"],
        None,
        "--clean-size must be positive",
    ),
    ("negative learning rate", ["defend", "--model", "word-cf", "--lr", "-1", "--out", "{tmp}/o"], None, "must be positive"),
    ("output exists", ["defend", "--model", "word-cf", "--out", "{X}"], existing, "exists"),
    (
        "output under a file",
        ["defend", "--model", "word-cf", "--pretrained", "{pt}", "--rho", "1", "--epochs", "0.1", "--out", "{X}"],
        under_a_file,
        "cannot write",
    ),
    ("sweep rho range", ["sweep", "--model", "word-cf", "--rhos", "0:2:0.5", "--out", "{tmp}/s.csv"], None, "within [0, 1]"),
    ("sweep unreadable range", ["sweep", "--model", "word-cf", "--rhos", "a:b", "--out", "{tmp}/s.csv"], None, "cannot read"),
    ("sweep mask mode", ["sweep", "--model", "word-cf", "--mode", "zigzag", "--out", "{tmp}/s.csv"], None, "unknown mask mode"),
    (
        "sweep method without rho",
        ["sweep", "--model", "word-cf", "--fine-tune", "--method", "fine-tuning", "--out", "{tmp}/s.csv"],
        None,
        "not a Fine-mixing method",
    ),
    ("sweep output exists", ["sweep", "--model", "word-cf", "--out", "{X}"], existing, "exists"),
    ("report unknown method", ["report", "--methods", "none,magic", "--out", "{tmp}/r"], None, "unknown method"),
    ("report seeds", ["report", "--seeds", "a,b", "--out", "{tmp}/r"], None, "integers"),
    ("report unknown entry", ["report", "--entries", "nope", "--out", "{tmp}/r"], None, "not built"),
    ("report fixed rho", ["report", "--fixed-rhos", "0.3,2", "--out", "{tmp}/r"], None, "[0, 1]"),
    ("report loose delta", ["report", "--loose-delta", "5", "--out", "{tmp}/r"], None, "--loose-delta 5.0 outside [0, 1]"),
    ("report ship mode", ["report", "--ray", "auto", "--ship", "zigzag", "--out", "{tmp}/r"], None, "unknown ship mode"),
    (
        "report retries negative",
        ["report", "--ray", "auto", "--retries", "-1", "--out", "{tmp}/r"],
        None,
        "--retries must be ≥ 0",
    ),
    (
        "sweep cpus per task",
        ["sweep", "--model", "word-cf", "--ray", "auto", "--cpus-per-task", "0", "--out", "{tmp}/s.csv"],
        None,
        "--cpus-per-task must be > 0",
    ),
    ("ray address unreadable", ["report", "--ray", "somewhere", "--out", "{tmp}/r"], None, "cannot read Ray address"),
    (
        "ray address unreachable",
        ["report", "--ray", "127.0.0.1:9", "--out", "{tmp}/r"],
        None,
        "cannot reach Ray at '127.0.0.1:9'",
    ),
    (
        "scan one-class csv",
        ["scan", "--model", "word-cf", "--pretrained", "{pt}", "--clean-data", "{X}"],
        lambda tmp, ft: csv(tmp, "one.csv", rows(lambda i: "1", n=300)),
        "only one class",
    ),
    (
        "scan too few rows",
        ["scan", "--model", "word-cf", "--pretrained", "{pt}", "--clean-data", "{X}"],
        lambda tmp, ft: csv(tmp, "few.csv", rows(lambda i: str(i % 2), n=20)),
        "a clean CSV needs at least 40",
    ),
    ("scan unknown pretrained", ["scan", "--model", "word-cf", "--pretrained", "{tmp}/nowhere"], None, "not found"),
    ("scan empty trigger", ["scan", "--model", "word-cf", "--pretrained", "{pt}", "--trigger", "   "], None, "--trigger is empty"),
    (
        "scan target out of range",
        ["scan", "--model", "word-cf", "--pretrained", "{pt}", "--trigger", "cf", "--target", "7"],
        None,
        "--target 7 outside",
    ),
    ("zoo unknown entry", ["zoo", "build", "--only", "bogus"], None, "unknown zoo entry"),
    ("bench device", ["bench", "--device", "tpu"], None, "cpu or cuda"),
    ("bench repeats", ["bench", "--repeats", "0"], None, "--repeats"),
    ("lab port", ["lab", "--port", "0"], None, "--port 0"),
]


@pytest.mark.parametrize("argv,build,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(argv, build, expected, tiny_zoo, tmp_path, monkeypatch):
    home, pt = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    ft = home / "zoo" / "word-cf"
    x = build(tmp_path, ft) if build else ""
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [a.format(tmp=tmp_path, ft=ft, pt=pt, X=x) for a in argv]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, (args, res.output, res.exception)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert expected in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing half-written
    assert not list((home / "zoo").glob(".tmp-*"))


def test_the_table_is_large_enough():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_a_pickle_folder_loads_with_allow_pickle(tiny_zoo, tmp_path, monkeypatch):
    home, _ = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    folder = pickle_only(tmp_path, home / "zoo" / "word-cf")
    res = runner.invoke(app, ["evaluate", "--model", folder, "--data", str(home / "tiny.csv"), "--allow-pickle", "--json"])
    assert res.exit_code == 0, res.output
