"""Reading token shards and the streaming loader (lyre/data/shards.py, loader.py), and training
on a prepared directory: exact resume, document-aligned windows, one rank's rows, old layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_util import records
from test_data import to_old_layout
from test_prepare import DOCS, write_jsonl

from lyre.core.errors import LyreError
from lyre.data.corpus import evaluate_loss, get_batch, load_split, prepare
from lyre.data.loader import WindowLoader
from lyre.data.shards import DTYPES, Tokens
from lyre.train.trainer import train


def shards_of(tmp_path: Path, sizes: list[int]) -> tuple[Tokens, np.ndarray]:
    """A split of shards of these sizes, value == position: easy to check."""
    whole = np.arange(sum(sizes), dtype="<u2")
    paths, start = [], 0
    for i, n in enumerate(sizes):
        path = tmp_path / f"train_{i:06d}.bin"
        whole[start : start + n].tofile(path)
        paths.append(path)
        start += n
    return Tokens(paths, DTYPES["uint16"]), whole


def test_tokens_read_across_shards(tmp_path):
    tokens, whole = shards_of(tmp_path, [10, 3, 1, 25])
    assert len(tokens) == 39 and tokens.shape == (39,)
    for a in range(39):
        for b in range(a, 40):
            np.testing.assert_array_equal(tokens[a:b], whole[a:b])
    assert tokens[12] == 12 and tokens[-1] == 38
    np.testing.assert_array_equal(np.asarray(tokens), whole)
    assert tokens.locate(13) == (2, 0) and tokens.locate(14) == (3, 0) and tokens.locate(5) == (0, 5)
    with pytest.raises(IndexError):
        tokens[39]


def test_the_loader_draws_what_get_batch_draws_over_the_concatenation(tmp_path):
    tokens, whole = shards_of(tmp_path, [100, 7, 300])
    a = WindowLoader(tokens, 16, torch.Generator().manual_seed(5)).draw(32)
    b = get_batch(whole, 32, 16, torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    x, y = a
    assert torch.equal(y, x + 1)  # windows cross shard boundaries as one stream


def test_each_rank_reads_only_its_rows_and_they_are_disjoint(tmp_path):
    tokens, _ = shards_of(tmp_path, [500, 500])
    world, rows = 3, 4
    whole = WindowLoader(tokens, 8, torch.Generator().manual_seed(1)).draw(rows * world)[0]
    for rank in range(world):
        part = slice(rank * rows, (rank + 1) * rows)
        loader = WindowLoader(tokens, 8, torch.Generator().manual_seed(1))
        x, _ = loader.draw(rows * world, part=part)
        assert torch.equal(x[part], whole[part])
        others = torch.ones(rows * world, dtype=torch.bool)
        others[part] = False
        assert (x[others] == 0).all()  # not read: another process's rows
    starts = whole[:, 0].tolist()
    assert len(set(starts)) == len(starts)  # the ranks' windows differ


def test_document_aligned_windows_start_with_bos(tmp_path):
    meta = prepare([write_jsonl(tmp_path / "a.jsonl", DOCS)], "char", tmp_path / "out",
                   shard_tokens=500)
    eot = meta["eot_id"]
    tokens = load_split(tmp_path / "out", "train")
    loader = WindowLoader(tokens, 24, torch.Generator().manual_seed(0), align="document", bos_id=eot)
    starts = set(np.flatnonzero(np.asarray(tokens) == eot).tolist())
    seen = set()
    for _ in range(20):
        x, y = loader.draw(8)
        assert (x[:, 0] == eot).all()
        assert torch.equal(x[:, 1:], y[:, :-1])
        seen.add(loader.last)
        assert loader.last in starts
    assert len(seen) > 10
    shard = loader.position()["shard"]
    assert shard.startswith("train_") and shard.endswith(".bin")


def test_sequential_order_reads_the_split_window_after_window(tmp_path):
    tokens, whole = shards_of(tmp_path, [50, 33])  # 83 tokens: 10 windows of 8 (+1)
    loader = WindowLoader(tokens, 8, torch.Generator(), order="sequential")
    x, y = loader.draw(4)
    assert x[:, 0].tolist() == [0, 8, 16, 24] and torch.equal(y, x + 1)
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["next_window"] == 4 and state["passes"] == 0
    assert state["shard"] == "train_000000.bin" and state["offset"] == 24
    x, _ = loader.draw(8)  # windows 4..9, then a new pass from 0
    assert x[:, 0].tolist() == [32, 40, 48, 56, 64, 72, 0, 8] and loader.passes == 1
    assert loader.position() == {"shard": "train_000000.bin", "offset": 8}
    again = WindowLoader(tokens, 8, torch.Generator(), order="sequential")
    again.load_state_dict(state)
    assert again.draw(8)[0][:, 0].tolist() == [32, 40, 48, 56, 64, 72, 0, 8]
    with pytest.raises(LyreError, match="data.order must be one of random, sequential"):
        WindowLoader(tokens, 8, torch.Generator(), order="shuffled")


def test_document_alignment_needs_documents(tmp_path):
    tokens = np.arange(100, dtype=np.uint16) % 7
    with pytest.raises(LyreError, match="found no document that begins with"):
        WindowLoader(tokens, 8, torch.Generator(), align="document", bos_id=99)
    with pytest.raises(LyreError, match="data.align must be one of none, document"):
        WindowLoader(tokens, 8, torch.Generator(), align="sentence")


class Table(torch.nn.Module):
    """A bigram table with the GPT forward contract."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(vocab, vocab)

    def forward(self, idx, targets=None):
        return self.table(idx), None


