"""Text tokenizers that return fixed-length (ids, mask) arrays for the text encoder.

`HFTokenizer` wraps a Hugging Face tokenizer saved in a local folder (e.g. t5-base's), used as
the official conditioner does: truncate, then pad to `max_length`. `ByteTokenizer` needs no
vocabulary file (UTF-8 bytes shifted past the special ids), for small configs that train their
own text encoder. `WordTokenizer` maps lower-cased words, decimal numbers and punctuation to
ids of a closed vocabulary given in the config (48 word tokens hold every caption of the
embedded dataset whole, where 32 bytes cut them after the first word). All end every prompt
with EOS, so an empty prompt is one EOS token. `build_tokenizer` picks one from a `config.model.text` section.
"""
import os
import pathlib
import re
from typing import NamedTuple, Sequence

import numpy as np


class Tokens(NamedTuple):
  """input_ids (B, L) int32, padded with the pad id; attention_mask (B, L) int32, 1 = token."""
  input_ids: np.ndarray
  attention_mask: np.ndarray


def _as_list(texts: str | Sequence[str]) -> list[str]:
  if isinstance(texts, str):
    return [texts]
  texts = list(texts)
  if not all(isinstance(t, str) for t in texts):
    raise ValueError('texts must be a string or a sequence of strings')
  return texts


def _local_folder(folder) -> pathlib.Path | None:
  """`folder` itself, or for a URL (a tokenizer inside a gs:// checkpoint) a local copy of its
  files (None if there is no such folder): transformers reads local files only."""
  if '://' not in str(folder):
    return pathlib.Path(folder)
  import tempfile
  from etils import epath
  remote = epath.Path(str(folder))
  if not remote.is_dir():
    return None
  local = pathlib.Path(tempfile.mkdtemp(prefix='axturbo-tokenizer-'))
  for f in remote.iterdir():
    if f.is_file():
      f.copy(epath.Path(local / f.name))
  return local


class HFTokenizer:
  """A transformers tokenizer loaded from `local_dir` only (never downloaded).

  Call with a string or a list of B strings -> `Tokens` of shape (B, max_length), truncated
  and padded to `max_length` ('max_length' padding, as the official T5 conditioner).
  """

  def __init__(self, local_dir, max_length: int = 128):
    if max_length < 1:
      raise ValueError(f'max_length must be >= 1, got {max_length}')
    folder = _local_folder(local_dir)
    if folder is None or not folder.is_dir():
      raise FileNotFoundError(f'tokenizer folder {str(local_dir)!r} does not exist (tokenizers are '
                              'read locally only; save one there with save_pretrained)')
    try:
      from transformers import AutoTokenizer
    except ImportError as e:
      raise ImportError('HFTokenizer needs the transformers package') from e
    try:
      self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
      raise FileNotFoundError(f'no usable tokenizer in {str(folder)!r}: {e}') from e
    self.max_length = max_length

  @property
  def pad_id(self) -> int:
    return self.tokenizer.pad_token_id

  @property
  def eos_id(self) -> int:
    return self.tokenizer.eos_token_id

  @property
  def vocab_size(self) -> int:
    return len(self.tokenizer)

  def lengths(self, texts: str | Sequence[str]) -> list[int]:
    """Untruncated token counts (EOS included): above `max_length`, a prompt is cut."""
    return [len(ids) for ids in self.tokenizer(_as_list(texts))['input_ids']]

  def __call__(self, texts: str | Sequence[str]) -> Tokens:
    enc = self.tokenizer(_as_list(texts), truncation=True, max_length=self.max_length,
                         padding='max_length', return_tensors='np')
    return Tokens(enc['input_ids'].astype(np.int32), enc['attention_mask'].astype(np.int32))


class ByteTokenizer:
  """UTF-8 bytes as ids `byte + OFFSET`, then EOS; pad 0. Vocabulary size 259.

  Truncation keeps the first `max_length - 1` bytes and still ends with EOS (as HF tokenizers
  truncate before adding special tokens).
  """
  PAD = 0
  EOS = 1
  UNK = 2  # reserved (never produced); keeps ByT5's id layout
  OFFSET = 3
  vocab_size = 256 + OFFSET
  pad_id = PAD
  eos_id = EOS

  def __init__(self, max_length: int = 128):
    if max_length < 1:
      raise ValueError(f'max_length must be >= 1, got {max_length}')
    self.max_length = max_length

  def lengths(self, texts: str | Sequence[str]) -> list[int]:
    """Untruncated token counts (EOS included): above `max_length`, a prompt is cut."""
    return [len(t.encode('utf-8')) + 1 for t in _as_list(texts)]

  def encode(self, text: str) -> list[int]:
    """Token ids of one prompt, EOS included, at most `max_length` long (unpadded)."""
    body = [b + self.OFFSET for b in text.encode('utf-8')][:self.max_length - 1]
    return body + [self.EOS]

  def decode(self, ids: Sequence[int]) -> str:
    """Text up to the first EOS/pad; a multi-byte character cut by truncation becomes U+FFFD."""
    out = bytearray()
    for i in ids:
      i = int(i)
      if i in (self.EOS, self.PAD):
        break
      if i >= self.OFFSET:
        out.append(i - self.OFFSET)
    return out.decode('utf-8', errors='replace')

  def __call__(self, texts: str | Sequence[str]) -> Tokens:
    return _pad_rows([self.encode(t) for t in _as_list(texts)], self.max_length, self.PAD)


