"""Evaluation: the four benchmarks (PairComp, GenEval, T2I-CompBench, DPG-Bench) as automated tasks."""