def test_evaluation_over_shards_equals_one_array(tmp_path):
    tokens, whole = shards_of(tmp_path, [60, 45, 90])
    torch.manual_seed(0)
    model = Table(200)
    a = evaluate_loss(model, tokens, 16, stride=8)
    assert a == evaluate_loss(model, whole, 16, stride=8) and a["tokens"] == len(whole) - 1


# ---------------------------------------------------------------------------------------------
# Training on a prepared directory


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    prepare([write_jsonl(root / "a.jsonl", DOCS)], "char", root / "data", shard_tokens=1500)
    return root / "data"


STEPS = ("train.max_iters=8", "train.eval_interval=4", "train.eval_windows=4", "dropout=0.1")


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in records(run_dir) if "loss" in r]


@pytest.mark.parametrize(("align", "order"), [("none", "random"), ("document", "random"),
                                              ("none", "sequential"), ("document", "sequential")])
def test_resume_on_shards_continues_on_the_exact_batch(tmp_path, tiny_config, prepared, align, order):
    config = (f"data.data_dir='{prepared.as_posix()}'", f"data.align={align}", f"data.order={order}",
              *STEPS)
    straight = tmp_path / "straight"
    train(tiny_config(*config), straight, progress=False, plot=False)
    split = tmp_path / "split"
    first = train(tiny_config(*config), split, stop_at=4, progress=False, plot=False)
    assert first.step == 4
    # A fresh Trainer from the checkpoint alone.
    resumed = train(None, split, resume=True, progress=False, plot=False)
    assert resumed.step == 8
    assert losses(split) == losses(straight) and len(losses(split)) == 8
    assert records(split) == records(straight)


def test_document_alignment_changes_the_batches(tmp_path, tiny_config, prepared):
    runs = {}
    for align in ("none", "document"):
        runs[align] = tmp_path / align
        train(tiny_config(f"data.data_dir='{prepared.as_posix()}'", f"data.align={align}", *STEPS),
              runs[align], progress=False, plot=False)
    assert losses(runs["none"]) != losses(runs["document"])


def test_a_directory_of_the_old_layout_still_trains(tmp_path, tiny_config, tiny_corpus):
    data = tmp_path / "old"
    prepare([tiny_corpus], "char", data)
    to_old_layout(data)
    assert sorted(p.name for p in data.iterdir()) == ["meta.json", "tokenizer", "train.bin", "val.bin"]
    new = tmp_path / "new"
    prepare([tiny_corpus], "char", new)
    runs = {}
    for name, directory in (("old", data), ("new", new)):
        runs[name] = tmp_path / f"run-{name}"
        result = train(tiny_config(f"data.data_dir='{directory.as_posix()}'", *STEPS), runs[name],
                       progress=False, plot=False)
        assert result.step == 8
    assert records(runs["old"]) == records(runs["new"])  # the same tokens, the same batches


def test_resume_on_data_of_another_tokenizer_is_refused(tmp_path, tiny_config, prepared, tiny_corpus):
    run = tmp_path / "run"
    train(tiny_config(f"data.data_dir='{prepared.as_posix()}'", *STEPS), run, stop_at=4,
          progress=False, plot=False)
    other = tmp_path / "other"
    prepare([tiny_corpus], "char", other)  # the Iliad's characters: another vocabulary
    config = json.loads((run / "config.json").read_text())
    config["data"]["data_dir"] = str(other)
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(LyreError, match="prepared with another tokenizer .* than the run's") as e:
        train(None, run, resume=True, progress=False, plot=False)
    assert "\n" not in str(e.value)
    fresh = tmp_path / "fresh"
    with pytest.raises(LyreError, match="than train.init_from's"):
        train(tiny_config(f"data.data_dir='{other.as_posix()}'", f"train.init_from='{run.as_posix()}'",
                          *STEPS), fresh, progress=False, plot=False)


@pytest.mark.parametrize("align", ["none", "document"])
def test_the_lm_task_under_three_processes_reads_one_global_draw(tiny_config, prepared, align):
    """Through the trainer's Dist.get_batch: rank r's rows are rows r*B..(r+1)*B of the batch one
    process would draw, and each rank read only those."""
    from lyre.run.rundir import RunDir
    from lyre.train import distributed
    from lyre.train.tasks.lm import LanguageModelingTask

    def task(rank: int, world: int) -> tuple[LanguageModelingTask, distributed.Dist]:
        t = LanguageModelingTask()
        dist = distributed.Dist(device=torch.device("cpu"), rank=rank, world_size=world)
        config = tiny_config(f"data.data_dir='{prepared.as_posix()}'", f"data.align={align}")
        t.setup(config, RunDir(Path(config.data.data_dir).parent / "unused"), resume=False,
                dist=distributed.Dist(device=torch.device("cpu")))
        t.rank, t.world = dist.rank, dist.world_size
        return t, dist

    one, _ = task(0, 1)
    whole = one.loader.draw(6)
    for rank in range(3):
        t, dist = task(rank, 3)
        x, y = dist.get_batch(t.draw, 2)
        assert torch.equal(x, whole[0][2 * rank : 2 * rank + 2])
        assert torch.equal(y, whole[1][2 * rank : 2 * rank + 2])
