"""Plotly figure builders: data in, figure out (no state, no Streamlit)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

CACC_COLOR, ASR_COLOR, FLOOR_COLOR = "#1f77b4", "#d62728", "#7f7f7f"


def _err(frame: pd.DataFrame, metric: str) -> dict | None:
    """Asymmetric error bars from the frame's Wilson bounds (<metric>_lo / _hi), when it has them."""
    if f"{metric}_lo" not in frame:
        return None
    return {
        "type": "data",
        "symmetric": False,
        "array": (frame[f"{metric}_hi"] - frame[metric]).tolist(),
        "arrayminus": (frame[metric] - frame[f"{metric}_lo"]).tolist(),
        "thickness": 1,
        "width": 3,
    }


def sweep(
    mix_only: pd.DataFrame, tuned: pd.DataFrame | None, rho: float, auto_rho: float | None, floor: float | None
) -> go.Figure:
    """CACC and ASR vs ρ (error bars: Wilson 95 %): mix-only lines, fine-tuned markers, current ρ and auto-ρ marked.
    Without a trigger (no ASR) only CACC is drawn, with the same titled axes and legend."""
    fig = go.Figure()
    has_asr = "asr" in mix_only and mix_only.asr.notna().any()
    fig.add_scatter(
        x=mix_only.rho,
        y=mix_only.cacc,
        name="CACC (mix only)",
        mode="lines+markers",
        line={"color": CACC_COLOR},
        error_y=_err(mix_only, "cacc"),
        showlegend=True,
    )
    if has_asr:
        fig.add_scatter(
            x=mix_only.rho,
            y=mix_only.asr,
            name="ASR (mix only)",
            mode="lines+markers",
            line={"color": ASR_COLOR},
            error_y=_err(mix_only, "asr"),
        )
    if tuned is not None and not tuned.empty:
        t = tuned.sort_values("rho")
        for metric, color in (("cacc", CACC_COLOR), ("asr", ASR_COLOR))[: 2 if has_asr else 1]:
            fig.add_scatter(
                x=t.rho,
                y=t[metric],
                name=f"{metric.upper()} (fine-tuned)",
                mode="lines+markers",
                error_y=_err(t, metric),
                line={"color": color, "dash": "dot"},
                marker={"symbol": "diamond", "size": 10},
            )
    if floor is not None:
        fig.add_hline(
            y=floor,
            line={"color": FLOOR_COLOR, "dash": "dash"},
            annotation_text="clean ASR floor",
            annotation_position="bottom left",
        )
    # the ρ labels sit above the plot area, clear of the curves
    fig.add_vline(
        x=rho,
        line={"color": "black"},
        annotation_text=f"ρ={rho:g}",
        annotation_position="top",
        annotation_yref="paper",
        annotation_y=1.0,
    )
    if auto_rho is not None:
        fig.add_vline(
            x=auto_rho,
            line={"color": "green", "dash": "dash"},
            annotation_text=f"auto-ρ={auto_rho:g}",
            annotation_position="bottom right",
        )
    fig.update_layout(
        xaxis_title="ρ (share of fine-tuned weights kept)",
        yaxis_title="rate" if has_asr else "clean accuracy",
        xaxis_range=[-0.05, 1.05],
        yaxis_range=[0, 1.05],
        height=380,
        margin={"t": 30, "b": 40},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def tuned_curve(points: pd.DataFrame, auto_rho: float | None, floor: float | None) -> go.Figure:
    """After the clean fine-tune: CACC, ASR and target bias vs ρ with Wilson 95 % error bars, the floor and auto-ρ's pick."""
    fig = go.Figure()
    p = points.sort_values("rho")
    for metric, name, color, dash in (
        ("cacc", "CACC", CACC_COLOR, None),
        ("asr", "ASR", ASR_COLOR, None),
        ("target_bias", "target bias", "#ff7f0e", "dot"),
    ):
        fig.add_scatter(
            x=p.rho, y=p[metric], name=name, mode="lines+markers", line={"color": color, "dash": dash}, error_y=_err(p, metric)
        )
    if floor is not None:
        fig.add_hline(
            y=floor,
            line={"color": FLOOR_COLOR, "dash": "dash"},
            annotation_text="clean ASR floor",
            annotation_position="bottom left",
        )
    if auto_rho is not None:
        fig.add_vline(
            x=auto_rho,
            line={"color": "green", "dash": "dash"},
            annotation_text=f"auto-ρ = {auto_rho:g}",
            annotation_position="top",
            annotation_yref="paper",
            annotation_y=1.0,
        )
    fig.update_layout(
        xaxis_title="ρ (share of fine-tuned weights kept, then fine-tuned)",
        yaxis_title="rate (full test split)",
        yaxis_range=[0, 1.05],
        xaxis_range=[-0.05, 1.05],
        height=400,
        margin={"t": 40, "b": 40},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def pareto(points: pd.DataFrame, current: tuple[float, float] | None) -> go.Figure:
    """CACC (x) vs ASR (y) for every evaluated point: the good corner is bottom right."""
    fig = go.Figure()
    for stage, grp in points.groupby("stage"):
        grp = grp.sort_values("rho")
        # neighbouring ρ often land on top of each other (0.7, 0.8, 0.9 near θ_FT): alternate the label sides
        sides = ["top center", "bottom center", "middle right", "middle left"]
        fig.add_scatter(
            x=grp.cacc,
            y=grp.asr,
            mode="markers+text",
            name=stage,
            text=[f"ρ {r:g}" for r in grp.rho],
            textposition=[sides[i % len(sides)] for i in range(len(grp))],
            error_x=_err(grp, "cacc"),
            error_y=_err(grp, "asr"),
            marker={"size": 9, "symbol": "diamond" if stage != "mix-only" else "circle"},
        )
    if current is not None:
        fig.add_scatter(
            x=[current[0]], y=[current[1]], mode="markers", name="current", marker={"size": 16, "color": "black", "symbol": "x"}
        )
    fig.update_layout(
        xaxis_title="CACC", yaxis_title="ASR", height=380, margin={"t": 30, "b": 40}, legend={"orientation": "h", "y": -0.25}
    )
    return fig


def epur_scatter(tab: pd.DataFrame, trend: tuple[float, float] | None = None, max_points: int = 30522) -> go.Figure:
    """Drift (y) vs log frequency (x) for the vocabulary, WebGL; flagged rows in red, the trigger annotated, the scan's
    verified suspects (a `suspect` column) ringed, and the fitted trend (slope, intercept) as a dashed line."""
    keep = tab.flagged | tab.trigger | (tab.suspect if "suspect" in tab else False)
    tab = tab if len(tab) <= max_points else pd.concat([tab[keep], tab[~keep].sample(max_points, random_state=0)])
    x = np.log10(tab.frequency.to_numpy() + 1)
    fig = go.Figure()
    for flagged, name, color in ((False, "not flagged", "#9ecae1"), (True, "flagged (top K)", "#d62728")):
        sel = (tab.flagged == flagged).to_numpy()
        sub = tab[sel]
        fig.add_trace(
            go.Scattergl(
                x=x[sel],
                y=sub.drift,
                mode="markers",
                name=name,
                marker={"size": 4 if not flagged else 7, "color": color},
                customdata=np.stack([sub.token, sub.frequency, sub.score, sub["rank"]], axis=1),
                hovertemplate="<b>%{customdata[0]}</b><br>frequency %{customdata[1]}<br>drift %{y:.4f}"
                "<br>score %{customdata[2]:.4f}"
                "<br>rank %{customdata[3]}<extra></extra>",
            )
        )
    if trend is not None:
        xs = np.linspace(0, float(x.max()) if len(x) else 1.0, 50)
        fig.add_scatter(
            x=xs,
            y=trend[1] + trend[0] * xs,
            mode="lines",
            name="trend: drift vs log frequency",
            line={"color": "black", "dash": "dash", "width": 1.5},
            hoverinfo="skip",
        )
    if "suspect" in tab and tab.suspect.any():
        sus = tab[tab.suspect]
        fig.add_trace(
            go.Scattergl(
                x=np.log10(sus.frequency.to_numpy() + 1),
                y=sus.drift,
                mode="markers+text",
                name="scan suspect (verified)",
                text=sus.token,
                textposition="top center",
                marker={"size": 14, "color": "rgba(0,0,0,0)", "line": {"color": "#ff7f0e", "width": 2.5}},
                hovertemplate="<b>%{text}</b>: a verified scan candidate<extra></extra>",
            )
        )
    for _, row in tab[tab.trigger].iterrows():
        fig.add_annotation(
            x=np.log10(row.frequency + 1),
            y=row.drift,
            text=f"trigger '{row.token}' (rank {row['rank']})",
            showarrow=True,
            arrowhead=2,
            font={"color": "black"},
        )
    fig.update_layout(
        xaxis_title="log10(frequency in clean text + 1)",
        yaxis_title="embedding drift ‖E_FT − E_PT‖",
        height=460,
        margin={"t": 30},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def compare(rows: pd.DataFrame, floor: float | None) -> go.Figure:
    """CACC and ASR per defense, with the clean floor."""
    fig = go.Figure()
    fig.add_bar(x=rows.method, y=rows.cacc, name="CACC", marker_color=CACC_COLOR, error_y=_err(rows, "cacc"))
    fig.add_bar(x=rows.method, y=rows.asr, name="ASR", marker_color=ASR_COLOR, error_y=_err(rows, "asr"))
    if floor is not None:
        fig.add_hline(
            y=floor,
            line={"color": FLOOR_COLOR, "dash": "dash"},
            annotation_text="clean ASR floor (full test split)",
            annotation_position="top left",
        )  # at the right it hid behind the last bar
    fig.update_layout(
        barmode="group", yaxis_range=[0, 1.05], height=400, margin={"t": 30}, legend={"orientation": "h", "y": -0.3}
    )
    return fig


def method_picture(rho: float = 0.3, cells: int = 6) -> str:
    """The method in one picture (inline SVG, nothing fetched): θ_PT and θ_FT as weight grids, the mask keeping a share ρ
    of θ_FT's weights, the mix, the clean fine-tune; below, E-PUR's drift-vs-frequency reset."""
    pt, ft, mix_ft, cleaned = "#9ecae1", "#fdae6b", "#e6550d", "#74c476"
    keep = {i for i in range(cells * cells) if (i * 7919) % 100 < rho * 100}  # a fixed scatter of kept positions

    def grid(x: int, y: int, colour) -> str:
        size = 14
        return "".join(
            f'<rect x="{x + (i % cells) * size}" y="{y + (i // cells) * size}" width="{size - 2}" height="{size - 2}" '
            f'fill="{colour(i)}" rx="2"/>'
            for i in range(cells * cells)
        )

    def label(x: int, y: int, text: str, weight: str = "normal", size: int = 13) -> str:
        return f'<text x="{x}" y="{y}" font-size="{size}" font-weight="{weight}" text-anchor="middle">{text}</text>'

    def arrow(x1: int, x2: int, y: int, text: str) -> str:
        return f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="#444" stroke-width="2" marker-end="url(#head)"/>' + label(
            (x1 + x2) // 2, y - 8, text, size=12
        )

    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 980 300" width="980" height="300" font-family="sans-serif">',
        '<defs><marker id="head" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#444"/></marker></defs>',
        grid(20, 40, lambda i: pt),
        label(62, 28, "θ_PT (public)", "bold"),
        label(62, 145, "pretrained weights"),
        grid(150, 40, lambda i: ft),
        label(192, 28, "θ_FT (backdoored)", "bold"),
        label(192, 145, "someone's fine-tune"),
        arrow(245, 330, 82, f"mask keeps ρ = {rho:g}"),
        grid(340, 40, lambda i: mix_ft if i in keep else pt),
        label(382, 28, "θ_mix", "bold"),
        label(382, 145, "θ_PT + m ⊙ (θ_FT − θ_PT)"),
        arrow(435, 560, 82, "fine-tune on 128 clean"),
        grid(570, 40, lambda i: cleaned),
        label(612, 28, "defended", "bold"),
        label(612, 145, "backdoor weakened, accuracy kept"),
        label(820, 60, "ρ = 1: θ_FT (backdoor intact)", size=12),
        label(820, 82, "ρ = 0: θ_PT + θ_FT's head", size=12),
        label(820, 104, "auto-ρ: chosen on clean dev data", size=12),
        # E-PUR, below: drift against log frequency, the trigger far above the trend
        '<line x1="60" y1="280" x2="330" y2="280" stroke="#444"/><line x1="60" y1="280" x2="60" y2="180" stroke="#444"/>',
        '<line x1="60" y1="268" x2="330" y2="215" stroke="#000" stroke-dasharray="5,4"/>',
        *(
            f'<circle cx="{75 + (i * 37) % 250}" cy="{266 - ((i * 37) % 250) * 0.2 - (i * 13) % 14}" r="3" fill="{pt}"/>'
            for i in range(28)
        ),
        f'<circle cx="80" cy="192" r="6" fill="{mix_ft}"/>',
        label(150, 196, "trigger: rare, drifted far", size=12),
        label(195, 297, "log frequency in clean text →", size=11),
        '<text x="48" y="235" font-size="11" transform="rotate(-90 48 235)" text-anchor="middle">embedding drift</text>',
        label(620, 215, "E-PUR: score = drift / log(max(frequency, c)); the top K", size=13),
        label(620, 237, "word embeddings are reset to θ_PT before Fine-mixing", size=13),
        "</svg>",
    ]
    return "".join(parts)


def scan_candidates(candidates: list, class_names: tuple[str, ...], top: int = 8) -> go.Figure:
    """Each verified candidate's flip rate on held-aside sentences (Wilson 95 % error bars) beside the clean
    reference's flip rate on the same sentences: the gap is the evidence."""
    rows = candidates[:top][::-1]  # best at the top
    labels = [f"'{c.trigger}' → {class_names[c.target] if c.target < len(class_names) else c.target}" for c in rows]
    fig = go.Figure()
    fig.add_bar(
        y=labels,
        x=[c.flip for c in rows],
        orientation="h",
        name="θ_FT flip rate",
        marker_color="#d62728",
        error_x={
            "type": "data",
            "symmetric": False,
            "array": [c.flip_high - c.flip for c in rows],
            "arrayminus": [c.flip - c.flip_low for c in rows],
        },
        hovertemplate="%{y}<br>θ_FT flips %{x:.0%}<extra></extra>",
    )
    fig.add_bar(
        y=labels,
        x=[c.reference_flip for c in rows],
        orientation="h",
        name="clean reference flip rate",
        marker_color="#9ecae1",
        hovertemplate="%{y}<br>reference flips %{x:.0%}<extra></extra>",
    )
    fig.update_layout(
        barmode="group",
        xaxis={"title": "share of held-aside clean sentences moved to the class", "range": [0, 1.05], "tickformat": ".0%"},
        yaxis_title="candidate trigger → class",
        height=120 + 48 * len(rows),
        margin={"t": 30, "l": 10},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig
