"""Evaluation: the rules of rules/evaluate.smk (renders, FID, caption metrics, the Shapes judge, the
arena, VQA) and the question readers they share."""
