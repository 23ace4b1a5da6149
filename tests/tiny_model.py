"""Build a tiny random-weight Llama folder that vLLM loads like any HF model, with no network.

A byte-level BPE is trained on a fixed text generated here (not on files that change from
commit to commit: the model, and every greedy answer the tests see, must not change when the
sources do), a chat template is attached, and a 2-layer LlamaForCausalLM (hidden 128, 4 heads: head_dim 32, which the
CPU attention backend supports) is saved next to it. Its text is gibberish, but greedy
output is deterministic, which is all the engine tests need.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "<|im_end|>", "<|im_start|>", "<pad>"]
VOCAB_SIZE = 512
MAX_POSITIONS = 128


SPECIAL_IDS = tuple(range(len(SPECIALS)))  # the trainer gives special tokens the first ids
CORPUS_VERSION = 2  # bump when the corpus or the model changes: cached folders are rebuilt

_WORDS = ("the a an of to in on for with by from at as is are was be this that it its which "
          "request requests batch job jobs chunk chunks spool inbox result results model engine "
          "answer question line lines file files worker daemon queue checkpoint error token tokens "
          "time data value name age item list string number true false null open close start stop "
          "quick brown fox jumps over lazy dog red green blue small large first last next every").split()
_PUNCT = (".", ",", ":", ";", "?", "!", " -", " (x)", " [1]", " {}")


def _corpus() -> list[str]:
    """Sentences, code-like lines and JSON, from a seeded generator: the same on every machine."""
    import random

    rng = random.Random(20261127)
    lines: list[str] = []
    for _ in range(3000):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice(_PUNCT))
        if rng.random() < 0.2:
            lines.append(f"def {rng.choice(_WORDS)}_{rng.randint(0, 99)}({rng.choice(_WORDS)}): "
                         f"return {rng.randint(0, 9999)}")
    # Digits, braces and quotes keep JSON-shaped output reachable for structured-output tests.
    lines += ['{"name": "x", "age": 1, "ok": true, "items": [1, 2, 3]}'] * 50
    lines += ["The quick brown fox jumps over the lazy dog. 0123456789"] * 20
    return lines


def build_tiny_llama(out: Path, *, seed: int = 0) -> Path:
    """Write the tiny model into ``out`` (created); return ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>",
                                        eos_token="<|im_end|>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = MAX_POSITIONS
    tokenizer.save_pretrained(str(out))

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=32, max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def tiny_llama(cache: Path | None = None) -> Path:
    """The tiny model folder under ``cache`` (built once, atomically); return its path."""
    base = cache or Path(tempfile.gettempdir()) / f"spoolbatch-tiny-{os.getuid()}"
    target = base / f"tiny-llama-v{CORPUS_VERSION}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama.", dir=base))
    try:
        build_tiny_llama(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another builder won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


if __name__ == "__main__":  # build by hand: python tests/tiny_model.py DIR
    import sys

    print(build_tiny_llama(Path(sys.argv[1])))


def build_tiny_cross_encoder(out: Path, *, seed: int = 0) -> Path:
    """A tiny random-weight cross-encoder (``BertForSequenceClassification``, one label) in ``out``.

    A WordPiece tokenizer with BERT's ``[CLS] a [SEP] b [SEP]`` pair template is trained on the
    same fixed corpus; vLLM serves the folder as a scoring model (``LLM.score``).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    wp.train_from_iterator(_corpus(), trainer=trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials,
                                                                       show_progress=False))
    cls, sep = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer = BertTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                  cls_token="[CLS]", mask_token="[MASK]")
    tokenizer.model_max_length = MAX_POSITIONS
    tokenizer.save_pretrained(str(out))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=MAX_POSITIONS, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id)
    BertForSequenceClassification(config).save_pretrained(str(out), safe_serialization=True)
    return out

