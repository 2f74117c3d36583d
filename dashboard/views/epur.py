import charts
import state
import streamlit as st

from finemix_core import lab
from finemix_core.errors import FinemixError

lm, bench = state.page(
    "E-PUR",
    "Every dot is a vocabulary word piece: how far fine-tuning moved its embedding (y) against how often it occurs in clean "
    "text (x). Normal words drift roughly with log frequency; a trigger is rare yet drifts far, so E-PUR flags the top K by "
    "drift / log(max(frequency, c)) (red) and resets those rows to θ_PT."
)

c1, c2, c3 = st.columns(3)
c1.number_input("K — rows to flag", 0, len(lm.pair.tokenizer), step=10, key=state.bind("k"), on_change=state.commit, args=("k",))
floor = c2.number_input("c — frequency floor", 1.5, 1e6, value=20.0, step=5.0)
source = c3.radio("frequency source", ["clean-set", "train-split"], horizontal=True,
                  help="clean-set: the defender's 128 clean examples; train-split: every training sentence (a larger clean corpus)")
try:
    tab = lab.epur_table(lm, int(st.session_state["k"]), float(floor), source, seed=int(st.session_state["seed"]))
except FinemixError as exc:
    st.error(str(exc))
    st.stop()

st.plotly_chart(charts.epur_scatter(tab), key="epur_chart")
if lm.trigger:
    trig = tab[tab.trigger]
    st.markdown("Known trigger pieces: " + ", ".join(
        f"**{r.token}** rank {r['rank']} of {len(tab)} ({'flagged' if r.flagged else 'not flagged'})" for _, r in trig.iterrows()))

left, right = st.columns([2, 1])
flagged = tab[tab.flagged].sort_values("score", ascending=False)
left.markdown(f"**Flagged tokens** (top {len(flagged)})")
left.dataframe(flagged[["rank", "token", "frequency", "drift", "score", "trigger"]], hide_index=True, height=320, width="stretch")
with right:
    if st.toggle("Purify, then evaluate", help="reset the flagged rows of θ_FT to θ_PT and score the live set"):
        s = lab.purified_scores(lm, bench, tab)
        b = lm.backdoored
        st.metric("CACC after E-PUR", f"{s.cacc:.3f}", f"{s.cacc - b.cacc:+.3f} vs backdoored")
        if s.asr is not None:
            st.metric("ASR after E-PUR", f"{s.asr:.3f}", f"{s.asr - b.asr:+.3f} vs backdoored", delta_color="inverse")
            st.metric("clean ASR floor", "—" if lm.floor is None else f"{lm.floor:.3f}")
        st.caption("E-PUR alone only resets embeddings; a full fine-tune also writes the backdoor into the encoder, "
                   "so combine it with Fine-mixing (Compare page).")
