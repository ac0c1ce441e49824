"""Hugging Face interop: import GPT-2 checkpoints, export lyre runs, and prove exact parity.

Everything is offline: the "pretrained" checkpoints are random GPT2LMHeadModels that transformers
builds and saves right here, in the layouts real checkpoints come in (safetensors from
save_pretrained, old pytorch_model.bin files with mask buffers and without `transformer.`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

transformers = pytest.importorskip("transformers")
from gpt2_fixture import gpt2_files  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
)

from lyre.cli import main  # noqa: E402
from lyre.core.errors import LyreError  # noqa: E402
from lyre.generate.runs import load_run  # noqa: E402
from lyre.generate.simple import SamplingConfig, generate_tokens  # noqa: E402
from lyre.hf import (  # noqa: E402
    export_hf,
    from_pretrained,
    hf_to_lyre_config,
    import_hf,
)
from lyre.model.baselines import BigramConfig  # noqa: E402
from lyre.model.gpt import GPT, GPTConfig  # noqa: E402
from lyre.run import checkpoint as ckpt  # noqa: E402
from lyre.run.config import RunConfig, save_config  # noqa: E402
from lyre.tokenizers import CharTokenizer, build_tokenizer, load_tokenizer  # noqa: E402
from lyre.train.trainer import train  # noqa: E402

GPT2_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gpt2"
NO_GPT2 = f"OpenAI's GPT-2 files not found in {GPT2_DATA} (shared data absent); the stand-in ran"
TOL = 1e-4  # fp32 logits; in practice the differences are ~1e-7 (float rounding only)

# (name, GPT2Config fields): the shape, plus odd ones that exercise every option.
SHAPES = {
    "2x64x2": dict(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=128),
    "1x48x4-relu-n_inner": dict(n_layer=1, n_embd=48, n_head=4, vocab_size=517, n_positions=64,
                                n_inner=100, activation_function="relu"),
    "3x32x1-untied": dict(n_layer=3, n_embd=32, n_head=1, vocab_size=300, n_positions=96,
                          tie_word_embeddings=False, activation_function="gelu_pytorch_tanh"),
}


# ----------------------------------------------------------------------------------------------
# Building Hugging Face checkpoints the way they come in the wild


def random_gpt2(seed: int = 0, **fields) -> GPT2LMHeadModel:
    """A GPT2LMHeadModel with every parameter random (biases and norms too: nothing hides)."""
    torch.manual_seed(seed)
    config = GPT2Config(bos_token_id=None, eos_token_id=None, **fields)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


def old_style_state(model: GPT2LMHeadModel, prefix: bool) -> dict[str, torch.Tensor]:
    """The layout of the original hub files: causal-mask buffers, no lm_head when tied."""
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        state[key if prefix or key == "lm_head.weight" else key.removeprefix("transformer.")] = value.clone()
    n = model.config.n_positions
    for i in range(model.config.n_layer):
        start = "transformer." if prefix else ""
        state[f"{start}h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.uint8)).view(1, 1, n, n)
        state[f"{start}h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return state


def save_hf(model: GPT2LMHeadModel, directory: Path, layout: str, tokenizer_json: Path) -> Path:
    """layout: save_pretrained | safetensors-bare (no prefix, buffers) | bin-prefixed | bin-bare."""
    directory.mkdir(parents=True)
    if layout == "save_pretrained":
        model.save_pretrained(directory)
    else:
        model.config.save_pretrained(directory)
        state = old_style_state(model, prefix=layout == "bin-prefixed")
        if layout.startswith("bin"):
            torch.save(state, directory / "pytorch_model.bin")
        else:
            save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(tokenizer_json, directory / "tokenizer.json")
    return directory


@pytest.fixture(scope="module")
def bpe_tokenizer_json(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer.json of under 300 tokens, as a small HF model would ship."""
    text = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs\n"
    tokenizer = build_tokenizer("bpe:290", [text * 40])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.hf.save(str(path))
    return path


