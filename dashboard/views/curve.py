import time

import charts
import state
import streamlit as st

lab = state.lab
lm, bench = state.page(
    "Fine-tuned ρ curve",
    "The decision Fine-mixing asks for: after mixing at ρ AND fine-tuning on 128 clean examples, how much clean accuracy is "
    "kept and how much of the backdoor is left? (The Mixing lab's mix-only curve is before that fine-tune; there a low ρ "
    "calls most inputs the target, so its ASR says little.) Points come from the results database — `finemix sweep "
    "--fine-tune` fills it ahead of a class — and missing ones can be computed here.",
)
ss = st.session_state
recipe = st.radio(
    "recipe",
    list(lab.CURVE_RECIPES),
    horizontal=True,
    key="curve_recipe",
    format_func=lab.RECIPE_LABELS.get,
)
method = lab.recipe_method(recipe, "random", 200)
seed = int(ss["seed"])
curve = lab.tuned_curve(lm, method, seed=seed)

if curve.missing:
    st.caption(
        f"No stored point yet at ρ = {', '.join(f'{r:g}' for r in curve.missing)} for `{method}` (seed {seed}, "
        f"{lab.data_parts(lm).labelled} clean examples). Each is one fine-tune; `{method}` {lab.measured_seconds(lm, method)}."
    )
# stored points are drawn first, so they stay final (not greyed) while missing ones are computed below
points = curve.points
if points.empty:
    st.info("No fine-tuned point stored yet for this recipe.")
else:
    floor = points.asr_floor.dropna().iloc[0] if points.asr_floor.notna().any() else lm.floor
    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.tuned_curve(points, curve.auto_rho, floor), key="tuned_chart")
    c2.plotly_chart(charts.pareto(points.assign(stage="fine-tuned"), None), key="tuned_pareto")
    shown = points.assign(
        **{
            m: [lab.rate_text(v, int(n)) for v, n in zip(points[m], points[n_col])]
            for m, n_col in (("cacc", "n_clean"), ("asr", "n_nontarget"), ("target_bias", "n_nontarget"))
        }
    )
    st.dataframe(
        lab.shown(shown[["rho", "cacc", "asr", "target_bias", "asr_floor", "n_clean", "n_nontarget"]]).rename(
            columns={
                "rho": "ρ",
                "cacc": "CACC [95 %]",
                "asr": "ASR [95 %]",
                "target_bias": "target bias [95 %]",
                "asr_floor": "clean ASR floor",
                "n_clean": "n test",
                "n_nontarget": "n non-target",
            }
        ),
        hide_index=True,
        width="stretch",
    )
    st.caption(
        f"Full test split ({int(points.n_clean.iloc[0])} clean examples; ASR and target bias over "
        f"{int(points.n_nontarget.iloc[0])} triggered non-target ones), Wilson 95 % intervals; floor: the clean model "
        "on the same triggered test set."
    )
if recipe != "paper":
    st.caption(lab.RHO_CHOICE_NOTE)
if curve.auto_rho is not None:
    st.markdown(
        f"**Auto-ρ picked ρ = {curve.auto_rho:g}** (green line) from clean dev accuracy alone — never test or triggered data. "
        "What it tried: " + lab.search_text(curve.auto_search)
    )
else:
    st.caption("No auto-ρ run stored for this recipe yet (`finemix defend`, the Compare page or the report make one).")

if curve.missing:
    go, stop = st.columns([3, 1])
    if go.button(f"Compute the {len(curve.missing)} missing points", type="primary"):
        stop.button("Cancel", key="curve_cancel", help="stop after the current step; finished points stay stored")
        bar = st.progress(0.0)
        started = time.perf_counter()
        for i, rho in enumerate(curve.missing):

            def update(done: int, total: int, i: int = i, rho: float = rho) -> None:
                share = (i + done / total) / len(curve.missing)
                what = f"point {i + 1} of {len(curve.missing)}: ρ = {rho:g}, fine-tune step {done}/{total}"
                bar.progress(share, text=lab.share_text(what, share, time.perf_counter() - started))

            try:
                lab.curve_point(lm, method, rho, seed, progress=update)
            except lab.FinemixError as exc:
                st.error(f"ρ = {rho:g}: {exc}")
                break
        st.rerun()
