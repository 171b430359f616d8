"""Whole workflows: align, train-flow, baselines, evaluate, demo."""
