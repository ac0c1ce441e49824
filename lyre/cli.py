"""The `lyre` command: a thin layer of flags over the Python API.

Every subcommand parses its flags and calls one function of the package. A LyreError (bad input)
becomes a one-line message on stderr and exit code 2; Ctrl-C exits with 130, and training
stopped by SIGTERM (after saving a checkpoint) with 143.

Why one module of ~800 lines: each verb is a pair of short functions (`_add_VERB` builds its
flags, `cmd_VERB` calls the API) and keeping every verb's flags side by side lets one file show
the whole command line; a group of many verbs (`lyre rag`) keeps its own module beside its code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lyre.errors import LyreError

EXIT_USAGE = 2


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize corpus files into train/val token files",
                       description="Tokenize text files into memory-mapped train/val token files.")
    p.add_argument("corpus", nargs="+", type=Path, help="UTF-8 text file(s)")
    p.add_argument("--tokenizer", default="char",
                   help="char | bpe:VOCAB_SIZE (trained on the corpus) | gpt2:DIR (encoder.json + vocab.bpe)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="tail fraction of each file kept for validation (default 0.1)")
    p.add_argument("--force", action="store_true", help="overwrite an existing prepared directory")
    p.set_defaults(func=cmd_prepare)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a TOML preset",
                       description="Train a model from a preset (`lyre presets` lists the bundled ones) "
                                   "or any TOML file; every field can be overridden.")
    p.add_argument("--config", metavar="PRESET",
                   help="a bundled preset's name (e.g. iliad-char) or a TOML file's path "
                        "(default: the demo preset iliad-char)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=3e-4 --set n_layer=6 (repeatable)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite a run directory that holds another run")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: one plain line per log interval (also when the output "
                        "is not a terminal)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to RUN_DIR/tensorboard (train.tensorboard)")
    p.add_argument("--wandb", action="store_true",
                   help="also log to Weights & Biases, offline unless WANDB_MODE says otherwise "
                        "(train.wandb)")
    p.add_argument("--nproc", type=int, default=0, metavar="N",
                   help="train on N processes of this machine, started by torchrun (one per GPU on CUDA; "
                        "batch_size is per process); several machines: see docs/distributed.md")
    p.set_defaults(func=cmd_train)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text from a run's checkpoint, streamed as it is produced.")
    p.add_argument("run_dir", type=Path, help="run directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None,
                     help="text to continue (default: start of text: <|endoftext|>, or a newline "
                          "for tokenizers without it)")
    src.add_argument("--prompt-file", type=Path, help="read the prompt from a file")
    _add_sampling_flags(p, max_new_tokens=500)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop before this text (repeatable); <|endoftext|> always stops")
    p.add_argument("--overflow", choices=("slide", "stop"), default="slide",
                   help="at the context limit: slide the window (default) or stop")
    p.add_argument("--num-samples", type=int, default=1,
                   help="how many samples, all from one prefill in one batch (default 1)")
    _add_replace_unknown_flag(p)
    _add_model_flags(p)
    p.set_defaults(func=cmd_sample)


def _add_sampling_flags(p, max_new_tokens: int) -> None:
    """The sampling controls of `sample` and `chat`; defaults from lyre.engine.sampling."""
    from lyre.engine import sampling as S

    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"tokens to generate (default {max_new_tokens})")
    p.add_argument("--temperature", type=float, default=S.DEFAULT_TEMPERATURE,
                   help=f"0 means greedy (default {S.DEFAULT_TEMPERATURE})")
    p.add_argument("--top-k", type=int, default=S.DEFAULT_TOP_K,
                   help=f"keep the k most likely tokens; 0 disables (default {S.DEFAULT_TOP_K})")
    p.add_argument("--top-p", type=float, default=S.DEFAULT_TOP_P,
                   help=f"nucleus sampling threshold in (0, 1] (default {S.DEFAULT_TOP_P})")
    p.add_argument("--repetition-penalty", type=float, default=S.DEFAULT_REPETITION_PENALTY,
                   help="> 1 discourages repeating tokens of the prompt and output "
                        f"(default {S.DEFAULT_REPETITION_PENALTY}: off)")
    p.add_argument("--seed", type=int, default=None, help="random seed: same seed, same output")


def _add_replace_unknown_flag(p) -> None:
    p.add_argument("--replace-unknown", action="store_true",
                   help="char-level models: replace characters the model never saw with '?' (or a "
                        "space) instead of refusing the text; to record it with the run, set "
                        "\"unk\": \"?\" in RUN_DIR/tokenizer/tokenizer.json")


def _add_model_flags(p) -> None:
    """How `sample`, `chat` and `serve` load a run's model (runs.load_run)."""
    p.add_argument("--checkpoint", default="best", help="best or last (default best)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--fp16", dest="weights", action="store_const", const="fp16", default="fp32",
                         help="add fp16 copies of the weights (CPU only): ~1.5-2x faster decoding of "
                              "one or a few rows, logits within ~1e-3 of fp32, 1.5x the weight memory")
    weights.add_argument("--int8", dest="weights", action="store_const", const="int8",
                         help="int8 weights (CPU only): 2-4x faster decoding, slightly different numbers")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="loss, perplexity and bits per byte on a text file",
                       description="Score a run's model on held-out text with a sliding window: loss, "
                                   "perplexity and bits per byte (comparable across tokenizers).")
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("--data", type=Path, default=None,
                   help="UTF-8 text file to score (default: the run's own validation split)")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens between window starts, 1..block_size (default block_size); smaller "
                        "gives each token more context and costs more")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--checkpoint", default="best", help="best or last (default best)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="parameters, memory and FLOPs of a model config",
                       description="Print parameters, memory and FLOPs per token of a model config.")
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="a preset's name, a TOML file or a RUN_DIR (default: GPT-2 124M)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set n_layer=96 --set n_embd=12288")
    p.set_defaults(func=cmd_info)


