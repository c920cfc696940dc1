"""Shared fixtures. Everything here runs offline: no hub, no network."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub / transformers / datasets.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two xdist workers share two cores, and each starts CLI processes: with torch's default of a
# thread per core they oversubscribe the cores (measured: the suite took 1,073 s, 873 s with one
# thread each). The tests' models are tiny; a second thread gains them nothing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pipeline.config import PipelineConfig, load_config  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = REPO_ROOT / "configs" / "tiny.yaml"
TINY_CSV = REPO_ROOT / "tests" / "data" / "tiny_reviews.csv"


# The files that start CLI pipelines, roughly most expensive first (per-file seconds of one suite
# run, --durations=0), so that `--dist loadfile --no-loadscope-reorder` (the Makefile) starts the
# long ones first and the quick unit-test files fill the gaps at the end. The first two need
# different pipelines: one worker trains while the other builds tiny_run, instead of waiting for
# it (see built_once).
FIRST_FILES = ("test_distributed", "test_bad_inputs", "test_ner_pipeline", "test_sentence_embedding",
               "test_pipeline_e2e", "test_resume", "test_search", "test_release", "test_qa_pipeline",
               "test_rerank_pipeline", "test_runtime", "test_mlflow_server", "test_shared_rows",
               "test_early_stopping", "test_concurrency", "test_tracking_failures", "test_cache")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: in-file order kept


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Config paths (configs/tiny.yaml's data file) are relative to the repository root."""
    monkeypatch.chdir(REPO_ROOT)
    # An inherited tracking URI must not leak into the tests' configs.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return REPO_ROOT


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    """Overrides that keep every output of a test inside its tmp_path."""
    return [
        f"runtime.artifacts_dir={tmp_path / 'artifacts'}",
        f"runtime.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]


@pytest.fixture
def tiny_cfg(tiny_overrides: list[str]) -> PipelineConfig:
    """configs/tiny.yaml with artifacts and MLflow redirected into tmp_path."""
    return load_config(TINY_YAML, tiny_overrides)


@pytest.fixture
def load_tiny(tiny_overrides: list[str]):
    """Load configs/tiny.yaml with extra overrides on top of the tmp_path redirection."""

    def load(*extra: str) -> PipelineConfig:
        return load_config(TINY_YAML, [*tiny_overrides, *extra])

    return load


# -- the tiny pipeline, run once per test session through the real CLI -----------------------------
CLI = [sys.executable, "-m", "pipeline.cli"]


def cli_args(root: Path, *args: str, config: str = "configs/tiny.yaml", tracking: bool = True) -> list[str]:
    """`bertpress` arguments (after the program) for `args` on `config`, with artifacts and, unless
    tracking=False, MLflow inside `root`."""
    where = ["--set", f"runtime.artifacts_dir={root / 'artifacts'}"]
    if tracking:
        where += ["--set", f"runtime.tracking_uri=sqlite:///{root / 'mlflow.db'}"]
    return [*args, "--config", config, *where]


def run_cli(*args: str, root: Path, check: bool = True, env: dict | None = None,
            config: str = "configs/tiny.yaml", timeout: int = 600) -> subprocess.CompletedProcess:
    """`bertpress <args> --config tiny.yaml` with artifacts and MLflow inside `root`.

    With MLFLOW_TRACKING_URI in `env`, tracking goes there instead of root/mlflow.db."""
    tracking = not (env and "MLFLOW_TRACKING_URI" in env)
    proc = subprocess.run([*CLI, *cli_args(root, *args, config=config, tracking=tracking)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@contextlib.contextmanager
def _logging_restored():
    """The CLI sets up logging (root handlers on its own stderr, which CliRunner swaps and closes);
    put this process's back, pytest's capture handlers included."""
    import logging

    root, ours = logging.getLogger(), logging.getLogger("bertpress")
    saved = root.handlers[:], root.level, ours.level
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        ours.setLevel(saved[2])


def cli_status(root: Path, *extra: str, config: str = "configs/tiny.yaml") -> dict[str, dict]:
    """`bertpress status --json` run in this process (the same typer app the CLI runs: tests call
    it often, and a new interpreter costs ~2 s each; test_pipeline_e2e checks the subprocess)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    with contextlib.chdir(REPO_ROOT), _logging_restored():  # session fixtures run before the autouse chdir
        result = CliRunner().invoke(app, cli_args(root, "status", "--json", *extra, config=config))
    assert result.exit_code == 0, f"status failed:\n{result.output[-3000:]}\n{result.exception!r}"
    return {row["stage"]: row for row in json.loads(result.stdout)}


def copy_stages(source: Path, root: Path, stages: list[str]) -> None:
    """Finished stages (and the MLflow store) of another run's root, so a test that needs them
    upstream does not train them again. Keys do not depend on paths, so they are cache hits."""
    for stage in stages:
        shutil.copytree(source / "artifacts" / stage, root / "artifacts" / stage)
    shutil.copy2(source / "mlflow.db", root / "mlflow.db")


def built_once(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """A directory `build(root)` fills once per test session, shared by every xdist worker (each
    worker would otherwise build its own: the tiny pipeline is ~45 s of CPU). The first worker
    to ask builds it under a file lock; the others wait for it. Modules that share one must only
    read it: a test that reruns, forces or releases in it copies it first, unless its module is
    the only user (tiny_run: test_pipeline_e2e copies; tiny-rerank's cached rerun writes only its
    MLflow store, which test_upstream does not read)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # xdist: the workers' base temps sit side by side in one directory
        base = base.parent
    root, built = base / name, base / f"{name}.built"
    with FileLock(str(base / f"{name}.lock")):
        if not built.is_file():
            shutil.rmtree(root, ignore_errors=True)  # a build that failed in another worker
            root.mkdir()
            build(root)
            built.touch()
    return root


def _run_all(config: str):
    def build(root: Path) -> None:
        assert {r["status"] for r in cli_status(root, config=config).values()} == {"missing"}
        run_cli("run", "all", root=root, config=config)

    return build


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, worker_id) -> Path:
    """configs/tiny.yaml through every stage (release included) once; read-only (see built_once):
    tests that change its artifacts use other keys (overrides) or copy it."""
    return built_once(tmp_path_factory, worker_id, "tiny", _run_all("configs/tiny.yaml"))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run) -> Path:
    return Path(cli_status(tiny_run)["release"]["path"]) / "bundle"


TINY_NER = "configs/tiny-ner.yaml"


def run_all_once(tmp_path_factory, worker_id: str, config: str) -> Path:
    """A tiny config through every stage once per test session, shared read-only (built_once)."""
    return built_once(tmp_path_factory, worker_id, Path(config).stem, _run_all(config))


@pytest.fixture(scope="session")
def tiny_ner_run(tmp_path_factory, worker_id) -> Path:
    """configs/tiny-ner.yaml (token classification) through every stage once."""
    return run_all_once(tmp_path_factory, worker_id, TINY_NER)


@pytest.fixture(scope="session")
def tiny_ner_bundle(tiny_ner_run) -> Path:
    return Path(cli_status(tiny_ner_run, config=TINY_NER)["release"]["path"]) / "bundle"


TINY_QA = "configs/tiny-qa.yaml"


@pytest.fixture(scope="session")
def tiny_qa_run(tmp_path_factory, worker_id) -> Path:
    """configs/tiny-qa.yaml (extractive question answering) through every stage once."""
    return run_all_once(tmp_path_factory, worker_id, TINY_QA)


TINY_RERANK = "configs/tiny-rerank.yaml"


@pytest.fixture(scope="session")
def tiny_rerank_run(tmp_path_factory, worker_id) -> Path:
    """configs/tiny-rerank.yaml (a cross-encoder re-ranker) through every stage once."""
    return run_all_once(tmp_path_factory, worker_id, TINY_RERANK)


TINY_EMBEDDINGS = "configs/tiny-embeddings.yaml"


@pytest.fixture(scope="session")
def tiny_embeddings_run(tmp_path_factory, worker_id) -> Path:
    """configs/tiny-embeddings.yaml (sentence embeddings + the static tier) through every stage once."""
    return run_all_once(tmp_path_factory, worker_id, TINY_EMBEDDINGS)


def assert_rerun_is_all_cache_hits(root: Path, config: str, experiment_name: str, rows: dict[str, dict]) -> None:
    """`run all` again: every stage's MLflow child run is tagged cached, and nothing moved."""
    from mlflow import MlflowClient

    from pipeline.registry import STAGE_NAMES

    run_cli("run", "all", root=root, config=config)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["stage"] for r in children) == sorted(STAGE_NAMES)
    assert {r.data.tags["cached"] for r in children} == {"true"}
    assert cli_status(root, config=config) == rows


