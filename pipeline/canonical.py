"""Canonical JSON: the one text of a value (sorted keys, no spaces, UTF-8 kept).

Cell ids, seeds, plan and manifest `request_json`, and the recipe in an image's metadata all use
this text. One encoder, made once: `json.dumps` would build a new one per call (the hot path).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

canonical_json: Callable[[Any], str] = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
).encode
