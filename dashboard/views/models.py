import time

import pandas as pd
import state
import streamlit as st

from finemix_core import lab
from finemix_core.errors import FinemixError

st.title("Models")
st.markdown(
    "Choose the suspect model to clean: an entry of the offline zoo of real backdoored models, or any local Hugging Face "
    "classifier folder fine-tuned from θ_PT. Each zoo card shows its attack, trigger, poison rate and its measured "
    "clean accuracy (CACC) and attack success rate (ASR); the `clean` entry gives the ASR floor."
)

cards = lab.zoo_cards()
built = {c["name"] for c in cards}
if cards:
    frame = pd.DataFrame(cards)
    cols = [
        c
        for c in (
            "name",
            "attack",
            "trigger_text",
            "poison_rate",
            "dataset",
            "train_size",
            "cacc",
            "asr",
            "target_bias",
            "asr_floor",
            "build_seconds",
        )
        if c in frame
    ]
    st.dataframe(
        lab.shown(frame[cols].rename(columns={"trigger_text": "trigger", "build_seconds": "build s"})),
        hide_index=True,
        width="stretch",
    )
    st.caption(
        "Card numbers (cacc, asr, target bias, asr floor) were measured when each entry was built, on its test split "
        "(quick builds: its first 400 examples). The Mixing lab scores a 256-example live set and Compare the full test "
        "split, so their floors differ slightly from these; each page says which set it used."
    )
    names = [c["name"] for c in cards]
    current = st.session_state.get("model")
    choice = st.selectbox("Model to defend", names, index=names.index(current) if current in names else 0, key="models_pick")
    if choice != current and st.button(f"Use {choice}", type="primary"):
        state.set_value("model", choice)
        state.set_value("pt", "default")
        state.set_probe("", 1, "entered")  # a probe belongs to the model it was set for
        st.rerun()
    card = (
        next(c for c in cards if c["name"] == (st.session_state.get("model") or choice))
        if (st.session_state.get("model") or choice) in built
        else None
    )
    if card:
        with st.expander(f"Card of {card['name']}", expanded=False):
            st.json(card)
else:
    st.info(
        "The zoo is empty on this machine. Build the demo pair below: a clean model and a `cf` word backdoor, "
        "about 2 minutes on 2 CPU cores in quick mode (measured: 1 min 54 s)."
    )

st.subheader("Build zoo entries")
specs = lab.zoo_specs()
missing = [s.name for s in specs if s.name not in built]
if not missing:
    st.success("Every default entry is built.")
else:
    quick = st.toggle(f"Quick mode (1,200 training examples; {lab.build_time_text(cards)})", value=True)
    default_pick = [n for n in ("clean", "word-cf") if n in missing] or missing[:1]
    wanted = st.multiselect("Entries to build", missing, default=default_pick)
    if st.button("Build", disabled=not wanted):
        bar = st.progress(0.0, text="starting …")
        status = st.empty()

        def factory(spec):
            started = time.perf_counter()

            def update(done: int, total: int) -> None:
                bar.progress(done / total, text=lab.progress_text(spec.name, done, total, time.perf_counter() - started))

            return update

        def on_entry(spec, card):
            if card is not None:
                status.write(
                    f"{spec.name}: built in {card['build_seconds']:.0f}s (CACC {card['cacc']:.3f}, "
                    f"ASR {'—' if card['asr'] is None else round(card['asr'], 3)})"
                )

        try:
            lab.build_zoo_entries(wanted, quick, factory, on_entry)
        except FinemixError as exc:
            st.error(str(exc))
        else:
            if not st.session_state.get("model"):
                first = next((n for n in wanted if n != "clean"), None)
                if first:
                    state.set_value("model", first)
            st.rerun()

st.subheader("Clean data")
st.caption(
    "The defender's clean data: by default the model card's dataset. Upload your own CSV (columns text,label or "
    "text_a,text_b,label; labels as ids 0..k-1, with an optional label_name column, or as class names; at most 20 MB). "
    + lab.csv_rule_text()
)
if note := st.session_state.pop("_data_note", None):
    st.success(note)
current_data = st.session_state.get("data") or ""
st.write(f"Using: `{lab.display_name(current_data) if current_data else 'the card dataset'}`")
upload = st.file_uploader("Clean data CSV", type=["csv"])
c1, c2 = st.columns(2)
if c1.button("Use the uploaded CSV", disabled=upload is None):
    try:
        path = lab.save_upload(upload.getvalue(), upload.name)
        lm = state.lab_model(st.session_state["model"], st.session_state["pt"], str(path), **state.probe())  # fits the model?
    except FinemixError as exc:
        st.error(str(exc))
    else:
        state.set_value("data", str(path))
        st.session_state["_data_note"] = f"Using {upload.name}: {lab.data_parts(lm).line()}"
        st.rerun()
if c2.button("Back to the card's dataset", disabled=not current_data):
    state.set_value("data", "")
    st.rerun()

st.subheader("Or: a local model folder")
st.caption("A Hugging Face classifier folder (safetensors) fine-tuned from θ_PT. Pickle-only folders are refused.")
folder = st.text_input("θ_FT folder", placeholder="/path/to/model")
pretrained = st.text_input("θ_PT folder", value="default", help="'default' = the offline all-MiniLM-L6-v2")
if st.button("Use this folder", disabled=not folder):
    try:
        state.lab_model(folder, pretrained, st.session_state.get("data", ""))  # validate now: errors show here, not elsewhere
    except FinemixError as exc:
        st.error(str(exc))
    else:
        state.set_value("model", folder)
        state.set_value("pt", pretrained)
        state.set_probe("", 1, "entered")  # a probe belongs to the model it was set for
        st.rerun()

st.subheader("ASR probe: a trigger to measure")
st.caption(
    "For a model without a card (or to test another trigger on one that has one): the text is inserted at a random "
    "position into the live set's non-target sentences, and every ASR view then reports 'ASR for the trigger you "
    "entered'. Several pieces inserted separately: w1+w2. The Scan page fills this with its suspected trigger."
)
try:
    chosen = state.lab_model(st.session_state["model"], st.session_state["pt"], st.session_state.get("data", ""), **state.probe())
except FinemixError as exc:
    st.error(str(exc))
else:
    if warn := lab.data_warning(chosen):
        st.warning(warn, icon=":material/dataset:")
    state.probe_form(chosen, "probe")
