"""Action injection modes (time | scale-shift | tokens): start as the base, learn, stay causal,
cache exactly; the separate learning rate of the action layers; old MODEL folders still load."""

from __future__ import annotations

import pytest
import torch

from pipelines.causalize import CausalizeConfig
from pipelines.causalize import run as causalize_run
from pipelines.errors import V2WError
from pipelines.models.action import ACTION_INJECTIONS, is_action_parameter
from pipelines.models.surgery import check_causality, probe_inputs
from pipelines.models.world_model import load_model
from pipelines.sampler import Roller, RolloutConfig
from pipelines.train import TrainConfig, _param_groups, trainable_parameters

MODES = ACTION_INJECTIONS


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("inject")
    for mode in MODES:
        for kind in ("discrete", "continuous"):
            causalize_run(CausalizeConfig(ckpt="tiny-random", out=str(root / f"{mode}-{kind}"), action_dim=4,
                                          action_type=kind, action_injection=mode))
    return root


def _randomize_action_layers(unet, seed=0):
    """What training does to the action layers: non-zero encoder output (and projections)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if is_action_parameter(n):
                p.copy_(torch.randn(p.shape, generator=g) * (3.0 if "embedding" in n or "mlp.4" in n else 0.5))


def _out(unet, inp, actions):
    with torch.no_grad():
        return unet(inp["x"], inp["timesteps"], context=inp["context"], actions=actions)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_starts_as_the_base_and_then_follows_actions(models, mode, kind):
    unet = load_model(models / f"{mode}-{kind}").unet.eval()
    assert unet.config.action_injection == mode
    inp = probe_inputs(unet)
    no_action = _out(unet, inp, None)
    torch.testing.assert_close(_out(unet, inp, inp["actions"]), no_action, atol=0, rtol=0)  # zero at init
    _randomize_action_layers(unet)
    other = torch.roll(inp["actions"], 1, dims=1) if kind == "discrete" else -inp["actions"]
    assert (_out(unet, inp, inp["actions"]) - _out(unet, inp, other)).abs().max() > 1e-4


@pytest.mark.parametrize("mode", MODES)
def test_gradient_reaches_every_action_parameter(models, mode):
    unet = load_model(models / f"{mode}-discrete").unet.train()
    inp = probe_inputs(unet)
    # at init only the encoder can get a gradient (its output is zero, so the projections see zero input);
    # in vid2world's layout the encoder's zero layer is the MLP's last, after the embedding
    unet(inp["x"], inp["timesteps"], context=inp["context"], actions=inp["actions"]).square().mean().backward()
    first = unet.action_encoder.mlp[-1].weight if mode == "vid2world" else unet.action_encoder.embedding
    assert first.grad.abs().max() > 0
    unet.zero_grad()
    _randomize_action_layers(unet)
    unet(inp["x"], inp["timesteps"], context=inp["context"], actions=inp["actions"]).square().mean().backward()
    params = {n: p for n, p in unet.named_parameters() if is_action_parameter(n)}
    from pipelines.models.attention import SpatialTransformer
    from pipelines.models.unet import ResBlock

    n_res = sum(isinstance(m, ResBlock) for m in unet.modules())
    n_cross = sum(isinstance(m, SpatialTransformer) for m in unet.modules())
    # weight + bias / k + v; vid2world: the embedding and its MLP's two layers
    expected = {"time": 1, "scale-shift": 1 + 2 * n_res, "tokens": 1 + 2 * n_cross, "vid2world": 5}[mode]
    assert len(params) == expected
    no_grad = [n for n, p in params.items() if p.grad is None or p.grad.abs().max() == 0]
    assert not no_grad, no_grad[:4]


@pytest.mark.parametrize("mode", MODES)
def test_causality_probe_stays_exact(models, mode):
    unet = load_model(models / f"{mode}-continuous").unet
    _randomize_action_layers(unet)
    check = check_causality(unet)
    assert check["causal"] and check["max_leak"] == 0.0, check
    assert check["future_change"] > 0


@pytest.mark.parametrize("mode", ["scale-shift", "tokens"])
def test_cache_equals_no_cache(models, mode):
    model = load_model(models / f"{mode}-discrete")
    _randomize_action_layers(model.unet)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, 2, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        lat = model.encode_frames(pixels)
    acts = torch.nn.functional.one_hot(torch.randint(0, 4, (1, 7), generator=g), 4).float()
    for window in (8, 4):  # 4: the window slides
        cached = Roller(model, RolloutConfig(steps=3, cache=True, window=window)).rollout(lat, pixels, acts, 5)
        plain = Roller(model, RolloutConfig(steps=3, cache=False, window=window)).rollout(lat, pixels, acts, 5)
        assert (cached - plain).abs().max() <= 1e-4
        assert (Roller(model, RolloutConfig(steps=3, guidance=1.0)).rollout(lat, pixels, acts, 5) - cached).abs().max() > 1e-5


def test_action_init_std_gives_a_head_start(tmp_path):
    causalize_run(CausalizeConfig(ckpt="tiny-random", out=str(tmp_path / "m"), action_dim=4, action_type="discrete",
                                  action_injection="scale-shift", action_init_std=0.02))
    model = load_model(tmp_path / "m")
    emb = model.unet.action_encoder.embedding
    assert 0.01 < emb.std().item() < 0.03
    assert model.meta["causalize"]["action_injection"] == "scale-shift"
    assert model.meta["causalize"]["action_init_std"] == 0.02


def test_bad_injection_is_a_clear_error(tmp_path):
    with pytest.raises(V2WError, match="--action-injection must be one of"):
        causalize_run(CausalizeConfig(ckpt="tiny-random", out=str(tmp_path / "m"), action_dim=4, action_injection="film"))
    assert not (tmp_path / "m").exists()


def test_model_from_before_injection_modes_loads_as_time(models, tmp_path):
    """A MODEL written before this change has no action_injection / action_tokens keys."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(models / "time-discrete", old)
    cfg = json.loads((old / "config.json").read_text())
    for k in ("action_injection", "action_tokens"):
        cfg["unet"].pop(k)
    cfg["causalize"].pop("action_injection")
    cfg["causalize"].pop("action_init_std")
    (old / "config.json").write_text(json.dumps(cfg))
    model = load_model(old)
    assert model.unet.config.action_injection == "time"
    assert [n for n, _ in model.unet.named_parameters() if is_action_parameter(n)] == ["action_encoder.embedding"]


def test_new_layers_lr_puts_the_action_layers_in_their_own_group(models):
    model = load_model(models / "tokens-discrete")
    params = trainable_parameters(model, "all")
    one = _param_groups(model.unet, params, TrainConfig(model="", data="", out="", lr=1e-5))
    assert len(one) == 1 and len(one[0]["params"]) == len(params)
    two = _param_groups(model.unet, params, TrainConfig(model="", data="", out="", lr=1e-5, new_layers_lr=1e-3))
    names = {id(p): n for n, p in model.unet.named_parameters()}
    assert [g["lr"] for g in two] == [1e-5, 1e-3]
    assert all(is_action_parameter(names[id(p)]) for p in two[1]["params"])
    assert not any(is_action_parameter(names.get(id(p), "")) for p in two[0]["params"])
    assert len(two[0]["params"]) + len(two[1]["params"]) == len(params)
    new_only = trainable_parameters(model, "new")
    assert {id(p) for p in new_only} == {id(p) for p in two[1]["params"]}
    with pytest.raises(V2WError, match="new-layers-lr"):
        TrainConfig(model="", data="", out="", new_layers_lr=0.0)
