"""Fuzz the loaders users feed untrusted files to (bounded: a few seconds each in CI).

Any input may be refused, but only with FinemixError (the CLI's one-line error); nothing else may escape.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finemix_core import data
from finemix_core.errors import FinemixError
from finemix_core.models import load_classifier

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
cells = st.one_of(
    st.text(max_size=40),
    st.integers(-3, 5).map(str),
    st.floats(allow_nan=True).map(str),
    st.just(""),
    st.text(alphabet=',"\n\r;\t', max_size=5),
    st.text(min_size=2000, max_size=5000),
)
columns = st.lists(st.sampled_from(["text", "label", "text_a", "text_b", "foo", "", "Label", "text "]), min_size=1, max_size=4)


@FUZZ
@given(
    cols=columns,
    body=st.lists(st.lists(cells, min_size=1, max_size=4), max_size=30),
    encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]),
)
def test_csv_loader_accepts_or_refuses_clearly(tmp_path_factory, cols, body, encoding):
    path = tmp_path_factory.mktemp("csv") / "f.csv"
    text = "\n".join([",".join(cols)] + [",".join(r) for r in body])
    try:
        path.write_bytes(text.encode(encoding, errors="replace"))
    except UnicodeEncodeError:
        return
    try:
        frame = data.validate_frame(data.read_csv(path), str(path))
    except FinemixError as exc:
        assert "\n" not in str(exc)
        return
    # accepted: a clean frame of text columns and integer labels 0..k-1 with at least two classes
    assert list(frame.columns)[-1] == "label" and frame["label"].nunique() >= 2 and frame["label"].min() >= 0
    assert pd.api.types.is_integer_dtype(frame["label"])


@FUZZ
@given(raw=st.binary(max_size=3000))
def test_csv_loader_on_raw_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("raw") / "r.csv"
    path.write_bytes(raw)
    try:
        data.validate_frame(data.read_csv(path), str(path))
    except FinemixError:
        pass


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.text(string.printable, max_size=20)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    config=st.dictionaries(
        st.sampled_from(
            [
                "model_type",
                "hidden_size",
                "vocab_size",
                "num_labels",
                "architectures",
                "num_hidden_layers",
                "auto_map",
                "torch_dtype",
                "id2label",
            ]
        ),
        json_values,
        max_size=6,
    ),
    weights=st.sampled_from(["none", "garbage-safetensors", "empty-safetensors", "garbage-bin"]),
)
def test_model_folder_loader_refuses_broken_folders_clearly(tmp_path_factory, config, weights):
    folder: Path = tmp_path_factory.mktemp("model")
    (folder / "config.json").write_text(json.dumps(config))
    if weights == "garbage-safetensors":
        (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    elif weights == "empty-safetensors":
        (folder / "model.safetensors").write_bytes(b"")
    elif weights == "garbage-bin":
        (folder / "pytorch_model.bin").write_bytes(b"not a pickle")
    try:
        load_classifier(folder)
    except FinemixError as exc:
        assert "\n" not in str(exc)
    else:
        raise AssertionError(f"a broken folder loaded: {config} {weights}")
