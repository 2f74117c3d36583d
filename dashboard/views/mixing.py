from dataclasses import dataclass

import charts
import pandas as pd
import state
import streamlit as st

from finemix_core.lab import Scores

lm, bench = state.page(
    "Mixing lab",
    "Fine-mixing keeps a share ρ of the fine-tuned weights and resets the rest to the pretrained θ_PT; move ρ and watch "
    "clean accuracy (CACC) and attack success rate (ASR) on a fixed live set. Read ASR beside the target bias and the clean "
    "floor: a model that predicts the target everywhere has ASR 1 without any backdoor; fine-tuning the mix is step 2 of "
    "the method.",
)
RHOS = [round(0.1 * i, 1) for i in range(11)]
with st.expander("ASR probe: a trigger to measure" + ("" if lm.trigger else " — none known yet"), expanded=not lm.trigger):
    state.probe_form(lm, "mix_probe")


@dataclass(frozen=True)
class Again:
    """What 'Run it again' repeats for a fine-tuned point."""

    rho: float | None  # None: auto-ρ
    delta: float  # auto-ρ's dev tolerance (a fraction)
    keep_found: bool  # keep θ_FT when the scan found a complete trigger (the default; off: --found-rho never)


def _fmt(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:.3f}"


@st.cache_data(max_entries=16, show_spinner="Computing the mix-only ρ sweep (11 points) …")
def mix_sweep(model: str, pt: str, data: str, mode: str, seed: int, probe: tuple = ()) -> pd.DataFrame:
    # `probe` (trigger, target, source) is part of the key: a new ASR probe is a new curve
    return state.lab.Workbench(state.lab_model(model, pt, data, *probe)).sweep(RHOS, mode, seed)


def metric_row(label: str, s: Scores, ref: Scores | None, floor: float | None) -> None:
    """Four rates on the live set, each with its Wilson 95 % interval (n = the examples it is a share of)."""
    ci = "95 % Wilson interval in brackets, over the live set's {n} {what} examples"
    # two per row: a rate with its interval ('0.479 [0.34, 0.62]') is cut to '0.479 [0.34, …' in a quarter of the page
    c1, c2 = st.columns(2)
    c3, c4 = st.columns(2)
    c1.metric(
        f"CACC · {label}",
        state.lab.metric_text(s, "cacc"),
        state.change(s.cacc, None if ref is None else ref.cacc, "vs backdoored"),
        help=ci.format(n=s.n_clean, what="clean"),
    )
    if s.asr is None:
        c2.metric(f"ASR · {label}", "—", help="no trigger known: enter one on the Models page or run a Scan")
        return
    c2.metric(
        f"ASR · {label}",
        state.lab.metric_text(s, "asr"),
        state.change(s.asr, None if ref is None else ref.asr, "vs backdoored"),
        delta_color="inverse",
        help=ci.format(n=state.lab.n_of(s, "asr"), what="triggered non-target"),
    )
    c3.metric(
        "target bias",
        state.lab.metric_text(s, "target_bias"),
        help="non-target examples WITHOUT the trigger predicted as the target; " + ci.format(n=s.n_nontarget, what="non-target"),
    )
    gap = None if floor is None else s.asr - floor
    c4.metric(
        "clean ASR floor · live set",
        "—" if floor is None else state.lab.rate_text(floor, state.lab.n_of(s, "asr")),
        None if gap is None else f"{gap:+.3f}: ASR {'above' if gap >= 0 else 'below'} the floor",
        delta_color="inverse",
        help="the zoo's clean model on the same live set (the Compare and Export pages use the full test split, so "
        "their floor differs slightly)",
    )


