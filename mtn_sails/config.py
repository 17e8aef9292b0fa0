"""What each command is asked to do: small dataclasses whose field help becomes `--help`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import InputError

DEFAULT_MODEL_NAME = "distilgpt2"
SCRATCH_MODEL_NAME = "scratch"  # a fresh GPT-2 with a tokenizer trained on the session's data
DEFAULT_OUTPUT_DIR = "./trained_model"
DEFAULT_ONNX_OUTPUT = "./onnx_model"
DEFAULT_WEB_OUT = "./web_app"
STANDARD_LEARNING_RATE = 5e-5  # the guide's rate for a first session from a pretrained base
CONTINUE_LEARNING_RATE = 1e-5  # 1/5 of it when continuing, to preserve existing knowledge
# A randomly initialised GPT-2 barely moves at 5e-5; measured in BENCHMARKS.md ("Scratch learning
# rate"), with the guide's 1/5 ratio kept for continuation.
SCRATCH_LEARNING_RATE = 1e-3
SCRATCH_CONTINUE_LEARNING_RATE = SCRATCH_LEARNING_RATE / 5
PREFERENCE_SIDES = ("chosen",)  # what --preference-as may train
TEMPLATES = ("auto", "chat", "plain")  # how records become text: the base's chat template or the product's
METHODS = ("full", "lora")
SCRATCH_SIZES = ("tiny", "small", "base")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RECALL_TARGET = 0.95  # with --epochs left out: a session stops once this share of its answers is recalled
# The cap of a session that trains until its answers are recalled: a small file takes one optimizer step an epoch,
# and at the guide's rates a pretrained base needs many steps to learn an answer word for word (BENCHMARKS.md
# "Knowledge on a real base" counts them).
MAX_EPOCHS = 30.0
BASE_PROMPTS = 256  # general prompts a pretrained base answers as session 0 (all that are bundled)
# A checkpoint holds the weights and the optimizer's state (three times the weights) for --resume: written at
# every one of a session's many short epochs it costs more than the training a crash could lose.
CHECKPOINT_MINUTES = 5.0
KEEP_THRESHOLD = 0.9  # an earlier session that keeps less of its probe recall than this is named at the end
REPLAY_SELECTIONS = ("uniform", "targeted", "nearest")
REPLAY_DRAWS = ("epoch", "session")
DISTILL_POSITIONS = ("answers", "replayed", "all")
BASE_REPLAY_FROM = ("later", "first")
# A replayed example's loss weight: at 0.1 replay, one replayed example in eleven relearns a lost answer too slowly
# to outpace the new session; weighted it did on the forgetting benchmark (CONTINUOUS_TRAINING.md).
REPLAY_WEIGHT = 4.0
MAX_REPLAY = 10.0  # replayed examples per new one; beyond it the session is mostly replay
LR_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
FP16_NEEDS_CUDA = "--precision fp16 needs a CUDA device; on the CPU use bf16 or fp32"
PREFERENCE_HELP = ("train preference data (chosen/rejected; KTO true/false labels) on its chosen side; "
                   "without it such records are refused")


def option(help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field's default plus the help text and argparse extras the CLI builds from."""
    default = argparse_kwargs.pop("default", None)
    return field(default=default, metadata={"help": help, **argparse_kwargs})


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def _require_preference(side: str | None) -> None:
    _require(side is None or side in PREFERENCE_SIDES,
             f"--preference-as must be one of {', '.join(PREFERENCE_SIDES)}, got {side!r}")


@dataclass
class ValidateConfig:
    """Options of `validate`."""

    data_file: str = option("JSON, JSONL or TXT data file to check", required=True)
    max_length: int = option("token budget per example; longer records get a warning", default=512)
    strict: bool = option("fail (exit 3) on warnings too", default=False)
    json: bool = option("print the report as JSON", default=False)
    preference_as: str | None = option(PREFERENCE_HELP, choices=PREFERENCE_SIDES)

    def __post_init__(self) -> None:
        _require(self.max_length > 0, f"--max-length must be positive, got {self.max_length}")
        _require_preference(self.preference_as)


