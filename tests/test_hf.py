"""Pretrained Hugging Face backbones: tokenisation round trips, node-level metrics, padding, decoding, training.

Every model and tokenizer here is tiny, built by tests/hf_tiny.py and loaded from a local folder through the
same ``from_pretrained`` path users take; nothing downloads.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from nfl.tasks.codec import IGNORE_INDEX, EncodedBatch, TextCodec  # noqa: E402
from nfl.tasks import PathStar  # noqa: E402
from nfl.engine.decoding import greedy_decode  # noqa: E402
from nfl.errors import UserInputError  # noqa: E402
from tests.conftest import TaskMetrics  # noqa: E402
from nfl.models.hf import HFCausalLM  # noqa: E402
from nfl.objectives import MultiTokenHeads, Teacherless, TeacherForcing  # noqa: E402
from tests.conftest import SPEC_PREFIX, SPEC_TARGET, TINY_CONFIG, read_scalars, version_dir  # noqa: E402
from tests.hf_tiny import EOS  # noqa: E402

KINDS = ("gpt2", "gpt_neox")  # a BPE tokenizer with pad = EOS; a character tokenizer with its own pad


def backbone(folder: Path, **kwargs) -> HFCausalLM:
    return HFCausalLM(0, 0, str(folder), **kwargs).eval()


def graphs(task: PathStar, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    prefix, target = task.sample(np.random.default_rng(seed), n)
    return torch.from_numpy(prefix), torch.from_numpy(target)


def text_of(codec: TextCodec, ids: torch.Tensor) -> str:
    return codec.tokenizer.decode([i for i in ids.tolist() if i != IGNORE_INDEX])


# --- text <-> tokens <-> node ids -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_round_trip_text_tokens_node_ids(kind, reverse, hf_folders, task):
    codec = backbone(hf_folders[kind]).codec(task)
    prefix, path = graphs(task, 64)
    target = path.flip(1) if reverse else path
    batch = codec.encode(prefix, target)
    lines = task.format_lines(prefix.numpy(), path.numpy())
    P = batch.prefix.shape[1]
    pads = (batch.prefix == codec.pad_id).long().cummin(dim=1).values.sum(dim=1)  # leading pads per row
    for b, line in enumerate(lines):
        assert text_of(codec, batch.prefix[b, int(pads[b]) :]) == line.split("=")[0] + "="
        answer = ",".join(map(str, target[b].tolist()))
        assert text_of(codec, batch.target[b]) == answer + EOS
    longest = max(len(codec.tokenizer(line.split("=")[0] + "=")["input_ids"]) for line in lines)
    assert batch.prefix.shape[0] == 64 and P == longest
    nodes, _, well_formed = codec.generated_nodes(batch.target.clamp(min=0))
    assert torch.equal(nodes, target) and bool(well_formed.all())
    # Every node is spelled by at least one answer token, and no token by two nodes.
    assert bool(batch.node_tokens.any(dim=2).all()) and int(batch.node_tokens.sum(dim=1).max()) == 1


def test_rows_of_different_lengths_are_aligned_at_the_equals_sign(hf_folders, task):
    """The character tokenizer spells 1- and 2-digit nodes with 1 and 2 tokens, so rows differ in length."""
    codec = backbone(hf_folders["gpt_neox"]).codec(task)
    batch = codec.encode(*graphs(task, 64))
    eq = codec.tokenizer.convert_tokens_to_ids("=")
    assert (batch.prefix[:, -1] == eq).all()
    pads = (batch.prefix == codec.pad_id).sum(dim=1)
    assert pads.min() == 0 and pads.max() > 0  # left padding where needed, none in the longest row
    lengths = (batch.target != IGNORE_INDEX).sum(dim=1)
    assert lengths.min() < lengths.max()


def test_teacherless_input_positions_hold_the_dummy(hf_folders, task):
    hf = backbone(hf_folders["gpt2"])
    codec = hf.codec(task)
    objective = Teacherless()
    objective.bind(task, hf, codec.dummy)
    batch = codec.encode(*graphs(task, 8))
    inputs = objective.inputs(batch.prefix, batch.target)
    P, L = batch.prefix.shape[1], batch.target.shape[1]
    assert codec.dummy == codec.tokenizer("$")["input_ids"][0]
    assert inputs.shape == (8, P + L - 1) and (inputs[:, P:] == codec.dummy).all()
    assert torch.equal(inputs[:, :P], batch.prefix)


def test_dummy_token_must_be_a_single_token(hf_folders, task):
    with pytest.raises(UserInputError, match="dummy_token '\\$\\$' is 2 tokens"):
        backbone(hf_folders["gpt_neox"], dummy_token="$$").codec(task)
    assert backbone(hf_folders["gpt_neox"], dummy_token="#").codec(task).dummy == 18


def test_a_missing_model_is_a_clear_error(tmp_path, hf_folders):
    with pytest.raises(UserInputError, match="model=.*nowhere: there is no such folder"):
        HFCausalLM(0, 0, str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="Could not load a tokenizer from .*empty"):
        HFCausalLM(0, 0, str(tmp_path / "empty"))
    with pytest.raises(UserInputError, match="Could not load a causal LM from .*empty"):
        HFCausalLM(0, 0, str(tmp_path / "empty"), tokenizer=str(hf_folders["gpt2"]))


# --- metrics on generated text ------------------------------------------------------------------------------
GENERATIONS = [  # (generated text, parsed nodes, well formed) for the answer 32,34,6,16,12
    ("32,34,6,16,12" + EOS, [32, 34, 6, 16, 12], True),
    ("32,3,19,47,28" + EOS, [32, 3, 19, 47, 28], True),  # the wrong arm, well formed
    ("32,34,6" + EOS, [32, 34, 6, -1, -1], False),  # too short
    ("32,34,6,16,12,7" + EOS, [32, 34, 6, 16, 12], False),  # too long: right nodes, still not exact
    ("32,,6,16,12" + EOS, [32, -1, 6, 16, 12], False),  # an empty node
    ("32,34,6,16,12", [32, 34, 6, 16, 12], False),  # never ended
    ("32,34,99,16,12" + EOS, [32, 34, -1, 16, 12], False),  # 99 is no node of G(2,5,50)
    ("$$$|/=" + EOS, [-1, -1, -1, -1, -1], False),  # garbage
    (EOS, [-1, -1, -1, -1, -1], False),  # nothing
    ("32,34,6,16,12" + EOS + "garbage", [32, 34, 6, 16, 12], True),  # what follows the end is ignored
]


@pytest.mark.parametrize("kind", KINDS)
def test_generated_text_is_parsed_and_malformed_text_counts_as_wrong(kind, hf_folders, task):
    codec = backbone(hf_folders[kind]).codec(task)
    parsed = [codec.generated_nodes(torch.tensor([codec.tokenizer(text)["input_ids"]])) for text, _, _ in GENERATIONS]
    nodes, well_formed = torch.cat([p[0] for p in parsed]), torch.cat([p[2] for p in parsed])
    assert nodes.tolist() == [nodes for _, nodes, _ in GENERATIONS]
    assert well_formed.tolist() == [ok for _, _, ok in GENERATIONS]

    # Through the metric: two generations are exact matches, though four more match node for node.
    n = len(GENERATIONS)
    prefix, target = torch.tensor([SPEC_PREFIX] * n), torch.tensor([SPEC_TARGET] * n)
    metric = TaskMetrics(task)
    metric.update(prefix, target, nodes, target, torch.tensor(0.0), well_formed)
    out = metric.compute()
    assert out["exact_match"].item() == pytest.approx(2 / n)
    assert out["decision_acc"].item() == pytest.approx(6 / n)  # rows 0, 2, 3, 5, 6, 9 say 34 second


def test_teacher_forced_node_is_right_only_when_all_its_tokens_are(hf_folders, task):
    codec = backbone(hf_folders["gpt_neox"]).codec(task)  # one token per character
    target = torch.tensor([[32, 34, 6, 16, 12]])
    batch = codec.encode(torch.tensor([SPEC_PREFIX]), target)
    # "32,34,6,16,12<eos>": tokens 0-1 are node 1, 3-4 node 2, 6 node 3, 8-9 node 4, 11-12 node 5.
    pred = batch.target.clone()
    assert torch.equal(codec.teacher_forced_nodes(pred, batch, target), target)
    pred[0, 4] = codec.tokenizer.convert_tokens_to_ids("5")  # second digit of node 2 wrong
    pred[0, 7] = codec.tokenizer.convert_tokens_to_ids("|")  # a comma wrong: no node's fault
    pred[0, 13] = codec.tokenizer.convert_tokens_to_ids("0")  # the end token wrong: no node's fault
    assert codec.teacher_forced_nodes(pred, batch, target).tolist() == [[32, -1, 6, 16, 12]]


# --- the backbone -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_row_does_not_depend_on_the_padding_it_is_batched_with(kind, hf_folders, task):
    hf = backbone(hf_folders[kind])
    batch = hf.codec(task).encode(*graphs(task, 32))
    pads = (batch.prefix == hf.pad_id).long().cummin(dim=1).values.sum(dim=1)  # leading pads per row
    with torch.no_grad():
        together = hf(batch.prefix)
        for b in range(32):
            alone = hf(batch.prefix[b : b + 1, int(pads[b]) :])
            torch.testing.assert_close(together[b, int(pads[b]) :], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_cached_speculative_and_uncached_decoding_agree(kind, hf_folders, task):
    hf = backbone(hf_folders[kind])
    codec = hf.codec(task)
    batch = codec.encode(*graphs(task, 16))
    steps = codec.decode_steps(batch)
    cached, uncached = greedy_decode(hf, batch.prefix, steps, True), greedy_decode(hf, batch.prefix, steps, False)
    assert torch.equal(cached, uncached)
    mtp = MultiTokenHeads(k=3, speculative=True)
    mtp.bind(task, hf, codec.dummy)
    mtp.eval()
    drafted = mtp.decode(hf, batch.prefix, steps)
    assert torch.equal(drafted, cached)


def test_gradient_checkpointing_and_bf16_weights(hf_folders, task):
    batch = backbone(hf_folders["gpt2"]).codec(task).encode(*graphs(task, 8))
    grads = []
    for checkpointing in (False, True):
        hf = HFCausalLM(0, 0, str(hf_folders["gpt2"]), gradient_checkpointing=checkpointing)  # train mode, no dropout
        enabled = getattr(hf.lm, "is_activation_checkpointing", None)  # the 4.x name below warns in 5.x
        assert hf.training and (enabled if enabled is not None else hf.lm.is_gradient_checkpointing) == checkpointing
        objective = TeacherForcing()
        objective.bind(task, hf)
        objective(hf, batch.prefix, batch.target).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in hf.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])  # recomputation changes memory, not the gradient
    assert grads[0].abs().sum() > 0

    hf = backbone(hf_folders["gpt2"], dtype="bfloat16")
    assert {p.dtype for p in hf.parameters()} == {torch.bfloat16}
    objective = TeacherForcing()
    objective.bind(task, hf)
    loss = objective(hf, batch.prefix, batch.target).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # the loss is computed in float32
    heads = MultiTokenHeads(k=2)
    heads.bind(task, hf)  # its heads take the backbone's dtype
    assert torch.isfinite(heads(hf, batch.prefix, batch.target).loss)


def test_a_tokenizer_that_decodes_with_a_leading_space_still_parses(hf_folders, task, tmp_path):
    from tests.hf_tiny import bpe_tokenizer

    bpe_tokenizer(add_prefix_space=True).save_pretrained(tmp_path)  # decodes "18,3" as " 18,3"
    # Every plain string gains a space token here, so the dummy is a special token.
    codec = HFCausalLM(0, 0, str(hf_folders["gpt2"]), tokenizer=str(tmp_path), dummy_token=EOS).codec(task)
    prefix, target = graphs(task, 16)
    batch = codec.encode(prefix, target)
    assert text_of(codec, batch.target[0]).startswith(" ")
    nodes, _, well_formed = codec.generated_nodes(batch.target.clamp(min=0))
    assert torch.equal(nodes, target) and bool(well_formed.all())


def test_a_tokenizer_that_cannot_round_trip_is_refused(hf_folders, task):
    hf = backbone(hf_folders["gpt_neox"])
    hf.tokenizer.backend_tokenizer.decoder = None  # decode now puts spaces between characters: "4 9 , 4 8"
    with pytest.raises(UserInputError, match="does not decode '49,48,47,46,45' back"):
        hf.codec(task)


def test_predictions_file_counts_ill_formed_answers_as_wrong(hf_folders, task, tmp_path):
    import lightning.pytorch as pl

    from nfl.callbacks import PredictionWriter
    from nfl.models import GPT
    from nfl.system import PathStarSystem

    system = PathStarSystem(lambda v, t: GPT(v, t, n_layer=1, d_model=16, n_head=2))
    prefix, target = torch.tensor([SPEC_PREFIX] * 3), torch.tensor([SPEC_TARGET] * 3)
    batch = {"prefix": prefix, "target": target, "prediction": target.clone(),
             "well_formed": torch.tensor([True, False, True])}
    batch["prediction"][2, 1] = 3
    writer = PredictionWriter(str(tmp_path / "p.tsv"))
    writer.write_on_epoch_end(pl.Trainer(logger=False), system, [batch], None)
    assert [line.split("\t")[2] for line in (tmp_path / "p.tsv").read_text().splitlines()] == ["1", "0", "0"]


# --- training through the CLI ---------------------------------------------------------------------------------
def hf_config(
    tmp_path: Path, folder: Path, objective: str = "nfl.objectives.TeacherForcing", steps: int = 30
) -> list[str]:
    """``--config`` arguments: the tiny CLI config (conftest.py) with the pretrained backbone put in."""
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    (tmp_path / "hf.yaml").write_text(f"""
trainer: {{max_steps: {steps}, val_check_interval: {steps}}}
model:
  backbone:
    class_path: nfl.models.HFCausalLM
    init_args: {{model: {folder}}}
  objective:
    class_path: {objective}
  lr: 3.0e-3
  weight_decay: 0.0