def _add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the bundled presets (names for --config)",
                       description="List the bundled presets: `lyre train --config NAME` trains one.")
    p.set_defaults(func=cmd_presets)


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw the loss curves of a run",
                       description="Draw train/val loss curves from RUN_DIR/metrics.jsonl into a PNG.")
    p.add_argument("run_dir", type=Path, help="run directory (reads RUN_DIR/metrics.jsonl)")
    p.add_argument("--out", type=Path, help="image path, .png, .svg or .pdf (default RUN_DIR/loss.png)")
    p.set_defaults(func=cmd_plot)


def _add_import_hf(sub) -> None:
    p = sub.add_parser("import-hf", help="turn a Hugging Face GPT-2 model into a lyre run",
                       description="Import a Hugging Face model directory (config.json, model.safetensors or "
                                   "pytorch_model.bin, tokenizer files) or hub name as a lyre run directory.")
    p.add_argument("src", help="Hugging Face model directory, or a hub name such as gpt2 (needs network)")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--tokenizer", help="use this tokenizer instead of SRC's: gpt2:DIR or a lyre tokenizer directory")
    p.add_argument("--force", action="store_true", help="replace the run in a non-empty --out")
    p.set_defaults(func=cmd_import_hf)


def _add_export_hf(sub) -> None:
    p = sub.add_parser("export-hf", help="write a run as a Hugging Face model directory",
                       description="Export a run so transformers' from_pretrained loads it (GPT-2, or the "
                                   "exact Hugging Face equivalent of rotary models); refuses what has none.")
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("--out", type=Path, required=True, help="directory to write")
    p.add_argument("--checkpoint", default="best", help="best or last (default best)")
    p.add_argument("--force", action="store_true", help="overwrite the model files in a non-empty --out")
    p.add_argument("--peft-adapter", type=Path, metavar="DIR",
                   help="LoRA runs: also write the adapter in PEFT's format to DIR, with its base model "
                        "in DIR/base (PeftModel.from_pretrained(base, DIR)); --out gets the merged model")
    p.set_defaults(func=cmd_export_hf)


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="talk to a run in the terminal",
                       description="A terminal chat with a run, streamed. A base model continues your "
                                   "text; a chat model uses its prompt template. /help inside lists commands.")
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("-p", "--prompt", dest="one_prompt", metavar="TEXT",
                   help="answer TEXT once and exit (for scripts)")
    p.add_argument("--system", default=None, help="system message (chat templates)")
    p.add_argument("--template", default=None,
                   help="prompt template: plain | alpaca | chatml | simple (default: the run's, else plain)")
    p.add_argument("--history", default=None, metavar="FILE",
                   help="file of the lines you typed, for the arrow keys and Ctrl-R (default: "
                        "$LYRE_HISTORY, else ~/.local/state/lyre/chat_history; '' keeps none)")
    _add_sampling_flags(p, max_new_tokens=256)
    _add_replace_unknown_flag(p)
    _add_model_flags(p)
    p.set_defaults(func=cmd_chat)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server and chat page",
                       description="Serve a run over HTTP: the OpenAI API under /v1, a chat page at /, "
                                   "/health, Prometheus metrics at /metrics, the API's documentation "
                                   "at /docs (works offline). One access-log line per request at "
                                   "--log-level info. See docs/serve.md.")
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` on /v1 (default: $LYRE_API_KEY, else none)")
    p.add_argument("--model-name", default=None, help="model id in the API (default: the run directory's name)")
    p.add_argument("--template", default=None, help="chat prompt template (default: the run's, else plain)")
    p.add_argument("--max-batch", type=int, default=32, help="choices decoded together (default 32)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting before 429 (default 64)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds in-flight requests get to finish on SIGTERM (default 10)")
    p.add_argument("--context-overflow", default="stop", choices=["stop", "slide"],
                   help="at the end of the context: stop with finish_reason length (default, as "
                        "OpenAI) or slide the window and keep generating")
    _add_replace_unknown_flag(p)
    p.add_argument("--read-timeout", type=float, default=30.0,
                   help="seconds a client gets to send a request's headers, and again its body; "
                        "slower clients get 408 and are disconnected (default 30)")
    _add_model_flags(p)
    p.add_argument("--rag", default=None, metavar="IDX",
                   help="also answer POST /v1/rag/answer from this index (docs/rag.md)")
    p.add_argument("--rag-embedder", default=None, metavar="SPEC",
                   help="embedder of the --rag index's vectors (default none: BM25)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (default 0: torch's choice, one per core)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a run on instruction, chat or preference data",
                       description="Fine-tune BASE (a lyre run or a Hugging Face model directory) on "
                                   "Alpaca JSON/JSONL, chat JSONL (messages) or prompt/completion data "
                                   "(--task sft), or on prompt/chosen/rejected pairs (--task dpo); full "
                                   "or LoRA. See docs/finetune.md.")
    p.add_argument("base", nargs="?", metavar="BASE", help="a lyre run directory or a Hugging Face model directory")
    p.add_argument("--data", type=Path, help="JSON or JSONL data file (split 85/10/5 into train/val/test)")
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
    p = sub.add_parser("classify", help="label texts with a classifier run",
                       description="Print the label of each text and its probability. Texts come from "
                                   "the command line, a file (one per line) or stdin (one per line).")
    p.add_argument("run_dir", type=Path, help="a classifier run (lyre finetune --task classify)")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="text(s) to classify")
    p.add_argument("--file", type=Path, help="UTF-8 file with one text per line ('-' reads stdin)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line and text: text, label, probability, probabilities, "
                        "tokens, truncated")
    p.add_argument("--checkpoint", default="best", help="best or last (default best)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    p.set_defaults(func=cmd_classify)


def _add_translate(sub) -> None:
    p = sub.add_parser("translate", help="translate with an encoder-decoder run (arch seq2seq)",
                       description="Map source texts to targets with a seq2seq run: greedy, or beam "
                                   "search with --beam N. One output line per input.")
    p.add_argument("run_dir", type=Path, help="run directory of an encoder-decoder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a source text (repeatable)")
    src.add_argument("--file", type=Path, help="source texts, one per line")
    p.add_argument("--beam", type=int, default=1, help="beam width; 1 is greedy (default 1)")
    p.add_argument("--max-length", type=int, default=None, help="most target tokens (default: the context)")
    p.add_argument("--checkpoint", default="best", help="best or last (default best)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.set_defaults(func=cmd_translate)


def _add_attention(sub) -> None:
    p = sub.add_parser("attention", help="draw a run's attention maps on a prompt",
                       description="Draw the attention of every layer and head on a prompt (tokens on "
                                   "the axes) into an image; for an encoder-decoder, on its translation.")
    p.add_argument("run_dir", type=Path, help="run directory (gpt or seq2seq)")
    p.add_argument("--prompt", required=True, help="the text to look at (a seq2seq run's source)")
    p.add_argument("--out", type=Path, required=True, help="image path: .png, .svg or .pdf")
    p.add_argument("--kind", default="cross", choices=["cross", "encoder", "decoder"],
                   help="seq2seq runs: which attention (default cross)")
    p.add_argument("--checkpoint", default="best", help="best or last (default best)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.set_defaults(func=cmd_attention)


class _Parser(argparse.ArgumentParser):
    """argparse, plus "did you mean" for a mistyped command or choice."""

    def error(self, message: str):
        import difflib
        import re

        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = re.findall(r"'?([\w.-]+)'?", match.group(2))
            close = difflib.get_close_matches(match.group(1), choices, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        super().error(message)


def _add_rag(sub) -> None:
    from lyre.rag.cli import add_rag_parser  # `lyre rag ...` lives with the rest of lyre.rag

    add_rag_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    from lyre import __version__

    parser = _Parser(prog="lyre", description="Build your own GPT from scratch.")
    parser.add_argument("--version", action="version", version=f"lyre {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for add in (_add_prepare, _add_train, _add_sample, _add_eval, _add_info, _add_presets, _add_plot,
                _add_import_hf, _add_export_hf, _add_chat, _add_serve, _add_finetune, _add_judge,
                _add_rag, _add_classify, _add_translate, _add_attention):
        add(sub)
    return parser


# ----------------------------------------------------------------------------------------------
# Commands


def cmd_prepare(args) -> None:
    from lyre.data import prepare

    meta = prepare(args.corpus, args.tokenizer, args.out, val_fraction=args.val_fraction, force=args.force)
    print(f"wrote {args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
          f"vocab {meta['vocab_size']:,} ({meta['dtype']})")


def cmd_train(args) -> None:
    from lyre.config import load_config, resolve_preset
    from lyre.train import train

    args.overrides += [f"train.{name}=true" for name in ("tensorboard", "wandb") if getattr(args, name)]
    if args.nproc:
        _launch_processes(args)
        return
    if args.resume and _is_finetune_run(args.resume):  # the trainer's resume hint names `lyre train`
        args.base = args.data = args.out = args.template = args.lora_rank = args.task = None
        cmd_finetune(args)
        return
    if args.resume:
        # The run's own config is the base; a second one would be silently ignored.
        ignored = [flag for flag, value in (("--config", args.config), ("--out", args.out),
                                            ("--force", args.force)) if value]
        if ignored:
            raise LyreError(f"--resume continues the run's saved config in place; drop {', '.join(ignored)} "
                            "(change fields with --set)")
        config = load_config(args.resume / "config.json", args.overrides)
        result = train(config, args.resume, resume=True, progress=not args.no_progress)
    else:
        preset = resolve_preset(args.config) if args.config else _default_preset()
        config = load_config(preset, args.overrides)
        run_dir = args.out or Path("runs") / preset.stem
        result = train(config, run_dir, force=args.force, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the run
        return
    val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
    print(f"done: step {result.step}, val loss {val}, best {result.best_val_loss:.4f}, run in {result.run_dir}")


def _is_finetune_run(run_dir: Path) -> bool:
    import json

    try:
        return "finetune" in json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def _launch_processes(args) -> None:
    """`lyre train --nproc N ...` = `torchrun --standalone --nproc_per_node N -m lyre train ...`,
    after checking the config here so that bad input fails once, before any process starts."""
    from lyre import distributed
    from lyre.config import load_config
    from lyre.optim import check_optimizer_config
    from lyre.train import check_train_config, resolve_device

    if "WORLD_SIZE" in os.environ:
        raise LyreError("--nproc starts torchrun itself; under torchrun, drop --nproc")
    if args.resume:
        config = load_config(args.resume / "config.json", args.overrides)
    else:
        config = load_config(args.config or _default_preset(), args.overrides)
    cfg = config.train
    check_train_config(cfg)
    check_optimizer_config(cfg)
    device = resolve_device(cfg.device)
    distributed.check_config(cfg, device)
    if device.type == "mps" and args.nproc > 1:
        raise LyreError("--nproc needs CUDA GPUs or the CPU (train.device=cpu), not MPS")
    if device.type == "cuda":
        import torch

        if args.nproc > torch.cuda.device_count():
            raise LyreError(f"--nproc {args.nproc} but this machine has {torch.cuda.device_count()} GPU(s); "
                            "use one process per GPU (or train.device=cpu)")
    argv, skip = [], False
    for token in args.argv:
        if skip:
            skip = False
        elif token == "--nproc":
            skip = True
        elif not token.startswith("--nproc="):
            argv.append(token)
    distributed.launch(args.nproc, argv)


def _default_preset() -> Path:
    """The bundled demo preset: the library defaults are GPT-2 124M, far too big to train on a
    CPU by accident."""
    from lyre.config import DEFAULT_PRESET, list_presets

    preset = list_presets().get(DEFAULT_PRESET)
    if preset is None:
        raise LyreError(f"no --config given and the bundled preset {DEFAULT_PRESET} is missing "
                        "(a broken install?); pass a TOML file with --config")
    print(f"lyre: no --config given; training the demo preset {DEFAULT_PRESET} ({preset})", file=sys.stderr)
    return preset


def cmd_sample(args) -> None:
    from lyre.engine import Engine, SamplingConfig
    from lyre.generate import crop_prompt
    from lyre.runs import load_run
    from lyre.tokenizers.char import replace_unknown

    params = SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop,
        num_samples=args.num_samples, seed=args.seed, overflow=args.overflow,
    ).validate()  # bad flags fail before the model is loaded
    run = load_run(args.run_dir, args.checkpoint, args.device, weights=args.weights)
    if args.replace_unknown:
        replace_unknown(run.tokenizer)
    if not getattr(run.model, "decoder_only", True):  # an encoder-decoder: translate the prompt
        _translate_prompt(run, _read_prompt(args))
        return
    engine = Engine(run.model, run.tokenizer, run.device)
    prompt = _read_prompt(args)
    if prompt is None:  # start of text
        ids = engine.encode("" if run.tokenizer.eot_id is not None else "\n")
    else:
        ids = engine.encode(prompt)
    block = run.config.model.block_size
    ids, dropped = crop_prompt(ids, block)
    if dropped:
        print(f"[notice] prompt cropped: its first {dropped} tokens do not fit the context of "
              f"{block}", file=sys.stderr)
    shown = prompt or ""
    if args.num_samples == 1:
        sys.stdout.write(shown)
        for piece in engine.stream(ids, params):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    for i, completion in enumerate(engine.generate([ids], params)):
        print(f"--- sample {i + 1} ---")
        print(shown + completion.text)


def _translate_prompt(run, prompt: str | None) -> None:
    from lyre.translate import translate

    if not prompt:
        raise LyreError(f"{run.run_dir} is an encoder-decoder: give the source to translate with "
                        "--prompt TEXT (or use `lyre translate`)")
    print(translate(run.model, run.tokenizer, [prompt])[0])


def _read_prompt(args) -> str:
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

    from lyre.evaluate import evaluate_text, read_text
    from lyre.runs import load_run

    run = load_run(args.run_dir, args.checkpoint, args.device)
    if not getattr(run.model, "decoder_only", True):  # an encoder-decoder scores pairs
        _eval_pairs(run, args)
        return
    if args.data is None:
        from lyre.evaluate import validation_text

        text, args.data = validation_text(run)
    else:
        text = read_text(args.data)
    result = evaluate_text(run.model, run.tokenizer, text, stride=args.stride,
                           batch_size=args.batch_size, device=run.device)
    if args.json:
        print(json.dumps({"run": str(args.run_dir), "checkpoint": run.checkpoint, "data": str(args.data),
                          "tokenizer": run.tokenizer.kind, **result.to_dict()}))
        return
    print(f"loss {result.loss:.4f} nats/token | perplexity {result.perplexity:.3f} | "
          f"{result.bits_per_byte:.4f} bits/byte")
    print(f"{result.tokens:,} tokens ({result.bytes:,} bytes) of {args.data} scored with block "
          f"{result.block_size}, stride {result.stride}; {run.tokenizer.kind} tokenizer, "
          f"checkpoint {run.checkpoint}")


def _eval_pairs(run, args) -> None:
    import json

    from lyre.pairs import read_pairs, validation_pairs
    from lyre.translate import evaluate_pairs

    pairs, label = (read_pairs(str(args.data)), str(args.data)) if args.data else validation_pairs(run)
    result = evaluate_pairs(run.model, run.tokenizer, pairs, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"run": str(args.run_dir), "checkpoint": run.checkpoint, "data": label,
                          **result.to_dict()}))
        return
    print(f"loss {result.loss:.4f} nats/token | perplexity {result.perplexity:.3f} | "
          f"exact match {100 * result.exact_match:.2f}% of {result.pairs:,} pairs (greedy)")
    print(f"{result.tokens:,} target tokens of {label} scored; checkpoint {run.checkpoint}")


def cmd_info(args) -> None:
    from lyre.config import load_config
    from lyre.info import format_cost, vocab_size_of

    path = None if args.config is None else Path(args.config)
    if path is not None and path.is_dir():
        path = path / "config.json"  # a run directory
    config = load_config(path, args.overrides)  # a preset's name or a TOML/JSON file
    from_preset = path is None or path.suffix != ".json"
    if from_preset and not any(o.split("=")[0].endswith("vocab_size") for o in args.overrides):
        # A preset's vocab_size is a placeholder: training takes the tokenizer's.
        vocab = vocab_size_of(config.data.tokenizer, config.data.corpus) if path else None
        config.model.vocab_size = vocab or config.model.vocab_size
    print(format_cost(config.model))


def cmd_translate(args) -> None:
    from lyre.runs import load_run
    from lyre.translate import translate

    texts = args.text if args.text is not None else _read_lines(args.file)
    run = load_run(args.run_dir, args.checkpoint, args.device)
    _require_seq2seq(run, "translate")
    for line in translate(run.model, run.tokenizer, texts, beam=args.beam, max_length=args.max_length):
        print(line)


def _read_lines(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LyreError(f"file {path} not found") from None
    except UnicodeDecodeError:
        raise LyreError(f"file {path} is not UTF-8 text") from None
    if not lines:
        raise LyreError(f"file {path} is empty: give one source text per line")
    return lines


def _require_seq2seq(run, verb: str) -> None:
    if getattr(run.model, "decoder_only", True):
        raise LyreError(f"{run.run_dir} is a language model (arch {run.config.model.arch}); `lyre {verb}` "
                        "needs an encoder-decoder run (arch seq2seq); use `lyre sample`")


def cmd_attention(args) -> None:
    from lyre.attention_maps import draw_run

    print(f"wrote {draw_run(args.run_dir, args.prompt, args.out, kind=args.kind, checkpoint=args.checkpoint, device=args.device)}")


def cmd_presets(args) -> None:
    from lyre.config import PRESETS_DIR, list_presets

    presets = list_presets()
    width = max(map(len, presets), default=0)
    for name, path in presets.items():
        comment = next((line.lstrip("# ").rstrip() for line in path.read_text().splitlines()
                        if line.startswith("#")), "")
        print(f"{name:<{width}}  {comment}")
    print(f"(the files are in {PRESETS_DIR}: copy one to start your own, pass it with --config PATH)")


def cmd_plot(args) -> None:
    from lyre.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")


def cmd_import_hf(args) -> None:
    from lyre.hf import import_hf, resolve_source

    run_dir = import_hf(resolve_source(args.src), args.out, tokenizer=args.tokenizer, force=args.force)
    print(f"wrote {run_dir}: sample it with `lyre sample {run_dir}`; fine-tune it with "
          f"`lyre train --set train.init_from={run_dir}` on data tokenized by {run_dir}/tokenizer "
          f"(see docs/hf.md)")


def cmd_export_hf(args) -> None:
    from lyre.classify.config import is_classifier_run
    from lyre.hf import export_hf

    out = export_hf(args.run_dir, args.out, checkpoint=args.checkpoint, force=args.force,
                    peft_adapter=args.peft_adapter)
    auto = "AutoModelForSequenceClassification" if is_classifier_run(args.run_dir) else "AutoModelForCausalLM"
    print(f"wrote {out}: load it with transformers.{auto}.from_pretrained({str(out)!r})")
    if args.peft_adapter:
        adapter = args.peft_adapter
        print(f"wrote {adapter}: peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("
              f"{str(adapter / 'base')!r}), {str(adapter)!r})")


def cmd_finetune(args) -> None:
    from lyre.finetune.command import finetune

    if args.nproc:
        from lyre import distributed

        if "WORLD_SIZE" in os.environ:
            raise LyreError("--nproc starts torchrun itself; under torchrun, drop --nproc")
        argv = [t for i, t in enumerate(args.argv) if t != "--nproc" and not t.startswith("--nproc=")
                and (i == 0 or args.argv[i - 1] != "--nproc")]
        distributed.launch(args.nproc, argv)
        return
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
    if args.task == "classify" or (args.resume and _finetune_task(args.resume) == "classify"):
        _finetune_classifier(args, out)
        return
    result = finetune(args.base, args.data, out, task=args.task, template=args.template,
                      lora_rank=args.lora_rank, overrides=args.overrides, resume=bool(args.resume),
                      force=args.force, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":
        return
    r = result.train
    val = f"{r.val_loss:.4f}" if r.val_loss is not None else "n/a"
    print(f"done: step {r.step}, val loss {val}, best {r.best_val_loss:.4f}, run in {out}; talk to it with "
          f"`lyre chat {out}`")


def _finetune_task(run_dir: Path) -> str | None:
    import json

    try:
        return json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["finetune"]["task"]
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _finetune_classifier(args, out: Path) -> None:
    """`lyre finetune BASE --task classify ...` (lyre.classify.finetune)."""
    from lyre.classify.finetune import finetune_classifier

    if args.template is not None:
        raise LyreError("--template is for generative fine-tuning; a classifier reads plain text")
    result = finetune_classifier(args.base, args.data, out, lora_rank=args.lora_rank,
                                 overrides=args.overrides, resume=bool(args.resume), force=args.force,
                                 progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":
        return
    test = result.accuracy("test")
    shown = f"test accuracy {test:.2%}" if test is not None else "no test split"
    print(f"done: step {result.train.step}, best val accuracy {result.best_val_accuracy:.2%}, {shown}; "
          f"run in {out}; use it with `lyre classify {out} \"some text\"`")


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


