"""The LightningModule: a task, a backbone and an objective wired into training, evaluation and optimisation.

"Models vs systems": the backbone (GPT, Mamba, ...) and the objective (teacher forcing, teacherless, ...)
are injected, each chosen by ``class_path`` in the YAML, and the graph task comes from the data module. The
system owns what is common to all of them: the optimiser and schedule, metrics and logging, and the
evaluation loop.

Logged keys (the user interface, see README): ``train/loss``, ``train/lr``, ``train/graphs_seen`` (training
graphs drawn so far, summed over ranks, kept in checkpoints so that a resumed run continues it); at validation
and test the answer metrics and graph diagnostics of :mod:`nfl.engine.metrics` (``{val,test}/loss``, ``exact_match``,
``free/pos_{i}``, ``tf/pos_{i}``, ``decision_acc``, ``chance``, ``tf/decision_acc``, ``tf/non_decision_acc``,
``edge_follow_rate``, ``valid_path_rate``, ``reaches_goal_rate``), then the task's own diagnostics (path-star:
``tf/pos_ge3``, ``wrong_arm_rate``), ``scratchpad/exact_match`` where the task has a scratchpad (the answer
metrics then read the answer after it), and the objective's; ``train_eval/...`` for the optional training sample.
The ``tf/*`` tags are logged only for objectives with a teacher-forced pass (``Objective.teacher_forced``).
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any, Callable, Literal, Optional

import lightning.pytorch as pl
import torch
from torch.optim.lr_scheduler import LambdaLR

import nfl
from nfl.engine.metrics import AnswerMetrics, read_answers
from nfl.engine.schedules import warmup_cosine
from nfl.errors import UserInputError, above, at_least, in_range, require
from nfl.models.base import Backbone
from nfl.objectives.base import Objective, target_cross_entropy
from nfl.objectives.teacher_forcing import TeacherForcing
from nfl.run.checkpoint_origin import NFL_VERSION
from nfl.tasks.base import IGNORE_INDEX, GraphTask
from nfl.tasks.codec import EncodedBatch, NumeralCodec
from nfl.tasks.scratchpad import refuse_reverse
from nfl.tasks.scratchpad_metrics import ScratchpadMatch
from nfl.tasks.spec import default_task, task_from_spec, task_spec

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
GRAPHS_SEEN = "graphs_seen"  # the checkpoint key of GraphSystem.graphs_seen


class GraphSystem(pl.LightningModule):
    """Trains a backbone with an objective on a graph task.

    Args:
        backbone: the sequence model, e.g. ``class_path: nfl.models.GPT``; it is built here with the
            vocabulary size and sequence length of the task (plus what the objective reserves).
        objective: e.g. ``nfl.objectives.TeacherForcing`` (default) or ``nfl.objectives.Teacherless``.
        task, reverse: the graph task and its encoding; linked from the data module, not set by hand
            (``task`` defaults to path-star G(2,5,50) for use from Python).
        lr: peak AdamW learning rate.
        weight_decay: AdamW decay on weight matrices and embeddings (never on biases, norms, or parameters
            flagged ``_no_weight_decay``).
        betas: AdamW betas.
        warmup_steps: optimizer steps of linear warmup.
        decay_steps: optimizer step where the cosine reaches ``min_lr_ratio * lr``; default
            ``trainer.max_steps`` (no decay when that is unset).
        min_lr_ratio: floor of the cosine, as a fraction of ``lr``.
        lr_schedule: ``cosine`` (linear warmup, then the cosine above) or ``constant`` (linear warmup, then
            ``lr`` flat to the end: what the reference code runs, whose cosine horizon is counted in samples).
        compile: run training steps through ``torch.compile`` of the backbone (evaluation, whose cached decoding
            changes shapes every step, stays eager). Worth it on GPUs; compiling takes a while on CPU.
    """

    def __init__(
        self,
        backbone: Callable[[int, int], Backbone],
        objective: Optional[Objective] = None,
        task: Optional[GraphTask | dict] = None,
        reverse: bool = False,
        lr: float = 5e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        decay_steps: Optional[int] = None,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
    ) -> None:
        super().__init__()
        me = type(self)
        above(me, "lr", lr, 0.0, "the peak learning rate, e.g. 5e-4")
        at_least(me, "weight_decay", weight_decay, 0.0, "0 turns decay off")
        require(len(betas) == 2, me, "betas", betas, "give two AdamW betas, e.g. [0.9, 0.95]")
        for i, beta in enumerate(betas):
            in_range(me, f"betas[{i}]", beta, 0.0, 1.0, high_open=True, advice="AdamW betas are e.g. [0.9, 0.95]")
        at_least(me, "warmup_steps", warmup_steps, 0, "0 turns warmup off")
        at_least(
            me, "decay_steps", decay_steps, warmup_steps,
            f"the cosine starts after warmup_steps={warmup_steps}; set decay_steps to the step where it should "
            "reach min_lr_ratio * lr, or null for trainer.max_steps",
        )
        in_range(me, "min_lr_ratio", min_lr_ratio, 0.0, 1.0, advice="the floor of the cosine, as a fraction of lr")
        require(lr_schedule in ("cosine", "constant"), me, "lr_schedule", lr_schedule, "use cosine or constant")
        require(
            lr_schedule == "cosine" or decay_steps is None, me, "decay_steps", decay_steps,
            "is the end of the cosine; lr_schedule: constant keeps lr flat after warmup, so leave decay_steps unset "
            "(null) or use lr_schedule: cosine",
        )
        with warnings.catch_warnings():
            # Saved on purpose: load_from_checkpoint rebuilds the injected objective from its hyperparameters.
            warnings.filterwarnings("ignore", message=r"Attribute 'objective' is an instance of `nn.Module`")
            self.save_hyperparameters()
        # Checkpoints record the task as plain {class_path, init_args}, so they load without unpickling it.
        task = default_task() if task is None else task_from_spec(task) if isinstance(task, dict) else task
        self.hparams["task"] = task_spec(task)
        self.task = task
        self.objective = objective if objective is not None else TeacherForcing()
        # The objective's own tokens come right after the task's, and its extra length on top of the task's.
        reservation = self.objective.reserve(task)
        self.objective.token_ids = {name: task.vocab_size + i for i, name in enumerate(reservation.tokens)}
        self.backbone = backbone(task.vocab_size + len(reservation.tokens), task.seq_len + reservation.extra_len)
        self.codec = self.backbone.codec(task)  # numeral batches <-> the backbone's own tokens
        own_tokens = (  # what would need a token that a pretrained tokenizer does not have
            (bool(reservation.tokens),
             f"{type(self.objective).__name__} adds tokens of its own ({', '.join(reservation.tokens)})"),
            (task.scratchpad is not None, f"scratchpad: {task.scratchpad} writes a separator token of its own"),
        )
        for needed, what in own_tokens:
            if needed and not isinstance(self.codec, NumeralCodec):
                raise UserInputError(f"{what}, which {type(self.backbone).__name__}'s tokenizer does not have; "
                                     "use nfl.models.GPT or nfl.models.Mamba.")
        refuse_reverse(task, reverse, me)
        self.objective.bind(task, self.backbone, self.codec.dummy, self.codec.stop)
        self._train_backbone: Optional[Callable] = None  # compiled view of self.backbone, not a submodule
        # Training graphs drawn so far on all ranks (repeats of a finite set count again); None after loading a
        # checkpoint written before nfl counted them, until the first step estimates it.
        self.graphs_seen: Optional[int] = 0
        stages = ("val", "test", "train_eval")
        self.metrics = torch.nn.ModuleDict({stage: AnswerMetrics(task, reverse) for stage in stages})
        extra = {stage: task.diagnostics(reverse) for stage in stages}
        self.task_metrics = torch.nn.ModuleDict({k: m for k, m in extra.items() if m is not None})
        extra = {stage: self.objective.eval_metric() for stage in stages}
        self.objective_metrics = torch.nn.ModuleDict({k: m for k, m in extra.items() if m is not None})
        scratch = {stage: ScratchpadMatch(task) for stage in stages} if task.scratchpad is not None else {}
        self.scratchpad_metrics = torch.nn.ModuleDict(scratch)

    # --- training ------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.hparams.compile and self._train_backbone is None:
            # Same parameters, so checkpoints and the optimizer see only self.backbone.
            object.__setattr__(self, "_train_backbone", torch.compile(self.backbone))

    def setup(self, stage: str) -> None:
        # Tokenise training batches in the data loader's workers rather than here between steps, where the
        # accelerator would wait for it (a no-op for numeral backbones, whose codec is the identity).
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "train_transform"):  # reset too: a data module may outlive an earlier system
            datamodule.train_transform = None if isinstance(self.codec, NumeralCodec) else self.codec.encode

    def training_step(self, batch: Batch | EncodedBatch, batch_idx: int) -> torch.Tensor:
        encoded = batch if isinstance(batch, EncodedBatch) else self.codec.encode(*batch)
        backbone = self.backbone if self._train_backbone is None else self._train_backbone
        out = self.objective(backbone, encoded.prefix, encoded.target)
        self.log("train/loss", out.loss, prog_bar=True)
        for name, value in out.extras.items():
            self.log(f"train/{name}", value)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        self._count_graphs(len(encoded.target))
        self.log("train/graphs_seen", float(self.graphs_seen))
        return out.loss

    def _count_graphs(self, rows: int) -> None:
        """Add this batch's training graphs, summed over ranks, to :attr:`graphs_seen`."""
        if self.trainer.world_size > 1:  # ranks could draw batches of different sizes: count what each drew
            rows = int(self.trainer.strategy.reduce(torch.tensor(rows, device=self.device), reduce_op="sum"))
        if self.graphs_seen is None:  # resumed from an older checkpoint: every earlier batch was as large
            self.graphs_seen = self.trainer.global_step * self.trainer.accumulate_grad_batches * rows
        self.graphs_seen += rows

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[GRAPHS_SEEN] = self.graphs_seen
        checkpoint[NFL_VERSION] = nfl.__version__  # so that an older nfl can say a newer one wrote it

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.graphs_seen = checkpoint.get(GRAPHS_SEEN)

    # --- evaluation ----------------------------------------------------------------------------------
    def _evaluate(self, batch: Batch, stage: str) -> None:
        prefix, target = batch  # numeral node ids, which every metric is computed on
        encoded = self.codec.encode(prefix, target)
        out, generated = self.objective.evaluate(
            self.backbone, encoded.prefix, encoded.target, self.codec.decode_steps(encoded)
        )
        free, free_len, well_formed = self.codec.generated_nodes(generated)
        tf = self.codec.teacher_forced_nodes(out.logits.argmax(-1), encoded, target)
        # {stage}/loss is the next-token cross-entropy of the evaluation logits, whatever the objective trains
        # on (a multi-head sum is not comparable across objectives): teacher-forced where the objective has
        # such a pass (it equals out.loss for TF), else what its logits are (see each objective's docstring).
        tf_loss = target_cross_entropy(out.logits, encoded.target)
        read = read_answers(self.task, self.hparams.reverse, prefix, target, free, tf, free_len, well_formed)
        self.metrics[stage].update(read, tf_loss, (encoded.target != IGNORE_INDEX).sum())
        if stage in self.task_metrics:
            self.task_metrics[stage].update(read, tf_loss)
        if stage in self.objective_metrics:
            self.objective_metrics[stage].update(out, encoded.target)
        if stage in self.scratchpad_metrics:
            self.scratchpad_metrics[stage].update(prefix, target, generated)

    def _log_metrics(self, stage: str) -> None:
        # Whether the stage ran is decided across ranks: compute() is collective, and a rank whose share of a
        # small held-out set is empty must still join it.
        ran = self.metrics[stage].update_count > 0
        if self.trainer.world_size > 1:
            ran = self.trainer.strategy.reduce_boolean_decision(ran, all=False)
        if not ran:
            return
        for metrics in (self.metrics, self.task_metrics, self.scratchpad_metrics, self.objective_metrics):
            metric = metrics[stage] if stage in metrics else None
            if metric is None:
                continue
            with warnings.catch_warnings():  # a rank with no batches contributes zeros, as it should
                warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method")
                values = metric.compute()  # already reduced across ranks
            for name, value in values.items():
                if name.startswith("tf/") and not self.objective.teacher_forced:
                    continue  # no teacher-forced pass: these would not mean what their name says
                self.log(f"{stage}/{name}", value, prog_bar=name == "exact_match" and stage != "train_eval")
            metric.reset()

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val" if dataloader_idx == 0 else "train_eval")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        self._log_metrics("train_eval")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        prefix, target = batch
        encoded = self.codec.encode(prefix, target)
        generated = self.objective.decode(self.backbone, encoded.prefix, self.codec.decode_steps(encoded))
        prediction, length, well_formed = self.codec.generated_nodes(generated)
        return {"prefix": prefix, "target": target, "prediction": prediction, "length": length, "well_formed": well_formed}

    # --- optimisation --------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: decay on matrices (ndim >= 2) unless flagged ``_no_weight_decay``; none on the rest."""
        decay, no_decay = [], []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 and not getattr(p, "_no_weight_decay", False) else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def make_optimizer(self, mixed_precision: bool = False) -> torch.optim.AdamW:
        """AdamW over :meth:`parameter_groups`; the fused kernel where every parameter is on a CPU or CUDA
        device (one kernel instead of a loop over tensors: 6 ms instead of 24 ms a step for the reference-size
        GPT on 2 CPU cores), except under mixed precision, where Lightning's gradient clipping refuses a fused
        optimizer."""
        groups = self.parameter_groups()
        fused = not mixed_precision and all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=self.hparams.lr, betas=tuple(self.hparams.betas), fused=fused or None)

    def configure_optimizers(self) -> Any:
        h = self.hparams
        optimizer = self.make_optimizer(mixed_precision="mixed" in str(self.trainer.precision))
        if h.get("lr_schedule", "cosine") == "constant":  # checkpoints from before the option are cosine
            decay_steps = h.warmup_steps  # warmup, then flat
        else:
            decay_steps = h.decay_steps if h.decay_steps is not None else max(self.trainer.max_steps, 0)
        if decay_steps <= 0 and h.warmup_steps == 0:
            return optimizer
        if h.decay_steps is None and 0 < decay_steps < h.warmup_steps:
            log.warning(
                "model.warmup_steps=%d is more than trainer.max_steps=%d: the learning rate never reaches model.lr.",
                h.warmup_steps, decay_steps,
            )
        schedule = functools.partial(
            warmup_cosine, warmup_steps=h.warmup_steps, decay_steps=decay_steps, min_ratio=h.min_lr_ratio
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"}}


PathStarSystem = GraphSystem  # the name configs and scripts used before tasks were pluggable
