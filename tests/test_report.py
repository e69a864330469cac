"""The credit report page: content from records and metrics, and rendered in a real headless browser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from report_browser import CHROMIUM, SKIP_REASON, ProxyTrap, chromium

from credit_plugin.config import CreditConfig
from credit_plugin.report import colour, latest_per_sample, main, pick_steps, render, write_report
from credit_plugin.token_records import TokenScores, append_records, build_records

TOKENS = ["Answer", ":", " 1", " 2", " 3", "<|im_end|>"]


def _records(step: int) -> list[dict]:
    """Two samples of one step as the trainer writes them (build_records), with clear SDPO/CREDIT contrasts."""
    width = len(TOKENS)
    teacher = torch.tensor([[-0.1, -0.2, -0.5, -0.4, -0.3, -0.1], [-2.0, -1.0, -3.0, -2.0, -1.0, -0.5]])
    student = torch.full((2, width), -1.0)
    baseline = torch.tensor([[-0.1, -0.2, -1.5, -1.4, -1.3, -0.1], [-2.0, -1.0, -3.0, -2.0, -1.0, -0.5]])
    sdpo = teacher - student
    credit = sdpo - 0.25 * (baseline - student)
    scores = TokenScores(teacher, student, baseline, sdpo, credit, credit, torch.ones(2, width), torch.ones(2))
    return build_records(
        step=step,
        rows=[0, 1],
        scores=scores,
        uids=["u0", "u1"],
        outcome=torch.tensor([1.0, 0.0]),
        tokens=[TOKENS, TOKENS],
        token_ids=[list(range(width))] * 2,
        prompts=["user: Sort the digits: 3 1 2.", "user: Sort the digits: <b>9 8</b>."],
        feedback=[None, "Your answer is wrong at position 1."],
        solutions=["Answer: 1 2 3", None],
        credit=CreditConfig(token_records=2),
    )


@pytest.fixture
def run_dir(tmp_path) -> Path:
    for step in (1, 2, 3):
        append_records(tmp_path, _records(step))
    append_records(tmp_path, _records(3))  # a resumed run records step 3 again
    metrics = [
        {
            "step": step,
            "data": {"critic/score/mean": 0.2 * step, "credit/generic_share": 0.5, "actor/entropy": 1 / step},
        }
        for step in (1, 2, 3)
    ]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(record) + "\n" for record in metrics) + '{"step": 4, "da'
    )
    return tmp_path


def test_page_holds_both_columns_plots_and_no_external_reference(run_dir, capsys):
    main([str(run_dir)])
    page_path = Path(capsys.readouterr().out.strip())
    assert page_path == run_dir / "credit_report.html"
    page = page_path.read_text()
    assert page.count('class="step') == 3 and 'data-step="3"' in page  # steps 1..3, the repeated one once
    assert page.count('data-key="sdpo"') == 3 * 2 * len(TOKENS) and page.count('data-key="credit"') == 3 * 2 * len(
        TOKENS
    )
    assert page.count("<svg") == 3  # the three logged metrics; the cut last line is skipped
    assert "generic share" in page and "training reward" in page
    assert "&lt;b&gt;9 8&lt;/b&gt;" in page and "<b>9 8</b>" not in page  # texts are escaped
    assert "Your answer is wrong at position 1." in page and "Answer: 1 2 3" in page
    # self-contained: no URL, no stylesheet or script fetched from anywhere
    assert not re.search(r"(src|href)\s*=", page)
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_sdpo_tokens_coloured_green_for_credit_red_for_debit():
    assert colour(1.0, 2.0).startswith("rgba(20,150,60") and colour(-1.0, 2.0).startswith("rgba(210,40,40")
    assert colour(None, 2.0) == "transparent"
    page = render(_records(1), [], "t")
    # token " 1" of sample 0: SDPO +0.5 (credit), CREDIT 0.5 - 0.25 * -0.5 = +0.625
    spans = re.findall(r'data-key="(sdpo|credit)" data-index="2" style="background:rgba\((\d+),', page)
    assert spans[:2] == [("sdpo", "20"), ("credit", "20")]
    assert "SDPO +0.500" in page and "CREDIT +0.625" in page
    assert page.count("<svg") == 2  # no metrics file: the recorded SDPO and CREDIT rewards per step


def test_steps_are_thinned_keeping_first_and_last_and_resumed_steps_dedupe():
    assert pick_steps(list(range(1, 101)), 5) == [1, 26, 51, 75, 100]
    assert pick_steps([1, 2], 5) == [1, 2] and pick_steps([1, 2, 3], 1) == [3]
    assert len(latest_per_sample(_records(1) + _records(1))) == 2


def test_a_folder_without_records_or_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="credit.token_records=N"):
        write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        write_report(tmp_path / "missing")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_page_renders_in_headless_chromium_without_network(run_dir, tmp_path):
    page = write_report(run_dir)
    trap, control = ProxyTrap(), ProxyTrap()
    try:
        dom = chromium(page, "--dump-dom", proxy_port=trap.port)
        shot = tmp_path / "credit_report.png"
        snap = chromium(page, f"--screenshot={shot}", proxy_port=trap.port)
        # negative control: the same page with one external image does reach its trap
        leaky = tmp_path / "leaky.html"
        leaky.write_text(page.read_text().replace("<body>", '<body><img src="http://example.invalid/x.png">'))
        chromium(leaky, "--dump-dom", proxy_port=control.port)
    finally:
        trap.close()
        control.close()
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert snap.returncode == 0, snap.stderr[-2000:]
    # the DOM after the page's script ran: the last step shown, its tokens in both columns
    assert re.search(r'class="step shown" data-step="3"', dom.stdout)
    assert dom.stdout.count('data-key="credit"') == 3 * 2 * len(TOKENS)
    assert ">Answer</span>" in dom.stdout
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(b"example.invalid" in request for request in control.page_requests()), (
        "the trap must see the leaky page's request, else it proves nothing"
    )
    assert trap.page_requests() == [], "the report page made a network request"
