"""nitp: the shared core under the four tools (nitp_train, analysis, nitp_eval, reports).

It holds the contracts every tool relies on and imports none of them:

- ``nitp.errors``   the error type for bad input and the CLI error boundary
- ``nitp.io``       atomic writes and JSON-lines reading
- ``nitp.runs``     run directories, checkpoint naming / discovery / identity (weights hash)
- ``nitp.records``  result records and the one find-or-compute record cache
- ``nitp.layers``   the one hidden-state layer convention and the hooks that read it
- ``nitp.loading``  model / tokenizer loading (HF folder, run dir, checkpoint, ``.gguf``) and hub switches

Dependency order (imports point left only)::

    nitp  <-  nitp_train  <-  analysis  <-  nitp_eval  <-  reports
"""