def random_ids(vocab_size: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def lyre_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits at every position (with targets the model computes them all)."""
    with torch.no_grad():
        return model(ids)[0]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------------------------
# Import


@pytest.mark.parametrize("shape, layout", [
    ("2x64x2", "save_pretrained"), ("2x64x2", "safetensors-bare"), ("2x64x2", "bin-prefixed"),
    ("2x64x2", "bin-bare"), ("1x48x4-relu-n_inner", "safetensors-bare"),
    ("3x32x1-untied", "bin-bare"), ("3x32x1-untied", "save_pretrained"),
])
def test_import_gives_the_same_logits(tmp_path, bpe_tokenizer_json, shape, layout):
    hf = random_gpt2(**SHAPES[shape])
    src = save_hf(hf, tmp_path / "src", layout, bpe_tokenizer_json)
    run_dir = import_hf(src, tmp_path / "run")
    run = load_run(run_dir, device="cpu")
    ids = random_ids(hf.config.vocab_size, (3, hf.config.n_positions), seed=1)
    assert max_diff(lyre_logits(run.model, ids), hf_logits(hf, ids)) <= TOL
    cfg = run.config.model
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.block_size) == (
        hf.config.n_layer, hf.config.n_embd, hf.config.n_head, hf.config.vocab_size, hf.config.n_positions)
    assert cfg.tie_embeddings == hf.config.tie_word_embeddings
    assert run.tokenizer.kind == "bpe"


@pytest.mark.parametrize("shape", ["2x64x2", "1x48x4-relu-n_inner"])
def test_greedy_generation_matches_transformers(tmp_path, bpe_tokenizer_json, shape):
    hf = random_gpt2(seed=3, **SHAPES[shape])
    run = load_run(import_hf(save_hf(hf, tmp_path / "src", "save_pretrained", bpe_tokenizer_json),
                             tmp_path / "run"), device="cpu")
    prompt = [5, 17, 42, 7, 99, 3, 64, 11]
    expected = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=50,
                           pad_token_id=0)[0, len(prompt):].tolist()
    ours = list(generate_tokens(run.model, prompt, SamplingConfig(max_new_tokens=50, temperature=0)))
    assert len(expected) == 50
    assert ours == expected


def test_gpt2_sizes_map_by_their_config():
    """small, medium, large, xl: the same shapes and parameter counts as transformers' models."""
    sizes = {"gpt2": (12, 768, 12, 124_439_808), "gpt2-medium": (24, 1024, 16, 354_823_168),
             "gpt2-large": (36, 1280, 20, 774_030_080), "gpt2-xl": (48, 1600, 25, 1_557_611_200)}
    for name, (n_layer, n_embd, n_head, n_params) in sizes.items():
        config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head)
        cfg = hf_to_lyre_config(config.to_dict())
        assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size, cfg.vocab_size) == (
            n_layer, n_embd, n_head, 1024, 50257), name
        options = (cfg.act, cfg.pos, cfg.norm, cfg.bias, cfg.tie_embeddings)
        assert options == ("gelu", "learned", "layernorm", True, True)
        with torch.device("meta"):
            ours = GPT(cfg).num_parameters()
            theirs = GPT2LMHeadModel(config).num_parameters()
        assert ours == theirs == n_params, name


