import math
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from unweave.slt import LLCError, SGLDConfig, calibrate, estimate_llc, hessian_summary, truth
from unweave.slt.llc import mean_loss
from unweave.zoo import singular


def test_rrr_formula_agrees_with_deep_linear_formula():
    """Aoyagi & Watanabe (2005) and Aoyagi (2024) are separate derivations; on two layers they
    must agree, in every case and parity."""
    seen = set()
    for M, H, N in [(5, 3, 5), (2, 1, 2), (5, 4, 5), (3, 2, 3), (4, 3, 8), (2, 1, 4), (8, 3, 4), (4, 1, 2),
                    (3, 8, 4), (1, 4, 2), (6, 2, 3), (7, 5, 2)]:
        for r in range(min(M, H, N) + 1):
            seen.add(truth.rrr_case(M, H, N, r))
            assert truth.reduced_rank_regression(M, H, N, r) == pytest.approx(truth.deep_linear([M, H, N], r))
    assert seen == {"1-even", "1-odd", "2", "3", "4"}


def test_closed_forms_known_values():
    assert truth.normal_crossing([1, 2]) == 0.25
    assert truth.reduced_rank_regression(3, 8, 4, 1) == 6.0  # case 4: M N / 2
    assert truth.reduced_rank_regression(5, 5, 5, 5) == 12.5  # full rank: the map is regular, 25 dims / 2
    # rank 0 through a width-1 layer of a deep net: K ~ product of three scalars' squares -> 1/2 * ... (Aoyagi)
    assert truth.deep_linear([1, 1, 1, 1], 0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="true rank"):
        truth.reduced_rank_regression(2, 2, 2, 3)


def test_normal_crossing_single_power_is_exact():
    """K = w^4 with a wide prior: E[n_beta K] = Gamma(5/4) / Gamma(1/4) = 1/4 for any large n_beta.
    Chains start at the flat point w = 0 and need a long burn-in to reach the tails."""
    model, loader = singular.normal_crossing_task([2], n=1000)
    r = estimate_llc(model, singular.normal_crossing_loss, loader,
                     SGLDConfig(epsilon=1e-4, nbeta=1e4, localization=1.0, chains=64, draws=3000, burn_in=1000))
    assert r.llc_mean == pytest.approx(0.25, rel=0.1)
    assert r.n_params == 1 and r.flattened and r.mala_acceptance > 0.9


def test_reduced_rank_regression_within_ten_percent():
    model, loader = singular.deep_linear_task([4, 3, 4], 1, n=1000)
    truth_value = truth.reduced_rank_regression(4, 3, 4, 1)
    r = estimate_llc(model, singular.half_squared_error, loader,
                     SGLDConfig(epsilon=1e-4, nbeta=1e4, localization=100.0, chains=4, draws=800, burn_in=200))
    assert abs(r.llc_mean - truth_value) / truth_value <= 0.1
    assert r.llc_mean < r.n_params / 2  # singular: fewer effective parameters than a regular model


def test_llc_is_n_beta_times_mean_excess_loss():
    """The reported numbers follow from the trace: recompute them independently with numpy."""
    model, loader = singular.deep_linear_task([3, 2, 3], 1, n=200, batch_size=50)
    r = estimate_llc(model, singular.half_squared_error, loader, SGLDConfig(epsilon=1e-4, nbeta=500, chains=3, draws=50))
    trace = np.array(r.loss_trace)
    per_chain = r.nbeta * (trace.mean(1) - r.init_loss)
    np.testing.assert_allclose(r.llc_per_chain, per_chain, rtol=1e-10)
    assert r.llc_std_err == pytest.approx(per_chain.std(ddof=1) / math.sqrt(3))
    assert r.init_loss == pytest.approx(0.0, abs=1e-12)  # noiseless data at the true map


def test_default_nbeta_is_n_over_log_n():
    model, loader = singular.deep_linear_task([2, 1, 2], 1, n=500)
    r = estimate_llc(model, singular.half_squared_error, loader, SGLDConfig(chains=1, draws=5))
    assert r.nbeta == pytest.approx(500 / math.log(500))


