"""Names -> runs: init_from carries weights and momentum; load_learner rebuilds runs."""
import numpy as np
import pytest
import torch

from cooplib.engine import experiment, metrics, optim, runs
from cooplib.engine.config import RunConfig
from cooplib.base.errors import RunDirError


@pytest.fixture
def npz_config(tiny_data, tmp_path):
    path = tmp_path / "quadrants.npz"
    np.savez(path, x_train=tiny_data.x_train.numpy(), y_train=tiny_data.y_train.numpy(),
             x_test=tiny_data.x_test.numpy(), y_test=tiny_data.y_test.numpy())
    return RunConfig(dataset="npz", dataset_args={"path": str(path)}, model="resnet8", epochs=2, batch_size=32,
                     lr=0.05, schedule="constant", deterministic=True, device="cpu", progress=False, tensorboard=False)


def test_init_from_loads_weights_and_momentum_strictly(npz_config, tmp_path):
    parent = experiment.run(npz_config, tmp_path / "runs")
    child_cfg = npz_config.replace(init_from=str(parent.run_dir), lr=0.01, epochs=1, seed=7)
    data = experiment.load_data(child_cfg)
    learner, opt_state = experiment.build_learner(child_cfg, data)
    parent_weights = runs.RunDir(parent.run_dir).weights()
    assert all(torch.equal(v, parent_weights[k]) for k, v in learner.state_dict().items())
    parent_opt = runs.RunDir(parent.run_dir).checkpoint()["optimizer"]
    opt = optim.make_optimizer(learner, child_cfg, torch.device("cpu"))
    optim.carry_optimizer_state(opt, opt_state)
    assert opt.param_groups[0]["lr"] == 0.01  # hyperparameters are the child's
    assert all(torch.equal(opt.state_dict()["state"][i]["momentum_buffer"], s["momentum_buffer"]) for i, s in parent_opt["state"].items())
    # a different architecture cannot be initialised from it
    with pytest.raises(RuntimeError, match="size mismatch|Missing key|Unexpected key"):
        experiment.build_learner(child_cfg.replace(model="resnet14"), data)


def test_init_from_an_unfinished_run_is_refused(npz_config, tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(RunDirError, match="not a complete run"):
        experiment.build_learner(npz_config.replace(init_from=str(tmp_path / "half")), experiment.load_data(npz_config))


def test_load_learner_reproduces_the_recorded_test_accuracy(npz_config, tmp_path):
    res = experiment.run(npz_config, tmp_path / "runs")
    learner = experiment.load_learner(res.run_dir)
    data = experiment.load_data(npz_config)
    from cooplib.data import DeviceLoader

    loader = DeviceLoader(data.x_test, data.y_test, 64, device=torch.device("cpu"), mean=data.mean, std=data.std)
    out = metrics.evaluate(learner, loader, None, torch.device("cpu"))
    assert out["net/top1"] == pytest.approx(res.final["last"]["test/net/top1"])


def test_the_book_log_has_one_line_per_run_trained_or_reused(npz_config, tmp_path, monkeypatch, capfd):
    """With $COOPLIB_RUN_LOG=1 each finished run prints one line on the process's own stderr
    (a script's terminal): its name, trained or reused, epochs; with a path it is appended there."""
    monkeypatch.setenv(experiment.RUN_LOG, "1")
    name = npz_config.run_name()
    experiment.run(npz_config, tmp_path)
    experiment.run(npz_config, tmp_path)
    lines = [l for l in capfd.readouterr().err.splitlines() if l.startswith("[cooplib] ")]
    epochs = npz_config.epochs
    assert [l.split(",")[0] for l in lines] == [f"[cooplib] {name}: trained", f"[cooplib] {name}: reused"]
    assert all(f", {epochs} epochs, " in l for l in lines)
    monkeypatch.delenv(experiment.RUN_LOG)
    experiment.run(npz_config, tmp_path)
    assert "[cooplib] " not in capfd.readouterr().err
    # a path: the lines are appended there (the book follows that file), nothing on stderr
    log = tmp_path / "runs.log"
    monkeypatch.setenv(experiment.RUN_LOG, str(log))
    experiment.run(npz_config, tmp_path)
    experiment.run(npz_config.replace(seed=1), tmp_path)
    assert "[cooplib] " not in capfd.readouterr().err
    written = log.read_text().splitlines()
    assert [l.split(",")[0] for l in written] == [f"[cooplib] {name}: reused",
                                                  f"[cooplib] {npz_config.replace(seed=1).run_name()}: trained"]
