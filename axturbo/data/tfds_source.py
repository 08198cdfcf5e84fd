"""Base examples (data/tasks.py) from a TFDS dataset in ArrayRecord files, read without TensorFlow.

The format: `data/tfds_builders.py` builds datasets whose features are `features(shapes)` (the
base example's fixed shapes, plus IF-caps-Pro annotations where the source has them) with one
example per source item, in the source's order. `TfdsSource` reads any TFDS dataset that has the
base example's features at the model config's shapes, through TFDS's random-access
ArrayRecord reader, for the grain pipeline (data/pipeline.py, config.data.source = 'tfds').

TFDS decodes every feature of an example (its partial decoding needs TensorFlow), so the
annotations are decoded too and dropped here; they are a few short strings.
"""
import numpy as np

BASE_KEYS = ('audio', 'length', 'frames', 'has_video', 'sync', 'prompt', 'has_prompt',
             'caption', 'task')
# The IF-caps-Pro annotations: {category: count}, sound events with times, the categories in
# temporal order, and which caption style the caption is (empty where the source has none).
ANNOTATION_KEYS = ('category', 'sed', 'time_relation', 'caption_style')


SHAPE_KEYS = ('sample_rate', 'audio_samples', 'prompt_samples', 'num_frames', 'image_size',
              'video_fps', 'sync_len', 'sync_dim')


def model_shapes(m) -> dict:
  """{SHAPE_KEYS: value}: what fixes a base example's shapes and contents, from config.model."""
  return {'sample_rate': int(m.sample_rate), 'audio_samples': int(m.audio_samples),
          'prompt_samples': int(m.prompt_samples), 'num_frames': int(m.video.num_frames),
          'image_size': int(m.clip.image_size), 'video_fps': int(m.video_fps),
          'sync_len': int(m.video.sync_len), 'sync_dim': int(m.video.sync_dim)}


def tensor_shapes(shapes: dict) -> dict:
  """{feature: (shape, dtype)} of the base example's arrays for `model_shapes`."""
  s = shapes
  return {'audio': ((s['audio_samples'], 2), np.float32),
          'prompt': ((s['prompt_samples'], 2), np.float32),
          'frames': ((s['num_frames'], s['image_size'], s['image_size'], 3), np.uint8),
          'sync': ((s['sync_len'], s['sync_dim']), np.float32)}


def features(shapes: dict):
  """The tfds FeaturesDict of an axturbo dataset with `model_shapes` `shapes`.

  Arrays are stored as raw bytes: ArrayRecord already compresses each record (its zeros:
  padding, silence, absent modalities), and a second zlib pass on top kept the same size and
  read 1.6-2.6x slower (docs/guide/data.md).
  """
  import tensorflow_datasets as tfds
  f = tfds.features
  arrays = {k: f.Tensor(shape=shape, dtype=dtype, encoding=f.Encoding.BYTES)
            for k, (shape, dtype) in tensor_shapes(shapes).items()}
  return f.FeaturesDict({
      **arrays,
      'length': f.Scalar(dtype=np.int32, doc='real (non-padding) samples of audio'),
      'has_video': f.Scalar(dtype=np.bool_), 'has_prompt': f.Scalar(dtype=np.bool_),
      'caption': f.Text(),
      'task': f.Scalar(dtype=np.int32, doc='data/tasks.py id; -1 = drawn at training time'),
      'category': f.Sequence({'name': f.Text(), 'count': np.int32}),
      'sed': f.Sequence({'name': f.Text(), 'start_s': np.float32, 'end_s': np.float32}),
      'time_relation': f.Sequence(f.Text()),
      'caption_style': f.Text(),
  })


def check_shapes(info, m, where: str) -> None:
  """Raises ValueError naming the first base-example feature that is missing or that does not
  have the model config's shape, and a sample or frame rate the dataset was built at that
  differs from the config's."""
  shapes = model_shapes(m)
  for key, (shape, dtype) in tensor_shapes(shapes).items():
    if key not in info.features:
      raise ValueError(f'{where} has no {key!r} feature; axturbo reads datasets with the '
                       f'features {BASE_KEYS} (built by python -m data.prepare)')
    got = (tuple(info.features[key].shape), np.dtype(info.features[key].np_dtype))
    if got != (shape, np.dtype(dtype)):
      raise ValueError(f'{where}: feature {key!r} is {got}, but the model config needs '
                       f'{(shape, np.dtype(dtype))}; rebuild it with python -m data.prepare '
                       'for this config')
  built = dict((info.metadata or {}).get('shapes', {}))
  for key in ('sample_rate', 'video_fps'):
    if key in built and built[key] != shapes[key]:
      raise ValueError(f'{where} was built with {key}={built[key]}, but the model config has '
                       f'{key}={shapes[key]}; rebuild it with python -m data.prepare')


def base_example(ex: dict) -> dict:
  """A decoded TFDS example -> the base example exactly as the direct sources give it."""
  return {'audio': ex['audio'], 'length': np.int32(ex['length']), 'frames': ex['frames'],
          'has_video': np.bool_(ex['has_video']), 'sync': ex['sync'], 'prompt': ex['prompt'],
          'has_prompt': np.bool_(ex['has_prompt']), 'caption': ex['caption'].decode(),
          'task': np.int32(ex['task'])}


class TfdsSource:
  """grain random-access source of base examples from split `split` of the TFDS dataset
  `name` ('axturbo_events/tiny') under `data_dir` ('' = TFDS's default, ~/tensorflow_datasets)."""

  def __init__(self, name: str, data_dir: str, split: str, m):
    import tensorflow_datasets as tfds
    where = f'TFDS dataset {name!r} in {data_dir or "the default data_dir"}'
    try:
      builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
      raise FileNotFoundError(f'no {where}; build it with python -m data.prepare') from None
    if not builder.is_prepared():
      raise FileNotFoundError(f'{where} is not built; build it with python -m data.prepare')
    if split not in builder.info.splits:
      raise ValueError(f'{where} has no {split!r} split; it has {sorted(builder.info.splits)}')
    check_shapes(builder.info, m, where)
    self._name, self._split = name, split
    self._source = builder.as_data_source(split=split)

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    return base_example(self._source[index])

  def __repr__(self):
    return f'TfdsSource({self._name}, {self._split}, n={len(self)})'
