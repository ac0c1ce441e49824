"""Verbs that use a trained model on text: `sample` (generate) and `eval` (loss, perplexity, bits
per byte)."""

from __future__ import annotations

import sys
from pathlib import Path

from lyre.cli.flags import (
    add_checkpoint_flags,
    add_constraint_flags,
    add_model_flags,
    add_replace_unknown_flag,
    add_sampling_flags,
    constraint_from_args,
)
from lyre.core.errors import LyreError


def register(sub) -> None:
    _add_sample(sub)
    _add_eval(sub)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text from a run's checkpoint, streamed as it is produced.")
    p.add_argument("run_dir", type=Path, help="run directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None,
                     help="text to continue (default: start of text: <|endoftext|>, or a newline "
                          "for tokenizers without it)")
    src.add_argument("--prompt-file", type=Path, help="read the prompt from a file")
    add_sampling_flags(p, max_new_tokens=500)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop before this text (repeatable); <|endoftext|> always stops")
    p.add_argument("--overflow", choices=("slide", "stop"), default="slide",
                   help="at the context limit: slide the window (default) or stop")
    p.add_argument("--num-samples", type=int, default=1,
                   help="how many samples, all from one prefill in one batch (default 1)")
    add_constraint_flags(p)
    add_replace_unknown_flag(p)
    add_model_flags(p)
    p.set_defaults(func=cmd_sample)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="loss on text, or accuracy on multiple-choice/exact-match tasks",
                       description="Score a run's model on held-out text with a sliding window: loss, "
                                   "perplexity and bits per byte (comparable across tokenizers). "
                                   "Without --data, what the run held out: a fine-tuned (SFT/DPO) "
                                   "run's validation answers, a seq2seq run's validation pairs. "
                                   "With --task: accuracy on a local JSONL task file, scored as "
                                   "lm-eval-harness scores it (docs/eval.md).")
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("--task", action="append", default=[], metavar="FILE|NAME",
                   help="a task file (JSONL of {context, choices, gold} or {context, answer}) or "
                        "a NAME in $LYRE_TASKS or ~/.cache/lyre/tasks (repeatable: with several, "
                        "their CORE average too)")
    p.add_argument("--shots", type=int, default=0,
                   help="with --task: solved examples before each one, drawn from the same file "
                        "(default 0)")
    p.add_argument("--limit", type=int, default=None, help="with --task: only the first N examples")
    p.add_argument("--layout", choices=("hellaswag", "arc", "mmlu"), default=None,
                   help="with --task: the file is in this dataset's JSONL layout")
    p.add_argument("--skip-bad", action="store_true",
                   help="with --task: count and skip bad lines instead of refusing the file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--data", type=Path, default=None,
                   help="UTF-8 text file to score (default: the run's own validation split); for a "
                        "fine-tuned run a .json/.jsonl instruction file scores its answers, for a "
                        "seq2seq run a .tsv/.jsonl file of pairs")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens between window starts, 1..block_size (default block_size); smaller "
                        "gives each token more context and costs more")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    add_checkpoint_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)


def cmd_sample(args) -> None:
    from lyre.engine import Engine, SamplingConfig
    from lyre.generate.runs import load_run
    from lyre.generate.simple import prompt_ids
    from lyre.model import capabilities
    from lyre.tokenizers.char import replace_unknown
    from lyre.zoo.translate import translate_prompt

    params = SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop,
        num_samples=args.num_samples, seed=args.seed, overflow=args.overflow,
        constraint=constraint_from_args(args),
    ).validate()  # bad flags fail before the model is loaded
    run = load_run(args.run_dir, args.checkpoint, args.device, weights=args.weights)
    if args.replace_unknown:
        replace_unknown(run.tokenizer)
    prompt = read_prompt(args)
    if not capabilities(run.model).decoder_only:  # an encoder-decoder: translate the prompt
        print(translate_prompt(run.model, run.tokenizer, prompt))
        return
    engine = Engine(run.model, run.tokenizer, run.device)
    engine.check_params(params)  # a constraint this vocabulary cannot write: one line, before any output
    ids, dropped = prompt_ids(engine, prompt)
    if dropped:
        print(f"[notice] prompt cropped: its first {dropped} tokens do not fit the context of "
              f"{engine.block_size}", file=sys.stderr)
    shown = prompt or ""
    if args.num_samples == 1:
        sys.stdout.write(shown)
        stream = engine.stream(ids, params)
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        unfinished_notice(stream.completion)
        return
    for i, completion in enumerate(engine.generate([ids], params)):
        print(f"--- sample {i + 1} ---")
        print(shown + completion.text)
        unfinished_notice(completion)


