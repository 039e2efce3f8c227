"""Reports as files: one self-contained HTML page (plotly.js inline once, so it opens offline), PNGs drawn
by matplotlib, tables as CSV."""

from __future__ import annotations

import html
import io

import pandas as pd

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}} h1{{font-size:22px}} h2{{font-size:17px;
margin-top:28px}} table{{border-collapse:collapse;font-size:13px;margin:8px 0}} td,th{{border:1px solid #ccc;
padding:3px 8px;text-align:right}} th{{background:#f3f3f3}} .note{{color:#666;font-size:13px}}</style>
<script type="text/javascript">{plotly}</script></head>
<body><h1>{title}</h1><p class="note">{subtitle}</p>
{body}
</body></html>"""


class Page:
    """Sections of figures, tables and notes, written as one HTML file."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title, self.subtitle, self.parts, self.figures = title, subtitle, [], 0

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def figure(self, fig) -> None:
        self.figures += 1
        fig.update_layout(template="plotly_white", margin={"l": 50, "r": 20, "t": 40, "b": 40})
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{self.figures}",
                                      config={"displaylogo": False}))

    def table(self, frame: pd.DataFrame, floats: str = "{:.4f}") -> None:
        shown = frame.copy()
        for col in shown.columns:
            if pd.api.types.is_float_dtype(shown[col]):
                shown[col] = shown[col].map(lambda x: "" if pd.isna(x) else floats.format(x))
        self.parts.append(shown.to_html(index=False, border=0, escape=True))

    def html(self) -> bytes:
        from plotly.offline import get_plotlyjs

        return PAGE.format(title=html.escape(self.title), subtitle=html.escape(self.subtitle),
                           plotly=get_plotlyjs(), body="\n".join(self.parts)).encode()


def png(draw, size=(10, 4.5)) -> bytes:
    """A PNG from ``draw(ax)`` (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")  # room for a legend beside the axes
        return buffer.getvalue()
    finally:
        plt.close(fig)
