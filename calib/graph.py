"""Which nodes of an exported graph stay in float, and the graph checks calibration needs.

The connectivity predictor picks keys by ranking scores; a quantisation step in it flips
near-tied keys, and the op (TopKMaskedAttention, or its inlined body in a decomposed
graph) has no Q/DQ kernel anywhere. Both stay in float:

* custom nodes: every ``sparsifiner::TopKMaskedAttention`` node;
* predictor: the producers of each block's coefficient tensor (metadata ``op_inputs``,
  ``blocks.N.attn.predictor.coef``) that the rest of the network does not need, found by
  walking back from the graph outputs with the coefficient tensors cut: nodes only the
  coefficients depend on;
* body (decomposed graphs): for each coefficient tensor, the nodes on a path from the op's
  inputs (q and k, the tensors the predictor reads; v, the second operand of the body's
  last MatMul; the coefficients) to the body's output, the first MatMul downstream of
  the coefficients whose other operand is an activation not derived from them.

Everything is found from the graph's structure, not from node names, so a renamed or
re-exported graph is analysed the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sparsifiner import op_spec
from sparsifiner.artifacts import metadata_of
from sparsifiner.errors import SparsifinerError

# Q/DQ in opsets below 19 have no float8 types and TensorRT wants 19+ for explicit quantisation.
MIN_QDQ_OPSET = 19
# ONNX Runtime 1.30+ refuses IR version 14 files; 10 is what opset 19-21 need.
QDQ_IR_VERSION = 10


@dataclass
class FloatNodes:
    custom: list = field(default_factory=list)
    predictor: list = field(default_factory=list)
    body: list = field(default_factory=list)

    def all(self) -> list:
        return sorted(set(self.custom) | set(self.predictor) | set(self.body))

    def counts(self) -> dict:
        return {"custom": len(self.custom), "predictor": len(self.predictor), "body": len(self.body)}


def sparsifiner_info(model, path) -> dict:
    """The graph's ``sparsifiner.*`` metadata; one-line error when it has none."""
    info = metadata_of(model)
    if "attention" not in info["sparsifiner"] or len(info["preprocess"].get("input_size") or ()) != 3:
        raise SparsifinerError(f"{path} has no Sparsifiner metadata: calibrate a graph written by `sparsifiner export`")
    return info


def name_nodes(model) -> int:
    """Give every unnamed node a unique name (quantisation excludes nodes by name); returns how many."""
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            named += 1
    return named


def _producers(graph) -> dict:
    return {out: node for node in graph.node for out in node.output if out}


def _consumers(graph) -> dict:
    users: dict = {}
    for node in graph.node:
        for name in node.input:
            if name:
                users.setdefault(name, []).append(node)
    return users


def _constants(graph) -> set:
    """Tensors that are initializers or computed from constants only (Constant nodes, casts of weights)."""
    const = {init.name for init in graph.initializer}
    for node in graph.node:  # ONNX graphs are topologically sorted
        if all(not name or name in const for name in node.input):
            const.update(o for o in node.output if o)
    return const


def _ancestors(tensors, producers, stop=frozenset()) -> set:
    """Names of the nodes that compute ``tensors``, not walking through tensors in ``stop``."""
    found: set = set()
    seen: set = set()
    todo = [t for t in tensors if t not in stop]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None or node.name in found:
            continue
        found.add(node.name)
        todo.extend(t for t in node.input if t and t not in stop)
    return found


def _descendant_tensors(tensors, consumers) -> set:
    found = set(tensors)
    todo = list(tensors)
    while todo:
        for node in consumers.get(todo.pop(), []):
            for out in node.output:
                if out and out not in found:
                    found.add(out)
                    todo.append(out)
    return found


def float_nodes(model, coef_names) -> FloatNodes:
    """The nodes to keep in float (see the module docstring); ``coef_names`` from metadata ``op_inputs``."""
    graph = model.graph
    producers, consumers = _producers(graph), _consumers(graph)
    custom = [n.name for n in graph.node if n.domain == op_spec.OP_DOMAIN and n.op_type == op_spec.OP_NAME]
    missing = [c for c in coef_names if c not in producers]
    if missing:
        raise SparsifinerError(f"the graph has no coefficient tensor {missing[0]!r} its metadata names: "
                               "export it again with this version")
    outputs = [o.name for o in graph.output]
    needed = _ancestors(outputs, producers, stop=frozenset(coef_names))
    predictor = sorted(_ancestors(coef_names, producers) - needed)
    body: set = set()
    if not custom:
        constants = _constants(graph)
        pred = set(predictor)
        for coef in coef_names:
            others = frozenset(c for c in coef_names if c != coef)
            body |= _body_of(graph, coef, others, pred, producers, consumers, constants)
    return FloatNodes(custom=custom, predictor=predictor, body=sorted(body))


def _body_of(graph, coef: str, other_coefs: frozenset, predictor: set, producers, consumers, constants) -> set:
    """The inlined op body that reads ``coef`` (decomposed graphs); see the module docstring."""
    from_coef = _descendant_tensors([coef], consumers)
    out_node = None
    for node in graph.node:
        if node.op_type == "MatMul" and any(t in from_coef for t in node.input) and any(
                t not in from_coef and t not in constants for t in node.input):
            out_node = node
            break
    if out_node is None:
        raise SparsifinerError(f"cannot find the attention that reads {coef!r}: the graph is not a Sparsifiner export")
    users = consumers.get(out_node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Cast":  # the body casts its fp32 result back to q's type
        out_node = users[0]
    # The op's inputs: q and k feed the predictor, v is the last MatMul's other operand.
    pred_inputs = {t for name in predictor for t in _node(graph, name).input
                   if t and t not in constants and (t not in producers or producers[t].name not in predictor)}
    block_pred = _ancestors([coef], producers, stop=other_coefs) & predictor  # this block's predictor
    qk = {t for t in pred_inputs if any(u.name in block_pred for u in consumers.get(t, []))}
    v = {t for t in _node(graph, out_node.name).input if t not in from_coef and t not in constants}
    sources = _descendant_tensors(qk | v | {coef}, consumers)
    upstream = _ancestors(out_node.output, producers)
    return {n.name for n in graph.node
            if n.name in upstream and n.name not in predictor and any(t in sources for t in n.input)} | {out_node.name}


def _node(graph, name: str):
    for node in graph.node:
        if node.name == name:
            return node
    raise KeyError(name)


def qdq_opset_model(model):
    """``model`` itself when its default opset is >= 19; an opset-18 graph as a copy relabelled to 19.

    Between opsets 18 and 19 only Q/DQ, Cast, Constant, Pad, Reshape, Shape, Size, Equal,
    Identity, If, Loop, Scan, AveragePool and DeformConv changed, all by adding types
    (float8) or options (Pad's wrap mode, AveragePool's dilations) that an opset-18 graph
    cannot use, so its nodes mean the same at 19. The op's local function keeps its own
    import. ``onnx.version_converter`` would inline and drop the local function instead.
    """
    import onnx

    version = next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), None)
    if version is None:
        raise SparsifinerError("the graph imports no default ONNX opset: export it again")
    if version >= MIN_QDQ_OPSET:
        return model
    if version < 18:
        raise SparsifinerError(f"the graph is at opset {version}: export it with --opset 19 for Q/DQ")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for imp in copy.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = MIN_QDQ_OPSET
    for function in copy.functions:
        for imp in function.opset_import:
            if imp.domain in ("", "ai.onnx"):
                imp.version = MIN_QDQ_OPSET
    return copy
