"""What every scorer returns, and the text helpers that keep feedback short and about the final answer."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_FEEDBACK_CHARS = 2000
_TRUNCATION_MARK = "\n[... feedback truncated]"


@dataclass(frozen=True)
class ScoreResult:
    """One scored response.

    Attributes:
        score: the scalar reward (verl's ``reward_score``).
        acc: whether the response is fully correct.
        feedback: text for the teacher's context; ``""`` when the response is fully correct
            (a correct response needs no environment feedback) and never longer than the
            scorer's ``max_feedback_chars``.
    """

    score: float
    acc: bool
    feedback: str

    def as_dict(self) -> dict:
        return {"score": self.score, "acc": self.acc, "feedback": self.feedback}


def check_max_feedback_chars(max_feedback_chars: int) -> None:
    if not isinstance(max_feedback_chars, int) or max_feedback_chars <= 0:
        raise ValueError(f"max_feedback_chars must be a positive int, got {max_feedback_chars!r}")


def truncate_feedback(text: str, max_feedback_chars: int) -> str:
    """Cut ``text`` to at most ``max_feedback_chars`` characters, marking the cut."""
    check_max_feedback_chars(max_feedback_chars)
    if len(text) <= max_feedback_chars:
        return text
    if max_feedback_chars <= len(_TRUNCATION_MARK):
        return text[:max_feedback_chars]
    return text[: max_feedback_chars - len(_TRUNCATION_MARK)] + _TRUNCATION_MARK


def clip(text: str, max_chars: int, *, keep: str = "head") -> str:
    """Shorten one quoted field (a test input, an output, a traceback) so several fit in the feedback.

    ``keep="tail"`` keeps the end, where a traceback's exception message is.
    """
    if len(text) <= max_chars:
        return text
    dropped = f"[... {len(text) - max_chars} more chars]"
    return text[:max_chars] + dropped if keep == "head" else dropped + text[-max_chars:]


def final_answer_text(response: str) -> str:
    """The part of a response after its reasoning: text after the last ``</think>`` if there is one.

    Reasoning models (Qwen3 with thinking) often get ``<think>`` from the chat template's generation
    prompt, so only the closing tag reliably appears in the response.
    """
    _, sep, after = response.rpartition("</think>")
    return after if sep else response