data:
  init_args: {{n_val: 64}}
""")
    return ["--config", str(tmp_path / "tiny.yaml"), "--config", str(tmp_path / "hf.yaml")]


def test_a_few_training_steps_lower_the_loss_and_the_checkpoint_keeps_them(run_cli, hf_folders, tmp_path):
    config = hf_config(tmp_path, hf_folders["gpt2"])
    cli = run_cli("fit", *config, "--test_after_fit", "true")
    assert isinstance(cli.model.backbone, HFCausalLM) and cli.trainer.global_step == 30
    scalars = read_scalars(version_dir(tmp_path))
    losses = [v for _, v in scalars["train/loss"]]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    for tag in ("test/exact_match", "test/decision_acc", "test/tf/pos_ge3", "test/free/pos_4", "test/edge_follow_rate"):
        assert 0.0 <= scalars[tag][-1][1] <= 1.0
    # Held-out loss is down too: from ln(297) = 5.7 (uniform over the tokenizer) to near the entropy of the
    # answer's nodes (ln 20 = 3.0 a node; the commas and the end token are predictable).
    assert scalars["test/loss"][-1][1] < 0.7 * losses[0]

    # The checkpoint restores the fine-tuned weights over the pretrained ones the backbone is rebuilt from.
    ckpt = str(version_dir(tmp_path) / "checkpoints" / "last.ckpt")
    cli = run_cli("test", *config, "--ckpt_path", ckpt)
    assert cli.trainer.callback_metrics["test/loss"].item() == pytest.approx(scalars["test/loss"][-1][1], rel=1e-5)
    out = tmp_path / "predictions.tsv"
    run_cli("predict", *config, "--ckpt_path", ckpt, "--trainer.callbacks+=nfl.callbacks.PredictionWriter",
            f"--trainer.callbacks.path={out}")
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert len(rows) == 64 and all(ok == str(int(line.split("=")[1] == pred)) for line, pred, ok in rows)


@pytest.mark.parametrize(
    "objective, extra",
    [
        ("nfl.objectives.Teacherless", []),
        ("nfl.objectives.MultiTokenHeads", ["--model.objective.init_args.k", "2"]),
        ("nfl.objectives.TeacherForcing", ["--data.init_args.reverse", "true"]),
        ("nfl.objectives.NextLat", []),
    ],
    ids=["teacherless", "mtp_k2", "reverse", "nextlat"],
)
def test_every_objective_trains_and_evaluates_on_a_pretrained_model(objective, extra, run_cli, hf_folders, tmp_path):
    config = hf_config(tmp_path, hf_folders["gpt_neox"], objective, steps=4)
    cli = run_cli("fit", *config, "--test_after_fit", "true", *extra)
    assert isinstance(cli.model.backbone, HFCausalLM)
    scalars = read_scalars(version_dir(tmp_path))
    assert np.isfinite([v for _, v in scalars["train/loss"]]).all()
    assert {"test/exact_match", "test/free/pos_4", "test/chance"} <= set(scalars)
    assert ("test/tf/pos_1" in scalars) == (objective != "nfl.objectives.Teacherless")  # it has no tf pass
    if objective.endswith("MultiTokenHeads"):
        assert {"train/mtp/head_2_loss", "test/mtp/head_2_acc"} <= set(scalars)
    if objective.endswith("NextLat"):  # the dynamics model reads the pretrained model's own embedding
        assert {"train/nextlat/latent_loss", "train/nextlat/kl"} <= set(scalars)


@pytest.mark.parametrize("objective", ["nfl.objectives.BeliefState", "nfl.objectives.MaskedDiffusion"])
def test_objectives_with_tokens_of_their_own_are_refused_on_a_pretrained_model(objective, run_cli, hf_folders,
                                                                             tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        run_cli("fit", *hf_config(tmp_path, hf_folders["gpt_neox"], objective, steps=1))
    message = str(done.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert objective.rsplit(".", 1)[1] in message and "tokenizer does not have" in message


class RecordBatchKinds(pl.Callback):
    """Records whether each training batch reached the step already tokenised."""

    def __init__(self) -> None:
        self.encoded: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.encoded.append(isinstance(batch, EncodedBatch))


def test_training_batches_are_tokenised_in_the_loader_workers(run_cli, hf_folders, tmp_path):
    config = hf_config(tmp_path, hf_folders["gpt2"], steps=4)
    losses = []
    for workers in (0, 2):
        cli = run_cli("fit", *config, "--data.init_args.num_workers", str(workers),
                      "--trainer.callbacks+=tests.test_hf.RecordBatchKinds")
        # by name: the CLI imports tests.test_hf afresh, so its class is not this module's
        record = next(c for c in cli.trainer.callbacks if type(c).__name__ == "RecordBatchKinds")
        assert record.encoded == [True] * 4  # the collate function ran the codec (in the workers when > 0)
        losses.append([v for _, v in read_scalars(version_dir(tmp_path, workers // 2))["train/loss"]])
    assert len(losses[0]) == 4 and losses[0] == losses[1]  # same batches, same tokens, wherever they were made
