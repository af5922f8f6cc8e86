"""Tiny real checkpoints for tests: built from transformers configs, saved with safetensors and a real
tokenizer, with known structure planted so tests can assert lensdb finds it."""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

WORDS = ["paris", "london", "berlin", "rome", "madrid", "king", "queen", "apple", "river", "blue", "green",
         "seven", "eight", "dog", "cat", "house", "music", "water", "fire", "stone"]


def byte_bpe_tokenizer(cased: bool = False) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE tokenizer trained on WORDS: ' paris' becomes the single token 'Ġparis'
    (``cased``: trained on the capitalised words, ' Paris' → 'ĠParis', and no lower-case 'Ġparis')."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    words = [w.capitalize() for w in WORDS] if cased else WORDS
    tok.train_from_iterator([" " + " ".join(words)] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT style WordPiece tokenizer: specials, whole words, and '##' continuations."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = specials + WORDS + [f"##{s}" for s in ("s", "ing", "ed", "paris")] + [f"w{i}" for i in range(60)]
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


@dataclass
class Planted:
    """Known structure: (layer, neuron) → token id it promotes / suppresses / reads."""

    promotes: dict[tuple[int, int], int] = field(default_factory=dict)
    suppresses: dict[tuple[int, int], int] = field(default_factory=dict)
    reads: dict[tuple[int, int], int] = field(default_factory=dict)


@dataclass
class TinyModel:
    path: Path
    tokenizer: PreTrainedTokenizerFast
    planted: Planted
    state: dict[str, torch.Tensor]

    def token_id(self, word: str) -> int:
        for candidate in ("Ġ" + word, word, "Ġ" + word.capitalize()):
            tid = self.tokenizer.convert_tokens_to_ids(candidate)
            if tid is not None and tid != self.tokenizer.unk_token_id:
                return int(tid)
        raise KeyError(word)


def _plant(unembed: torch.Tensor, tid: int) -> torch.Tensor:
    """A direction that ranks ``tid`` first under any centring: the token's row, made long."""
    return unembed[tid] * 8.0


def save_gpt2(path: Path, seed: int = 0, n_layer: int = 2, n_embd: int = 32, plant_heads: bool = False,
              cased: bool = False) -> TinyModel:
    """A tiny GPT-2: FF value 1.7 promotes ' paris', 0.3 suppresses ' london', FF key 1.5 reads ' king'
    (``cased``: its vocabulary has ' Paris', ' London', … and none of the lower-case words)."""
    torch.manual_seed(seed)
    tokenizer = byte_bpe_tokenizer(cased)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=16, n_embd=n_embd, n_layer=n_layer, n_head=4,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    tiny = TinyModel(path, tokenizer, Planted(), {})
    wte = model.transformer.wte.weight.data
    for word in ("paris", "london", "king"):
        wte[tiny.token_id(word)] *= 3.0
    paris, london, king = (tiny.token_id(w) for w in ("paris", "london", "king"))
    with torch.no_grad():
        h = model.transformer.h
        h[1].mlp.c_proj.weight[7] = _plant(wte, paris)  # Conv1D [in, out]: FF values are rows
        h[0].mlp.c_proj.weight[3] = -_plant(wte, london)
        h[1].mlp.c_fc.weight[:, 5] = _plant(wte, king)  # FF keys are columns of c_fc
    tiny.planted = Planted(promotes={(1, 7): paris}, suppresses={(0, 3): london}, reads={(1, 5): king})
    if plant_heads:
        _plant_heads(model, tiny)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    tiny.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return tiny


OV_HEAD = (1, 2)  # layer, head whose OV map sends ' king' to ' queen'
QK_HEAD = (0, 1)  # layer, head whose queries at ' dog' attend to keys at ' cat'


def _plant_heads(model: GPT2LMHeadModel, tiny: TinyModel) -> None:
    """A head that, attending to ' king', writes ' queen'; a head whose query ' dog' seeks the key ' cat'.

    GPT-2's c_attn is Conv1D [d, 3d] (q | k | v columns, head-major); attn.c_proj rows are z coordinates.
    """
    d = model.config.n_embd
    dh = d // model.config.n_head
    wte = model.transformer.wte.weight.data
    king, queen, dog, cat = (tiny.token_id(w) for w in ("king", "queen", "dog", "cat"))
    for tid in (queen, dog, cat):
        wte[tid] *= 3.0
    with torch.no_grad():
        layer, h = OV_HEAD
        attn = model.transformer.h[layer].attn
        v_cols = slice(2 * d + h * dh, 2 * d + (h + 1) * dh)
        attn.c_attn.weight[:, v_cols] = 0
        attn.c_attn.weight[:, 2 * d + h * dh] = _plant(wte, king)
        attn.c_proj.weight[h * dh : (h + 1) * dh] = 0
        attn.c_proj.weight[h * dh] = _plant(wte, queen)
        layer, h = QK_HEAD
        attn = model.transformer.h[layer].attn
        for offset, tid in ((0, dog), (d, cat)):
            cols = slice(offset + h * dh, offset + (h + 1) * dh)
            attn.c_attn.weight[:, cols] = 0
            attn.c_attn.weight[:, offset + h * dh] = _plant(wte, tid)


def save_bert(path: Path, seed: int = 0) -> TinyModel:
    """A tiny BERT: FF value 1.9 promotes 'paris', FF key 0.4 reads 'king'."""
    torch.manual_seed(seed)
    tokenizer = wordpiece_tokenizer()
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=16)
    model = BertModel(cfg).eval()
    tiny = TinyModel(path, tokenizer, Planted(), {})
    emb = model.embeddings.word_embeddings.weight.data
    paris, king = tiny.token_id("paris"), tiny.token_id("king")
    emb[paris] *= 3.0
    emb[king] *= 3.0
    with torch.no_grad():
        model.encoder.layer[1].output.dense.weight[:, 9] = _plant(emb, paris)  # nn.Linear [out, in]: columns
        model.encoder.layer[0].intermediate.dense.weight[4] = _plant(emb, king)
    tiny.planted = Planted(promotes={(1, 9): paris}, reads={(0, 4): king})
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    tiny.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return tiny
