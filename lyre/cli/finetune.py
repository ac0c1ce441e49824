"""Fine-tuning verbs: `finetune` (instructions, chat, preferences, classification), `judge` (an
LLM scores the answers) and `classify` (label texts with a classifier run)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lyre.cli.flags import add_checkpoint_flags, intermixed_parsing
from lyre.core.errors import LyreError
from lyre.core.ranks import is_main_process


def register(sub) -> None:
    _add_finetune(sub)
    _add_judge(sub)
    _add_classify(sub)


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a run on instruction, chat, preference or labelled data",
                       description="Fine-tune BASE (a lyre run or a Hugging Face model directory) on "
                                   "Alpaca JSON/JSONL, chat JSONL (messages) or prompt/completion data "
                                   "(--task sft), on prompt/chosen/rejected pairs (--task dpo), or on "
                                   "labelled TSV/CSV/JSONL texts (--task classify); full or LoRA. See "
                                   "docs/finetune.md and docs/classify.md.")
    p.add_argument("base", nargs="?", metavar="BASE", help="a lyre run directory or a Hugging Face model directory")
    p.add_argument("--data", type=Path, help="JSON or JSONL data file (split 85/10/5 into train/val/test); "
                                             "--task classify: TSV, CSV or JSONL (split 70/10/20)")
    p.add_argument("--out", type=Path, help="run directory to write (default: runs/finetune)")
    p.add_argument("--task", default=None,
                   help="sft (default) | dpo | classify (labelled TSV/CSV/JSONL; docs/classify.md)")
    p.add_argument("--template", default=None,
                   help="chat template the data is rendered with and the run keeps: alpaca (default), "
                        "chatml, simple, ...")
    p.add_argument("--lora-rank", type=int, default=None, metavar="R",
                   help="train LoRA adapters of rank R (alpha 2R) instead of every weight; 0 or none: "
                        "full fine-tuning")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set max_iters=200 --set lr=3e-4 --set finetune.epochs=3 "
                        "--set lora.targets=attn (repeatable)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite a run directory that holds another run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=int, default=0, metavar="N",
                   help="train on N processes of this machine, started by torchrun")
    p.set_defaults(func=cmd_finetune)


def _add_judge(sub) -> None:
    p = sub.add_parser("judge", help="score a run's answers 0-100 with an LLM behind an OpenAI-compatible API",
                       description="Ask a judge model (any OpenAI-compatible chat endpoint: Ollama, vLLM, "
                                   "lyre serve, ...) to score each response against its reference, 0-100.")
    p.add_argument("responses", type=Path,
                   help="a fine-tuned run directory (its responses.json) or a responses JSON file")
    p.add_argument("--base-url", required=True, help="the endpoint, e.g. http://localhost:11434/v1")
    p.add_argument("--model", required=True, help="the judge model's name at that endpoint")
    p.add_argument("--api-key", default=None, help="bearer key (default: $OPENAI_API_KEY, else none)")
    p.add_argument("--out", type=Path, help="where to save every score (default: judge.json beside the responses)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    p.add_argument("--retries", type=int, default=3, help="retries of a failed request, with backoff (default 3)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one reply (default 60)")
    p.set_defaults(func=cmd_judge)


def _add_classify(sub) -> None:
    with intermixed_parsing(sub):  # `lyre classify RUN --json TEXT`
        _add_classify_parser(sub)


def _add_classify_parser(sub) -> None:
    p = sub.add_parser("classify", help="label texts with a classifier run",
                       description="Print the label of each text and its probability. Texts come from "
                                   "the command line, a file (one per line) or stdin (one per line).")
    p.add_argument("run_dir", type=Path, help="a classifier run (lyre finetune --task classify)")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="text(s) to classify")
    p.add_argument("--file", type=Path, help="UTF-8 file with one text per line ('-' reads stdin)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line and text: text, label, probability, probabilities, "
                        "tokens, truncated")
    add_checkpoint_flags(p)
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    p.set_defaults(func=cmd_classify)


def cmd_finetune(args) -> None:
    from lyre.finetune.command import finetune, finetune_config

    if args.resume:
        given = [flag for flag, value in (("BASE", args.base), ("--data", args.data), ("--out", args.out),
                                          ("--template", args.template), ("--lora-rank", args.lora_rank),
                                          ("--force", args.force)) if value is not None and value is not False]
        if given:
            raise LyreError(f"--resume continues the run's saved config in place; drop {', '.join(given)} "
                            "(change fields with --set)")
        out = args.resume
    else:
        out = args.out or Path("runs") / "finetune"
    settings = dict(task=args.task, template=args.template, lora_rank=args.lora_rank,
                    overrides=args.overrides, resume=bool(args.resume), force=args.force)
    if args.nproc:
        from lyre.train import distributed
        from lyre.train.trainer import check_train_config

        config = finetune_config(args.base, args.data, out, **settings)
        distributed.launch_command(args.nproc, args.argv, config, check_train_config)
        return
    result = finetune(args.base, args.data, out, progress=not args.no_progress, **settings)
    if is_main_process():
        print(result.summary())


def cmd_judge(args) -> None:
    from lyre.eval.judge import JudgeSettings, judge_file

    settings = JudgeSettings(base_url=args.base_url, model=args.model,
                             api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
                             concurrency=args.concurrency, retries=args.retries, timeout=args.timeout)
    report = judge_file(args.responses, settings, out=args.out)
    print(report.summary())


def cmd_classify(args) -> None:
    import json

    from lyre.classify.predict import load_classifier, read_texts

    if args.batch_size < 1:
        raise LyreError(f"--batch-size must be at least 1; got {args.batch_size}")
    texts = read_texts(args.texts, args.file, sys.stdin)
    classifier = load_classifier(args.run_dir, args.checkpoint, args.device)
    predictions = classifier.classify(texts, batch_size=args.batch_size)
    cut = sum(p.truncated for p in predictions)
    if cut:
        print(f"lyre: {cut} text(s) longer than the context were cut to their first {classifier.limit} "
              "tokens", file=sys.stderr)
    for text, p in zip(texts, predictions, strict=True):
        if args.json:
            print(json.dumps({"text": text, **p.to_dict()}, ensure_ascii=False))
        else:
            shown = f"\t{text if len(text) <= 70 else text[:67] + '...'}" if len(texts) > 1 else ""
            print(f"{p.label}\t{p.probability:.4f}{shown}")