@st.fragment
def live() -> None:
    ss = st.session_state
    left, mid, right = st.columns([3, 1, 1])
    left.slider(
        "ρ — share of fine-tuned weights kept", 0.0, 1.0, step=0.05, key=state.bind("rho"), on_change=state.commit, args=("rho",)
    )
    mid.radio(
        "mask",
        ["random", "sorted"],
        key=state.bind("mode"),
        on_change=state.commit,
        args=("mode",),
        horizontal=True,
        help="random: uniform positions; sorted: keep the largest |θ_FT − θ_PT|",
    )
    right.number_input("seed", 0, 2**31 - 1, key=state.bind("seed"), on_change=state.commit, args=("seed",))
    rho, mode, seed = ss["rho"], ss["mode"], ss["seed"]
    if state.bf16_ok(lm):
        bench.fast = st.toggle(
            "bf16 fast path (approximate; off by default)",
            key="fast_path",
            help="the live set through a bf16 copy of the working weights (cast once per move); `finemix bench` measures its "
            "speed and agreement with fp32",
        )
    head = f"**Mix only** at ρ = {rho:g} ({mode} mask, seed {seed}) — no fine-tuning" + (" · bf16" if bench.fast else "")
    slot = st.empty()
    bench.mix(rho, mode, seed)
    # first numbers from a slice of the live set within a second, with their wider intervals; then the whole set. A new
    # move reruns this fragment and interrupts the old one at its next Streamlit call: moves never queue.
    first = bench.score(first=state.lab.N_FIRST)
    with slot.container():
        st.markdown(head + f" · first {first.n_clean} clean + {state.lab.n_of(first, 'asr')} triggered examples, refining …")
        metric_row("mix", first, lm.backdoored, lm.floor)
    mixed = bench.score()
    with slot.container():
        st.markdown(head)
        metric_row("mix", mixed, lm.backdoored, lm.floor)
    tuned_points = ss.setdefault("_tuned", {})
    recipe = st.radio(
        "step 2 recipe",
        list(state.lab.RECIPES),
        horizontal=True,
        key="recipe",
        format_func=state.lab.RECIPE_LABELS.get,
        help="default = `finemix defend`: besides the 128 labelled examples it distils θ_FT's own predictions on "
        "clean unlabelled text, which wins back clean accuracy at a low ρ, and teaches that the trigger the scan "
        "suspects (from clean data alone) means nothing; paper = Fine-mixing as published. " + state.lab.RHO_CHOICE_NOTE,
    )
    tuned_key = (lm.name, rho, mode, seed, recipe)
    b1, b2, b3 = st.columns([2, 1, 1])
    method = state.lab.recipe_method(recipe, mode)
    if b1.button(
        f"Fine-tune the mix ({state.lab.data_parts(lm).labelled} clean examples)",
        help=f"Fine-mixing step 2 at this ρ; {method} {state.lab.measured_seconds(lm, method)}",
    ):
        update, bar = state.progress("fine-tuning")
        scores, row = bench.fine_tune(rho, mode, seed, recipe=recipe, progress=update)
        tuned_points[tuned_key] = {"rho": rho, "mode": mode, "seed": seed, "stage": "fine-tuned", **scores.as_dict(), "test": row}
        tuned_points[tuned_key].update(note=state.lab.read_back_note(bench.defended), again=Again(rho, 0.02, False))
        bar.empty()
    points = b3.number_input(
        "tolerance (dev points)",
        0.0,
        50.0,
        2.0,
        0.5,
        key="auto_tolerance",
        help="auto-ρ accepts a clean DEV accuracy this many points below θ_FT's; larger = lower ρ, more of the "
        "backdoor removed, more clean accuracy lost",
    )
    keep_found = recipe == "default" and st.toggle(
        "auto-ρ: keep θ_FT (ρ = 1) when the scan found a complete trigger (the default)",
        value=True,
        key="keep_found",
        help=state.lab.KEEP_FOUND_NOTE,
    )
    if note := state.lab.precision_note(lm):
        st.caption(note)
    if b2.button(
        "Find auto-ρ",
        help=f"Smallest ρ whose mixed+fine-tuned clean DEV accuracy is within {points:g} points of θ_FT's; several "
        f"fine-tunes. With the default 2 points it is the recipe's method as registered ({method}): stored for Compare and "
        f"the curve page; it {state.lab.measured_seconds(lm, method)}",
    ):
        update, bar = state.progress("auto-ρ: fine-tuning candidates on dev accuracy")
        scores, row = bench.fine_tune(
            None, mode, seed, delta=points / 100, recipe=recipe, progress=update, keep_found=keep_found
        )
        point = {"rho": row.rho, "mode": mode, "seed": seed, "stage": "fine-tuned", **scores.as_dict(), "test": row}
        point.update(note=state.lab.read_back_note(bench.defended), again=Again(None, points / 100, keep_found))
        ss.setdefault("_auto_rho", {})[(lm.name, mode, seed, recipe)] = (row.rho, points, row.search, point)
        tuned_points[(lm.name, row.rho, mode, seed, recipe)] = point
        bar.empty()

    def tuned_block(p: dict, title: str, key: str) -> None:
        st.markdown(f"{title} (live set; full test split: CACC {p['test'].cacc:.3f}, ASR {_fmt(p['test'].asr)})")
        if p.get("note"):
            st.caption(p["note"])
            if st.button("Run it again", key=key, help="a new run of the same defense (it replaces the stored one)"):
                again: Again = p["again"]
                update, bar = state.progress("fine-tuning")
                scores, row = bench.fine_tune(
                    again.rho, mode, seed, delta=again.delta, recipe=recipe, progress=update, fresh=True,
                    keep_found=again.keep_found,
                )
                p.update(rho=row.rho, **scores.as_dict(), test=row, note=None)
                bar.empty()
                st.rerun()
        metric_row(
            "fine-tuned",
            Scores(p["cacc"], p["asr"], p["target_bias"], p["n_clean"], p["n_nontarget"], p.get("n_triggered")),
            lm.backdoored,
            lm.floor,
        )

    auto, tolerance, search, auto_point = ss.get("_auto_rho", {}).get((lm.name, mode, seed, recipe), (None, None, [], None))
    if tuned_key in tuned_points:
        tuned_block(tuned_points[tuned_key], f"**After fine-tuning** the mix at ρ = {rho:g}", "again_tuned")
    if auto is not None:
        if auto_point is not None and round(auto, 6) != round(rho, 6):  # the chosen ρ's numbers at once, wherever the slider is
            tuned_block(auto_point, f"**auto-ρ's model** at ρ = {auto:g}", "again_auto")
        st.caption(
            f"auto-ρ chose ρ = {auto:g} with a tolerance of {tolerance:g} dev points (on clean dev accuracy only; "
            "never on test or triggered data)."
            + (f" Keeping θ_FT: {state.lab.keep_found_outcome(search)}" if auto_point and auto_point["again"].keep_found else "")
            + " Every candidate it tried:"
        )
        st.dataframe(
            pd.DataFrame(search).rename(columns={"value": "ρ", "dev_acc": "dev accuracy", "passed": "within tolerance"})[
                ["ρ", "dev accuracy", "within tolerance"]
            ],
            hide_index=True,
        )
    sweep = state.lab.with_intervals(
        mix_sweep(ss["model"], ss["pt"], ss.get("data", ""), mode, seed, tuple(state.probe().values()))
    )
    tuned = state.lab.with_intervals(
        pd.DataFrame(
            [p for (name, _, m, s, r), p in tuned_points.items() if name == lm.name and m == mode and s == seed and r == recipe]
        )
    )
    c1, c2 = st.columns(2)
    if lm.trigger:
        c1.plotly_chart(charts.sweep(sweep, tuned, rho, auto, lm.floor), key="sweep_chart")
        pts = pd.concat([sweep.assign(stage="mix-only"), tuned]) if not tuned.empty else sweep.assign(stage="mix-only")
        c2.plotly_chart(charts.pareto(pts, (mixed.cacc, mixed.asr)), key="pareto_chart")
    else:
        c1.plotly_chart(charts.sweep(sweep, tuned, rho, auto, None), key="sweep_chart")
        c2.info("No ASR without a trigger: enter one above (ASR probe) or run the Scan page.")
    st.caption(
        f"Live set: {len(lm.interactive.clean)} clean + {len(lm.interactive.triggered or [])} triggered test examples; "
        f"backdoored θ_FT there: CACC {lm.backdoored.cacc:.3f}, ASR {_fmt(lm.backdoored.asr)}. "
        "Full-test-split numbers: Compare page."
    )


live()
