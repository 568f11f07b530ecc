"""Error signals of other learning rules: fa and sign (feedback matrices in the backward pass), dfa.

References: with B = W (rule `bp`) the feedback backward must reproduce backpropagation's
gradients exactly; dfa must equal its closed form e · B_k computed here from the logits by hand.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from brainprop.features import learning_rules as lr
from brainprop.features.extract import Feedback, extract_batch, extract_features
from brainprop.features.layers import resolve_layers
from brainprop.features.models import create_model

CNN = ("resnet18", {"zero_init_last": False}, 32)
VIT = ("vit_tiny_patch16_224", {}, 32)
LITE = ("tf_efficientnet_lite0", {}, 32)  # TF 'SAME' padding: its stride-2 convs are timm Conv2dSame
POOLING = {"mode": "grid", "grid": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(arch, n_images=4):
    name, kwargs, size = arch
    model = create_model(name, "random", 0, size, kwargs)
    names = list(resolve_layers(name, {"n": 4}, POOLING, size, kwargs)["layer"])
    images = torch.randn(n_images, 3, size, size, generator=torch.Generator().manual_seed(3))
    return model, names, images


@pytest.mark.parametrize("arch", [CNN, VIT, LITE], ids=["cnn", "vit", "lite0"])
def test_feedback_through_the_forward_weights_is_backprop(arch):
    model, names, images = _setup(arch)
    grad = extract_batch(model, images, names, POOLING, "cross_entropy", signals=("grad",))["grad"]
    feedback = Feedback(model)
    feedback._rules["fa"] = lr.feedback_matrices(model, "bp", 0)  # B = W
    layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert sorted(feedback._rules["fa"]) == sorted(layers)  # every conv / linear layer was replaced
    fa = extract_batch(model, images, names, POOLING, "cross_entropy", signals=("fa",), feedback=feedback)["fa"]
    for g, f in zip(grad, fa):
        np.testing.assert_array_equal(f.numpy(), g.numpy())


@pytest.mark.parametrize("arch", [CNN, VIT], ids=["cnn", "vit"])
def test_random_and_sign_feedback_differ_from_backprop(arch):
    model, names, images = _setup(arch)
    out = extract_batch(model, images, names, POOLING, "cross_entropy", signals=("act", "grad", "fa", "sign"))
    # The last block's error does not pass through any feedback matrix of the blocks: fa = grad there
    # only if the head has no linear layer; timm heads do, so every layer differs.
    for k in range(len(names)):
        g, f, s = (out[sig][k].numpy().ravel() for sig in ("grad", "fa", "sign"))
        assert f.shape == s.shape == g.shape == out["act"][k].numpy().ravel().shape
        assert np.isfinite(f).all() and np.isfinite(s).all()
        assert abs(np.corrcoef(g, f)[0, 1]) < 0.9
        assert not np.allclose(g, s)
    # Activations do not depend on the feedback.
    act = extract_batch(model, images, names, POOLING, "cross_entropy", signals=("act",))["act"]
    for a, b in zip(act, out["act"]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_feedback_matrices_are_seeded_and_scaled():
    model, _, _ = _setup(CNN)
    a, b, c = (lr.feedback_matrices(model, "fa", seed) for seed in (0, 0, 1))
    weights = dict(model.named_modules())
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
        assert not torch.equal(a[name], c[name])
        w = weights[name].weight
        assert a[name].shape == w.shape
        torch.testing.assert_close(a[name].norm(), w.norm(), rtol=1e-4, atol=1e-6)
    sign = lr.feedback_matrices(model, "sign", 0)
    w = weights["layer1.0.conv1"].weight
    torch.testing.assert_close(sign["layer1.0.conv1"], torch.sign(w) * w.abs().mean())
    with pytest.raises(ValueError, match="feedback rule 'xx' unknown"):
        lr.feedback_matrices(model, "xx", 0)


def test_dfa_equals_its_closed_form():
    model, names, images = _setup(CNN)
    out = extract_batch(
        model, images, names, POOLING, "cross_entropy", signals=("act", "dfa"), feedback=Feedback(model, seed=7)
    )
    with torch.no_grad():
        logits = model(images).double()
    # Cross-entropy summed over images against the own top-1: e = softmax(logits) - onehot(argmax).
    e = torch.softmax(logits, 1) - torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1])
    for k, (a, d) in enumerate(zip(out["act"], out["dfa"])):
        b = lr.dfa_matrix(logits.shape[1], a.shape[1], 7, k).double()
        np.testing.assert_allclose(d.numpy(), (e @ b).numpy(), rtol=1e-4, atol=1e-6)
    other = extract_batch(
        model, images, names, POOLING, "cross_entropy", signals=("dfa",), feedback=Feedback(model, seed=8)
    )["dfa"]
    assert not np.allclose(other[0].numpy(), out["dfa"][0].numpy())


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_dfa_runs_no_backward_through_the_network():
    model, names, images = _setup(VIT)
    calls = []
    model.blocks[0].register_full_backward_hook(lambda m, gi, go: calls.append(1))
    extract_batch(model, images, names, POOLING, "cross_entropy", signals=("dfa",))
    assert calls == []
    extract_batch(model, images, names, POOLING, "cross_entropy", signals=("grad",))
    assert calls == [1]


def test_signals_through_extract_features_are_batch_invariant():
    model, names, images = _setup(CNN, n_images=6)
    signals = ("fa", "dfa", "sign")
    one = extract_features(model, images, names, POOLING, "cross_entropy", 1, signals=signals, seed=3)
    six = extract_features(model, images, names, POOLING, "cross_entropy", 6, signals=signals, seed=3)
    for signal in signals:
        for a, b in zip(one[signal], six[signal]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_unknown_signal_is_named():
    model, names, images = _setup(CNN, n_images=1)
    with pytest.raises(ValueError, match=r"signals \['ffa'\] unknown"):
        extract_batch(model, images, names, POOLING, "cross_entropy", signals=("act", "ffa"))
