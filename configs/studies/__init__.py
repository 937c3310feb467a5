"""Study files (``nitp-study NAME``), shipped in the wheel as ``nitp.configs.studies``."""
