"""Classifier core benchmark: per-frame cost, cold start and memory.

Prints, in one run on this machine, for MobileNet v2 quant:

* the bare ``interpreter.invoke()`` p50 and the full per-frame cost p50 for
  a 640x480 camera-sized frame (crop, resize, set input, invoke, ranked
  labels), measured interleaved, and their ratio (target <= 1.15);
* cold-start wall time and peak RSS of ``pi-classifier classify`` on one
  image, each beside the same figures for a ten-line script doing the same
  job with the same runtime, run alternately (targets <= 2x and <= 1.3x).

Usage: python benchmarks/classify.py [--runs N] [--seconds S] [--threads T]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTDATA = Path(os.environ.get("PI_CLASSIFIER_TESTDATA", REPO.parent / "shared" /
                               "testdata"))
MODEL = TESTDATA / "models" / "mobilenet_v2_1.0_224_quant.tflite"
LABELS = TESTDATA / "models" / "imagenet_labels.txt"
IMAGE = TESTDATA / "images" / "cat.bmp"

TEN_LINES = """\
import sys, cv2
from {module} import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads={threads}); it.allocate_tensors()
inp, out = it.get_input_details()[0], it.get_output_details()[0]
image = cv2.cvtColor(cv2.imread(sys.argv[3]), cv2.COLOR_BGR2RGB)
it.set_tensor(inp["index"], cv2.resize(image, (224, 224))[None])
it.invoke()
scores = it.get_tensor(out["index"])[0]
best = int(scores.argmax())
print(open(sys.argv[2]).read().splitlines()[best], scores[best] / 255)
"""

MODULES = {"litert": "ai_edge_litert.interpreter",
           "tflite-runtime": "tflite_runtime.interpreter"}


def machine() -> str:
    """One line naming the CPU, cores and Python."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, {platform.machine()}, "
            f"Python {platform.python_version()}")


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run a command; return (wall seconds, peak RSS in MB)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        error = process.stderr.read().decode()
        raise SystemExit(f"{' '.join(command)} failed: {error}")
    process.stderr.close()
    return wall, usage.ru_maxrss // 1024


def cold_start(runs: int, runtime: str, threads: int) -> dict[str, list]:
    """Alternate the CLI and the ten-line script; collect wall time and RSS."""
    env = dict(os.environ, PI_CLASSIFIER_MODEL_DIR=str(MODEL.parent),
               PI_CLASSIFIER_CONFIG="/nonexistent")
    script = Path(tempfile.mkdtemp()) / "ten_lines.py"
    script.write_text(TEN_LINES.format(module=MODULES[runtime], threads=threads))
    cli = [sys.executable, "-m", "pi_classifier", "classify", "--runtime", runtime,
           "--threads", str(threads), str(IMAGE)]
    plain = [sys.executable, str(script), str(MODEL), str(LABELS), str(IMAGE)]
    figures: dict[str, list] = {"cli": [], "plain": []}
    for command in (cli, plain):
        run_measured(command, env)
    for _ in range(runs):
        figures["cli"].append(run_measured(cli, env))
        figures["plain"].append(run_measured(plain, env))
    return figures


def per_frame(seconds: float, runtime: str, threads: int) -> dict:
    """Interleaved bare-invoke and full per-frame figures."""
    from pi_classifier.bench import run_benchmark
    from pi_classifier.classifier import Classifier

    classifier = Classifier(MODEL, LABELS, runtime=runtime, threads=threads)
    return run_benchmark(classifier, seconds=seconds)


def verdict(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"


def main() -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runtime", default="litert", choices=sorted(MODULES))
    args = parser.parse_args()
    if not MODEL.exists():
        raise SystemExit(f"test data missing: {MODEL} (see ../shared/testdata)")
    from pi_classifier.runtime import load_runtime

    print(f"machine   {machine()}")
    print(f"runtime   {load_runtime(args.runtime)}, {args.threads} threads")
    report = per_frame(args.seconds, args.runtime, args.threads)
    ratio = report["frame_ms_p50"] / report["invoke_ms_p50"]
    print(f"invoke    p50 {report['invoke_ms_p50']:.2f} ms (bare interpreter.invoke)")
    print(f"frame     p50 {report['frame_ms_p50']:.2f} ms (640x480: crop, resize, "
          f"set input, invoke, rank)  ratio {ratio:.3f}  target <= 1.15  "
          f"{verdict(ratio <= 1.15)}")
    figures = cold_start(args.runs, args.runtime, args.threads)
    cli_wall = statistics.median(w for w, _ in figures["cli"])
    plain_wall = statistics.median(w for w, _ in figures["plain"])
    cli_rss = statistics.median(r for _, r in figures["cli"])
    plain_rss = statistics.median(r for _, r in figures["plain"])
    print(f"cold start  pi-classifier classify {cli_wall * 1000:.0f} ms, ten-line "
          f"script {plain_wall * 1000:.0f} ms  ratio {cli_wall / plain_wall:.2f}  "
          f"target <= 2  {verdict(cli_wall <= 2 * plain_wall)}  "
          f"(median of {args.runs}, alternated)")
    print(f"peak RSS    pi-classifier classify {cli_rss} MB, ten-line script "
          f"{plain_rss} MB  ratio {cli_rss / plain_rss:.2f}  target <= 1.3  "
          f"{verdict(cli_rss <= 1.3 * plain_rss)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
