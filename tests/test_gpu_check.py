"""kernels/gpu_check.sh, the staged GPU check, without a GPU: its plan fits the device's 600 s
command limit, a stage killed by its limit and the whole script killed by SIGTERM still leave their
files and a summary saying so (stand-in stages that sleep, GPUNN_CHECK_STANDIN), and the parity
stage's pytest plugin limits a test and stops at the stage deadline with its JUnit XML written."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "kernels", "gpu_check.sh")

needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _env(**extra):
    env = dict(os.environ, **extra)
    env.pop("OUT", None)
    env.update(extra)
    return env


def _summary(folder):
    found = [f for f in os.listdir(folder) if f.endswith("-summary.json")]
    assert len(found) == 1, os.listdir(folder)
    with open(os.path.join(folder, found[0])) as f:
        return json.load(f)


@needs_bash
def test_dry_run_prints_a_plan_that_fits_the_deadline():
    r = subprocess.run(["bash", SCRIPT, "--dry-run"], capture_output=True, text=True, timeout=30, env=_env())
    assert r.returncode == 0, r.stderr
    lines = [line.split() for line in r.stdout.strip().splitlines()]
    plan, total = lines[:-1], lines[-1]
    assert [name for name, _ in plan] == ["probe", "parity", "bench", "autotune", "profile"]
    assert total[0] == "total" and int(total[1]) == sum(int(s) for _, s in plan)
    kill_after = int(re.search(r"^KILL_AFTER_S=(\d+)", open(SCRIPT).read(), re.M).group(1))
    assert int(total[1]) + kill_after * len(plan) <= 540  # every stage at its limit, then SIGKILL's grace


def test_the_real_plan_writes_at_most_8_files_in_one_folder():
    text = open(SCRIPT).read()
    names = set(re.findall(r'\$RES/\$STEM(\.log|-[a-z-]+\.[a-z]+)', text))  # every file the stages write
    assert {".log", "-summary.json", "-parity.xml", "-probe.json"} <= names and len(names) <= 8, names


@needs_bash
def test_a_stage_killed_by_its_limit_leaves_its_files_and_the_summary_says_so(tmp_path):
    t0 = time.monotonic()
    r = subprocess.run(["bash", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60,
                       env=_env(GPUNN_CHECK_STANDIN="first:5:0,slow:1:30,last:5:0"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - t0 < 20  # slow was stopped at its 1 s limit, not after its 30 s sleep
    s = _summary(tmp_path)
    stages = {st["name"]: st for st in s["stages"]}
    assert s["state"] == "done" and list(stages) == ["first", "slow", "last"]
    assert stages["slow"]["exit"] == 124 and stages["slow"]["status"].startswith("killed: time limit")
    assert stages["first"]["status"] == stages["last"]["status"] == "ok"
    files = sorted(os.listdir(tmp_path))
    assert any(f.endswith("-slow.json") for f in files) and any(f.endswith(".log") for f in files)
    assert sorted(s["files"]) == files and len(files) <= 8
    assert "stand-in stage slow: sleeping 30 s" in open(tmp_path / [f for f in files if f.endswith(".log")][0]).read()


@needs_bash
def test_the_script_killed_by_sigterm_still_writes_a_summary(tmp_path):
    p = subprocess.Popen(["bash", SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=_env(GPUNN_CHECK_STANDIN="first:5:0,hang:60:30,never:5:0"))
    deadline = time.monotonic() + 20
    while not any(f.endswith("-hang.json") for f in os.listdir(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 143, out
    s = _summary(tmp_path)
    assert s["state"] == "terminated by SIGTERM"
    assert [st["name"] for st in s["stages"]] == ["first", "hang"]
    assert s["stages"][1]["status"] == "killed: script terminated by SIGTERM"
    assert any(f.endswith("-hang.json") for f in os.listdir(tmp_path))


@needs_bash
def test_results_go_to_OUT_by_default(tmp_path):
    r = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, timeout=60,
                       env=_env(GPUNN_CHECK_STANDIN="only:5:0", OUT=str(tmp_path)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert _summary(tmp_path)["stages"][0]["status"] == "ok"


# ------------------------------------------------------------------------------ the parity stage's plugin

def _pytest(tmp_path, **env):
    (tmp_path / "test_standin.py").write_text(
        "import time\n\n"
        "def test_slow():\n    time.sleep(10)\n\n"
        "def test_quick():\n    assert 1 + 1 == 2\n")
    xml = tmp_path / "out.xml"
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "gpu_check_pytest", "-p", "no:cacheprovider", "-q",
                        f"--junitxml={xml}", "test_standin.py"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "kernels"), **env))
    return r, xml


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM")
def test_plugin_fails_a_test_over_its_limit_and_goes_on(tmp_path):
    t0 = time.monotonic()
    r, xml = _pytest(tmp_path, GPUNN_TEST_TIMEOUT="0.5")
    assert time.monotonic() - t0 < 9  # test_slow was stopped, not waited for
    assert r.returncode == 1 and "1 failed, 1 passed" in r.stdout, r.stdout
    assert "TestTimeLimit" in r.stdout and "ran over its 0.5 s limit" in r.stdout
    assert 'tests="2"' in xml.read_text()


def test_plugin_stops_at_the_stage_deadline_with_its_junit_xml(tmp_path):
    r, xml = _pytest(tmp_path, GPUNN_STAGE_DEADLINE=str(time.time() - 1))
    assert "stage deadline reached: 2 tests not run" in r.stdout, r.stdout
    assert xml.exists() and 'tests="0"' in xml.read_text()


# ------------------------------------------------------------------------------ the Python stages

def test_probe_stage_writes_its_json_even_where_nothing_runs(tmp_path):
    """Here (no GPU): the probe stage records the versions and why no kernel ran, and says so by its
    exit status, without a traceback."""
    from gpunn.backend import numba_cuda as nc

    if nc.kernel_status()[0]:
        pytest.skip("a GPU is present: the probe would run")
    out = tmp_path / "probe.json"
    r = subprocess.run([sys.executable, os.path.join("kernels", "gpu_check.py"), "probe", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=ROOT, NUMBA_ENABLE_CUDASIM="0"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    data = json.loads(out.read_text())
    assert data["finished"] and data["versions"]["numba-cuda"] and "pytest_timeout_importable" in data["versions"]
    why = data["probe"].get("error") or data["probe"].get("current")
    assert why and why != "ok" and data["nvvm_gpunn"].startswith("NVVM")


@needs_bash
def test_readme_states_the_plan_the_script_runs():
    r = subprocess.run(["bash", SCRIPT, "--dry-run"], capture_output=True, text=True, timeout=30, env=_env())
    plan = [line.split() for line in r.stdout.strip().splitlines()[:-1]]
    readme = open(os.path.join(ROOT, "README.md")).read()
    rows = re.findall(r"^\| (\w+) \| (\d+) s \|", readme, re.M)
    assert [list(row) for row in rows] == plan
