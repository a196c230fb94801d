import json
import socket
import subprocess
import sys

import pytest
from helpers import RUNTIME

from pi_classifier.cli import main


@pytest.fixture(autouse=True)
def model_dir(models, monkeypatch):
    monkeypatch.setenv("PI_CLASSIFIER_MODEL_DIR", str(models))
    monkeypatch.setenv("PI_CLASSIFIER_CONFIG", "/nonexistent/config.yaml")
    monkeypatch.delenv("PI_CLASSIFIER_DEBUG", raising=False)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def classify(capsys, *argv):
    return run(capsys, "classify", "--runtime", RUNTIME, *argv)


def test_classify_prints_one_line_per_image(capsys, images):
    code, out, err = classify(capsys, str(images / "banana_0.jpg"),
                              str(images / "cat.bmp"))
    lines = out.splitlines()
    assert code == 0
    assert len(lines) == 2
    assert lines[0].startswith(f"{images / 'banana_0.jpg'}: banana 0.9")
    assert "Egyptian cat" in lines[1]
    assert err == ""


def test_classify_json_lines(capsys, images):
    code, out, _ = classify(capsys, "--json", "--top-k", "2", "--threshold", "0",
                            str(images / "cat.bmp"))
    record = json.loads(out)
    assert code == 0
    assert record["image"] == str(images / "cat.bmp")
    assert record["results"][0]["index"] == 286
    assert record["results"][0]["label"] == "Egyptian cat"
    assert record["results"][0]["score"] > 0.7
    assert len(record["results"]) == 2
    assert record["inference_ms"] > 0


def test_bad_images_do_not_stop_the_others(capsys, images, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes((images / "banana_0.jpg").read_bytes()[:40])
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    code, out, err = classify(capsys, str(corrupt), str(images / "banana_0.jpg"),
                              str(text), str(tmp_path / "missing.png"), str(tmp_path))
    assert code == 65
    assert "banana" in out
    errors = err.splitlines()
    assert len(errors) == 4
    assert all(line.startswith("pi-classifier: error: ") for line in errors)
    assert "corrupt.jpg is not a readable image" in errors[0]
    assert "No such file" in errors[2]
    assert "is a folder" in errors[3]
    assert "Traceback" not in err


def test_aliases_from_the_config(capsys, images, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("aliases:\n  Granny Smith: apple\n")
    code, out, _ = classify(capsys, "--config", str(config),
                            str(images / "granny_smith_0.jpg"))
    assert code == 0
    assert ": apple 1.00" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "/nowhere/model.tflite"], "does not exist"),
        (["--model", "mobilenet_v9"], "mobilenet_v9"),
        (["--labels", "/nowhere/labels.txt"], "does not exist"),
    ],
)
def test_model_problems_are_one_line(capsys, images, argv, message):
    code, out, err = classify(capsys, *argv, str(images / "cat.bmp"))
    assert code != 0
    assert out == ""
    assert err.count("\n") == 1 and message in err
    assert "Traceback" not in err


def test_bad_config_is_one_line(capsys, images, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("top_k: 3\ncrop: middle\n")
    code, _, err = classify(capsys, "--config", str(config), str(images / "cat.bmp"))
    assert code == 78
    assert err.strip() == (f"pi-classifier: error: {config}: crop (line 2): must be "
                           "one of center, none, not 'middle'")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--top-k", "0"], "top_k: must be at least 1, not 0"),
        (["--threshold", "7"], "threshold: must be at most 1.0, not 7.0"),
        (["--threads", "-5"], "threads: must be at least 0, not -5"),
    ],
)
def test_options_are_checked_like_the_file(capsys, images, argv, message):
    code, out, err = classify(capsys, *argv, str(images / "cat.bmp"))
    assert code == 78
    assert out == ""
    assert err == f"pi-classifier: error: command-line options: {message}\n"


