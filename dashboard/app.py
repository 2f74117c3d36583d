"""finemix lab: `streamlit run dashboard/app.py` (or `finemix lab`)."""

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import state` / `import charts` from the pages

import state  # noqa: E402

st.set_page_config(page_title="finemix lab", page_icon="🧪", layout="wide")
state.init()
pages = [
    st.Page("pages/models.py", title="Models", icon="📦", default=True),
    st.Page("pages/mixing.py", title="Mixing lab", icon="🎚️"),
    st.Page("pages/epur.py", title="E-PUR", icon="🔎"),
    st.Page("pages/compare.py", title="Compare", icon="📊"),
    st.Page("pages/playground.py", title="Playground", icon="✍️"),
    st.Page("pages/export.py", title="Export", icon="📤"),
]
nav = st.navigation(pages)
with st.sidebar:
    st.markdown(f"**Model:** `{st.session_state.get('model') or '—'}`")
    st.caption("Fine-mixing & E-PUR (Zhang et al., EMNLP 2022 Findings). θ_PT here: all-MiniLM-L6-v2, not the paper's BERT-base.")
    if st.session_state.get("_bad_params"):
        st.warning(f"Ignored invalid URL values: {', '.join(st.session_state['_bad_params'])}")
nav.run()