def test_import_writes_an_ordinary_run(tmp_path, bpe_tokenizer_json, capsys):
    """`lyre sample` and load_run accept the result; it has config.json, tokenizer/, a checkpoint."""
    from tokenizers import Tokenizer

    vocab_size = Tokenizer.from_file(str(bpe_tokenizer_json)).get_vocab_size()  # no padded ids
    shape = {**SHAPES["2x64x2"], "vocab_size": vocab_size}
    src = save_hf(random_gpt2(**shape), tmp_path / "src", "save_pretrained", bpe_tokenizer_json)
    run_dir = import_hf(src, tmp_path / "run")
    assert (run_dir / "config.json").is_file() and (run_dir / "tokenizer" / "tokenizer.json").is_file()
    assert ckpt.latest_checkpoint(run_dir) == "last"
    assert main(["sample", str(run_dir), "--prompt", "the quick", "--max-new-tokens", "5",
                 "--temperature", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("the quick")


def test_imported_tokenizer_gives_the_same_ids(tmp_path, bpe_tokenizer_json):
    src = save_hf(random_gpt2(**SHAPES["2x64x2"]), tmp_path / "src", "save_pretrained", bpe_tokenizer_json)
    tokenizer = load_run(import_hf(src, tmp_path / "run"), device="cpu").tokenizer
    theirs = AutoTokenizer.from_pretrained(src)
    text = "the lazy dog\n  jumps over five  dozen naïve jugs 😀"
    assert tokenizer.encode(text) == theirs(text)["input_ids"]


# ----------------------------------------------------------------------------------------------
# Bad input: one-line LyreErrors


def good_src(tmp_path, tokenizer_json, layout="save_pretrained", **fields) -> Path:
    shape = {**SHAPES["2x64x2"], "n_layer": 1, **fields}
    return save_hf(random_gpt2(**shape), tmp_path / "src", layout, tokenizer_json)


def rewrite_weights(src: Path, change) -> None:
    from safetensors.torch import load_file

    state = load_file(str(src / "model.safetensors"))
    change(state)
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})


def rewrite_config(src: Path, **changes) -> None:
    config = json.loads((src / "config.json").read_text())
    config.update(changes)
    (src / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, message", [
    (lambda src: (src / "config.json").unlink(), "config.json not found"),
    (lambda src: rewrite_config(src, model_type="llama"), "unsupported model_type 'llama'"),
    (lambda src: rewrite_config(src, model_type="bert"), "unsupported model_type 'bert'"),
    (lambda src: rewrite_config(src, activation_function="gelu"), "exact (erf) GELU"),
    (lambda src: rewrite_config(src, layer_norm_epsilon=1e-6), "layer_norm_epsilon"),
    (lambda src: (src / "model.safetensors").unlink(), "no weights in"),
    (lambda src: (src / "model.safetensors").write_bytes(b"garbage"), "not a readable safetensors"),
    (lambda src: rewrite_weights(src, lambda s: s.update(extra=torch.zeros(1))), "unexpected weight 'extra'"),
    (lambda src: rewrite_weights(src, lambda s: s.pop("transformer.h.0.mlp.c_fc.bias")),
     "missing weight for 'transformer.h.0.mlp.c_fc.bias'"),
    (lambda src: rewrite_config(src, n_embd=32), "has shape"),
    (lambda src: rewrite_config(src, vocab_size=100), "has shape"),
])
def test_bad_input_is_a_one_line_error(tmp_path, bpe_tokenizer_json, damage, message):
    src = good_src(tmp_path, bpe_tokenizer_json)
    damage(src)
    with pytest.raises(LyreError) as info:
        import_hf(src, tmp_path / "run")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # nothing written on failure


def test_tokenizer_larger_than_the_model_is_refused(tmp_path, bpe_tokenizer_json):
    src = good_src(tmp_path, bpe_tokenizer_json, vocab_size=200)
    with pytest.raises(LyreError, match="tokenizer has .* tokens but the model only 200"):
        import_hf(src, tmp_path / "run")
    assert not (tmp_path / "run").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]


def test_sharded_checkpoint_imports(tmp_path, bpe_tokenizer_json):
    from safetensors.torch import load_file

    hf = random_gpt2(**SHAPES["2x64x2"])
    src = save_hf(hf, tmp_path / "src", "save_pretrained", bpe_tokenizer_json)
    state = load_file(str(src / "model.safetensors"))
    (src / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, str(src / name), metadata={"format": "pt"})
    weight_map = {k: name for name, names in shards.items() for k in names}
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = load_run(import_hf(src, tmp_path / "run"), device="cpu").model
    ids = random_ids(1000, (1, 32))
    assert max_diff(lyre_logits(model, ids), hf_logits(hf, ids)) <= TOL


def test_missing_tokenizer_is_named_and_can_be_supplied(tmp_path, bpe_tokenizer_json):
    src = good_src(tmp_path, bpe_tokenizer_json)
    (src / "tokenizer.json").unlink()
    with pytest.raises(LyreError, match="no usable tokenizer .* --tokenizer"):
        import_hf(src, tmp_path / "run")
    build_tokenizer("char", ["abcdefgh \n"]).save(tmp_path / "chars")
    run = load_run(import_hf(src, tmp_path / "run", tokenizer=str(tmp_path / "chars")), device="cpu")
    assert run.tokenizer.kind == "char" and run.tokenizer.encode("cab") == [4, 2, 3]


