"""What a session tells the user about itself: an earlier session on the same file, and the summary at the end
(metrics, the forgetting table, lost answers, where the previous model was kept)."""
from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from ..console import say
from ..model_dir.history_table import forgetting_measures, forgetting_table, session_metrics
from ..model_dir.session_record import SessionRecord
from .forgetting import lost_answers, retention_advice


def say_if_trained_before(history: list[SessionRecord], data_sha256: str) -> None:
    """Continuing on a file an earlier session trained on goes on, but says so."""
    earlier = [str(s.session) for s in history if s.data_sha256 == data_sha256]
    if earlier:
        say(f"ℹ️  this file was trained in session{'s' * (len(earlier) > 1)} {', '.join(earlier)}; "
            "training on it again weighs its records twice")

def phase_summary(phase_s: dict[str, float]) -> str:
    """The phases that took a second or more, longest first: `session 0 72.0 s · train 30.1 s`."""
    timed = sorted(((seconds, name) for name, seconds in phase_s.items() if seconds >= 1.0), reverse=True)
    return " · ".join(f"{name.replace('_', ' ')} {seconds:.1f} s" for seconds, name in timed) or "under a second each"


def report_session(session: SessionRecord, output_dir: Path, backup_dir: Path | None, config: TrainConfig) -> None:
    """The end-of-session summary: metrics, forgetting table, lost answers, where things are."""
    say(f"✅ Session {session.session} saved to {output_dir} ({session_metrics(session)}, "
        f"{session.duration_s} s)")
    if session.phase_s:
        say(f"⏱️  Where the time went: {phase_summary(session.phase_s)}")
    rows = forgetting_table(session)
    if rows:
        say(f"📊 Forgetting ({forgetting_measures(session)} of earlier sessions, then -> now):")
        for row in rows:
            say(row)
    for row in lost_answers(session.forgetting, config.keep_threshold):
        who = "The base lost its own answers to general prompts" if row.session == 0 \
            else f"Session {row.session} lost answers"
        say(f"⚠️  {who}: recall {row.recall_before:.2f} -> {row.recall_after:.2f} "
            f"(keeps {row.kept:.0%}, under {config.keep_threshold:.0%}); "
            f"{retention_advice(config.replay, row.session == 0, session.session == 1, config.null_space)}")
    if backup_dir is not None:
        say(f"💾 The previous contents of {output_dir} were kept at {backup_dir}")
