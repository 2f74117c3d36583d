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


@st.cache_resource(max_entries=2, show_spinner="Loading the model pair …")
def _pair(key: tuple[str, str]):
    # at most two model pairs in memory, keyed on the resolved folders: one model takes one slot whatever data or probe
    # it is viewed with, switching between two is instant, a third evicts the oldest
    return lab.load_pair(*key)


@st.cache_resource(max_entries=3, show_spinner="Loading the data and evaluation sets …")
def _lab_model(key: tuple[str, str], model: str, pt: str, data: str, trigger: str, target: int, tsrc: str) -> lab.LabModel:
    return lab.load(
        model,
        pt,
        device=lab.best_device(),
        data_name=data or None,
        trigger=trigger or None,
        target=target,
        trigger_source=tsrc,
        pair=_pair(key),
    )


def lab_model(
    model: str, pt: str, data: str = "", trigger: str = "", target: int = 1, tsrc: str = "entered"
) -> lab.LabModel:
    """The model viewed with this data and ASR probe (the pair itself is shared by every such view of one model)."""
    return _lab_model(lab.pair_key(model, pt), model, pt, data, trigger, target, tsrc)


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
        f"live set: {len(es.clean)} clean + {len(es.triggered or [])} triggered test examples · "
        f"{lab.data_parts(lm).line()}"
    )
    if warn := lab.data_warning(lm):
        st.warning(warn, icon=":material/dataset:")
    label = lab.asr_label(lm)
    if lm.trigger_source == "scan":
        st.warning(label, icon=":material/search:")
    else:
        st.caption(label)


def progress(what: str):
    """A progress bar for a long job whose text gives steps, elapsed time and an estimate from the measured step time;
    returns (callback(done, total), the bar) — empty the bar when done."""
    import time

    bar = st.progress(0.0, text=f"{what}: starting …")
    started = time.perf_counter()
    part = {"n": 1, "last": 0, "since": started}  # a dev-only search runs several fine-tunes, each from step 1

    def update(done: int, total: int) -> None:
        now = time.perf_counter()
        if done < part["last"]:
            part.update(n=part["n"] + 1, since=now)
        part["last"] = done
        text = lab.progress_text(what, done, total, now - started, now - part["since"], part["n"])
        bar.progress(min(done / max(total, 1), 1.0), text=text)

    return update, bar


def change(value: float, ref: float | None, what: str = "vs θ_FT") -> str | None:
    """A metric's delta text, or None when there is nothing to compare or the change rounds to zero (Streamlit would draw
    '+0.000' as an arrow)."""
    if ref is None or value is None or abs(value - ref) < 0.0005:
        return None
    return f"{value - ref:+.3f} {what}"


def probe_form(lm: lab.LabModel, key: str) -> None:
    """The ASR probe: a trigger (text + target class) for any model, kept in the URL; the Scan page fills it too."""
    names = lab.class_names(lm)
    p1, p2, p3 = st.columns([3, 2, 1], vertical_alignment="bottom")
    typed = p1.text_input(
        "Trigger text",
        value=st.session_state.get("trigger", ""),
        key=f"{key}_text",
        placeholder="a word or phrase you suspect; w1+w2 inserts pieces separately",
    )
    current = min(int(st.session_state.get("target", 1)), len(names) - 1)
    target = p2.selectbox(
        "Target class", range(len(names)), index=current, format_func=lambda i: f"{i} · {names[i]}", key=f"{key}_target"
    )
    if p3.button("Use this trigger", disabled=not typed.strip(), key=f"{key}_use"):
        try:
            lab_model(st.session_state["model"], st.session_state["pt"], st.session_state.get("data", ""), typed.strip(), int(target))
        except FinemixError as exc:
            st.error(str(exc))
        else:
            set_probe(typed.strip(), int(target), "entered")
            st.rerun()
    if st.session_state.get("trigger"):
        source = "suspected by a scan (an estimate)" if st.session_state.get("tsrc") == "scan" else "entered by you"
        st.caption(f"Probe in use: `{st.session_state['trigger']}` → {names[lm.interactive.target]} ({source}).")
        if st.button("Clear the probe (back to the card's trigger)", key=f"{key}_clear"):
            set_probe("", 1, "entered")
            st.rerun()