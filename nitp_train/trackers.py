"""Experiment trackers: every ``RUN/metrics.jsonl`` line also goes to TensorBoard, trackio, W&B or MLflow.

``metrics.jsonl`` stays the source of truth; a tracker is a live view of it. ``log.trackers``
names any subset of :data:`TRACKERS`; each is an optional extra (``pip install 'nitp[tensorboard]'``)
imported only when asked for. Names are stable (:func:`tracker_name`): ``train/loss_ntp``,
``train/lr``, ``geometry/erank``, ``val/val_loss``, ``eval/bench/next_word``, ... List-valued
fields (``val_loss_batches``) and texts are not sent.

Where each tracker writes, all offline by default:

* tensorboard -- event files in ``RUN/tensorboard/`` (a resume purges the steps after the checkpoint);
* trackio -- its local SQLite store in ``$TRACKIO_DIR``, set to ``RUN/trackio/`` when unset before
  trackio is first imported in the process;
* wandb -- ``RUN/wandb/``, offline unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads);
* mlflow -- the file store ``RUN/mlruns/`` unless ``MLFLOW_TRACKING_URI`` is set.

The run name and each tracker's run id are kept in ``RUN/trackers.json`` (atomic), so ``--resume``
continues the same tracker runs.

Example
-------
>>> tracker_name("loss_ntp"), tracker_name("erank"), tracker_name("eval/bench/next_word")
('train/loss_ntp', 'geometry/erank', 'eval/bench/next_word')
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import threading
import time
import uuid
from pathlib import Path

from nitp import metrics_registry as registry
from nitp.errors import UserError, first_line
from nitp.io import atomic_write_text

TRACKERS = ("tensorboard", "trackio", "wandb", "mlflow")
STATE_FILE = "trackers.json"
# besides the registry's logged metrics: what a geometry sample was taken on, the drop-in's name for
# its cosine across sequences (nitp_train.dropin.hf) and the projector output's rank (probe)
_GEOMETRY_OTHERS = ("geom_tokens", "geom_sequences", "geom_steps", "anisotropy", "proj_erank")


def tracker_name(key: str) -> str:
    """The stable tracker name of a ``metrics.jsonl`` field: ``<group>/<key>``.

    Groups: ``geometry`` (every ``nitp.metrics_registry`` row's ``logged_as``: erank, mean_cos,
    ...; and the sample's own fields), ``val`` (``val_*``), ``probe`` (the gradient probe's
    ``probe_*``), ``progress`` (``tokens``), ``train`` (everything else); keys holding a ``/``
    (``eval/...``) are kept.
    """
    if "/" in key:
        return key
    if key in _GEOMETRY_OTHERS or key in {m.logged_as for m in registry.logged()}:
        return f"geometry/{key}"
    if key.startswith("val_"):
        return f"val/{key}"
    if key.startswith("probe_"):
        return f"probe/{key}"
    if key == "tokens":
        return "progress/tokens"
    return f"train/{key}"


def scalars(row: dict) -> dict[str, float]:
    """The finite numbers of a metrics line under their tracker names (no step, lists or texts)."""
    out = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, (list, dict, str)) or value is None:
            continue
        value = float(value)
        if math.isfinite(value):
            out[tracker_name(key)] = value
    return out


def flat_config(cfg: dict, prefix: str = "") -> dict[str, object]:
    """``{"train.lr": 0.001, ...}``: the resolved config as hyper-parameters (lists as text)."""
    out: dict[str, object] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return out


def require(name: str, where: str = "log.trackers") -> None:
    """Raise a one-line ``UserError`` naming the extra to install when tracker ``name`` is missing.

    ``where`` names the setting that asked for it (``log.trackers``, ``--to``).
    """
    if name not in TRACKERS:
        raise UserError(f"{where}: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
    if importlib.util.find_spec(name) is None:  # each tracker's package is named as the tracker
        raise UserError(
            f"{where}: {name} is not installed; pip install 'nitp[{name}]' (or {name}), "
            f"or drop {name} from {where}"
        )


class Trackers:
    """The open trackers of one run; :meth:`log` sends one metrics line to each of them.

    Parameters
    ----------
    run_dir : the run directory (state in ``RUN/trackers.json``, offline stores under it).
    names : tracker names, a subset of :data:`TRACKERS`.
    run_name : the run's name in every tracker.
    config : the resolved config, logged as hyper-parameters on a fresh start.
    resume_step : the checkpoint step a resumed run continues from (``None``: a fresh start).
    """

    def __init__(self, run_dir, names, run_name: str, config: dict, resume_step: int | None = None):
        for name in names:
            require(name)
        self.run_dir = Path(run_dir)
        path = self.run_dir / STATE_FILE
        state = json.loads(path.read_text()) if resume_step is not None and path.is_file() else {}
        state.setdefault("run_name", run_name)
        self.names = list(names)
        self._threads: dict[int, str] = {}  # ident of each thread a tracker started -> its name
        self._thread_error: tuple[str, BaseException] | None = None
        self._watching: tuple[str, set] | None = None  # the tracker in a _watch block, threads before it
        self._reported = False
        self._previous_hook = threading.excepthook
        threading.excepthook = self._thread_failed
        self.adapters = []
        for n in self.names:
            with self._watch(n, "start"):
                try:
                    self.adapters.append(_ADAPTERS[n](self.run_dir, state, config, resume_step))
                except Exception as e:  # noqa: BLE001 - a tracker library's error becomes one line
                    raise UserError(
                        f"log.trackers: {n} could not start ({type(e).__name__}: {first_line(e, 160)}); "
                        f"fix its settings or drop {n} from log.trackers"
                    ) from None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(state, indent=2) + "\n")

    def log(self, row: dict) -> None:
        values = scalars(row)
        if values and "step" in row:
            for name, adapter in zip(self.names, self.adapters):
                with self._watch(name, f"log step {row['step']}"):
                    adapter.log(values, int(row["step"]))

    def close(self) -> None:
        try:
            for name, adapter in zip(self.names, self.adapters):
                with self._watch(name, "close"):
                    adapter.close()
        finally:
            self.adapters = []
            for t in threading.enumerate():  # a writer thread may still be failing: let it end first
                if t.ident in self._threads and t is not threading.current_thread():
                    t.join(timeout=5)
            alive = any(t.ident in self._threads for t in threading.enumerate())
            if threading.excepthook == self._thread_failed and not alive:
                threading.excepthook = self._previous_hook

    @contextlib.contextmanager
    def _watch(self, name: str, what: str):
        """Any error of tracker ``name`` in the block, or of a thread it started (a writer thread on
        a full disk), is one ``UserError`` naming it; the threads it starts are remembered."""
        before = {t.ident for t in threading.enumerate()}
        self._watching = (name, before)
        try:
            yield
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - any library error becomes the one-line message
            self._thread_error = self._thread_error or (name, e)
        finally:
            self._watching = None
            self._threads.update({t.ident: name for t in threading.enumerate() if t.ident not in before})
        if self._thread_error is not None and not self._reported:
            self._reported = True  # once: close() after the error closes the others quietly
            failed, e = self._thread_error
            raise UserError(
                f"log.trackers: {failed} failed ({what}; {type(e).__name__}: {first_line(e, 160)}); "
                f"check its store under {self.run_dir} (free space, permissions; a deleted store: remove "
                f"the {failed!r} entry of {STATE_FILE} there to start a new tracker run), or drop "
                f"{failed} from log.trackers (metrics.jsonl keeps every step)"
            )

    def _thread_failed(self, args) -> None:
        """``threading.excepthook``: a tracker thread's error is kept for the one-line message (no
        traceback); other threads' go to the previous hook."""
        ident = getattr(args.thread, "ident", None)
        name = self._threads.get(ident)
        if name is None and self._watching is not None and ident not in self._watching[1]:
            name = self._watching[0]  # started in the block now running (a writer failing at start)
        if name is None:
            self._previous_hook(args)
        elif self._thread_error is None:
            self._thread_error = (name, args.exc_value)


