"""TRL (latest): SFTTrainer with packing=True (default strategy) trains the folder, loaded by path with
trust_remote_code, on CPU for a few steps; packed padding-free rows score like their documents run one by one."""

import math

import pytest

from .conftest import check


@pytest.fixture(scope="module")
def trl_report(clients):
    return clients.result("trl", "trl_client.py")


def test_sft_with_packing_trains(trl_report):
    got = check(trl_report, "sft_packing")
    assert got["model_class"] == "GPTScratchForCausalLM"
    assert got["packing_strategy"] == "bfd" and got["padding_free"] is True
    assert got["steps"] == 4
    assert len(got["losses"]) == 4 and all(math.isfinite(loss) for loss in got["losses"]), got["losses"]
    assert math.isfinite(got["train_loss"])
    assert got["params_changed"] == got["params_total"], got


def test_packed_rows_keep_documents_apart(trl_report):
    got = check(trl_report, "packed_rows_keep_documents_apart")
    assert got["documents"] >= 2, "the row holds one document: nothing to keep apart"
    assert got["finite"]
    assert got["packed_loss"] == pytest.approx(got["separate_loss"], rel=2e-5, abs=0)