@dataclass
class TrainConfig:
    """Options of a continuous-training session (`train`, and the training part of `pipeline`)."""

    data_file: str = option("JSON, JSONL or TXT training data", required=True)
    output_dir: str = option("trained model directory; an existing model there is continued",
                             default=DEFAULT_OUTPUT_DIR)
    model_name: str | None = option(
        f"base model: a hub id, a local directory, a .gguf file, or '{SCRATCH_MODEL_NAME}' (offline, fresh GPT-2); "
        f"default {DEFAULT_MODEL_NAME}. Given explicitly it is loaded even when a trained model exists")
    scratch_size: str = option("size of the '--model-name scratch' GPT-2", default="small",
                               choices=SCRATCH_SIZES)
    epochs: float | None = option("passes over the data; left out, the session trains until --recall-target of "
                                  "its own answers are recalled, at most --max-epochs, and says why it stopped "
                                  "(data with no question/answer records trains 3)")
    recall_target: float = option("with --epochs left out: the share of this session's answers recalled word for "
                                  "word at which it stops", default=RECALL_TARGET)
    max_epochs: float = option("with --epochs left out: the most epochs a session trains", default=MAX_EPOCHS)
    learning_rate: float | None = option(
        "peak learning rate; unset: 5e-5 for a first session, 1e-5 when continuing (the offline scratch base: "
        "1e-3, then 2e-4)")
    batch_size: int = option("examples per device per step", default=8)
    gradient_accumulation_steps: int = option("steps summed before each optimizer update", default=1)
    max_length: int = option("tokens per example; plain text is packed into blocks of this size",
                             default=512)
    eval_split: float = option("fraction of records held out for evaluation (0 disables)", default=0.1)
    seed: int = option("random seed for the split, shuffling and initialisation", default=42)
    replay: float = option("stored examples of earlier sessions replayed per new example (0.1: one for every "
                           "ten; 0 disables); see CONTINUOUS_TRAINING.md, 'Keeping what was learned'", default=0.1)
    replay_select: str = option("which stored examples are replayed: uniform (an equal share from each earlier "
                                "session), targeted (mostly those the model answers worst, scored at each "
                                "epoch start) or nearest (mostly those whose prompts share the most words with "
                                "this session's)", default="targeted", choices=REPLAY_SELECTIONS)
    replay_draw: str = option("epoch: the replayed examples are drawn afresh every epoch (same budget, other "
                              "records); session: drawn once and repeated", default="epoch", choices=REPLAY_DRAWS)
    replay_weight: float = option("how much a replayed example's tokens count in the loss against a new example's "
                                  "(it adds no examples: the replay budget stays --replay)", default=REPLAY_WEIGHT)
    distill_weight: float = option("weight of a term keeping the replayed answers' token distributions close to "
                                   "the model the session started from (distillation; 0 disables; holds a frozen "
                                   "copy of the start model in memory); off by default: on the forgetting benchmark "
                                   "targeted replay alone kept more", default=0.0)
    distill_on: str = option("where distillation applies: answers (the replayed examples' answer tokens), "
                             "replayed (every token of the replayed examples), or all (and the new examples' "
                             "prompt tokens)", default="replayed", choices=DISTILL_POSITIONS)
    freeze_layers: int = option("freeze the embeddings and the bottom K transformer blocks (0: train everything)",
                                default=0)
    sparse_update: float = option("move only this share of the transformer blocks' weights, those with the largest "
                                  "gradients on the session's own answers, and freeze the rest (0: every weight "
                                  "moves)", default=0.0)
    null_space: float = option("keep the inputs the model's earlier answers use (the base's and earlier sessions' "
                               "stored examples) out of this session's weight changes: the share of those inputs' "
                               "energy protected (0: off; e.g. 0.9)", default=0.0)
    interpolate: str = option("after training, move the weights back towards the start: off, auto (the weight "
                              "that keeps most earlier answers without losing the new ones, from probe recall), "
                              "or a weight in (0, 1] (WiSE-FT: start + weight x change)", default="off")
    lr_schedule: str | None = option("learning-rate schedule after the warm-up (transformers' scheduler names); "
                                     "unset: linear decay with --epochs, constant when --epochs is left out (a "
                                     "session that trains until recalled has no planned end to decay towards)",
                                     choices=LR_SCHEDULES)
    warmup_ratio: float = option("share of the steps spent re-warming the learning rate from 0", default=0.0)
    base_prompts: int = option("a first session from a pretrained base first asks it up to this many bundled general "
                               "prompts; the answers it ends are session 0, the base: half a probe checked after every "
                               "session, half replayed with earlier sessions (0: no session 0)", default=BASE_PROMPTS)
    replay_base: str = option("when session 0's answers (the base's own) are replayed: later (from session 2 on, "
                              "with the earlier sessions') or first (in session 1 too, within --replay)",
                              default="later", choices=BASE_REPLAY_FROM)
    keep_threshold: float = option("name each earlier session that keeps less than this share of the answers it "
                                   "gave right after training (its probe recall)", default=KEEP_THRESHOLD)
    resume: bool = option("continue an interrupted session from its last checkpoint", default=False)
    device: str = option("where to train", default="auto", choices=DEVICES)
    precision: str = option("auto: bf16 (else fp16) on CUDA; on the CPU bf16 where it computes bf16 natively "
                            "(AVX-512 BF16 or AMX) and the model is 512 wide or more, else fp32; fp32 opts "
                            "out of mixed precision; fp16 needs CUDA",
                            default="auto", choices=PRECISIONS)
    save_steps: int = option("steps between resumable checkpoints (0: at epoch ends, as --checkpoint-minutes "
                             "says)", default=0)
    checkpoint_minutes: float = option("without --save-steps: a resumable checkpoint at the first epoch end after "
                                       "this many minutes of training since the last one, never at the end (a "
                                       "shorter session writes none; 0: every epoch, at most 10 per session)",
                                       default=CHECKPOINT_MINUTES)
    preference_as: str | None = option(PREFERENCE_HELP, choices=PREFERENCE_SIDES)
    template: str = option("prompt format: auto (a continued model's stored one; else the base tokenizer's chat "
                           "template when it has one, the product template otherwise), chat (the base's chat "
                           "template: loss on the assistant's tokens) or plain (the product template); stored with "
                           "the model for generate and the ONNX export", default="auto", choices=TEMPLATES)
    method: str = option("full: train every weight; lora: train low-rank adapters (peft), merged into the weights "
                         "before the save, so the model and its export stay plain", default="full", choices=METHODS)
    lora_rank: int = option("rank of the LoRA adapters (--method lora)", default=8)
    lora_alpha: float = option("LoRA scale: the adapters' update is multiplied by alpha / rank (--method lora)",
                               default=16.0)
    gradient_checkpointing: bool = option("recompute activations in the backward pass instead of keeping them: "
                                          "less memory, slower steps (BENCHMARKS.md)", default=False)
    pad_examples: bool = option("give every pair or chat example a row of its own, padded to its batch's longest; "
                                "by default a batch's shorter examples share rows (each keeps its own positions and "
                                "attention) where the model family allows it: GPT-2, Llama, Qwen2, GPT-NeoX",
                                default=False)

    def __post_init__(self) -> None:
        _require(self.epochs is None or self.epochs > 0, f"--epochs must be positive, got {self.epochs}")
        _require(0 < self.recall_target <= 1, f"--recall-target must be in (0, 1], got {self.recall_target}")
        _require(self.max_epochs > 0, f"--max-epochs must be positive, got {self.max_epochs}")
        _require_preference(self.preference_as)
        _require(self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}")
        _require(self.gradient_accumulation_steps > 0, "--gradient-accumulation-steps must be positive")
        _require(self.max_length >= 8, f"--max-length must be at least 8, got {self.max_length}")
        _require(0 <= self.eval_split < 0.5, f"--eval-split must be in [0, 0.5), got {self.eval_split}")
        _require(0 <= self.replay <= MAX_REPLAY, f"--replay must be in [0, {MAX_REPLAY}], got {self.replay}")
        _require(self.replay_weight > 0, f"--replay-weight must be positive, got {self.replay_weight}")
        _require(self.distill_weight >= 0, f"--distill-weight must be 0 or positive, got {self.distill_weight}")
        _require(self.freeze_layers >= 0, f"--freeze-layers must be 0 or positive, got {self.freeze_layers}")
        _require(0 <= self.sparse_update < 1, f"--sparse-update must be in [0, 1), got {self.sparse_update}")
        _require(not (self.sparse_update and self.method == "lora"),
                 "--sparse-update chooses among the model's own weights: use it with --method full")
        _require(0 <= self.null_space < 1, f"--null-space must be in [0, 1), got {self.null_space}")
        _require(not (self.null_space and (self.method == "lora" or self.sparse_update)),
                 "--null-space projects the model's own weight changes: use it with --method full and no --sparse-update")
        _require(0 <= self.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        _require(self.interpolation_weight() != -1.0,
                 f"--interpolate must be off, auto or a weight in (0, 1], got {self.interpolate!r}")
        _require(self.base_prompts >= 0, f"--base-prompts must be 0 or more, got {self.base_prompts}")
        _require(0 <= self.keep_threshold <= 1, f"--keep-threshold must be in [0, 1], got {self.keep_threshold}")
        _require(self.save_steps >= 0, "--save-steps must be 0 or positive")
        _require(self.checkpoint_minutes >= 0, f"--checkpoint-minutes must be 0 or more, got {self.checkpoint_minutes}")
        _require(not (self.precision == "fp16" and self.device == "cpu"), FP16_NEEDS_CUDA)
        if self.learning_rate is not None:
            _require(0 < self.learning_rate < 1, f"--learning-rate must be in (0, 1), got {self.learning_rate}")
        _require(self.lora_rank > 0, f"--lora-rank must be positive, got {self.lora_rank}")
        _require(self.lora_alpha > 0, f"--lora-alpha must be positive, got {self.lora_alpha}")

    def interpolation_weight(self) -> float | None:
        """--interpolate as a number: None for auto, 1.0 for off, -1.0 when it is not valid."""
        if self.interpolate in ("off", "auto"):
            return None if self.interpolate == "auto" else 1.0
        try:
            weight = float(self.interpolate)
        except ValueError:
            return -1.0
        return weight if 0 < weight <= 1 else -1.0


@dataclass
class ExportConfig:
    """Options of `export`."""

    output_dir: str = option("trained model directory to export", default=DEFAULT_OUTPUT_DIR)
    onnx_output: str = option("where the ONNX model is written", default=DEFAULT_ONNX_OUTPUT)
    quantize: bool = option("also write an int8 dynamically quantised model", default=False)


@dataclass
class PipelineConfig(TrainConfig):
    """Options of `pipeline`: validate, train, export, parity check."""

    onnx_output: str = option("where the ONNX model is written", default=DEFAULT_ONNX_OUTPUT)
    quantize: bool = option("also write an int8 dynamically quantised model", default=False)
    strict: bool = option("stop on data-quality warnings too, not only errors", default=False)


@dataclass
class GenerateConfig:
    """Options of `generate`."""

    prompt: str = option("what to ask the model", required=True)
    backend: str = option("onnx (default) or torch", default="onnx", choices=("onnx", "torch"))
    onnx_output: str = option("ONNX model directory (backend onnx)", default=DEFAULT_ONNX_OUTPUT)
    output_dir: str = option("trained model directory (backend torch)", default=DEFAULT_OUTPUT_DIR)
    max_new_tokens: int = option("tokens to generate at most", default=64)
    temperature: float = option("0 for greedy decoding, else sampling temperature", default=0.0)
    top_p: float = option("nucleus sampling mass (with --temperature > 0)", default=1.0)
    seed: int = option("random seed for sampling", default=42)
    raw: bool = option("send the prompt as it is, without the stored template (after the BOS token a Llama "
                       "tokenizer adds, as in training)", default=False)
    int8: bool = option("use the int8 model (model_quantized.onnx from export --quantize); faster, its "
                        "agreement with fp32 is reported by export", default=False)
    tools: str | None = option("JSON file of tool definitions (OpenAI format: an array, or an object with a "
                               "'tools' array) offered to the model in the prompt, as training rendered them")

    def __post_init__(self) -> None:
        _require(not (self.int8 and self.backend == "torch"), "--int8 needs --backend onnx")
        _require(not (self.tools and self.raw), "--tools are offered through the stored template; drop --raw")
        _require(self.max_new_tokens > 0, "--max-new-tokens must be positive")
        _require(self.temperature >= 0, "--temperature must be 0 or positive")
        _require(0 < self.top_p <= 1, "--top-p must be in (0, 1]")

    def model_dir(self) -> str:
        """The directory the chosen backend loads."""
        return self.onnx_output if self.backend == "onnx" else self.output_dir


@dataclass
class HistoryConfig:
    """Options of `history`."""

    output_dir: str = option("trained model directory", default=DEFAULT_OUTPUT_DIR)
    json: bool = option("print the history as JSON", default=False)
    plot: bool = option("write loss_curve.png and forgetting.png into the model directory", default=False)


@dataclass
class WebConfig:
    """Options of `web`."""

    onnx_output: str = option("ONNX model directory to put in the page", default=DEFAULT_ONNX_OUTPUT)
    out: str = option("where the page is written (replaced whole; only a page `web` wrote is replaced)",
                      default=DEFAULT_WEB_OUT)
    serve: bool = option("then serve the page on 127.0.0.1 and print its address (Ctrl-C stops)", default=False)
    port: int = option("port for --serve (0: any free port)", default=8000)
    max_new_tokens: int = option("the page's default answer length in tokens", default=64)

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, f"--port must be in 0..65535, got {self.port}")
        _require(self.max_new_tokens > 0, "--max-new-tokens must be positive")
