import charts
import pandas as pd
import state
import streamlit as st

from finemix_core import lab
from finemix_core.errors import FinemixError

lm, bench = state.page(
    "Compare",
    "Every defense on the chosen model with the same budget (128 clean examples, same fine-tuning), scored on the full "
    "test split. Lower ASR is better, but only down to the clean floor (dashed line), and only if CACC stays near the backdoored model's."
)
seed = int(st.session_state["seed"])
hist = lab.history(lm)
runs = hist[(hist["clean n"] == 128) & (hist["seed"] == seed)] if not hist.empty else hist
latest = runs.drop_duplicates("method") if not runs.empty else runs
have = set(latest.method) if not latest.empty else set()
missing = [m for m in lab.COMPARED_METHODS if m not in have]

if missing:
    st.caption(f"No stored run yet (seed {seed}, 128 clean examples) for: {', '.join(missing)}. Each fine-tuning defense takes about a minute on 2 CPU cores.")
    pick = st.multiselect("Run these now", missing, default=missing)
    if st.button("Run missing defenses", type="primary", disabled=not pick):
        bar = st.progress(0.0)
        for i, method in enumerate(pick):
            def update(d, t, i=i, method=method):
                bar.progress((i + d / t) / len(pick), text=f"{method}: step {d}/{t}")
            try:
                bench.defend_method(method, seed, int(st.session_state["k"]), 128, update)
            except FinemixError as exc:
                st.error(f"{method}: {exc}")
                break
        st.rerun()

if latest.empty:
    st.info("No results yet for this model.")
else:
    order = {m: i for i, m in enumerate(lab.COMPARED_METHODS)}
    rows = latest.assign(o=latest.method.map(lambda m: order.get(m, 99))).sort_values("o").rename(columns={"CACC": "cacc", "ASR": "asr"})
    floor = rows["ASR floor"].dropna().iloc[0] if rows["ASR floor"].notna().any() else None
    if rows.asr.notna().any():
        st.plotly_chart(charts.compare(rows, floor), key="compare_chart")
    st.dataframe(rows[["method", "cacc", "asr", "target bias", "ASR floor", "rho", "rho auto", "seed", "clean n", "n test", "seconds", "when", "kind"]],
                 hide_index=True, width="stretch")
with st.expander("All stored runs on this model"):
    st.dataframe(hist if not hist.empty else pd.DataFrame(), hide_index=True, width="stretch")
