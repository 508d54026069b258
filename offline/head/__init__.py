"""The router's confidence head, offline: oracle labels, SFT then RL training, the confidence
baselines it is compared with, calibration metrics and the report."""
