"""The browser viewer ``headct serve`` answers at ``/``: a static page on the vendored Niivue.

``static/`` holds the page (index.html, viewer.js, viewer.css) and
``static/vendor/`` the pinned Niivue bundle with its licence (re-vendored by
``scripts/vendor_niivue.sh``). ``store`` keeps what the page shows: the
studies predicted in the server's lifetime, for a limited time.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