_WORD = re.compile(r"\d+\.\d+|\d+|[^\W\d_]+|[^\w\s]")


def split_words(text: str) -> list[str]:
  """Lower-cased tokens: decimal numbers ('0.5'), integers, letter runs, single punctuation."""
  return _WORD.findall(text.lower())


class WordTokenizer:
  """Words of a closed vocabulary as ids `index + OFFSET`, then EOS; pad 0; UNK for the rest.

  Truncation keeps the first `max_length - 1` words and still ends with EOS. `unknown(texts)`
  lists the words of texts that are not in the vocabulary (callers warn about them).
  """
  PAD = 0
  EOS = 1
  UNK = 2
  OFFSET = 3
  pad_id = PAD
  eos_id = EOS

  def __init__(self, vocab: Sequence[str], max_length: int = 128):
    if max_length < 1:
      raise ValueError(f'max_length must be >= 1, got {max_length}')
    vocab = list(vocab)
    if not vocab or len(set(vocab)) != len(vocab):
      raise ValueError('model.text.vocab must be a non-empty list of distinct words')
    bad = [w for w in vocab if split_words(w) != [w]]
    if bad:
      raise ValueError(f'model.text.vocab entries must be single lower-case tokens, got {bad[:5]}')
    self.vocab = vocab
    self.ids = {w: i + self.OFFSET for i, w in enumerate(vocab)}
    self.max_length = max_length

  @property
  def vocab_size(self) -> int:
    return len(self.vocab) + self.OFFSET

  def unknown(self, texts: str | Sequence[str]) -> list[str]:
    return sorted({w for t in _as_list(texts) for w in split_words(t) if w not in self.ids})

  def lengths(self, texts: str | Sequence[str]) -> list[int]:
    """Untruncated token counts (EOS included): above `max_length`, a prompt is cut."""
    return [len(split_words(t)) + 1 for t in _as_list(texts)]

  def encode(self, text: str) -> list[int]:
    """Token ids of one prompt, EOS included, at most `max_length` long (unpadded)."""
    body = [self.ids.get(w, self.UNK) for w in split_words(text)][:self.max_length - 1]
    return body + [self.EOS]

  def __call__(self, texts: str | Sequence[str]) -> Tokens:
    return _pad_rows([self.encode(t) for t in _as_list(texts)], self.max_length, self.PAD)


def _pad_rows(rows: list[list[int]], max_length: int, pad_id: int) -> Tokens:
  ids = np.full((len(rows), max_length), pad_id, np.int32)
  mask = np.zeros((len(rows), max_length), np.int32)
  for r, row in enumerate(rows):
    ids[r, :len(row)] = row
    mask[r, :len(row)] = 1
  return Tokens(ids, mask)


TOKENIZERS = ('hf', 'byte', 'word')


def build_tokenizer(text_config, checkpoint_dir=None):
  """The tokenizer of a `config.model.text` section.

  'byte' and 'word' need no files; 'hf' reads the folder `text_config.tokenizer_dir` (default
  'tokenizer'), relative to `checkpoint_dir` when one is given.
  """
  kind = text_config.tokenizer
  if kind not in TOKENIZERS:
    raise ValueError(f'model.text.tokenizer must be one of {TOKENIZERS}, got {kind!r}')
  if kind == 'byte':
    return ByteTokenizer(text_config.max_length)
  if kind == 'word':
    return WordTokenizer(text_config.get('vocab') or (), text_config.max_length)
  folder = text_config.tokenizer_dir or 'tokenizer'
  if checkpoint_dir is not None and not (os.path.isabs(folder) or '://' in folder):
    folder = f'{str(checkpoint_dir).rstrip("/")}/{folder}'   # a URL stays one
  elif not text_config.tokenizer_dir:
    raise ValueError("config.model.text.tokenizer_dir must name a local tokenizer folder "
                     "(model.text.tokenizer='hf'); or use tokenizer 'byte' or 'word'")
  return HFTokenizer(folder, text_config.max_length)


def offline_tokenizer(text_config):
  """`build_tokenizer`, except that 'hf' (a vocabulary folder) becomes bytes: for synthetic data
  and random-weight benchmarks, which have no folder; byte ids (< 259) are valid ids of every
  HF vocabulary this project uses."""
  if text_config.tokenizer == 'hf':
    return ByteTokenizer(text_config.max_length)
  return build_tokenizer(text_config)
