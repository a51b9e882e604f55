"""Fusing the matmuls that read the same input (model_prep/openvino_fuse.py): fewer nodes, the same logits.

Runs in .venv-openvino (a child process): optimum-cli exports the tiny model as it does for the server, the copy is
fused, and both are compiled on the CPU and fed the same tokens (a prompt, then decode steps with the KV cache).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, backend_python
from tests.models.make_tiny_model import NUM_LAYERS

COMPARE = r"""
import json, shutil, sys
from pathlib import Path
import numpy as np, openvino as ov
from model_prep.openvino_export import ExportSettings, _run_optimum
from model_prep.openvino_fuse import fuse_file

source, work, fmt = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
plain, fused = work / "plain", work / "fused"
plain.mkdir()
_run_optimum(source, plain, ExportSettings(fmt), lambda line: None)
shutil.copytree(plain, fused)
groups = fuse_file(fused)
core = ov.Core()
report = {"groups": groups}
ids = np.random.default_rng(0).integers(3, 2000, 40).astype(np.int64)
for name in ("plain", "fused"):
    model = core.read_model(work / name / "openvino_model.xml")
    report[name + "_matmuls"] = sum(op.get_type_name() == "MatMul" for op in model.get_ops())
    request = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    logits = []
    for start, end in ((0, 32), *((i, i + 1) for i in range(32, 40))):  # a prompt, then eight decode steps
        request.infer({"input_ids": ids[None, start:end], "attention_mask": np.ones((1, end), np.int64),
                       "position_ids": np.arange(start, end)[None], "beam_idx": np.zeros(1, np.int32)})
        logits.append(request.get_tensor("logits").data[0, -1].copy())
    np.save(work / f"{name}.npy", np.stack(logits))
print(json.dumps(report))
"""

SYNTHETIC = r"""
import json
import numpy as np, openvino as ov
from openvino import opset13 as ops
from model_prep.openvino_fuse import fuse_shared_input_matmuls

rng = np.random.default_rng(1)
x = ops.parameter([-1, 8], ov.Type.f32, name="x")
y = ops.parameter([-1, 8], ov.Type.f32, name="y")

def int8(rows):  # per-row int8 weights behind the decompression chain optimum writes
    w = ops.convert(ops.constant(rng.integers(0, 255, (rows, 8)).astype(np.uint8)), ov.Type.f16)
    zero = ops.convert(ops.constant(rng.integers(100, 150, (rows, 1)).astype(np.uint8)), ov.Type.f16)
    scale = ops.constant(rng.uniform(0.01, 0.02, (rows, 1)).astype(np.float16))
    return ops.convert(ops.multiply(ops.subtract(w, zero), scale), ov.Type.f32)

def dense(rows):
    return ops.constant(rng.standard_normal((rows, 8)).astype(np.float32))

outputs = [
    ops.matmul(x, int8(4), False, True), ops.matmul(x, int8(6), False, True), ops.matmul(x, int8(2), False, True),
    ops.matmul(x, dense(3), False, True), ops.matmul(x, dense(5), False, True),  # another chain: its own group
    ops.matmul(y, int8(4), False, True),  # alone on its input
    ops.matmul(x, ops.constant(rng.standard_normal((8, 3)).astype(np.float32)), False, False),  # [in, out] weights
]
model = ov.Model([ops.result(o) for o in outputs], [x, y])
core = ov.Core()
feed = {"x": rng.standard_normal((3, 8)).astype(np.float32), "y": rng.standard_normal((2, 8)).astype(np.float32)}
f32 = {"INFERENCE_PRECISION_HINT": "f32"}
before = [v.copy() for v in core.compile_model(model.clone(), "CPU", f32).infer_new_request(feed).values()]
groups = fuse_shared_input_matmuls(model)
after = list(core.compile_model(model, "CPU", f32).infer_new_request(feed).values())
print(json.dumps({
    "groups": groups,
    "matmuls": sum(op.get_type_name() == "MatMul" for op in model.get_ops()),
    "max_diff": max(float(np.abs(a - b).max()) for a, b in zip(before, after)),
    "shapes": [list(a.shape) for a in after] == [list(b.shape) for b in before],
}))
"""


def _run(*args: str) -> dict[str, float]:
    done = subprocess.run(
        [backend_python("openvino"), *args], capture_output=True, text=True, cwd=ROOT, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("weight_format", ["fp16", "int8", "int4", "int4_sym"])
def test_a_fused_export_computes_the_same_logits_with_fewer_matmuls(
    tiny_model: Path, tmp_path: Path, weight_format: str
) -> None:
    import numpy as np

    report = _run("-c", COMPARE, str(tiny_model), str(tmp_path), weight_format)
    # Per layer q/k/v -> 1 and gate/up -> 1: two groups and three matmuls fewer; the LM head and the rotary
    # embedding's frequencies stay.
    assert report["groups"] == 2 * NUM_LAYERS
    assert report["plain_matmuls"] == 7 * NUM_LAYERS + 2 and report["fused_matmuls"] == 4 * NUM_LAYERS + 2
    plain, fused = np.load(tmp_path / "plain.npy"), np.load(tmp_path / "fused.npy")
    assert plain.shape == fused.shape == (9, plain.shape[1]) and np.abs(plain).max() > 0.1
    np.testing.assert_allclose(fused, plain, rtol=0, atol=1e-4)
    assert (fused.argmax(-1) == plain.argmax(-1)).all()


def test_only_matmuls_on_one_input_with_like_weights_are_fused() -> None:
    report = _run("-c", SYNTHETIC)
    # The three int8 matmuls on x -> 1, the two dense ones -> 1; the one on y and the [in, out] one stay.
    assert report == {"groups": 2, "matmuls": 4, "max_diff": report["max_diff"], "shapes": True}
    assert report["max_diff"] < 1e-5


def test_the_server_exports_fused(tiny_model: Path) -> None:
    """What `prepare` (and a server start) writes is the fused model, marked with the export version that fuses."""
    prepare = [backend_python("openvino"), "-m", "engine_server.cli", "prepare", "--hw-mode", "openvino", "--model"]
    exported = subprocess.run([*prepare, str(tiny_model)], capture_output=True, text=True, cwd=ROOT, check=True)
    directory = Path(exported.stdout.strip().splitlines()[-1])
    xml = (directory / "openvino_model.xml").read_text()
    assert xml.count('type="MatMul"') == 4 * NUM_LAYERS + 2 and xml.count('type="VariadicSplit"') == 2 * NUM_LAYERS
    assert json.loads((directory / "engine-server-export.json").read_text())["version"] >= 2
