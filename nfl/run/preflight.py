"""The pre-flight size check: what a run will need in memory and compute, estimated before anything is allocated.

The model is built on PyTorch's ``meta`` device (shapes, no storage) to count its parameters; the rest follows
from the data and trainer options. The accounting, per process:

- **parameters and optimizer state**: for ``fit``, 16 bytes a parameter in float32 and under ``*-mixed``
  precision (weights 4, gradients 4, AdamW's two moments 8: the usual accounting of Rajbhandari et al. 2020,
  ZeRO, §3.1, whose fp16 weights and gradients plus fp32 master copy and moments also make 16), 8 under
  ``*-true`` half precision, 32 under ``64-true``; for evaluation, the weights alone;
- **activations** of one training batch at the configured precision (:meth:`nfl.models.base.Backbone.
  activation_bytes`, per encoder the objective runs) plus the float32 logits over the answer and their
  gradient;
- **evaluation and decoding**: each layer's key/value cache for one evaluation batch, that batch's activations
  without gradients, its logits;
- **the data generator's batch**: the samplers draw labels by a partial shuffle of ``0..num_nodes-1`` per graph,
  so a batch of ``B`` graphs holds ``B x num_nodes`` labels, besides the token arrays; the held-out set (and a
  finite training set) is drawn in one call and kept.

A run is refused in one line when the estimate exceeds the total memory of the device it runs on or the
process's limit (``RLIMIT_AS``, a cgroup's ``memory.max``), naming the largest part and the options that
shrink it; it is only warned about when it exceeds what is free right now, so that whether a run starts does
not depend on the machine's load. A training step estimated to take over a minute (Kaplan et al. 2020, §2.1:
``6 N`` FLOPs a token for ``N`` non-embedding parameters, plus attention's ``6 n_layer n_ctx d_model``) is warned
about too. The estimate is logged in one line at the start of every run.
"""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass, field
from typing import Any, Optional


from nfl.errors import UserInputError
from nfl.tasks.base import GraphTask

log = logging.getLogger(__name__)

SLOW_STEP_SECONDS = 60.0  # a training step estimated slower than this is warned about
# Sustained training throughput assumed for the slow-step warning: generous, so the warning means it.
FLOPS_PER_SECOND = {"cpu": 2e11, "cuda": 2e14}


@dataclass
class Need:
    """One part of a run's memory, and the options that shrink it."""

    what: str
    bytes: int
    lower: tuple[str, ...]
    host: bool = False  # in CPU memory even when the model runs on a GPU


@dataclass
class Estimate:
    """What a run needs: its memory parts (per process), its processes, and the FLOPs of one training step."""

    needs: list[Need]
    parameters: int
    device: str  # "cpu" or "cuda"
    processes: int = 1
    step_flops: float = 0.0
    precision: str = "32-true"
    notes: list[str] = field(default_factory=list)

    def total(self, host: Optional[bool] = None) -> int:
        """Bytes of the parts in host memory (``host=True``), on the device (``False``) or all of them."""
        if host is None:
            return sum(n.bytes for n in self.needs)
        if self.device == "cpu":  # everything is in host memory
            return self.total() if host else 0
        return sum(n.bytes for n in self.needs if n.host == host)

    def line(self) -> str:
        parts = ", ".join(f"{n.what} {human(n.bytes)}" for n in sorted(self.needs, key=lambda n: -n.bytes) if n.bytes)
        where = f" per process ({self.processes} processes)" if self.processes > 1 else ""
        return (f"memory estimate: {human(self.total())}{where} on {self.device} at precision {self.precision}, "
                f"{self.parameters:,} parameters ({parts})")


@dataclass
class Memory:
    """The memory a run can use where it runs: the most it could ever have, and what is free now."""

    total: int
    free: int
    what: str  # e.g. "the 23.4 GiB of RAM", "RLIMIT_AS"


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"


