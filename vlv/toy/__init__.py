"""The toy stand-ins: their pretraining rules (rules/pretrain_toy.smk), their shared trainer and their
benchmark."""
