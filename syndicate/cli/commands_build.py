"""Commands `build` and `inspect`: dumps in, feeds and pages out."""

from __future__ import annotations
