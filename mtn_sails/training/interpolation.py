"""WiSE-FT after training (--interpolate): the trained weights moved back towards the session's start, with a
weight given or chosen from the probe recall of earlier and new answers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..data.records import Record
from ..model_dir.session_record import SessionRecord
from .base_answers import BASE_SESSION, BaseAnswers
from .retention import weights_copy

ALPHAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)  # interpolation weights tried by --interpolate auto
NEW_RECALL_TOLERANCE = 0.05  # auto interpolation may give up this much of the new session's recall


def interpolate(model, start: dict[str, Any], trained: dict[str, Any], alpha: float) -> None:
    """Set the model's weights to (1 - alpha) * start + alpha * trained, in place (WiSE-FT)."""
    import torch

    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in start:
                # LoRA's B starts at zero, so scaling B alone scales the merged update B·A by alpha;
                # interpolating A as well would give alpha·B·((1 - alpha)·A_start + alpha·A) instead.
                weight = 1.0 if "lora_A." in name else alpha
                tensor.copy_(start[name] + weight * (trained[name] - start[name]))


@dataclass(frozen=True)
class AlphaTrial:
    """Probe recall of the model interpolated with weight `alpha`."""

    alpha: float
    kept: float | None  # the earlier sessions' mean recall now / right after their own session (None: no probes)
    new_recall: float | None  # this session's probe recall


def choose_alpha(trials: Sequence[AlphaTrial], tolerance: float = NEW_RECALL_TOLERANCE) -> float:
    """The interpolation weight: the one keeping most of the earlier answers among those whose new-session
    recall is within `tolerance` of the best; ties go to the larger alpha (less change to what was trained)."""
    if not trials:
        return 1.0
    best_new = max((t.new_recall for t in trials if t.new_recall is not None), default=None)
    allowed = [t for t in trials if best_new is None or (t.new_recall is not None
                                                          and t.new_recall >= best_new - tolerance)]
    if all(t.kept is None for t in allowed):
        return max(t.alpha for t in allowed)
    return max(allowed, key=lambda t: (t.kept if t.kept is not None else -1.0, t.alpha)).alpha


def settle_interpolation(model, tokenizer, template, start_weights: dict[str, Any], weight: float | None,
                         earlier_probes: dict[int, list], recall_before: dict[int, float | None],
                         new_probe: list) -> float:
    """Interpolate the trained model towards its start with `weight`, or (None) with the weight
    `choose_alpha` picks from probe recall at each of ALPHAS; returns the weight applied."""
    from .probe import score_probe

    trained = weights_copy(model)
    if weight is not None:
        interpolate(model, start_weights, trained, weight)
        return weight
    trials = []
    for alpha in ALPHAS:
        interpolate(model, start_weights, trained, alpha)
        recalls = [(score_probe(model, tokenizer, template, records).recall, recall_before[number])
                   for number, records in earlier_probes.items() if records and recall_before.get(number)]
        kept = [now / before for now, before in recalls if now is not None]
        new = score_probe(model, tokenizer, template, new_probe).recall if new_probe else None
        trials.append(AlphaTrial(alpha, sum(kept) / len(kept) if kept else None, new))
        if not kept or (new is not None and trials[0].new_recall is not None
                        and new < trials[0].new_recall - NEW_RECALL_TOLERANCE):
            break  # nothing earlier to protect, or smaller weights would lose the new answers too
    chosen = choose_alpha(trials)
    interpolate(model, start_weights, trained, chosen)
    return chosen


def protected_probes(stored: dict[int, list[Record]], history: list[SessionRecord], base: BaseAnswers | None
                     ) -> tuple[dict[int, list[Record]], dict[int, float | None]]:
    """The probes auto interpolation protects, by session number, and each one's recall right after its own
    session: every earlier session's and the base's (session 0, from session 1 on)."""
    probes = {number: records for number, records in stored.items() if number != BASE_SESSION}
    recall_before = {record.session: record.recall for record in history}
    if base is not None:
        probes[BASE_SESSION], recall_before[BASE_SESSION] = base.probe, base.score.recall
    return probes, recall_before