# --- what there is ------------------------------------------------------------------------------------------
def _meminfo() -> dict[str, int]:
    try:
        with open("/proc/meminfo") as f:
            return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)}
    except (OSError, ValueError):
        return {}


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _address_space_used() -> int:
    """This process's mapped address space (what ``RLIMIT_AS`` counts), in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def host_memory() -> Memory:
    """RAM, lowered to a cgroup's ``memory.max`` and to what ``RLIMIT_AS`` leaves of the address space."""
    info = _meminfo()
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
    total = info.get("MemTotal", pages)
    memory = Memory(total, info.get("MemAvailable", total), f"the {human(total)} of RAM")
    limit = _read_int("/sys/fs/cgroup/memory.max") or _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if limit is not None and limit < memory.total:
        used = _read_int("/sys/fs/cgroup/memory.current") or _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0
        memory = Memory(limit, min(memory.free, max(limit - used, 0)), f"the cgroup's memory limit of {human(limit)}")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        left = max(soft - _address_space_used(), 0)
        if left < memory.total:
            memory = Memory(left, min(memory.free, left), f"the {human(left)} that RLIMIT_AS ({human(soft)}) leaves")
    return memory


def device_memory(device: str) -> Optional[Memory]:
    """The first GPU's memory (total and free), or None on CPU."""
    if device != "cuda":
        return None
    import torch

    free, total = torch.cuda.mem_get_info(0)
    return Memory(total, free, f"the {human(total)} of {torch.cuda.get_device_name(0)}")


# --- what a run needs ---------------------------------------------------------------------------------------
def _bytes_per(precision: str) -> tuple[int, int, int]:
    """(weight bytes, bytes a parameter under AdamW training, activation bytes) at a Lightning precision."""
    p = str(precision)
    if p.startswith("64"):
        return 8, 32, 8
    if "true" in p and ("16" in p):
        return 2, 8, 2
    if "mixed" in p or "transformer-engine" in p:
        return 4, 16, 2
    return 4, 16, 4


def sampling_bytes(task: GraphTask, n: int) -> int:
    """Memory a task's sampler uses to draw ``n`` graphs at once: the labels come from a shuffle of all
    ``num_nodes`` labels per graph (path-star's reference sampler: an int64 row each, its ``0..N-1`` source and
    a temporary row; the other samplers use less), plus a few int64 token arrays as long as prefix and answer."""
    return n * (8 * task.num_nodes + 6 * 8 * (task.prefix_len + task.target_len)) + 16 * task.num_nodes


def run_device(trainer: Any) -> str:
    import torch

    accelerator = str(trainer.get("accelerator", "auto"))
    return "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"


def local_processes(trainer: Any) -> int:
    devices = trainer.get("devices", "auto")
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)):
        return max(len(devices), 1)
    return 1


def estimate(model: Any, data: Any, trainer: Any, subcommand: str, options: dict[str, str]) -> Estimate:
    """What a run of ``model`` (a :class:`~nfl.system.GraphSystem` built on the meta device) on ``data`` (its
    data module, not set up) needs; ``trainer`` is the config's trainer section, ``options`` the config paths
    of the task's size options (``num_nodes``, ``seq``: the sequence length's)."""
    task, backbone = model.task, model.backbone
    precision = str(trainer.get("precision") or "32-true")
    weight, train_param, value = _bytes_per(precision)
    params = sum(p.numel() for p in model.parameters())
    embedding = backbone.vocab_size * backbone.d_model
    fit = subcommand == "fit"
    B, Be, T, V = data.batch_size, data.eval_batch_size, backbone.max_seq_len, backbone.vocab_size
    answer = task.target_len
    encoders = sum(isinstance(m, type(backbone)) for m in model.modules())  # the Belief State Transformer has two
    width = ("model.backbone.init_args.d_model", "model.backbone.init_args.n_layer")
    size_of_params = ((options["num_nodes"],) if embedding * 2 > params else ()) + width
    needs = [Need("parameters and AdamW state" if fit else "parameters", params * (train_param if fit else weight),
                  size_of_params)]
    if fit:
        activations = encoders * backbone.activation_bytes(B, T, value)
        needs.append(Need("activations", activations, ("data.init_args.batch_size", options["seq"], *width)))
        # float32 logits over the answer, their softmax and gradient
        needs.append(Need("logits", 3 * B * answer * V * 4, ("data.init_args.batch_size", options["num_nodes"])))
    layers = getattr(backbone, "n_layer", 1)
    decoding = (2 * layers * Be * T * backbone.d_model * value + 8 * Be * T * backbone.d_model * value
                + 3 * Be * answer * V * 4)
    needs.append(Need("evaluation and decoding", decoding,
                      ("data.init_args.eval_batch_size", options["seq"], options["num_nodes"])))
    workers = max(data.num_workers, 1)
    if fit:  # each loader worker keeps two batches in flight
        needs.append(Need("the data generator's batch", workers * 2 * sampling_bytes(task, B),
                          ("data.init_args.batch_size", options["num_nodes"]), host=True))
    held_out = 0 if data.test_file else data.n_test
    sets = sampling_bytes(task, held_out) + sampling_bytes(task, (data.n_train or 0) * fit)  # drawn in one call
    if sets:
        lower = ("data.init_args.n_test",) + (("data.init_args.n_train",) if fit and data.n_train else ())
        needs.append(Need("the held-out set" + (" and training set" if fit and data.n_train else ""), sets,
                          (*lower, options["num_nodes"]), host=True))
    non_embedding = max(params - embedding, 0)
    flops = 6 * B * T * (non_embedding + layers * T * backbone.d_model) * encoders if fit else 0.0
    return Estimate(needs, params, run_device(trainer), local_processes(trainer), flops, precision)


