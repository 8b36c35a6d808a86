"""A trained system's final.pt: written and read through one type, for hybrid, adapted and end-to-end systems; a
checkpoint written before the type existed (a plain dict) reads back as the same system."""

from dataclasses import asdict

import numpy as np
import pytest
import torch

from asrhybrid.e2e.train import E2EConfig, build_e2e_model, load_e2e
from asrhybrid.errors import DataError
from asrhybrid.nnet.checkpoint import AM, E2E, TrainedSystem, cpu_weights, is_trained_system
from asrhybrid.nnet.inference import load_am
from asrhybrid.nnet.models import build_model
from asrhybrid.nnet.train import TrainConfig

DIM, PDFS = 13, 7


def _am(tmp_path):
    cfg = TrainConfig(system="dnn", model={"context": 1, "hidden": 16, "layers": 1}, cmvn="global")
    model = build_model("dnn", DIM, PDFS, cfg.model)
    prior = np.log(np.arange(1, PDFS + 1) / np.arange(1, PDFS + 1).sum())
    trained = TrainedSystem(
        AM,
        asdict(cfg),
        cpu_weights(model),
        np.arange(DIM, dtype=np.float32),
        np.full(DIM, 2.0, np.float32),
        PDFS,
        prior,
    )
    return model, trained


def test_a_hybrid_system_round_trips_and_builds_the_same_network(tmp_path):
    model, trained = _am(tmp_path)
    assert not is_trained_system(tmp_path)
    trained.save(tmp_path)
    assert is_trained_system(tmp_path)
    loaded, back = load_am(tmp_path)
    assert back.kind == AM and back.system == "dnn" and back.num_outputs == PDFS and back.feat_dim == DIM
    np.testing.assert_array_equal(back.log_prior, trained.log_prior)
    x = torch.randn(1, 20, DIM)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    # the normaliser is the training data's: (x - mean) / std
    feats = np.ones((4, DIM), np.float32)
    np.testing.assert_allclose(back.normalizer().array(feats), (feats - trained.feat_mean) / trained.feat_std)


def test_the_file_keeps_the_layout_older_readers_know(tmp_path):
    """The dict keys every system trained before the type was written with: an older checkout reads a new one."""
    _, trained = _am(tmp_path)
    trained.adapted({"speakers": [], "transforms": [], "state": {}, "base": "x"}).save(tmp_path)
    saved = torch.load(tmp_path / "final.pt", weights_only=False)
    assert set(saved) == {"model", "config", "feat_mean", "feat_std", "num_pdfs", "log_prior", "adaptation"}
    assert saved["num_pdfs"] == PDFS and saved["config"]["system"] == "dnn"
    assert TrainedSystem.load(tmp_path).base().adaptation is None


def test_an_e2e_system_written_as_a_plain_dict_reads_back(tmp_path):
    cfg = E2EConfig(system="ctc", model={"hidden": 8, "context": 0, "stride": 1})
    model = build_e2e_model("ctc", DIM, 5, cfg.model)
    torch.save(
        {
            "model": model.state_dict(),
            "config": asdict(cfg),
            "num_tokens": 5,
            "feat_mean": np.zeros(DIM),
            "feat_std": np.ones(DIM),
        },
        tmp_path / "final.pt",
    )
    trained = TrainedSystem.load(tmp_path)
    assert trained.kind == E2E and trained.num_outputs == 5 and trained.log_prior is None
    loaded, _ = load_e2e(tmp_path)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_the_wrong_kind_or_no_system_is_named(tmp_path):
    _, trained = _am(tmp_path)
    trained.save(tmp_path / "am")
    with pytest.raises(DataError, match="hybrid acoustic model"):
        load_e2e(tmp_path / "am")
    with pytest.raises(DataError, match="final.pt not found"):
        TrainedSystem.load(tmp_path / "none")
    (tmp_path / "bad").mkdir()
    torch.save({"state_dict": {}}, tmp_path / "bad" / "final.pt")  # a flat start's, say
    with pytest.raises(DataError, match="not a trained system's checkpoint"):
        load_am(tmp_path / "bad")
