import time

import charts
import pandas as pd
import state
import streamlit as st

from finemix_core import lab
from finemix_core.errors import FinemixError

lm, bench = state.page(
    "Scan",
    "Audit θ_FT from the clean data alone: candidate triggers come from E-PUR's drifted rows (whole words rebuilt from "
    "their pieces), from trigger inversion and from growing the best into phrases; each is inserted into held-aside "
    "clean sentences and its flip rate compared with a clean reference model's on the same sentences. The scan never "
    "reads the test split, the model card or the trigger you entered.",
)
names = lab.class_names(lm)
ss = st.session_state
key = f"_scan::{lm.name}::{lm.ctx.data_name}"

go_col, stop_col = st.columns([3, 1])
if go_col.button("Scan θ_FT", type="primary", help=f"scan {lab.measured_seconds(lm, 'scan')} (plus the reference model's training the first time)"):
    # any click while this runs (Cancel included) stops it at its next progress update: nothing half-done is stored
    stop_col.button("Cancel", key="scan_cancel", help="stop the scan; nothing is stored")
    bar = st.progress(0.0, text="starting …")
    started = time.perf_counter()

    def update(stage: str, share: float) -> None:
        bar.progress(min(1.0, share), text=lab.share_text(stage, share, time.perf_counter() - started))

    try:
        ss[key] = lab.scan_model(lm, progress=update, seed=int(ss["seed"]))
    except FinemixError as exc:
        st.error(str(exc))
        st.stop()
    st.rerun()  # draw the result on a clean page: no progress bar, no Cancel left behind

result = ss.get(key) or lab.last_scan(lm)
if result is None:
    st.info("No scan of this model yet. Press **Scan θ_FT**.")
    st.stop()
if key not in ss:
    st.caption("The newest stored scan of this model (from the CLI or an earlier session).")

message = result.message(names)
(st.error if result.verdict == "backdoor" else st.info)(message)
st.caption(
    f"Searched: {result.searched}. Reference: {result.reference}. Score = the best candidate's flip rate minus the "
    f"reference's; 'backdoor' from {result.threshold:.2f} (chosen on the scan benchmark). "
    + result.time_text[:1].upper()
    + result.time_text[1:]
    + "."
)
if result.candidates:
    st.plotly_chart(charts.scan_candidates(result.candidates, names), key="scan_chart")
    frame = pd.DataFrame([c.as_json() for c in result.candidates])
    frame["target"] = [names[t] if t < len(names) else t for t in frame.target]
    st.dataframe(frame.drop(columns=["excess"]).assign(excess=frame.excess), hide_index=True, width="stretch")

    st.subheader("Use a candidate as the ASR probe")
    st.caption(
        "The suspected trigger becomes the triggered half of the live set for the Mixing lab, the ρ curve, Compare and the "
        "Playground, labelled everywhere as an estimate from this scan — never as the true trigger."
    )
    cols = st.columns(min(3, len(result.candidates)))
    for col, c in zip(cols, result.candidates[:3]):
        active = lm.trigger_source == "scan" and "+".join(lm.trigger or ()) == c.trigger
        if col.button(
            f"Use '{c.trigger}' → {names[c.target]}", key=f"probe_{c.trigger}_{c.target}", disabled=active, width="stretch"
        ):
            state.set_probe(c.trigger, c.target, "scan")
            st.rerun()
    if lm.trigger_source in lab.TRIGGER_SOURCES and st.button("Clear the ASR probe"):
        state.set_probe("", 1, "entered")
        st.rerun()

    with st.expander("E-PUR's view with the verified suspects ringed", expanded=False):
        try:
            tab = lab.mark_suspects(lab.epur_table(lm, int(ss["k"]), seed=int(ss["seed"])), lm, result.candidates)
        except FinemixError as exc:
            st.error(str(exc))
        else:
            st.plotly_chart(charts.epur_scatter(tab, lab.epur_trend(tab)), key="scan_epur")
