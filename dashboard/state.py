"""Session state ↔ URL query string, and the bounded model cache.

The state that matters for sharing a view (model, θ_PT, ρ, mask mode, K, seed) lives in
`st.session_state` under plain keys and is mirrored into `st.query_params` after every change, so
opening a copied URL restores the view. Widgets use `w_<name>` keys bound to those plain keys:
Streamlit drops a widget's own key when its page is not shown, the plain key survives.
"""

from __future__ import annotations

import streamlit as st

from finemix_core import lab
from finemix_core.errors import FinemixError

# trigger/target/tsrc: the ASR probe for any model (typed by the user or suspected by a scan); empty: the card's trigger
DEFAULTS = {
    "model": "",
    "pt": "default",
    "data": "",
    "rho": 0.3,
    "mode": "random",
    "k": 200,
    "seed": 0,
    "trigger": "",
    "target": 1,
    "tsrc": "entered",
}
TYPES = {
    "model": str,
    "pt": str,
    "data": str,
    "rho": float,
    "mode": str,
    "k": int,
    "seed": int,
    "trigger": str,
    "target": int,
    "tsrc": str,
}


def _valid(name: str, value) -> bool:
    return {
        "rho": lambda v: 0.0 <= v <= 1.0,
        "mode": lambda v: v in lab.MODES,
        "k": lambda v: 0 <= v <= 30522,
        "seed": lambda v: 0 <= v < 2**31,
        "target": lambda v: 0 <= v < 1000,
        "tsrc": lambda v: v in lab.TRIGGER_SOURCES,
    }.get(name, lambda v: True)(value)


def init() -> None:
    """Read the query string once per session; later runs keep what the user chose."""
    ss = st.session_state
    if "_state_ready" in ss:
        return
    bad = []
    for name, typ in TYPES.items():
        raw = st.query_params.get(name)
        value = DEFAULTS[name]
        if raw is not None:
            try:
                value = typ(raw)
                if not _valid(name, value):
                    raise ValueError
            except ValueError:
                bad.append(name)
                value = DEFAULTS[name]
        ss[name] = value
    if not ss["model"]:
        cards = lab.zoo_cards()
        backdoored = [c["name"] for c in cards if c["attack"] != "clean"]
        ss["model"] = "word-cf" if "word-cf" in backdoored else (backdoored[0] if backdoored else "")
    ss["_bad_params"] = bad
    ss["_state_ready"] = True
    publish()


def publish() -> None:
    st.query_params.from_dict({k: str(st.session_state[k]) for k in TYPES if st.session_state.get(k) not in (None, "")})


def bind(name: str) -> str:
    """The widget key for state `name`, seeded from the state (call before creating the widget)."""
    key = f"w_{name}"
    if key not in st.session_state:
        st.session_state[key] = st.session_state[name]
    return key


def commit(name: str) -> None:
    """on_change: copy the widget's value to the state and the URL."""
    st.session_state[name] = st.session_state[f"w_{name}"]
    publish()


def set_value(name: str, value) -> None:
    st.session_state[name] = value
    st.session_state.pop(f"w_{name}", None)
    publish()


@st.cache_resource(max_entries=2, show_spinner="Loading the model pair, data and evaluation sets …")
def lab_model(
    model: str, pt: str, data: str = "", trigger: str = "", target: int = 1, tsrc: str = "entered"
) -> lab.LabModel:
    # at most two models in memory: switching back and forth is instant, a third evicts the oldest
    return lab.load(
        model, pt, device=lab.best_device(), data_name=data or None, trigger=trigger or None, target=target, trigger_source=tsrc
    )


def probe() -> dict:
    """The ASR probe in the state, as lab_model's keyword arguments (no trigger: the card's)."""
    ss = st.session_state
    if not ss.get("trigger"):
        return {}
    return {"trigger": ss["trigger"], "target": int(ss.get("target", 1)), "tsrc": ss.get("tsrc", "entered")}


def set_probe(trigger: str, target: int, source: str) -> None:
    """Use `trigger` → `target` as every view's ASR probe (empty trigger: back to the card's)."""
    set_value("trigger", trigger)
    set_value("target", int(target))
    set_value("tsrc", source)


def current() -> tuple[lab.LabModel, lab.Workbench] | None:
    """The chosen model (shared, read-only) and this session's private workbench; None with a message shown."""
    ss = st.session_state
    if not ss.get("model"):
        st.info("No model chosen yet. Pick or build one on the **Models** page.")
        st.page_link("views/models.py", label="Go to Models", icon=":material/inventory_2:")
        return None
    try:
        lm = lab_model(ss["model"], ss["pt"], ss.get("data", ""), **probe())
    except FinemixError as exc:
        st.error(str(exc))
        st.page_link("views/models.py", label="Choose another model", icon=":material/inventory_2:")
        return None
    bench = ss.get("_bench")
    if bench is None or bench.lab is not lm:
        bench = ss["_bench"] = lab.Workbench(lm)  # the old one (other model) is dropped with its memory
    return lm, bench


def page(title: str, intro: str) -> tuple[lab.LabModel, lab.Workbench]:
    """Every model page opens the same way: title, two sentences for newcomers, the model line (or a pointer)."""
    st.title(title)
    st.markdown(intro)
    loaded = current()
    if loaded is None:
        st.stop()
    describe(loaded[0])
    return loaded


def bf16_ok(lm: lab.LabModel) -> bool:
    return lab.bf16_supported(lm.ctx.device)


def describe(lm: lab.LabModel) -> None:
    es = lm.interactive
    pt_name = lm.pair.pt_source.split("/")[-2] if lm.pair.pt_source.endswith("/model") else lm.pair.pt_source
    st.caption(
        f"Model **{lm.name}** · θ_PT {pt_name} · "
        f"data `{lm.ctx.data_name}` (split seed {lm.ctx.split_seed}) · "
        f"live set: {len(es.clean)} clean + {len(es.triggered or [])} triggered test examples"
    )
    if warn := lab.data_warning(lm):
        st.warning(warn, icon=":material/dataset:")
    label = lab.asr_label(lm)
    if lm.trigger_source == "scan":
        st.warning(label, icon=":material/search:")
    else:
        st.caption(label)
