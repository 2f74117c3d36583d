import charts
import state
import streamlit as st

from finemix_core import lab
from finemix_core.errors import FinemixError

lm, bench = state.page(
    "E-PUR",
    "Every dot is a vocabulary word piece: how far fine-tuning moved its embedding (y) against how often it occurs in clean "
    "text (x). Normal words drift roughly with log frequency; a trigger is rare yet drifts far, so E-PUR flags the top K by "
    "drift / log(max(frequency, c)) (red) and resets those rows to θ_PT.",
)

c1, c2, c3 = st.columns(3)
c1.number_input("K — rows to flag", 0, len(lm.pair.tokenizer), step=10, key=state.bind("k"), on_change=state.commit, args=("k",))
floor = c2.number_input("c — frequency floor", 1.5, 1e6, value=20.0, step=5.0)
source = c3.radio(
    "frequency source",
    list(lab.EPUR_SOURCES),
    horizontal=True,
    help="defender-pool: the 128 labelled clean examples plus the clean unlabelled pool the default defense "
    "distils on (what it counts); clean-set: the 128 labelled examples alone (most words then have "
    "frequency 0); train-split: every training sentence",
)
try:
    tab = lab.epur_table(lm, int(st.session_state["k"]), float(floor), source, seed=int(st.session_state["seed"]))
except FinemixError as exc:
    st.error(str(exc))
    st.stop()

slope, intercept = lab.epur_trend(tab)
st.plotly_chart(charts.epur_scatter(tab, (slope, intercept)), key="epur_chart")
seen = int((tab.frequency > 0).sum())
st.caption(
    f"Frequencies from {source} ({len(lab.epur_texts(lm, source, seed=int(st.session_state['seed']))):,} texts): "
    f"{seen:,} of {len(tab):,} word pieces occur. Trend over those: drift ≈ {intercept:.4f} + {slope:+.4f} · "
    "log10(frequency + 1) (dashed line); a trigger sits far above it at low frequency."
)
if lm.trigger:
    trig = tab[tab.trigger]
    st.markdown(
        "Known trigger pieces: "
        + ", ".join(
            f"**{r.token}** rank {r['rank']} of {len(tab)} ({'flagged' if r.flagged else 'not flagged'}; "
            f"frequency {r.frequency}, "
            f"drift {r.vs_trend:.1f}× the trend)"
            for _, r in trig.iterrows()
        )
    )

left, right = st.columns([2, 1])
flagged = tab[tab.flagged].sort_values("score", ascending=False)
flagged = flagged.assign(words=lab.piece_words(lm, flagged, source, int(st.session_state["seed"])).replace("", "— (not in the clean text)"))
left.markdown(f"**Flagged word pieces** (top {len(flagged)}), with the clean-text words each is part of")
left.dataframe(
    flagged[["rank", "token", "words", "frequency", "drift", "vs_trend", "score", "trigger"]].rename(
        columns={"vs_trend": "× trend", "token": "piece", "words": "in words"}
    ),
    hide_index=True,
    height=320,
    width="stretch",
)
with right:
    if st.toggle("Purify, then evaluate", help="reset the flagged rows of θ_FT to θ_PT and score the live set"):
        s = lab.purified_scores(lm, bench, tab)
        b = lm.backdoored
        st.metric("CACC after E-PUR", lab.metric_text(s, "cacc"), state.change(s.cacc, b.cacc, "vs backdoored"))
        if s.asr is not None:
            st.metric("ASR after E-PUR", lab.metric_text(s, "asr"), state.change(s.asr, b.asr, "vs backdoored"), delta_color="inverse")
            st.metric("clean ASR floor · live set", "—" if lm.floor is None else lab.rate_text(lm.floor, lab.n_of(s, "asr")))
        st.caption("On the live set, with Wilson 95 % intervals in brackets.")
        st.caption(
            "E-PUR alone only resets embeddings; a full fine-tune also writes the backdoor into the encoder, "
            "so combine it with Fine-mixing (Compare page)."
        )
