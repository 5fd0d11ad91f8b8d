"""Stage 6, evaluation: run candidates on benchmarks and compare them.

- `suites`: one `BenchmarkSuite` per benchmark: its items, the candidate's prompt, the judge calls
  and the aggregate (the official formulas live in tasks/benchmarks/);
- `candidates`: what a configured candidate resolves to (a model on a backend, with its lineage:
  training run and checkpoint step), LoRA checkpoints merged once into plain folders;
- `report`: the comparison table (candidates x benchmarks + average) and the score-over-steps plot.
"""
