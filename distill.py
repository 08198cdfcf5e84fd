"""Distil a few-step student from a teacher: DMD + fake model + diffusion discriminator.

  python distill.py --config configs/tiny.py --teacher /tmp/teacher/export --workdir /tmp/d \
      [--config.distill.student.lr=1e-4 ...]

--teacher is an inference checkpoint (axturbo.runtime.checkpoints: train.py's <workdir>/export or
`python -m axturbo.convert` output) made for exactly `config.model`. Student and fake start as
copies of its MAF + trunk; its conditioners (frozen) serve all three networks. Multi-host: as
train.py (--distributed, or --coordinator_address/--num_processes/--process_id).
See docs/guide/distilling.md. Exit codes, preemption and the workdir lock: as train.py (0 done, 1 a
one-line error, 75 stopped by SIGTERM after saving a checkpoint, 130 Ctrl-C).

An adapted student (docs/finetuning.md, "Distilling an adapted student"): with
--config.distill.lora.enabled=True and --config.distill.init_student_from=STUDENT (a student
export of the same model config, e.g. the released AudioX-Turbo), the student is STUDENT (frozen)
+ LoRA adapters and the fake model the teacher (frozen) + adapters; only the adapters and the
discriminator heads train. --teacher may be a fine-tuned teacher (train.py's LoRA run writes
its merged <workdir>/export), or its base with --config.distill.teacher_lora=ADAPTER (that
run's <workdir>/adapter, merged in at load). The run writes <workdir>/adapter (the student's adapters, on
STUDENT: `sample.py --checkpoint STUDENT --lora <workdir>/adapter`) and <workdir>/export (STUDENT
with them merged). init_student_from without LoRA starts a full student from STUDENT.

Order: mesh -> teacher (sharded, checked) -> abstract state and shardings -> restore the latest
checkpoint or initialize from the teacher -> compile the student and fake steps -> loop (the host
picks the step kind from `dmd.updates_at`, logs, checkpoints) -> export the student (EMA).
"""
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from axturbo.runtime import compile_cache, launch

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_TEACHER = flags.DEFINE_string('teacher', None, 'Teacher inference checkpoint directory '
                               '(default: config.distill.teacher); a LoRA fine-tune: its merged '
                               '<workdir>/export. With --config.distill.lora.enabled=True the '
                               'student starts from --config.distill.init_student_from.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard events, export.')
_MULTIHOST = launch.define_multihost_flags()


def _plan(d, step: int) -> list[tuple[str, bool]]:
  """The (step kind, advance the schedule) calls for schedule position `step`."""
  from axturbo.distill import dmd
  s, f = dmd.updates_at(step, d.update_schedule, student_steps_per_cycle=d.student_steps_per_cycle,
                        fake_steps_per_cycle=d.fake_steps_per_cycle,
                        fake_updates_per_student_update=d.fake_updates_per_student_update)
  calls = [('student', not f)] if s else []
  return calls + ([('fake', True)] if f else [])


def _check_same_teacher(workdir, teacher: str, d) -> None:
  """A resumed run must distil from the same teacher (its adapter, the student start) it started
  with."""
  from axturbo.runtime import checkpoints
  record = workdir / 'teacher.json'
  path = lambda p: str(checkpoints.as_path(p)) if p else ''
  now = {'teacher': path(teacher), 'teacher_lora': path(d.teacher_lora),
         'init_student_from': path(d.init_student_from)}
  flag = {'teacher': '--teacher', 'teacher_lora': '--config.distill.teacher_lora',
          'init_student_from': '--config.distill.init_student_from'}
  if record.is_file():
    try:
      recorded = json.loads(record.read_text())
      was = {k: recorded.get(k, '') for k in now}
      assert recorded['teacher']
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError):
      raise ValueError(f'{record}: not a teacher record ({{"teacher": "<path>"}}); it is written '
                       'when a run starts: restore it, or use a new workdir') from None
    for k in now:
      if was[k] != now[k]:
        raise ValueError(f'{workdir} was started with {flag[k]}={was[k]!r}, not {now[k]!r}; use '
                         'a new workdir (or the same one) to resume')
  else:
    record.write_text(json.dumps({k: v for k, v in now.items() if v}))


