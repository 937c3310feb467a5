"""Ablation overlays, shipped in the wheel as ``nitp.configs.ablations``."""
