"""finemix lab: `streamlit run dashboard/app.py` (or `finemix lab`)."""

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import state` / `import charts` from the pages

import state

# a local icon: a ":material/…:" page icon makes the browser fetch it from fonts.gstatic.com, which offline fails
st.set_page_config(page_title="finemix lab", page_icon=str(Path(__file__).resolve().parent / "favicon.png"), layout="wide")
state.init()
pages = [
    st.Page("views/start.py", title="Start here", icon=":material/school:", default=True),
    st.Page("views/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("views/scan.py", title="Scan", icon=":material/search:"),
    st.Page("views/mixing.py", title="Mixing lab", icon=":material/tune:"),
    st.Page("views/curve.py", title="Fine-tuned ρ curve", icon=":material/show_chart:"),
    st.Page("views/epur.py", title="E-PUR", icon=":material/manage_search:"),
    st.Page("views/compare.py", title="Compare", icon=":material/leaderboard:"),
    st.Page("views/playground.py", title="Playground", icon=":material/edit_note:"),
    st.Page("views/export.py", title="Export", icon=":material/download:"),
]
nav = st.navigation(pages)
state.publish()  # a page switch from the sidebar clears the query string: write the view's state back every run
with st.sidebar:
    st.markdown(f"**Model:** `{st.session_state.get('model') or '—'}`")
    if st.session_state.get("trigger"):
        source = "from scan, an estimate" if st.session_state.get("tsrc") == "scan" else "entered"
        st.markdown(f"**ASR probe:** `{st.session_state['trigger']}` → class {st.session_state.get('target')} ({source})")
    st.caption("Fine-mixing & E-PUR (Zhang et al., EMNLP 2022 Findings). θ_PT here: all-MiniLM-L6-v2, not the paper's BERT-base.")
    if st.session_state.get("_bad_params"):
        st.warning(f"Ignored invalid URL values: {', '.join(st.session_state['_bad_params'])}")
nav.run()
