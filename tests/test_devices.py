"""The one device rule (``--device auto|cpu|cuda[:N]``) and its errors on a machine without a GPU."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from pipelines.devices import resolve_device
from pipelines.errors import V2WError
from pipelines.train import TrainConfig
from v2w_cli.app import app


def test_auto_and_cpu():
    want = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == want == resolve_device(None) == resolve_device("AUTO")
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))
    with pytest.raises(V2WError, match=r"--device must be one of \{auto \| cpu \| cuda \| cuda:N\}. Got 'gpu'"):
        resolve_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without a GPU")
def test_a_gpu_that_is_not_there_is_one_line():
    for flag in ("cuda", "cuda:1"):
        with pytest.raises(V2WError, match=f"--device {flag}: torch sees no CUDA GPU here.*use --device cpu or auto"):
            resolve_device(flag)
    with pytest.raises(V2WError, match="torch sees no CUDA GPU"):
        TrainConfig(model="m", data="d", out="o", device="cuda")
    TrainConfig(model="m", data="d", out="o", device="auto")  # auto is fine anywhere
    for argv in (["rollout", "--model", "m", "--out", "o", "--context", "c.png", "--actions", "a.npy", "--device", "cuda"],
                 ["encode", "d", "--model", "m", "--device", "cuda:0"]):
        res = CliRunner().invoke(app, argv)
        assert res.exit_code != 0 and "torch sees no CUDA GPU" in res.output and "Traceback" not in res.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without a GPU")
def test_eval_and_causalize_take_the_same_device_flag(tmp_path):
    from pipelines.causalize import CausalizeConfig

    with pytest.raises(V2WError, match="torch sees no CUDA GPU"):
        CausalizeConfig(ckpt="tiny-random", out=str(tmp_path / "m"), device="cuda")
    for argv in (["eval", "--pred", str(tmp_path), "--out", str(tmp_path / "r"), "--device", "cuda"],
                 ["causalize", "--ckpt", "tiny-random", "--check", "--device", "cuda:0"]):
        res = CliRunner().invoke(app, argv)
        assert res.exit_code != 0 and "torch sees no CUDA GPU" in res.output and "Traceback" not in res.output, argv
    res = CliRunner().invoke(app, ["causalize", "--ckpt", "tiny-random", "--check", "--device", "auto", "--json"])
    assert res.exit_code == 0 and '"causal": true' in res.output


def test_precision_flag_is_checked_once_for_every_command():
    from pipelines.devices import autocast, check_precision
    from pipelines.sampler import RolloutConfig

    for bad in (lambda: RolloutConfig(precision="fp8"), lambda: TrainConfig(model="m", data="d", out="o", precision="half"),
                lambda: check_precision("bfloat16")):
        with pytest.raises(V2WError, match=r"--precision must be one of \{fp32, bf16, fp16\}"):
            bad()
    with autocast("cpu", "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    res = CliRunner().invoke(app, ["rollout", "--model", "m", "--out", "o", "--context", "c.png", "--actions", "a.npy",
                                   "--precision", "fp8", "--device", "cpu"])
    assert res.exit_code != 0 and "--precision must be one of" in res.output and "Traceback" not in res.output
