"""Jinja2 templates (autoescaped) and the filters the pages share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from cloudpilot.domain.times import iso
from cloudpilot.web.charts import bar_chart, line_chart

TEMPLATES = Path(__file__).parent / "templates"
env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]), trim_blocks=True)


def time_tag(at: float | None) -> Markup:
    """``<time datetime="ISO">`` in UTC; static/app.js rewrites its text in the browser's zone."""
    if at is None:
        return Markup("")
    text = iso(at)
    return Markup(f'<time datetime="{escape(text)}">{escape(text.replace("T", " "))}</time>')


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    value = float(value)
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


env.filters["time"] = time_tag
env.filters["seconds"] = seconds
env.globals["line_chart"] = line_chart
env.globals["bar_chart"] = bar_chart


def render(request: Request, template: str, code: int = 200, **context: Any) -> HTMLResponse:
    """The page, or with ``?fragment=1`` only its live part (``<name>_live.html``), which static/app.js polls."""
    if request.query_params.get("fragment") == "1" and not template.endswith("_live.html"):
        live = template.replace(".html", "_live.html")
        if (TEMPLATES / live).exists():
            template = live
    context.setdefault("principal", getattr(request.state, "principal", None))
    context.setdefault("csrf", getattr(request.state, "csrf", ""))
    context["request_path"] = request.url.path
    html = env.get_template(template).render(**context)
    # Pages show who is logged in and their data: never cached, never stored.
    return HTMLResponse(html, code, headers={"Cache-Control": "no-store"})
