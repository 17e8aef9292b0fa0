"""The train recipe's stages and what a session leaves behind when it ends, well or not."""
from __future__ import annotations

import json

import pytest

from helpers import write_qa
from mtn_sails.model_dir import store
from mtn_sails.config import TrainConfig
from mtn_sails.errors import InputError
from mtn_sails.training.session import train
from mtn_sails.training.work_dir import discard_unresumable_work


def test_a_first_session_that_fails_before_training_leaves_the_folder_as_it_was(tmp_path):
    data = write_qa(tmp_path / "qa.json")
    with pytest.raises(InputError, match="cannot load base model"):
        train(TrainConfig(data_file=str(data), output_dir=str(tmp_path / "trained_model"),
                          model_name=str(tmp_path / "not_a_model")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa.json"]


def test_a_failed_session_keeps_a_checkpoint_that_resume_can_continue(tmp_path):
    output = tmp_path / "trained_model"
    checkpoint = store.sibling(output, "work") / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 4}), encoding="utf-8")
    store.sibling(output, "staging").mkdir()
    discard_unresumable_work(output)
    assert checkpoint.is_dir() and not store.sibling(output, "staging").exists()
    (checkpoint / "trainer_state.json").write_text("{partial", encoding="utf-8")  # killed while writing it
    discard_unresumable_work(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_auto_interpolation_protects_the_bases_answers_from_the_first_session_on():
    from types import SimpleNamespace

    from mtn_sails.data.records import Record
    from mtn_sails.training.base_answers import BaseAnswers
    from mtn_sails.training.probe import ProbeScore
    from mtn_sails.training.interpolation import protected_probes

    answer = Record(0, "pair", "question/answer", prompt="What is the capital of France?", response="Paris.")
    base = BaseAnswers([answer], [], ProbeScore(1.0, -0.1, 1))
    assert protected_probes({}, [], base) == ({0: [answer]}, {0: 1.0})  # session 1: the base alone
    fact = Record(0, "pair", "question/answer", prompt="Vault 7?", response="49.")
    probes, before = protected_probes({0: [answer], 1: [fact]}, [SimpleNamespace(session=1, recall=0.9)], base)
    assert probes == {0: [answer], 1: [fact]} and before == {0: 1.0, 1: 0.9}
    assert protected_probes({1: [fact]}, [SimpleNamespace(session=1, recall=0.9)], None) == ({1: [fact]}, {1: 0.9})
