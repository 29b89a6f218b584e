"""Reading Kubernetes objects from JSON or YAML files into pods to evaluate.

Accepts what `kubectl get ... -o json|yaml` prints and what people keep in manifests:
Pods, Lists (List, PodList, DeploymentList, ...), and workloads with a pod template, whose
template is evaluated as the pods it would create. Every problem is a ManifestError that
names the file, the document and the field. No Django, no I/O beyond what it is given.
"""

from __future__ import annotations

import gc
import os
import re
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import yaml

from compliance.rules.gate import inert
from compliance.vocabulary import WORKLOAD_KINDS

try:
    _BaseLoader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing
    _BaseLoader = yaml.SafeLoader

NUMBER_CHARS_MAX = 100  # no Kubernetes field holds a longer number


class _YamlLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """The safe loader, with numbers bounded: YAML 1.1 reads `1:59:59:...` as a base-60
    number, which costs quadratic time in its length, and Python refuses to convert an
    integer of more than 4,300 digits. A key given twice in a mapping is refused."""

    def construct_mapping(self, node, deep=False):
        _unique_keys(node)
        return super().construct_mapping(node, deep=deep)


def _unique_keys_everywhere(root: Any) -> None:
    """_unique_keys on every mapping of a composed document (JSON, which orjson read
    keeping a repeated key's last value)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if type(node) is yaml.MappingNode:
            _unique_keys(node)
            stack.extend(v for _, v in node.value)
        elif type(node) is yaml.SequenceNode:
            stack.extend(node.value)


_KEY_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "merge")}
_MERGE = "tag:yaml.org,2002:merge"


def _unique_keys(node: Any) -> None:
    """A mapping whose key is given twice is refused: PyYAML keeps the last value, other
    parsers may keep the first or refuse it, so the gate could judge a securityContext the
    cluster never gets. So is a key that a merge (`<<`) also sets (go-yaml lets the merge
    win over the keys before it, PyYAML lets the explicit key win), and a key of another
    tag (`!!binary cnVuQXNVc2Vy` is `runAsUser` to kubectl, bytes to PyYAML)."""
    seen: set[str] = set()
    merged: set[str] = set()
    for k, v in node.value:
        if type(k) is not yaml.ScalarNode:
            continue
        if k.tag not in _KEY_TAGS:
            raise yaml.constructor.ConstructorError(
                None, None, f"a key tagged {inert(k.tag, 60)!r}: keys are strings", k.start_mark
            )
        if k.tag == _MERGE:
            for m in v.value if type(v) is yaml.SequenceNode else [v]:
                if type(m) is yaml.MappingNode:
                    merged.update(x.value for x, _ in m.value if type(x) is yaml.ScalarNode)
            continue
        if k.value in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {inert(k.value, 60)!r} is given twice", k.start_mark
            )
        seen.add(k.value)
    both = sorted(seen & merged)
    if both:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"the key {inert(both[0], 60)!r} is both given and merged (<<): parsers disagree "
            "on which wins",
            node.start_mark,
        )


def _bounded(construct):
    def number(loader, node):
        if len(node.value) > NUMBER_CHARS_MAX:
            raise yaml.constructor.ConstructorError(
                None, None, f"a number longer than {NUMBER_CHARS_MAX} characters", node.start_mark
            )
        return construct(loader, node)

    return number


for _tag, _construct in (
    ("int", _BaseLoader.construct_yaml_int),
    ("float", _BaseLoader.construct_yaml_float),
):
    _YamlLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _bounded(_construct))


# Plain scalars are resolved as kubectl resolves them (sigs.k8s.io/yaml over go-yaml v2),
# not as PyYAML's YAML 1.1 does: `=` is a string (PyYAML's "value" tag, which it cannot
# even construct, failed a CRD with an enum value `=`); no base-60 numbers (`1:0` is a
# string, not 60) and no timestamps (a date is a string); `0o17` is octal 15; `y` and `n`
# are booleans. Checked against kubectl in tests/ci/test_yaml_like_kubectl.py.
_YAML_BOOLS = {
    **dict.fromkeys(
        ["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"], True
    ),
    **dict.fromkeys(
        ["n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"], False
    ),
}
_YamlLoader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    ("bool", "|".join(_YAML_BOOLS), "yYnNtTfFoO"),
    (
        "int",
        r"[-+]?0b_*[0-1][0-1_]*|[-+]?0o_*[0-7][0-7_]*|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)"
        r"|[-+]?0x_*[0-9a-fA-F][0-9a-fA-F_]*",
        "-+0123456789",
    ),
    (  # go-yaml's: digits with an optional fraction and exponent (after int, as there)
        "float",
        r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+0123456789.",
    ),
    ("merge", "<<", "<"),
    ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
):
    _YamlLoader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"), list(_first)
    )


def _int(loader, node):
    value = node.value.replace("_", "")
    sign, digits = (-1, value[1:]) if value[:1] == "-" else (1, value.lstrip("+"))
    try:
        if digits.startswith("0o"):
            return sign * int(digits[2:], 8)
        return _BaseLoader.construct_yaml_int(loader, node)
    except ValueError:  # an explicit !!int that is not one: kubectl reads it as text
        return node.value


def _bool(loader, node):
    value = _YAML_BOOLS.get(node.value)
    return value if value is not None else _BaseLoader.construct_yaml_bool(loader, node)


def _float(loader, node):
    """A float; an integral one as an int, as kubectl's YAML-to-JSON writes it (`1e3` and
    `1.0` reach the API server as 1000 and 1, which an integer field takes)."""
    value = _BaseLoader.construct_yaml_float(loader, node)
    return int(value) if value.is_integer() and abs(value) < 2**63 else value


_YamlLoader.add_constructor("tag:yaml.org,2002:int", _bounded(_int))
_YamlLoader.add_constructor("tag:yaml.org,2002:float", _bounded(_float))
_YamlLoader.add_constructor("tag:yaml.org,2002:bool", _bool)

_STR, _SEQ, _MAP = "tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"
# First characters that some implicit resolver (bool, int, float, null, timestamp, merge)
# looks at: any other plain scalar is a string, without trying every regular expression.
_RESOLVED_FIRST = frozenset(k for k, v in _YamlLoader.yaml_implicit_resolvers.items() if k and v)


class _FastLoader(_YamlLoader):  # type: ignore[misc,valid-type]
    """The bounded loader, faster on manifests: plain scalars that no implicit resolver
    can claim are strings at once, and documents are built by `_build`."""

    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode and implicit[0] and value and value[0] not in _RESOLVED_FIRST:
            return _STR
        return super().resolve(kind, value, implicit)


def _build(loader: _FastLoader, node: Any, memo: dict[int, Any]) -> Any:
    """A document from its node: strings, lists and dicts directly; everything else (ints,
    booleans, timestamps, merge keys `<<`, other tags) through the safe constructor. An
    alias is the same node again: built once (memo), as the constructor would share it."""
    tag = node.tag
    if tag == _STR and type(node) is yaml.ScalarNode:
        return node.value
    key = id(node)
    if key in memo:
        return memo[key]
    if tag == _SEQ and type(node) is yaml.SequenceNode:
        out: Any = []
        memo[key] = out
        out.extend(_build(loader, child, memo) for child in node.value)
        return out
    if (
        tag == _MAP
        and type(node) is yaml.MappingNode
        and not any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value)
    ):
        _unique_keys(node)
        out = {}
        memo[key] = out
        for k, v in node.value:
            name = _build(loader, k, memo)
            try:
                out[name] = _build(loader, v, memo)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "found an unhashable key", k.start_mark
                ) from None
        return out
    value = loader.construct_object(node, deep=True)
    memo[key] = value
    return value


KNOWN_KINDS = ("Pod", *(k for k, w in WORKLOAD_KINDS.items() if w.template))
# YAML aliases may stand for at most this many nodes in all (a "billion laughs" of 100 KB
# otherwise stands for tens of millions of containers and gigabytes of memory).
ALIAS_NODES_MAX = 100_000


class ManifestError(ValueError):
    """Bad input, with where it is: file, document, item and field."""


@dataclass(slots=True)
class PodSource:
    """A pod to evaluate and the object it came from."""

    kind: str
    namespace: str
    name: str  # metadata.name, else generateName followed by "*"
    pod: dict
    where: str  # "file: document N[, items[i]]", for error messages
    spec_path: tuple = ()  # keys and indices from the document's root to the pod spec
    path: tuple = ()  # ... to the object itself (a List's item, or the document's root)


@dataclass(slots=True)
class Skipped:
    """A document that is not ours to judge: a kind without pods (Service, ConfigMap, a
    custom resource...), or a workload without pod template or containers (a Kustomize
    patch). Counted, never an error."""

    kind: str  # "Service", or "Deployment (partial)"
    where: str


@dataclass(slots=True)
class Located:
    """A parsed document and, where it could be had, its YAML node (for line numbers)."""

    data: Any
    node: Any = None  # a yaml Node, with start_mark


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building large acyclic data.

    Parsed JSON cannot hold reference cycles, yet every few hundred allocations the
    collector rescans the growing heap: on a 450 MB file that triples the parse time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def loads_json(data: bytes) -> Any:
    """A JSON document with its integers exact. orjson reads an integer beyond 64 bits as a
    float, so a runAsUser of 2**64 would be "expected an integer, got number" instead of
    "does not fit in int64" (and differ from the same pod in YAML or in a page the slim
    decoder read). Raises orjson's error, which names the line and column, when the data
    is not JSON."""
    import msgspec  # here: a YAML-only run of welkin-evaluate starts without it (27 ms)

    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
        orjson.loads(data)  # raises the error that says where (or "depth limit exceeded")
        # orjson read it: nested between Python's recursion limit and orjson's (1,024).
        raise ValueError("nested too deeply" if isinstance(e, RecursionError) else str(e)) from None


def parse_documents(data: bytes, filename: str) -> list[Any]:
    """Every document in a JSON or (multi-document) YAML file."""
    with gc_paused():
        return _parse_documents(data, filename)


def _parse_documents(data: bytes, filename: str) -> list[Any]:
    if not data.strip():
        return []  # an empty file is zero documents, as kustomize reads it
    stripped = data.lstrip()
    if stripped[:1] in (b"{", b"["):
        try:
            return [loads_json(data)]
        except ValueError as e:  # orjson's error, or msgspec's where orjson reads it
            if stripped[:1] == b"[":
                raise ManifestError(f"{filename}: invalid JSON: {e}") from None
            json_error = e
    else:
        json_error = None
    try:
        _check_aliases(data, filename)
        docs = [d for d in yaml.load_all(data, Loader=_YamlLoader) if d is not None]
    except yaml.YAMLError as e:
        if json_error is not None:
            raise ManifestError(f"{filename}: invalid JSON: {json_error}") from None
        raise _yaml_error(filename, e) from None
    except UnicodeDecodeError:
        raise ManifestError(f"{filename}: not text (UTF-8) JSON or YAML") from None
    return docs


POSITIONS_MAX_BYTES = 20 << 20  # JSON larger than this is reported without line numbers


_FIRST = re.compile(rb"\s*(\S)")


def _first(data: bytes) -> bytes:
    """The first byte that is not white space (b"" for none), without copying the data
    (bytes.lstrip() would copy a file of hundreds of megabytes to look at one byte)."""
    m = _FIRST.match(data)
    return m.group(1) if m else b""


def parse_located(data: bytes, filename: str) -> list[Located]:
    """Every document of a file with its YAML node, so findings can name their line and
    column (iter_located, all at once)."""
    with gc_paused():
        return list(iter_located(data, filename))


def iter_located(data: bytes, filename: str) -> Iterator[Located]:
    """The documents of a file one at a time, each with its YAML node: YAML is composed a
    document at a time (nodes, then data from them), so a caller that is done with one
    lets its nodes go before the next is read (a 10,000-workload file never holds all its
    nodes at once). JSON is parsed by orjson and, up to POSITIONS_MAX_BYTES, composed as
    YAML for its marks. A ManifestError can come after some documents were given."""
    if _first(data) in (b"{", b"["):
        docs = _parse_documents(data, filename)
        if len(docs) == 1 and len(data) <= POSITIONS_MAX_BYTES:
            try:
                nodes = list(yaml.compose_all(data, Loader=_YamlLoader))
            except (yaml.YAMLError, ValueError):
                nodes = []  # not YAML-compatible JSON: no line numbers
            if len(nodes) == 1:
                try:
                    _unique_keys_everywhere(nodes[0])
                except yaml.YAMLError as e:
                    raise _yaml_error(filename, e, "JSON") from None
                yield Located(docs[0], nodes[0])
                return
        yield from (Located(d) for d in docs)
        return
    if not _first(data):
        return  # an empty file is zero documents, as kustomize reads it
    try:
        _check_aliases(data, filename)
        loader = _FastLoader(data)
        try:
            while loader.check_node():
                node = loader.get_node()
                doc = _build(loader, node, {})
                # What the constructor built is kept by node until its document is done
                # (construct_document clears it; _build bypasses that): clear it here, or
                # a file of 40,000 documents keeps every number and boolean's node.
                loader.constructed_objects.clear()
                loader.recursive_objects.clear()
                if doc is not None:
                    yield Located(doc, node)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise _yaml_error(filename, e) from None
    except UnicodeDecodeError:
        raise ManifestError(f"{filename}: not text (UTF-8) JSON or YAML") from None


def _yaml_error(filename: str, e: yaml.YAMLError, language: str = "YAML") -> ManifestError:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e)
    return ManifestError(f"{filename}: invalid {language}{where}: {problem}")


def position(node: Any, path: tuple) -> tuple[int, int] | None:
    """(line, column), 1-based, of the value at `path` (keys and indices) in a document's
    YAML node; the nearest existing parent's when the path ends early."""
    if node is None:
        return None
    for step in path:
        child = None
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            # The last of duplicate keys: the one the parsers keep.
            matches = [v for k, v in node.value if getattr(k, "value", None) == step]
            child = matches[-1] if matches else None
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            child = node.value[step] if 0 <= step < len(node.value) else None
        if child is None:
            break
        node = child
    return node.start_mark.line + 1, node.start_mark.column + 1