def test_pickled_code_in_pytorch_model_bin_is_never_run(tmp_path, bpe_tokenizer_json):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    src = good_src(tmp_path, bpe_tokenizer_json, layout="bin-bare")
    torch.save({"wte.weight": Evil()}, src / "pytorch_model.bin")
    with pytest.raises(LyreError, match="could not be loaded as plain tensors"):
        import_hf(src, tmp_path / "run")
    assert not marker.exists()


def test_out_dir_holding_a_run_needs_force(tmp_path, bpe_tokenizer_json):
    src = good_src(tmp_path, bpe_tokenizer_json)
    import_hf(src, tmp_path / "run")
    with pytest.raises(LyreError, match="--force"):
        import_hf(src, tmp_path / "run")
    import_hf(src, tmp_path / "run", force=True)
    assert load_run(tmp_path / "run", device="cpu").config.model.n_layer == 1


# ----------------------------------------------------------------------------------------------
# Export


def assert_loads_exactly(out: Path, model, vocab_size: int, cls=AutoModelForCausalLM):
    """transformers loads `out` with no missing/unexpected keys and gives the same logits."""
    hf, info = cls.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    length = model.config.block_size  # a full context: every position embedding is used
    ids = random_ids(vocab_size, (2, length), seed=2)
    assert max_diff(hf_logits(hf.eval(), ids), lyre_logits(model, ids)) <= TOL
    return hf


@pytest.mark.parametrize("shape", ["2x64x2", "3x32x1-untied"])
def test_import_then_export_round_trips(tmp_path, bpe_tokenizer_json, shape):
    hf = random_gpt2(**SHAPES[shape])
    src = save_hf(hf, tmp_path / "src", "bin-bare", bpe_tokenizer_json)
    out = export_hf(import_hf(src, tmp_path / "run"), tmp_path / "out")
    back, info = GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids = random_ids(hf.config.vocab_size, (2, 32), seed=4)
    assert max_diff(hf_logits(back, ids), hf_logits(hf, ids)) <= TOL
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert all(k.startswith("transformer.") for k in keys if k != "lm_head.weight")


@pytest.fixture(scope="module", params=["bpe:300", "char"])
def trained_gpt2_style(request, tmp_path_factory, tiny_config) -> Path:
    """A tiny GPT-2-style model trained by lyre itself (learned positions, LayerNorm, GELU)."""
    run_dir = tmp_path_factory.mktemp("trained") / request.param.replace(":", "")
    config = tiny_config("pos=learned", "norm=layernorm", "act=gelu", "bias=true",
                         f"data.tokenizer='{request.param}'",
                         "train.max_iters=3", "train.eval_interval=3", "train.final_eval=false")
    train(config, run_dir, progress=False, plot=False)
    return run_dir


def test_lyre_trained_model_exports_to_gpt2(tmp_path, trained_gpt2_style, tiny_corpus):
    run = load_run(trained_gpt2_style, device="cpu")
    out = export_hf(trained_gpt2_style, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    assert_loads_exactly(out, run.model, run.config.model.vocab_size, cls=GPT2LMHeadModel)
    theirs = AutoTokenizer.from_pretrained(out)
    text = tiny_corpus.read_text(encoding="utf-8")[:2000]
    if run.tokenizer.kind == "bpe":
        text += " naïve café 😀\t\n  end"  # byte-level: unseen characters work too
    ids = run.tokenizer.encode(text)
    assert theirs(text)["input_ids"] == ids
    assert theirs.decode(ids) == text


def test_exported_char_and_bpe_tokenizers_import_back(tmp_path, trained_gpt2_style):
    run = load_run(trained_gpt2_style, device="cpu")
    out = export_hf(trained_gpt2_style, tmp_path / "out")
    back = load_run(import_hf(out, tmp_path / "back"), device="cpu")
    assert back.tokenizer.kind == run.tokenizer.kind
    assert back.tokenizer.eot_id == run.tokenizer.eot_id is not None  # char reserves it too
    text = "Sing, O goddess, the anger"
    assert back.tokenizer.encode(text) == run.tokenizer.encode(text)
    ids = random_ids(run.config.model.vocab_size, (2, 16), seed=5)
    assert max_diff(lyre_logits(back.model, ids), lyre_logits(run.model, ids)) <= TOL


def test_char_tokenizer_with_unk_exports(tmp_path):
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=8)
    run_dir = make_run(tmp_path / "run", cfg, CharTokenizer(list("abc \n"), unk="?"))
    theirs = AutoTokenizer.from_pretrained(export_hf(run_dir, tmp_path / "out"))
    assert theirs("a?zb\n")["input_ids"] == load_tokenizer(run_dir / "tokenizer").encode("a?zb\n")