def stage_manifest(rows: dict[str, dict], stage: str) -> tuple[Path, dict]:
    """A stage's output directory (from `bertpress status --json` rows) and its manifest."""
    path = Path(rows[stage]["path"])
    return path, json.loads((path / "manifest.json").read_text())


# -- hand-made bundles ----------------------------------------------------------------------------
def write_bundle(target: Path, onnx_path: Path, tokenizer_json: Path, outputs: list[str],
                 labels=("neg", "pos"), max_length: int = 24, name: str = "t") -> Path:
    """A bundle directory around an exported graph (what the release stage writes, minus the card)."""
    from bertpress import bundle as bundle_format

    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(onnx_path, target / bundle_format.MODEL_FILE)
    shutil.copy2(tokenizer_json, target / bundle_format.TOKENIZER_FILE)
    (target / bundle_format.METADATA_FILE).write_text(json.dumps({
        "format": bundle_format.FORMAT, "name": name, "labels": list(labels), "max_length": max_length,
        "outputs": ["logits", *outputs]}))
    bundle_format.write_checksums(target)
    return target


EMBEDDING_CORPUS = ["a wonderful moving film with great acting", "a dull thin plot", "the music is great",
                    "the acting is wonderful", "boring and dull film"] * 4


def embedding_bundle(root: Path, seed: int, name: str = "t") -> Path:
    """A tiny random BERT classifier exported with its mean-poolable sequence output (seconds)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from stages._hf import train_wordpiece_tokenizer
    from stages._multi_output import export_with_embeddings

    root.mkdir(parents=True, exist_ok=True)
    tokenizer = train_wordpiece_tokenizer(EMBEDDING_CORPUS, vocab_size=120)
    tokenizer.save_pretrained(root / "tok")
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=2, max_position_embeddings=64)).eval()
    onnx_path = export_with_embeddings(model, root / "model.onnx", ["sequence"], opset=17)
    return write_bundle(root / "bundle", onnx_path, root / "tok" / "tokenizer.json", ["sequence"], name=name)


# -- the runtime with torch blocked ---------------------------------------------------------------
NO_TORCH = [sys.executable, str(REPO_ROOT / "tests" / "no_torch.py")]


def no_torch_rows(*args: str) -> list[dict]:
    """`bertpress <args>` with the training stack blocked (tests/no_torch.py); its JSONL output."""
    proc = subprocess.run([*NO_TORCH, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


# -- servers started by tests ------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Poll `url` until it answers; fail the test with the server's output if it dies or hangs."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                output = proc.stdout.read() if proc.stdout else ""
                pytest.fail(f"server behind {url} did not start:\n{output[-3000:]}")
            time.sleep(0.2)


@contextlib.contextmanager
def served(bundle: Path, *args: str):
    """`bertpress serve BUNDLE *args` with torch blocked, on a free port; yields its base URL and
    stops it afterwards."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "tests" / "no_torch.py"), "serve", str(bundle),
                             "--port", str(port), *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{base}/health", proc, timeout_s=60)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def http_call(base: str, path: str, body: object | bytes | None = None) -> tuple[int, dict]:
    """GET (no body) or POST JSON to a test server; (status, decoded JSON body), errors included."""
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
