"""EvalService: suites, datasets, runs, scorecards and gates."""