def test_char_tokenizer_endoftext_exports_and_imports(tmp_path):
    """<|endoftext|> goes out as the special token after the last character and comes back; a
    char export without it (lyre before char reserved it) imports without it."""
    from lyre.hf.tokenizer import hf_tokenizer_files, import_tokenizer

    tok = CharTokenizer(list("abc"))
    data = json.loads(hf_tokenizer_files(tok, 16)["tokenizer.json"])
    assert [(t["content"], t["id"]) for t in data["added_tokens"]] == [("<|endoftext|>", 3)]
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "tokenizer.json").write_text(json.dumps(data))
    assert import_tokenizer(tmp_path / "new", tmp_path / "new-back").special_tokens == tok.special_tokens
    data["added_tokens"] = []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "tokenizer.json").write_text(json.dumps(data))
    old = import_tokenizer(tmp_path / "old", tmp_path / "old-back")
    assert (old.eot_id, old.vocab_size) == (None, 3)


def make_run(run_dir: Path, cfg: GPTConfig, tokenizer, seed: int = 0) -> Path:
    """A run directory holding a random lyre model (every weight random, gains included)."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    run_dir.mkdir(parents=True)
    tokenizer.save(run_dir / "tokenizer")
    save_config(RunConfig(model=cfg), run_dir / "config.json")
    ckpt.save_checkpoint(run_dir, "last", model=model, optimizer=None, state={"step": 0})
    return run_dir


# Options with an exact Hugging Face architecture, and which one.
EXPORTABLE = [
    (dict(pos="learned", bias=False, act="relu2", tie_embeddings=False), "gpt2"),
    (dict(pos="sinusoidal", mlp_ratio=2.5), "gpt2"),
    (dict(pos="none", act="relu"), "gpt2"),
    (dict(pos="rope", norm="rmsnorm", bias=False, act="relu2"), "arcee"),
    (dict(pos="rope", norm="rmsnorm", bias=True, act="gelu", tie_embeddings=False, rope_base=500.0), "arcee"),
    (dict(pos="rope", norm="layernorm", bias=False, act="gelu"), "starcoder2"),
    (dict(pos="rope", norm="layernorm", bias=True, act="relu", mlp_ratio=3.0), "starcoder2"),
]


@pytest.mark.parametrize("options, model_type", EXPORTABLE)
def test_every_exportable_option_is_exact(tmp_path, options, model_type):
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=40, **options)
    run_dir = make_run(tmp_path / "run", cfg, build_tokenizer("char", ["abcdefghijklmnopqrstuvwxyz .,\n"]))
    model = load_run(run_dir, device="cpu").model
    out = export_hf(run_dir, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["model_type"] == model_type
    assert_loads_exactly(out, model, cfg.vocab_size)
    back = load_run(import_hf(out, tmp_path / "back"), device="cpu").model  # and back again
    ids = random_ids(cfg.vocab_size, (2, 32), seed=6)
    assert max_diff(lyre_logits(back, ids), lyre_logits(model, ids)) <= TOL


def test_conftest_modern_run_exports_to_arcee(tmp_path, trained_run):
    """rope + RMSNorm + ReLU^2 + no bias (the tiny preset): Arcee, the non-gated Llama."""
    out = export_hf(trained_run, tmp_path / "out")
    run = load_run(trained_run, device="cpu")
    hf = assert_loads_exactly(out, run.model, run.config.model.vocab_size)
    assert type(hf).__name__ == "ArceeForCausalLM"


@pytest.mark.parametrize("options, blockers", [
    (dict(norm="rmsnorm", pos="learned"), ["norm=rmsnorm", "pos=learned"]),
    (dict(norm="rmsnorm", pos="sinusoidal"), ["norm=rmsnorm", "pos=sinusoidal"]),
    (dict(arch="bigram"), ["arch='bigram'"]),
])
def test_models_without_an_exact_equivalent_are_refused(tmp_path, options, blockers):
    if options.get("arch") == "bigram":
        cfg = BigramConfig(block_size=16, vocab_size=8)
    else:
        cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=8, **options)
    if cfg.arch == "bigram":
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        from lyre.model import build_model

        build_tokenizer("char", ["abcdefgh"]).save(run_dir / "tokenizer")
        save_config(RunConfig(model=cfg), run_dir / "config.json")
        ckpt.save_checkpoint(run_dir, "last", model=build_model(cfg), optimizer=None, state={"step": 0})
    else:
        run_dir = make_run(tmp_path / "run", cfg, build_tokenizer("char", ["abcdefgh"]))
    with pytest.raises(LyreError) as info:
        export_hf(run_dir, tmp_path / "out")
    assert all(b in str(info.value) for b in blockers), str(info.value)
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_non_empty_out_without_force(tmp_path):
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=8)
    run_dir = make_run(tmp_path / "run", cfg, build_tokenizer("char", ["abcdefgh"]))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("mine")
    with pytest.raises(LyreError, match="--force"):
        export_hf(run_dir, tmp_path / "out")
    export_hf(run_dir, tmp_path / "out", force=True)
    assert (tmp_path / "out" / "README.md").read_text() == "mine"  # only model files replaced


# ----------------------------------------------------------------------------------------------
# GPT-2's own tokenizer, fine-tuning, from_pretrained, CLI


@pytest.fixture(scope="module", params=["fixture", "real"])
def gpt2_dir(request, tmp_path_factory) -> Path:
    """encoder.json + vocab.bpe in GPT-2's format: made by the test (tests/gpt2_fixture.py), and
    OpenAI's own files when the shared data is there."""
    if request.param == "real":
        if not (GPT2_DATA / "encoder.json").is_file():
            pytest.skip(NO_GPT2)
        return GPT2_DATA
    return gpt2_files(tmp_path_factory.getbasetemp())


