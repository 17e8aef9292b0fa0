"""Keeping what earlier sessions taught: replay drawn each epoch, targeted replay, distillation to the start
model, frozen bottom layers and weight interpolation (BENCHMARKS.md, "Forgetting and replay", measures each).

The Trainer sees one dataset: this session's examples, then the stored examples of earlier sessions
(the replay pool). `ReplaySampler` visits every new example each epoch plus a fixed number of pool
examples, chosen again at each epoch start (uniformly, an equal share per earlier session, aimed at
those the current model gets most wrong, or at those whose prompts are nearest this session's), so no record is
copied into the data.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ..errors import InputError
from .nearness import asked, nearness
from .null_space import null_space_callback, restrict_to_null_space
from .sparse_update import decoder_blocks, restrict_updates

TARGETED_SHARE = 0.75  # of each epoch's replay budget spent on the worst-scored records; the rest is uniform
MAX_SCORED = 256  # pool records scored at the first epoch of targeted replay (a random subset of a larger pool)
REFRESHED_PER_EPOCH = 8  # scores brought up to date at each later epoch, beside those just replayed


def replay_count(new_examples: int, ratio: float, pool_size: int) -> int:
    """Pool examples per epoch: `ratio` per new example, rounded down (the budget is a ceiling), at least one."""
    if ratio <= 0 or pool_size == 0 or new_examples == 0:
        return 0
    return max(1, int(ratio * new_examples + 1e-9))


def session_shares(sessions: Sequence[int], count: int, rng: random.Random) -> dict[int, int]:
    """How many of `count` replayed examples each earlier session gives: an equal share (one large session
    can't crowd out small ones), the remainder to sessions picked at random (so none is left out for good)."""
    present = sorted(set(sessions))
    if not present:
        return {}
    extra = set(rng.sample(present, count % len(present)))
    return {session: count // len(present) + (session in extra) for session in present}


def _draw(group: list[int], share: int, rng: random.Random) -> list[int]:
    return rng.sample(group, share) if share <= len(group) else [rng.choice(group) for _ in range(share)]


def _with_rest(picked: list[int], group: list[int], share: int, rng: random.Random) -> list[int]:
    """`picked`, then the rest of a session's `share` drawn uniformly from the group's other records."""
    taken = set(picked)
    rest = [p for p in group if p not in taken] or group
    return picked + _draw(rest, share - len(picked), rng)


def uniform_choice(sessions: Sequence[int], count: int, rng: random.Random) -> list[int]:
    """`count` pool positions, an equal share from each earlier session; without repeats while a session
    has records left."""
    chosen: list[int] = []
    for session, share in session_shares(sessions, count, rng).items():
        chosen += _draw([p for p, s in enumerate(sessions) if s == session], share, rng)
    return chosen


def targeted_choice(scores: dict[int, float], sessions: Sequence[int], count: int, rng: random.Random,
                    focus: float = TARGETED_SHARE) -> list[int]:
    """`count` pool positions, an equal share from each earlier session; within a session `focus` of its
    share goes to its lowest-scored records (weakest_logprobs), the rest is drawn
    uniformly from the others. Scores are compared within a session only: plain text always scores lower
    than answers, and would take every place otherwise."""
    chosen: list[int] = []
    for session, share in session_shares(sessions, count, rng).items():
        group = [p for p, s in enumerate(sessions) if s == session]
        scored = sorted((p for p in group if p in scores), key=lambda p: (scores[p], p))
        chosen += _with_rest(scored[:round(share * focus)], group, share, rng)
    return chosen


def nearest_choice(closeness: Sequence[float], sessions: Sequence[int], count: int, rng: random.Random,
                   focus: float = TARGETED_SHARE) -> list[int]:
    """`count` pool positions, an equal share from each earlier session; within a session `focus` of its share is
    drawn from its nearest quarter (`closeness`, nearness.py; at least that many records), the rest uniformly from
    the others, so that over the epochs every near record comes round."""
    chosen: list[int] = []
    for session, share in session_shares(sessions, count, rng).items():
        group = sorted((p for p, s in enumerate(sessions) if s == session), key=lambda p: (-closeness[p], p))
        focused = round(share * focus)
        near = group[:max(focused, len(group) // 4)]
        chosen += _with_rest(_draw(near, focused, rng) if focused else [], group, share, rng)
    return chosen


class ReplaySampler:
    """Every new example once per epoch plus `per_epoch` pool examples chosen by `choose(epoch)`, shuffled.

    Dataset positions: new examples first (0..new_count-1), then the pool. A torch Sampler by protocol
    (`__iter__`, `__len__`, `set_epoch`); the Trainer calls `set_epoch` before each epoch's iteration.
    """

    def __init__(self, new_count: int, per_epoch: int, choose: Callable[[int], list[int]], seed: int) -> None:
        self.new_count, self.per_epoch, self.choose, self.seed = new_count, per_epoch, choose, seed
        self.epoch = 0
        self.drawn: list[list[int]] = []  # pool positions replayed in each epoch, in order
        self.lengths: Sequence[int] | None = None  # per dataset position, to batch similar lengths together
        self.batch_size = 1

    def group_by_length(self, lengths: Sequence[int], batch_size: int) -> None:
        """Order each epoch as the Trainer's length-grouped sampler does (less padding), still shuffled."""
        self.lengths, self.batch_size = lengths, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.new_count + self.per_epoch

    def __iter__(self) -> Iterator[int]:
        import torch

        chosen = self.choose(self.epoch)[:self.per_epoch]
        self.drawn.append(chosen)
        order = list(range(self.new_count)) + [self.new_count + position for position in chosen]
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1  # for loaders that never call set_epoch
        if self.lengths is not None:
            from transformers.trainer_pt_utils import get_length_grouped_indices

            shuffled = get_length_grouped_indices([self.lengths[i] for i in order], self.batch_size,
                                                  generator=generator)
        else:
            shuffled = torch.randperm(len(order), generator=generator).tolist()
        return iter([order[i] for i in shuffled])


@dataclass(frozen=True)
class ReplayPlan:
    """How a session replays its earlier sessions' stored examples."""

    ratio: float  # pool examples per new example, each epoch
    select: str  # "targeted" | "uniform" | "nearest"
    draw: str  # "epoch": drawn afresh each epoch | "session": drawn once and repeated
    seed: int

    def __post_init__(self) -> None:
        if self.select not in ("targeted", "uniform", "nearest") or self.draw not in ("epoch", "session"):
            raise ValueError(f"unknown replay selection {self.select!r} / draw {self.draw!r}")


def make_sampler(plan: ReplayPlan, new_count: int, pool_sessions: Sequence[int],
                 score: Callable[[list[int]], list[float]], closeness: Sequence[float] = ()) -> ReplaySampler | None:
    """The session's replay sampler (None without a pool or budget); `score(positions)` gives the current
    model's score of those pool examples (weakest_logprobs: lower is closer to lost), `closeness` each pool
    example's nearness to this session's prompts (for `nearest`).

    Targeted replay keeps a table of scores: all of them at the first epoch (up to MAX_SCORED), then at each
    epoch those replayed in the last one and REFRESHED_PER_EPOCH others at random, so scoring costs a few
    forward passes per epoch instead of one per stored record.
    """
    per_epoch = replay_count(new_count, plan.ratio, len(pool_sessions))
    if per_epoch == 0:
        return None
    session_draw: list[int] = []
    scores: dict[int, float] = {}

    def choose(epoch: int) -> list[int]:
        if plan.draw == "session" and session_draw:
            return session_draw
        rng = random.Random(plan.seed * 7919 + epoch)
        if plan.select == "uniform":
            chosen = uniform_choice(pool_sessions, per_epoch, rng)
        elif plan.select == "nearest":
            chosen = nearest_choice(closeness, pool_sessions, per_epoch, rng)
        else:
            unscored = [p for p in range(len(pool_sessions)) if p not in scores]
            fresh = rng.sample(unscored, min(len(unscored), MAX_SCORED)) if not scores else \
                sorted(set(session_draw) | set(rng.sample(range(len(pool_sessions)),
                                                          min(len(pool_sessions), REFRESHED_PER_EPOCH))))
            scores.update(zip(fresh, score(fresh)))
            chosen = targeted_choice(scores, pool_sessions, per_epoch, rng)
        session_draw[:] = chosen
        return chosen

    return ReplaySampler(new_count, per_epoch, choose, plan.seed)


def weakest_logprobs(model, examples: Sequence[dict[str, Any]], pad_id: int, batch_size: int = 32) -> list[float]:
    """The log-probability of each tokenised example's (input_ids, labels) least likely label token, teacher-forced.

    Greedy recall fails at the first answer token the model no longer ranks first, so the weakest token says
    how close a record is to being lost; a mean over a long answer hides one weak token among easy ones
    (BENCHMARKS.md, "Forgetting and replay": 17 of 20 hardest-run facts kept against 12 with the mean)."""
    from .probe import label_scores

    scored = label_scores(model, [e["input_ids"] for e in examples], [e["labels"] for e in examples], pad_id,
                          batch_size)
    return [score.weakest for score in scored]


def distillation_positions(labels, attention_mask, replayed, where: str):
    """Which next-token positions (batch, length - 1) the distillation term covers: `where` is "answers"
    (replayed rows' target tokens), "replayed" (every token of replayed rows) or "all" (also the prompt
    tokens of new rows; their answers are what the session must change, so never those)."""
    from .scoring import IGNORE_INDEX

    real = attention_mask[:, 1:].bool()
    targets = labels[:, 1:] != IGNORE_INDEX
    old = replayed.bool()[:, None]
    if where == "answers":
        return targets & old
    if where == "replayed":
        return real & old
    return real & (old | ~targets)


def distillation_loss(student_logits, teacher_logits, positions):
    """KL(teacher || student) of the next-token distributions, averaged over `positions` (batch, length - 1)."""
    import torch.nn.functional as F

    if not positions.any():
        return student_logits.sum() * 0.0
    student = F.log_softmax(student_logits[:, :-1][positions].float(), dim=-1)
    teacher = F.log_softmax(teacher_logits[:, :-1][positions].float(), dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def freeze_bottom(model, layers: int) -> list[str]:
    """Freeze the input embeddings (and the position embeddings beside them) and the bottom `layers` blocks;
    returns the frozen parameter names. With tied input and output embeddings the output layer stays too."""
    import torch

    blocks = decoder_blocks(model)
    if layers > len(blocks):
        raise InputError(f"--freeze-layers {layers}: the model has only {len(blocks)} blocks")
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    modules = [model.get_input_embeddings()] + blocks[:layers]
    modules += [m for m in model.modules() if isinstance(m, torch.nn.Embedding)
                and not any(id(p) in in_blocks for p in m.parameters())]
    frozen = {id(p) for module in modules for p in module.parameters()}
    names = []
    for name, parameter in model.named_parameters():
        if id(parameter) in frozen:
            parameter.requires_grad_(False)
            names.append(name)
    return names


def weights_copy(model) -> dict[str, Any]:
    """A detached copy of the model's floating-point weights (the start point for interpolation)."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
            if tensor.is_floating_point()}


@dataclass
class Retention:
    """What a session does during training to keep earlier sessions' answers (the Trainer's view)."""

    sampler: Any = None  # a ReplaySampler over the new examples and the replay pool, or None
    teacher: Any = None  # the frozen start model, for distillation
    distill_weight: float = 0.0
    distill_on: str = "replayed"  # distillation_positions: answers | replayed | all
    replay_weight: float = 1.0  # a replayed row's token losses, against a new row's


@dataclass
class SessionRetention:
    """The retention levers of one session, ready for the Trainer."""

    pool_examples: list[dict[str, list[int]]]  # tokenised stored records of earlier sessions
    training: Retention  # sampler, teacher, distillation weight
    start_weights: dict[str, Any] | None  # for interpolation after training
    frozen: list[str]  # frozen parameter names
    per_epoch: int  # pool examples replayed each epoch
    sparse: Any = None  # --sparse-update: a SparseUpdate (sparse_update.py), or None
    null_space: Any = None  # --null-space: a NullSpace (null_space.py), or None

    @property
    def callbacks(self) -> list:
        """The TrainerCallbacks its levers need during training."""
        return [null_space_callback(self.null_space)] if self.null_space is not None else []


def prepare_retention(config, model, tokenizer, template, pool: dict[int, list], new_examples: Sequence[dict],
                      max_length: int, load_start: Callable[[], Any] | None = None,
                      new_records: Sequence = (), protected: Sequence = ()) -> SessionRetention:
    """Tokenise the replay pool and set up the sampler, the frozen layers or sparse update and the start-model copy
    (`config` is the session's TrainConfig; `pool` maps earlier session numbers to stored records; `new_examples`
    are this session's tokenised examples; `load_start` gives the session's start model when `model` is not it,
    as on --resume; `new_records` a sample of this session's records, for --replay-select nearest; `protected` the
    slices of records whose inputs --null-space keeps out of the session's changes)."""
    import copy

    from .tokenizing import tokenize_records

    frozen = freeze_bottom(model, config.freeze_layers) if config.freeze_layers else []
    new_count = len(new_examples)
    sessions = [number for number in sorted(pool) for _ in pool[number]]
    records = [record for number in sorted(pool) for record in pool[number]]
    examples = tokenize_records(records, tokenizer, template, max_length) if config.replay > 0 else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def score(positions: list[int]) -> list[float]:
        return weakest_logprobs(model, [examples[p] for p in positions], pad_id)

    plan = ReplayPlan(config.replay, config.replay_select, config.replay_draw, config.seed)
    nearest = config.replay_select == "nearest"
    closeness = nearness([asked(r) for r in records], [asked(r) for r in new_records]) if nearest else ()
    sampler = make_sampler(plan, new_count, sessions, score, closeness) if examples else None
    distilling = config.distill_weight > 0 and (sampler is not None or config.distill_on == "all")
    interpolating = config.interpolation_weight() != 1.0
    start = None
    if distilling or interpolating or (config.null_space and load_start is not None):
        start = load_start() if load_start is not None else copy.deepcopy(model)
        start.eval().requires_grad_(False)
    start_weights = weights_copy(start) if interpolating else None
    teacher = start if distilling else None
    sparse = restrict_updates(model, new_examples, config.sparse_update, config.seed) if config.sparse_update \
        else None
    kept_out = restrict_to_null_space(model, [tokenize_records(records, tokenizer, template, max_length)
                                              for records in protected],
                                      config.null_space, pad_id, start) if config.null_space and protected else None
    return SessionRetention(examples if sampler else [], Retention(sampler, teacher, config.distill_weight,
                                                                   config.distill_on, config.replay_weight),
                            start_weights, frozen, sampler.per_epoch if sampler else 0, sparse, kept_out)
