"""Evaluation building blocks: distribution metrics, the PANNs CNN14 tagger, the event detector.

  metrics.py        FD / FAD (`frechet_distance`, `gaussian_stats`, `GaussianAccumulator`,
                    `frechet_audio_distance`), `kl_divergence`, `inception_score`.
  cnn14.py          Flax PANNs CNN14 (`build_cnn14('32k'|'16k')`, `prepare_audio`);
  cnn14_weights.py  its checkpoint loader (`load_cnn14(local_path, variant)`).
  events.py         exact detector of the embedded dataset's events (`detect_events`).
  event_scores.py   T2A-bench Cat/Cnt/Ord/TS accuracies (`score_clip`, `aggregate`) and
                    audio-video synchrony (`video_sync`).

Intended use by the evaluate CLI (not written yet; it needs trained checkpoints):
  model, params = cnn14_weights.load_cnn14(path, '16k')         # or '32k'
  embed = jax.jit(lambda a: model.apply({'params': params}, a))  # -> (embedding, logits)
  for each batch: x = cnn14.prepare_audio(wave (B, N, 2), 44100 or 16000, model.sample_rate)
                  emb, logits = embed(x); accumulate per split (reference / generated).
  FD  = metrics.frechet_distance(*acc_ref.stats(), *acc_gen.stats())  (GaussianAccumulator)
  KL  = metrics.kl_divergence(ref_logits, gen_logits)  (rows paired by clip; 'sigmoid' default,
        also report mode='softmax'); IS = metrics.inception_score(gen_logits, splits=10,
        shuffle_seed=2020)  (the AudioLDM toolbox settings).
  Embedded data: det = event_detector.detect_events(gen_wave, sample_rate);
        s = event_scores.score_clip(det, clip['annotations']);
        event_scores.aggregate(all_s, [clip['caption_style'] ...]);
        event_scores.video_sync(det, clip['video'], clip['fps']) for video-conditioned runs.
"""