def check(est: Estimate) -> None:
    """Refuse ``est`` in one line when it cannot fit where it runs; warn when it exceeds what is free now, or
    when a training step will be very slow."""
    host = host_memory()
    device = device_memory(est.device)
    places = [(host, est.total(host=True) * est.processes, True)]
    if device is not None:
        places.append((device, est.total(host=False), False))
    for memory, need, on_host in places:
        parts = [n for n in est.needs if est.device == "cpu" or n.host == on_host]
        if need > memory.total:
            many = f" for {est.processes} processes" if on_host and est.processes > 1 else ""
            culprits = _largest_until(parts, (need - memory.total) / max(est.processes if on_host else 1, 1))[:3]
            shown = ", ".join(f"{n.what} {human(n.bytes)}" for n in culprits)
            lower = list(dict.fromkeys(option for n in culprits for option in n.lower))[:5]
            raise UserInputError(
                f"this run needs about {human(need)}{many} ({shown}), more than {memory.what}; lower "
                f"{', '.join(lower)}" + (" or trainer.devices" if many else "") + "."
            )
        if need > memory.free:
            log.warning("this run needs about %s, more than the %s free now of %s: it may run out of memory.",
                        human(need), human(memory.free), memory.what.removeprefix("the "))
    seconds = est.step_flops / FLOPS_PER_SECOND[est.device]
    if seconds > SLOW_STEP_SECONDS:
        log.warning(
            "a training step needs about %.1e FLOPs (6 x parameters x tokens, plus attention): likely over %s on "
            "%s. Lower the sequence length, batch size or model size for steps that finish.",
            est.step_flops, _duration(seconds), est.device,
        )


def _largest_until(parts: list[Need], excess: float) -> list[Need]:
    """The largest parts, biggest first, until they add up to ``excess``: the ones that must shrink."""
    chosen: list[Need] = []
    for need in sorted(parts, key=lambda n: -n.bytes):
        chosen.append(need)
        if sum(n.bytes for n in chosen) >= excess:
            break
    return chosen


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.0f} hours" if seconds < 172800 else f"{seconds / 86400:.0f} days"


def task_options(data_config: Any) -> dict[str, str]:
    """The config paths of the task options that set the vocabulary and the sequence length."""
    data = data_config.as_dict() if hasattr(data_config, "as_dict") else dict(data_config or {})
    if str(data.get("class_path", "")).endswith("PathStarDataModule"):
        return {"num_nodes": "data.init_args.num_nodes", "seq": "data.init_args.path_len or degree"}
    return {"num_nodes": "data.init_args.task.init_args.num_nodes", "seq": "the task's size (data.init_args.task.init_args)"}


def size_check(parser: Any, config: Any, subcommand: str) -> Optional[Estimate]:
    """Build the run's data module and system on the meta device (no memory), estimate what the run needs and
    :func:`check` it. Returns the estimate, or None where the model cannot be built without its weights."""
    import torch

    with torch.device("meta"):
        try:
            init = parser.instantiate_classes(config)
        except UserInputError:
            raise
        except Exception as err:  # e.g. a pretrained model that cannot load onto the meta device
            if _user_error(err):
                raise
            log.debug("no size estimate: %s", err)
            return None
    section = init[subcommand]
    est = estimate(section.model, section.data, config[subcommand].trainer, subcommand, task_options(config[subcommand].data))
    check(est)
    return est


def _user_error(err: BaseException) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserInputError):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def announce(est: Optional[Estimate]) -> None:
    """Log the estimate in one line at the start of a run."""
    if est is not None:
        log.info(est.line())