def gpt2_hub_dir(directory: Path, tokenizer_dir: Path) -> Path:
    """A tiny random GPT-2 with a GPT-2 vocabulary, as the hub ships it (vocab.json, merges.txt)."""
    random_gpt2(seed=7, n_layer=1, n_embd=32, n_head=2, n_positions=64).save_pretrained(directory)
    shutil.copy(tokenizer_dir / "encoder.json", directory / "vocab.json")
    shutil.copy(tokenizer_dir / "vocab.bpe", directory / "merges.txt")
    return directory


GPT2_TEXT = "Hello  world!\n\n  It's 2024, naïve café — 😀 tabs\tand   spaces  \n's'll"


def test_gpt2_tokenizer_imports_and_exports(tmp_path, gpt2_dir):
    gpt2_src = gpt2_hub_dir(tmp_path / "src", gpt2_dir)
    run = load_run(import_hf(gpt2_src, tmp_path / "run"), device="cpu")
    assert run.tokenizer.kind == "gpt2"
    reference = load_tokenizer(f"gpt2:{gpt2_dir}")
    assert run.tokenizer.encode(GPT2_TEXT) == reference.encode(GPT2_TEXT)
    out = export_hf(tmp_path / "run", tmp_path / "out")
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    encoder = json.loads((gpt2_dir / "encoder.json").read_text())
    assert json.loads((out / "vocab.json").read_text()) == encoder
    theirs = AutoTokenizer.from_pretrained(out)
    assert theirs(GPT2_TEXT)["input_ids"] == reference.encode(GPT2_TEXT)
    special = GPT2_TEXT + "<|endoftext|>next"  # HF maps the special string, as lyre's allow_special
    assert theirs(special)["input_ids"] == reference.encode(special, allow_special=True)
    assert_loads_exactly(out, run.model, 50257, cls=GPT2LMHeadModel)
    for name in ("vocab.json", "merges.txt"):  # GPT-2's vocabulary inside tokenizer.json only
        (out / name).unlink()
    again = load_run(import_hf(out, tmp_path / "again"), device="cpu").tokenizer
    assert again.kind == "gpt2" and again.encode(GPT2_TEXT) == reference.encode(GPT2_TEXT)


