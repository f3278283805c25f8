"""``pyrecksc lint | compile | show | list | rm | policy`` end to end, against real Redis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from pyrecks.cli.pyrecksc import main
from pyrecks.connection import EmbeddedServer

KERNELS = Path(__file__).resolve().parent.parent / "kernels"
PYRECKSC = str(Path(sys.executable).parent / "pyrecksc")
BAD = "import os\n\ndef bad(x):\n    data = open(x).read()\n    return ''\n"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def bad_dir(tmp_path: Path) -> Path:
    (tmp_path / "good.py").write_text("def good(x):\n    return ''\n")
    (tmp_path / "bad.py").write_text(BAD)
    (tmp_path / "test_good.py").write_text("import os\n")  # tests are skipped in folders
    return tmp_path


def test_lint_sample_kernels_passes() -> None:
    code, _out, err = run("lint", str(KERNELS))
    assert code == 0, err
    assert "6 kernels checked: 0 errors, 0 warnings" in err


def test_lint_reports_path_line_column_code_and_caret(bad_dir: Path) -> None:
    code, out, _err = run("lint", str(bad_dir))
    assert code == 1
    path = bad_dir / "bad.py"
    assert f"{path}:1:1: PK101 module 'os'" in out
    assert f"{path}:4:12: PK201 open() is forbidden" in out
    assert "        data = open(x).read()\n" in out
    assert "\n               ^" in out
    assert "test_good" not in out


def test_lint_json_for_ci(bad_dir: Path) -> None:
    code, out, _err = run("lint", "--json", str(bad_dir))
    assert code == 1
    doc = {entry["kernel"]: entry for entry in json.loads(out)}
    assert set(doc) == {"bad", "good"}
    assert [f["code"] for f in doc["bad"]["findings"]] == ["PK101", "PK201"]
    assert doc["good"]["findings"] == []


def test_lint_warnings_do_not_fail(tmp_path: Path) -> None:
    kernel = tmp_path / "k.py"
    kernel.write_text("import time\n\ndef k(x):\n    t = time.time()\n    return ''\n")
    code, out, _err = run("lint", str(kernel))
    assert code == 0
    assert "PK405 (warning)" in out


def test_lint_with_a_policy_file(tmp_path: Path) -> None:
    kernel = tmp_path / "k.py"
    kernel.write_text("import numpy\n\ndef k(x):\n    return ''\n")
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"allowed_modules": ["numpy"]}))
    assert run("lint", str(kernel))[0] == 1
    assert run("lint", "--policy", str(policy), str(kernel))[0] == 0


def test_compile_show_list_rm(redis_url: str, r: redis.Redis) -> None:
    code, out, err = run("compile", str(KERNELS), "--redis", redis_url)
    assert code == 0, err
    assert "func0" in out and "new" in out
    assert r.hget("func0", "compiled") == b"1"

    code, out, _ = run("compile", str(KERNELS), "--redis", redis_url)
    assert code == 0 and "unchanged" in out and "new" not in out

    code, out, _ = run("show", "func0", "--redis", redis_url)
    assert code == 0
    assert "signature  func0(x: str)" in out
    assert 'return call("func1"' in out

    code, out, _ = run("show", "func0", "--dis", "--redis", redis_url)
    assert "--- bytecode ---" in out and "LOAD_" in out

    code, out, _ = run("show", "func0", "--source", "--redis", redis_url)
    assert out == (KERNELS / "func0.py").read_text()

    code, out, _ = run("list", "--redis", redis_url)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[2:]] == [
        "func0", "func1", "func2", "start", "wc_count", "wc_split",
    ]

    code, out, _ = run("rm", "start", "--redis", redis_url)
    assert code == 0 and r.exists("start") == 0
    code, _out, err = run("show", "start", "--redis", redis_url)
    assert code == 1 and "no kernel named 'start'" in err


def test_compile_refuses_the_whole_batch(bad_dir: Path, redis_url: str, r: redis.Redis) -> None:
    code, _out, err = run("compile", str(bad_dir), "--redis", redis_url)
    assert code == 1
    assert f"{bad_dir / 'bad.py'}:4:12: PK201" in err
    assert "1 of 2 kernels rejected (2 errors); nothing was written" in err
    assert r.dbsize() == 0


def test_compile_dry_run_writes_nothing(redis_url: str, r: redis.Redis) -> None:
    code, out, _ = run("compile", str(KERNELS), "--dry-run", "--redis", redis_url)
    assert code == 0 and "1 (dry run)" in out
    assert r.dbsize() == 0


def test_compile_refuses_to_overwrite_user_data(tmp_path: Path, redis_url: str, r: redis.Redis) -> None:
    (tmp_path / "profile.py").write_text("def profile(x):\n    return ''\n")
    r.set("profile", "precious user data")
    code, _out, err = run("compile", str(tmp_path), "--redis", redis_url)
    assert code == 1 and "--force" in err
    assert r.get("profile") == b"precious user data"
    assert run("compile", str(tmp_path), "--force", "--redis", redis_url)[0] == 0
    assert r.type("profile") == b"hash"


def test_compile_with_prefix(redis_url: str, r: redis.Redis) -> None:
    assert run("compile", str(KERNELS / "func0.py"), "--prefix", "k:", "--redis", redis_url)[0] == 0
    assert r.type("k:func0") == b"hash" and r.exists("func0") == 0
    assert run("show", "func0", "--prefix", "k:", "--redis", redis_url)[0] == 0


def test_seed_style_kernel_is_shown(redis_url: str, r: redis.Redis) -> None:
    r.set("func9", "def func9(x):\n\treturn ''")
    code, out, _ = run("show", "func9", "--redis", redis_url)
    assert code == 0 and "seed-style string" in out


def test_policy_lives_in_redis_and_drives_compile(tmp_path: Path, redis_url: str) -> None:
    kernel = tmp_path / "k.py"
    kernel.write_text("import numpy\n\ndef k(x):\n    return ''\n")
    assert run("compile", str(kernel), "--redis", redis_url)[0] == 1
    assert run("policy", "set", "--allow-module", "numpy", "--redis", redis_url)[0] == 0
    _code, out, _ = run("policy", "show", "--json", "--redis", redis_url)
    assert "numpy" in json.loads(out)["allowed_modules"]
    assert run("lint", "--redis", redis_url, str(kernel))[0] == 0
    assert run("compile", str(kernel), "--redis", redis_url)[0] == 0
    assert run("policy", "reset", "--redis", redis_url)[0] == 0
    _code, out, _ = run("policy", "show", "--redis", redis_url)
    assert "numpy" not in out and "allowed modules" in out


def test_real_subprocess_compile_then_show(redis_url: str) -> None:
    compiled = subprocess.run(
        [PYRECKSC, "compile", str(KERNELS), "--redis", redis_url],
        capture_output=True, text=True, check=False,
    )
    assert compiled.returncode == 0, compiled.stderr
    shown = subprocess.run(
        [PYRECKSC, "show", "func0", "--redis", redis_url],
        capture_output=True, text=True, check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "func0(x: str)" in shown.stdout


def test_embedded_redis_keeps_kernels_between_processes() -> None:
    """No --redis and no REDIS_URL: compile in one process, show in another."""
    home = Path(tempfile.mkdtemp(prefix="pyk-"))  # short path: unix sockets are length-limited
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {"PYRECKS_HOME": str(home)}
    try:
        compiled = subprocess.run(
            [PYRECKSC, "compile", str(KERNELS)], env=env, capture_output=True, text=True, check=False
        )
        assert compiled.returncode == 0, compiled.stderr
        shown = subprocess.run(
            [PYRECKSC, "show", "wc_count"], env=env, capture_output=True, text=True, check=False
        )
        assert shown.returncode == 0, shown.stderr
        assert "wc_count(words: list[str], total: int, top: int = …)" in shown.stdout
    finally:
        EmbeddedServer(home).stop()
        shutil.rmtree(home, ignore_errors=True)


def test_show_and_rm_treat_ordinary_data_as_not_a_kernel(r: redis.Redis, redis_url: str) -> None:
    from click.testing import CliRunner

    from pyrecks.cli.pyrecksc import main

    r.set("func0", "def func0(x):\n    return ''\n")
    r.set("doc:1", "just a document")
    runner = CliRunner()
    shown = runner.invoke(main, ["show", "doc:1", "--redis", redis_url])
    assert shown.exit_code == 1
    removed = runner.invoke(main, ["rm", "func0", "doc:1", "--redis", redis_url])
    assert removed.exit_code == 1
    assert "nothing was deleted" in removed.output
    assert r.exists("func0") and r.get("doc:1") == b"just a document"


def test_list_shows_only_kernels_that_exist(redis_url: str, r: redis.Redis) -> None:
    """The kernels set is an index; the keys decide (KernelStore.names)."""
    assert run("compile", str(KERNELS), "--redis", redis_url)[0] == 0
    r.delete("func1")  # a plain DEL, behind pyrecks' back
    r.set("func2", "just a greeting")  # overwritten with data that is not a kernel
    r.delete("start")
    r.hset("start", "owner", "me")  # a hash, but no kernel record
    code, out, _ = run("list", "--redis", redis_url)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["func0", "wc_count", "wc_split"]
    # The names left the listings, not the index: reads never write.  Storing a kernel
    # again brings its name back.
    assert r.sismember("pyrecks:kernels", "func1")
    code, _out, err = run("show", "fucn1", "--redis", redis_url)
    assert code == 1 and "func1" not in err  # func1 is gone: it is not offered
    assert run("compile", str(KERNELS / "func1.py"), "--redis", redis_url)[0] == 0
    code, out, _ = run("list", "--redis", redis_url)
    assert "func1" in out and "func2" not in out
