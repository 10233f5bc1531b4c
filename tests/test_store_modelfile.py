"""Modelfile parsing and printing, with Ollama's grammar and error messages."""

from __future__ import annotations

import pytest

from trillama.store.modelfile import Command, Modelfile, ModelfileError, parse_modelfile, quote

INVALID_COMMAND = ('command must be one of "from", "license", "template", "system", "adapter", '
                   '"draft", "renderer", "parser", "parameter", "message", or "requires"')


def test_basic_instructions() -> None:
    mf = parse_modelfile(
        "# a comment\n"
        "FROM llama3.2\n"
        "PARAMETER temperature 0.7\n"
        "PARAMETER num_ctx 4096\n"
        "PARAMETER stop <|eot_id|>\n"
        "PARAMETER stop \"<|start_header_id|>\"\n"
        "PARAMETER use_mmap false\n"
        "SYSTEM You are Mario.\n"
        "MESSAGE user Is Toronto in Canada?\n"
        "MESSAGE assistant yes\n"
        "LICENSE MIT\n"
        "LICENSE \"\"\"Apache\nLicense\"\"\"\n"
    )
    assert mf.from_ == "llama3.2"
    assert mf.parameters == {"temperature": 0.7, "num_ctx": 4096,
                             "stop": ["<|eot_id|>", "<|start_header_id|>"], "use_mmap": False}
    assert mf.values("system") == ["You are Mario."]
    assert mf.messages == [{"role": "user", "content": "Is Toronto in Canada?"},
                           {"role": "assistant", "content": "yes"}]
    assert mf.values("license") == ["MIT", "Apache\nLicense"]


def test_instructions_are_case_insensitive_and_order_free() -> None:
    mf = parse_modelfile("system hi there\nfrom m:t\nTemplate {{ .Prompt }}\n")
    assert [c.name for c in mf.commands] == ["system", "model", "template"]
    assert mf.values("template") == ["{{ .Prompt }}"]


def test_multiline_template_keeps_inner_lines_and_quotes() -> None:
    text = 'FROM m\nTEMPLATE """{{ if .System }}<|system|>\n{{ .System }}\n{{ end }}say "hi"\n"""\n'
    mf = parse_modelfile(text)
    assert mf.values("template") == ['{{ if .System }}<|system|>\n{{ .System }}\n{{ end }}say "hi"\n']


def test_single_quoted_value_and_surrounding_space() -> None:
    mf = parse_modelfile('FROM m\nSYSTEM "  padded  "\nPARAMETER stop "  "\n')
    assert mf.values("system") == ["  padded  "]
    assert mf.parameters["stop"] == ["  "]


def test_bom_crlf_and_blank_lines() -> None:
    mf = parse_modelfile("\ufeffFROM m\r\n\r\n   \r\nSYSTEM s\r\n")
    assert mf.from_ == "m" and mf.values("system") == ["s"]


def test_tabs_separate_instruction_and_value() -> None:
    assert parse_modelfile("FROM\tm\n").from_ == "m"


def test_unknown_instruction_names_the_line() -> None:
    with pytest.raises(ModelfileError) as err:
        parse_modelfile("FROM m\n\nFOO bar\n")
    assert str(err.value) == f"(line 3): {INVALID_COMMAND}"


def test_instruction_without_space_is_invalid() -> None:
    with pytest.raises(ModelfileError, match=r"^\(line 1\): command must be one of"):
        parse_modelfile("FROM1 m\n")


def test_missing_from() -> None:
    with pytest.raises(ModelfileError, match="^no FROM line$"):
        parse_modelfile("SYSTEM hello\n")


def test_unterminated_quotes() -> None:
    with pytest.raises(ModelfileError, match="^unexpected EOF$"):
        parse_modelfile('FROM m\nSYSTEM """never closed\n')
    with pytest.raises(ModelfileError, match="^unexpected EOF$"):
        parse_modelfile('FROM m\nSYSTEM "open\n')


def test_instruction_cut_off_at_end() -> None:
    with pytest.raises(ModelfileError, match="^unexpected EOF$"):
        parse_modelfile("FROM m\nPARAMETER")


def test_bad_message_role() -> None:
    with pytest.raises(ModelfileError) as err:
        parse_modelfile("FROM m\nMESSAGE robot hello\n")
    assert str(err.value) == '(line 2): message role must be one of "system", "user", or "assistant"'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("PARAMETER temperature hot", "invalid float value [hot]"),
        ("PARAMETER num_ctx 4k", "invalid int value [4k]"),
        ("PARAMETER num_ctx 1.5", "invalid int value [1.5]"),
        ("PARAMETER use_mmap maybe", "invalid bool value [maybe]"),
        ("PARAMETER temperature 1e99", "invalid float value [1e99]"),
        ("PARAMETER nonsense 1", "unknown parameter 'nonsense'"),
        ("PARAMETER Temperature 1", "unknown parameter 'Temperature'"),
        ("REQUIRES latest", "requires must be a valid semver (e.g. 0.14.0)"),
    ],
)
def test_bad_values(line: str, message: str) -> None:
    with pytest.raises(ModelfileError) as err:
        parse_modelfile(f"FROM m\n{line}\n")
    assert str(err.value) == message


def test_deprecated_parameters_are_dropped() -> None:
    mf = parse_modelfile("FROM m\nPARAMETER mirostat 2\nPARAMETER top_k 5\n")
    assert mf.parameters == {"top_k": 5}


def test_requires_semver_accepts_short_forms() -> None:
    assert parse_modelfile("FROM m\nREQUIRES 0.14.0\n").requires == "0.14.0"
    assert parse_modelfile("FROM m\nREQUIRES v0.14\n").requires == "0.14"


def test_float_parameters_are_float32() -> None:
    assert parse_modelfile("FROM m\nPARAMETER top_p 0.123456789\n").parameters["top_p"] == 0.12345679


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        ("plain", "plain"),
        ("two\nlines", '"two\nlines"'),
        (' leading', '" leading"'),
        ('say "hi"\nthen', '"""say "hi"\nthen"""'),
        ('quoted "inline"', 'quoted "inline"'),
    ],
)
def test_quote(value: str, printed: str) -> None:
    assert quote(value) == printed


def test_render_and_round_trip() -> None:
    mf = Modelfile.from_commands([
        Command("model", "/blobs/sha256-x"),
        Command("template", "{{ .System }}\n{{ .Prompt }}"),
        Command("system", "be brief"),
        Command("stop", "<|im_end|>"),
        Command("temperature", "0.5"),
        Command("license", "MIT"),
        Command("message", "user: hi there"),
    ])
    text = mf.render()
    assert text == (
        "FROM /blobs/sha256-x\n"
        'TEMPLATE "{{ .System }}\n{{ .Prompt }}"\n'
        "SYSTEM be brief\n"
        "PARAMETER stop <|im_end|>\n"
        "PARAMETER temperature 0.5\n"
        "LICENSE MIT\n"
        "MESSAGE user hi there\n"
    )
    again = parse_modelfile(text)
    assert again.commands == mf.commands
