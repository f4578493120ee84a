"""A YAML/JSON loader for untrusted text: no anchors or aliases, bounded bytes, depth and node count.

``yaml.safe_load`` refuses arbitrary Python objects but not size: aliases let a few hundred bytes stand for
millions of nodes (the "billion laughs"), which only blow up later when the value is copied or serialised,
and its composer recurses once per nesting level (5,000 ``[`` give a ``RecursionError``). This loader reads
the parser's *events* and builds the node tree itself, iteratively, so it can refuse an anchor or an alias
the moment it appears and stop at the first node over the depth or count limit, before anything is
constructed. The events come from libyaml when PyYAML has it (fast), else from PyYAML's pure-Python parser.
Scalars are resolved and constructed by PyYAML's ``SafeConstructor``, so a value means what it meant under
``yaml.safe_load``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

_LOADER: Any = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


class InputRefused(ValueError):
    """The text breaks a bound or uses a refused construct; ``limit`` names the policy knob (or '')."""

    def __init__(self, what: str, fix: str, limit: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.fix = fix
        self.limit = limit


@dataclass(frozen=True)
class Bounds:
    max_bytes: int
    max_depth: int
    max_nodes: int
    # The names of the knobs, so a refusal says which setting to raise.
    bytes_name: str = "limits.annotationBytes"
    depth_name: str = "limits.nestingDepth"
    nodes_name: str = "limits.yamlNodes"
    # Longest top-level list (the triggers annotation: the trigger cap), enforced while parsing so a long
    # list under raised byte and node caps stops at its first item too many.
    max_items: int | None = None
    items_name: str = "limits.triggers"


def utf8_size(text: str, cap: int) -> int:
    """Bytes of ``text`` in UTF-8, without encoding a text that is already too long by its length alone."""
    if len(text) > cap:
        return len(text) if len(text) > 4 * cap else len(text.encode("utf-8", "surrogatepass"))
    return len(text.encode("utf-8", "surrogatepass"))


def load(text: str, bounds: Bounds) -> Any:
    """Parse one YAML (or JSON) document within ``bounds``. Raises ``InputRefused`` or ``yaml.YAMLError``."""
    size = utf8_size(text, bounds.max_bytes)
    if size > bounds.max_bytes:
        raise InputRefused(f"is {size} bytes, above the limit of {bounds.max_bytes} bytes ({bounds.bytes_name})",
                           "shorten it (fewer or shorter entries), or ask the cluster admin to raise "
                           f"{bounds.bytes_name}", bounds.bytes_name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A lone surrogate (JSON can escape one, UTF-8 cannot carry it) would stop the C parser with an
        # encoding error: refuse it here with where it is.
        raise InputRefused(f"holds a character that is not valid Unicode text at position {exc.start}",
                           "remove it; annotations are UTF-8 text") from None
    loader = _LOADER(text)
    try:
        root = _compose(loader, bounds)
        if root is None:
            return None
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _refuse_anchor(event: Any) -> None:
    mark = event.start_mark
    at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    if isinstance(event, yaml.AliasEvent):
        raise InputRefused(f"uses a YAML alias (*{event.anchor}){at}; anchors and aliases are not accepted",
                           "write the value out in full")
    raise InputRefused(f"uses a YAML anchor (&{event.anchor}){at}; anchors and aliases are not accepted",
                       "write the value out in full")


def _compose(loader: Any, bounds: Bounds) -> Any:
    """The node tree of the single document, built from events without recursion."""
    loader.get_event()                                   # StreamStart
    if loader.check_event(yaml.StreamEndEvent):
        loader.get_event()
        return None
    loader.get_event()                                   # DocumentStart
    root: Any = None
    stack: list[list[Any]] = []                          # [collection node, pending mapping key]
    nodes = 0
    while True:
        event = loader.get_event()
        if isinstance(event, yaml.AliasEvent):
            _refuse_anchor(event)
        if isinstance(event, (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if event.anchor is not None:
                _refuse_anchor(event)
            nodes += 1
            if nodes > bounds.max_nodes:
                raise InputRefused(f"has more than {bounds.max_nodes} YAML nodes ({bounds.nodes_name})",
                                   "shorten it, or ask the cluster admin to raise " + bounds.nodes_name,
                                   bounds.nodes_name)
            tag = event.tag
            if isinstance(event, yaml.ScalarEvent):
                if tag is None or tag == "!":
                    tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
                node: Any = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
            elif isinstance(event, yaml.SequenceStartEvent):
                if tag is None or tag == "!":
                    tag = loader.resolve(yaml.SequenceNode, None, event.implicit)
                node = yaml.SequenceNode(tag, [], event.start_mark, None, flow_style=event.flow_style)
            else:
                if tag is None or tag == "!":
                    tag = loader.resolve(yaml.MappingNode, None, event.implicit)
                node = yaml.MappingNode(tag, [], event.start_mark, None, flow_style=event.flow_style)
            if not stack:
                root = node
            else:
                top = stack[-1]
                if isinstance(top[0], yaml.SequenceNode):
                    top[0].value.append(node)
                    if bounds.max_items is not None and len(stack) == 1 and len(top[0].value) > bounds.max_items:
                        raise InputRefused(f"has more than {bounds.max_items} triggers, the limit (policy "
                                           f"{bounds.items_name})",
                                           "a workload needs a handful of triggers at most; combine or drop some",
                                           bounds.items_name)
                elif top[1] is None:
                    top[1] = node
                else:
                    top[0].value.append((top[1], node))
                    top[1] = None
            if not isinstance(node, yaml.ScalarNode):
                stack.append([node, None])
                if len(stack) > bounds.max_depth:
                    mark = event.start_mark
                    raise InputRefused(
                        f"is nested more than {bounds.max_depth} levels deep at line {mark.line + 1} column "
                        f"{mark.column + 1} ({bounds.depth_name})", "flatten it; no setting needs that depth",
                        bounds.depth_name)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            stack.pop()[0].end_mark = event.end_mark
        elif isinstance(event, yaml.DocumentEndEvent):
            break
    if not loader.check_event(yaml.StreamEndEvent):
        event = loader.get_event()
        raise yaml.composer.ComposerError("expected a single document in the stream", None,
                                          "but found another document", event.start_mark)
    loader.get_event()
    return root

