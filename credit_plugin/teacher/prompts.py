"""Teacher prompts: each sample's chat messages with SDPO's reprompt, rendered as rollout renders, and truncation.

- ``{prompt}`` is the content of the last user turn of ``raw_prompt``; the reprompt replaces that content, every
  other message (system prompt included) is kept. A contrast variant of sample ``i`` with negative row ``j``
  (``credit.contrast_swap``): ``prompt`` takes row ``j``'s messages, the reprompt (``j``'s question, ``i``'s
  solution and feedback) in ``j``'s last user turn; ``question`` keeps ``i``'s messages and swaps in only ``j``'s
  question. :meth:`TeacherPrompts.swapped` renders the same swapped input without context (the student side).
- Rendering is the rollout's: the chat template (with ``apply_chat_template_kwargs``) to text, then ids without
  extra special tokens.
- ``max_reprompt_len`` bounds the prompt part of every row that carries a teacher context. To keep the chat
  template, its generation prompt and the question itself intact, only the *solution and feedback text* is
  truncated, by tokens (``right`` keeps its start, ``left`` its end), once per sample so that all variants of a
  sample carry the identical context; the budget is set by the longest of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from credit_plugin.config import CreditConfig


def _last_user_turn(messages: Sequence[Mapping[str, Any]], sample: int) -> int:
    for turn in range(len(messages) - 1, -1, -1):
        if messages[turn].get("role") == "user":
            if not isinstance(messages[turn].get("content"), str):
                raise ValueError(
                    f"raw_prompt of sample {sample}: the last user turn has non-text content "
                    f"({type(messages[turn].get('content')).__name__}); multimodal prompts are not supported"
                )
            return turn
    raise ValueError(f"raw_prompt of sample {sample} has no user turn: roles {[m.get('role') for m in messages]}")


def _with_user_content(messages: Sequence[Mapping[str, Any]], turn: int, content: str) -> list[dict[str, Any]]:
    out = [dict(message) for message in messages]
    out[turn]["content"] = content
    return out


def reprompt_content(config: CreditConfig, question: str, solution: str | None, feedback: str | None) -> str:
    """SDPO's reprompt: the question, the solution block, the feedback block (each empty when absent)."""
    return config.reprompt_template.format(
        prompt=question,
        solution="" if solution is None else config.solution_template.format(successful_previous_attempt=solution),
        feedback="" if feedback is None else config.feedback_template.format(feedback_raw=feedback),
    )


def _keep_tokens(ids: list[int], keep: int, side: str) -> list[int]:
    return ids[:keep] if side == "right" else ids[len(ids) - keep :]


class TeacherPrompts:
    """Renders the teacher prompts of one batch.

    Args:
        raw_prompt: length B, each sample's chat messages as verl stores them.
        has_context: length B, whether the sample gets a reprompt (else its plain question).
        tokenizer: the rollout tokenizer with its chat template.
        config: the ``credit:`` options (templates, ``max_reprompt_len``, ``reprompt_truncation``).
        chat_template_kwargs: the rollout's ``data.apply_chat_template_kwargs``.
    """

    def __init__(
        self,
        raw_prompt: Sequence[Sequence[Mapping[str, Any]]],
        has_context: Sequence[bool],
        tokenizer: PreTrainedTokenizerBase,
        config: CreditConfig,
        chat_template_kwargs: Mapping[str, Any] | None,
    ):
        self.raw_prompt = raw_prompt
        self.has_context = list(has_context)
        self.tokenizer = tokenizer
        self.config = config
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.swap = config.contrast_swap
        self.turns = [_last_user_turn(messages, index) for index, messages in enumerate(raw_prompt)]
        self.questions = [raw_prompt[index][turn]["content"] for index, turn in enumerate(self.turns)]

    def conversation(
        self, index: int, source: int, solution: str | None, feedback: str | None, context: bool | None = None
    ) -> list[dict]:
        """Sample ``index``'s teacher input with row ``source`` as its input: row ``source``'s messages
        (``contrast_swap: prompt``) or sample ``index``'s with row ``source``'s question (``question``), and the
        given solution and feedback when sample ``index`` has a context (or ``context`` says so)."""
        content = self.questions[source]
        if self.has_context[index] if context is None else context:
            content = reprompt_content(self.config, content, solution, feedback)
        messages = source if self.swap == "prompt" else index
        return _with_user_content(self.raw_prompt[messages], self.turns[messages], content)

    def swapped(self, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
        """Token ids of each ``(index, source)`` input without any context: the other input of a contrast variant
        exactly as the teacher sees it, for the student side of ``contrast_form: pmi``."""
        conversations = [self.conversation(index, source, None, None, context=False) for index, source in pairs]
        return self._render(conversations)

    def render(self, requests: Sequence[tuple[int, int, str | None, str | None]]) -> list[list[int]]:
        """Token ids of each ``(index, source, solution, feedback)`` conversation, rendered in one batch exactly
        as rollout does it (chat template to text, then ids without extras)."""
        return self._render([self.conversation(*request) for request in requests])

    def _render(self, conversations: list[list[dict]]) -> list[list[int]]:
        if not conversations:
            return []
        texts = self.tokenizer.apply_chat_template(
            conversations,
            tokenize=False,
            add_generation_prompt=True,
            **self.chat_template_kwargs,
        )
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def truncate(
        self, index: int, sources: list[int], solution: str | None, feedback: str | None, longest: int
    ) -> list[list[int]]:
        """Cut sample ``index``'s solution and feedback text (as one token stream) until all its variants (one per
        question row of ``sources``) fit ``max_reprompt_len``; ``longest`` is the longest variant uncut.

        Re-tokenising decoded text can shift counts at the cut by a token or two, so the cut is re-measured
        and tightened until the longest variant fits; ``keep`` strictly decreases, so this terminates.
        """
        tokenizer, limit, side = self.tokenizer, self.config.max_reprompt_len, self.config.reprompt_truncation
        solution_ids = tokenizer(solution or "", add_special_tokens=False)["input_ids"]
        feedback_ids = tokenizer(feedback or "", add_special_tokens=False)["input_ids"]
        stream = solution_ids + feedback_ids
        keep = len(stream) - (longest - limit)
        while keep >= 0:
            kept = _keep_tokens(stream, keep, side)
            # positions of the kept tokens in the stream tell which part each came from
            start = 0 if side == "right" else len(stream) - len(kept)
            cut = max(0, min(len(solution_ids) - start, len(kept)))
            new_solution = None if solution is None else tokenizer.decode(kept[:cut])
            new_feedback = None if feedback is None else tokenizer.decode(kept[cut:])
            prompts = self.render([(index, source, new_solution, new_feedback) for source in sources])
            longest = max(len(ids) for ids in prompts)
            if longest <= limit:
                return prompts
            keep -= longest - limit
        raise ValueError(
            f"teacher prompt of sample {index} does not fit credit.max_reprompt_len={limit} even with its solution "
            f"and feedback text removed ({longest} tokens of prompt and templates); raise credit.max_reprompt_len"
        )
