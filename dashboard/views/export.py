import state
import streamlit as st

from finemix_core import lab

lm, bench = state.page(
    "Export",
    "Download the defended model of this session as a standard Hugging Face folder (zip, safetensors + tokenizer + a "
    "`finemix.json` card saying how it was made), and the results of every run on this model as CSV or JSON.",
)

st.subheader("Defended model")
if bench.defended is None:
    st.info("No defended model in this session yet: fine-tune a mix on the Mixing lab or run a defense on the Compare page.")
else:
    row = bench.defended_row
    st.write(
        f"{row.method} · ρ {lab.fmt(row.rho, 2)} · seed {row.seed} · {row.clean_size} clean examples · "
        f"test CACC {row.cacc:.3f} · {'ASR' if lm.trigger_source != 'scan' else 'estimated ASR (suspected trigger)'} "
        f"{lab.fmt(row.asr)}"
    )
    if row.parts:
        st.caption(row.parts)
    if st.button("Prepare the zip"):
        with st.spinner("Writing the model folder …"):
            st.session_state["_zip"] = (id(bench.defended), lab.export_zip(lm, bench.defended, row))
    ready = st.session_state.get("_zip")
    if ready and ready[0] == id(bench.defended):
        st.download_button(
            "Download model (.zip)", ready[1], file_name=f"{lm.short_name}-{row.method}.zip", mime="application/zip"
        )

st.subheader("Report")
hist = lab.history(lm)
nothing = "no run stored for this model yet: run a defense first" if hist.empty else None
st.download_button(
    "Download runs (CSV)",
    hist.to_csv(index=False),
    file_name=f"{lm.short_name}-runs.csv",
    mime="text/csv",
    disabled=hist.empty,
    help=nothing,
)
st.download_button(
    "Download report (JSON)",
    lab.report_json(lm),
    file_name=f"{lm.short_name}-report.json",
    mime="application/json",
    disabled=hist.empty,
    help=nothing,
)
if hist.empty:
    st.caption(nothing.capitalize() + ".")
else:
    st.dataframe(lab.shown(hist), hide_index=True, width="stretch")
