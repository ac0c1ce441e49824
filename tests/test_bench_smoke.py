"""Every bench still runs: `python bench/X.py --smoke` exits 0 and ends with its JSON line.

Nothing else runs the benches, so without this a change elsewhere breaks them silently (issue
19, defect 3). The benches are found by glob, so a new bench is covered without touching this
file. No timing is asserted: a smoke run's figures mean nothing. Marked slow (one Python
process per bench): `make test-fast` leaves them out, `make test` runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted(p for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))
SHARED = ROOT.parent / "shared" / "data"

# Keys each bench's JSON line must hold beyond "bench" and "smoke" (a bench not listed: only those two).
EXPECTED_KEYS = {
    "agent": {"agent_overhead_ratio", "client_overhead_ratio", "same_answers"},
    "calculator": {"tool_accuracy", "no_tool_accuracy", "tool_gain_ratio", "cpu_minutes"},
    "constrained": {"constraint_overhead_ratio", "outlines_speed_ratio"},
    "classify": {"test_acc", "sklearn_test_acc", "vs_sklearn_ratio"},
    "demo_quality": {"val_loss_gain", "time_ratio"},
    "engine_steps": {"b1_step_ms", "b8_step_ms"},
    "eval_harness": {"eval_speed_ratio", "identical_scores", "lyre_examples_s", "lm_eval_examples_s"},
    "finetune": {"val_loss_pretrained_masked", "val_loss_lora8", "masked_vs_unmasked_val_loss_ratio"},
    "generate": {"results", "b1_vs_hf_ratio"},
    "gpu_train": {"lyre_tok_s", "hf_tok_s", "lyre_vs_hf_ratio", "recipe_tok_s", "recipe_val_loss"},
    "loader": {"loader_speed_ratio", "identical_losses", "shards_tok_s", "single_file_tok_s"},
    "lora_peft": {"lyre_ms_per_step", "peft_ms_per_step", "lora_step_time_ratio"},
    "optimizer": {"presets"},
    "prepare": {"prepare_speed_ratio", "prepare_rss_ratio", "same_tokens", "lyre_tok_s", "peer_tok_s"},
    "rag_pg": {"peer_skipped", "n500"},
    "rag_retrieval": {"default_context_recall_heldout", "context_recall_ratio"},
    "rag_speed": {"index_speed_ratio", "query_speed_ratio"},
    "serve_load": {"levels"},
    "slide": {"batched_vs_per_row_ratio"},
    "tokenizer_speed": {"bpe_mb_s", "bpe_train_vs_hf_ratio"},
    "train_throughput": {"train_vs_hf_ratio", "lyre_tok_s", "hf_tok_s"},
    "zoo": {"val_loss", "gpt_vs_lstm_ratio", "seq2seq"},
}
# Benches whose only corpus is ../shared/data (the lyre checkout's sibling): skipped without it.
NEEDS_SHARED = {"classify", "finetune", "prepare", "rag_retrieval", "rag_speed"}


@pytest.mark.parametrize("bench", BENCHES, ids=lambda p: p.stem)
def test_bench_smoke(bench: Path, tmp_path: Path) -> None:
    name = bench.stem
    if name in NEEDS_SHARED and not SHARED.is_dir():
        pytest.skip(f"bench/{bench.name} needs the shared data at {SHARED}")
    # Not TMPDIR=tmp_path: rag_pg's PostgreSQL runs as another user, who cannot enter pytest's
    # private temporary folders; the benches clean their temporary folders up themselves.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(bench), "--smoke"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"bench/{bench.name} --smoke failed:\n{proc.stderr[-4000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    record = json.loads(last)
    assert isinstance(record, dict), last
    assert record.get("smoke") is True, f"bench/{bench.name} --smoke must say so in its JSON line: {last}"
    missing = ({"bench"} | EXPECTED_KEYS.get(name, set())) - set(record)
    assert not missing, f"bench/{bench.name}: keys {sorted(missing)} missing from {last}"
