"""The YAML presets, shipped in the wheel as ``nitp.configs`` (see ``nitp_train.config.config_path``)."""
