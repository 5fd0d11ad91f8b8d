"""Stage 6, evaluation: run candidates on benchmarks and compare them.

- one module per benchmark (`writingbench`, `longbench_write`, `creative_writing_v3`,
  `longbench_v2`): the official prompts and formulas, the `BenchmarkSuite` (its items, the
  candidate's prompt, the judge calls and the aggregate) and its departures, in one place;
- `common`: what the suites share (benchmark files, the judge, the shared departures); `base`: the
  suite contract; `registry`: `SUITES` by name and `data_fingerprint`;
- `candidates`: what a configured candidate resolves to (a model on a backend, with its lineage:
  training run and checkpoint step), LoRA checkpoints merged once into plain folders;
- `report`: the comparison table (candidates x benchmarks + average) and the score-over-steps plot.
"""
