import pandas as pd
import state
import streamlit as st

from finemix_core import lab
from finemix_core.errors import FinemixError

lm, bench = state.page(
    "Playground",
    "Type a sentence and see what the backdoored model and the defended model predict, with their confidences. Tick "
    "*insert the trigger* to watch the backdoor fire in θ_FT — and, if the defense worked, not in the defended model.",
)

text = st.text_area("Sentence", lab.default_sentence(lm), max_chars=2000, key=f"play_text::{lm.name}::{lm.ctx.data_name}")
insert = st.checkbox("Insert the trigger", value=bool(lm.trigger), disabled=not lm.trigger)
if bench.defended is not None:
    defended, label = bench.defended.model, f"defended ({bench.defended.method}, ρ={bench.defended.rho})"
else:
    rho, mode, seed = st.session_state["rho"], st.session_state["mode"], st.session_state["seed"]
    if bench.state_label != f"mix ρ={rho:g} ({mode})":  # a statement, not an expression: Streamlit magic would print it
        bench.mix_scores(rho, mode, seed)
    defended, label = bench.model, f"mix only, ρ={rho:g} ({mode}); fine-tune it on the Mixing lab for the full defense"
shown = lab.with_trigger(text, lm.trigger, lm.pair.tokenizer) if insert and lm.trigger else text
st.markdown(f"Input: `{shown}`")
read, total = lab.tokens_read(shown, lm.pair.tokenizer)
if total > read:
    st.caption(
        f"The models read the first {read} of this text's {total} word pieces; the rest is cut off. An inserted trigger "
        "goes among the words they read, as in every ASR this lab measures."
    )
try:
    probs_ft = lab.predict_texts(lm.pair.ft, lm.pair.tokenizer, [shown])[0]
    probs_def = lab.predict_texts(defended, lm.pair.tokenizer, [shown])[0]
except FinemixError as exc:
    st.error(str(exc))
    st.stop()
names = lab.class_names(lm)
left, right = st.columns(2)
for col, name, probs in ((left, "backdoored θ_FT", probs_ft), (right, label, probs_def)):
    with col:
        pred = int(probs.argmax())
        col.metric(name, names[pred], f"confidence {probs[pred]:.3f}", delta_color="off")
        col.bar_chart(pd.DataFrame({"probability": probs}, index=list(names)))
if lm.trigger:
    st.caption(f"The backdoor's target is {names[lm.interactive.target]} (label {lm.interactive.target}).")
