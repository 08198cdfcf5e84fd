"""Teacher (AudioX-Base) training: rectified flow over VAE latents, on any mesh, resumable.

  python train.py --config configs/tiny.py --workdir /tmp/w [--config.train.optim.lr=3e-4 ...]

Multi-host: every host runs the same command. On TPU VMs / SLURM add `--distributed`
(jax.distributed auto-detects the cluster); elsewhere pass --coordinator_address,
--num_processes and --process_id (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID). See docs/guide/training.md and docs/guide/pod.md.

Exit codes: 0 done; 1 a one-line error (traceback in <workdir>/train.log), also when another run
holds <workdir>/run.lock; 75 stopped by SIGTERM or a preemption notice after saving a checkpoint
of the next step boundary (rerun the same command to resume); 130 Ctrl-C (during the step loop
saved the same way).

Order (top to bottom): mesh -> abstract state and its shardings -> restore the latest
checkpoint or initialize in shards -> jit the pure step with donation -> loop (log, checkpoint)
-> final checkpoint, inference export (EMA merged), loss curve.

LoRA (--config.train.lora.enabled=True, docs/finetuning.md): the base from `train.init_from` is
frozen, the adapters train; the run also writes <workdir>/adapter, the adapters alone.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from axturbo.runtime import compile_cache, launch

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard events, exports.')
_MULTIHOST = launch.define_multihost_flags()


def train(config, workdir: str) -> None:
  import jax
  import numpy as np

  from axturbo.eval import during_training
  from axturbo.models import audiox
  from axturbo.runtime import checkpoints, evaluation, lora, loop, optim, reporting, sharding
  from axturbo.train import state as state_lib, step as step_lib

  t = config.train
  state_lib.check_train_config(config)  # a bad setting stops here, not after compiling
  launch.check_inputs(config, t.data_source, t.init_from, t.get('require_init_from', False))
  # Mesh and the abstract state: shapes and shardings, nothing materialised yet.
  workdir, mesh, rules = launch.start_run(config, workdir, 'train')
  score = during_training.scorer(config, t, 'train')   # before compiling: its settings checked
  model = audiox.build_model(config.model)
  tx = optim.make_optimizer(t.optim, t.total_steps)
  init_fn = state_lib.make_init_fn(model, config, tx)
  abstract, shardings = state_lib.abstract_state(init_fn, mesh, rules)
  logging.info('mesh %s', dict(mesh.shape))

  # Resume from the latest checkpoint (onto this mesh, whatever mesh saved it) or start fresh.
  data_iter = launch.make_data_iterator(config, t.data_source, 'train.data_source',
                                        jax.process_index(), jax.process_count())
  manager = checkpoints.make_manager(workdir, t)
  state = checkpoints.restore_latest(manager, abstract, data_iter)
  if state is not None:
    logging.info('resumed from step %d (%d updates, %d skipped)', int(state.step),
                 int(state.updates), int(state.skipped))
  else:
    state = state_lib.init_state(init_fn, mesh, config.seed, rules)
    if t.init_from:
      params = checkpoints.load_params(t.init_from, target=state_lib.base_target(abstract.params),
                                       partial=True)
      state = state_lib.with_params(state, params, t)
      logging.info('initialized from %s', t.init_from)
  if state_lib.lora_enabled(t):
    n = sum(x.size for x in jax.tree.leaves(state.params[lora.ADAPTERS]))
    logging.info('LoRA rank %d, alpha %g on %d kernels: %.3f M adapter parameters train, the '
                 'base is frozen (train.trainable and train.ema.subtrees are not used)',
                 t.lora.rank, t.lora.alpha,
                 len(lora.modules(state.params[lora.ADAPTERS])),
                 n / 1e6)

  # The jitted step, compiled once ahead of time (and its FLOPs read for MFU); a finished run
  # that is only re-exported compiles nothing.
  local, flops, compiled = None, None, None
  if int(state.step) < t.total_steps:
    step_fn = step_lib.jit_train_step(model, tx, config, mesh, shardings)
    local = next(data_iter)
    compiled = loop.compile_logged('the train step', lambda: sharding.compile_step(
        step_fn, abstract, sharding.abstract_batch(local, mesh), mesh, rules,
        config.mesh.activation_constraints))
    flops = reporting.compiled_flops(compiled)
  state, step, reporter = loop.run_steps(
      lambda state, _, batch: compiled(state, batch), state, section=t,
      reporter_cls=step_lib.Reporter, workdir=workdir,
      global_batch=config.data.batch_size, flops=flops, data_iter=data_iter, local=local,
      mesh=mesh, manager=manager, profile_steps=config.profile.steps, step_name='train',
      evaluate=evaluation.make(
          config, t, 'train', model,
          lambda s: state_lib.inference_params(s, t, use_ema=t.ema.enabled), mesh, rules,
          score=score))
  curve = reporter.close()

  if t.export_ema or not t.ema.enabled:
    out = workdir / 'export'
    if checkpoints.export_is_current(out, config.model, step):
      logging.info('%s is already the export of step %d', out, step)
    else:
      meta = {'kind': 'teacher', 'step': step, 'updates': int(state.updates),
              'ema': t.ema.enabled, 'skipped_steps': int(state.skipped),
              'data': reporting.data_stats(data_iter)}
      params = state_lib.inference_params(state, t, use_ema=t.ema.enabled)
      if state_lib.lora_enabled(t):
        base = lora.base_identity(t.init_from)
        adapters = state_lib.inference_params(state, t, use_ema=t.ema.enabled,
                                              merge_adapters=False)[lora.ADAPTERS]
        lora.save_adapter(workdir / 'adapter', adapters, config.model, t.lora, base,
                          {k: v for k, v in meta.items() if k != 'kind'})
        logging.info('LoRA adapter of step %d (base %s) in %s', step, t.init_from,
                     workdir / 'adapter')
        meta['lora_base'] = base
      checkpoints.export(out, checkpoints.with_extras(params, t.init_from), config.model, meta)
      logging.info('inference checkpoint of step %d (EMA merged: %s) in %s', step,
                   t.ema.enabled, out)
  logging.info('done: step %d, %s; %s; loss curve %s', step,
               f'last loss {reporter.history[-1][1]:.5f}' if reporter.history
               else 'no steps run (already at total_steps)',
               reporting.skip_summary(int(np.asarray(jax.device_get(state.skipped))),
                                    reporting.data_stats(data_iter)), curve)
  manager.close()


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments: {argv[1:]}')
  launch.init_distributed(_MULTIHOST)
  with launch.one_line_errors():
    compile_cache.enable(_CONFIG.value.compile_cache, '--config.compile_cache')
    train(_CONFIG.value, _WORKDIR.value)
  logging.info('%s', compile_cache.summary())


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=launch.parse_flags)
