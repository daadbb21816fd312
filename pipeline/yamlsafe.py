"""Limits on every YAML file read through OmegaConf (Hydra's configs, sweep files, saved runs).

OmegaConf builds one node per *use* of a YAML alias, so a few hundred bytes of nested aliases
(a "billion laughs" file) would expand to billions of nodes. `install()` wraps OmegaConf's YAML
loader so a document whose aliases expand past `MAX_NODES` is refused before it is converted,
and so `!!binary` values (bytes, which no config can hold) are refused with their position.
"""

from __future__ import annotations

from typing import Any

import yaml
from omegaconf import _utils as omegaconf_utils

MAX_NODES = 1_000_000  # nodes a YAML document may expand to through its aliases


def expanded_size(root: yaml.Node) -> int:
    """How many nodes `root` becomes once every alias is expanded (memoised, so it is fast)."""
    sizes: dict[int, int] = {}
    order: list[yaml.Node] = []
    stack: list[yaml.Node] = [root]
    seen: set[int] = set()
    while stack:  # post-order without recursion: children before parents
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        stack.extend(_children(node))
    for node in reversed(order):
        sizes[id(node)] = 1 + sum(sizes.get(id(c), 1) for c in _children(node))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _refuse_binary(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None, None, "!!binary values are not allowed in a config (write text)", node.start_mark
    )


def install() -> None:
    """Wrap OmegaConf's YAML loader with the limits above (idempotent)."""
    original = omegaconf_utils.get_yaml_loader
    if getattr(original, "krea_sweep_limits", False):
        return

    def get_yaml_loader() -> Any:
        base = original()

        class LimitedLoader(base):  # type: ignore[misc,valid-type]
            """OmegaConf's loader, with alias expansion capped and !!binary refused."""

            def construct_document(self, node: yaml.Node) -> Any:
                size = expanded_size(node)
                if size > MAX_NODES:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"its aliases expand to {size:,} values (at most {MAX_NODES:,}); "
                        "refused (a YAML alias bomb?)",
                        node.start_mark,
                    )
                return super().construct_document(node)

        LimitedLoader.add_constructor("tag:yaml.org,2002:binary", _refuse_binary)
        return LimitedLoader

    get_yaml_loader.krea_sweep_limits = True  # type: ignore[attr-defined]
    omegaconf_utils.get_yaml_loader = get_yaml_loader