def read_input(name: str, limit: int) -> bytes:
    """A file's bytes ('-': standard input), refused (ValueError) when it is not a regular
    file or holds more than `limit` bytes. Read as it comes: asking read() for `limit`
    bytes up front would allocate them."""
    if name == "-":
        chunks, total = [], 0
        while chunk := sys.stdin.buffer.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise ValueError(f"larger than {limit:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    # Checked before opening: opening a FIFO for reading would wait for a writer.
    info = os.stat(name)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file")
    if info.st_size > limit:
        raise ValueError(f"larger than {limit:,} bytes")
    with open(name, "rb") as f:
        return f.read()


def load_yaml(text: str | bytes, filename: str) -> Any:
    """One YAML document, read with the alias budget and bounded numbers (a kubeconfig)."""
    data = text.encode() if isinstance(text, str) else text
    _check_aliases(data, filename)
    return yaml.load(data, Loader=_YamlLoader)


def _check_aliases(data: bytes, filename: str) -> None:
    """Refuse YAML whose aliases expand to more than ALIAS_NODES_MAX nodes, counting from
    the parser's events before anything is built. YAML without anchors costs nothing."""
    if b"&" not in data:
        return
    sizes: dict[str, int] = {}  # anchor -> nodes it stands for, expanded
    open_nodes: list[list] = []  # [anchor, nodes so far] per open mapping or sequence
    expanded = 0
    for event in yaml.parse(data, Loader=_YamlLoader):
        kind = type(event)
        if kind is yaml.AliasEvent:
            n = sizes.get(event.anchor, 1)
            expanded += n
            if expanded > ALIAS_NODES_MAX:
                raise ManifestError(
                    f"{filename}: YAML aliases expand to more than {ALIAS_NODES_MAX:,} nodes "
                    f"(at line {event.start_mark.line + 1}, alias *{event.anchor}); refused "
                    "as an alias bomb"
                )
        elif kind is yaml.ScalarEvent:
            n = 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif kind in (yaml.MappingStartEvent, yaml.SequenceStartEvent):
            open_nodes.append([event.anchor, 1])
            continue
        elif kind in (yaml.MappingEndEvent, yaml.SequenceEndEvent):
            anchor, n = open_nodes.pop()
            if anchor:
                sizes[anchor] = n
        else:
            continue
        if open_nodes:
            open_nodes[-1][1] += n


def _partial(spec: Any) -> bool:
    """A pod spec with a container that names no image: part of a patch (the API server
    requires an image for every container and init container of an object it stores)."""
    if not isinstance(spec, dict):
        return False
    for key in ("containers", "initContainers"):
        items = spec.get(key)
        if isinstance(items, list) and any(
            isinstance(c, dict) and not c.get("image") for c in items
        ):
            return True
    return False


def pod_sources(
    doc: Any, where: str, default_kind: str | None = None, path: tuple = ()
) -> Iterator[PodSource | Skipped | ManifestError]:
    """Pods to evaluate from one document; Skipped for what has no pods; an error for each
    broken object, in order, so one bad item does not hide the others. `path` is where the
    document sits in its file's root object (a List's items)."""
    # YAML that is not a Kubernetes object (a compose file, a CI workflow, an Ansible
    # list) is not ours to judge either: a repository-wide hook sees all of it.
    if not isinstance(doc, dict):
        yield Skipped("(not a Kubernetes object)", where)
        return
    kind = doc.get("kind", default_kind)
    if not isinstance(kind, str) or not kind:
        yield Skipped("(no kind)", where)
        return
    kind = inert(kind, 100)  # it is printed in messages
    if kind == "List" or (kind.endswith("List") and "items" in doc):
        items = doc.get("items")
        if items is None:
            return  # an empty list, as `kubectl get` prints one
        if not isinstance(items, list):
            yield ManifestError(f"{where}: {kind}.items must be a list")
            return
        item_kind = kind[:-4] if kind != "List" else None
        for i, item in enumerate(items):
            yield from pod_sources(item, f"{where}, items[{i}]", item_kind, (*path, "items", i))
        return
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = meta.get("name") if isinstance(meta.get("name"), str) else ""
    generate = meta.get("generateName") if isinstance(meta.get("generateName"), str) else ""
    name = name or (f"{generate}*" if generate else "")
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else ""
    namespace = namespace or "default"
    label = inert(f"{where} ({kind} {namespace}/{name or '?'})", 400)
    if kind == "Pod":
        if _partial(doc.get("spec")):
            yield Skipped(f"{kind} (partial)", label)
            return
        yield PodSource(kind, namespace, name, doc, label, (*path, "spec"), path)
        return
    template = WORKLOAD_KINDS[kind].template if kind in WORKLOAD_KINDS else None
    if template is None:
        yield Skipped(kind, label)  # not ours to judge: no pods
        return
    node: Any = doc
    for step in template:
        node = node.get(step) if isinstance(node, dict) else None
    spec = node.get("spec") if isinstance(node, dict) else None
    if (
        node is None
        or spec is None
        or (isinstance(spec, dict) and not spec.get("containers"))
        or _partial(spec)
    ):
        # No template, one without containers, or containers without images: a patch
        # (Kustomize, a strategic merge), not a workload.
        yield Skipped(f"{kind} (partial)", label)
        return
    if not isinstance(node, dict):
        yield ManifestError(f"{label}: {'.'.join(template)} is not an object")
        return
    tmeta = node.get("metadata") if isinstance(node.get("metadata"), dict) else {}
    pod = {
        "metadata": {
            "name": meta.get("name") if isinstance(meta.get("name"), str) else "",
            "generateName": meta.get("generateName"),  # the gate checks it too
            "namespace": namespace,
            "labels": tmeta.get("labels") or {},
        },
        "spec": spec,
    }
    yield PodSource(kind, namespace, name, pod, label, (*path, *template, "spec"), path)
