# ruff: noqa: RUF001  (the corpus is multilingual on purpose)
"""Small random-weight generative models, built offline in seconds.

* ``tiny-llama``: LlamaForCausalLM with a chat template (head_dim 64, so
  vLLM's CPU attention accepts it);
* ``tiny-gpt2``: GPT2LMHeadModel without a chat template (chat is a 400);
* ``tiny-t5``: T5ForConditionalGeneration (encoder-decoder: echo is a 400).

Each gets a byte-level BPE tokenizer trained on the corpus below (with
multi-byte characters, so streams must not split them), saved the way a Hub
model is, so ``--model_id <folder>`` loads it through the same path. With
random weights the text is noise: tests check mechanics, not prose.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A model server answers requests for text generation and classification.",
    "Streaming sends tokens one by one while the model is still generating.",
    "Batching lets many requests share the same forward pass of the model.",
    "The capital of France is Paris, and the capital of Germany is Berlin.",
    "Translate from English to German: we are making words.",
    "Hello, my dog is cute. My cat is cuter, and the bird sings all day.",
    "Once upon a time there was a small model that learned to count: one two three four five.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 and symbols ! ? , . ; : - ( ) [ ] { } \" '",
    "Café crème, naïve résumé, déjà vu, façade, jalapeño, über, Straße, smörgåsbord.",
    "日本語のテキストも少し含めます。東京は日本の首都です。",
    "中文文本：模型服务器回答请求。",
    "Emoji travel in four bytes: 🙂 🚀 🌍 ✨ 👍 🎉.",
    "Привет, мир! Γειά σου κόσμε! مرحبا بالعالم",
    "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nHi there!</s>\n<|assistant|>\n",
    "<|user|>\nWhat is the weather like today?</s>\n<|assistant|>\nIt is sunny and warm.</s>\n",
    "def hello(name):\n    return f'Hello, {name}!'\n\nprint(hello('world'))\n",
    "Stop words, stop signs, and STOP markers end the generation early.",
    "The end. END. ### Done. --- Finished.",
]

# A Zephyr-style template: roles as plain text, each turn closed by EOS.
# With tools it adds a Hermes-style system turn listing them, renders the
# tool calls of assistant turns as <tool_call> JSON and tool results as
# "tool" turns (without tools the text is the same as before).
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>\nYou may call one or more functions. The functions:\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    'Answer each call as <tool_call>{"name": <name>, "arguments": <arguments object>}</tool_call>'
    "{{ eos_token }}\n{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "<tool_call>{\"name\": {{ call['function']['name'] | tojson }}, "
    "\"arguments\": {{ call['function']['arguments'] | tojson }}}</tool_call>"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

VOCAB_SIZE = 640


def _train_tokenizer(special_tokens: list[str], vocab_size: int = VOCAB_SIZE) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeated so that merges of whole words are learned.
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    return tokenizer


def _save_tokenizer(backend: Any, folder: Path, chat_template: str | None, **special: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_input_names=["input_ids", "attention_mask"],
        **special,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    # transformers 5 writes "TokenizersBackend", which older versions (vLLM's
    # pin) cannot load.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = ["input_ids", "attention_mask"]
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return tokenizer


def _bos_post_processor(bos: str, bos_id: int) -> Any:
    from tokenizers import processors

    return processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )


def _eos_post_processor(eos: str, eos_id: int) -> Any:
    from tokenizers import processors

    return processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)]
    )


def _save_model(model: Any, folder: Path, generation: dict[str, Any]) -> None:
    from transformers import GenerationConfig

    model.save_pretrained(folder)
    GenerationConfig(**generation).save_pretrained(folder)


def build_tiny_llama(folder: Path, hidden_size: int = 128, layers: int = 2, heads: int = 2) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    backend = _train_tokenizer(["<unk>", "<s>", "</s>"])
    bos, eos = backend.token_to_id("<s>"), backend.token_to_id("</s>")
    backend.post_processor = _bos_post_processor("<s>", bos)
    tokenizer = _save_tokenizer(
        backend,
        folder,
        LLAMA_CHAT_TEMPLATE,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden_size // heads,
        max_position_embeddings=1024,
        # Larger than usual so the random model has preferences (fewer
        # near-ties between the top tokens).
        initializer_range=0.2,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    _save_model(model, folder, {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos})


def build_tiny_gpt2(folder: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    backend = _train_tokenizer(["<|endoftext|>"])
    eot = backend.token_to_id("<|endoftext|>")
    tokenizer = _save_tokenizer(
        backend,
        folder,
        None,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=64,
        n_layer=2,
        n_head=2,
        n_positions=256,
        initializer_range=0.2,
        bos_token_id=eot,
        eos_token_id=eot,
        architectures=["GPT2LMHeadModel"],
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    _save_model(model, folder, {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot})


def build_tiny_t5(folder: Path) -> None:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    backend = _train_tokenizer(["<pad>", "</s>", "<unk>"])
    pad, eos = backend.token_to_id("<pad>"), backend.token_to_id("</s>")
    backend.post_processor = _eos_post_processor("</s>", eos)
    tokenizer = _save_tokenizer(backend, folder, None, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    # Keys T5Config takes through its generic **kwargs (typed stubs lack them).
    generic: dict[str, Any] = {
        "n_positions": 512,
        "decoder_start_token_id": pad,
    }
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=32,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        pad_token_id=pad,
        eos_token_id=eos,
        architectures=["T5ForConditionalGeneration"],
        **generic,
    )
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        # T5 ties its output layer to the embeddings, so a random model
        # repeats its start (pad) token forever; a zero pad row prevents it.
        model.shared.weight[pad].zero_()
    _save_model(
        model,
        folder,
        {"decoder_start_token_id": pad, "eos_token_id": eos, "pad_token_id": pad},
    )


def build_bench_llama(folder: Path) -> None:
    """A somewhat larger Llama for the generation batching benchmark."""
    build_tiny_llama(folder, hidden_size=256, layers=4, heads=4)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-llama": build_tiny_llama,
    "tiny-gpt2": build_tiny_gpt2,
    "tiny-t5": build_tiny_t5,
}
BENCH_BUILDERS: dict[str, Callable[[Path], None]] = {"bench-llama": build_bench_llama}


def build_generative(out: Path, bench: bool = False) -> list[Path]:
    """Build every generative test model under ``out`` (skipping those that
    exist) and return their folders."""
    builders = {**BUILDERS, **(BENCH_BUILDERS if bench else {})}
    Path(out).mkdir(parents=True, exist_ok=True)
    folders = []
    for name, build in builders.items():
        folder = Path(out) / name
        if not folder.exists():
            # Built aside and renamed, so a concurrent or interrupted build
            # never leaves a half-written model where a complete one is expected.
            staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
            try:
                build(staging)
                staging.chmod(0o755)
                with contextlib.suppress(OSError):
                    staging.rename(folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        folders.append(folder)
    return folders
