"""The Optuna search as users type it: ``python -m oaml.train -m hparams_search=occlusion``, 3 tiny trials,
then a second call that continues the same SQLite study."""

from __future__ import annotations

import optuna
import pytest
import yaml
from launch_cli import SWEEP_RUN, read_json, run_train

from oaml.sweep_summary import find_jobs, summarize

SEARCHED = {"loss.adaface", "loss.qaconv", "loss.occlusion", "occlusion.weighting"}
SEARCHED |= {"occlusion.hidden_channels", "occlusion.detach_features"}
OBJECTIVE = "val/synthetic_occluded/fused_acc"


def _trial_dirs(study_dir):
    return sorted(p.parent.parent for p in study_dir.rglob(".hydra/overrides.yaml"))


def test_search_runs_trials_and_a_second_call_continues_the_study(tmp_path) -> None:
    args = ["-m", "hparams_search=occlusion", *SWEEP_RUN]
    first = run_train(*args, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    study_dir = tmp_path / "multirun" / "search" / "occlusion"
    storage = f"sqlite:///{study_dir / 'study.db'}"
    study = optuna.load_study(study_name="occlusion", storage=storage)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3

    # Each trial ran with the values Optuna suggested and reported the occluded fused accuracy it measured.
    dirs = _trial_dirs(study_dir)
    assert len(dirs) == 3
    measured = {}
    for job in dirs:
        overrides = dict(
            o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        )
        assert set(overrides) >= SEARCHED
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert float(overrides["loss.occlusion"]) == pytest.approx(config["loss"]["occlusion"])
        assert 0.0 <= config["loss"]["occlusion"] <= 0.5 and 0.3 <= config["loss"]["qaconv"] <= 1.0
        assert config["occlusion"]["weighting"] == overrides["occlusion.weighting"]
        measured[float(overrides["loss.occlusion"])] = read_json(job / "metrics.json")[OBJECTIVE]
    assert {t.params["loss.occlusion"]: t.value for t in trials} == pytest.approx(measured)
    (sweep,) = {job.parent for job in dirs}
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(measured.values()))

    # The same command again: one more trial in the same study, in a sweep folder of its own.
    second = run_train(*args, "hydra.sweeper.n_trials=1", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    study = optuna.load_study(study_name="occlusion", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 4 and trials[3].state == optuna.trial.TrialState.COMPLETE
    assert all(trials[3].params != earlier.params for earlier in trials[:3])  # a new point, not a replay
    assert len(_trial_dirs(study_dir)) == 4
    assert len({job.parent for job in _trial_dirs(study_dir)}) == 2
    # The summary of the study folder: every trial of both calls, sorted by the searched metric.
    header, rows, metric, mode = summarize(find_jobs(study_dir))
    assert (metric, mode, len(rows)) == (OBJECTIVE, "max", 4)
    assert rows[0][header.index(metric)] == pytest.approx(max(t.value for t in trials))


def test_objective_is_the_chosen_metric_or_the_first_sets_occluded_fused_accuracy() -> None:
    from omegaconf import OmegaConf

    from oaml.training.search import search_objective

    metrics = {
        "val/lfw/fused_acc": 0.9,
        "val/lfw_occluded/fused_acc": 0.7,
        "val/lfw_occluded/qaconv_acc": 0.6,
    }
    sets = {"lfw": {}, "lfw_occluded": {}, "cfp_fp": {}}
    search = OmegaConf.create({"optimized_metric": None, "val": {"sets": sets, "pairs": None, "bin": None}})
    assert search_objective(search, metrics) == 0.7
    search.optimized_metric = "val/lfw_occluded/qaconv_acc"
    assert search_objective(search, metrics) == 0.6
    search.optimized_metric = "val/lfw/qaconv_acc"
    with pytest.raises(KeyError, match="optimized_metric=val/lfw/qaconv_acc is not among this run's metrics"):
        search_objective(search, metrics)
    single = OmegaConf.create({"optimized_metric": None, "val": {"sets": {}, "pairs": "/d/my_pairs.txt"}})
    with pytest.raises(KeyError, match="optimized_metric=val/my_pairs_occluded/fused_acc"):
        search_objective(single, metrics)
    # Outside a search: the metric best.ckpt monitored, as before.
    plain = OmegaConf.create({"callbacks": {"model_checkpoint": {"monitor": "val/lfw/fused_acc"}}})
    assert search_objective(plain, metrics) == 0.9
