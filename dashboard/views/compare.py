import time

import charts
import pandas as pd
import state
import streamlit as st

from finemix_core import lab
from finemix_core.errors import FinemixError

lm, bench = state.page(
    "Compare",
    "Every defense on the chosen model with the same budget (128 clean examples, or all of a small CSV's train part; the "
    "same fine-tuning), scored on the full test split. Lower ASR is better, but only down to the clean floor (dashed "
    "line), and only if CACC stays near the backdoored model's.",
)
seed = int(st.session_state["seed"])
labelled = lab.data_parts(lm).labelled  # 128, or a small CSV's whole train part
table = lab.compare_table(lm, seed)
COLUMNS = [
    "method",
    "cacc",
    "asr",
    "target bias",
    "ASR floor",
    "rho",
    "rho auto",
    "prune ratio",
    "dev search",
    "suspects taught away",
    "seed",
    "clean n",
    "n test",
    "seconds",
    "when",
    "kind",
]

# stored results first: drawn before any long job below, so they stay final (not greyed out) while it runs
if table.rows.empty:
    st.info(f"No fixed-budget run stored yet for this model (seed {seed}, {labelled} clean examples).")
else:
    rows = lab.with_intervals(
        table.rows.rename(columns={"CACC": "cacc", "ASR": "asr", "n test": "n_clean", "n non-target": "n_nontarget"})
    )
    floor = rows["ASR floor"].dropna().iloc[0] if rows["ASR floor"].notna().any() else None
    if rows.asr.notna().any():
        st.plotly_chart(charts.compare(rows, floor), key="compare_chart")
    st.dataframe(lab.shown(rows.rename(columns={"n_clean": "n test"})[COLUMNS]), hide_index=True, width="stretch")
    st.caption(
        f"Rates over the full test split ({int(rows.n_clean.iloc[0])} clean examples; ASR over "
        f"{int(rows.n_nontarget.iloc[0])} triggered non-target ones); bars show Wilson 95 % intervals. The floor here is the "
        "clean model on the full test split, so it differs slightly from the Mixing lab's live-set floor. "
        "'dev search' lists every ρ or prune ratio the defense tried on clean dev data, and says when none passed "
        "and it fell back (ρ 0.9 or the best dev accuracy for Fine-mixing, prune ratio 0 for fine-pruning). "
        "'suspects taught away': the triggers `finemix scan` suspected from clean data alone, which trigger-aware "
        "recovery (the `+distill` methods) taught the model to ignore — estimates, never the model card's trigger."
    )

if table.missing:
    st.caption(
        f"No stored run yet (seed {seed}, {labelled} clean examples) for: {', '.join(table.missing)}. Measured here: "
        + "; ".join(f"{m} {lab.measured_seconds(lm, m)}" for m in table.missing)
        + "."
    )
    pick = st.multiselect("Run these now", table.missing, default=table.missing)
    go, stop = st.columns([3, 1])
    if go.button("Run missing defenses", type="primary", disabled=not pick):
        # any click while this runs (Cancel included) stops it at its next progress update; finished defenses are stored
        stop.button("Cancel", help="stop after the current step; every defense already finished stays stored")
        bar = st.progress(0.0)
        started = time.perf_counter()
        for i, method in enumerate(pick):
            tunes = {"n": 0, "last": 0}

            def update(done: int, total: int, i: int = i, method: str = method, tunes: dict = tunes) -> None:
                if done < tunes["last"] or tunes["n"] == 0:
                    tunes["n"] += 1  # a new fine-tune began: the next candidate of a dev-only search
                tunes["last"] = done
                share = (i + done / total) / len(pick)
                what = f"method {i + 1} of {len(pick)}: {method} — fine-tune {tunes['n']}, step {done}/{total}"
                bar.progress(share, text=lab.share_text(what, share, time.perf_counter() - started))

            try:
                bench.defend_method(method, seed, int(st.session_state["k"]), 128, update)
            except FinemixError as exc:
                st.error(f"{method}: {exc}")
                break
        st.rerun()

if not table.manual.empty:
    with st.expander(
        f"Hand-set runs from the Mixing lab ({len(table.manual)}): a chosen ρ or tolerance, not a method's fixed budget"
    ):
        st.dataframe(
            lab.shown(table.manual[["method", "rho", "rho auto", "delta", "CACC", "ASR", "target bias", "dev search", "when"]]),
            hide_index=True,
            width="stretch",
        )
with st.expander("All stored runs on this model"):
    hist = lab.history(lm)
    st.dataframe(lab.shown(hist) if not hist.empty else pd.DataFrame(), hide_index=True, width="stretch")