def cmd_judge(args) -> None:
    from lyre.judge import JudgeSettings, judge_file

    settings = JudgeSettings(base_url=args.base_url, model=args.model,
                             api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
                             concurrency=args.concurrency, retries=args.retries, timeout=args.timeout)
    report = judge_file(args.responses, settings, out=args.out)
    print(report.summary())


def cmd_chat(args) -> None:
    from lyre import chat, repl
    from lyre.runs import load_run
    from lyre.tokenizers.char import replace_unknown

    settings = chat.ChatSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            repetition_penalty=args.repetition_penalty,
                            max_new_tokens=args.max_new_tokens, seed=args.seed)
    settings.validate()
    template = chat.get_template(args.template or chat.template_name_for_run(args.run_dir))
    run = load_run(args.run_dir, args.checkpoint, args.device, weights=args.weights)
    if args.replace_unknown:
        replace_unknown(run.tokenizer)
    session = chat.ChatSession(run, template, settings, system=args.system)
    if args.one_prompt is not None:
        repl.one_answer(session, args.one_prompt)
    else:
        repl.run_repl(session, history=repl.history_path(args.history))


def cmd_serve(args) -> None:
    import os

    from lyre.runs import load_run
    from lyre.serve import ServeSettings
    from lyre.serve.server import serve

    settings = ServeSettings(model_name=args.model_name, api_key=args.api_key or os.environ.get("LYRE_API_KEY"),
                             max_batch=args.max_batch, max_queue=args.max_queue,
                             max_body_bytes=args.max_body_bytes, chat_template=args.template,
                             shutdown_timeout=args.shutdown_timeout, overflow=args.context_overflow,
                             read_timeout=args.read_timeout,
                             rag_index=args.rag, rag_embedder=args.rag_embedder)
    settings.validate()
    if args.threads < 0:
        raise LyreError(f"--threads must be >= 0; got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from lyre.classify.config import is_classifier_run

    if is_classifier_run(args.run_dir):  # POST /v1/classify instead of completions
        from lyre.classify.predict import load_classifier
        from lyre.serve.classify_routes import serve_classifier

        serve_classifier(load_classifier(args.run_dir, args.checkpoint, args.device), args.host,
                         args.port, settings, log_level=args.log_level)
        return
    run = load_run(args.run_dir, args.checkpoint, args.device, weights=args.weights)
    if args.replace_unknown:
        from lyre.tokenizers.char import replace_unknown

        replace_unknown(run.tokenizer)
    serve(run, args.host, args.port, settings, log_level=args.log_level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        args.func(args)
    except LyreError as e:
        if getattr(e, "reported_by_rank_zero", False):  # another process printed it already
            return EXIT_USAGE
        rank = os.environ.get("RANK", "0")
        where = f"[rank {rank}] " if os.environ.get("WORLD_SIZE", "1") != "1" and rank != "0" else ""
        print(f"lyre: error: {where}{e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        code = getattr(e, "exit_code", 130)  # lyre.train.Stopped: 143 after SIGTERM, said so already
        if code == 130 and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
            print("\nlyre: interrupted", file=sys.stderr)
        return code
    except BrokenPipeError:  # e.g. `lyre sample ... | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