def test_fine_tune_an_imported_gpt2(tmp_path, tmp_path_factory, tiny_config):
    """nanoGPT's finetune_shakespeare, in small: import, then `lyre train` with init_from."""
    gpt2_src = gpt2_hub_dir(tmp_path / "src", gpt2_files(tmp_path_factory.getbasetemp()))
    base = import_hf(gpt2_src, tmp_path / "base")
    before = load_run(base, device="cpu").model.state_dict()
    config = tiny_config(f"train.init_from='{base}'", f"data.tokenizer='gpt2:{base / 'tokenizer'}'",
                         "train.max_iters=3", "train.eval_interval=3", "train.final_eval=false",
                         "train.lr=1e-4", "train.warmup_iters=0", "train.batch_size=2")
    result = train(config, tmp_path / "tuned", progress=False, plot=False)
    assert result.step == 3 and result.best_val_loss < 20
    tuned = load_run(tmp_path / "tuned", "last", device="cpu")
    assert tuned.config.model.n_embd == 32 and tuned.tokenizer.kind == "gpt2"
    after = tuned.model.state_dict()
    moved = max_diff(after["transformer.wte.weight"], before["transformer.wte.weight"])
    assert 0 < moved < 0.01  # started from the imported weights, then trained a little


def test_from_pretrained_local_dir_and_hub_name_share_one_path(tmp_path, bpe_tokenizer_json, monkeypatch):
    import huggingface_hub

    hf = random_gpt2(**SHAPES["2x64x2"])
    src = save_hf(hf, tmp_path / "src", "save_pretrained", bpe_tokenizer_json)
    monkeypatch.setenv("LYRE_CACHE", str(tmp_path / "cache"))
    ids = random_ids(1000, (2, 20), seed=8)
    local = from_pretrained(src, device="cpu")
    assert max_diff(lyre_logits(local.model, ids), hf_logits(hf, ids)) <= TOL

    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append(repo_id)
        return str(src)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    hub = from_pretrained("someone/tiny-gpt2", device="cpu", run_dir=tmp_path / "run")
    assert calls == ["someone/tiny-gpt2"]
    assert max_diff(lyre_logits(hub.model, ids), hf_logits(hf, ids)) <= TOL
    assert (tmp_path / "run" / "config.json").is_file()

    def offline(repo_id, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(LyreError, match="cannot get 'gpt2' from the Hugging Face hub"):
        from_pretrained("gpt2")
    with pytest.raises(LyreError, match="not a Hugging Face model directory"):
        from_pretrained(tmp_path / "missing" / "deeper" / "dir")


def test_cli_import_and_export(tmp_path, bpe_tokenizer_json, capsys):
    hf = random_gpt2(**SHAPES["2x64x2"])
    src = save_hf(hf, tmp_path / "src", "safetensors-bare", bpe_tokenizer_json)
    assert main(["import-hf", str(src), "--out", str(tmp_path / "run")]) == 0
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    assert "from_pretrained" in capsys.readouterr().out
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "out")
    ids = torch.randint(0, 1000, (1, 16))
    assert max_diff(hf_logits(back, ids), hf_logits(hf, ids)) <= TOL

    assert main(["import-hf", str(tmp_path / "nowhere" / "x" / "y"), "--out", str(tmp_path / "r2")]) == 2
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lyre: error: ")]
    assert "not a Hugging Face model directory" in errors[0] and "--force" in errors[1]
