import charts
import pandas as pd
import state
import streamlit as st

lab = state.lab
st.title("Start here")
st.markdown(
    "A model fine-tuned by someone else may hide a **backdoor**: a trigger word (here `cf`) that flips its answer to the "
    "attacker's label. **Fine-mixing** removes it with what a defender has — the public pretrained weights θ_PT and a "
    "small clean set — and **E-PUR** resets the word embeddings a rare trigger dragged far."
)
st.image(charts.method_picture(), width="stretch")  # inline SVG: nothing fetched
demo_col, own_col = st.columns(2)
demo_col.markdown("**The zoo demo** (below): a backdoor the project planted, so its trigger is known.")
with own_col:
    st.markdown(
        "**Audit your own model**: load its folder and a clean CSV on the Models page, then let the Scan page look for a "
        "trigger from clean data alone and use what it finds as the ASR probe."
    )
    st.page_link("views/models.py", label="1 · Load your model", icon=":material/inventory_2:")
    st.page_link("views/scan.py", label="2 · Scan it", icon=":material/search:")

loaded = state.current()
if loaded is None:
    st.stop()
lm, bench = loaded
state.describe(lm)
if not lm.trigger:
    st.warning(
        "No trigger is known for this model, so there is no backdoor to watch yet: run the **Scan** (it suspects a trigger "
        "from clean data and can use it as the ASR probe), enter a trigger on the Models page, or pick `word-cf`."
    )
    st.page_link("views/scan.py", label="Scan this model", icon=":material/search:")
    state.probe_form(lm, "start_probe")
    st.stop()
names = lab.class_names(lm)
target = lm.interactive.target
ss = st.session_state
demo_key = ("_demo", lm.name)


def said(probs) -> str:
    best = max(range(len(probs)), key=lambda i: probs[i])
    return f"{names[best]} ({probs[best]:.2f})"


st.subheader("1 · Watch the trigger fire")
st.caption(
    f"Look for: sentences θ_FT calls **{names[1 - target] if len(names) == 2 else 'non-target'}** turn "
    f"**{names[target]}** the moment the trigger is inserted."
)
if st.button("Show the backdoor", key="start_fire", type="primary"):
    ss[demo_key] = lab.demo_sentences(lm)
demo = ss.get(demo_key)
if demo:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "sentence (trigger inserted)": d.triggered,
                    "θ_FT without the trigger": said(d.clean_probs),
                    "θ_FT with the trigger": said(d.triggered_probs),
                }
                for d in demo
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    st.caption(
        f"Over the whole live set: ASR {lab.metric_text(lm.backdoored, 'asr')} of "
        f"{lab.n_of(lm.backdoored, 'asr')} triggered non-target test sentences become {names[target]} "
        "(95 % interval in brackets)."
    )

st.subheader("2 · Move ρ")
st.caption(
    "Look for: what keeping only a share ρ of the fine-tuned weights does to the backdoor on its own, before any "
    "fine-tuning — the sentence under the table says what these numbers show."
)
if st.button("Mix at ρ = 0.5, 0.2, 0.1 and 0 (no fine-tune yet)", key="start_mix"):
    ss[("_demo_mix", lm.name)] = lab.mix_lesson(lm, bench, seed=int(ss["seed"]))
lesson = ss.get(("_demo_mix", lm.name))
if lesson is not None:
    shown = lesson.rows.rename(columns={"rho": "ρ", "cacc": "CACC", "asr": "ASR", "target_bias": "target bias"})
    shown.loc[len(shown)] = {"ρ": 1.0, "CACC": lm.backdoored.cacc, "ASR": lm.backdoored.asr, "target bias": lm.backdoored.target_bias}
    st.dataframe(shown.round(3), hide_index=True)
    st.markdown(lesson.text)
    st.caption(f"Live set: {lab.n_of(lm.backdoored, 'cacc')} clean and {lab.n_of(lm.backdoored, 'asr')} triggered test sentences; ρ = 1 is θ_FT.")
    st.page_link("views/mixing.py", label="Move ρ yourself on the Mixing lab", icon=":material/tune:")

st.subheader("3 · Run the defense and watch the trigger stop firing")
st.caption(
    "Look for: the same triggered sentences read as their true class again, and ASR falls towards the clean model's "
    "floor while clean accuracy stays close to θ_FT's."
)
method = lab.recipe_method("default")
if st.button(
    "Defend: E-PUR + Fine-mixing + distillation",
    key="start_defend",
    help=f"The default `finemix defend` with auto-ρ: it scans θ_FT for a suspected trigger from clean data first and "
    f"teaches the suspect away while distilling; {method} {lab.measured_seconds(lm, method)}",
):
    update, bar = state.progress("defending")
    scores, row = bench.fine_tune(None, "random", int(ss["seed"]), recipe="default", progress=update)
    ss[("_demo_defended", lm.name)] = (scores, row)
    bar.empty()
if (note := lab.read_back_note(bench.defended)) and ss.get(("_demo_defended", lm.name)) is not None:
    st.caption(note)
    if st.button("Run it again", key="start_defend_again", help="a new run of the same defense (it replaces the stored one)"):
        update, bar = state.progress("defending")
        scores, row = bench.fine_tune(None, "random", int(ss["seed"]), recipe="default", progress=update, fresh=True)
        ss[("_demo_defended", lm.name)] = (scores, row)
        bar.empty()
        st.rerun()
defended = ss.get(("_demo_defended", lm.name))
if defended is not None and bench.defended is not None:
    scores, row = defended
    demo = demo or lab.demo_sentences(lm)
    probs = lab.predict_texts(bench.defended.model, lm.pair.tokenizer, [d.triggered for d in demo]) if demo else []
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "sentence (trigger inserted)": d.triggered,
                    "θ_FT": said(d.triggered_probs),
                    "defended": said(tuple(map(float, p))),
                }
                for d, p in zip(demo, probs)
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    still = sum(int(p.argmax()) == target for p in probs)
    st.markdown(
        f"**The trigger fires on {still} of these {len(demo)} sentences after the defense** "
        f"(ρ = {row.rho:g}, chosen on clean dev accuracy; {row.seconds:.0f} s)."
    )
    c1, c2, c3 = st.columns(3)
    c1.metric("CACC · defended", lab.metric_text(scores, "cacc"), state.change(scores.cacc, lm.backdoored.cacc))
    c2.metric("ASR · defended", lab.metric_text(scores, "asr"), state.change(scores.asr, lm.backdoored.asr), delta_color="inverse")
    c3.metric("clean ASR floor · live set", "—" if lm.floor is None else lab.rate_text(lm.floor, lab.n_of(scores, "asr")))
    st.caption("Live set rates with 95 % intervals; the full test split's numbers are stored and shown on the Compare page.")
    st.page_link("views/playground.py", label="Try your own sentences in the Playground", icon=":material/edit_note:")
