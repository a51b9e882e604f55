"""Fewer, larger matmuls in an exported model: projections that read the same activations become one.

At one stream a decode step of a small model is a few hundred matrix-vector products, and on CPU each fully
connected node costs a fixed amount besides reading its weights (quantizing the activations, the inference threads
meeting at its end). Attention's q, k and v projections read the same normed hidden state, as do the MLP's gate and
up projections: each such group becomes one matmul over the concatenated weights, followed by a split. The result is
the same arithmetic (each output column still sees only its own weights, scales and zero points), with 4 instead of
7 matmuls per Llama layer. SmolLM2-135M int8 on 2 cores: 211 -> 121 fully connected nodes, 10% less time per step
at one stream, the same greedy tokens (bench/README.md).

The rewrite only touches a group whose weights are constants behind the same chain of Convert / Subtract /
Multiply / Reshape nodes (fp32, fp16 and per-channel int8 exports, and int4 ones, whose weights are grouped
[out, groups, group size] and packed two to a byte); anything else is left as it is. Llama-3.2-1B's shape in
symmetric int4 on 2 cores: 0-8% less time per decode step at one stream, 2-11% more tokens/s at eight
(bench/README.md). It runs in a child process
at export time (`python -m model_prep.openvino_fuse DIR`), so its peak memory does not stay with the server.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

IR_FILE = "openvino_model.xml"
CHAIN_OPS = {"Constant", "Convert", "Subtract", "Multiply", "Reshape"}
# Constants of these types are read and rewritten exactly through numpy (bf16 is not).
CONSTANT_TYPES = {"f32", "f16", "u8", "i8"}
# These are packed two to a byte: their rows are concatenated as bytes, which needs whole bytes per row.
PACKED_TYPES = {"u4", "i4"}


def fuse_shared_input_matmuls(model: Any) -> int:
    """Rewrite model in place; returns how many groups were fused."""
    groups: dict[tuple[Any, tuple[Any, ...]], list[Any]] = defaultdict(list)
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        attributes = node.get_attributes()
        if not attributes.get("transpose_b") or attributes.get("transpose_a") or _rows(node) is None:
            continue
        signature = _signature(node.input_value(1).get_node())
        if signature is not None:
            groups[(node.input_value(0), signature)].append(node)
    fused = 0
    for (source, _), matmuls in groups.items():
        if len(matmuls) > 1:
            _replace(source, matmuls)
            fused += 1
    if fused:
        model.validate_nodes_and_infer_types()
    return fused


def _rows(matmul: Any) -> int | None:
    """The weight's output rows, when the weight is a static 2-D [out, in] tensor."""
    shape = matmul.input_value(1).get_partial_shape()
    if shape.is_dynamic or len(shape) != 2:
        return None
    return int(shape[0].get_length())


def _signature(node: Any) -> tuple[Any, ...] | None:
    """The weight chain's structure (op types, element types, constant ranks), or None if it is not a chain of
    constants this rewrite can concatenate row-wise."""
    kind = node.get_type_name()
    if kind not in CHAIN_OPS:
        return None
    if kind == "Constant":
        shape = tuple(node.get_output_shape(0))
        element = node.get_output_element_type(0).get_type_name()
        if len(shape) > 3 or element not in CONSTANT_TYPES | PACKED_TYPES:
            return None
        if element in PACKED_TYPES and (len(shape) < 2 or math.prod(shape[1:]) % 2):
            return None
        return (kind, element, len(shape), *shape[2:])  # grouped: the same group size
    if kind == "Reshape":  # a grouped weight back to [out, in]: only its data input is a chain
        shape = node.get_output_partial_shape(0)
        if shape.is_dynamic or len(shape) != 2:
            return None
        data = _signature(node.input_value(0).get_node())
        return None if data is None else (kind, node.get_output_element_type(0).get_type_name(), data)
    inputs = [_signature(i.get_source_output().get_node()) for i in node.inputs()]
    if any(i is None for i in inputs):
        return None
    return (kind, node.get_output_element_type(0).get_type_name(), *inputs)


