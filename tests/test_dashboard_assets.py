"""The dashboard's static assets keep to the Content-Security-Policy (``default-src 'self'``).

Pico CSS draws its icons (select chevrons, the search glass, ...) as ``data:`` URIs, which
that policy blocks. ``static/vendor/pico/pico.csp.min.css`` is Pico's ``pico.min.css`` with
each such icon saved as a file under ``static/vendor/pico/icons/`` instead; this test checks
the two are in step. After updating Pico, regenerate with
``.venv/bin/python -m tests.test_dashboard_assets``.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
PICO = ROOT / "static" / "vendor" / "pico"
ICON = re.compile(r'(--pico-icon-([a-z-]+)):url\("data:image/svg\+xml,([^"]*)"\)')


def csp_build(css: str) -> tuple[str, dict[str, str]]:
    """Pico's CSS with every ``data:`` icon pointing at a file, and those files' contents."""
    icons: dict[str, str] = {}

    def to_file(match: re.Match) -> str:
        variable, name, data = match.groups()
        svg = unquote(data) + "\n"
        # The same icon is redefined for the dark theme in another colour.
        file = name if icons.get(name, svg) == svg else f"{name}-dark"
        icons[file] = svg
        return f'{variable}:url("icons/{file}.svg")'

    return ICON.sub(to_file, css), icons


def test_the_csp_build_of_pico_is_in_step_with_pico():
    css, icons = csp_build((PICO / "pico.min.css").read_text(encoding="utf-8"))
    assert (PICO / "pico.csp.min.css").read_text(encoding="utf-8") == css
    assert {path.stem for path in (PICO / "icons").glob("*.svg")} == set(icons)
    for name, svg in icons.items():
        assert (PICO / "icons" / f"{name}.svg").read_text(encoding="utf-8") == svg


def test_no_stylesheet_or_template_needs_what_the_csp_blocks():
    for stylesheet in [PICO / "pico.csp.min.css", *(ROOT / "static" / "css").glob("*.css")]:
        text = stylesheet.read_text(encoding="utf-8")
        assert "data:" not in text, stylesheet
        assert not re.search(r"@import|url\(\s*[\"']?(https?:)?//", text), stylesheet
    for template in (ROOT / "templates").rglob("*.html"):
        text = template.read_text(encoding="utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"inline script in {template}"
        inline = re.search(r"<style|\sstyle=|\son[a-z]+=", text)
        assert not inline, f"inline style or handler in {template}"


if __name__ == "__main__":
    built, files = csp_build((PICO / "pico.min.css").read_text(encoding="utf-8"))
    (PICO / "pico.csp.min.css").write_text(built, encoding="utf-8")
    (PICO / "icons").mkdir(exist_ok=True)
    for stale in (PICO / "icons").glob("*.svg"):
        stale.unlink()
    for icon, content in files.items():
        (PICO / "icons" / f"{icon}.svg").write_text(content, encoding="utf-8")
    print(f"wrote {PICO / 'pico.csp.min.css'} and {len(files)} icons")