class _TensorBoard:
    def __init__(self, run_dir: Path, state: dict, config: dict, resume_step):
        from torch.utils.tensorboard import SummaryWriter

        fresh = "tensorboard" not in state
        state["tensorboard"] = {"log_dir": "tensorboard"}
        purge = resume_step + 1 if resume_step is not None and not fresh else None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        if fresh:  # the config as hyper-parameters and as text
            from torch.utils.tensorboard.summary import hparams

            for summary in hparams(flat_config(config), {}):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log(self, values: dict, step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Run:
    """A tracker whose run object takes the lines (``run.log(values, step=)``) and ends them."""

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _Trackio(_Run):
    def __init__(self, run_dir: Path, state: dict, config: dict, resume_step):
        os.environ.setdefault("TRACKIO_DIR", str(run_dir.resolve() / "trackio"))
        import trackio
        from trackio.utils import TRACKIO_DIR

        saved = state.get("trackio")
        project = saved["project"] if saved else "nitp"
        name = saved["name"] if saved else f"{state['run_name']}-{uuid.uuid4().hex[:8]}"
        state["trackio"] = {"project": project, "name": name, "dir": str(TRACKIO_DIR)}
        self.trackio = trackio
        self.run = trackio.init(
            project=project,
            name=name,
            config=flat_config(config),
            resume="allow" if saved else "never",
            auto_log_cpu=False,
            auto_log_gpu=False,
        )

    def close(self) -> None:
        self.trackio.finish()  # also clears trackio's current run, which its next init() reads


class _Wandb(_Run):
    def __init__(self, run_dir: Path, state: dict, config: dict, resume_step):
        import wandb

        saved = state.get("wandb")
        run_id = saved["id"] if saved else uuid.uuid4().hex[:8]
        mode = os.environ.get("WANDB_MODE", "offline")
        state["wandb"] = {"id": run_id, "project": "nitp", "mode": mode}
        self.run = wandb.init(
            project="nitp",
            name=state["run_name"],
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            mode=mode,
            config=config,
        )


class _Mlflow:
    def __init__(self, run_dir: Path, state: dict, config: dict, resume_step):
        # the local file store is what works with no server; mlflow >= 3.x asks for this opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        saved = state.get("mlflow")
        uri = saved["tracking_uri"] if saved else os.environ.get("MLFLOW_TRACKING_URI")
        uri = uri or (run_dir / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        if saved:
            self.run_id = saved["run_id"]
        else:
            found = self.client.get_experiment_by_name("nitp")
            experiment = found.experiment_id if found else self.client.create_experiment("nitp")
            run = self.client.create_run(experiment, run_name=state["run_name"])
            self.run_id = run.info.run_id
            for key, value in flat_config(config).items():
                self.client.log_param(self.run_id, key, value)
        state["mlflow"] = {"run_id": self.run_id, "tracking_uri": uri}

    def log(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_ADAPTERS = {"tensorboard": _TensorBoard, "trackio": _Trackio, "wandb": _Wandb, "mlflow": _Mlflow}