def _concat(nodes: list[Any], rows: list[int]) -> Any:
    """One node computing what nodes compute, their rows one after the other."""
    import numpy as np
    from openvino import opset13 as ops

    first = nodes[0]
    kind = first.get_type_name()
    if kind == "Constant":
        if first.get_output_element_type(0).get_type_name() in PACKED_TYPES:
            return _concat_packed(nodes)
        datas = [node.get_data() for node in nodes]
        if all(d.ndim < 2 or d.shape[0] == 1 for d in datas) and all(np.array_equal(d, datas[0]) for d in datas):
            return ops.constant(datas[0], first.get_output_element_type(0))  # one shared value (a scalar zero point)
        blocks = [_rows_of(d, n) for d, n in zip(datas, rows, strict=True)]
        return ops.constant(np.ascontiguousarray(np.concatenate(blocks)), first.get_output_element_type(0))
    if kind == "Reshape":
        columns = int(first.get_output_shape(0)[1])
        data = _concat([n.input_value(0).get_node() for n in nodes], rows)
        return ops.reshape(data, ops.constant(np.array([sum(rows), columns], dtype=np.int64)), False)
    inputs = [_concat([n.input_value(i).get_node() for n in nodes], rows) for i in range(first.get_input_size())]
    if kind == "Convert":
        return ops.convert(inputs[0], first.get_output_element_type(0))
    if kind == "Subtract":
        return ops.subtract(inputs[0], inputs[1])
    return ops.multiply(inputs[0], inputs[1])


def _rows_of(data: Any, rows: int) -> Any:
    """data as rows x the rest: a [rows, ...] weight or per-row value as it is, a scalar or [1, ...] repeated."""
    import numpy as np

    matrix = data if data.ndim >= 2 else data.reshape(1, -1)
    return np.broadcast_to(matrix, (rows, *matrix.shape[1:]))


def _concat_packed(nodes: list[Any]) -> Any:
    """The 4-bit constants of nodes, their rows one after the other: whole rows of packed bytes, copied as they are."""
    import numpy as np
    import openvino

    shapes = [tuple(int(d) for d in node.get_output_shape(0)) for node in nodes]
    merged = openvino.Tensor(nodes[0].get_output_element_type(0), [sum(s[0] for s in shapes), *shapes[0][1:]])
    packed = [np.asarray(node.get_tensor_view().data).reshape(-1) for node in nodes]
    np.asarray(merged.data).reshape(-1)[:] = np.concatenate(packed)
    return openvino.op.Constant(merged)


def _feeds_activation(matmul: Any) -> bool:
    return any(t.get_node().get_type_name() in ("Swish", "Gelu") for t in matmul.output(0).get_target_inputs())


def _replace(source: Any, matmuls: list[Any]) -> None:
    import numpy as np
    from openvino import opset13 as ops

    # A gated MLP's gate first, lengths as i32: the layout OpenVINO's CPU plugin fuses further on its own (its MLP
    # fusion into one node, on AMX) when it finds gate and up already combined.
    matmuls = sorted(matmuls, key=lambda m: not _feeds_activation(m))
    rows = [r for r in (_rows(m) for m in matmuls) if r is not None]
    weight = _concat([m.input_value(1).get_node() for m in matmuls], rows)
    fused = ops.matmul(source, weight, False, True)
    fused.set_friendly_name("+".join(m.get_friendly_name() for m in matmuls))
    split = ops.variadic_split(fused, ops.constant(np.int64(-1)), ops.constant(np.array(rows, dtype=np.int32)))
    for index, matmul in enumerate(matmuls):
        matmul.output(0).replace(split.output(index))


def fuse_file(directory: Path) -> int:
    """Fuse DIR/openvino_model.xml in place (written beside it first, then renamed over it)."""
    import openvino

    xml = Path(directory) / IR_FILE
    model = openvino.Core().read_model(xml)
    fused = fuse_shared_input_matmuls(model)
    if fused:
        tmp = xml.with_name("fused_" + xml.name)
        openvino.save_model(model, tmp, compress_to_fp16=False)
        del model  # the original weights file is mapped until the model goes
        tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        tmp.replace(xml)
    return fused


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m model_prep.openvino_fuse DIR (an OpenVINO IR export)", file=sys.stderr)
        return 2
    fused = fuse_file(Path(args[0]))
    print(f"fused {fused} groups of matmuls that read the same input", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
