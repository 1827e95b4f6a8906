"""The built-in `kvl eval` benchmarks, registered under the `kvl.benchmarks` entry-point group (docs/eval.md)."""
