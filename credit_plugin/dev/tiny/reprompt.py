"""The tiny task's teacher contexts: CREDIT's default reprompt of a problem with a sibling's correct answer or
the verifier's feedback on a wrong one. Used by the tokenizer (fitted to text with reprompts) and by the model's
pre-training; a module of its own so that neither of those imports the other for it."""

from __future__ import annotations

import random

from credit_plugin.config import DEFAULT_FEEDBACK_TEMPLATE, DEFAULT_REPROMPT_TEMPLATE, DEFAULT_SOLUTION_TEMPLATE
from credit_plugin.dev.tiny.task import DATA_SOURCE, Problem, compute_score


def wrong_answer(problem: Problem, rng: random.Random) -> str:
    """A random wrong answer (off by a little, or the items shuffled, sometimes one dropped)."""
    if problem.kind == "arithmetic":
        return str(int(problem.answer) + rng.choice((-3, -2, -1, 1, 2, 3)))
    items = problem.answer.split()
    rng.shuffle(items)
    return " ".join(items[:-1] if rng.random() < 0.3 else items)


def reprompt_text(problem: Problem, rng: random.Random) -> str:
    """CREDIT's default reprompt of ``problem`` with a sibling's correct answer or the feedback on a wrong one."""
    solution = feedback = ""
    if rng.random() < 0.5:
        solution = DEFAULT_SOLUTION_TEMPLATE.format(successful_previous_attempt=f"Answer: {problem.answer}")
    else:
        extra_info = {"kind": problem.kind, "question": problem.question}
        result = compute_score(DATA_SOURCE, f"Answer: {wrong_answer(problem, rng)}", problem.answer, extra_info)
        # A shuffle can leave the items in order; that attempt is then a success, not a feedback example.
        if result["feedback"]:
            feedback = DEFAULT_FEEDBACK_TEMPLATE.format(feedback_raw=result["feedback"])
    return DEFAULT_REPROMPT_TEMPLATE.format(prompt=problem.prompt, solution=solution, feedback=feedback)