def unfinished_notice(completion) -> None:
    """Say so when a constrained output stopped before its grammar was complete."""
    if completion.constraint_unfinished:
        why = completion.constraint_error or f"finish_reason {completion.finish_reason}: raise --max-new-tokens"
        print(f"[notice] the output does not complete its constraint ({why})", file=sys.stderr)


def read_prompt(args) -> str:
    if not args.prompt_file:
        return args.prompt
    try:
        return args.prompt_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LyreError(f"prompt file {args.prompt_file} not found") from None
    except UnicodeDecodeError:
        raise LyreError(f"prompt file {args.prompt_file} is not UTF-8 text") from None


def cmd_eval(args) -> None:
    import json

    from lyre.eval.loss import evaluate_saved_run

    if args.task:
        return cmd_eval_tasks(args)

    e = evaluate_saved_run(args.run_dir, args.data, stride=args.stride, batch_size=args.batch_size,
                           checkpoint=args.checkpoint, device=args.device)
    if args.json:
        print(json.dumps({"run": str(args.run_dir), **e.to_dict()}))
        return
    r = e.result
    if e.kind == "pairs":
        print(f"loss {r.loss:.4f} nats/token | perplexity {r.perplexity:.3f} | "
              f"exact match {100 * r.exact_match:.2f}% of {r.pairs:,} pairs (greedy)")
        print(f"{r.tokens:,} target tokens of {e.data} scored; checkpoint {e.checkpoint}")
    elif e.kind == "answers":
        print(f"loss {r.loss:.4f} nats/token | perplexity {r.perplexity:.3f}")
        print(f"{r.tokens:,} answer tokens in {r.sequences:,} sequences of {e.data} scored (the "
              f"prompts as context); checkpoint {e.checkpoint}")
    else:
        print(f"loss {r.loss:.4f} nats/token | perplexity {r.perplexity:.3f} | "
              f"{r.bits_per_byte:.4f} bits/byte")
        print(f"{r.tokens:,} tokens ({r.bytes:,} bytes) of {e.data} scored with block "
              f"{r.block_size}, stride {r.stride}; {e.tokenizer} tokenizer, checkpoint {e.checkpoint}")


def cmd_eval_tasks(args) -> None:
    """`lyre eval RUN --task ...`: one line (or JSON object) per task, then CORE if several."""
    import json

    from lyre.eval.harness import core_score, evaluate_task
    from lyre.generate.runs import load_run

    if args.data is not None:
        raise LyreError("--data (loss on text) and --task (accuracy on a task) are two evaluations; "
                        "give one")
    run = load_run(args.run_dir, args.checkpoint, args.device)
    results = []
    for task in args.task:
        r = evaluate_task(run, task, shots=args.shots, limit=args.limit, batch_size=args.batch_size,
                          skip_bad=args.skip_bad, layout=args.layout, progress=not args.no_progress)
        results.append(r)
        if args.json:
            print(json.dumps(r.to_dict()), flush=True)
            continue
        if r.kind == "generate":
            line = f"exact match {100 * r.acc:.2f}%"
        else:
            line = (f"acc {100 * r.acc:.2f}% | acc_norm {100 * r.acc_norm:.2f}% | centered "
                    f"{100 * r.acc_centered:.2f}% (random {100 * r.random_baseline:.1f}%)")
        skipped = f", {r.skipped} bad lines skipped" if r.skipped else ""
        print(f"{r.task}: {line} | {r.n:,} examples, {r.shots}-shot{skipped}")
    if len(results) > 1:
        core = core_score(results)
        if args.json:
            print(json.dumps({"core": core, "tasks": [r.task for r in results]}))
        else:
            print(f"CORE (mean centered accuracy of {len(results)} tasks): {core:.4f}")
