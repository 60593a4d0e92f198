"""The Trainer's own arithmetic and API, on a tiny model in this process: steps per epoch, the run's length, the
evaluation cadence, the one-batch check, the evaluation hook, ``evaluate`` and the workflow state in checkpoints."""

import json

import pytest
import torch

from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
from pipelines.errors import UserError
from pipelines.training.losses import lm_loss
from pipelines.settings import TrainSettings
from pipelines.training.trainer import Trainer

CONTEXT = 8


def windows(n: int) -> list[dict]:
    generator = torch.Generator().manual_seed(n)
    ids = torch.randint(0, 50, (n, CONTEXT + 1), generator=generator)
    return [{"input_ids": row[:-1], "shift_labels": row[1:]} for row in ids]


def make_trainer(tmp_path, n_train=20, val=None, **settings):
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(GPTScratchConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, max_position_embeddings=CONTEXT))
    hook = settings.pop("on_eval", None)
    cfg = TrainSettings(**{"mixed_precision": "no", "batch_size": 2, "log_every": 1, **settings})
    return Trainer(model, cfg, tmp_path / "run", windows(n_train), val, collate_fn=torch.utils.data.default_collate,
                   loss_fn=lm_loss, tokens_per_example=CONTEXT, on_eval=hook, log_fn=lambda _msg: None)


@pytest.mark.parametrize("settings,per_epoch,total,every", [
    ({"max_steps": 7, "eval_every": 3}, 10.0, 7, 3),                                    # --max-steps decides
    ({"epochs": 2, "eval_every": 0}, 10.0, 20, 0),                                     # 20 examples / batch 2
    ({"epochs": 1.5, "gradient_accumulation_steps": 3, "evals_per_epoch": 1}, 10 / 3, 5, 3),  # ceil(1.5 * 10 / 3)
    ({"epochs": 1, "gradient_accumulation_steps": 3, "evals_per_epoch": 4}, 10 / 3, 4, 1),    # never below 1
    ({"max_steps": 50, "evals_per_epoch": 4}, 10.0, 50, 2),                            # round(10 / 4) = 2
])
def test_steps_per_epoch_length_and_cadence_come_from_the_trainer(tmp_path, settings, per_epoch, total, every):
    trainer = make_trainer(tmp_path, **settings)
    assert trainer.steps_per_epoch == pytest.approx(per_epoch)
    assert (trainer.total_steps, trainer.eval_every) == (total, every)


def test_a_training_set_smaller_than_one_batch_is_refused(tmp_path):
    with pytest.raises(UserError, match="the training split has 3 examples, fewer than one batch"):
        make_trainer(tmp_path, n_train=3, batch_size=4)


def test_one_hook_at_each_evaluation_and_a_public_evaluate(tmp_path):
    seen = []

    def on_eval(trainer, record):
        # the validation loss is in the record already; the hook may add to it and evaluate what it likes
        first = trainer.evaluate(trainer.val_data, indices=[0, 1])
        record["first_two_loss"] = first
        seen.append((record["step"], record["val_loss"]))
        trainer.workflow_state.setdefault("steps", []).append(record["step"])

    val = windows(6)
    trainer = make_trainer(tmp_path, val=val, max_steps=4, eval_every=2, checkpoint_every=4, on_eval=on_eval)
    result = trainer.fit()
    evals = [h for h in result.history if "val_loss" in h]
    assert [s for s, _ in seen] == [0, 2, 4] == [h["step"] for h in evals]
    assert all("first_two_loss" in h for h in evals)
    # evaluate: the count-weighted mean of the loss (or any metric of the same shape) over the split
    whole = trainer.evaluate(val)
    assert whole == pytest.approx(evals[-1]["val_loss"])
    parts = [trainer.evaluate(val, indices=[i]) for i in range(len(val))]
    assert whole == pytest.approx(sum(parts) / len(parts))  # every window scores CONTEXT tokens
    assert trainer.evaluate(val, lambda model, batch: (torch.tensor(2.0), 3)) == 2.0

    # the workflow state travels with the checkpoint, also under the name older checkpoints gave it
    checkpoint = tmp_path / "run" / "checkpoints" / "step-4"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["workflow_state"] == {"steps": [0, 2, 4]}
    state["notes"] = state.pop("workflow_state")
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    again = make_trainer(tmp_path, val=val, max_steps=4, eval_every=2)
    again.load_checkpoint(checkpoint)
    assert (again.step, again.workflow_state) == (4, {"steps": [0, 2, 4]})


def test_batches_must_be_dicts(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.collate_fn = lambda items: [item["input_ids"] for item in items]
    with pytest.raises(TypeError, match="dict batches"):
        trainer.fit()