@pytest.mark.parametrize(
    ("web", "message"),
    [
        ("99999", "web.port: must be at most 65535, not 99999"),
        ("0.0.0.0:8080", "web.listen is '0.0.0.0', beyond this machine, so "
                         "web.token must be set"),
        ("localhost:http", "--web needs [HOST:]PORT, not 'localhost:http'"),
    ],
)
def test_run_refuses_bad_web_options_before_starting(capsys, web, message):
    code, out, err = run(capsys, "run", "--source", "test-pattern", "--display",
                         "null", "--web", web, "--duration", "5")
    assert code == 78
    assert out == ""
    assert err.splitlines()[-1].startswith("pi-classifier: error: ")
    assert message in err.splitlines()[-1]
    assert "Traceback" not in err


def test_web_beyond_loopback_runs_when_the_file_has_a_token(capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("web:\n  token: a-long-enough-secret\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = run(capsys, "run", "--config", str(config), "--source",
                       "test-pattern", "--display", "null", "--web",
                       f"0.0.0.0:{port}", "--duration", "0.5")
    assert code == 0, err
    assert f"web view on http://0.0.0.0:{port}/" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND (see 'pi-classifier "
             "--help')"),
        (["classify"], "required: IMAGE (see 'pi-classifier classify --help')"),
        (["run", "--duration", "-1"], "argument --duration: must be seconds above 0, "
                                      "not '-1'"),
        (["bench", "--seconds", "nan"], "argument --seconds: must be seconds above 0"),
        (["run", "--display", "hdmi"], "argument --display: invalid choice: 'hdmi'"),
        (["classify", "x.jpg", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_usage_mistakes_are_one_line_and_exit_64(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 64
    assert out == ""
    assert err.startswith("pi-classifier: error: ")
    assert err.count("\n") == 1 and message in err


def test_bench_reports_figures(capsys):
    code, out, _ = run(capsys, "bench", "--runtime", RUNTIME, "--seconds", "0.3",
                       "--json", "--threads", "1")
    report = json.loads(out)
    assert code == 0
    assert report["threads"] == 1
    assert report["rounds"] > 0
    assert 0 < report["invoke_ms_p50"] <= report["invoke_ms_p95"]
    assert report["frame_ms_p50"] >= report["invoke_ms_p50"] * 0.5
    assert report["frame_size"] == [640, 480]


def test_config_check(capsys, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("top_k: 4\n")
    code, out, err = run(capsys, "config", "check", str(good))
    assert code == 0 and "top_k: 4" in out and "OK" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("top_k: 4\nsmothing: {}\n")
    code, out, err = run(capsys, "config", "check", str(bad))
    assert code == 78
    assert "did you mean 'smoothing'" in err


def test_models_lists_known_models(capsys, models):
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert str(models) in out
    line = next(row for row in out.splitlines()
                if row.startswith("mobilenet_v2_1.0_224_quant"))
    assert "224x224" in line and line.rstrip().endswith("yes")


def test_module_entry_point_and_no_traceback(images, models, tmp_path):
    env = {"PI_CLASSIFIER_MODEL_DIR": str(models), "PATH": "/usr/bin:/bin",
           "PI_CLASSIFIER_CONFIG": "/nonexistent"}
    done = subprocess.run(
        [sys.executable, "-m", "pi_classifier", "classify", "--runtime", RUNTIME,
         str(images / "bird.bmp"), str(tmp_path / "none.jpg")],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 65
    assert "chickadee" in done.stdout
    assert "Traceback" not in done.stderr
    assert "none.jpg" in done.stderr


def test_debug_variable_shows_the_traceback(images, models, tmp_path):
    env = {"PI_CLASSIFIER_MODEL_DIR": str(models), "PATH": "/usr/bin:/bin",
           "PI_CLASSIFIER_DEBUG": "1", "PI_CLASSIFIER_CONFIG": "/nonexistent"}
    done = subprocess.run(
        [sys.executable, "-m", "pi_classifier", "classify", "--runtime", RUNTIME,
         "--model", str(tmp_path / "none.tflite"), str(images / "bird.bmp")],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode != 0
    assert "Traceback" in done.stderr