def distill(config, teacher_dir: str, workdir: str):
  import jax

  from axturbo.distill import state as state_lib, step as step_lib
  from axturbo.eval import during_training
  from axturbo.models import audiox
  from axturbo.runtime import checkpoints, evaluation, lora, loop, sharding
  from axturbo.runtime import reporting

  if config.distill.batch_size and config.distill.batch_size != config.data.batch_size:
    config = config.copy_and_resolve_references()
    config.data.batch_size = config.distill.batch_size
  d = config.distill
  state_lib.check_distill_config(config)
  launch.check_inputs(config, d.data_source)
  workdir, mesh, rules = launch.start_run(config, workdir, 'distill')
  score = during_training.scorer(config, d, 'distill')   # before compiling: settings checked
  model = audiox.build_model(config.model)
  teacher, teacher_shardings = state_lib.load_teacher(teacher_dir, model, config.model, mesh, rules)
  if d.teacher_lora:
    teacher = state_lib.apply_teacher_adapter(teacher, teacher_shardings, d.teacher_lora,
                                              teacher_dir)
    logging.info('teacher adapter %s merged into %s', d.teacher_lora, teacher_dir)
  student_start, student_frozen = None, None
  if d.init_student_from:
    student_start, _ = state_lib.load_student_start(d.init_student_from, model, config.model,
                                                    mesh, rules)
    student_frozen = state_lib.frozen_part(student_start, d)
    if not state_lib.same_frozen_parts(student_start, teacher, d):
      logging.warning('%s: its frozen subtrees (conditioners, VAE) differ from the teacher\'s; '
                      'the student trains on the teacher\'s conditioner features, its export '
                      'keeps its own', d.init_student_from)
  if jax.process_index() == 0:
    _check_same_teacher(workdir, teacher_dir, d)
  logging.info('teacher loaded from %s; mesh %s', teacher_dir, dict(mesh.shape))

  txs = step_lib.make_optimizers(d)
  init_fn = state_lib.make_init_fn(model, config, *txs)
  abstract, shardings = state_lib.abstract_state(init_fn, model, config, mesh, rules)
  data_iter = launch.make_data_iterator(config, d.data_source, 'distill.data_source',
                                        jax.process_index(), jax.process_count())
  manager = checkpoints.make_manager(workdir, d)
  state = checkpoints.restore_latest(manager, abstract, data_iter)
  if state is not None:
    logging.info('resumed from step %d (%d student / %d fake updates, %d skipped)',
                 int(state.step), int(state.student_updates), int(state.fake_updates),
                 int(state.skipped))
  else:
    state = state_lib.init_state(init_fn, shardings, config.seed, teacher, d, student_start)
    logging.info('student initialised from %s, fake from the teacher (checked identical%s)',
                 d.init_student_from or 'the teacher',
                 '; LoRA adapters with B = 0' if state_lib.lora_enabled(d) else '')
  del student_start   # its frozen part stays (student_frozen), for the export
  if state_lib.lora_enabled(d):
    adapters = state.student[lora.ADAPTERS]
    logging.info('LoRA rank %d, alpha %g on %d kernels of the student and of the fake: %.3f M '
                 'adapter parameters each train, the student base (%s) and the teacher are frozen',
                 d.lora.rank, d.lora.alpha, len(lora.modules(adapters)),
                 sum(x.size for x in jax.tree.leaves(adapters)) / 1e6, d.init_student_from)

  jitted = step_lib.jit_steps(model, txs, config, mesh, shardings, teacher_shardings)
  plan = {c for s in range(d.student_steps_per_cycle + d.fake_steps_per_cycle
                           + d.fake_updates_per_student_update) for c in _plan(d, s)}
  local = next(data_iter)
  compiled = loop.compile_logged(
      f'the student and fake steps {sorted(plan)} and their inputs',
      lambda: step_lib.compile_steps(jitted, plan, abstract, teacher,
                                     sharding.abstract_batch(local, mesh), mesh, rules,
                                     config.mesh.activation_constraints))
  # MFU uses the student step's FLOPs (the common step under the official schedule).
  flops = reporting.compiled_flops(next(c for k, c in compiled.items()
                                            if k[0] == 'student'))

  def step_fn(state, step, batch):
    """The host picks the step kinds of schedule position `step`; they share its inputs."""
    inputs = compiled['inputs'](state, teacher, batch)
    metrics = {}
    for kind, adv in _plan(d, step):
      with jax.profiler.TraceAnnotation(kind):  # names the student and fake steps in a profile
        state, m = compiled[(kind, adv)](state, teacher, inputs)
      metrics.update(m)
    return state, metrics

  state, step, reporter = loop.run_steps(
      step_fn, state, section=d, reporter_cls=step_lib.Reporter, workdir=workdir,
      global_batch=config.data.batch_size, flops=flops, data_iter=data_iter, local=local,
      mesh=mesh, manager=manager, profile_steps=config.profile.steps, step_name='distill',
      evaluate=evaluation.make(
          config, d, 'distill', model,
          lambda s: state_lib.student_export_params(s, teacher, d, student_frozen), mesh, rules,
          score=score))
  reporter.close()

  out = workdir / 'export'
  if checkpoints.export_is_current(out, config.model, step):
    logging.info('%s is already the export of step %d', out, step)
  else:
    params = checkpoints.with_extras(
        state_lib.student_export_params(state, teacher, d, student_frozen),
        d.init_student_from or teacher_dir)
    meta = {'kind': 'student', 'step': step, 'ema': bool(d.ema.enabled),
            'student_updates': int(state.student_updates),
            'fake_updates': int(state.fake_updates), 'skipped_steps': int(state.skipped),
            'data': reporting.data_stats(data_iter),
            'teacher': str(checkpoints.as_path(teacher_dir)), 'schedule': d.update_schedule,
            'num_steps': d.num_steps}
    if d.teacher_lora:
      meta['teacher_lora'] = str(checkpoints.as_path(d.teacher_lora))
    if d.init_student_from:
      meta['init_student_from'] = str(checkpoints.as_path(d.init_student_from))
    if state_lib.lora_enabled(d):
      base = lora.base_identity(d.init_student_from)
      adapters = state_lib.student_export_params(state, teacher, d, student_frozen,
                                                 merge_adapters=False)
      lora.save_adapter(workdir / 'adapter', adapters, config.model, d.lora, base,
                        {k: v for k, v in meta.items() if k != 'kind'})
      logging.info('student LoRA adapter of step %d (base %s) in %s', step,
                   d.init_student_from, workdir / 'adapter')
      meta['lora_base'] = base
    checkpoints.export(out, params, config.model, meta)
    logging.info('student inference checkpoint of step %d (EMA: %s) in %s', step,
                 d.ema.enabled, out)
  logging.info('done: step %d (%d student / %d fake updates); %s', step,
               int(state.student_updates), int(state.fake_updates),
               reporting.skip_summary(int(state.skipped),
                                            reporting.data_stats(data_iter)))
  manager.close()
  return out


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments: {argv[1:]}')
  launch.init_distributed(_MULTIHOST)
  teacher = _TEACHER.value or _CONFIG.value.distill.teacher
  if not teacher:
    sys.exit('error: give --teacher DIR (or config.distill.teacher)')
  with launch.one_line_errors():
    compile_cache.enable(_CONFIG.value.compile_cache, '--config.compile_cache')
    distill(_CONFIG.value, teacher, _WORKDIR.value)
  logging.info('%s', compile_cache.summary())


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=launch.parse_flags)
