"""ToolAlpaca (``tangqiaoyu/ToolAlpaca``: ``train_data.json``, ``eval_simulated.json``) to verl rows for the
``tool_use`` scorer.

Upstream row (one per API, each with its generated instances)::

    {"Name": str, "Description": str, "NLDocumentation": str, "Function_Description": {name: str, ...},
     "Instances": [{"input": str, "output": str, "Final Thought": str,
                    "intermediate_steps": [[[action, action_input_json, log], observation], ...]}, ...]}

One verl row per instance: the system message documents the API (``NLDocumentation``, else
``Function_Description``, else ``Documentation``) and the ReAct call format; the user message is the instance's
``input``. The ground truth is the JSON list of the instance's calls ``[{"name", "arguments"}, ...]`` in order
(what :func:`credit_plugin.scorers.tool_use.score_tool_use` compares). Malformed rows are indexed ``api`` or
``api.instance``.

Evaluation rows come from ``--val-src`` (ToolAlpaca's held-out tools) when given, else from a seeded hash of the
API name (``val_fraction`` of the APIs, so evaluation tools are unseen in training, as in ToolAlpaca). An
instance present in both sources (same API and input) is kept for evaluation only and counted in the report.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from credit_plugin.data.common import (
    MalformedRow,
    Report,
    chat,
    check_fraction,
    convert_rows,
    require_text,
    stable_fraction,
    verl_row,
)

DATA_SOURCE = "toolalpaca"
CALL_FORMAT = (
    "To call a function, write\n"
    "Action: <function name>\n"
    "Action Input: <JSON object with the arguments>\n"
    "Make every call the request needs, in order, one Action / Action Input pair per call."
)


def _documentation(api: Mapping[str, Any]) -> str:
    text = api.get("NLDocumentation")
    if isinstance(text, str) and text.strip():
        return text.strip()
    functions = api.get("Function_Description")
    if isinstance(functions, Mapping) and functions:
        return "\n".join(f"{name}: {description}" for name, description in functions.items())
    text = api.get("Documentation")
    if isinstance(text, str) and text.strip():
        return text.strip()
    raise MalformedRow("no documentation (NLDocumentation, Function_Description or Documentation)")


def _calls(steps: Any) -> list[dict[str, Any]]:
    """The reference calls ``[{"name", "arguments"}]`` of an instance's ``intermediate_steps``."""
    if not isinstance(steps, list) or not steps:
        raise MalformedRow("intermediate_steps is missing or empty: no reference call")
    calls = []
    for number, step in enumerate(steps):
        action = step[0] if isinstance(step, list | tuple) and step else None
        if not isinstance(action, list | tuple) or len(action) < 2 or not isinstance(action[0], str):
            raise MalformedRow(f"intermediate_steps[{number}] is not [[action, action_input, log], observation]")
        name, arguments = action[0].strip(), action[1]
        if not name:
            raise MalformedRow(f"intermediate_steps[{number}] has an empty action name")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError as exc:
                raise MalformedRow(f"intermediate_steps[{number}] action input is not JSON ({exc})") from None
        if not isinstance(arguments, dict):
            raise MalformedRow(f"intermediate_steps[{number}] action input is not a JSON object")
        calls.append({"name": name, "arguments": arguments})
    return calls


def _instances(rows: list[dict], report: Report) -> Iterator[tuple[str, dict]]:
    """``(index, instance + its API)`` for every instance; an API row without usable fields is malformed."""
    for api_index, api in enumerate(rows):
        try:
            name = require_text(api, "Name")
            documentation = _documentation(api)
            instances = api.get("Instances")
            if not isinstance(instances, list) or not instances:
                raise MalformedRow("field 'Instances' is missing or empty")
        except MalformedRow as reason:
            report.add_malformed(str(api_index), str(reason))
            continue
        system = f"You can use the API {name}. {str(api.get('Description', '')).strip()}\n\n{documentation}"
        for number, instance in enumerate(instances):
            if not isinstance(instance, Mapping):
                report.add_malformed(f"{api_index}.{number}", "instance is not an object")
                continue
            yield f"{api_index}.{number}", {"api": name, "system": f"{system}\n\n{CALL_FORMAT}", **instance}


def convert_row(instance: Mapping[str, Any]) -> dict[str, Any]:
    """One instance (``api`` and ``system`` added by :func:`_instances`) to a verl row; MalformedRow if unusable."""
    user = require_text(instance, "input")
    calls = _calls(instance.get("intermediate_steps"))
    return verl_row(
        data_source=DATA_SOURCE,
        prompt=chat(user, system=instance["system"]),
        ability="tool_use",
        ground_truth=json.dumps(calls, ensure_ascii=False),
        extra_info={"api": instance["api"]},
    )


def _key(row: dict) -> tuple[str, str]:
    return row["extra_info"]["api"], row["prompt"][-1]["content"]


def convert(
    rows: list[dict],
    report: Report,
    val_rows: list[dict] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Train and test rows; held-out APIs (or ``val_rows``) only in test."""
    check_fraction("val_fraction", val_fraction)
    converted = list(convert_rows(_instances(rows, report), convert_row, report))
    if val_rows is None:
        test = [row for row in converted if stable_fraction(row["extra_info"]["api"], seed) < val_fraction]
        train = [row for row in converted if stable_fraction(row["extra_info"]["api"], seed) >= val_fraction]
    else:
        val_report = Report(task=f"{report.task} --val-src", on_malformed=report.on_malformed)
        test = list(convert_rows(_instances(val_rows, val_report), convert_row, val_report))
        report.malformed += [(f"val:{index}", reason) for index, reason in val_report.malformed]
        report.converted += val_report.converted
        held_out = {_key(row) for row in test}
        train = [row for row in converted if _key(row) not in held_out]
        if len(train) < len(converted):
            report.filtered["train instance also in --val-src (kept for evaluation only)"] += len(converted) - len(
                train
            )
    for split, split_rows in (("train", train), ("test", test)):
        for index, row in enumerate(split_rows):
            row["extra_info"].update(split=split, index=index)
    return {"train": train, "test": test}
