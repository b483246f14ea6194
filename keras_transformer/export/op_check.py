"""List every op in a SavedModel and find the ones core TensorFlow lacks."""

import os
import sys
from typing import Dict, Set

from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry


def saved_model_ops(export_dir: str) -> Dict[str, Set[str]]:
    """{function or graph name: set of op type names} for every graph and
    library function of the SavedModel in `export_dir` (every meta graph:
    "<graph>" for one, "<graph I [tags]>" for each of several)."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops: Dict[str, Set[str]] = {}
    several = len(proto.meta_graphs) > 1
    for index, meta_graph in enumerate(proto.meta_graphs):
        graph = meta_graph.graph_def
        tags = ",".join(meta_graph.meta_info_def.tags)
        ops[f"<graph {index} [{tags}]>" if several else "<graph>"] = {node.op for node in graph.node}
        for function in graph.library.function:
            ops.setdefault(function.signature.name, set()).update(node.op for node in function.node_def)
    return ops


def unregistered_ops(export_dir: str) -> Dict[str, Set[str]]:
    """Ops of `export_dir` that are not registered in this process, by function.

    Only meaningful in a process that has not loaded op libraries beyond
    core TensorFlow (tensorflow_text registers its own ops when imported).
    """
    if "tensorflow_text" in sys.modules:
        raise RuntimeError(
            "tensorflow_text is imported in this process, so its ops count as registered; "
            "run the check in a fresh process (python -m keras_transformer.export check DIR)"
        )
    all_ops = saved_model_ops(export_dir)
    function_names = set(all_ops)  # a function may be called as an op by name
    missing = {}
    for name, ops in all_ops.items():
        bad = {op for op in ops if op not in function_names and op_def_registry.get(op) is None}
        if bad:
            missing[name] = bad
    return missing
