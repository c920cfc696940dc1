"""The one object through which everything is logged to MLflow.

One parent run per pipeline invocation, one nested run per stage. The embedded default store is
sqlite inside the artifacts root (MLflow 3 refuses a plain file store); $MLFLOW_TRACKING_URI or
``runtime.tracking_uri`` point it at a real server.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on one param value


def resolve_tracking_uri(configured: str | None, artifacts_dir: Path) -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return local_tracking_uri(artifacts_dir)


def local_tracking_uri(artifacts_dir: Path) -> str:
    root = Path(artifacts_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> str | None:
    """None when the tracking store can be used, else what is wrong with it (checked before any
    stage runs, so a wrong URI never costs a training run)."""
    if tracking_uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        url = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            urllib.request.urlopen(url, timeout=timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return (f"it answered HTTP {exc.code} (not authorised): set MLFLOW_TRACKING_TOKEN or "
                        "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD")
            if exc.code >= 500:
                return f"it answered HTTP {exc.code} (server error)"
            return None  # it answers: an MLflow server behind a proxy may use other routes
        except (urllib.error.URLError, OSError) as exc:
            return f"cannot connect ({getattr(exc, 'reason', exc)})"
        return None
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot create {folder} ({exc.strerror})"
        if not os.access(folder, os.W_OK):
            return f"{folder} is not writable"
    return None


def local_artifact_location(tracking_uri: str) -> str | None:
    """For an sqlite store, run artifacts go next to the database (<dir>/mlartifacts)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values (MLflow params are strings)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str):
        import mlflow

        self._mlflow = mlflow
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        mlflow.set_tracking_uri(tracking_uri)
        location = local_artifact_location(tracking_uri)
        if location and mlflow.get_experiment_by_name(experiment) is None:
            # Without this MLflow puts run artifacts in ./mlruns of whatever the cwd is.
            mlflow.create_experiment(experiment, artifact_location=location)
        mlflow.set_experiment(experiment)
        self.parent_run_id: str | None = None
        # Set when a logging call fails mid-run: later calls are skipped (each would retry for
        # minutes) and the stage outputs, already on disk, are unaffected.
        self.failure: str | None = None

    # -- runs -----------------------------------------------------------------------------------
    @contextmanager
    def pipeline_run(self, name: str, tags: Mapping[str, str] | None = None) -> Iterator[str]:
        with self._mlflow.start_run(run_name=name, tags=dict(tags or {})) as run:
            self.parent_run_id = run.info.run_id
            try:
                yield run.info.run_id
            finally:
                self.parent_run_id = None

    @contextmanager
    def stage_run(
        self, stage: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
    ) -> Iterator[str]:
        with self._mlflow.start_run(
            run_name=stage, nested=self.parent_run_id is not None, tags={"stage": stage, **(tags or {})}
        ) as run:
            self.log_params(params)
            yield run.info.run_id

    @contextmanager
    def child_run(self, name: str, params: Mapping[str, Any]) -> Iterator[str]:
        """A run nested under the active one (e.g. a search trial under its stage run)."""
        with self._mlflow.start_run(run_name=name, nested=True, tags={"trial": name}) as run:
            self.log_params(params)
            yield run.info.run_id

    def active_run_id(self) -> str:
        run = self._mlflow.active_run()
        if run is None:
            raise RuntimeError("no active MLflow run")
        return run.info.run_id

    # -- logging --------------------------------------------------------------------------------
    def _guard(self, what: str, call, *args, **kwargs) -> None:
        if self.failure is not None:
            return
        try:
            call(*args, **kwargs)
        except Exception as exc:  # the tracking store, not our work, failed: keep going
            self.failure = f"{what}: {exc.__class__.__name__}: {str(exc)[:300]}"
            log.warning("MLflow logging failed (%s); the rest of this run is not logged to %s, "
                        "stage outputs on disk are unaffected", self.failure, self.tracking_uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {
            k: (json.dumps(v) if isinstance(v, list | dict) else str(v))[:MAX_PARAM_LENGTH]
            for k, v in flatten(params).items()
        }
        if flat:
            self._guard("log_params", self._mlflow.log_params, flat)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        if clean:
            self._guard("log_metrics", self._mlflow.log_metrics, clean, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._guard("set_tags", self._mlflow.set_tags, {k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._guard("log_artifacts", self._mlflow.log_artifacts, str(path), artifact_path=artifact_path)
        else:
            self._guard("log_artifact", self._mlflow.log_artifact, str(path), artifact_path=artifact_path)

    def log_dict(self, data: Mapping[str, Any], filename: str) -> None:
        self._guard("log_dict", self._mlflow.log_dict, dict(data), filename)

    def log_text(self, text: str, filename: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / filename
            target.write_text(text)
            self._guard("log_text", self._mlflow.log_artifact, str(target))

    # -- model registry -------------------------------------------------------------------------
    def register_onnx_model(
        self, onnx_path: Path, registered_name: str, input_example: Mapping[str, Any],
        output_example: Mapping[str, Any], tags: Mapping[str, Any] | None = None,
    ) -> str:
        """Log an ONNX-flavour MLflow model (signature + input example) in the active run and
        register it under `registered_name`; returns the new version."""
        import onnx
        from mlflow.models import infer_signature

        info = self._mlflow.onnx.log_model(
            onnx.load(str(onnx_path)),
            name="model",
            signature=infer_signature(dict(input_example), dict(output_example)),
            input_example=dict(input_example),
            registered_model_name=registered_name,
            save_as_external_data=False,
        )
        version = str(info.registered_model_version)
        client = self._mlflow.MlflowClient()
        for key, value in (tags or {}).items():
            client.set_model_version_tag(registered_name, version, key, str(value))
        return version

    def set_alias(self, registered_name: str, alias: str, version: str) -> None:
        self._mlflow.MlflowClient().set_registered_model_alias(registered_name, alias, version)

    def version_by_alias(self, registered_name: str, alias: str):
        """The model version an alias points at, or None (no such model or alias)."""
        from mlflow.exceptions import MlflowException

        try:
            return self._mlflow.MlflowClient().get_model_version_by_alias(registered_name, alias)
        except MlflowException:
            return None

    def tag_version(self, registered_name: str, version: str, tags: Mapping[str, Any]) -> None:
        client = self._mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(registered_name, version, key, str(value))


def open_tracker(runtime, experiment: str, fallback: bool | None = None, purpose: str = "tracking") -> Tracker:
    """The tracker for `runtime`, its store checked first: unusable -> a StageError naming the fix,
    or (fallback, default runtime.tracking_fallback) the local sqlite store, said in the log."""
    from pipeline.locks import exclusive
    from pipeline.stage import StageError

    uri = resolve_tracking_uri(runtime.tracking_uri, runtime.artifacts_dir)
    problem = check_reachable(uri)
    if problem and (runtime.tracking_fallback if fallback is None else fallback):
        local = local_tracking_uri(runtime.artifacts_dir)
        log.warning("tracking store %s is unusable (%s); runtime.tracking_fallback is on, so this "
                    "run logs to %s instead", uri, problem, local)
        uri = local
    elif problem:
        raise StageError(
            f"the MLflow {purpose} store {uri} is unusable: {problem}. Start it (`make "
            "mlflow-server`), fix MLFLOW_TRACKING_URI / runtime.tracking_uri"
            + (", or set runtime.tracking_fallback=true to log to the local store in the artifacts "
               "directory" if fallback is None else "")
        )
    if uri.startswith("sqlite:///"):
        # Two first runs at once would both migrate a new database: one at a time.
        with exclusive(Path(uri.removeprefix("sqlite:///")).with_suffix(".init.lock")):
            return Tracker(uri, experiment=experiment)
    return Tracker(uri, experiment=experiment)
