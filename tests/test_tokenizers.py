"""Tokenizers: byte tokenizer behaviour, and HFTokenizer on a tiny tokenizer built offline."""
import numpy as np
import pytest

from axturbo.data.tokenizers import ByteTokenizer, HFTokenizer


def test_byte_round_trip_eos_and_padding():
  tok = ByteTokenizer(max_length=16)
  ids, mask = tok(['héllo', ''])
  assert ids.shape == mask.shape == (2, 16) and ids.dtype == mask.dtype == np.int32
  n = len('héllo'.encode('utf-8'))  # 6 bytes
  assert ids[0, n] == tok.EOS and mask[0].sum() == n + 1 and np.all(ids[0, n + 1:] == tok.PAD)
  assert tok.decode(ids[0]) == 'héllo'
  assert ids[0, 0] == ord('h') + tok.OFFSET
  # Empty prompt: exactly one EOS token.
  assert ids[1, 0] == tok.EOS and mask[1].sum() == 1 and np.all(ids[1, 1:] == 0)
  assert tok.decode(ids[1]) == ''
  assert ids.max() < tok.vocab_size


def test_byte_truncation_keeps_eos():
  tok = ByteTokenizer(max_length=4)
  ids, mask = tok('abcdef')
  np.testing.assert_array_equal(ids[0], [ord('a') + 3, ord('b') + 3, ord('c') + 3, tok.EOS])
  assert mask.sum() == 4 and tok.decode(ids[0]) == 'abc'
  with pytest.raises(ValueError, match='max_length'):
    ByteTokenizer(0)


def test_hf_missing_folder_names_it(tmp_path):
  missing = tmp_path / 'no_such_tokenizer'
  with pytest.raises(FileNotFoundError, match='no_such_tokenizer'):
    HFTokenizer(missing)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='empty'):
    HFTokenizer(tmp_path / 'empty')


def _tiny_t5_like_tokenizer(folder):
  """A word-level tokenizer with T5's special ids (pad 0, </s> 1, unk 2), made offline."""
  tokenizers = pytest.importorskip('tokenizers')
  transformers = pytest.importorskip('transformers')
  words = ['<pad>', '</s>', '<unk>', 'a', 'dog', 'barks', 'loudly', 'at', 'night']
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate(words)}, unk_token='<unk>'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single='$A </s>', special_tokens=[('</s>', 1)])
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='<pad>',
                                              eos_token='</s>', unk_token='<unk>')
  fast.save_pretrained(str(folder))


def test_hf_tokenizer_from_local_folder(tmp_path):
  _tiny_t5_like_tokenizer(tmp_path / 'tok')
  tok = HFTokenizer(tmp_path / 'tok', max_length=5)
  ids, mask = tok(['a dog barks', '', 'a dog barks loudly at night', 'a cat'])
  assert ids.shape == (4, 5) and ids.dtype == np.int32 and mask.dtype == np.int32
  np.testing.assert_array_equal(ids[0], [3, 4, 5, 1, 0])
  np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 0])
  np.testing.assert_array_equal(ids[1], [1, 0, 0, 0, 0])       # '' -> '</s>'
  np.testing.assert_array_equal(ids[2], [3, 4, 5, 6, 1])       # truncated, EOS kept
  np.testing.assert_array_equal(ids[3], [3, 2, 1, 0, 0])       # unknown word
  assert tok.eos_id == 1 and tok.pad_id == 0


def test_word_tokenizer_ids_unknown_words_and_truncation():
  from axturbo.data.tokenizers import WordTokenizer, split_words
  assert split_words('[0.3s-0.9s] Rising chirp.') == ['[', '0.3', 's', '-', '0.9', 's', ']',
                                                      'rising', 'chirp', '.']
  tok = WordTokenizer(['bell', 'then', 'tone', ','], max_length=5)
  ids, mask = tok(['Bell, then TONE', 'bell then gong', ''])
  np.testing.assert_array_equal(ids[0], [3, 6, 4, 5, tok.EOS])
  np.testing.assert_array_equal(ids[1], [3, 4, tok.UNK, tok.EOS, tok.PAD])
  np.testing.assert_array_equal(mask.sum(1), [5, 4, 1])
  assert tok.unknown(['bell then gong', 'a bell']) == ['a', 'gong']
  ids, _ = tok('bell bell bell bell bell bell')          # truncated, still ends with EOS
  np.testing.assert_array_equal(ids[0], [3, 3, 3, 3, tok.EOS])
  assert tok.vocab_size == 7
  with pytest.raises(ValueError, match='single lower-case tokens'):
    WordTokenizer(['two words'])
  with pytest.raises(ValueError, match='distinct'):
    WordTokenizer(['a', 'a'])


def test_caption_vocabulary_covers_every_caption():
  """Every caption style of train and held-out clips tokenizes without an unknown word."""
  from axturbo.data import embedded
  from axturbo.data.tokenizers import WordTokenizer
  vocab = embedded.caption_vocabulary(2.0)
  tok = WordTokenizer(vocab, max_length=48)
  for split in ('train', 'heldout'):
    for i in range(60):
      captions = embedded.make_clip(i, split, 16000, 2.0, video_size=8)['captions'].values()
      assert tok.unknown(list(captions)) == []
      assert max(len(tok.encode(c)) for c in captions) < 48   # never truncated
  assert {'0.0', '2.0', 'rising', 'twice', 'followed'} <= set(vocab)


def test_build_tokenizer_picks_by_config():
  import ml_collections as mlc
  from axturbo.data import tokenizers
  text = mlc.ConfigDict(dict(tokenizer='word', vocab=('a', 'b'), max_length=8, tokenizer_dir=''))
  assert isinstance(tokenizers.build_tokenizer(text), tokenizers.WordTokenizer)
  text.tokenizer = 'byte'
  assert isinstance(tokenizers.build_tokenizer(text), tokenizers.ByteTokenizer)
  text.tokenizer = 'hf'
  with pytest.raises(ValueError, match='tokenizer_dir'):
    tokenizers.build_tokenizer(text)
  text.tokenizer = 'spm'
  with pytest.raises(ValueError, match='must be one of'):
    tokenizers.build_tokenizer(text)
