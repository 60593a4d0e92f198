"""ONNX: both causal folders export with the dynamo exporter (dynamic batch and sequence, with and without an
attention mask) and onnxruntime's logits are within 1e-4 of PyTorch's at three shapes, the last a full context."""

import pytest

from .conftest import check
from .fixtures import CAUSAL, CONTEXT

TOL = 1e-4


@pytest.fixture(scope="module")
def onnx_report(clients):
    return clients.result("onnx", "onnx_client.py")


@pytest.mark.parametrize("mask", ["no_mask", "mask"])
@pytest.mark.parametrize("model", list(CAUSAL))
def test_onnxruntime_matches_pytorch(onnx_report, model, mask):
    got = check(onnx_report, f"{model}/{mask}")
    assert got["inputs"] == (["input_ids", "attention_mask"] if mask == "mask" else ["input_ids"])
    shapes = got["shapes"]
    assert [s["shape"] for s in shapes] == [[1, 5], [2, 17], [3, CONTEXT]]
    for s in shapes:
        assert s["out_shape"] == s["shape"] + [512], s
        assert s["finite_onnx"] and s["finite_torch"], s
        # with a mask: the real tokens (a padded position attends to nothing, and its logits mean nothing)
        assert s["max_diff_real"] <= TOL, s
