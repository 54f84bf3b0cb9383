"""Shared assertions for the trainer-vs-reference tests."""
import torch

from reference import AdamW, close_rel, max_rel_err

LOSS_RTOL = 1e-5
GRAD_TOL = 1e-4     # of the gradient's max
PARAM_TOL = 2e-2    # x lr, after 1 and 3 AdamW steps


def snapshot(*modules):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def assert_bit_identical(before, modules, what):
    for snap, m in zip(before, modules):
        now = m.state_dict()
        changed = [k for k, v in snap.items() if not torch.equal(v, now[k])]
        assert not changed, f"{what}: frozen tensors changed: {changed[:5]}"


def compare_step(step, got_terms, ref_terms, got_grads, ref_grads, got_after, ref_params, lr):
    for k, v in ref_terms.items():
        assert close_rel(got_terms[k], v, LOSS_RTOL), f"step {step} loss term {k}: {float(got_terms[k])} vs {float(v)}"
    if got_grads is not None:
        assert set(got_grads) == set(ref_grads)
        for k, g in ref_grads.items():
            err = float((got_grads[k] - g).abs().max())
            assert err <= GRAD_TOL * max(float(g.abs().max()), 1e-30), f"step {step} grad {k}: err {err}, max {float(g.abs().max())}"
    for k, p in ref_params.items():
        err = float((got_after[k] - p).abs().max())
        assert err <= PARAM_TOL * lr, f"step {step} param {k}: err {err} > {PARAM_TOL * lr}"


def assert_official_adamw(opt, cfg, lr, wd):
    assert type(opt) is torch.optim.AdamW
    assert cfg["lr"] == lr and cfg["weight_decay"] == wd
    assert tuple(cfg["betas"]) == (0.9, 0.999) and cfg["eps"] == 1e-8
    (group,) = opt.param_groups
    assert group["lr"] == lr and group["weight_decay"] == wd and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
    assert not group["amsgrad"]
