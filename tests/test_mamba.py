"""The Mamba backbone: the scans against the step-by-step recurrence, the recurrent cache against the full
forward, causality, mamba-ssm names and initialisation, weight-decay flags, the CUDA kernel against the CPU
path (skipped without CUDA and mamba-ssm), and every objective training through the CLI."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from nfl.engine.decoding import greedy_decode
from nfl.errors import UserInputError
from nfl.models.mamba import Mamba
from nfl.models.selective_scan import selective_scan, selective_scan_ref
from nfl.system import PathStarSystem
from tests.conftest import TINY_CONFIG, read_scalars, version_dir

HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None
HAS_MULTI_TOKEN = importlib.util.find_spec("nfl.objectives.multi_token") is not None
needs_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_MAMBA_SSM), reason="needs CUDA and mamba-ssm (pip install nfl[mamba])"
)


@pytest.fixture
def mamba() -> Mamba:
    return Mamba(vocab_size=54, max_seq_len=31, n_layer=2, d_model=32, kernels="torch").eval()


def scan_inputs(Bsz=3, L=13, D=6, N=4, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(1)
    u = torch.randn(Bsz, L, D, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(Bsz, L, D, generator=g, dtype=dtype))
    A = -torch.exp(torch.randn(D, N, generator=g, dtype=dtype))
    B, C = torch.randn(2, Bsz, L, N, generator=g, dtype=dtype)
    h0 = torch.randn(Bsz, D, N, generator=g, dtype=dtype)
    return [t.to(device).requires_grad_() for t in (u, dt, A, B, C, h0)]


@pytest.mark.parametrize("scan", ["stepwise", "sequential", "doubling"])
def test_scan_matches_the_step_by_step_recurrence_outputs_and_gradients(scan):
    inputs = scan_inputs()
    y, h = selective_scan(*inputs, scan=scan)
    y_ref, h_ref = selective_scan_ref(*inputs)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h, h_ref)
    gy, gh = torch.randn_like(y), torch.randn_like(h)  # gradients through both outputs
    grads = torch.autograd.grad((y * gy).sum() + (h * gh).sum(), inputs)
    grads_ref = torch.autograd.grad((y_ref * gy).sum() + (h_ref * gh).sum(), inputs)
    for name, g, g_ref in zip(["u", "dt", "A", "B", "C", "h0"], grads, grads_ref):
        torch.testing.assert_close(g, g_ref, msg=lambda m, name=name: f"grad {name}: {m}")


def test_stepwise_scan_passes_gradcheck():
    assert torch.autograd.gradcheck(lambda *x: selective_scan(*x, scan="stepwise"), scan_inputs(2, 5, 3, 2))


def test_scans_agree_in_float32_at_training_size():
    inputs = [t.detach().float() for t in scan_inputs(8, 40, 32, 16)]
    inputs[1] = inputs[1] * 4  # large steps: strong decay, where a naive cumulative-product scan would underflow
    y_ref, h_ref = selective_scan_ref(*inputs)
    for scan in ("stepwise", "sequential", "doubling"):
        y, h = selective_scan(*inputs, scan=scan)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-4)


def test_mamba_ssm_names_shapes_and_tied_unembedding(mamba):
    shapes = {n: tuple(p.shape) for n, p in mamba.named_parameters()}
    E, N, R = 64, 16, 2  # expand 2, d_state 16, dt_rank ceil(32 / 16)
    assert shapes["embedding.weight"] == (54, 32)
    assert shapes["layers.1.norm.weight"] == (32,)
    assert shapes["norm_f.weight"] == (32,)
    mixer = {n.split("mixer.")[1]: s for n, s in shapes.items() if n.startswith("layers.0.mixer.")}
    assert mixer == {
        "in_proj.weight": (2 * E, 32), "conv1d.weight": (E, 1, 4), "conv1d.bias": (E,),
        "x_proj.weight": (R + 2 * N, E), "dt_proj.weight": (E, R), "dt_proj.bias": (E,),
        "A_log": (E, N), "D": (E,), "out_proj.weight": (32, E),
    }
    hidden = mamba(torch.randint(0, 54, (2, 31)))
    assert hidden.shape == (2, 31, 32)
    torch.testing.assert_close(mamba.unembed(hidden), hidden @ mamba.embedding.weight.T)
    assert not any("lm_head" in n for n in shapes)


def test_initialisation_follows_mamba_ssm():
    m = Mamba(54, 31, n_layer=4, d_model=64, dt_min=0.001, dt_max=0.1)
    mixer = m.layers[0].mixer
    torch.testing.assert_close(mixer.A_log, torch.log(torch.arange(1.0, 17.0)).expand(128, 16))
    torch.testing.assert_close(mixer.D, torch.ones(128))
    dt = F.softplus(mixer.dt_proj.bias)  # the initial step sizes, log-uniform in [dt_min, dt_max]
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    assert dt.log().std() > 0.5  # spread over the range, not a constant
    assert m.embedding.weight.std().item() == pytest.approx(0.02, rel=0.1)
    bound = 1 / math.sqrt(128) / math.sqrt(4)  # kaiming-uniform bound of out_proj, rescaled by 1/sqrt(n_layer)
    assert mixer.out_proj.weight.abs().max() <= bound + 1e-6
    assert m.dt_rank == 4


def test_a_log_and_d_are_not_weight_decayed():
    system = PathStarSystem(backbone=lambda v, s: Mamba(v, s, n_layer=2, d_model=16), weight_decay=0.1)
    decay, no_decay = (set(map(id, g["params"])) for g in system.parameter_groups())
    for name, p in system.backbone.named_parameters():
        if name.endswith(("A_log", "D")):
            assert p._no_weight_decay and id(p) in no_decay, name
        if name.endswith(("in_proj.weight", "x_proj.weight", "out_proj.weight", "embedding.weight")):
            assert id(p) in decay, name


def test_causality(mamba):
    idx = torch.randint(0, 54, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 54
    a, b = mamba(idx), mamba(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_recurrent_cache_matches_full_forward_in_chunks_and_steps(mamba):
    idx = torch.randint(0, 54, (2, 25))
    full = mamba(idx)
    cache = mamba.new_cache(2, 25)
    state_shapes = [tuple(t.shape) for t in cache.conv + cache.ssm]
    parts = [mamba(idx[:, :10], cache), mamba(idx[:, 10:11], cache), mamba(idx[:, 11:18], cache)]
    parts += [mamba(idx[:, t : t + 1], cache) for t in range(18, 25)]  # one token at a time
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert [tuple(t.shape) for t in cache.conv + cache.ssm] == state_shapes  # constant memory per step
    assert cache.pos == 25


def test_output_from_equals_slicing_the_full_forward(mamba):
    idx = torch.randint(0, mamba.vocab_size, (2, 20))
    full = mamba(idx)
    torch.testing.assert_close(mamba(idx, output_from=13), full[:, 13:])
    cache = mamba.new_cache(2, 20)
    mamba(idx[:, :8], cache)
    torch.testing.assert_close(mamba(idx[:, 8:], cache, output_from=11), full[:, 19:], atol=1e-5, rtol=1e-5)


def test_cached_and_uncached_greedy_decoding_agree(mamba):
    prefix = torch.randint(0, 54, (16, 27))
    cached, uncached = greedy_decode(mamba, prefix, 4, use_cache=True), greedy_decode(mamba, prefix, 4, use_cache=False)
    assert torch.equal(cached, uncached)


def test_state_dict_moves_between_kernel_settings(mamba):
    other = Mamba(54, 31, n_layer=2, d_model=32, kernels="auto", scan="doubling").eval()
    other.load_state_dict(mamba.state_dict(), strict=True)
    idx = torch.randint(0, 54, (2, 31))
    torch.testing.assert_close(other(idx), mamba(idx), atol=1e-5, rtol=1e-5)


def test_cpu_path_never_imports_mamba_ssm():
    Mamba(54, 31, n_layer=1, d_model=16, kernels="auto")(torch.randint(0, 54, (2, 9))).sum().backward()
    assert "mamba_ssm" not in sys.modules


@pytest.mark.skipif(HAS_MAMBA_SSM, reason="mamba-ssm is installed")
def test_asking_for_kernels_without_mamba_ssm_names_the_extra():
    with pytest.raises(UserInputError, match=r"kernels=cuda: needs the mamba-ssm CUDA kernels \(pip install nfl\[mamba\]\)"):
        Mamba(54, 31, n_layer=1, d_model=16, kernels="cuda")


@needs_kernels
def test_cuda_kernel_matches_the_torch_path_outputs_and_gradients():
    torch.manual_seed(0)
    ref = Mamba(54, 31, n_layer=2, d_model=64, kernels="torch").cuda()
    fast = Mamba(54, 31, n_layer=2, d_model=64, kernels="cuda").cuda()
    fast.load_state_dict(ref.state_dict())
    idx = torch.randint(0, 54, (4, 31), device="cuda")
    out_ref, out_fast = ref(idx), fast(idx)
    torch.testing.assert_close(out_fast, out_ref, atol=1e-4, rtol=1e-3)
    out_ref.square().mean().backward()
    out_fast.square().mean().backward()
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, atol=1e-4, rtol=1e-3,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # and the CPU path agrees with the CUDA kernel too: the checkpoint moves between machines
    cpu = Mamba(54, 31, n_layer=2, d_model=64, kernels="torch")
    cpu.load_state_dict({k: v.cpu() for k, v in fast.state_dict().items()})
    torch.testing.assert_close(cpu(idx.cpu()), out_fast.detach().cpu(), atol=1e-4, rtol=1e-3)


MAMBA_TINY = TINY_CONFIG.replace(
    "class_path: nfl.models.GPT\n    init_args: {n_layer: 1, d_model: 32, n_head: 2}",
    "class_path: nfl.models.Mamba\n    init_args: {n_layer: 1, d_model: 32}",
)
OBJECTIVES = ["nfl.objectives.TeacherForcing", "nfl.objectives.Teacherless"]
if HAS_MULTI_TOKEN:
    OBJECTIVES.append("nfl.objectives.MultiTokenHeads")


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.rsplit(".", 1)[1])
def test_every_objective_trains_on_mamba_through_the_cli(objective, run_cli, tmp_path):
    assert "nfl.models.Mamba" in MAMBA_TINY
    config = tmp_path / "mamba.yaml"
    config.write_text(MAMBA_TINY)
    cli = run_cli("fit", "--config", str(config), "--model.objective", objective, "--trainer.max_steps", "6",
                  "--model.lr", "3e-3", "--data.init_args.n_test", "32")
    assert isinstance(cli.model.backbone, Mamba)
    assert cli.trainer.global_step == 6
    scalars = read_scalars(version_dir(tmp_path))
    losses = [v for _, v in scalars["train/loss"]]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]  # it learns something
    assert "val/exact_match" in scalars
    # Teacherless has no teacher-forced pass, so no tf/* tag (it would repeat free/*).
    assert ("val/tf/pos_1" in scalars) == (not objective.endswith("Teacherless"))
