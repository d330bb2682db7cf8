"""One LoRA / QLoRA training run with transformers' Trainer and peft.

The run lives in its own directory (checkpoints, the trainer's state), so a stopped run can be
resumed. Ctrl-C asks the trainer to save a checkpoint at the end of the current step and stop;
a second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from cellar.finetune.data import IGNORE, Encoded

DEFAULT_TARGETS = "all-linear"


@dataclass(frozen=True)
class Hyper:
    """Hyperparameters; every one can be set from the command line."""

    method: str = "lora"
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str = DEFAULT_TARGETS
    learning_rate: float = 2e-4
    epochs: float = 3.0
    max_steps: int = -1
    """Overrides epochs when positive."""
    batch_size: int = 4
    max_length: int = 512
    seed: int = 0
    eval_every: int = 10
    save_every: int = 10
    precision: str = "auto"
    """auto | fp32 | bf16: what the forward and backward passes compute in (see `precision`)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Progress(Protocol):
    def step(self, done: int, total: int, loss: float | None) -> None: ...

    def evaluated(self, step: int, eval_loss: float) -> None: ...


@dataclass
class Outcome:
    steps: int
    stopped: bool
    """Stopped by Ctrl-C: a checkpoint was saved, the run can be resumed."""
    train_loss: float | None = None
    first_eval_loss: float | None = None
    eval_loss: float | None = None
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    precision: str = "fp32"
    """What the run computed in: bf16 or fp32."""


class _Stop:
    requested = False


@contextmanager
def _ctrl_c_saves() -> Iterator[_Stop]:
    """The first SIGINT asks for a checkpoint and a stop; the second interrupts at once."""
    flag = _Stop()
    previous = signal.getsignal(signal.SIGINT)

    def handle(signum: int, frame: FrameType | None) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    signal.signal(signal.SIGINT, handle)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _collate(pad: int) -> Any:
    import torch

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        width = max(len(item["input_ids"]) for item in batch)
        ids, labels, mask = [], [], []
        for item in batch:
            gap = width - len(item["input_ids"])
            ids.append(item["input_ids"] + [pad] * gap)
            labels.append(item["labels"] + [IGNORE] * gap)
            mask.append([1] * len(item["input_ids"]) + [0] * gap)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }

    return collate


def learned_loss(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """The mean cross-entropy over the learned tokens, computing the output layer only at the
    positions that predict one (`logits_to_keep`). The same loss as transformers' own, but a
    chat example learns a few dozen tokens after hundreds of prompt tokens, and with Gemma's
    262k-entry vocabulary the output layer at every position costs as much as the rest of
    the model."""
    import torch

    labels = inputs.pop("labels")
    targets = labels[:, 1:]
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(-1)
    outputs = model(**inputs, logits_to_keep=keep)
    logits = outputs.logits.float()
    chosen = targets[:, keep]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), chosen.reshape(-1), ignore_index=IGNORE
    )
    return loss, outputs


PRECISIONS = ("auto", "fp32", "bf16")


def precision(hyper: Hyper) -> str:
    """bf16 or fp32. `auto` picks bf16 on a GPU that has it (the weights in bf16, as before) and
    for LoRA on a CPU with bf16 instructions (AVX512-BF16, AMX), where the weights and the
    adapter stay fp32 and the passes run under bf16 autocast: on the test machine 1.7x faster
    per step, to the same loss. QLoRA on a CPU stays fp32 (bitsandbytes' CPU kernels)."""
    import torch

    from cellar.hardware import cpu_computes_bf16

    if hyper.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if hyper.precision != "auto":
        return hyper.precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if hyper.method == "lora" and cpu_computes_bf16() else "fp32"


def load_model(base: Path, hyper: Hyper) -> Any:
    """The base model with fresh LoRA layers (seeded), on an NF4 base for QLoRA."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, set_seed

    set_seed(hyper.seed)
    gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if gpu and precision(hyper) == "bf16" else torch.float32
    options: dict[str, Any] = {"dtype": dtype, "attn_implementation": "eager"}
    if hyper.method == "qlora":
        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
        options["device_map"] = {"": 0} if gpu else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(str(base), **options)
    if hyper.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets: str | list[str] = hyper.target_modules
    if targets != DEFAULT_TARGETS:
        targets = [name.strip() for name in hyper.target_modules.split(",") if name.strip()]
    config = LoraConfig(
        r=hyper.rank,
        lora_alpha=hyper.alpha,
        lora_dropout=hyper.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def train(
    base: Path,
    run_dir: Path,
    train_set: list[Encoded],
    eval_set: list[Encoded],
    hyper: Hyper,
    *,
    pad: int,
    resume: bool,
    progress: Progress,
) -> tuple[Any, Outcome]:
    """Train; returns the peft model and what happened. Checkpoints go to `run_dir`."""
    import torch
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    model = load_model(base, hyper)
    outcome = Outcome(steps=0, stopped=False, precision=precision(hyper))

    class Report(TrainerCallback):
        def __init__(self, flag: _Stop) -> None:
            self.flag = flag
            self.loss: float | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            logs = logs or {}
            if "loss" in logs:
                self.loss = float(logs["loss"])
                outcome.train_loss = self.loss
            if "eval_loss" in logs:
                value = float(logs["eval_loss"])
                outcome.eval_history.append((state.global_step, value))
                if outcome.first_eval_loss is None:
                    outcome.first_eval_loss = value
                outcome.eval_loss = value
                progress.evaluated(state.global_step, value)

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            progress.step(state.global_step, state.max_steps, self.loss)
            if self.flag.requested:
                control.should_save = True
                control.should_training_stop = True

    gpu = torch.cuda.is_available()
    arguments = TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=hyper.batch_size,
        per_device_eval_batch_size=hyper.batch_size,
        learning_rate=hyper.learning_rate,
        num_train_epochs=hyper.epochs,
        max_steps=hyper.max_steps,
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=1,
        eval_strategy="steps" if eval_set else "no",
        eval_steps=hyper.eval_every,
        save_strategy="steps",
        save_steps=hyper.save_every,
        save_total_limit=2,
        seed=hyper.seed,
        data_seed=hyper.seed,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not gpu,
        bf16=outcome.precision == "bf16",  # on the CPU: autocast over fp32 weights
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    records = [{"input_ids": e.input_ids, "labels": e.labels} for e in train_set]
    evals = [{"input_ids": e.input_ids, "labels": e.labels} for e in eval_set]

    class LearnedOnly(Trainer):
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            loss, outputs = learned_loss(model, inputs)
            return (loss, outputs) if return_outputs else loss

    with _ctrl_c_saves() as flag:
        trainer = LearnedOnly(
            model=model,
            args=arguments,
            train_dataset=records,
            eval_dataset=evals or None,
            data_collator=_collate(pad),
            callbacks=[Report(flag)],
        )
        trainer.remove_callback(PrinterCallback)  # the bar shows the loss; no dicts on stdout
        if eval_set and not resume:
            trainer.evaluate()  # the starting point, so that a falling eval loss shows
        trainer.train(resume_from_checkpoint=True if resume else None)
        outcome.steps = trainer.state.global_step
        outcome.stopped = flag.requested
        done = outcome.eval_history and outcome.eval_history[-1][0] == outcome.steps
        if eval_set and not flag.requested and not done:
            trainer.evaluate()
    return trainer.model, outcome