def test_chains_are_reproducible_one_by_one_and_vmap_matches_loop():
    model, loader = singular.deep_linear_task([3, 2, 3], 1, n=200, batch_size=40)
    run = lambda **kw: estimate_llc(model, singular.half_squared_error, loader,
                                    SGLDConfig(epsilon=1e-4, nbeta=300, draws=30, **kw)).loss_trace
    four, two = np.array(run(chains=4, vectorize=True)), np.array(run(chains=2, vectorize=True))
    np.testing.assert_allclose(four[:2], two, rtol=1e-4)  # chain c does not depend on how many run
    np.testing.assert_allclose(np.array(run(chains=4, vectorize=False)), four, rtol=1e-4)
    np.testing.assert_array_equal(np.array(run(chains=2, vectorize=True)), two)  # same seed, same numbers


def test_parameter_subset():
    model, loader = singular.deep_linear_task([3, 2, 3], 1, n=200)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = estimate_llc(model, singular.half_squared_error, loader, SGLDConfig(chains=2, draws=10, nbeta=100), params="1")
    assert r.n_params == 6  # the second layer only
    for k, v in model.state_dict().items():  # sampling never moves the model itself
        assert torch.equal(v, before[k])
    with pytest.raises(LLCError, match=r"matches no parameter; parameters are: 0.weight, 1.weight"):
        estimate_llc(model, singular.half_squared_error, loader, params="2.weight")


def test_bad_inputs_are_clear_errors():
    model, loader = singular.deep_linear_task([2, 1, 2], 1, n=50)
    empty = DataLoader(TensorDataset(torch.zeros(0, 2), torch.zeros(0, 2)), batch_size=4)
    with pytest.raises(LLCError, match="empty"):
        estimate_llc(model, singular.half_squared_error, empty)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(LLCError, match="loss at the trained weights is nan"):
        estimate_llc(model, singular.half_squared_error, loader)
    with pytest.raises(LLCError, match="epsilon must be positive"):
        SGLDConfig(epsilon=0)


def test_divergence_is_detected_with_advice():
    model, loader = singular.deep_linear_task([3, 2, 3], 1, n=200)
    with pytest.warns(UserWarning, match="lower epsilon"), pytest.raises(LLCError, match="every chain diverged"):
        estimate_llc(model, singular.half_squared_error, loader, SGLDConfig(epsilon=1.0, nbeta=1e4, chains=2, draws=50))


def test_unflattened_trace_warns():
    model, loader = singular.deep_linear_task([4, 3, 4], 1, n=500)
    with pytest.warns(UserWarning, match="not flattened"):  # tiny steps: still climbing from w* at the end
        r = estimate_llc(model, singular.half_squared_error, loader,
                         SGLDConfig(epsilon=1e-7, nbeta=1e4, localization=1.0, chains=4, draws=100))
    assert not r.flattened


def test_calibration_prefers_the_largest_healthy_step():
    model, loader = singular.deep_linear_task([3, 2, 3], 1, n=300)
    cal = calibrate(model, singular.half_squared_error, loader, epsilons=(1e-5, 1e-4, 1.0), nbetas=[1e3],
                    base=SGLDConfig(chains=4, draws=200, burn_in=50))
    by_eps = {row["epsilon"]: row for row in cal.grid}
    assert by_eps[1.0]["diverged"] and not by_eps[1.0]["healthy"]
    assert cal.chosen == {"epsilon": 1e-4, "nbeta": 1e3}


def test_hessian_counts_flat_directions():
    """RRR 5-3-5 at a rank-1 map: 30 weights, the map's tangent space has r(M+N-r) = 9 directions."""
    model, loader = singular.deep_linear_task([5, 3, 5], 1, n=1000)
    exact = hessian_summary(model, singular.half_squared_error, loader)
    assert exact.method == "exact" and exact.n_params == 30 and exact.near_zero == 21
    slq = hessian_summary(model, singular.half_squared_error, loader, exact_limit=0, lanczos_steps=30, probes=8)
    assert slq.method == "slq" and abs(slq.near_zero - 21) <= 3
    assert slq.max_abs_eigenvalue == pytest.approx(exact.max_abs_eigenvalue, rel=1e-3)


def test_modadd_loss_at_w_star(small_modadd):
    from unweave.zoo.modadd import answer_loss, train_loader
    loader = train_loader(small_modadd.config)
    assert mean_loss(small_modadd.load(), answer_loss, loader) == pytest.approx(small_modadd.history[-1]["train_loss"],
                                                                                rel=1e-4)
